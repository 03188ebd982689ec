package local

import (
	"errors"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	tokenBucketAlgo = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET
	slidingAlgo     = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW
	gcraAlgo        = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA
	fixedAlgo       = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW
)

var allAlgos = []meridianv1.RateLimitAlgorithm{tokenBucketAlgo, slidingAlgo, gcraAlgo, fixedAlgo}

// base is aligned to a whole second so window edges fall on whole seconds.
var base = time.Unix(1_700_000_000, 0)

func spec(algo meridianv1.RateLimitAlgorithm, limit uint64, period time.Duration, burst uint64) *meridianv1.RateLimitSpec {
	return &meridianv1.RateLimitSpec{
		Algorithm: algo,
		Limit:     limit,
		Period:    durationpb.New(period),
		Burst:     burst,
	}
}

func mustNew(t testing.TB, s *meridianv1.RateLimitSpec, opts Options) *Store {
	t.Helper()
	st, err := New(s, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return st
}

// admit offers n requests for key at now and returns how many were allowed.
func admit(s *Store, key string, now time.Time, n int) int {
	allowed := 0
	for range n {
		if s.Allow(key, now).Allowed {
			allowed++
		}
	}
	return allowed
}

var _ Limiter = (*Store)(nil)

func TestNewRejectsBadSpecs(t *testing.T) {
	tests := []struct {
		name string
		spec *meridianv1.RateLimitSpec
		opts Options
	}{
		{"nil spec", nil, Options{}},
		{"zero limit", spec(tokenBucketAlgo, 0, time.Second, 0), Options{}},
		{"missing period", &meridianv1.RateLimitSpec{Limit: 1}, Options{}},
		{"zero period", spec(fixedAlgo, 1, 0, 0), Options{}},
		{"negative period", spec(slidingAlgo, 1, -time.Second, 0), Options{}},
		{"period too long", spec(slidingAlgo, 1, MaxPeriod+time.Second, 0), Options{}},
		{"unknown algorithm", spec(meridianv1.RateLimitAlgorithm(99), 1, time.Second, 0), Options{}},
		{"gcra finer than a nanosecond", spec(gcraAlgo, 2_000_000, time.Millisecond, 0), Options{}},
		{"huge limit", spec(tokenBucketAlgo, 1<<40, time.Second, 0), Options{}},
		{"huge burst", spec(gcraAlgo, 1, time.Hour, 1<<40), Options{}},
		{"negative max keys", spec(tokenBucketAlgo, 1, time.Second, 0), Options{MaxKeys: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.spec, tt.opts)
			if err == nil {
				t.Fatalf("New = %v, want error", s)
			}
			if tt.opts.MaxKeys >= 0 && !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("error %v does not wrap ErrInvalidSpec", err)
			}
		})
	}
}

// TestAlgorithms walks each algorithm through limits, bursts and refill on a
// controllable clock: each step offers n requests at base+at.
func TestAlgorithms(t *testing.T) {
	type step struct {
		at   time.Duration
		n    int
		want int
	}
	ms := time.Millisecond
	tests := []struct {
		name  string
		spec  *meridianv1.RateLimitSpec
		steps []step
	}{
		{"token bucket default burst is limit", spec(0, 10, time.Second, 0), []step{
			{0, 15, 10},
			{100 * ms, 3, 1}, // one token refilled
			{150 * ms, 1, 0}, // half a token
			{200 * ms, 1, 1},
			{1200 * ms, 15, 10}, // full again, capped at burst
		}},
		{"token bucket explicit burst", spec(tokenBucketAlgo, 10, time.Second, 3), []step{
			{0, 10, 3},
			{500 * ms, 10, 3}, // refill capped at burst 3
			{600 * ms, 10, 1},
		}},
		{"token bucket burst above limit", spec(tokenBucketAlgo, 1, time.Minute, 5), []step{
			{0, 10, 5},
			{30 * time.Second, 1, 0},
			{60 * time.Second, 2, 1},
		}},
		{"gcra default burst paces strictly", spec(gcraAlgo, 10, time.Second, 0), []step{
			{0, 5, 1},
			{50 * ms, 1, 0},
			{100 * ms, 5, 1},
			{1000 * ms, 5, 1},
		}},
		{"gcra burst", spec(gcraAlgo, 10, time.Second, 3), []step{
			{0, 5, 3},
			{100 * ms, 5, 1},
			{1000 * ms, 5, 3},
		}},
		{"fixed window", spec(fixedAlgo, 10, time.Second, 0), []step{
			{0, 15, 10},
			{999 * ms, 1, 0},
			{1000 * ms, 15, 10}, // new window, full quota
			{2500 * ms, 4, 4},
		}},
		{"fixed window ignores burst", spec(fixedAlgo, 2, time.Second, 50), []step{
			{0, 5, 2},
		}},
		{"sliding window", spec(slidingAlgo, 10, time.Second, 0), []step{
			{0, 15, 10},
			{1000 * ms, 5, 0},  // estimate 10*1 + 0
			{1500 * ms, 10, 5}, // estimate 10*0.5 + 0
			{1900 * ms, 5, 4},  // estimate 10*0.1 + 5 = 6
			{2000 * ms, 5, 1},  // previous 9 at full weight
			{4000 * ms, 15, 10},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustNew(t, tt.spec, Options{})
			for i, st := range tt.steps {
				if got := admit(s, "k", base.Add(st.at), st.n); got != st.want {
					t.Fatalf("step %d (+%s, %d requests): allowed %d, want %d", i, st.at, st.n, got, st.want)
				}
			}
		})
	}
}

