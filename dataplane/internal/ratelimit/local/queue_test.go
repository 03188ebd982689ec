package local

import (
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

var queueAlgos = []meridianv1.RateLimitAlgorithm{tokenBucketAlgo, gcraAlgo}

func queueSpec(algo meridianv1.RateLimitAlgorithm, limit uint64, period time.Duration, burst uint64, maxWait time.Duration) *meridianv1.RateLimitSpec {
	s := spec(algo, limit, period, burst)
	s.Queue = &meridianv1.RateLimitQueue{MaxWait: durationpb.New(maxWait)}
	return s
}

// denied marks an expected denial in a list of expected waits.
const denied = time.Duration(-1)

func TestNewRejectsBadQueueSpecs(t *testing.T) {
	withQueue := func(algo meridianv1.RateLimitAlgorithm, q *meridianv1.RateLimitQueue) *meridianv1.RateLimitSpec {
		s := spec(algo, 10, time.Second, 0)
		s.Queue = q
		return s
	}
	tests := []struct {
		name string
		spec *meridianv1.RateLimitSpec
	}{
		{"sliding window", queueSpec(slidingAlgo, 10, time.Second, 0, time.Second)},
		{"fixed window", queueSpec(fixedAlgo, 10, time.Second, 0, time.Second)},
		{"missing maxWait", withQueue(tokenBucketAlgo, &meridianv1.RateLimitQueue{})},
		{"zero maxWait", queueSpec(gcraAlgo, 10, time.Second, 0, 0)},
		{"negative maxWait", queueSpec(tokenBucketAlgo, 10, time.Second, 0, -time.Second)},
		{"maxWait too long", queueSpec(gcraAlgo, 10, time.Second, 0, MaxPeriod+time.Second)},
		{"malformed maxWait", withQueue(tokenBucketAlgo, &meridianv1.RateLimitQueue{
			MaxWait: &durationpb.Duration{Seconds: 1, Nanos: -5},
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.spec, Options{})
			if err == nil {
				t.Fatalf("New = %v, want error", s)
			}
			if !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("error %v does not wrap ErrInvalidSpec", err)
			}
		})
	}
	if _, err := New(queueSpec(0, 10, time.Second, 0, time.Second), Options{}); err != nil {
		t.Errorf("queue with unspecified (token bucket) algorithm: %v", err)
	}
}

// TestQueueTurns offers requests on a controllable clock and checks the wait
// each one is given: burst at once, then turns one interval (100ms) apart up
// to maxWait (350ms), and a denial past that which takes no turn.
func TestQueueTurns(t *testing.T) {
	type step struct {
		at    time.Duration
		waits []time.Duration // one request each; denied for a denial
	}
	const (
		ms      = time.Millisecond
		limit   = 10
		period  = time.Second
		maxWait = 350 * ms
		D       = denied
	)
	tests := []struct {
		name  string
		algo  meridianv1.RateLimitAlgorithm
		burst uint64
		steps []step
	}{
		{"token bucket burst is limit", tokenBucketAlgo, 0, []step{
			{0, []time.Duration{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100 * ms, 200 * ms, 300 * ms, D, D}},
			{49 * ms, []time.Duration{D}},           // the next turn (400ms) is 351ms away
			{50 * ms, []time.Duration{350 * ms, D}}, // the denials took no turn
			{500 * ms, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D}},
			{3 * time.Second, []time.Duration{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100 * ms, 200 * ms, 300 * ms, D}},
		}},
		{"token bucket burst 3", tokenBucketAlgo, 3, []step{
			{0, []time.Duration{0, 0, 0, 100 * ms, 200 * ms, 300 * ms, D, D}},
			{49 * ms, []time.Duration{D}},
			{50 * ms, []time.Duration{350 * ms, D}},
			{500 * ms, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D}},
			{3 * time.Second, []time.Duration{0, 0, 0, 100 * ms, 200 * ms, 300 * ms, D}},
		}},
		{"token bucket burst 1", tokenBucketAlgo, 1, []step{
			{0, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D, D}},
			{50 * ms, []time.Duration{350 * ms, D}},
			{500 * ms, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D}},
			{620 * ms, []time.Duration{280 * ms, D}}, // partial refill shortens the wait
		}},
		{"gcra default burst", gcraAlgo, 0, []step{
			{0, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D, D}},
			{49 * ms, []time.Duration{D}},
			{50 * ms, []time.Duration{350 * ms, D}},
			{500 * ms, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D}},
			{620 * ms, []time.Duration{280 * ms, D}},
			{3 * time.Second, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D}},
		}},
		{"gcra burst 3", gcraAlgo, 3, []step{
			{0, []time.Duration{0, 0, 0, 100 * ms, 200 * ms, 300 * ms, D, D}},
			{49 * ms, []time.Duration{D}},
			{50 * ms, []time.Duration{350 * ms, D}},
			{500 * ms, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, D}},
			{3 * time.Second, []time.Duration{0, 0, 0, 100 * ms, 200 * ms, 300 * ms, D}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustNew(t, queueSpec(tt.algo, limit, period, tt.burst, maxWait), Options{})
			burst := time.Duration(tt.burst)
			if burst == 0 && tt.algo == tokenBucketAlgo {
				burst = limit
			} else if burst == 0 {
				burst = 1
			}
			for i, st := range tt.steps {
				for j, want := range st.waits {
					d := s.Allow("k", base.Add(st.at))
					where := "step " + strconv.Itoa(i) + " (+" + st.at.String() + ") request " + strconv.Itoa(j)
					if want == denied {
						if d.Allowed || d.Wait != 0 || d.Remaining != 0 || d.RetryAfter <= 0 {
							t.Fatalf("%s: %+v, want denied", where, d)
						}
						continue
					}
					if !d.Allowed || d.Wait != want || d.RetryAfter != 0 || d.Limit != limit {
						t.Fatalf("%s: %+v, want allowed with wait %s", where, d, want)
					}
					// A request that had to wait leaves nothing now, and the
					// quota is back burst intervals after its turn.
					if want > 0 && (d.Remaining != 0 || d.Reset != want+burst*period/limit) {
						t.Fatalf("%s: Remaining %d, Reset %s; want 0, %s", where, d.Remaining, d.Reset, want+burst*period/limit)
					}
				}
			}
		})
	}
}

