package breaker

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// The simulation sends Poisson traffic through a breaker on the fake clock,
// so simulated minutes take a fraction of a second and every run is the
// same: one request's start and end are events, handled in time order.

// backend decides a request's outcome and latency.
type backend func(r *rand.Rand) (Outcome, time.Duration)

// healthyBackend: lognormal latency with a 20ms median and a P99 of 8
// times that (160ms; P95 87ms), and 0.5% random 5xx.
func healthyBackend(r *rand.Rand) (Outcome, time.Duration) {
	latency := time.Duration(float64(20*time.Millisecond) * math.Exp(math.Log(8)/2.326*r.NormFloat64()))
	if r.Float64() < 0.005 {
		return Failure, latency
	}
	return Success, latency
}

// flakyBackend is healthyBackend with 2% random 5xx.
func flakyBackend(r *rand.Rand) (Outcome, time.Duration) {
	o, latency := healthyBackend(r)
	if r.Float64() < 0.02 {
		o = Failure
	}
	return o, latency
}

// slowBackend answers fine, in 500ms give or take 10%.
func slowBackend(r *rand.Rand) (Outcome, time.Duration) {
	return Success, time.Duration(float64(500*time.Millisecond) * math.Exp(0.1*r.NormFloat64()))
}

// refusingBackend refuses connections: a failure within a millisecond.
func refusingBackend(r *rand.Rand) (Outcome, time.Duration) {
	return Failure, time.Duration(200_000 + r.IntN(800_000))
}

// hangingBackend answers nothing: every request times out after 5s.
func hangingBackend(*rand.Rand) (Outcome, time.Duration) {
	return Timeout, 5 * time.Second
}

// ending is a request in flight, to be recorded at end.
type ending struct {
	end     time.Duration
	ticket  Ticket
	outcome Outcome
	latency time.Duration
}

// endings is a min-heap of requests in flight by end; container/heap
// would allocate for every request.
type endings []ending

func (e *endings) push(x ending) {
	h := append(*e, x)
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if h[parent].end <= h[i].end {
			break
		}
		h[parent], h[i] = h[i], h[parent]
		i = parent
	}
	*e = h
}

func (e *endings) pop() ending {
	h := *e
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		least, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && h[l].end < h[least].end {
			least = l
		}
		if r < len(h) && h[r].end < h[least].end {
			least = r
		}
		if least == i {
			break
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
	*e = h
	return top
}

type sim struct {
	d         *driver
	rng       *rand.Rand
	now       time.Duration
	inFlight  endings
	trippedAt time.Duration // -1 until the breaker leaves Closed
}

func newSim(t *testing.T, spec *meridianv1.CircuitBreakerSpec, seed uint64) *sim {
	return &sim{d: newDriver(t, spec, Options{}), rng: rand.New(rand.NewPCG(seed, seed)), trippedAt: -1}
}

// run sends n requests arriving at rate per second to be.
func (s *sim) run(n int, rate float64, be backend) {
	for range n {
		s.now += time.Duration(s.rng.ExpFloat64() / rate * float64(time.Second))
		for len(s.inFlight) > 0 && s.inFlight[0].end <= s.now {
			e := s.inFlight.pop()
			s.d.clk.Set(e.end)
			s.d.b.Record(e.ticket, e.outcome, e.latency)
			s.observe()
		}
		s.d.clk.Set(s.now)
		tk, err := s.d.b.Allow()
		s.observe()
		if err != nil {
			continue
		}
		o, latency := be(s.rng)
		s.inFlight.push(ending{end: s.now + latency, ticket: tk, outcome: o, latency: latency})
	}
}

func (s *sim) observe() {
	if s.trippedAt < 0 && State(s.d.b.state.Load()) != Closed {
		s.trippedAt = s.d.clk.Elapsed()
	}
}

// simSpecs are two configurations an operator would write for a backend
// like healthyBackend, both with a 10s window of 100ms buckets and
// minRequests 20:
//   - strict: errorRate 0.5, P99 above 300ms (about twice the healthy
//     P99), 20 consecutive failures;
//   - design: DESIGN.md's example: errorRate 0.5, P95 above 300ms (3.4
//     times the healthy P95), no consecutiveFailures.
func simSpecs() []simSpec {
	return []simSpec{
		{"strict", testSpec(func(s *meridianv1.CircuitBreakerSpec) {
			s.Trip = &meridianv1.TripConditions{
				ErrorRate:           0.5,
				Latency:             &meridianv1.LatencyTrip{Quantile: 0.99, Threshold: dur(300 * time.Millisecond)},
				ConsecutiveFailures: 20,
			}
		})},
		{"design", testSpec(func(s *meridianv1.CircuitBreakerSpec) {
			s.Trip = &meridianv1.TripConditions{
				ErrorRate: 0.5,
				Latency:   &meridianv1.LatencyTrip{Quantile: 0.95, Threshold: dur(300 * time.Millisecond)},
			}
		})},
	}
}

type simSpec struct {
	name string
	spec *meridianv1.CircuitBreakerSpec
}

// TestSimulationLongHealthy: a million healthy requests at 1,000/s trip
// nothing; then a latency step trips the breaker within a second,
// although the window is full of healthy requests. It runs the strict
// spec only: the design spec's latency condition is further from the
// healthy backend's, and a million requests take seconds under -race.
func TestSimulationLongHealthy(t *testing.T) {
	if testing.Short() {
		t.Skip("a million simulated requests")
	}
	for i, c := range simSpecs()[:1] {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t, c.spec, uint64(i+1))
			s.run(1_000_000, 1000, healthyBackend)
			if s.trippedAt >= 0 {
				t.Fatalf("healthy backend tripped the breaker at %s (%s)", s.trippedAt, s.d.b.Snapshot().LastTrip)
			}
			// The metrics see the backend as it is.
			last := s.d.b.Snapshot().Last60s
			failRate := float64(last.Failures) / float64(last.Requests)
			t.Logf("last 60s: %d requests, failure rate %.4f, P50 %s, P95 %s, P99 %s", last.Requests, failRate, last.P50, last.P95, last.P99)
			if last.Requests < 57_000 || last.Requests > 63_000 || failRate < 0.003 || failRate > 0.007 ||
				relErr(last.P50, 20*time.Millisecond) > 0.05 || relErr(last.P99, 160*time.Millisecond) > 0.1 {
				t.Errorf("last 60s: %+v, want about 60,000 requests, 0.5%% failures, P50 20ms, P99 160ms", last)
			}

			step := s.now
			s.run(2000, 1000, slowBackend)
			t.Logf("latency step tripped after %s", s.trippedAt-step)
			if s.trippedAt < 0 || s.trippedAt-step > time.Second {
				t.Fatalf("latency step at %s: tripped at %s, want within 1s", step, s.trippedAt)
			}
			if cause := s.d.b.Snapshot().LastTrip; cause != CauseLatency {
				t.Errorf("tripped on %s, want latency", cause)
			}
		})
	}
}