// TestWindowEdge offers limit requests just before a fixed-window edge and
// limit more on it, then counts what one period starting at the first batch
// admitted: fixed window lets 2*limit through, the others at most limit.
func TestWindowEdge(t *testing.T) {
	const limit = 10
	tests := []struct {
		algo    meridianv1.RateLimitAlgorithm
		wantMax int
		wantMin int
	}{
		{fixedAlgo, 2 * limit, 2 * limit}, // the documented edge burst
		{slidingAlgo, limit, limit},
		{gcraAlgo, limit, 1},
		{tokenBucketAlgo, limit, limit},
	}
	for _, tt := range tests {
		t.Run(tt.algo.String(), func(t *testing.T) {
			s := mustNew(t, spec(tt.algo, limit, time.Second, 0), Options{})
			got := admit(s, "k", base.Add(999*time.Millisecond), limit)
			got += admit(s, "k", base.Add(time.Second), limit)
			if got > tt.wantMax || got < tt.wantMin {
				t.Errorf("admitted %d across the edge, want %d..%d", got, tt.wantMin, tt.wantMax)
			}
		})
	}
}

// TestNoEdgeBurstUnderLoad offers load only around window edges for five
// periods and checks the busiest one-period window: fixed window reaches
// 2*limit there, sliding window and GCRA stay within limit.
func TestNoEdgeBurstUnderLoad(t *testing.T) {
	const limit = 50
	for _, algo := range []meridianv1.RateLimitAlgorithm{gcraAlgo, slidingAlgo, fixedAlgo} {
		t.Run(algo.String(), func(t *testing.T) {
			s := mustNew(t, spec(algo, limit, time.Second, 0), Options{})
			var admitted []time.Duration
			// Start mid-window so the first edge finds a window with its quota left.
			for at := 500 * time.Millisecond; at < 5500*time.Millisecond; at += time.Millisecond {
				// Load only around each window edge, 20 requests a millisecond.
				n := 0
				if edge := at % time.Second; edge >= 990*time.Millisecond || edge < 10*time.Millisecond {
					n = 20
				}
				for range n {
					if s.Allow("k", base.Add(at)).Allowed {
						admitted = append(admitted, at)
					}
				}
			}
			busiest := 0
			for i, start := range admitted {
				j := i
				for j < len(admitted) && admitted[j] < start+time.Second {
					j++
				}
				busiest = max(busiest, j-i)
			}
			switch algo {
			case fixedAlgo:
				if busiest != 2*limit {
					t.Errorf("busiest window %d, want the edge burst of %d", busiest, 2*limit)
				}
			default:
				if busiest > limit {
					t.Errorf("busiest window %d, want at most %d", busiest, limit)
				}
			}
			if len(admitted) < 5 {
				t.Errorf("admitted %d in 5 periods, want some in each", len(admitted))
			}
		})
	}
}

