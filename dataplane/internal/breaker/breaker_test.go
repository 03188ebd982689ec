package breaker

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// fakeClock is a clock tests move by hand; safe for concurrent use.
type fakeClock struct {
	base time.Time
	ns   atomic.Int64
}

func newClock() *fakeClock {
	return &fakeClock{base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time          { return c.base.Add(time.Duration(c.ns.Load())) }
func (c *fakeClock) Add(d time.Duration)     { c.ns.Add(int64(d)) }
func (c *fakeClock) Elapsed() time.Duration  { return time.Duration(c.ns.Load()) }
func (c *fakeClock) Set(since time.Duration) { c.ns.Store(int64(since)) }

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// testSpec is DESIGN.md's example with errorRate as the only condition,
// changed by edit.
func testSpec(edit func(*meridianv1.CircuitBreakerSpec)) *meridianv1.CircuitBreakerSpec {
	s := &meridianv1.CircuitBreakerSpec{
		Window:      dur(10 * time.Second),
		Bucket:      dur(100 * time.Millisecond),
		MinRequests: 20,
		Trip:        &meridianv1.TripConditions{ErrorRate: 0.5},
		Open:        &meridianv1.OpenPolicy{Duration: dur(5 * time.Second), MaxDuration: dur(60 * time.Second), Multiplier: 2},
		HalfOpen:    &meridianv1.HalfOpenPolicy{Probes: 1, Successes: 3},
	}
	if edit != nil {
		edit(s)
	}
	return s
}

// driver sends requests through a breaker on a fake clock.
type driver struct {
	t   *testing.T
	b   *Breaker
	clk *fakeClock
}

func newDriver(t *testing.T, spec *meridianv1.CircuitBreakerSpec, opts Options) *driver {
	t.Helper()
	clk := newClock()
	opts.Now = clk.Now
	b, err := New(spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &driver{t: t, b: b, clk: clk}
}

// allow asks for a ticket and fails the test if refused.
func (d *driver) allow() Ticket {
	d.t.Helper()
	tk, err := d.b.Allow()
	if err != nil {
		d.t.Fatalf("at %s: Allow: %v (state %s)", d.clk.Elapsed(), err, d.b.State())
	}
	return tk
}

// send sends n requests one after the other, each with outcome o after
// latency, then 1 ms of pause.
func (d *driver) send(n int, o Outcome, latency time.Duration) {
	d.t.Helper()
	for range n {
		tk := d.allow()
		d.clk.Add(latency)
		d.b.Record(tk, o, latency)
		d.clk.Add(time.Millisecond)
	}
}

// hang starts n requests 1 ms apart that never end.
func (d *driver) hang(n int) {
	d.t.Helper()
	for range n {
		d.allow()
		d.clk.Add(time.Millisecond)
	}
}

// settle lets the judge run once more and returns the state.
func (d *driver) settle() State {
	d.clk.Add(time.Duration(judgeEvery))
	if tk, err := d.b.Allow(); err == nil {
		d.b.Record(tk, Canceled, 0)
	}
	return d.b.State()
}

// trip sends failures until the breaker trips, leaving the clock at the
// time it did.
func (d *driver) trip() {
	d.t.Helper()
	for range 1000 {
		tk, err := d.b.Allow()
		if errors.Is(err, ErrOpen) {
			return
		}
		if err != nil {
			d.t.Fatalf("Allow: %v", err)
		}
		d.clk.Add(time.Millisecond)
		d.b.Record(tk, Failure, time.Millisecond)
		if State(d.b.state.Load()) == Open {
			return
		}
		d.clk.Add(time.Millisecond)
	}
	d.t.Fatal("1000 failures did not trip the breaker")
}

// untilHalfOpen moves the clock to the end of the open period.
func (d *driver) untilHalfOpen() {
	d.clk.Set(time.Duration(d.b.openUntil.Load()))
}

func TestNewDefaults(t *testing.T) {
	b, err := New(&meridianv1.CircuitBreakerSpec{Trip: &meridianv1.TripConditions{ConsecutiveFailures: 5}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"bucket", time.Duration(b.bucketLen), DefaultBucket},
		{"slots", b.slots, int64(DefaultWindow / DefaultBucket)},
		{"ring", len(b.ring), 128},
		{"minRequests", b.minRequests, int64(DefaultMinRequests)},
		{"open", time.Duration(b.openBase), DefaultOpenDuration},
		{"maxDuration", time.Duration(b.openMax), DefaultMaxDuration},
		{"multiplier", b.multiplier, float64(DefaultMultiplier)},
		{"jitter", b.jitter, 0.0},
		{"probes", len(b.probes), DefaultProbes},
		{"successes", b.successes, DefaultSuccesses},
		{"probeTimeout", time.Duration(b.probeTimeout), DefaultProbeTimeout},
		{"500 fails", b.IsFailureStatus(500), true},
		{"501 fails", b.IsFailureStatus(501), false},
		{"503 fails", b.IsFailureStatus(503), true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	// A short window gets one bucket; a long open duration is its own max.
	b, err = New(testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Window, s.Bucket = dur(50*time.Millisecond), nil
		s.Open = &meridianv1.OpenPolicy{Duration: dur(2 * time.Minute)}
		s.FailureStatuses = []uint32{429}
	}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b.slots != 1 || b.bucketLen != int64(50*time.Millisecond) || b.openMax != float64(2*time.Minute) {
		t.Errorf("slots %d bucket %s max %s, want 1, 50ms, 2m", b.slots, time.Duration(b.bucketLen), time.Duration(b.openMax))
	}
	if !b.IsFailureStatus(429) || b.IsFailureStatus(500) {
		t.Error("failureStatuses [429]: 429 should fail and 500 not")
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*meridianv1.CircuitBreakerSpec)
		want string
	}{
		{"no condition", func(s *meridianv1.CircuitBreakerSpec) { s.Trip = nil }, "no trip condition"},
		{"error rate", func(s *meridianv1.CircuitBreakerSpec) { s.Trip.ErrorRate = 1.5 }, "errorRate"},
		{"quantile", func(s *meridianv1.CircuitBreakerSpec) {
			s.Trip.Latency = &meridianv1.LatencyTrip{Quantile: 1, Threshold: dur(time.Second)}
		}, "quantile"},
		{"threshold", func(s *meridianv1.CircuitBreakerSpec) {
			s.Trip.Latency = &meridianv1.LatencyTrip{Quantile: 0.9}
		}, "threshold"},
		{"slots", func(s *meridianv1.CircuitBreakerSpec) { s.Bucket = dur(999 * time.Microsecond) }, "more than 10000"},
		{"negative window", func(s *meridianv1.CircuitBreakerSpec) { s.Window = dur(-time.Second) }, "positive"},
		{"max below duration", func(s *meridianv1.CircuitBreakerSpec) { s.Open.MaxDuration = dur(time.Second) }, "maxDuration"},
		{"multiplier", func(s *meridianv1.CircuitBreakerSpec) { s.Open.Multiplier = 0.5 }, "multiplier"},
		{"jitter", func(s *meridianv1.CircuitBreakerSpec) { s.Open.Jitter = 2 }, "jitter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(testSpec(tt.edit), Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestClosedTransitions(t *testing.T) {
	latency := func(q float64, threshold time.Duration) *meridianv1.LatencyTrip {
		return &meridianv1.LatencyTrip{Quantile: q, Threshold: dur(threshold)}
	}
	tests := []struct {
		name  string
		trip  *meridianv1.TripConditions
		run   func(d *driver)
		want  State
		cause string
	}{
		{
			name: "error rate reached",
			trip: &meridianv1.TripConditions{ErrorRate: 0.5},
			run: func(d *driver) {
				d.send(10, Success, time.Millisecond)
				d.send(5, Failure, time.Millisecond)
				d.send(5, Timeout, time.Millisecond)
			},
			want: Open, cause: CauseErrorRate,
		},
		{
			name: "error rate below",
			trip: &meridianv1.TripConditions{ErrorRate: 0.5},
			run: func(d *driver) {
				d.send(11, Success, time.Millisecond)
				d.send(9, Failure, time.Millisecond)
			},
			want: Closed,
		},
		{
			name: "all failures below minRequests",
			trip: &meridianv1.TripConditions{ErrorRate: 0.5},
			run:  func(d *driver) { d.send(19, Failure, time.Millisecond) },
			want: Closed,
		},
		{
			name: "canceled requests are not volume",
			trip: &meridianv1.TripConditions{ErrorRate: 0.5},
			run: func(d *driver) {
				d.send(19, Failure, time.Millisecond)
				d.send(50, Canceled, time.Millisecond)
			},
			want: Closed,
		},
		{
			name: "failures older than the window",
			trip: &meridianv1.TripConditions{ErrorRate: 0.5},
			run: func(d *driver) {
				d.send(15, Failure, time.Millisecond)
				d.clk.Add(10 * time.Second)
				d.send(5, Failure, time.Millisecond)
			},
			want: Closed,
		},
		{
			name: "latency quantile above threshold",
			trip: &meridianv1.TripConditions{Latency: latency(0.95, 100*time.Millisecond)},
			run: func(d *driver) {
				d.send(18, Success, 10*time.Millisecond)
				d.send(2, Success, 101*time.Millisecond)
			},
			want: Open, cause: CauseLatency,
		},
		{
			name: "latency quantile at threshold",
			trip: &meridianv1.TripConditions{Latency: latency(0.95, 100*time.Millisecond)},
			run: func(d *driver) {
				d.send(19, Success, 10*time.Millisecond)
				d.send(1, Failure, time.Second)
				d.send(5, Success, 100*time.Millisecond)
			},
			want: Closed,
		},
		{
			name: "requests in flight past the threshold are slow",
			trip: &meridianv1.TripConditions{Latency: latency(0.95, 100*time.Millisecond)},
			run: func(d *driver) {
				d.send(20, Success, 10*time.Millisecond)
				d.clk.Add(100 * time.Millisecond) // a fresh bucket
				d.hang(5)
				d.clk.Add(200 * time.Millisecond)
			},
			want: Open, cause: CauseLatency,
		},
		{
			name: "requests in flight under the threshold are not",
			trip: &meridianv1.TripConditions{Latency: latency(0.95, 100*time.Millisecond)},
			run: func(d *driver) {
				d.send(20, Success, 10*time.Millisecond)
				d.hang(5)
			},
			want: Closed,
		},
		{
			name: "latency over the newest part of a full window",
			trip: &meridianv1.TripConditions{Latency: latency(0.9, 100*time.Millisecond)},
			run: func(d *driver) {
				d.send(1000, Success, time.Millisecond)
				// 100 slow requests would be 9% of the window: not enough for
				// the whole window, but a few dozen are clear evidence in its
				// newest part.
				for range 100 {
					tk, err := d.b.Allow()
					if err != nil {
						break
					}
					d.b.Record(tk, Success, 200*time.Millisecond)
					d.clk.Add(time.Millisecond)
				}
			},
			want: Open, cause: CauseLatency,
		},
		{
			name: "slow requests spread over the window",
			trip: &meridianv1.TripConditions{Latency: latency(0.9, 100*time.Millisecond)},
			run: func(d *driver) {
				for range 100 {
					d.send(10, Success, time.Millisecond)
					d.b.Record(d.allow(), Success, 200*time.Millisecond)
					d.clk.Add(time.Millisecond)
				}
			},
			want: Closed,
		},
		{
			name: "consecutive failures",
			trip: &meridianv1.TripConditions{ConsecutiveFailures: 5},
			run: func(d *driver) {
				d.send(4, Failure, time.Millisecond)
				d.send(1, Timeout, time.Millisecond)
			},
			want: Open, cause: CauseConsecutiveFailures,
		},
		{
			name: "a success breaks the streak",
			trip: &meridianv1.TripConditions{ConsecutiveFailures: 5},
			run: func(d *driver) {
				for range 10 {
					d.send(4, Failure, time.Millisecond)
					d.send(1, Success, time.Millisecond)
					d.send(1, Canceled, time.Millisecond)
				}
			},
			want: Closed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) { s.Trip = tt.trip }), Options{})
			tt.run(d)
			if got := d.settle(); got != tt.want {
				t.Fatalf("state %s, want %s", got, tt.want)
			}
			if got := d.b.Snapshot().LastTrip; got != tt.cause {
				t.Errorf("LastTrip %q, want %q", got, tt.cause)
			}
		})
	}
}

func TestConsecutiveFailuresTripAtOnce(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{ConsecutiveFailures: 3}
	}), Options{})
	for i := range 2 {
		d.b.Record(d.allow(), Failure, time.Millisecond)
		if s := State(d.b.state.Load()); s != Closed {
			t.Fatalf("after failure %d: state %s, want closed", i+1, s)
		}
	}
	// The third trips the breaker on the spot, without waiting for the
	// judge's next run.
	d.b.Record(d.allow(), Failure, time.Millisecond)
	if s := State(d.b.state.Load()); s != Open {
		t.Fatalf("after failure 3: state %s, want open", s)
	}
	if _, err := d.b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow after trip: %v, want ErrOpen", err)
	}
}

