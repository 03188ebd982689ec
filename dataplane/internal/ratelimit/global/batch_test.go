package global

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// TestLocalBatchScriptCalls checks that sequential decisions under a local
// batch of N make one script call per N decisions, counted both by the
// Limiter and by Redis itself.
func TestLocalBatchScriptCalls(t *testing.T) {
	const (
		batchSize = 10
		decisions = 100
	)
	srv := startRedis(t)
	l := New(srv.client(), quietOptions())
	for _, algo := range []meridianv1.RateLimitAlgorithm{tokenBucket, gcra, slidingWindow, fixedWindow} {
		t.Run(algo.String(), func(t *testing.T) {
			// An hour-long period keeps reservoirs alive and windows still
			// for the whole run.
			limit := Limit{Name: "batch-calls", Algorithm: algo, Limit: 1000, Period: time.Hour, Burst: 1000, Batch: batchSize}
			if algo == fixedWindow {
				avoidWindowEdge(t, srv.client(), limit.Period)
			}
			before, redisBefore := l.Stats(), srv.scriptCalls()
			for i := range int64(decisions) {
				d := mustAllow(t, l, limit, "k")
				if !d.Allowed || d.Wait != 0 {
					t.Fatalf("decision %d: got %+v, want allowed", i, d)
				}
				// Windows do not refill, so Remaining counts down exactly,
				// reservoir included.
				if (algo == slidingWindow || algo == fixedWindow) && d.Remaining != limit.Limit-1-i {
					t.Fatalf("decision %d: Remaining %d, want %d", i, d.Remaining, limit.Limit-1-i)
				}
			}
			st := l.Stats()
			calls, local := st.ScriptCalls-before.ScriptCalls, st.LocalGrants-before.LocalGrants
			if calls != decisions/batchSize || local != decisions-decisions/batchSize {
				t.Fatalf("%d decisions made %d script calls and %d local grants, want %d and %d",
					decisions, calls, local, decisions/batchSize, decisions-decisions/batchSize)
			}
			// Redis may also see one EVAL after the first EVALSHA's NOSCRIPT.
			if got := srv.scriptCalls() - redisBefore; got < int64(calls) || got > int64(calls)+1 {
				t.Fatalf("Redis ran %d script commands for %d script calls", got, calls)
			}
		})
	}
}

// TestLocalBatchTwoLimitersShareExactly checks that two data planes taking
// batches from one key admit exactly the limit in total when the window does
// not move: Redis counted every token, and every token is spent.
func TestLocalBatchTwoLimitersShareExactly(t *testing.T) {
	srv := startRedis(t)
	a := New(srv.client(), quietOptions())
	b := New(srv.client(), quietOptions())
	for _, algo := range []meridianv1.RateLimitAlgorithm{tokenBucket, gcra, slidingWindow} {
		t.Run(algo.String(), func(t *testing.T) {
			limit := Limit{Name: "batch-shared", Algorithm: algo, Limit: 30, Period: time.Hour, Burst: 30, Batch: 7}
			var allowed int64
			for i := range 100 {
				l := a
				if i%2 == 1 {
					l = b
				}
				if mustAllow(t, l, limit, "k").Allowed {
					allowed++
				}
			}
			if allowed != limit.Limit {
				t.Fatalf("two limiters admitted %d, want exactly %d", allowed, limit.Limit)
			}
		})
	}
}

// TestLocalBatchPartialGrant checks the end of the quota: a call granting
// fewer tokens than asked still serves its request, and only a call granting
// none is a denial, remembered locally.
func TestLocalBatchPartialGrant(t *testing.T) {
	srv := startRedis(t)
	l := New(srv.client(), quietOptions())
	limit := Limit{Name: "batch-partial", Algorithm: slidingWindow, Limit: 10, Period: time.Hour, Batch: 4}
	var allowed int64
	for range 15 {
		if mustAllow(t, l, limit, "k").Allowed {
			allowed++
		}
	}
	// Calls grant 4, 4, 2 and then 0; the four denials after the first are
	// answered locally.
	st := l.Stats()
	if allowed != limit.Limit || st.ScriptCalls != 4 || st.LocalGrants != 7 || st.LocalDenials != 4 {
		t.Fatalf("admitted %d with stats %+v; want %d admitted, 4 script calls, 7 local grants, 4 local denials", allowed, st, limit.Limit)
	}
}

