package upstream

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu  sync.Mutex
	got []Transition
}

func (r *recorder) TargetTransition(tr Transition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, tr)
}

// take returns the transitions reported since the last take.
func (r *recorder) take() []Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = nil
	return got
}

// observedPool is testPool with an observer.
func observedPool(t *testing.T, spec *meridianv1.UpstreamSpec, clock *fakeClock) (*Pool, *recorder) {
	t.Helper()
	rec := &recorder{}
	p, err := build("u", spec, nil, Options{Observer: rec}, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		p.Transport().CloseIdleConnections()
	})
	return p, rec
}

// wantOne fails unless got is exactly one transition equal to want, Err
// compared by its text.
func wantOne(t *testing.T, step string, got []Transition, want Transition, wantErr string) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("%s: %d transitions reported, want 1: %+v", step, len(got), got)
	}
	g := got[0]
	errText := ""
	if g.Err != nil {
		errText = g.Err.Error()
	}
	if !strings.Contains(errText, wantErr) || (wantErr == "") != (g.Err == nil) {
		t.Errorf("%s: Err %q, want one containing %q", step, errText, wantErr)
	}
	g.Err = nil
	if g != want {
		t.Errorf("%s: got  %+v\nwant %+v", step, g, want)
	}
}

func TestActiveTransitionsReported(t *testing.T) {
	b := newBackend(t)
	p, rec := observedPool(t, activeSpec(nil, b), newFakeClock())
	c := newChecker(p, &meridianv1.ActiveHealthCheck{Path: "/healthz", HealthyThreshold: 2, UnhealthyThreshold: 3})
	results := make([]error, 1)
	check := func() { t.Helper(); c.check(context.Background(), results) }
	addr := b.addr()

	check() // the first probe passes: healthy, as it was taken to be
	b.status.Store(http.StatusServiceUnavailable)
	check()
	check()
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("reported before the threshold: %+v", got)
	}
	check()
	wantOne(t, "3rd failed probe", rec.take(), Transition{Upstream: "u", Target: addr, Check: ActiveCheck,
		From: Healthy, To: Unhealthy, Count: 3, Threshold: 3}, "status 503")
	check() // still failing: no transition
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("a failed probe of a down target reported %+v", got)
	}

	b.status.Store(http.StatusOK)
	check()
	check()
	wantOne(t, "2nd passed probe", rec.take(), Transition{Upstream: "u", Target: addr, Check: ActiveCheck,
		From: Unhealthy, To: Healthy, Count: 2, Threshold: 2}, "")
	check()
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("a passed probe of a healthy target reported %+v", got)
	}
}

func TestActiveFirstProbeReported(t *testing.T) {
	dead := newBackend(t)
	addr := dead.addr()
	dead.srv.Close()
	p, rec := observedPool(t, activeSpec(nil, dead), newFakeClock())
	c := newChecker(p, &meridianv1.ActiveHealthCheck{UnhealthyThreshold: 5})
	c.check(context.Background(), make([]error, 1))
	wantOne(t, "first probe", rec.take(), Transition{Upstream: "u", Target: addr, Check: ActiveCheck,
		From: Healthy, To: Unhealthy, First: true, Count: 1, Threshold: 5}, "connection refused")
}

func TestPassiveTransitionsReported(t *testing.T) {
	clock := newFakeClock()
	p, rec := observedPool(t, passiveSpec(&meridianv1.PassiveHealthCheck{ConsecutiveFailures: 3, EjectionTime: durationpb.New(10 * time.Second)}, 4), clock)
	addr := p.targets[0].addr

	fail(p, 0, 2)
	p.Done(p.targets[0], Outcome{Status: 502})
	wantOne(t, "ejection", rec.take(), Transition{Upstream: "u", Target: addr, Check: PassiveCheck,
		From: Healthy, To: Ejected, Count: 3, Threshold: 3, Ejection: 10 * time.Second, Ejections: 1}, "status 502")
	fail(p, 0, 5) // in flight when it was ejected: ignored
	isEjected(p, 0)
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("while ejected: %+v", got)
	}

	// The return is reported by whoever notices it first, once.
	clock.advance(10 * time.Second)
	isEjected(p, 0) // Status
	pickN(t, p, nil, 8)
	wantOne(t, "return", rec.take(), Transition{Upstream: "u", Target: addr, Check: PassiveCheck,
		From: Ejected, To: Healthy, Ejection: 10 * time.Second}, "")

	// An ejection over but not yet noticed is ended, and reported, before
	// the next one. The second ejection in a row lasts 20s, the third 30s.
	fail(p, 0, 3)
	rec.take()
	clock.advance(20 * time.Second)
	fail(p, 0, 3)
	got := rec.take()
	if len(got) != 2 || got[0].To != Healthy || got[0].Ejection != 20*time.Second ||
		got[1].To != Ejected || got[1].Ejections != 3 || got[1].Ejection != 30*time.Second {
		t.Fatalf("return then ejection: %+v", got)
	}
}

func TestClosedPoolReportsNothing(t *testing.T) {
	clock := newFakeClock()
	p, rec := observedPool(t, passiveSpec(&meridianv1.PassiveHealthCheck{ConsecutiveFailures: 1}, 2), clock)
	fail(p, 0, 1)
	rec.take()
	p.Close()
	clock.advance(time.Hour)
	pickN(t, p, nil, 4)
	fail(p, 1, 1)
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("a closed pool reported %+v", got)
	}
}
