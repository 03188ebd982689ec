package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/ratelimit"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/global"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/local"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// GlobalStore decides global-scope rate limits fleet-wide; *global.Limiter
// is one. An error means the store could not decide (errors.Is
// global.ErrUnavailable), and the limit's onStoreFailure policy applies.
type GlobalStore interface {
	Allow(ctx context.Context, limit global.Limit, key string) (global.Decision, error)
	// Available reports whether calls reach Redis; answers given while it
	// does not (known over-limit keys) do not end a fallback.
	Available() bool
}

// storeFailureRetry is the Retry-After of a request denied because the
// store is unavailable under onStoreFailure: deny; about the global
// limiter's breaker cool-down, after which Redis is tried again.
const storeFailureRetry = time.Second

// rateLimit is one compiled RateLimit. Local scope counts in store; global
// scope asks the GlobalStore and, when it cannot answer, applies the
// onStoreFailure policy, counting this data plane's share of the limit in
// a local store for the local policy. It is a ratelimit.Limiter.
type rateLimit struct {
	name    string
	spec    *meridianv1.RateLimitSpec
	log     *slog.Logger
	metrics *metrics.RateLimit // nil: none

	// store counts a local-scope limit; nil for global scope.
	store *local.Store

	// Global scope only.
	limit  global.Limit
	remote GlobalStore // nil: no Redis configured
	fleet  *atomic.Int64
	share  atomic.Pointer[fleetShare]
	// failing is set while decisions come from onStoreFailure, so each
	// switch is logged and counted once.
	failing  atomic.Bool
	switches atomic.Uint64
}

// fleetShare is a local store enforcing limit/nodes, this data plane's
// share of a global limit while the store is unavailable.
type fleetShare struct {
	nodes int64
	store *local.Store
}

// Allow decides one request; see ratelimit.Limiter.
func (rl *rateLimit) Allow(ctx context.Context, key string, now time.Time) local.Decision {
	if rl.store != nil {
		return rl.store.Allow(key, now)
	}
	if rl.remote != nil {
		d, err := rl.remote.Allow(ctx, rl.limit, key)
		if err == nil {
			if rl.failing.Load() && rl.remote.Available() && rl.failing.CompareAndSwap(true, false) {
				rl.switches.Add(1)
				rl.metrics.StoreSwitch()
				rl.log.Info("global rate limit counting through Redis again", "limit", rl.name)
			}
			if d.Allowed && rl.localFallback() {
				// The share store also counts what Redis admits here, so
				// when Redis fails it starts from this node's recent
				// traffic instead of empty, which would let a whole
				// share through on every node at the moment of the switch.
				rl.shareStore().Allow(key, now)
			}
			return local.Decision{Allowed: d.Allowed, Limit: d.Limit, Remaining: d.Remaining,
				RetryAfter: d.RetryAfter, Reset: d.Reset, Wait: d.Wait}
		}
		if rl.failing.CompareAndSwap(false, true) {
			rl.switches.Add(1)
			rl.metrics.StoreSwitch()
			rl.log.Warn("global rate limit store unavailable, applying onStoreFailure",
				"limit", rl.name, "on_store_failure", policyName(rl.spec.GetOnStoreFailure()), "error", err)
		}
	}
	return rl.onStoreFailure(key, now)
}

// localFallback reports whether the limit falls back to local counting.
func (rl *rateLimit) localFallback() bool {
	switch rl.spec.GetOnStoreFailure() {
	case meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_ALLOW, meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_DENY:
		return false
	}
	return true
}

// onStoreFailure decides a request of a global limit without its store.
func (rl *rateLimit) onStoreFailure(key string, now time.Time) local.Decision {
	switch rl.spec.GetOnStoreFailure() {
	case meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_ALLOW:
		rl.metrics.StoreFailure(metrics.PolicyAllow)
		return local.Decision{Allowed: true, Limit: rl.limit.Limit, Remaining: rl.limit.Limit}
	case meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_DENY:
		rl.metrics.StoreFailure(metrics.PolicyDeny)
		return local.Decision{Limit: rl.limit.Limit, RetryAfter: storeFailureRetry, Reset: storeFailureRetry}
	default: // local, the default
		rl.metrics.StoreFailure(metrics.PolicyLocal)
		return rl.shareStore().Allow(key, now)
	}
}

// shareStore returns the local store for this data plane's share of the
// limit at the current fleet size, replacing it when the size changed. A
// replaced store's counts start afresh, as they would on any node joining.
func (rl *rateLimit) shareStore() *local.Store {
	n := max(rl.fleet.Load(), 1)
	cur := rl.share.Load()
	if cur != nil && cur.nodes == n {
		return cur.store
	}
	next, err := newFleetShare(rl.spec, n)
	if err != nil {
		// compileRateLimits built a share from the same spec, so this
		// cannot fail; keep the old share rather than none.
		return cur.store
	}
	if !rl.share.CompareAndSwap(cur, next) {
		return rl.share.Load().store
	}
	return next.store
}