// TestLocalBatchWindowBound checks the overshoot bound of one data plane on
// a fixed window: tokens fetched at the end of one window and spent in the
// next add at most Batch-1 admissions to that window.
func TestLocalBatchWindowBound(t *testing.T) {
	srv := startRedis(t)
	c := srv.client()
	l := New(c, quietOptions())
	const period = 2 * time.Second
	limit := Limit{Name: "batch-bound", Algorithm: fixedWindow, Limit: 10, Period: period, Batch: 5}
	window := func() int64 { return redisTime(t, c).UnixMicro() / period.Microseconds() }
	into := func() time.Duration {
		return time.Duration(redisTime(t, c).UnixMicro()%period.Microseconds()) * time.Microsecond
	}

	// The scenario needs three steps to land in the right windows; a loaded
	// machine may push one over an edge, so it is retried with a fresh key.
	for attempt := range 3 {
		key := fmt.Sprintf("k%d", attempt)
		// Fetch a batch late in a window: one request, Batch-1 kept.
		switch in := into(); {
		case in < period*65/100:
			time.Sleep(period*65/100 - in)
		case in > period*85/100:
			time.Sleep(period - in + period*65/100)
		}
		first := window()
		if d := mustAllow(t, l, limit, key); !d.Allowed {
			t.Fatalf("first request denied: %+v", d)
		}
		if window() != first {
			continue
		}
		// Spend everything in the next window.
		time.Sleep(period - into() + 10*time.Millisecond)
		next := window()
		if next != first+1 {
			continue
		}
		var admitted int64
		for range 3 * limit.Limit {
			if mustAllow(t, l, limit, key).Allowed {
				admitted++
			}
		}
		if window() != next {
			continue
		}
		if admitted > limit.Limit+limit.Batch-1 || admitted < limit.Limit {
			t.Fatalf("one window admitted %d, want between %d and %d", admitted, limit.Limit, limit.Limit+limit.Batch-1)
		}
		t.Logf("one window admitted %d (limit %d, batch %d); stats %+v", admitted, limit.Limit, limit.Batch, l.Stats())
		return
	}
	t.Fatal("the scenario never fitted in two consecutive windows")
}

// TestLocalBatchExpiry checks that reservoir tokens die one Period after
// their call was sent: the next decision goes to Redis again.
func TestLocalBatchExpiry(t *testing.T) {
	srv := startRedis(t)
	l := New(srv.client(), quietOptions())
	limit := Limit{Name: "batch-expiry", Algorithm: slidingWindow, Limit: 100, Period: 200 * time.Millisecond, Batch: 10}
	if d := mustAllow(t, l, limit, "k"); !d.Allowed {
		t.Fatalf("first request denied: %+v", d)
	}
	time.Sleep(limit.Period + 20*time.Millisecond)
	if d := mustAllow(t, l, limit, "k"); !d.Allowed {
		t.Fatalf("request after expiry denied: %+v", d)
	}
	if st := l.Stats(); st.ScriptCalls != 2 || st.LocalGrants != 0 || st.DroppedTokens != uint64(limit.Batch-1) {
		t.Fatalf("stats %+v: want 2 script calls, no local grants, %d dropped tokens", st, limit.Batch-1)
	}
}

