package upstream

import (
	"fmt"
	"time"
)

// Observer is told of every change in a target's health, once, as it
// happens: by the pool's health checker, or by the call that made or
// noticed it (the Done that ejects a target, the Pick or Status that finds
// its ejection over). It must return quickly and must not call the Pool.
// A closed pool reports nothing.
type Observer interface {
	TargetTransition(Transition)
}

// Check is the kind of health check behind a transition.
type Check uint8

// The checks.
const (
	// ActiveCheck: the pool's probes (spec.healthCheck.active).
	ActiveCheck Check = iota
	// PassiveCheck: outlier ejection on the proxy's outcomes
	// (spec.healthCheck.passive).
	PassiveCheck
)

// String returns "active" or "passive".
func (c Check) String() string {
	switch c {
	case ActiveCheck:
		return "active"
	case PassiveCheck:
		return "passive"
	}
	return fmt.Sprintf("Check(%d)", uint8(c))
}

// TargetState is a target's standing with one check. The checks are
// independent (see eject): the active check moves a target between
// Healthy and Unhealthy, the passive one between Healthy and Ejected.
type TargetState uint8

// The states.
const (
	Healthy TargetState = iota
	Unhealthy
	Ejected
)

// String returns "healthy", "unhealthy" or "ejected".
func (s TargetState) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	case Ejected:
		return "ejected"
	}
	return fmt.Sprintf("TargetState(%d)", uint8(s))
}

// Transition is one change in a target's health, with what caused it.
// Fields that do not apply to it are zero.
type Transition struct {
	Upstream, Target string
	Check            Check
	From, To         TargetState

	// Count is the streak that made the transition: consecutive failed
	// probes (to Unhealthy), passed probes (to Healthy, active), or failed
	// attempts (to Ejected); Threshold is the setting it reached
	// (unhealthyThreshold, healthyThreshold, consecutiveFailures). First
	// marks a target's first probe, which decides alone.
	Count, Threshold int
	First            bool
	// Err is why the last probe or attempt failed (to Unhealthy or
	// Ejected): a transport error, or the status it answered ("status 503").
	Err error
	// Ejection is how long the target is ejected (to Ejected) or was
	// (from Ejected); Ejections is how many ejections in a row this one
	// is, by which ejectionTime is multiplied.
	Ejection  time.Duration
	Ejections int
}

// report tells the observer of tr, a transition of one of p's targets.
func (p *Pool) report(tr Transition) {
	if p.observer == nil || p.closed.Load() {
		return
	}
	tr.Upstream = p.name
	p.observer.TargetTransition(tr)
}