// TestQueueRetryAfter checks that a request denied in queue mode gets a turn
// within maxWait after exactly RetryAfter, not 1ns before, and that the
// waits of consecutive turns grow by one interval.
func TestQueueRetryAfter(t *testing.T) {
	const maxWait = 1300 * time.Millisecond
	for _, algo := range queueAlgos {
		for _, burst := range []uint64{0, 4} {
			t.Run(algo.String()+"/burst="+strconv.FormatUint(burst, 10), func(t *testing.T) {
				s := mustNew(t, queueSpec(algo, 7, 3*time.Second, burst, maxWait), Options{})
				interval := 3 * time.Second / 7
				now := base.Add(400 * time.Millisecond)
				var last Decision
				for {
					d := s.Allow("k", now)
					if !d.Allowed {
						break
					}
					if last.Wait > 0 && (d.Wait-last.Wait < interval-1 || d.Wait-last.Wait > interval+1) {
						t.Fatalf("waits %s then %s, want one interval %s apart", last.Wait, d.Wait, interval)
					}
					last = d
				}
				if last.Wait <= 0 || last.Wait > maxWait {
					t.Fatalf("last allowed wait %s, want in (0, %s]", last.Wait, maxWait)
				}
				for i := range 5 {
					d := s.Allow("k", now)
					if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > interval+1 {
						t.Fatalf("round %d: decision past maxWait %+v", i, d)
					}
					if s.Allow("k", now.Add(d.RetryAfter-1)).Allowed {
						t.Fatalf("round %d: allowed 1ns before RetryAfter %s", i, d.RetryAfter)
					}
					now = now.Add(d.RetryAfter)
					got := s.Allow("k", now)
					if !got.Allowed || got.Wait > maxWait || got.Wait < maxWait-1 {
						t.Fatalf("round %d: after RetryAfter %s: %+v, want allowed with wait about %s", i, d.RetryAfter, got, maxWait)
					}
				}
			})
		}
	}
}

