package breaker

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestHalfOpenAdmitsExactlyProbes(t *testing.T) {
	const callers = 10_000
	for _, probes := range []uint32{1, 7, 100} {
		t.Run(fmt.Sprintf("probes=%d", probes), func(t *testing.T) {
			d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
				s.HalfOpen = &meridianv1.HalfOpenPolicy{Probes: probes, Successes: probes}
			}), Options{})
			d.trip()
			// The open time is up but nothing noticed yet: the callers race
			// the move to half-open as well as for the probes.
			d.untilHalfOpen()

			var (
				wg       sync.WaitGroup
				start    = make(chan struct{})
				mu       sync.Mutex
				admitted []Ticket
				full     atomic.Int64
				other    atomic.Int64
			)
			for range callers {
				wg.Go(func() {
					<-start
					tk, err := d.b.Allow()
					switch {
					case err == nil:
						mu.Lock()
						admitted = append(admitted, tk)
						mu.Unlock()
					case errors.Is(err, ErrHalfOpenFull):
						full.Add(1)
					default:
						other.Add(1)
					}
				})
			}
			close(start)
			wg.Wait()
			if len(admitted) != int(probes) || full.Load() != callers-int64(probes) || other.Load() != 0 {
				t.Fatalf("%d admitted, %d half-open-full, %d other errors; want %d, %d, 0",
					len(admitted), full.Load(), other.Load(), probes, callers-int64(probes))
			}
			if s := d.b.State(); s != HalfOpen {
				t.Fatalf("state %s, want half-open", s)
			}
			for _, tk := range admitted {
				d.b.Record(tk, Success, time.Millisecond)
			}
			if s := d.b.State(); s != Closed {
				t.Fatalf("state %s after %d successful probes, want closed", s, probes)
			}
		})
	}
}

// TestConcurrentTraffic runs workers through healthy and failing periods
// so the breaker trips and recovers under concurrent use; -race checks the
// rest.
func TestConcurrentTraffic(t *testing.T) {
	const (
		workers = 4
		ops     = 20_000
	)
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip.Latency = &meridianv1.LatencyTrip{Quantile: 0.9, Threshold: dur(50 * time.Millisecond)}
		s.Trip.ConsecutiveFailures = 50
		s.Open = &meridianv1.OpenPolicy{Duration: dur(50 * time.Millisecond), MaxDuration: dur(200 * time.Millisecond)}
		s.HalfOpen = &meridianv1.HalfOpenPolicy{Probes: 2, Successes: 2}
	}), Options{ProbeTimeout: 100 * time.Millisecond})

	var (
		wg       sync.WaitGroup
		refused  atomic.Uint64
		recorded atomic.Uint64
	)
	for w := range workers {
		wg.Go(func() {
			for i := range ops {
				tk, err := d.b.Allow()
				d.clk.Add(10 * time.Microsecond)
				if err != nil {
					refused.Add(1)
					continue
				}
				// Periods of 2,000 requests per worker, alternately healthy
				// and failing; one worker in four is slow instead, and some
				// requests are canceled or never recorded at all.
				switch {
				case i%97 == 0:
					d.b.Record(tk, Canceled, time.Millisecond)
				case i%499 == 0:
				case (i/2000)%2 == 0:
					d.b.Record(tk, Success, time.Millisecond)
					recorded.Add(1)
				case w == 0:
					d.b.Record(tk, Success, 80*time.Millisecond)
					recorded.Add(1)
				default:
					d.b.Record(tk, Failure, time.Millisecond)
					recorded.Add(1)
				}
			}
		})
	}
	wg.Wait()

	s := d.b.Snapshot()
	if s.Rejected != refused.Load() {
		t.Errorf("Snapshot.Rejected = %d, but Allow refused %d", s.Rejected, refused.Load())
	}
	if s.Transitions < 3 || refused.Load() == 0 || recorded.Load() == 0 {
		t.Errorf("%d transitions, %d refused, %d recorded: want the breaker to trip and recover", s.Transitions, refused.Load(), recorded.Load())
	}
}
