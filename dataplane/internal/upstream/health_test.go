package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// backend is an httptest server whose health endpoint answers status.
type backend struct {
	srv    *httptest.Server
	status atomic.Int32
	probes atomic.Int32
}

func newBackend(t *testing.T) *backend {
	b := &backend{}
	b.status.Store(http.StatusOK)
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			b.probes.Add(1)
			w.WriteHeader(int(b.status.Load()))
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

func activeSpec(active *meridianv1.ActiveHealthCheck, bs ...*backend) *meridianv1.UpstreamSpec {
	s := &meridianv1.UpstreamSpec{HealthCheck: &meridianv1.HealthCheck{Active: active}}
	for _, b := range bs {
		s.Targets = append(s.Targets, &meridianv1.Target{Address: b.addr()})
	}
	return s
}

// eventually waits for cond, failing after a generous deadline. It asserts
// an outcome, not a timing.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestActiveThresholds(t *testing.T) {
	tests := []struct {
		name      string
		active    *meridianv1.ActiveHealthCheck
		bad       int32
		healthy   int
		unhealthy int
	}{
		{"defaults", &meridianv1.ActiveHealthCheck{Path: "/healthz"}, 500, DefaultHealthyThreshold, DefaultUnhealthyThreshold},
		{"custom", &meridianv1.ActiveHealthCheck{Path: "/healthz", HealthyThreshold: 4, UnhealthyThreshold: 1}, 503, 4, 1},
		{"expected statuses", &meridianv1.ActiveHealthCheck{Path: "/healthz", ExpectedStatuses: []uint32{200}}, 204, DefaultHealthyThreshold, DefaultUnhealthyThreshold},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			// A pool without a checker goroutine; the test drives the
			// rounds itself so it can count them.
			p := testPool(t, activeSpec(nil, b), nil, nil)
			c := newChecker(p, tt.active)
			results := make([]error, 1)
			tg := p.targets[0]
			check := func() { t.Helper(); c.check(context.Background(), results) }

			check()
			if tg.down.Load() {
				t.Fatal("healthy target marked down")
			}
			b.status.Store(tt.bad)
			for i := 1; i < tt.unhealthy; i++ {
				check()
				if tg.down.Load() {
					t.Fatalf("down after %d failed probes, want %d", i, tt.unhealthy)
				}
			}
			check()
			if !tg.down.Load() {
				t.Fatalf("not down after %d failed probes", tt.unhealthy)
			}
			if _, err := p.Pick(nil); !errors.Is(err, ErrNoHealthyTarget) {
				t.Fatalf("Pick with every target down: %v", err)
			}

			b.status.Store(http.StatusOK)
			for i := 1; i < tt.healthy; i++ {
				check()
				if !tg.down.Load() {
					t.Fatalf("up after %d good probes, want %d", i, tt.healthy)
				}
			}
			check()
			if tg.down.Load() {
				t.Fatalf("still down after %d good probes", tt.healthy)
			}
			if got := b.probes.Load(); got != int32(1+tt.unhealthy+tt.healthy) {
				t.Errorf("backend saw %d probes, want %d", got, 1+tt.unhealthy+tt.healthy)
			}
		})
	}
}

func TestActiveFirstProbeDecides(t *testing.T) {
	b := newBackend(t)
	b.status.Store(http.StatusInternalServerError)
	p := testPool(t, activeSpec(nil, b), nil, nil)
	c := newChecker(p, &meridianv1.ActiveHealthCheck{Path: "/healthz", UnhealthyThreshold: 5})
	if _, err := p.Pick(nil); err != nil {
		t.Fatalf("a target not yet probed should be picked: %v", err)
	}
	c.check(context.Background(), make([]error, 1))
	if !p.targets[0].down.Load() {
		t.Error("a new target failing its first probe is not down")
	}
}

func TestActiveUnreachableAndTimeout(t *testing.T) {
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := strings.TrimPrefix(dead.URL, "http://")
	dead.Close()

	spec := &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{
		{Address: strings.TrimPrefix(slow.URL, "http://")}, {Address: deadAddr},
	}}
	p := testPool(t, spec, nil, nil)
	c := newChecker(p, &meridianv1.ActiveHealthCheck{Timeout: durationpb.New(50 * time.Millisecond)})
	c.check(context.Background(), make([]error, 2))
	for i, tg := range p.targets {
		if !tg.down.Load() {
			t.Errorf("target %d (%s) not down", i, tg.Address())
		}
	}
}

