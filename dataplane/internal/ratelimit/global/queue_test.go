package global

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// waitSlack absorbs the microsecond rounding of waits computed by the
// scripts and derived for coalesced requests.
const waitSlack = 2 * time.Microsecond

// redisTime returns the Redis clock.
func redisTime(t *testing.T, c redis.UniversalClient) time.Time {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	return now
}

// queueState returns the key's state in token units of debt-free capacity:
// the token bucket's stored tokens, or for GCRA how many intervals of the
// burst tolerance are left (cap - (TAT - now)) / interval, plus the raw value
// so a test can tell whether a call wrote anything.
func queueState(t *testing.T, c redis.UniversalClient, limit Limit, key string) (tokens float64, raw string) {
	t.Helper()
	ctx := context.Background()
	rkey := RedisKey(limit, key)
	if limit.Algorithm == gcra {
		raw, err := c.Get(ctx, rkey).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", rkey, err)
		}
		tat, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			t.Fatalf("parse TAT %q: %v", raw, err)
		}
		interval := float64(limit.Period.Microseconds()) / float64(limit.Limit)
		now := float64(redisTime(t, c).UnixMicro())
		return (float64(limit.Burst)*interval - (tat - now)) / interval, raw
	}
	raw, err := c.HGet(ctx, rkey, "tokens").Result()
	if err != nil {
		t.Fatalf("HGET %s tokens: %v", rkey, err)
	}
	tokens, err = strconv.ParseFloat(raw, 64)
	if err != nil {
		t.Fatalf("parse tokens %q: %v", raw, err)
	}
	return tokens, raw
}

// TestQueueSpacing checks queue mode on both algorithms, one request at a
// time: the burst passes without waiting, then each request reserves the
// next turn one interval after the previous one until the turn would be more
// than MaxWait away; that request is denied and consumes nothing.
//
// Waits are measured by the Redis clock, which keeps running between calls,
// so each wait is checked against the interval minus the time the calls
// could have taken (measured around them), never against a fixed duration.
func TestQueueSpacing(t *testing.T) {
	const interval = 10 * time.Second // period/limit: far above any call latency
	tests := []struct {
		name  string
		limit Limit
	}{
		{"token bucket", Limit{Algorithm: tokenBucket, Limit: 10, Period: 100 * time.Second, Burst: 2, MaxWait: 5 * interval}},
		{"gcra", Limit{Algorithm: gcra, Limit: 10, Period: 100 * time.Second, Burst: 2, MaxWait: 5 * interval}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startRedis(t)
			c := srv.client()
			l := New(c, quietOptions())
			limit := tt.limit
			limit.Name = "queue"
			const queued = 5 // MaxWait / interval

			var starts, ends []time.Time
			var ds []Decision
			for range limit.Burst + queued + 1 {
				starts = append(starts, time.Now())
				ds = append(ds, mustAllow(t, l, limit, "k"))
				ends = append(ends, time.Now())
			}
			for i := range limit.Burst {
				if d := ds[i]; !d.Allowed || d.Wait != 0 || d.Remaining != limit.Burst-1-i {
					t.Fatalf("burst request %d: got %+v, want allowed without waiting, Remaining %d", i, d, limit.Burst-1-i)
				}
			}
			for i := limit.Burst; i < limit.Burst+queued; i++ {
				d := ds[i]
				if !d.Allowed || d.Wait <= 0 || d.Wait > limit.MaxWait || d.Remaining != 0 || d.RetryAfter != 0 {
					t.Fatalf("queued request %d: got %+v, want allowed with Wait in (0, %s]", i, d, limit.MaxWait)
				}
				// The turn is one interval after the previous one (the
				// first queued turn: one interval after the burst), less
				// the Redis time that passed in between.
				prev, elapsed := time.Duration(0), ends[i].Sub(starts[0])
				if i > limit.Burst {
					prev, elapsed = ds[i-1].Wait, ends[i].Sub(starts[i-1])
				}
				gap := d.Wait - prev
				if gap > interval+waitSlack || gap < interval-elapsed-waitSlack {
					t.Fatalf("queued request %d waits %s, %s after the previous turn; want %s less at most %s", i, d.Wait, gap, interval, elapsed)
				}
			}
			denied := ds[len(ds)-1]
			if denied.Allowed || denied.Wait != 0 || denied.RetryAfter <= 0 || denied.RetryAfter > interval {
				t.Fatalf("request past MaxWait: got %+v, want denied with RetryAfter in (0, %s]", denied, interval)
			}

			// The reservations went exactly MaxWait deep.
			tokens, before := queueState(t, c, limit, "k")
			if floor := -float64(queued) - 1e-6; tokens < floor || tokens > -float64(queued)+1 {
				t.Fatalf("state after queueing is %v tokens, want about %d", tokens, -queued)
			}
			// Denials from other data planes (no local cache) consume nothing.
			for i := range 5 {
				other := New(c, quietOptions())
				if d := mustAllow(t, other, limit, "k"); d.Allowed {
					t.Fatalf("denial %d from another limiter: got %+v, want denied", i, d)
				}
			}
			after, raw := queueState(t, c, limit, "k")
			if after < tokens-1e-6 {
				t.Fatalf("denied requests consumed: %v tokens before, %v after", tokens, after)
			}
			if limit.Algorithm == gcra && raw != before {
				t.Fatalf("denied requests moved the TAT from %s to %s", before, raw)
			}

			// The same limiter answers locally until RetryAfter, without
			// contacting Redis.
			calls := l.Stats().ScriptCalls
			if d := mustAllow(t, l, limit, "k"); d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > denied.RetryAfter {
				t.Fatalf("local answer: got %+v, want denied with RetryAfter in (0, %s]", d, denied.RetryAfter)
			}
			if st := l.Stats(); st.ScriptCalls != calls || st.LocalDenials != 1 {
				t.Fatalf("stats %+v: want the denial answered locally", st)
			}
		})
	}
}

