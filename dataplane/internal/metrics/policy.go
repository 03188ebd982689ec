package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// LimitOutcome is what a rate limit decided for one request.
type LimitOutcome uint8

// The outcomes.
const (
	// LimitAllowed: under the limit.
	LimitAllowed LimitOutcome = iota
	// LimitQueued: over the rate, allowed after a wait (queue mode).
	LimitQueued
	// LimitRejected: answered 429.
	LimitRejected
	// LimitShadowRejected: over the limit in shadow mode, let through.
	LimitShadowRejected
	numLimitOutcomes
)

var limitOutcomeLabels = [numLimitOutcomes]string{"allowed", "queued", "rejected", "shadow_rejected"}

// StorePolicy is a global RateLimit's onStoreFailure policy.
type StorePolicy uint8

// The policies.
const (
	PolicyLocal StorePolicy = iota
	PolicyAllow
	PolicyDeny
	numPolicies
)

var policyLabels = [numPolicies]string{"local", "allow", "deny"}

// RateLimit records the decisions of one RateLimit. Its methods are safe
// for concurrent use, allocate nothing and do nothing on a nil
// *RateLimit.
type RateLimit struct {
	name          string
	decisions     [numLimitOutcomes]atomic.Uint64
	storeFailures [numPolicies]atomic.Uint64
	switches      atomic.Uint64
}

// Decision records one decision.
func (l *RateLimit) Decision(o LimitOutcome) {
	if l == nil || o >= numLimitOutcomes {
		return
	}
	l.decisions[o].Add(1)
}

// StoreFailure records a decision of a global RateLimit taken by policy
// because Redis could not decide.
func (l *RateLimit) StoreFailure(p StorePolicy) {
	if l == nil || p >= numPolicies {
		return
	}
	l.storeFailures[p].Add(1)
}

// StoreSwitch records a switch between Redis and the onStoreFailure
// policy, either way.
func (l *RateLimit) StoreSwitch() {
	if l == nil {
		return
	}
	l.switches.Add(1)
}

func (l *RateLimit) collect(m *Metrics, ch chan<- prometheus.Metric) {
	for i := range l.decisions {
		if v := l.decisions[i].Load(); v > 0 {
			counter(ch, m.limitDecisions, v, l.name, limitOutcomeLabels[i])
		}
	}
	for i := range l.storeFailures {
		if v := l.storeFailures[i].Load(); v > 0 {
			counter(ch, m.storeFailures, v, l.name, policyLabels[i])
		}
	}
	counter(ch, m.storeSwitches, l.switches.Load(), l.name)
}

// JWTReason is why a JWTProvider accepted or rejected a request.
type JWTReason uint8

// The reasons.
const (
	// JWTOK: a valid token that meets the route's required claims.
	JWTOK JWTReason = iota
	// JWTMissing: no token in any tokenFrom source.
	JWTMissing
	// JWTMultiple: a token given more than once.
	JWTMultiple
	// JWTMalformed: not a JWT, a bad header, an unsupported crit.
	JWTMalformed
	// JWTTooLarge: longer than the provider accepts.
	JWTTooLarge
	// JWTBadAlgorithm: alg missing or not in the allow-list.
	JWTBadAlgorithm
	// JWTUnknownKey: no key for the kid or the algorithm.
	JWTUnknownKey
	// JWTBadSignature: the signature does not verify.
	JWTBadSignature
	// JWTExpired: past exp (and the clock skew).
	JWTExpired
	// JWTNotYetValid: before nbf or iat.
	JWTNotYetValid
	// JWTWrongIssuer: iss is not the provider's issuer.
	JWTWrongIssuer
	// JWTWrongAudience: aud names none of the provider's audiences.
	JWTWrongAudience
	// JWTInvalidClaim: exp missing, a date that is not a date, a
	// forwarded claim that is not a valid header value.
	JWTInvalidClaim
	// JWTInsufficientScope: valid, but lacks a route's required claim.
	JWTInsufficientScope
	numJWTReasons
)

var jwtReasonLabels = [numJWTReasons]string{
	"ok", "missing", "multiple", "malformed", "too_large", "bad_algorithm", "unknown_key", "bad_signature",
	"expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "invalid_claim", "insufficient_scope",
}

// JWT records the requests one JWTProvider judged. Its methods are safe
// for concurrent use, allocate nothing and do nothing on a nil *JWT.
type JWT struct {
	provider string
	reasons  [numJWTReasons]atomic.Uint64
}

// Record records one judged request.
func (j *JWT) Record(r JWTReason) {
	if j == nil || r >= numJWTReasons {
		return
	}
	j.reasons[r].Add(1)
}

func (j *JWT) collect(m *Metrics, ch chan<- prometheus.Metric) {
	for i := range j.reasons {
		if v := j.reasons[i].Load(); v > 0 {
			counter(ch, m.jwtRequests, v, j.provider, jwtReasonLabels[i])
		}
	}
}