func TestOpenToHalfOpenToClosed(t *testing.T) {
	d := newDriver(t, testSpec(nil), Options{})
	d.trip()
	tripped := d.clk.Elapsed()
	openUntil := time.Duration(d.b.openUntil.Load())
	if openUntil-tripped != 5*time.Second {
		t.Fatalf("open for %s, want 5s", openUntil-tripped)
	}

	d.clk.Set(openUntil - 1)
	if _, err := d.b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("1ns before the open time is up: %v, want ErrOpen", err)
	}
	if s := d.b.State(); s != Open {
		t.Fatalf("state %s, want open", s)
	}
	d.clk.Set(openUntil)
	if s := d.b.State(); s != HalfOpen {
		t.Fatalf("state %s when the open time is up, want half-open", s)
	}
	for i := range 3 {
		probe := d.allow()
		if _, err := d.b.Allow(); !errors.Is(err, ErrHalfOpenFull) {
			t.Fatalf("second request during probe %d: %v, want ErrHalfOpenFull", i+1, err)
		}
		if s := d.b.State(); s != HalfOpen {
			t.Fatalf("state %s after %d successful probes, want half-open", s, i)
		}
		d.b.Record(probe, Success, 10*time.Millisecond)
		d.clk.Add(10 * time.Millisecond)
	}
	if s := d.b.State(); s != Closed {
		t.Fatalf("state %s after 3 successful probes, want closed", s)
	}

	// The failures that tripped the breaker are still in the window, but
	// they no longer count.
	d.send(10, Success, time.Millisecond)
	if s := d.settle(); s != Closed {
		t.Fatalf("state %s after closing, want closed", s)
	}
	snap := d.b.Snapshot()
	if snap.Transitions != 3 || snap.LastTrip != CauseErrorRate || snap.Rejected != 5 {
		t.Errorf("snapshot %+v: want 3 transitions, last trip errorRate, 5 rejected", snap)
	}
}