func TestActiveChecker(t *testing.T) {
	good, bad := newBackend(t), newBackend(t)
	spec := activeSpec(&meridianv1.ActiveHealthCheck{
		Path:     "/healthz",
		Interval: durationpb.New(10 * time.Millisecond),
		Timeout:  durationpb.New(time.Second),
	}, good, bad)
	p, err := New("u", spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Transport().CloseIdleConnections()
	defer p.Close()
	badTarget := p.targets[1]

	bad.status.Store(http.StatusInternalServerError)
	eventually(t, "the failing target to go down", func() bool { return badTarget.down.Load() })
	for range 100 {
		tg, err := p.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		if tg == badTarget {
			t.Fatal("Pick chose the unhealthy target")
		}
		p.Done(tg, Outcome{Status: 200})
	}

	good.status.Store(http.StatusInternalServerError)
	eventually(t, "every target to go down", func() bool { return p.targets[0].down.Load() })
	if _, err := p.Pick(nil); !errors.Is(err, ErrNoHealthyTarget) {
		t.Fatalf("Pick = %v, want ErrNoHealthyTarget", err)
	}

	bad.status.Store(http.StatusOK)
	eventually(t, "the target to recover", func() bool { return !badTarget.down.Load() })
	if tg, err := p.Pick(nil); err != nil || tg != badTarget {
		t.Fatalf("Pick = %v, %v; want the recovered target", tg, err)
	}
}

func TestCloseStopsChecker(t *testing.T) {
	b := newBackend(t)
	before := goleak.IgnoreCurrent()
	p, err := New("u", activeSpec(&meridianv1.ActiveHealthCheck{Path: "/healthz", Interval: durationpb.New(5 * time.Millisecond)}, b), nil)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "probes", func() bool { return b.probes.Load() >= 2 })
	p.Close()
	p.Close() // idempotent
	p.Transport().CloseIdleConnections()
	// Nothing the pool started is left: not the checker, not a probe, not
	// a connection (client or server side).
	if err := goleak.Find(before); err != nil {
		t.Fatal(err)
	}
}

func passiveSpec(passive *meridianv1.PassiveHealthCheck, n int) *meridianv1.UpstreamSpec {
	s := &meridianv1.UpstreamSpec{Targets: weightedTargets(make([]uint32, n)...), HealthCheck: &meridianv1.HealthCheck{Passive: passive}}
	return s
}

// fail reports n failed attempts at target i.
func fail(p *Pool, i, n int) {
	for range n {
		p.Done(p.targets[i], Outcome{Err: errors.New("connection refused")})
	}
}

func isEjected(p *Pool, i int) bool { return p.Status()[i].Ejected }

func TestOutcomeFailed(t *testing.T) {
	tests := []struct {
		o       Outcome
		failed  bool
		neutral bool
	}{
		{Outcome{Status: 200}, false, false},
		{Outcome{Status: 404}, false, false},
		{Outcome{Status: 500}, true, false},
		{Outcome{Status: 503}, true, false},
		{Outcome{Err: errors.New("reset")}, true, false},
		{Outcome{Err: context.DeadlineExceeded}, true, false},
		{Outcome{Err: context.Canceled}, false, true},
		{Outcome{}, false, true},
	}
	for _, tt := range tests {
		if got := tt.o.Failed(); got != tt.failed {
			t.Errorf("%+v.Failed() = %v", tt.o, got)
		}
		if got := tt.o.neutral(); got != tt.neutral {
			t.Errorf("%+v.neutral() = %v", tt.o, got)
		}
	}
}

func TestPassiveEjection(t *testing.T) {
	clock := newFakeClock()
	p := testPool(t, passiveSpec(&meridianv1.PassiveHealthCheck{ConsecutiveFailures: 3, EjectionTime: durationpb.New(10 * time.Second)}, 4), nil, clock)

	// Failures must be consecutive: a success resets the count; a
	// cancelled request says nothing.
	fail(p, 0, 2)
	p.Done(p.targets[0], Outcome{Status: 200})
	fail(p, 0, 2)
	p.Done(p.targets[0], Outcome{Err: context.Canceled})
	if isEjected(p, 0) {
		t.Fatal("ejected without 3 consecutive failures")
	}
	fail(p, 0, 1)
	if !isEjected(p, 0) {
		t.Fatal("not ejected after 3 consecutive failures")
	}
	for range 100 {
		if tg := pickN(t, p, nil, 1)[0]; tg == 0 {
			t.Fatal("Pick chose an ejected target")
		}
	}

	// The n-th ejection in a row lasts n × ejectionTime.
	for n := 1; n <= 3; n++ {
		clock.advance(time.Duration(n)*10*time.Second - time.Nanosecond)
		if !isEjected(p, 0) {
			t.Fatalf("ejection %d ended before %d×ejectionTime", n, n)
		}
		clock.advance(time.Nanosecond)
		if isEjected(p, 0) {
			t.Fatalf("ejection %d lasted beyond %d×ejectionTime", n, n)
		}
		if c := counts(pickN(t, p, nil, 40), 4); c[0] == 0 {
			t.Fatalf("target not back in rotation after ejection %d: %v", n, c)
		}
		fail(p, 0, 3)
	}

	// Time spent healthy forgives earlier ejections: after 2 × ejectionTime
	// back in rotation, 4 - 2 ejections are remembered, so the next one
	// lasts 3 × ejectionTime.
	clock.advance(40 * time.Second) // end of the 4th ejection
	clock.advance(20 * time.Second)
	fail(p, 0, 3)
	clock.advance(30*time.Second - time.Nanosecond)
	if !isEjected(p, 0) {
		t.Fatal("ejection after forgiveness shorter than 3×ejectionTime")
	}
	clock.advance(time.Nanosecond)
	if isEjected(p, 0) {
		t.Fatal("ejection after forgiveness longer than 3×ejectionTime")
	}
}