// TestLocalBatchServesQueuedCallers checks that callers queued behind a call
// are served from its surplus before anything is kept, and that only the
// part the surplus does not cover makes a new call.
func TestLocalBatchServesQueuedCallers(t *testing.T) {
	tests := []struct {
		name       string
		batch      int64
		queued     int64 // callers queued behind the first call
		wantCalls  uint64
		wantLocal  uint64
		wantKept   int64 // tokens left in the reservoir afterwards
		wantRemain int64 // Remaining of the last caller served, the smallest
	}{
		{"surplus covers the queue", 10, 4, 1, 4, 5, 95},
		{"surplus covers part of the queue", 3, 5, 2, 2, 0, 94},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startRedis(t)
			c := srv.client()
			hook := &blockingHook{entered: make(chan struct{}), release: make(chan struct{})}
			c.AddHook(hook)
			l := New(c, Options{Timeout: 10 * time.Second, Logger: quietOptions().Logger})
			limit := Limit{Name: "batch-queue", Algorithm: slidingWindow, Limit: 100, Period: time.Hour, Batch: tt.batch}

			results := make(chan Decision, 1+tt.queued)
			var wg sync.WaitGroup
			call := func() {
				defer wg.Done()
				d, err := l.Allow(context.Background(), limit, "hot")
				if err != nil {
					t.Errorf("Allow: %v", err)
					return
				}
				results <- d
			}
			wg.Add(1)
			go call()
			<-hook.entered
			wg.Add(int(tt.queued))
			for range tt.queued {
				go call()
			}
			for l.Stats().Coalesced < uint64(tt.queued-1) {
				time.Sleep(time.Millisecond)
			}
			close(hook.release)
			wg.Wait()
			close(results)

			seen := map[int64]bool{}
			minRemain := limit.Limit
			for d := range results {
				if !d.Allowed {
					t.Fatalf("caller denied: %+v", d)
				}
				if seen[d.Remaining] {
					t.Errorf("Remaining %d given to two callers", d.Remaining)
				}
				seen[d.Remaining] = true
				minRemain = min(minRemain, d.Remaining)
			}
			st := l.Stats()
			if st.ScriptCalls != tt.wantCalls || st.LocalGrants != tt.wantLocal {
				t.Fatalf("stats %+v: want %d script calls, %d local grants", st, tt.wantCalls, tt.wantLocal)
			}
			if minRemain != tt.wantRemain {
				t.Fatalf("smallest Remaining %d, want %d", minRemain, tt.wantRemain)
			}
			var kept int64
			if r, ok := l.reserve[RedisKey(limit, "hot")]; ok {
				kept = r.tokens
			}
			if kept != tt.wantKept {
				t.Fatalf("reservoir holds %d tokens, want %d", kept, tt.wantKept)
			}
			// The kept tokens are spent locally, then Redis is asked again.
			for range kept {
				mustAllow(t, l, limit, "hot")
			}
			if got := l.Stats().ScriptCalls; got != tt.wantCalls {
				t.Fatalf("spending the reservoir made %d script calls, want %d", got-tt.wantCalls, 0)
			}
			mustAllow(t, l, limit, "hot")
			if got := l.Stats().ScriptCalls; got != tt.wantCalls+1 {
				t.Fatalf("%d script calls after the reservoir ran dry, want %d", got, tt.wantCalls+1)
			}
		})
	}
}

// TestLocalBatchReservoirBounded checks that the reservoir map stays within
// MaxReservoirEntries: a surplus finding no room is dropped.
func TestLocalBatchReservoirBounded(t *testing.T) {
	srv := startRedis(t)
	opts := quietOptions()
	opts.MaxReservoirEntries = 2
	l := New(srv.client(), opts)
	limit := Limit{Name: "batch-bounded", Algorithm: tokenBucket, Limit: 100, Period: time.Hour, Batch: 5}
	for _, key := range []string{"a", "b", "c"} {
		mustAllow(t, l, limit, key)
	}
	if n := len(l.reserve); n != 2 {
		t.Fatalf("%d reservoirs, want 2", n)
	}
	if st := l.Stats(); st.ScriptCalls != 3 || st.DroppedTokens != uint64(limit.Batch-1) {
		t.Fatalf("stats %+v: want 3 script calls and %d dropped tokens", st, limit.Batch-1)
	}
	mustAllow(t, l, limit, "a") // kept: local
	mustAllow(t, l, limit, "c") // dropped: Redis again
	if st := l.Stats(); st.ScriptCalls != 4 || st.LocalGrants != 1 {
		t.Fatalf("stats %+v: want 4 script calls and 1 local grant", st)
	}
}