// TestQueueSweepKeepsReservations checks that a key holding a reservation is
// not idle until its quota is fully back, which is the Reset of its last
// decision, and that dropping it then changes nothing.
func TestQueueSweepKeepsReservations(t *testing.T) {
	for _, algo := range queueAlgos {
		for _, burst := range []uint64{1, 5} {
			t.Run(algo.String()+"/burst="+strconv.FormatUint(burst, 10), func(t *testing.T) {
				s := mustNew(t, queueSpec(algo, 10, time.Second, burst, time.Second), Options{})
				unswept := mustNew(t, queueSpec(algo, 10, time.Second, burst, time.Second), Options{})
				var last Decision
				for {
					d := s.Allow("k", base)
					unswept.Allow("k", base)
					if !d.Allowed {
						break
					}
					last = d
				}
				if last.Wait != time.Second {
					t.Fatalf("last reservation waits %s, want 1s", last.Wait)
				}
				for _, at := range []time.Duration{0, 500 * time.Millisecond, last.Wait, last.Reset - 1} {
					if got := s.Sweep(base.Add(at)); got != 0 || s.Len() != 1 {
						t.Fatalf("Sweep at +%s dropped %d (Len %d), want the key kept", at, got, s.Len())
					}
				}
				at := base.Add(last.Reset)
				if got := s.Sweep(at); got != 1 {
					t.Fatalf("Sweep at Reset (+%s) dropped %d, want 1", last.Reset, got)
				}
				for i := range 20 {
					if got, want := s.Allow("k", at), unswept.Allow("k", at); got != want {
						t.Fatalf("request %d after sweep: %+v, without the sweep %+v", i, got, want)
					}
				}
			})
		}
	}
}

// TestQueueOverflowBucket checks that keys beyond MaxKeys queue on the shared
// overflow bucket the same way.
func TestQueueOverflowBucket(t *testing.T) {
	for _, algo := range queueAlgos {
		t.Run(algo.String(), func(t *testing.T) {
			s := mustNew(t, queueSpec(algo, 10, time.Second, 1, 250*time.Millisecond), Options{MaxKeys: 1})
			if d := s.Allow("tracked", base); !d.Allowed || d.Overflow {
				t.Fatalf("first key: %+v", d)
			}
			for i, want := range []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, denied} {
				d := s.Allow("other"+strconv.Itoa(i), base)
				if !d.Overflow || d.Allowed != (want != denied) || (d.Allowed && d.Wait != want) {
					t.Fatalf("overflow request %d: %+v, want overflow with wait %s", i, d, want)
				}
			}
		})
	}
}

// TestQueueConcurrentTurns checks under -race that concurrent requests at one
// instant are handed each turn exactly once.
func TestQueueConcurrentTurns(t *testing.T) {
	const (
		limit   = 1000
		burst   = 50
		workers = 8
		perKey  = 300
		keys    = 3
		maxWait = time.Second
	)
	interval := time.Second / limit
	for _, algo := range queueAlgos {
		t.Run(algo.String(), func(t *testing.T) {
			s := mustNew(t, queueSpec(algo, limit, time.Second, burst, maxWait), Options{})
			var mu sync.Mutex
			waits := map[string]map[time.Duration]int{}
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					local := map[string][]time.Duration{}
					for i := range perKey * keys {
						k := strconv.Itoa(i % keys)
						if d := s.Allow(k, base); d.Allowed {
							local[k] = append(local[k], d.Wait)
						}
						if i%200 == 0 && w == 0 {
							s.Sweep(base)
						}
					}
					mu.Lock()
					for k, ws := range local {
						if waits[k] == nil {
							waits[k] = map[time.Duration]int{}
						}
						for _, wt := range ws {
							waits[k][wt]++
						}
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			turns := int(maxWait / interval)
			for k := range keys {
				got := waits[strconv.Itoa(k)]
				if got[0] != burst {
					t.Errorf("key %d: %d requests without a wait, want %d", k, got[0], burst)
				}
				for n := 1; n <= turns; n++ {
					if c := got[time.Duration(n)*interval]; c != 1 {
						t.Fatalf("key %d: turn %d given %d times, want once", k, n, c)
					}
				}
				if len(got) != turns+1 {
					t.Errorf("key %d: %d distinct waits, want %d", k, len(got), turns+1)
				}
			}
		})
	}
}

// TestNoWaitWithoutQueue checks that Wait stays 0 outside queue mode.
func TestNoWaitWithoutQueue(t *testing.T) {
	for _, algo := range allAlgos {
		s := mustNew(t, spec(algo, 5, time.Second, 0), Options{})
		for i := range 20 {
			if d := s.Allow("k", base.Add(time.Duration(i)*time.Millisecond)); d.Wait != 0 {
				t.Fatalf("%s: request %d: Wait %s without queue mode", algo, i, d.Wait)
			}
		}
	}
}

// BenchmarkAllowQueue offers a hot key twice its rate, so requests queue up
// to maxWait and then alternate between a turn and a denial.
func BenchmarkAllowQueue(b *testing.B) {
	for _, algo := range queueAlgos {
		b.Run(algo.String(), func(b *testing.B) {
			s := mustNew(b, queueSpec(algo, 1_000_000, time.Second, 0, 10*time.Millisecond), Options{})
			now := base
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(500 * time.Nanosecond)
				s.Allow("203.0.113.7", now)
			}
		})
	}
}
