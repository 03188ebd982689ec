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
// a slot being cleared may write anyway: its count may be lost, which only
// happens within moments of a bucket's start (but see takeSlot). A slot
// already holding a newer bucket refuses a write from a clock that lags a
// whole ring behind.
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

// Per-request counters are striped. Requests on different cores that all
// added to one counter would bounce its cache line between the cores and
// run no faster than one core, so each counter has stripes copies, each
// request adds to one of them, picked from its start time (a ticket keeps
// its stripe for Record), and readers (the judge, Snapshot) sum them. A
// counter's stripes never share a cache line: the window keeps a ring of
// counters per stripe, the other counters pad their stripes apart. Two
// requests running at the same time then write the same line once in
// stripes; more stripes would cost memory and the judge more reading.
const (
	stripeBits = 2
	stripes    = 1 << stripeBits
)

// stripeOf returns the stripe of a request that starts at t. The start
// times of requests running at the same time differ in their low bits
// (nanoseconds), which a multiplicative hash spreads over the top ones: as
// good as a random draw and free, where math/rand/v2 costs several
// nanoseconds. With a coarse clock, requests in one tick share a stripe.
func stripeOf(t int64) uint8 {
	return uint8(uint64(t) * 0x9e3779b97f4a7c15 >> (64 - stripeBits))
}

// slotCounts counts, in one stripe, the requests that started in the
// bucket of one slot of the window. A request's outcome is counted in the
// slot of its start, so started minus ended is the number still in
// flight.
type slotCounts struct {
	started  atomic.Int64 // admitted
	ended    atomic.Int64 // recorded, any outcome
	canceled atomic.Int64 // recorded as Canceled: neither good nor bad
	failures atomic.Int64 // recorded as Failure or Timeout
	slow     atomic.Int64 // recorded slower than the latency threshold
}

// slotTotals is what the judge needs of a slot's counts, summed over its
// stripes. Four fields, so that it stays in registers (see Ticket).
type slotTotals struct {
	inFlight int64 // started, not ended
	known    int64 // ended, not canceled
	failures int64
	slow     int64
}

// takeSlot readies slot j for bucket k; see turnover. A request that
// meets the slot being cleared goes uncounted: Record counts its outcome
// only in a slot that holds its bucket, so counting it as started could
// leave it in flight for good, and then slow. Clearing the stripes of a
// fresh breaker's slot can take a page fault; thousands of requests
// counted that way would trip the latency condition.
func (b *Breaker) takeSlot(j, k int64) bool {
	ok, won := turnover(&b.ring[j], k)
	if won {
		for i := range b.counts {
			c := &b.counts[i][j]
			c.started.Store(0)
			c.ended.Store(0)
			c.canceled.Store(0)
			c.failures.Store(0)
			c.slow.Store(0)
		}
		b.ring[j].Store(k)
		return true
	}
	return ok && b.ring[j].Load() == k
}

// slotTotals sums slot j's stripes. It reads every stripe's started before
// any ended, so a request that ended before the read is never counted in
// flight.
func (b *Breaker) slotTotals(j int64) slotTotals {
	var t slotTotals
	for i := range b.counts {
		t.inFlight += b.counts[i][j].started.Load()
	}
	for i := range b.counts {
		c := &b.counts[i][j]
		ended := c.ended.Load()
		t.inFlight -= ended
		t.known += ended - c.canceled.Load()
		t.failures += c.failures.Load()
		t.slow += c.slow.Load()
	}
	return t
}

// stripedCounter is a counter striped as the window's are.
type stripedCounter [stripes]struct {
	n atomic.Uint64
	_ [56]byte // 64 bytes apart, two 8-byte counters never share a line
}

func (c *stripedCounter) add(stripe uint8) {
	c[stripe].n.Add(1)
}

func (c *stripedCounter) load() uint64 {
	var n uint64
	for i := range c {
		n += c[i].n.Load()
	}
	return n
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
	if tr := b.judge(now); tr.Cause != "" {
		b.trip(now, tr)
	}
}

// judge returns the trip condition that holds at now, with the numbers
// that show it, as the Transition it causes; Cause is "" if none holds.
//
// The latency condition "the q-quantile is above threshold" is the same
// as "more than 1-q of the requests are slower than threshold", so the
// judge needs no quantile: it counts slow requests, exactly. Requests
// still in flight whose whole bucket started more than threshold ago are
// slow already and counted so; the others are left out until they end.
func (b *Breaker) judge(now int64) Transition {
	cur := now / b.bucketLen
	// Requests from before the breaker last closed do not count: they are
	// what tripped it.
	oldest := max(cur-b.slots+1, b.closedBucket.Load())
	slowBefore := now - b.slowAfter
	var errs, lat tally
	for k := cur; k >= oldest; k-- {
		j := k & b.mask
		if b.ring[j].Load() != k {
			continue
		}
		s := b.slotTotals(j)
		errs.n += s.known
		errs.bad += s.failures
		if b.slowAfter > 0 {
			lat.n += s.known
			lat.bad += s.slow
			if s.inFlight > 0 && (k+1)*b.bucketLen <= slowBefore {
				lat.n += s.inFlight
				lat.bad += s.inFlight
			}
		}
		if b.errorRate > 0 && errs.clearlyAbove(b.errorRate, b.errorGate) {
			return b.errorTrip(errs, cur-k+1)
		}
		if b.slowAfter > 0 && lat.clearlyAbove(b.slowRate, b.latencyGate) {
			return b.latencyTrip(lat, cur-k+1)
		}
	}
	if b.errorRate > 0 && errs.n >= b.minRequests && float64(errs.bad) >= b.errorRate*float64(errs.n) {
		return b.errorTrip(errs, cur-oldest+1)
	}
	if b.slowAfter > 0 && lat.n >= b.latencyMin && float64(lat.bad) > b.slowRate*float64(lat.n) {
		return b.latencyTrip(lat, cur-oldest+1)
	}
	return Transition{}
}

// errorTrip and latencyTrip describe a trip on the tally of the newest
// buckets of the window.
func (b *Breaker) errorTrip(t tally, buckets int64) Transition {
	return Transition{Cause: CauseErrorRate, Requests: t.n, Failures: t.bad,
		Window: time.Duration(buckets * b.bucketLen), Threshold: b.errorRate}
}

func (b *Breaker) latencyTrip(t tally, buckets int64) Transition {
	return Transition{Cause: CauseLatency, Requests: t.n, Slow: t.bad,
		Window: time.Duration(buckets * b.bucketLen), Threshold: b.slowRate,
		LatencyThreshold: time.Duration(b.slowAfter)}
}