func TestHalfOpenToOpen(t *testing.T) {
	tests := []struct {
		name    string
		outcome Outcome
		latency time.Duration
	}{
		{"failure", Failure, time.Millisecond},
		{"timeout", Timeout, time.Second},
		{"slow success", Success, 301 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
				s.Trip.Latency = &meridianv1.LatencyTrip{Quantile: 0.99, Threshold: dur(300 * time.Millisecond)}
			}), Options{})
			d.trip()
			d.untilHalfOpen()
			d.b.Record(d.allow(), Success, 300*time.Millisecond) // at the threshold: not slow
			d.b.Record(d.allow(), tt.outcome, tt.latency)
			if s := d.b.State(); s != Open {
				t.Fatalf("state %s after a bad probe, want open", s)
			}
			// The second trip in a row doubles the open time.
			if got := time.Duration(d.b.openUntil.Load()) - d.clk.Elapsed() - tt.latency; got != 10*time.Second {
				t.Errorf("open for %s, want 10s", got)
			}
			if got := d.b.Snapshot().LastTrip; got != CauseProbe {
				t.Errorf("LastTrip %q, want %q", got, CauseProbe)
			}
		})
	}
}

func TestProbeSlots(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.HalfOpen = &meridianv1.HalfOpenPolicy{Probes: 2, Successes: 2}
	}), Options{ProbeTimeout: time.Second})
	d.trip()
	d.untilHalfOpen()

	lost := d.allow() // never recorded in time
	canceled := d.allow()
	if _, err := d.b.Allow(); !errors.Is(err, ErrHalfOpenFull) {
		t.Fatalf("third request with 2 probes: %v, want ErrHalfOpenFull", err)
	}
	// A canceled probe gives its slot back and counts for nothing.
	d.b.Record(canceled, Canceled, 0)
	ok := d.allow()
	if _, err := d.b.Allow(); !errors.Is(err, ErrHalfOpenFull) {
		t.Fatalf("after a canceled probe was replaced: %v, want ErrHalfOpenFull", err)
	}
	d.b.Record(ok, Success, time.Millisecond)

	// A probe unrecorded after ProbeTimeout gives its slot to another.
	d.clk.Add(time.Second - time.Nanosecond)
	// The first probe still holds its slot 1ns before its time is up;
	// this one takes the other, and its failure opens the breaker again.
	d.b.Record(d.allow(), Failure, 0)
	if s := d.b.State(); s != Open {
		t.Fatalf("state %s after a failed probe, want open", s)
	}
	d.untilHalfOpen()
	lost2 := d.allow()
	d.clk.Add(time.Second)
	d.allow() // takes lost2's slot
	replacement := d.allow()
	if _, err := d.b.Allow(); !errors.Is(err, ErrHalfOpenFull) {
		t.Fatalf("both slots held: %v, want ErrHalfOpenFull", err)
	}
	// The late results of expired probes and of probes from an earlier
	// half-open period change nothing.
	d.b.Record(lost2, Failure, 2*time.Second)
	d.b.Record(lost, Failure, 10*time.Second)
	if s := d.b.State(); s != HalfOpen {
		t.Fatalf("state %s after stale probe results, want half-open", s)
	}
	d.b.Record(replacement, Success, time.Millisecond)
	if s := d.b.State(); s != HalfOpen {
		t.Fatalf("state %s after 1 of 2 successes, want half-open", s)
	}
	d.b.Record(d.allow(), Success, time.Millisecond)
	if s := d.b.State(); s != Closed {
		t.Fatalf("state %s after 2 successes, want closed", s)
	}
}

