package gateway

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func breakerRes(name string, scope meridianv1.BreakerScope, failures uint32) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_CircuitBreaker{CircuitBreaker: &meridianv1.CircuitBreaker{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec: &meridianv1.CircuitBreakerSpec{
			Scope: scope,
			Trip:  &meridianv1.TripConditions{ConsecutiveFailures: failures},
		},
	}}}
}

// TestBreakerInstances: a CircuitBreaker gets one instance per upstream,
// route or target as its scope says; an instance survives pushes that do
// not change its spec or its routes' timeouts, and is rebuilt when they do.
func TestBreakerInstances(t *testing.T) {
	up := upstreamRes("up", targets("127.0.0.1:1", "127.0.0.1:2"))
	withBreaker := func(name, cb, path string, timeout time.Duration) *meridianv1.Resource {
		r := routeRes(name, "up", prefix(path))
		r.GetRoute().Spec.CircuitBreaker = cb
		if timeout > 0 {
			r.GetRoute().Spec.Timeout = durationpb.New(timeout)
		}
		return r
	}
	g := newGateway()
	defer g.Close()
	apply := func(version uint64, rs ...*meridianv1.Resource) map[string]*breakerInstance {
		t.Helper()
		if err := g.Apply(context.Background(), snapshot(version, rs...), SourceControlPlane); err != nil {
			t.Fatal(err)
		}
		return g.Current().breakers
	}

	v1 := apply(1, up,
		breakerRes("per-upstream", meridianv1.BreakerScope_BREAKER_SCOPE_UNSPECIFIED, 5),
		breakerRes("per-route", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 5),
		breakerRes("per-target", meridianv1.BreakerScope_BREAKER_SCOPE_TARGET, 5),
		withBreaker("a", "per-upstream", "/a", time.Second),
		withBreaker("b", "per-upstream", "/b", 2*time.Second),
		withBreaker("c", "per-route", "/c", 0),
		withBreaker("d", "per-route", "/d", 0),
		withBreaker("e", "per-target", "/e", 0),
	)
	want := []string{
		"per-upstream/upstream/up",
		"per-route/route/c", "per-route/route/d",
		"per-target/target/up/127.0.0.1:1", "per-target/target/up/127.0.0.1:2",
	}
	if len(v1) != len(want) {
		t.Fatalf("instances %v, want %v", keys(v1), want)
	}
	for _, k := range want {
		if v1[k] == nil {
			t.Errorf("no instance %q; have %v", k, keys(v1))
		}
	}
	if got := v1["per-upstream/upstream/up"].probe; got != 2*time.Second {
		t.Errorf("shared breaker's probe timeout %v, want the longest route timeout 2s", got)
	}

	// An unrelated route: every instance carried over.
	v2 := apply(2, up,
		breakerRes("per-upstream", meridianv1.BreakerScope_BREAKER_SCOPE_UNSPECIFIED, 5),
		breakerRes("per-route", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 5),
		breakerRes("per-target", meridianv1.BreakerScope_BREAKER_SCOPE_TARGET, 5),
		withBreaker("a", "per-upstream", "/a", time.Second),
		withBreaker("b", "per-upstream", "/b", 2*time.Second),
		withBreaker("c", "per-route", "/c", 0),
		withBreaker("d", "per-route", "/d", 0),
		withBreaker("e", "per-target", "/e", 0),
		routeRes("plain", "up", prefix("/plain")),
	)
	for _, k := range want {
		if v2[k] != v1[k] {
			t.Errorf("%s rebuilt by an unrelated push", k)
		}
	}

	// A changed spec and a changed timeout: those instances are new.
	v3 := apply(3, up,
		breakerRes("per-upstream", meridianv1.BreakerScope_BREAKER_SCOPE_UNSPECIFIED, 5),
		breakerRes("per-route", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 6),
		breakerRes("per-target", meridianv1.BreakerScope_BREAKER_SCOPE_TARGET, 5),
		withBreaker("a", "per-upstream", "/a", time.Second),
		withBreaker("b", "per-upstream", "/b", 3*time.Second),
		withBreaker("c", "per-route", "/c", 0),
		withBreaker("d", "per-route", "/d", 0),
		withBreaker("e", "per-target", "/e", 0),
	)
	for k, rebuilt := range map[string]bool{
		"per-upstream/upstream/up": true, "per-route/route/c": true, "per-route/route/d": true,
		"per-target/target/up/127.0.0.1:1": false, "per-target/target/up/127.0.0.1:2": false,
	} {
		if got := v3[k] != v2[k]; got != rebuilt {
			t.Errorf("%s rebuilt = %v, want %v", k, got, rebuilt)
		}
	}
}

// TestUpstreamBreakerAppliesToItsRoutes: a route without a breaker of its
// own uses its upstream's; a route's own overrides it.
func TestUpstreamBreakerAppliesToItsRoutes(t *testing.T) {
	up := upstreamRes("up", targets("127.0.0.1:1"))
	up.GetUpstream().Spec.CircuitBreaker = "up-cb"
	own := routeRes("own", "up", prefix("/own"))
	own.GetRoute().Spec.CircuitBreaker = "route-cb"
	g := newGateway()
	defer g.Close()
	if err := g.Apply(context.Background(), snapshot(1, up,
		breakerRes("up-cb", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 5),
		breakerRes("route-cb", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 5),
		routeRes("inherits", "up", prefix("/inherits")), own,
	), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	got := keys(g.Current().breakers)
	want := []string{"route-cb/route/own", "up-cb/route/inherits"}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("instances %v, want %v", got, want)
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