// TestDecisionFields checks the numbers behind Retry-After and the RateLimit
// headers: Remaining is exactly how many more are allowed at the same
// instant, and a denied request succeeds after RetryAfter but not 1ns before.
func TestDecisionFields(t *testing.T) {
	for _, algo := range allAlgos {
		for _, burst := range []uint64{0, 4} {
			t.Run(algo.String()+"/burst="+strconv.FormatUint(burst, 10), func(t *testing.T) {
				s := mustNew(t, spec(algo, 7, 3*time.Second, burst), Options{})
				now := base.Add(400 * time.Millisecond)
				d := s.Allow("k", now)
				if !d.Allowed || d.Limit != 7 || d.RetryAfter != 0 || d.Reset <= 0 {
					t.Fatalf("first decision %+v", d)
				}
				if got := admit(s, "k", now, 100); int64(got) != d.Remaining {
					t.Fatalf("Remaining %d, but %d more were allowed", d.Remaining, got)
				}
				for i := range 5 {
					denied := s.Allow("k", now)
					if denied.Allowed || denied.Remaining != 0 || denied.RetryAfter <= 0 {
						t.Fatalf("round %d: decision after exhaustion %+v", i, denied)
					}
					if s.Allow("k", now.Add(denied.RetryAfter-1)).Allowed {
						t.Fatalf("round %d: allowed 1ns before RetryAfter %s", i, denied.RetryAfter)
					}
					now = now.Add(denied.RetryAfter)
					if !s.Allow("k", now).Allowed {
						t.Fatalf("round %d: denied after RetryAfter %s", i, denied.RetryAfter)
					}
					admit(s, "k", now, 100)
				}
			})
		}
	}
}

func TestClockSteppingBack(t *testing.T) {
	for _, algo := range allAlgos {
		t.Run(algo.String(), func(t *testing.T) {
			s := mustNew(t, spec(algo, 5, time.Second, 0), Options{})
			now := base.Add(10 * time.Second)
			admit(s, "k", now, 10)
			if got := admit(s, "k", now.Add(-5*time.Second), 10); got != 0 {
				t.Errorf("clock stepped back: %d allowed, want 0", got)
			}
			if got := admit(s, "k", now.Add(2*time.Second), 10); got == 0 {
				t.Error("clock forward again: nothing allowed")
			}
		})
	}
}

func TestSweepDropsOnlyIdleKeys(t *testing.T) {
	for _, algo := range allAlgos {
		t.Run(algo.String(), func(t *testing.T) {
			s := mustNew(t, spec(algo, 10, time.Second, 0), Options{})
			now := base.Add(100 * time.Millisecond)
			admit(s, "busy", now, 10)
			admit(s, "light", now, 1)
			if got := s.Sweep(now); got != 0 {
				t.Errorf("Sweep right after use dropped %d", got)
			}
			if got := s.Len(); got != 2 {
				t.Fatalf("Len = %d, want 2", got)
			}
			later := now.Add(2*time.Second + time.Millisecond)
			if got := s.Sweep(later); got != 2 {
				t.Errorf("Sweep after two periods dropped %d, want 2", got)
			}
			if got := s.Len(); got != 0 {
				t.Errorf("Len after sweep = %d, want 0", got)
			}
		})
	}
}

// TestMemoryBound pushes one million distinct keys (one per client IP) at a
// store capped at MaxKeys, checks the map never grows past the cap, and that
// tracked keys keep their state while the overflow bucket absorbs the flood.
func TestMemoryBound(t *testing.T) {
	const maxKeys = 10_000
	s := mustNew(t, spec(tokenBucketAlgo, 100, time.Second, 0), Options{MaxKeys: maxKeys})
	now := base
	if got := admit(s, "heavy", now, 200); got != 100 {
		t.Fatalf("heavy client allowed %d, want 100", got)
	}
	overflowAllowed, overflowSeen := 0, 0
	for i := range 1_000_000 {
		d := s.Allow("10."+strconv.Itoa(i>>16)+"."+strconv.Itoa(i>>8&255)+"."+strconv.Itoa(i&255), now)
		if d.Overflow {
			overflowSeen++
			if d.Allowed {
				overflowAllowed++
			}
		}
	}
	if got := s.Len(); got > maxKeys {
		t.Fatalf("Len = %d after 1M keys, want at most %d", got, maxKeys)
	}
	if overflowSeen == 0 {
		t.Fatal("no request went to the overflow bucket")
	}
	if overflowAllowed > 100 {
		t.Errorf("overflow bucket allowed %d at one instant, want at most its limit 100", overflowAllowed)
	}
	if d := s.Allow("heavy", now); d.Allowed || d.Overflow {
		t.Errorf("heavy client after the flood: %+v, want still tracked and limited", d)
	}
	if got := s.Sweep(now.Add(2 * time.Second)); got == 0 || s.Len() != 0 {
		t.Errorf("Sweep dropped %d, Len now %d; want everything dropped", got, s.Len())
	}
}

