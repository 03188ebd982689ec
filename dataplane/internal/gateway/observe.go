package gateway

import (
	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/global"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// statsStore is a GlobalStore that counts its Redis traffic, as
// *global.Limiter does.
type statsStore interface {
	Stats() global.Stats
}

// Observe fills in the live configuration's part of a metrics scrape:
// its version, target health, breakers and global rate limits' fallback
// state, and the Redis client's counters. It reads the state where it
// lives, so the request path pays nothing for these metrics.
func (g *Gateway) Observe(o *metrics.Observation) {
	if s, ok := g.redis.(statsStore); ok {
		st := s.Stats()
		o.Redis = &metrics.RedisState{
			Available: g.redis.Available(), ScriptCalls: st.ScriptCalls,
			Failures: st.Failures, FastFailures: st.FastFailures,
		}
	}
	c := g.current.Load()
	if c == nil {
		return
	}
	o.ConfigVersion, o.ConfigAppliedAt = c.version, c.appliedAt

	for name, p := range c.pools {
		u := metrics.UpstreamState{Name: name, ActiveChecks: p.ActiveHealthCheck()}
		for _, t := range p.Status() {
			switch {
			case !t.Healthy:
				u.Unhealthy++
			case t.Ejected:
				u.Ejected++
			default:
				u.Healthy++
			}
		}
		if u.ActiveChecks {
			u.ChecksPassed, u.ChecksFailed = p.HealthChecks()
		}
		o.Upstreams = append(o.Upstreams, u)
	}

	for _, bi := range c.breakers {
		s := bi.b.Snapshot()
		state := metrics.BreakerClosed
		switch s.State {
		case breaker.Open:
			state = metrics.BreakerOpen
		case breaker.HalfOpen:
			state = metrics.BreakerHalfOpen
		}
		l := bi.labels
		o.Breakers = append(o.Breakers, metrics.BreakerState{
			Breaker: l.breaker, Upstream: l.upstream, Route: l.route, Target: l.target,
			State: state, Transitions: s.Transitions, Rejected: s.Rejected,
		})
	}

	for name, rl := range c.limits {
		if rl.spec.GetScope() != meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL {
			continue
		}
		// Without Redis, every decision is the fallback's.
		fallback := rl.remote == nil || rl.failing.Load()
		o.RateLimits = append(o.RateLimits, metrics.RateLimitState{Name: name, Fallback: fallback})
	}
}
