package breaker

import (
	"sync/atomic"
	"time"
)

// Slots of both rings hold the number of the bucket (or second) they
// count, or one of these.
const (
	slotEmpty    = -1 // never used
	slotClearing = -2 // being cleared for a new bucket
)

// turnover readies a slot whose bucket number is in held for a write to
// bucket k. It reports whether the write may go ahead, and whether the
// caller has just taken the slot over from an older bucket, in which case
// it must clear the counters and then store k in held. A writer that meets
// a slot being cleared writes anyway: its count may be lost, which only
// happens within nanoseconds of a bucket's start. A slot already holding a
// newer bucket refuses a write from a clock that lags a whole ring behind.
func turnover(held *atomic.Int64, k int64) (ok, won bool) {
	for {
		h := held.Load()
		switch {
		case h == k || h == slotClearing:
			return true, false
		case h > k:
			return false, false
		case held.CompareAndSwap(h, slotClearing):
			return true, true
		}
	}
}

// slot counts the requests that started in one bucket of the window. A
// request's outcome is counted in the slot of its start, so started minus
// ended is the number still in flight.
type slot struct {
	bucket   atomic.Int64
	started  atomic.Int64 // admitted
	ended    atomic.Int64 // recorded, any outcome
	canceled atomic.Int64 // recorded as Canceled: neither good nor bad
	failures atomic.Int64 // recorded as Failure or Timeout
	slow     atomic.Int64 // recorded slower than the latency threshold
}

// take readies s for bucket k; see turnover.
func (s *slot) take(k int64) bool {
	ok, won := turnover(&s.bucket, k)
	if won {
		s.started.Store(0)
		s.ended.Store(0)
		s.canceled.Store(0)
		s.failures.Store(0)
		s.slow.Store(0)
		s.bucket.Store(k)
	}
	return ok
}

// secondSlot counts the outcomes recorded in one second, for metrics.
type secondSlot struct {
	second   atomic.Int64
	failures atomic.Uint64 // Failure or Timeout
	timeouts atomic.Uint64
	latency  histogram // every recorded outcome but Canceled
}

// take readies s for second k; see turnover.
func (s *secondSlot) take(k int64) bool {
	ok, won := turnover(&s.second, k)
	if won {
		s.failures.Store(0)
		s.timeouts.Store(0)
		s.latency.reset()
		s.second.Store(k)
	}
	return ok
}

// metricSeconds is how far back the metrics ring reaches.
const metricSeconds = 60

// Aggregate is what a breaker recorded over a span of time.
type Aggregate struct {
	// Requests is the number of outcomes recorded, Canceled excepted.
	Requests uint64
	// Failures counts Failure and Timeout outcomes; Timeouts the latter.
	Failures, Timeouts uint64
	// P50, P95 and P99 are latency quantiles, within 1.6% of the exact
	// (nearest-rank) value above 64 µs; 0 when Requests is 0.
	P50, P95, P99 time.Duration
}

// aggregate sums the metrics of the seconds from now-span+1 to now.
func (b *Breaker) aggregate(now, span int64) Aggregate {
	var (
		a   Aggregate
		lat latencies
	)
	for k := now; k > now-span && k >= 0; k-- {
		s := &b.seconds[k%metricSeconds]
		if s.second.Load() != k {
			continue
		}
		a.Failures += s.failures.Load()
		a.Timeouts += s.timeouts.Load()
		lat.merge(&s.latency)
	}
	a.Requests = lat.total()
	a.P50, a.P95, a.P99 = lat.quantile(0.50), lat.quantile(0.95), lat.quantile(0.99)
	return a
}

// The judge tests each condition over every suffix of the window (the
// newest bucket, the two newest, ..., the whole window). The whole window
// is judged as the spec says: the error rate reaches errorRate, or more
// than 1-quantile of the requests are slower than the threshold, and the
// window holds at least minRequests (and 1/(1-quantile) for latency), so
// minRequests alone guards a young or quiet window. A shorter suffix lets a sudden
// outage trip in tens of milliseconds even after a long healthy period
// whose requests still fill the window, but it trips only on clear
// evidence, so noise in a small sample cannot trip a healthy breaker:
//   - it must hold at least minRequests requests and enough that, at the
//     threshold rate, suffixMinExpected of them would be bad (1,000 for a
//     1% rate, 20 for 50%), and
//   - its bad count must exceed the threshold rate by suffixSigmas
//     standard deviations of a binomial at that rate.
const (
	suffixMinExpected = 10
	suffixSigmas      = 3
)

// judgeEvery spaces the judge's runs. Each run reads every bucket of the
// window once; between runs only consecutiveFailures is checked, on the
// spot.
const judgeEvery = int64(25 * time.Millisecond)

// tally counts requests whose outcome is known and the bad ones among them.
type tally struct{ n, bad int64 }

// clearlyAbove reports whether the bad fraction is above rate with the
// evidence a suffix needs.
func (t tally) clearlyAbove(rate float64, gate int64) bool {
	if t.n < gate {
		return false
	}
	n := float64(t.n)
	excess := float64(t.bad) - rate*n
	return excess >= 0 && excess*excess >= suffixSigmas*suffixSigmas*n*rate*(1-rate)
}

// maybeJudge runs the judge if now is past its next run and no one else
// claimed that run, and trips the breaker if a condition holds.
func (b *Breaker) maybeJudge(now int64) {
	next := b.nextJudge.Load()
	if now < next || !b.nextJudge.CompareAndSwap(next, now-now%judgeEvery+judgeEvery) {
		return
	}
	if State(b.state.Load()) != Closed {
		return
	}
	if cause := b.judge(now); cause != "" {
		b.trip(now, cause)
	}
}

// judge returns the trip condition that holds at now, or "".
//
// The latency condition "the q-quantile is above threshold" is the same
// as "more than 1-q of the requests are slower than threshold", so the
// judge needs no quantile: it counts slow requests, exactly. Requests
// still in flight whose whole bucket started more than threshold ago are
// slow already and counted so; the others are left out until they end.
func (b *Breaker) judge(now int64) string {
	cur := now / b.bucketLen
	// Requests from before the breaker last closed do not count: they are
	// what tripped it.
	oldest := max(cur-b.slots+1, b.closedBucket.Load())
	slowBefore := now - b.slowAfter
	var errs, lat tally
	for k := cur; k >= oldest; k-- {
		s := &b.ring[k&b.mask]
		if s.bucket.Load() != k {
			continue
		}
		started, ended := s.started.Load(), s.ended.Load()
		known := ended - s.canceled.Load()
		errs.n += known
		errs.bad += s.failures.Load()
		if b.slowAfter > 0 {
			lat.n += known
			lat.bad += s.slow.Load()
			if inFlight := started - ended; inFlight > 0 && (k+1)*b.bucketLen <= slowBefore {
				lat.n += inFlight
				lat.bad += inFlight
			}
		}
		if b.errorRate > 0 && errs.clearlyAbove(b.errorRate, b.errorGate) {
			return CauseErrorRate
		}
		if b.slowAfter > 0 && lat.clearlyAbove(b.slowRate, b.latencyGate) {
			return CauseLatency
		}
	}
	if b.errorRate > 0 && errs.n >= b.minRequests && float64(errs.bad) >= b.errorRate*float64(errs.n) {
		return CauseErrorRate
	}
	if b.slowAfter > 0 && lat.n >= b.latencyMin && float64(lat.bad) > b.slowRate*float64(lat.n) {
		return CauseLatency
	}
	return ""
}