// memoryCap is the stated bound on what one local limit holds for one
// million distinct client addresses with the default key cap (docs say
// about 8 MiB for 100,000 keys).
const memoryCap = 16 << 20

// TestMemoryCapBytes sends one million distinct client addresses through
// a store with the default key cap and checks the live heap it keeps,
// measured after a GC, stays under memoryCap.
func TestMemoryCapBytes(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a million keys")
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	s := mustNew(t, spec(tokenBucketAlgo, 100, time.Second, 0), Options{})
	for i := range 1_000_000 {
		s.Allow("10."+strconv.Itoa(i>>16)+"."+strconv.Itoa(i>>8&255)+"."+strconv.Itoa(i&255), base)
	}
	used := int64(heap()) - int64(before)
	t.Logf("1M distinct keys: %d tracked, %.1f MiB live", s.Len(), float64(used)/(1<<20))
	if s.Len() > DefaultMaxKeys {
		t.Fatalf("Len = %d, want at most %d", s.Len(), DefaultMaxKeys)
	}
	if used > memoryCap {
		t.Errorf("store holds %.1f MiB after 1M distinct keys, want under %d MiB", float64(used)/(1<<20), memoryCap>>20)
	}
	runtime.KeepAlive(s)
}

func TestSmallMaxKeys(t *testing.T) {
	for _, maxKeys := range []int{1, 3, 64, 100} {
		s := mustNew(t, spec(fixedAlgo, 1, time.Second, 0), Options{MaxKeys: maxKeys})
		for i := range 1000 {
			s.Allow(strconv.Itoa(i), base)
		}
		if got := s.Len(); got > maxKeys || got == 0 {
			t.Errorf("MaxKeys %d: Len = %d", maxKeys, got)
		}
	}
}

// TestConcurrentAllow checks that concurrent decisions on shared keys never
// admit more than the quota (run with -race).
func TestConcurrentAllow(t *testing.T) {
	const (
		limit   = 1000
		workers = 8
		perKey  = 600
		keys    = 4
	)
	for _, algo := range allAlgos {
		t.Run(algo.String(), func(t *testing.T) {
			s := mustNew(t, spec(algo, limit, time.Hour, limit), Options{})
			var mu sync.Mutex
			allowed := map[string]int{}
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					local := map[string]int{}
					for i := range perKey * keys {
						k := strconv.Itoa(i % keys)
						if s.Allow(k, base).Allowed {
							local[k]++
						}
						if i%500 == 0 && w == 0 {
							s.Sweep(base)
						}
					}
					mu.Lock()
					for k, n := range local {
						allowed[k] += n
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			// burst == limit, so every algorithm admits exactly limit at one instant.
			for k := range keys {
				if got := allowed[strconv.Itoa(k)]; got != limit {
					t.Errorf("key %d: %d allowed, want %d", k, got, limit)
				}
			}
		})
	}
}

func BenchmarkAllowHotKey(b *testing.B) {
	for _, algo := range allAlgos {
		b.Run(algo.String(), func(b *testing.B) {
			s := mustNew(b, spec(algo, 1_000_000, time.Second, 0), Options{})
			now := base
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(time.Microsecond)
				s.Allow("203.0.113.7", now)
			}
		})
	}
}

func BenchmarkAllowHotKeyParallel(b *testing.B) {
	s := mustNew(b, spec(tokenBucketAlgo, 1_000_000, time.Second, 0), Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Allow("203.0.113.7", base)
		}
	})
}

func BenchmarkAllowManyKeys(b *testing.B) {
	const n = 50_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "10.0." + strconv.Itoa(i>>8) + "." + strconv.Itoa(i&255)
	}
	s := mustNew(b, spec(gcraAlgo, 100, time.Second, 0), Options{})
	for _, k := range keys {
		s.Allow(k, base)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Allow(keys[i%n], base)
		i++
	}
}