func TestPassiveEjectionCapped(t *testing.T) {
	clock := newFakeClock()
	p := testPool(t, passiveSpec(&meridianv1.PassiveHealthCheck{ConsecutiveFailures: 1, EjectionTime: durationpb.New(time.Second)}, 2), nil, clock)
	for range 15 {
		fail(p, 0, 1)
		clock.advance(maxEjectionMultiplier * time.Second)
		if isEjected(p, 0) {
			t.Fatalf("an ejection lasted more than %d×ejectionTime", maxEjectionMultiplier)
		}
	}
}

func TestPassiveFailuresWhileEjectedIgnored(t *testing.T) {
	clock := newFakeClock()
	p := testPool(t, passiveSpec(&meridianv1.PassiveHealthCheck{ConsecutiveFailures: 2, EjectionTime: durationpb.New(time.Second)}, 2), nil, clock)
	fail(p, 0, 2)
	fail(p, 0, 5) // requests that were in flight when it was ejected
	clock.advance(time.Second)
	fail(p, 0, 1)
	if isEjected(p, 0) {
		t.Error("one failure after returning re-ejected the target")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name    string
		percent uint32
		targets int
		want    int // most targets ejected at once
	}{
		{"default 50% of 4", 0, 4, 2},
		{"default 50% of 1 never ejects", 0, 1, 0},
		{"default 50% of 3", 0, 3, 1},
		{"10% of 5 ejects none", 10, 5, 0},
		{"10% of 10", 10, 10, 1},
		{"99% of 3 keeps one", 99, 3, 2},
		{"100% of 3 may eject all", 100, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			p := testPool(t, passiveSpec(&meridianv1.PassiveHealthCheck{ConsecutiveFailures: 1, MaxEjectionPercent: tt.percent}, tt.targets), nil, clock)
			for i := range tt.targets {
				fail(p, i, 1)
			}
			ejected := 0
			for i := range tt.targets {
				if isEjected(p, i) {
					ejected++
				}
			}
			if ejected != tt.want {
				t.Fatalf("%d targets ejected, want %d", ejected, tt.want)
			}
			if _, err := p.Pick(nil); (err != nil) != (tt.want == tt.targets) {
				t.Errorf("Pick error = %v with %d of %d ejected", err, ejected, tt.targets)
			}
			if ejected == 0 || ejected == tt.targets {
				return
			}
			// When one returns, a target held back by the limit is ejected
			// on its next failure.
			clock.advance(DefaultEjectionTime)
			last := tt.targets - 1
			if isEjected(p, last) {
				t.Fatal("last target ejected beyond the limit")
			}
			fail(p, last, 1)
			if !isEjected(p, last) {
				t.Error("held-back target not ejected once there was room")
			}
		})
	}
}

func TestPassiveOffByDefault(t *testing.T) {
	p := testPool(t, &meridianv1.UpstreamSpec{Targets: weightedTargets(1, 1)}, nil, nil)
	fail(p, 0, 100)
	if isEjected(p, 0) {
		t.Error("ejected without spec.healthCheck.passive")
	}
}