func TestOpenDurationGrows(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Open = &meridianv1.OpenPolicy{Duration: dur(time.Second), MaxDuration: dur(5 * time.Second), Multiplier: 2}
	}), Options{})
	openFor := func() time.Duration {
		return time.Duration(d.b.openUntil.Load()) - d.clk.Elapsed()
	}
	d.trip()
	// Each failed probe opens the breaker for longer, up to maxDuration.
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if got := openFor(); got != want {
			t.Fatalf("open for %s, want %s", got, want)
		}
		d.untilHalfOpen()
		d.b.Record(d.allow(), Failure, 0)
	}
	// A trip soon after closing keeps growing the time...
	d.untilHalfOpen()
	d.send(3, Success, 0)
	d.clk.Add(4 * time.Second)
	d.trip()
	if got := openFor(); got != 5*time.Second {
		t.Fatalf("open for %s after a short closed period, want 5s", got)
	}
	// ...a trip after a closed period of maxDuration starts over.
	d.untilHalfOpen()
	d.send(3, Success, 0)
	d.clk.Add(5 * time.Second)
	d.trip()
	if got := openFor(); got != time.Second {
		t.Fatalf("open for %s after a long closed period, want 1s", got)
	}
}

func TestOpenDurationJitter(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Open = &meridianv1.OpenPolicy{Duration: dur(10 * time.Second), MaxDuration: dur(11 * time.Second), Jitter: 0.2}
		s.HalfOpen.Successes = 1
	}), Options{Rand: rand.NewPCG(1, 2)})
	seen := map[time.Duration]bool{}
	var atMax int
	for range 100 {
		d.trip()
		got := time.Duration(d.b.openUntil.Load()) - d.clk.Elapsed()
		if got < 8*time.Second || got > 11*time.Second {
			t.Fatalf("open for %s, want 8s to 11s (10s ± 20%%, at most 11s)", got)
		}
		if got == 11*time.Second {
			atMax++
		}
		seen[got] = true
		d.untilHalfOpen()
		d.b.Record(d.allow(), Success, 0)
		d.clk.Add(11 * time.Second) // a long closed period: no growth
	}
	if len(seen) < 50 || atMax < 10 {
		t.Errorf("%d distinct open times, %d at maxDuration: jitter looks wrong", len(seen), atMax)
	}
}

