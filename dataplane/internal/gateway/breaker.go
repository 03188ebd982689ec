package gateway

import (
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/statelog"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// breakerInstance is one live circuit breaker: a CircuitBreaker applied to
// one upstream, route or target, as its scope says. A push that leaves its
// spec and probe timeout unchanged carries it over, state and window and
// all.
type breakerInstance struct {
	spec   *meridianv1.CircuitBreakerSpec
	probe  time.Duration
	b      *breaker.Breaker
	labels breakerLabels
}

// breakerLabels name an instance in metrics: its CircuitBreaker and what
// its scope applies it to; the parts a scope does not use are "".
type breakerLabels struct {
	breaker, upstream, route, target string
}

// routeBreakers is what one route's proxy needs from its CircuitBreaker.
type routeBreakers struct {
	shared   *breaker.Breaker            // scope upstream or route
	byTarget map[string]*breaker.Breaker // scope target, by address
	fallback *meridianv1.Fallback
}

// targetBreaker returns the per-target lookup for the proxy, or nil.
func (rb routeBreakers) targetBreaker() func(string) *breaker.Breaker {
	if rb.byTarget == nil {
		return nil
	}
	return func(addr string) *breaker.Breaker { return rb.byTarget[addr] }
}

// breakerPlan collects, per breaker instance, the spec and the longest
// route timeout among the routes it guards (a half-open probe gives its
// slot back after it), before any breaker is built.
type breakerPlan struct {
	name   string
	spec   *meridianv1.CircuitBreakerSpec
	probe  time.Duration
	labels breakerLabels
}

// compileBreakers builds the circuit breakers every route needs, carrying
// over live's instances whose spec and probe timeout did not change. New
// instances report their transitions to states. It returns the instances
// by key and each route's breakers by route name.
func compileBreakers(rs []*meridianv1.Resource, live map[string]*breakerInstance, states *statelog.Logger) (map[string]*breakerInstance, map[string]routeBreakers, config.ErrorList) {
	specs := map[string]*meridianv1.CircuitBreakerSpec{}
	ups := map[string]*meridianv1.UpstreamSpec{}
	for _, r := range rs {
		if cb := r.GetCircuitBreaker(); cb != nil {
			specs[cb.GetMetadata().GetName()] = cb.GetSpec()
		}
		if u := r.GetUpstream(); u != nil {
			ups[u.GetMetadata().GetName()] = u.GetSpec()
		}
	}

	// keys lists each route's instance keys: one for scope upstream or
	// route, one per target address for scope target.
	type routeUse struct {
		cb      string
		targets map[string]string // address -> key, scope target only
		key     string            // scope upstream or route
	}
	plans := map[string]*breakerPlan{}
	uses := map[string]routeUse{}
	plan := func(key string, labels breakerLabels, timeout time.Duration) {
		cb := labels.breaker
		p := plans[key]
		if p == nil {
			p = &breakerPlan{name: cb, spec: specs[cb], probe: timeout, labels: labels}
			plans[key] = p
		}
		// A route without a timeout lets a probe run as long as the
		// breaker's default allows.
		if timeout == 0 || p.probe == 0 {
			p.probe = 0
		} else {
			p.probe = max(p.probe, timeout)
		}
	}
	for _, r := range rs {
		rt := r.GetRoute()
		if rt == nil {
			continue
		}
		route, spec := rt.GetMetadata().GetName(), rt.GetSpec()
		up := spec.GetUpstream()
		cb := spec.GetCircuitBreaker()
		if cb == "" {
			cb = ups[up].GetCircuitBreaker()
		}
		if cb == "" || specs[cb] == nil {
			// Validate checks references; a missing one is not a path.
			continue
		}
		timeout := spec.GetTimeout().AsDuration()
		use := routeUse{cb: cb}
		switch specs[cb].GetScope() {
		case meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE:
			use.key = cb + "/route/" + route
			plan(use.key, breakerLabels{breaker: cb, upstream: up, route: route}, timeout)
		case meridianv1.BreakerScope_BREAKER_SCOPE_TARGET:
			use.targets = map[string]string{}
			for _, t := range ups[up].GetTargets() {
				key := cb + "/target/" + up + "/" + t.GetAddress()
				use.targets[t.GetAddress()] = key
				plan(key, breakerLabels{breaker: cb, upstream: up, target: t.GetAddress()}, timeout)
			}
		default: // upstream, the default
			use.key = cb + "/upstream/" + up
			plan(use.key, breakerLabels{breaker: cb, upstream: up}, timeout)
		}
		uses[route] = use
	}

	instances := map[string]*breakerInstance{}
	var errs config.ErrorList
	for key, p := range plans {
		if old := live[key]; old != nil && old.probe == p.probe && proto.Equal(old.spec, p.spec) {
			instances[key] = old
			continue
		}
		l := p.labels
		b, err := breaker.New(p.spec, breaker.Options{ProbeTimeout: p.probe, Observer: states.Breaker(statelog.BreakerNames{
			Breaker: l.breaker, Upstream: l.upstream, Route: l.route, Target: l.target,
		})})
		if err != nil {
			errs = append(errs, &config.FieldError{Kind: config.KindCircuitBreaker, Name: p.name, Path: "spec", Msg: err.Error()})
			continue
		}
		instances[key] = &breakerInstance{spec: p.spec, probe: p.probe, b: b, labels: p.labels}
	}
	if len(errs) > 0 {
		return nil, nil, errs
	}

	routes := map[string]routeBreakers{}
	for route, use := range uses {
		rb := routeBreakers{fallback: specs[use.cb].GetFallback()}
		if use.targets != nil {
			rb.byTarget = make(map[string]*breaker.Breaker, len(use.targets))
			for addr, key := range use.targets {
				rb.byTarget[addr] = instances[key].b
			}
		} else {
			rb.shared = instances[use.key].b
		}
		routes[route] = rb
	}
	return instances, routes, nil
}
