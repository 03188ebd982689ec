package breaker

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// lognormal returns n latencies with the given median whose P99 is
// p99ratio times the median.
func lognormal(r *rand.Rand, n int, median time.Duration, p99ratio float64) []time.Duration {
	sigma := math.Log(p99ratio) / 2.326
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(float64(median) * math.Exp(sigma*r.NormFloat64()))
	}
	return out
}

// exactQuantile is the nearest-rank quantile of sorted.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[max(int(math.Ceil(q*float64(len(sorted))))-1, 0)]
}

func relErr(got, want time.Duration) float64 {
	return math.Abs(float64(got-want)) / float64(want)
}

func testQuantiles() []float64 { return []float64{0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999} }

func TestHistogramQuantiles(t *testing.T) {
	tests := []struct {
		name     string
		median   time.Duration
		p99ratio float64
	}{
		{"20ms, P99 8x", 20 * time.Millisecond, 8},
		{"300us, P99 3x", 300 * time.Microsecond, 3},
		{"2s, P99 20x", 2 * time.Second, 20},
	}
	r := rand.New(rand.NewPCG(7, 7))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			samples := lognormal(r, 200_000, tt.median, tt.p99ratio)
			var h histogram
			for _, d := range samples {
				h.add(d)
			}
			var l latencies
			l.merge(&h)
			slices.Sort(samples)
			for _, q := range testQuantiles() {
				got, want := l.quantile(q), exactQuantile(samples, q)
				if e := relErr(got, want); e > 0.02 {
					t.Errorf("q%g = %s, exact %s: relative error %.4f > 0.02", q, got, want, e)
				}
			}
		})
	}
}

func TestHistogramBuckets(t *testing.T) {
	// Every value from 64µs to 134s comes back within 1/64, and buckets
	// never go backwards.
	last := -1
	for us := int64(64); us < 1<<histMaxBits; us += 1 + us/97 {
		d := time.Duration(us)*time.Microsecond + 999 // anywhere within the microsecond
		i := histIndex(d)
		if i < last || i >= histBuckets {
			t.Fatalf("histIndex(%s) = %d after %d", d, i, last)
		}
		last = i
		if e := relErr(histValue(i), d); e > 1.0/64 {
			t.Fatalf("histValue(histIndex(%s)) = %s: relative error %.4f > 1/64", d, histValue(i), e)
		}
	}
	if got := histIndex(time.Hour); got != histBuckets-1 {
		t.Errorf("histIndex(1h) = %d, want the last bucket %d", got, histBuckets-1)
	}
	if got := histIndex(-time.Second); got != 0 {
		t.Errorf("histIndex(-1s) = %d, want 0", got)
	}
	var empty latencies
	if got := empty.quantile(0.99); got != 0 {
		t.Errorf("quantile of nothing = %s, want 0", got)
	}
}

func TestHistogramMerge(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	// Two backends: a fast one and a slow one; the merge must answer for
	// both together.
	fast := lognormal(r, 90_000, 10*time.Millisecond, 4)
	slow := lognormal(r, 10_000, 400*time.Millisecond, 4)
	var hf, hs, hall histogram
	for _, d := range fast {
		hf.add(d)
		hall.add(d)
	}
	for _, d := range slow {
		hs.add(d)
		hall.add(d)
	}
	var merged, whole latencies
	merged.merge(&hf)
	merged.merge(&hs)
	whole.merge(&hall)
	if merged != whole {
		t.Fatal("merging two histograms differs from one histogram of all values")
	}
	all := slices.Concat(fast, slow)
	slices.Sort(all)
	for _, q := range testQuantiles() {
		got, want := merged.quantile(q), exactQuantile(all, q)
		if e := relErr(got, want); e > 0.02 {
			t.Errorf("q%g = %s, exact %s: relative error %.4f > 0.02", q, got, want, e)
		}
	}
	if merged.total() != uint64(len(all)) {
		t.Errorf("total %d, want %d", merged.total(), len(all))
	}
}