func TestSnapshotAggregates(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{ConsecutiveFailures: 1000}
	}), Options{})
	record := func(n int, o Outcome, latency time.Duration) {
		for range n {
			d.b.Record(d.allow(), o, latency)
		}
	}
	// Each of 10 seconds sees 100 outcomes: 93 successes and 5 failures
	// of 10ms, 2 timeouts of 900ms; and 50 canceled requests.
	for sec := range 10 {
		d.clk.Set(time.Duration(sec) * time.Second)
		record(93, Success, 10*time.Millisecond)
		record(5, Failure, 10*time.Millisecond)
		record(2, Timeout, 900*time.Millisecond)
		record(50, Canceled, 0)
	}
	d.clk.Set(9950 * time.Millisecond)
	fast, slow := histValue(histIndex(10*time.Millisecond)), histValue(histIndex(900*time.Millisecond))
	s := d.b.Snapshot()
	if want := (Aggregate{Requests: 500, Failures: 35, Timeouts: 10, P50: fast, P95: fast, P99: slow}); s.Last5s != want {
		t.Errorf("Last5s = %+v, want %+v", s.Last5s, want)
	}
	if want := (Aggregate{Requests: 1000, Failures: 70, Timeouts: 20, P50: fast, P95: fast, P99: slow}); s.Last60s != want {
		t.Errorf("Last60s = %+v, want %+v", s.Last60s, want)
	}
	d.clk.Add(55 * time.Second)
	if s := d.b.Snapshot(); s.Last5s != (Aggregate{}) || s.Last60s.Requests != 500 {
		t.Errorf("55s later: Last5s %+v, Last60s %+v: want nothing, then the last 5 seconds", s.Last5s, s.Last60s)
	}
}

func TestRecordIgnoresZeroTicket(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{ConsecutiveFailures: 1}
	}), Options{})
	d.b.Record(Ticket{}, Failure, time.Millisecond)
	if s := d.b.State(); s != Closed {
		t.Fatalf("state %s, want closed", s)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", Open: "open", HalfOpen: "half-open", 7: "State(7)"} {
		if got := s.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", s, got, want)
		}
	}
}
