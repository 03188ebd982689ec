package breaker

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Latencies are counted in log-linear buckets of microseconds, the layout
// of HdrHistogram with 5 sub-bucket bits: values below 64 µs have a bucket
// each, and every power of two above is split into 32 equal buckets, so a
// bucket is never wider than 1/32 of its lower bound. Reporting the
// middle of a bucket is then within 1/64 (1.6%) of any value in it. Values
// from 2^27 µs (134 s) up share the last bucket.
const (
	histSubBits = 5
	histMaxBits = 27
	histBuckets = (histMaxBits-histSubBits)<<histSubBits + 1<<histSubBits
)

// histIndex returns the bucket of latency d.
func histIndex(d time.Duration) int {
	us := uint64(max(d, 0) / time.Microsecond)
	if us >= 1<<histMaxBits {
		return histBuckets - 1
	}
	// e is how many low bits the bucket ignores; us>>e keeps the top
	// histSubBits+1 bits (a number from 32 to 63), or all of a value
	// below 64.
	e := max(bits.Len64(us)-(histSubBits+1), 0)
	return e<<histSubBits + int(us>>e)
}

// histValue returns the middle of bucket i.
func histValue(i int) time.Duration {
	e := max(i>>histSubBits-1, 0)
	lower := uint64(i-e<<histSubBits) << e
	mid := float64(lower) + float64(uint64(1)<<e)/2
	return time.Duration(mid * float64(time.Microsecond))
}

// histogram counts latencies, safe for concurrent adds. It belongs to one
// second of one breaker, so 32-bit counters are plenty.
type histogram struct {
	counts [histBuckets]atomic.Uint32
}

func (h *histogram) add(d time.Duration) {
	h.counts[histIndex(d)].Add(1)
}

// moveTo adds h's counts to dst and zeroes them.
func (h *histogram) moveTo(dst *histogram) {
	for i := range h.counts {
		if h.counts[i].Load() != 0 {
			dst.counts[i].Add(h.counts[i].Swap(0))
		}
	}
}

func (h *histogram) reset() {
	for i := range h.counts {
		h.counts[i].Store(0)
	}
}

// latencies is a merged, plain copy of histograms.
type latencies [histBuckets]uint64

// merge adds h's counts to l.
func (l *latencies) merge(h *histogram) {
	for i := range h.counts {
		l[i] += uint64(h.counts[i].Load())
	}
}

// total returns the number of latencies counted.
func (l *latencies) total() uint64 {
	var n uint64
	for _, c := range l {
		n += c
	}
	return n
}

// quantile returns the nearest-rank q-quantile: the value of the
// ceil(q*n)-th smallest latency, as the middle of its bucket. It returns 0
// when nothing was counted.
func (l *latencies) quantile(q float64) time.Duration {
	n := l.total()
	if n == 0 {
		return 0
	}
	rank := max(uint64(math.Ceil(q*float64(n))), 1)
	var seen uint64
	for i, c := range l {
		seen += c
		if seen >= rank {
			return histValue(i)
		}
	}
	return histValue(histBuckets - 1)
}
