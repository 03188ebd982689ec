package upstream

import (
	"strconv"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Passive outlier ejection defaults, used when spec.healthCheck.passive is
// present but leaves a field at zero. Ejection is off when the block is
// absent; `passive: {}` turns it on with these values.
//
// DefaultMaxEjectionPercent is 50 rather than Envoy's 10: with Envoy's
// rounding, 10% of a pool of fewer than ten targets is zero, so the small
// pools a gateway typically fronts would never eject anything.
const (
	DefaultConsecutiveFailures = 5
	DefaultEjectionTime        = 30 * time.Second
	DefaultMaxEjectionPercent  = 50

	// maxEjectionMultiplier caps how long repeated ejections last:
	// at most this many times ejectionTime.
	maxEjectionMultiplier = 10
)

// passiveConfig is spec.healthCheck.passive with defaults applied.
type passiveConfig struct {
	enabled             bool
	consecutiveFailures int64
	ejectionTime        int64 // nanoseconds
	maxEjectionPercent  int
}

func newPassiveConfig(s *meridianv1.PassiveHealthCheck) passiveConfig {
	if s == nil {
		return passiveConfig{}
	}
	c := passiveConfig{
		enabled:             true,
		consecutiveFailures: int64(intOr(s.GetConsecutiveFailures(), DefaultConsecutiveFailures)),
		ejectionTime:        int64(durationOr(s.GetEjectionTime(), DefaultEjectionTime)),
		maxEjectionPercent:  intOr(s.GetMaxEjectionPercent(), DefaultMaxEjectionPercent),
	}
	c.maxEjectionPercent = min(c.maxEjectionPercent, 100)
	return c
}

// eject takes t out of rotation after n consecutive failed attempts, the
// last of which ended as o, and reports it.
//
// Semantics (close to Envoy's outlier detection, differences noted):
//   - The n-th ejection in a row lasts n × ejectionTime, at most
//     10 × ejectionTime. Each ejectionTime the target then spends back in
//     rotation forgives one earlier ejection, as Envoy decrements its
//     multiplier on every interval a host stays healthy.
//   - At most floor(maxEjectionPercent × targets / 100) targets are ejected
//     at once, so at least one target stays in rotation unless
//     maxEjectionPercent is 100 (a one-target upstream is never ejected
//     below 100). A target that cannot be ejected keeps its failure count
//     and is ejected on its next failure once there is room. Unlike
//     Envoy, there is no "always eject one host" exception.
//   - Failures reported while a target is ejected (requests that were in
//     flight) are ignored; the count starts again from zero on return.
//   - Active health checks and ejection are independent: an actively
//     unhealthy target does not count towards maxEjectionPercent, and
//     there is no panic threshold — when every target is down, Pick fails.
//   - An ejection whose time is up but that no Pick has ended yet is ended
//     (and its return reported) before the next one.
func (p *Pool) eject(t *Target, failures int64, o Outcome) {
	p.ejectMu.Lock()
	defer p.ejectMu.Unlock()
	now := p.now()
	if until := t.ejectedUntil.Load(); now < until {
		t.failures.Store(0)
		return
	} else if until != 0 {
		t.endEjection(until)
	}
	allowed := p.passive.maxEjectionPercent * len(p.targets) / 100
	ejected := 0
	for _, o := range p.targets {
		if now < o.ejectedUntil.Load() {
			ejected++
		}
	}
	if ejected+1 > allowed {
		return
	}

	base := p.passive.ejectionTime
	n := t.ejections.Load()
	if last := t.lastEjectEnd.Load(); last > 0 && base > 0 {
		n = max(0, n-(now-last)/base)
	}
	n = min(n+1, maxEjectionMultiplier)
	until := now + base*n
	t.ejections.Store(n)
	t.lastEjectEnd.Store(until)
	t.ejectedFor.Store(base * n)
	t.failures.Store(0)
	t.ejectedUntil.Store(until)
	p.report(Transition{Target: t.addr, Check: PassiveCheck, From: Healthy, To: Ejected,
		Count: int(failures), Threshold: int(p.passive.consecutiveFailures), Err: o.failure(),
		Ejection: time.Duration(base * n), Ejections: int(n)})
}

// failure is why a failed attempt failed: its error, or its status.
func (o Outcome) failure() error {
	if o.Err != nil {
		return o.Err
	}
	return statusError(o.Status)
}

// statusError is a failure by response status: an active health check's
// unexpected status, or a passive check's 5xx.
type statusError int

func (e statusError) Error() string { return "status " + strconv.Itoa(int(e)) }