// newFleetShare builds the store enforcing this node's share of spec:
// limit/nodes per period (rounded up, so every node admits something),
// paced by GCRA with bursts of up to a tenth of the share, whatever spec's
// algorithm. Pacing bounds what any one period admits from any state to
// 1.1 × the share; a window or a full token bucket would let a node that
// was quiet, or whose Redis-admitted traffic came in bunches, admit up to
// twice its share in the first period after the switch.
func newFleetShare(spec *meridianv1.RateLimitSpec, nodes int64) (*fleetShare, error) {
	s := proto.CloneOf(spec)
	s.Algorithm = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA
	s.Limit = ceilDiv(spec.GetLimit(), uint64(nodes))
	s.Burst = max(s.Limit/10, 1)
	store, err := local.New(s, local.Options{})
	if err != nil {
		return nil, err
	}
	return &fleetShare{nodes: nodes, store: store}, nil
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// sweep drops idle keys from the limit's local stores.
func (rl *rateLimit) sweep(now time.Time) {
	if rl.store != nil {
		rl.store.Sweep(now)
	}
	if s := rl.share.Load(); s != nil {
		s.store.Sweep(now)
	}
}

func policyName(p meridianv1.StoreFailurePolicy) string {
	switch p {
	case meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_ALLOW:
		return "allow"
	case meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_DENY:
		return "deny"
	default:
		return "local"
	}
}

// compileRateLimits builds every RateLimit, reusing live's when the spec is
// unchanged so buckets, counters and store-failure state survive the push.
func (g *Gateway) compileRateLimits(rs []*meridianv1.Resource, live map[string]*rateLimit) (map[string]*rateLimit, config.ErrorList) {
	limits := map[string]*rateLimit{}
	var errs config.ErrorList
	for _, r := range rs {
		res := r.GetRateLimit()
		if res == nil {
			continue
		}
		name, spec := res.GetMetadata().GetName(), res.GetSpec()
		if old := live[name]; old != nil && proto.Equal(old.spec, spec) {
			limits[name] = old
			continue
		}
		fail := func(path string, err error) {
			errs = append(errs, &config.FieldError{Kind: config.KindRateLimit, Name: name, Path: path, Msg: err.Error()})
		}
		if _, err := ratelimit.ParseKey(spec.GetKey(), "", nil); err != nil {
			fail("spec.key", err)
			continue
		}
		rl := &rateLimit{name: name, spec: spec, log: g.log, metrics: g.metrics.RateLimit(name)}
		if spec.GetScope() != meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL {
			store, err := local.New(spec, local.Options{})
			if err != nil {
				fail("spec", err)
				continue
			}
			rl.store = store
			limits[name] = rl
			continue
		}
		limit, err := global.LimitFromSpec(name, spec)
		if err != nil {
			fail("spec", err)
			continue
		}
		share, err := newFleetShare(spec, max(g.fleet.Load(), 1))
		if err != nil {
			fail("spec", err)
			continue
		}
		rl.limit, rl.fleet = limit, &g.fleet
		rl.share.Store(share)
		if g.redis != nil {
			rl.remote = g.redis
		} else {
			g.log.Warn("global rate limit without Redis (no --redis): onStoreFailure decides every request",
				"limit", name, "on_store_failure", policyName(spec.GetOnStoreFailure()))
		}
		limits[name] = rl
	}
	return limits, errs
}

// routeLimitNames returns the RateLimits a route applies, in order: the
// allRoutes ones by name, then the route's own spec.rateLimits, each once.
func routeLimitNames(spec *meridianv1.RouteSpec, limits map[string]*rateLimit) []string {
	var names []string
	for name, rl := range limits {
		if rl.spec.GetAllRoutes() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range spec.GetRateLimits() {
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// rateLimits wraps h in the route's RateLimits (see routeLimitNames).
func (g *Gateway) rateLimits(route string, spec *meridianv1.RouteSpec, h http.Handler, limits map[string]*rateLimit) (http.Handler, error) {
	var ls []ratelimit.Limit
	for _, name := range routeLimitNames(spec, limits) {
		rl := limits[name]
		if rl == nil {
			// Validate checks references; a RateLimit that failed to
			// build is reported on its own resource.
			return nil, &config.FieldError{Kind: config.KindRoute, Name: route, Path: "spec.rateLimits", Msg: fmt.Sprintf("RateLimit %q is not available", name)}
		}
		key, err := ratelimit.ParseKey(rl.spec.GetKey(), route, g.ip)
		if err != nil {
			// compileRateLimits checked the key; this is a guard, not a path.
			return nil, &config.FieldError{Kind: config.KindRoute, Name: route, Path: "spec.rateLimits", Msg: fmt.Sprintf("RateLimit %q: %v", name, err)}
		}
		ls = append(ls, ratelimit.Limit{
			Name: name, Key: key, Limiter: rl,
			Period: rl.spec.GetPeriod().AsDuration(), Shadow: rl.spec.GetShadow(),
			Metrics: rl.metrics,
		})
	}
	if len(ls) == 0 {
		return h, nil
	}
	return ratelimit.New(ls, ratelimit.Options{Route: route, Log: g.log, Now: g.now}, h), nil
}
