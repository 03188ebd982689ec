package breaker

import (
	"sync/atomic"
	"time"
)

// metricSeconds is how far back the metrics ring reaches.
const metricSeconds = 60

// liveSeconds is how many of the newest seconds the metrics stripe: the
// current one, and the one before for outcomes recorded just after it.
const liveSeconds = 2

// metrics keep the outcomes of the last minute, one second per slot.
// Every outcome adds to its second's counters, so those are striped (see
// stripes). Striping all 60 seconds would multiply the histograms, most of
// a breaker's memory, by stripes; so only the live seconds are striped,
// and a live second is folded into the plain ring (history) when its live
// slot is taken for a newer one. Outcomes of older seconds go to the ring
// directly. A Snapshot taken during a fold, a few microseconds once a
// second, may miss part of the second being folded.
type metrics struct {
	history [metricSeconds]secondSlot
	// liveSecond holds the second each live slot counts, or slotEmpty, or
	// slotClearing while it is folded.
	liveSecond [liveSeconds]atomic.Int64
	live       [stripes]struct {
		_       [64]byte // keeps each stripe off its neighbours' cache lines
		seconds [liveSeconds]secondCounts
	}
}

// secondCounts counts the outcomes recorded in one second.
type secondCounts struct {
	failures atomic.Uint64 // Failure or Timeout
	timeouts atomic.Uint64
	latency  histogram // every recorded outcome but Canceled
}

// secondSlot is a second of the metrics ring.
type secondSlot struct {
	second atomic.Int64
	secondCounts
}

func (c *secondCounts) add(o Outcome, latency time.Duration) {
	c.latency.add(latency)
	if o == Failure || o == Timeout {
		c.failures.Add(1)
		if o == Timeout {
			c.timeouts.Add(1)
		}
	}
}

// moveTo adds c's counts to dst and zeroes them.
func (c *secondCounts) moveTo(dst *secondCounts) {
	dst.failures.Add(c.failures.Swap(0))
	dst.timeouts.Add(c.timeouts.Swap(0))
	c.latency.moveTo(&dst.latency)
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

func (m *metrics) init() {
	for i := range m.history {
		m.history[i].second.Store(slotEmpty)
	}
	for i := range m.liveSecond {
		m.liveSecond[i].Store(slotEmpty)
	}
}

// record counts outcome o, latency after the start, in second sec.
func (m *metrics) record(sec int64, stripe uint8, o Outcome, latency time.Duration) {
	if i := sec % liveSeconds; m.liveSecond[i].Load() == sec || m.takeLive(sec) {
		m.live[stripe].seconds[i].add(o, latency)
		return
	}
	if s := &m.history[sec%metricSeconds]; s.take(sec) {
		s.add(o, latency)
	}
}

// takeLive readies the live slot of second sec, folding the older second
// it holds into the ring. It reports false if the slot holds a newer
// second, or is being folded: outcomes of sec then go to the ring.
func (m *metrics) takeLive(sec int64) bool {
	i := sec % liveSeconds
	held := &m.liveSecond[i]
	for {
		h := held.Load()
		switch {
		case h == sec:
			return true
		case h > sec || h == slotClearing:
			return false
		case held.CompareAndSwap(h, slotClearing):
			m.fold(h, i)
			held.Store(sec)
			return true
		}
	}
}

// fold moves second h's counts from live slot i into the ring, or drops
// them if h is none or the ring holds a newer second in its place.
func (m *metrics) fold(h, i int64) {
	var drop secondCounts
	dst := &drop
	if h >= 0 {
		if s := &m.history[h%metricSeconds]; s.take(h) {
			dst = &s.secondCounts
		}
	}
	for st := range m.live {
		m.live[st].seconds[i].moveTo(dst)
	}
}

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

// aggregate sums the metrics of the seconds from now-span+1 to now. A
// second is either live or in the ring.
func (m *metrics) aggregate(now, span int64) Aggregate {
	var (
		a   Aggregate
		lat latencies
	)
	add := func(c *secondCounts) {
		a.Failures += c.failures.Load()
		a.Timeouts += c.timeouts.Load()
		lat.merge(&c.latency)
	}
	for k := now; k > now-span && k >= 0; k-- {
		if s := &m.history[k%metricSeconds]; s.second.Load() == k {
			add(&s.secondCounts)
		}
		if i := k % liveSeconds; m.liveSecond[i].Load() == k {
			for st := range m.live {
				add(&m.live[st].seconds[i])
			}
		}
	}
	a.Requests = lat.total()
	a.P50, a.P95, a.P99 = lat.quantile(0.50), lat.quantile(0.95), lat.quantile(0.99)
	return a
}