// TestQueueTurnAfterRetryAfter checks that a request denied in queue mode is
// given a turn within MaxWait once its RetryAfter has passed.
func TestQueueTurnAfterRetryAfter(t *testing.T) {
	srv := startRedis(t)
	l := New(srv.client(), quietOptions())
	for _, algo := range []Limit{
		{Name: "retry-tb", Algorithm: tokenBucket, Limit: 10, Period: time.Second, Burst: 1, MaxWait: 200 * time.Millisecond},
		{Name: "retry-gcra", Algorithm: gcra, Limit: 10, Period: time.Second, Burst: 1, MaxWait: 200 * time.Millisecond},
	} {
		t.Run(algo.Name, func(t *testing.T) {
			var denied Decision
			for i := range 50 {
				d := mustAllow(t, l, algo, "k")
				if !d.Allowed {
					denied = d
					break
				}
				if d.Wait > algo.MaxWait {
					t.Fatalf("request %d: Wait %s beyond MaxWait %s", i, d.Wait, algo.MaxWait)
				}
			}
			if denied.Allowed || denied.RetryAfter <= 0 || denied.RetryAfter > 100*time.Millisecond {
				t.Fatalf("got %+v, want a denial with RetryAfter in (0, 100ms]", denied)
			}
			time.Sleep(denied.RetryAfter + 5*time.Millisecond)
			if d := mustAllow(t, l, algo, "k"); !d.Allowed || d.Wait > algo.MaxWait {
				t.Fatalf("after RetryAfter: got %+v, want allowed with Wait <= %s", d, algo.MaxWait)
			}
		})
	}
}

// TestQueueCoalescedWaits checks that a batch of queued requests decided by
// one script call gets one turn each, an interval apart.
func TestQueueCoalescedWaits(t *testing.T) {
	const (
		callers  = 10
		interval = 10 * time.Second
		queued   = 5 // MaxWait / interval
	)
	tests := []struct {
		name  string
		limit Limit
	}{
		{"token bucket", Limit{Algorithm: tokenBucket, Limit: 10, Period: 100 * time.Second, Burst: 1, MaxWait: queued * interval}},
		{"gcra", Limit{Algorithm: gcra, Limit: 10, Period: 100 * time.Second, Burst: 1, MaxWait: queued * interval}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startRedis(t)
			c := srv.client()
			hook := &blockingHook{entered: make(chan struct{}), release: make(chan struct{})}
			c.AddHook(hook)
			l := New(c, Options{Timeout: 10 * time.Second, Logger: quietOptions().Logger})
			limit := tt.limit
			limit.Name = "queue-coalesce"

			results := make(chan Decision, callers)
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
			wg.Add(callers - 1)
			for range callers - 1 {
				go call()
			}
			for l.Stats().Coalesced < callers-2 {
				time.Sleep(time.Millisecond)
			}
			close(hook.release)
			wg.Wait()
			close(results)

			var waits []time.Duration
			var denied int
			for d := range results {
				switch {
				case d.Allowed:
					waits = append(waits, d.Wait)
				case d.RetryAfter <= 0 || d.RetryAfter > interval:
					t.Errorf("denied with RetryAfter %s, want in (0, %s]", d.RetryAfter, interval)
				default:
					denied++
				}
			}
			if st := l.Stats(); st.ScriptCalls != 2 {
				t.Fatalf("stats %+v: want 2 script calls", st)
			}
			if len(waits) != 1+queued || denied != callers-1-queued {
				t.Fatalf("allowed %d (waits %v) and denied %d, want %d and %d", len(waits), waits, denied, 1+queued, callers-1-queued)
			}
			slices.Sort(waits)
			if waits[0] != 0 {
				t.Fatalf("the burst request waits %s, want 0", waits[0])
			}
			if waits[1] <= 0 || waits[1] > interval {
				t.Fatalf("first queued wait %s, want in (0, %s]", waits[1], interval)
			}
			// One script call decided the queued requests at one instant of
			// the Redis clock, so their turns are exactly an interval apart.
			for i := 2; i < len(waits); i++ {
				if gap := waits[i] - waits[i-1]; gap < interval-waitSlack || gap > interval+waitSlack {
					t.Fatalf("waits %v: gap %s between turns %d and %d, want %s", waits, gap, i-1, i, interval)
				}
			}
			if last := waits[len(waits)-1]; last > limit.MaxWait {
				t.Fatalf("last wait %s beyond MaxWait %s", last, limit.MaxWait)
			}
		})
	}
}