func TestStateSurvivesPush(t *testing.T) {
	clock := newFakeClock()
	b1, b2, b3 := newBackend(t), newBackend(t), newBackend(t)
	spec := func(bs ...*backend) *meridianv1.UpstreamSpec {
		s := activeSpec(&meridianv1.ActiveHealthCheck{Path: "/healthz", Interval: durationpb.New(time.Hour)}, bs...)
		s.HealthCheck.Passive = &meridianv1.PassiveHealthCheck{ConsecutiveFailures: 1}
		return s
	}
	p1 := testPool(t, spec(b1, b2, b3), nil, clock)
	// Wait for the first round of probes, then mark b2 actively down and
	// eject b3.
	eventually(t, "first probes", func() bool { return p1.targets[2].probed.Load() })
	p1.targets[1].down.Store(true)
	fail(p1, 2, 1)
	held, err := p1.Pick(nil)
	if err != nil {
		t.Fatal(err)
	}

	same := testPool(t, spec(b1, b2, b3), p1, clock)
	if same != p1 {
		t.Fatal("an unchanged spec did not return the previous pool")
	}
	p1.Done(held, Outcome{Status: 200})

	// Targets changed: b1 goes, b4 comes; b2 and b3 keep their state.
	b4 := newBackend(t)
	p2 := testPool(t, spec(b2, b3, b4), p1, clock)
	if p2 == p1 || p2.Transport() != p1.Transport() {
		t.Fatal("a target change should build a new pool on the same transport")
	}
	st := p2.Status()
	if st[0].Healthy || !st[1].Ejected || !st[2].Healthy || st[2].Ejected {
		t.Errorf("carried-over state = %+v", st)
	}
	// b2's verdict is carried over rather than re-decided by one probe:
	// it stays down until healthyThreshold good probes (the hour-long
	// interval allows one).
	if !p2.targets[0].probed.Load() {
		t.Error("probed flag not carried over")
	}

	// Dropping the checks drops their state: nothing stays down forever.
	p3 := testPool(t, &meridianv1.UpstreamSpec{Targets: spec(b2, b3).Targets}, p2, clock)
	for _, s := range p3.Status() {
		if !s.Healthy || s.Ejected {
			t.Errorf("state kept without health checks: %+v", s)
		}
	}
}

func TestCloseUnusedClosesPools(t *testing.T) {
	b := newBackend(t)
	before := goleak.IgnoreCurrent()
	check := &meridianv1.ActiveHealthCheck{Path: "/healthz", Interval: durationpb.New(5 * time.Millisecond)}
	keep, err := New("keep", activeSpec(check, b), nil)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := New("gone", activeSpec(check, b), nil)
	if err != nil {
		t.Fatal(err)
	}
	keptAgain, err := New("keep", activeSpec(check, b), keep)
	if err != nil {
		t.Fatal(err)
	}
	CloseUnused(map[string]*Pool{"keep": keep, "gone": gone}, map[string]*Pool{"keep": keptAgain})

	// The kept pool's checker still runs.
	n := b.probes.Load()
	eventually(t, "the kept pool to keep probing", func() bool { return b.probes.Load() > n+2 })

	CloseUnused(map[string]*Pool{"keep": keptAgain}, nil)
	if err := goleak.Find(before); err != nil {
		t.Fatal(err)
	}
}

// TestHealthCheckCounts: probes are counted by result, and a pool rebuilt
// for a changed spec keeps counting from its predecessor's totals.
func TestHealthCheckCounts(t *testing.T) {
	good, bad := newBackend(t), newBackend(t)
	bad.status.Store(http.StatusServiceUnavailable)
	// One round of probes at start, and no other for an hour.
	check := func(healthy uint32) *meridianv1.ActiveHealthCheck {
		return &meridianv1.ActiveHealthCheck{Path: "/healthz", Interval: durationpb.New(time.Hour), HealthyThreshold: healthy}
	}
	p, err := New("u", activeSpec(check(1), good, bad), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Transport().CloseIdleConnections()
	defer p.Close()
	if !p.ActiveHealthCheck() {
		t.Error("ActiveHealthCheck() = false with an active check")
	}
	eventually(t, "the first round of probes", func() bool { ok, failed := p.HealthChecks(); return ok+failed == 2 })
	if ok, failed := p.HealthChecks(); ok != 1 || failed != 1 {
		t.Errorf("HealthChecks() = %d passed, %d failed; want 1, 1", ok, failed)
	}

	next, err := New("u", activeSpec(check(2), good, bad), p)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	eventually(t, "the new pool's first round", func() bool { ok, failed := next.HealthChecks(); return ok+failed == 4 })
	if ok, failed := next.HealthChecks(); ok != 2 || failed != 2 {
		t.Errorf("after the new pool's round: %d passed, %d failed; want 2, 2", ok, failed)
	}

	plain, err := New("p", &meridianv1.UpstreamSpec{Targets: activeSpec(check(1), good).Targets}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if plain.ActiveHealthCheck() {
		t.Error("ActiveHealthCheck() = true without an active check")
	}
}