// TestSimulationDetection: after 10 healthy seconds, a latency step or a
// backend that stops answering trips the breaker within 1s, and an outage
// within 200ms.
func TestSimulationDetection(t *testing.T) {
	faults := []struct {
		name   string
		be     backend
		within time.Duration
		causes []string // any of these
	}{
		{"latency step", slowBackend, time.Second, []string{CauseLatency}},
		// Nothing ends for 5s: only counting requests in flight past the
		// threshold as slow can trip the breaker sooner.
		{"hang", hangingBackend, time.Second, []string{CauseLatency}},
		// Healthy requests started before the outage still end well for a
		// while, so errorRate may beat consecutiveFailures to it.
		{"outage", refusingBackend, 200 * time.Millisecond, []string{CauseConsecutiveFailures, CauseErrorRate}},
	}
	var seed uint64 = 10
	for _, c := range simSpecs() {
		for _, f := range faults {
			for _, rate := range []float64{1000, 5000} {
				seed++
				t.Run(fmt.Sprintf("%s/%s/%g per s", c.name, f.name, rate), func(t *testing.T) {
					s := newSim(t, c.spec, seed)
					s.run(int(10*rate), rate, healthyBackend)
					if s.trippedAt >= 0 {
						t.Fatalf("healthy backend tripped the breaker at %s", s.trippedAt)
					}
					start := s.now
					s.run(int(2*rate), rate, f.be)
					t.Logf("tripped after %s", s.trippedAt-start)
					if s.trippedAt < 0 || s.trippedAt-start > f.within {
						t.Fatalf("fault at %s: tripped at %s, want within %s", start, s.trippedAt, f.within)
					}
					if cause := s.d.b.Snapshot().LastTrip; !slices.Contains(f.causes, cause) {
						t.Errorf("tripped on %s, want one of %v", cause, f.causes)
					}
				})
			}
		}
	}
}

// TestSimulationTightErrorRate: an errorRate of 5% (with minRequests 200,
// 10 failures at that rate) over a backend that fails 2% of the time is
// tight, but noise in a few hundred requests must not trip it; a step to
// 10% failures must, within 2s.
func TestSimulationTightErrorRate(t *testing.T) {
	s := newSim(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.MinRequests = 200
		s.Trip = &meridianv1.TripConditions{ErrorRate: 0.05}
	}), 3)
	s.run(10_000, 1000, healthyBackend)
	s.run(200_000, 1000, flakyBackend)
	if s.trippedAt >= 0 {
		t.Fatalf("2%% failures tripped an errorRate of 5%% at %s", s.trippedAt)
	}
	start := s.now
	s.run(5000, 1000, func(r *rand.Rand) (Outcome, time.Duration) {
		o, latency := healthyBackend(r)
		if r.Float64() < 0.1 {
			o = Failure
		}
		return o, latency
	})
	t.Logf("10%% failures tripped after %s", s.trippedAt-start)
	if s.trippedAt < 0 || s.trippedAt-start > 2*time.Second {
		t.Fatalf("10%% failures from %s: tripped at %s, want within 2s", start, s.trippedAt)
	}
}
