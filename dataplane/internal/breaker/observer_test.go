package breaker

import (
	"sync"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu  sync.Mutex
	got []Transition
}

func (r *recorder) BreakerTransition(tr Transition) {
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

func wantTransition(t *testing.T, step string, got []Transition, want Transition) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("%s: %d transitions reported, want 1: %+v", step, len(got), got)
	}
	if got[0] != want {
		t.Errorf("%s:\n got  %+v\n want %+v", step, got[0], want)
	}
}

func TestObserverTrips(t *testing.T) {
	q := 0.9 // 1-q at run time, as the breaker computes it
	tests := []struct {
		name string
		trip *meridianv1.TripConditions
		run  func(d *driver)
		want Transition
	}{
		{
			name: "error rate",
			trip: &meridianv1.TripConditions{ErrorRate: 0.5},
			run: func(d *driver) {
				d.send(10, Success, time.Millisecond)
				d.send(5, Failure, time.Millisecond)
				d.send(5, Timeout, time.Millisecond)
				d.settle()
			},
			// All 20 requests fall in the first 100 ms bucket.
			want: Transition{From: Closed, To: Open, Cause: CauseErrorRate, Requests: 20, Failures: 10,
				Window: 100 * time.Millisecond, Threshold: 0.5, OpenFor: 5 * time.Second},
		},
		{
			name: "latency",
			trip: &meridianv1.TripConditions{Latency: &meridianv1.LatencyTrip{Quantile: q, Threshold: dur(100 * time.Millisecond)}},
			run:  func(d *driver) { d.send(20, Success, 150*time.Millisecond) },
			// The 20th request ends at 3.019 s: buckets 0 to 30.
			want: Transition{From: Closed, To: Open, Cause: CauseLatency, Requests: 20, Slow: 20,
				Window: 3100 * time.Millisecond, Threshold: 1 - q, LatencyThreshold: 100 * time.Millisecond,
				OpenFor: 5 * time.Second},
		},
		{
			name: "consecutive failures",
			trip: &meridianv1.TripConditions{ConsecutiveFailures: 3},
			run:  func(d *driver) { d.send(3, Failure, time.Millisecond) },
			want: Transition{From: Closed, To: Open, Cause: CauseConsecutiveFailures, Failures: 3, Threshold: 3,
				OpenFor: 5 * time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) { s.Trip = tt.trip }), Options{Observer: rec})
			tt.run(d)
			wantTransition(t, "trip", rec.take(), tt.want)
		})
	}
}

// TestObserverCycle follows a breaker through a failed recovery and a
// successful one: every transition is reported once, in order, with the
// probe that made it, as many as Snapshot counts.
func TestObserverCycle(t *testing.T) {
	rec := &recorder{}
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{ConsecutiveFailures: 2}
	}), Options{Observer: rec})
	d.send(2, Failure, time.Millisecond)
	wantTransition(t, "trip", rec.take(), Transition{From: Closed, To: Open, Cause: CauseConsecutiveFailures,
		Failures: 2, Threshold: 2, OpenFor: 5 * time.Second})

	d.untilHalfOpen()
	d.b.State()
	d.b.State()
	wantTransition(t, "half-open", rec.take(), Transition{From: Open, To: HalfOpen, Probes: 1, Successes: 3})

	d.b.Record(d.allow(), Timeout, 2*time.Second)
	wantTransition(t, "failed probe", rec.take(), Transition{From: HalfOpen, To: Open, Cause: CauseProbe,
		Probe: Timeout, ProbeLatency: 2 * time.Second, OpenFor: 10 * time.Second})

	d.clk.Add(2 * time.Second)
	d.untilHalfOpen()
	for range 3 {
		d.b.Record(d.allow(), Success, 10*time.Millisecond)
	}
	got := rec.take()
	if len(got) != 2 {
		t.Fatalf("recovery: %d transitions, want half-open then closed: %+v", len(got), got)
	}
	wantTransition(t, "half-open again", got[:1], Transition{From: Open, To: HalfOpen, Probes: 1, Successes: 3})
	wantTransition(t, "closed", got[1:], Transition{From: HalfOpen, To: Closed, Probe: Success,
		ProbeLatency: 10 * time.Millisecond, Successes: 3})

	if n := d.b.Snapshot().Transitions; n != 5 {
		t.Errorf("Snapshot counts %d transitions, 5 reported", n)
	}
}

func TestObserverSlowProbe(t *testing.T) {
	rec := &recorder{}
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip.Latency = &meridianv1.LatencyTrip{Quantile: 0.99, Threshold: dur(300 * time.Millisecond)}
	}), Options{Observer: rec})
	d.trip()
	d.untilHalfOpen()
	d.b.Record(d.allow(), Success, 301*time.Millisecond)
	got := rec.take()
	if len(got) != 3 {
		t.Fatalf("%d transitions, want open, half-open, open: %+v", len(got), got)
	}
	wantTransition(t, "slow probe", got[2:], Transition{From: HalfOpen, To: Open, Cause: CauseProbe,
		Probe: Success, ProbeLatency: 301 * time.Millisecond, LatencyThreshold: 300 * time.Millisecond,
		OpenFor: 10 * time.Second})
}
