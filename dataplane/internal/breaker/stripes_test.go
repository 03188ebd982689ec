package breaker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestStripeOfSpreads(t *testing.T) {
	const n = 4096
	for _, step := range []time.Duration{time.Nanosecond, 37 * time.Nanosecond, time.Microsecond, time.Millisecond} {
		t.Run(step.String(), func(t *testing.T) {
			var per [stripes]int
			for i := range int64(n) {
				per[stripeOf(i*int64(step))]++
			}
			for s, c := range per {
				if c < n/stripes*8/10 || c > n/stripes*12/10 {
					t.Errorf("stripe %d got %d of %d start times %s apart: %v", s, c, n, step, per)
				}
			}
		})
	}
}

// TestStripedCountsAreExact runs requests from several goroutines into one
// bucket and one second: the judge's and Snapshot's sums over the stripes
// must count every one of them.
func TestStripedCountsAreExact(t *testing.T) {
	const (
		workers = 4
		each    = 2000
		total   = workers*each + 1
	)
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{ConsecutiveFailures: 1000}
	}), Options{})
	base := d.clk.Now()
	// The first request takes the bucket's slot and the second's: requests
	// that meet a slot being taken may go uncounted.
	d.b.Record(d.allow(), Success, time.Millisecond)

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				at := base.Add(time.Duration(1 + w*each + i))
				tk, err := d.b.AllowAt(at)
				if err != nil {
					t.Errorf("AllowAt: %v", err)
					return
				}
				o := Success
				switch i % 10 {
				case 0:
					o = Failure
				case 1:
					o = Timeout
				case 2:
					o = Canceled
				}
				d.b.Record(tk, o, time.Millisecond)
			}
		})
	}
	wg.Wait()

	// Of each worker's requests, one in ten failed, timed out, was canceled.
	const canceled, failed, timeouts = workers * each / 10, 2 * workers * each / 10, workers * each / 10
	got := d.b.slotTotals(0)
	if want := (slotTotals{inFlight: 0, known: total - canceled, failures: failed}); got != want {
		t.Errorf("window slot sums to %+v, want %+v", got, want)
	}
	used := 0
	for i := range d.b.counts {
		if d.b.counts[i][0].started.Load() > 0 {
			used++
		}
	}
	if used < stripes {
		t.Errorf("requests went to %d of %d stripes", used, stripes)
	}
	a := d.b.Snapshot().Last5s
	if a.Requests != total-canceled || a.Failures != failed || a.Timeouts != timeouts {
		t.Errorf("Last5s = %+v, want %d requests, %d failures, %d timeouts", a, total-canceled, failed, timeouts)
	}
}

// TestSlotBeingClearedCountsNoStart: a request admitted while its slot is
// cleared for its bucket and recorded before the clearing ends must not
// stay in flight, or it would count as slow for good.
func TestSlotBeingClearedCountsNoStart(t *testing.T) {
	d := newDriver(t, testSpec(nil), Options{})
	d.b.Record(d.allow(), Success, time.Millisecond)

	d.b.ring[0].Store(slotClearing)
	d.b.Record(d.allow(), Success, time.Millisecond)
	d.b.ring[0].Store(0)

	if got := d.b.slotTotals(0); got.inFlight != 0 {
		t.Errorf("slot counts %d in flight, want none", got.inFlight)
	}
}

// TestSnapshotCountsLateOutcomes: outcomes recorded after newer seconds
// have begun count in their own second, whether it was still live, was
// folded into the ring already, or was never written before.
func TestSnapshotCountsLateOutcomes(t *testing.T) {
	d := newDriver(t, testSpec(func(s *meridianv1.CircuitBreakerSpec) {
		s.Trip = &meridianv1.TripConditions{ConsecutiveFailures: 1000}
	}), Options{})
	lateAt := func(since time.Duration) Ticket {
		d.clk.Set(since)
		return d.allow()
	}
	never := lateAt(0)                        // second 0 gets nothing else
	folded := lateAt(2500 * time.Millisecond) // second 2 is folded by the time
	live := lateAt(4900 * time.Millisecond)   // second 4 is still live
	for sec := 1; sec <= 5; sec++ {
		d.clk.Set(time.Duration(sec) * time.Second)
		for range 10 {
			d.b.Record(d.allow(), Success, time.Millisecond)
		}
	}
	d.b.Record(never, Failure, 10*time.Millisecond)
	d.b.Record(folded, Timeout, 10*time.Millisecond)
	d.b.Record(live, Failure, 10*time.Millisecond)

	d.clk.Set(5500 * time.Millisecond)
	s := d.b.Snapshot()
	for _, c := range []struct {
		name string
		got  Aggregate
		want Aggregate
	}{
		{"Last5s", s.Last5s, Aggregate{Requests: 52, Failures: 2, Timeouts: 1}},
		{"Last60s", s.Last60s, Aggregate{Requests: 53, Failures: 3, Timeouts: 1}},
	} {
		got := c.got
		got.P50, got.P95, got.P99 = 0, 0, 0
		if got != c.want {
			t.Errorf("%s = %s, want %s", c.name, fmtAggregate(got), fmtAggregate(c.want))
		}
	}
}

func fmtAggregate(a Aggregate) string {
	return fmt.Sprintf("%d requests, %d failures, %d timeouts", a.Requests, a.Failures, a.Timeouts)
}
