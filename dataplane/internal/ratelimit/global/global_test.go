package global

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	tokenBucket   = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET
	gcra          = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA
	slidingWindow = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW
	fixedWindow   = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW
)

func quietOptions() Options {
	return Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// waitWindowStart sleeps, if needed, so that at least 60% of the current
// fixed window (by the Redis clock) remains; a test sending a few requests
// then stays inside one window.
func waitWindowStart(t *testing.T, c redis.UniversalClient, period time.Duration) {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	into := time.Duration(now.UnixMicro()%period.Microseconds()) * time.Microsecond
	if into > period*4/10 {
		time.Sleep(period - into + 10*time.Millisecond)
	}
}

func mustAllow(t *testing.T, l *Limiter, limit Limit, key string) Decision {
	t.Helper()
	d, err := l.Allow(context.Background(), limit, key)
	if err != nil {
		t.Fatalf("Allow(%s, %q): %v", limit.Name, key, err)
	}
	return d
}

func TestAlgorithmsLimitAndRecover(t *testing.T) {
	srv := startRedis(t)
	c := srv.client()
	l := New(c, quietOptions())
	tests := []struct {
		name      string
		limit     Limit
		allowed   int64         // back-to-back requests admitted
		maxRetry  time.Duration // the denied request's RetryAfter is in (0, maxRetry]
		alignment bool
	}{
		{"token bucket default burst", Limit{Algorithm: tokenBucket, Limit: 5, Period: time.Second}, 5, 200 * time.Millisecond, false},
		{"token bucket burst", Limit{Algorithm: tokenBucket, Limit: 1, Period: time.Second, Burst: 3}, 3, time.Second, false},
		{"unspecified is token bucket", Limit{Limit: 4, Period: time.Second}, 4, 250 * time.Millisecond, false},
		{"gcra default burst", Limit{Algorithm: gcra, Limit: 10, Period: time.Second}, 1, 100 * time.Millisecond, false},
		{"gcra burst", Limit{Algorithm: gcra, Limit: 5, Period: time.Second, Burst: 5}, 5, 200 * time.Millisecond, false},
		{"sliding window", Limit{Algorithm: slidingWindow, Limit: 5, Period: 500 * time.Millisecond}, 5, 500 * time.Millisecond, false},
		{"fixed window", Limit{Algorithm: fixedWindow, Limit: 5, Period: 500 * time.Millisecond}, 5, 500 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.limit.Name = strings.ReplaceAll(tt.name, " ", "-")
			if tt.alignment {
				waitWindowStart(t, c, tt.limit.Period)
			}
			for i := range tt.allowed {
				d := mustAllow(t, l, tt.limit, "k")
				want := Decision{Allowed: true, Limit: tt.limit.Limit, Remaining: tt.allowed - 1 - i}
				if d.Allowed != want.Allowed || d.Limit != want.Limit || d.Remaining != want.Remaining || d.RetryAfter != 0 {
					t.Fatalf("request %d: got %+v, want %+v", i, d, want)
				}
				if d.Reset <= 0 || d.Reset > tt.limit.Period*time.Duration(max(tt.allowed, 1)) {
					t.Fatalf("request %d: Reset %s out of range", i, d.Reset)
				}
			}
			d := mustAllow(t, l, tt.limit, "k")
			if d.Allowed || d.Remaining != 0 || d.RetryAfter <= 0 || d.RetryAfter > tt.maxRetry {
				t.Fatalf("request over the limit: got %+v, want denied with RetryAfter in (0, %s]", d, tt.maxRetry)
			}
			other := mustAllow(t, l, tt.limit, "other")
			if !other.Allowed {
				t.Fatalf("another key was denied: %+v", other)
			}
			// Refill / window movement: after RetryAfter a request passes again.
			time.Sleep(d.RetryAfter + 20*time.Millisecond)
			if d := mustAllow(t, l, tt.limit, "k"); !d.Allowed {
				t.Fatalf("after RetryAfter: got %+v, want allowed", d)
			}
		})
	}
}

func TestTwoDataPlanesShareTheLimit(t *testing.T) {
	srv := startRedis(t)
	a := New(srv.client(), quietOptions())
	b := New(srv.client(), quietOptions())
	for _, algo := range []meridianv1.RateLimitAlgorithm{tokenBucket, gcra, slidingWindow, fixedWindow} {
		t.Run(algo.String(), func(t *testing.T) {
			limit := Limit{Name: "shared", Algorithm: algo, Limit: 10, Period: 10 * time.Second, Burst: 10}
			if algo == fixedWindow {
				waitWindowStart(t, srv.client(), limit.Period)
			}
			var allowed int64
			for i := range 30 {
				l := a
				if i%3 == 0 {
					l = b
				}
				if mustAllow(t, l, limit, "consumer-1").Allowed {
					allowed++
				}
			}
			if allowed != limit.Limit {
				t.Fatalf("two limiters admitted %d of 30, want %d", allowed, limit.Limit)
			}
		})
	}
}

func TestNoScriptRecovery(t *testing.T) {
	srv := startRedis(t)
	c := srv.client()
	l := New(c, quietOptions())
	for _, algo := range []meridianv1.RateLimitAlgorithm{tokenBucket, gcra, slidingWindow, fixedWindow} {
		t.Run(algo.String(), func(t *testing.T) {
			limit := Limit{Name: "noscript", Algorithm: algo, Limit: 100, Period: 10 * time.Second, Burst: 100}
			mustAllow(t, l, limit, "k")
			if err := c.ScriptFlush(context.Background()).Err(); err != nil {
				t.Fatalf("SCRIPT FLUSH: %v", err)
			}
			if d := mustAllow(t, l, limit, "k"); !d.Allowed || d.Remaining < 90 {
				t.Fatalf("after SCRIPT FLUSH: got %+v, want allowed with state kept", d)
			}
			// The fallback EVAL loaded the script again, so EVALSHA works.
			exists, err := c.ScriptExists(context.Background(), l.scriptFor(algo).Hash()).Result()
			if err != nil || len(exists) != 1 || !exists[0] {
				t.Fatalf("script not reloaded: %v %v", exists, err)
			}
		})
	}
	if l.Stats().Failures != 0 {
		t.Fatalf("NOSCRIPT counted as a failure: %+v", l.Stats())
	}
}

// blockingHook holds the first script call until released, so a test can
// queue callers behind it deterministically.
type blockingHook struct {
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (h *blockingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *blockingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *blockingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			h.once.Do(func() {
				close(h.entered)
				<-h.release
			})
		}
		return next(ctx, cmd)
	}
}

func TestCoalescing(t *testing.T) {
	const callers = 100
	tests := []struct {
		name  string
		limit Limit
	}{
		{"token bucket", Limit{Algorithm: tokenBucket, Limit: 30, Period: time.Minute}},
		{"gcra", Limit{Algorithm: gcra, Limit: 30, Period: time.Minute, Burst: 30}},
		{"sliding window", Limit{Algorithm: slidingWindow, Limit: 30, Period: time.Minute}},
		{"fixed window", Limit{Algorithm: fixedWindow, Limit: 30, Period: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startRedis(t)
			c := srv.client()
			hook := &blockingHook{entered: make(chan struct{}), release: make(chan struct{})}
			c.AddHook(hook)
			// A generous timeout: the hook holds the first call on purpose.
			l := New(c, Options{Timeout: 10 * time.Second, Logger: quietOptions().Logger})
			tt.limit.Name = "coalesce"

			results := make(chan Decision, callers)
			var wg sync.WaitGroup
			call := func() {
				defer wg.Done()
				d, err := l.Allow(context.Background(), tt.limit, "hot")
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
			for l.Stats().Coalesced < callers-2 { // all but the next batch's leader
				time.Sleep(time.Millisecond)
			}
			close(hook.release)
			wg.Wait()
			close(results)

			var allowed int64
			remaining := map[int64]bool{}
			for d := range results {
				if d.Allowed {
					allowed++
					if remaining[d.Remaining] {
						t.Errorf("Remaining %d given to two allowed requests", d.Remaining)
					}
					remaining[d.Remaining] = true
				} else if d.RetryAfter <= 0 {
					t.Errorf("denied without RetryAfter: %+v", d)
				}
			}
			if allowed != tt.limit.Limit {
				t.Fatalf("admitted %d of %d, want %d", allowed, callers, tt.limit.Limit)
			}
			st := l.Stats()
			if st.ScriptCalls != 2 || st.Decisions != callers {
				t.Fatalf("stats %+v: want 2 script calls for %d decisions", st, callers)
			}
			if got := srv.scriptCalls(); got > 3 { // EVALSHA, maybe a NOSCRIPT fallback EVAL, EVALSHA
				t.Fatalf("Redis ran %d script commands for %d decisions", got, callers)
			}
		})
	}
}

func TestCoalescingUnderLoad(t *testing.T) {
	srv := startRedis(t)
	l := New(srv.client(), Options{Timeout: 5 * time.Second, Logger: quietOptions().Logger})
	limit := Limit{Name: "load", Algorithm: slidingWindow, Limit: 150, Period: time.Minute}
	const callers = 400
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var allowed int64
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d, err := l.Allow(context.Background(), limit, "hot")
			if err != nil {
				t.Errorf("Allow: %v", err)
				return
			}
			if d.Allowed {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if allowed != limit.Limit {
		t.Fatalf("admitted %d, want exactly %d", allowed, limit.Limit)
	}
	st := l.Stats()
	if st.ScriptCalls >= callers/2 {
		t.Fatalf("%d script calls for %d concurrent decisions; want far fewer (%+v)", st.ScriptCalls, callers, st)
	}
	t.Logf("%d concurrent decisions: %d script calls, %d answered locally", callers, st.ScriptCalls, st.LocalDenials)
}

func TestOverLimitAnsweredLocally(t *testing.T) {
	srv := startRedis(t)
	l := New(srv.client(), quietOptions())
	limit := Limit{Name: "local-deny", Algorithm: gcra, Limit: 2, Period: 10 * time.Second, Burst: 2}
	mustAllow(t, l, limit, "k")
	mustAllow(t, l, limit, "k")
	first := mustAllow(t, l, limit, "k")
	if first.Allowed {
		t.Fatalf("third request allowed: %+v", first)
	}
	redisCalls := srv.scriptCalls()
	for i := range 10 {
		d := mustAllow(t, l, limit, "k")
		if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > first.RetryAfter || d.Limit != 2 {
			t.Fatalf("local answer %d: %+v", i, d)
		}
	}
	if got := srv.scriptCalls(); got != redisCalls {
		t.Fatalf("Redis ran %d more scripts for keys known over the limit", got-redisCalls)
	}
	if st := l.Stats(); st.LocalDenials != 10 || st.ScriptCalls != 3 {
		t.Fatalf("stats %+v: want 10 local denials, 3 script calls", st)
	}
	// A changed limit under the same name is not answered from the old denial.
	wider := limit
	wider.Burst = 100
	if d := mustAllow(t, l, wider, "k"); !d.Allowed {
		t.Fatalf("changed limit answered from the old denial: %+v", d)
	}
}

func TestRedisFailureAndRecovery(t *testing.T) {
	srv := startRedis(t)
	l := New(srv.client(), Options{
		Timeout:         50 * time.Millisecond,
		BreakerFailures: 3,
		BreakerCooldown: 100 * time.Millisecond,
		Logger:          quietOptions().Logger,
	})
	limit := Limit{Name: "failure", Algorithm: tokenBucket, Limit: 1000, Period: time.Second}
	mustAllow(t, l, limit, "k")

	// unavailable asserts that Allow fails with ErrUnavailable quickly.
	unavailable := func(t *testing.T) {
		t.Helper()
		begin := time.Now()
		_, err := l.Allow(context.Background(), limit, "k")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Allow: got %v, want ErrUnavailable", err)
		}
		if took := time.Since(begin); took > time.Second {
			t.Fatalf("Allow took %s with Redis down", took)
		}
	}
	// recovers waits until Allow reaches Redis again.
	recovers := func(t *testing.T) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := l.Allow(context.Background(), limit, "k")
			if err == nil {
				break
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Allow: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatal("no recovery after Redis came back")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !l.Available() {
			t.Fatal("breaker still open after a successful call")
		}
	}
	// opens sends failing requests until the breaker opens, then checks that
	// further requests fail without contacting Redis.
	opens := func(t *testing.T, wantOpened uint64) {
		t.Helper()
		for range 3 {
			unavailable(t)
		}
		st := l.Stats()
		if st.BreakerOpened != wantOpened || l.Available() {
			t.Fatalf("breaker not open after 3 failures: %+v", st)
		}
		unavailable(t)
		if after := l.Stats(); after.ScriptCalls != st.ScriptCalls || after.FastFailures == st.FastFailures {
			t.Fatalf("open breaker still called Redis: before %+v after %+v", st, after)
		}
	}

	t.Run("slow", func(t *testing.T) {
		srv.pause()
		opens(t, 1)
		srv.resume()
		recovers(t)
	})
	t.Run("dead", func(t *testing.T) {
		srv.stop()
		opens(t, 2)
		srv.restart()
		recovers(t)
	})
	if st := l.Stats(); st.BreakerClosed != 2 {
		t.Fatalf("stats %+v: want 2 recoveries", st)
	}
}

func TestRedisKey(t *testing.T) {
	long := strings.Repeat("x", 200)
	tests := []struct {
		name  string
		limit Limit
		key   string
		want  string // "" means: hashed, only the tag shape is checked
	}{
		{"plain", Limit{Name: "per-user", Algorithm: gcra}, "alice", "rl:{per-user:alice}:gcra"},
		{"ipv6 key keeps colons", Limit{Name: "ip", Algorithm: fixedWindow}, "::1", "rl:{ip:::1}:fw"},
		{"unspecified algorithm", Limit{Name: "n"}, "k", "rl:{n:k}:tb"},
		{"sliding window", Limit{Name: "n", Algorithm: slidingWindow}, "k", "rl:{n:k}:sw"},
		{"braces hashed", Limit{Name: "n", Algorithm: tokenBucket}, "a}b{c", ""},
		{"long key hashed", Limit{Name: "n", Algorithm: tokenBucket}, long, ""},
		{"colon in name hashed", Limit{Name: "a:b", Algorithm: tokenBucket}, "c", ""},
		{"marker prefix hashed", Limit{Name: "n", Algorithm: tokenBucket}, "h~abc", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedisKey(tt.limit, tt.key)
			if tt.want != "" && got != tt.want {
				t.Fatalf("RedisKey = %q, want %q", got, tt.want)
			}
			open, close := strings.Index(got, "{"), strings.Index(got, "}")
			if !strings.HasPrefix(got, "rl:{") || close < open || strings.Count(got, "{") != 1 || strings.Count(got, "}") != 1 {
				t.Fatalf("RedisKey = %q: want exactly one {hash tag}", got)
			}
			if len(got) > 2*maxTagKeyLen {
				t.Fatalf("RedisKey = %q is too long", got)
			}
		})
	}
	if RedisKey(Limit{Name: "a:b"}, "c") == RedisKey(Limit{Name: "a"}, "b:c") {
		t.Fatal("name/key split is ambiguous")
	}
}

func TestRedisKeyOneSlot(t *testing.T) {
	// Every key a decision touches shares the hash tag, so Redis Cluster maps
	// them to one slot; the sliding window is the script with two keys.
	k := RedisKey(Limit{Name: "n", Algorithm: slidingWindow}, "client{1}")
	tag := func(s string) string {
		open := strings.Index(s, "{")
		return s[open : open+strings.Index(s[open:], "}")+1]
	}
	if tag(k) != tag(k+":seq") {
		t.Fatalf("%q and %q have different hash tags", k, k+":seq")
	}
}

func TestInvalidLimit(t *testing.T) {
	l := New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), quietOptions())
	defer l.client.(*redis.Client).Close()
	tests := []struct {
		name  string
		limit Limit
	}{
		{"no name", Limit{Limit: 1, Period: time.Second}},
		{"zero limit", Limit{Name: "n", Period: time.Second}},
		{"negative limit", Limit{Name: "n", Limit: -1, Period: time.Second}},
		{"huge limit", Limit{Name: "n", Limit: 1 << 40, Period: time.Second}},
		{"zero period", Limit{Name: "n", Limit: 1}},
		{"sub-millisecond period", Limit{Name: "n", Limit: 1, Period: time.Microsecond}},
		{"negative burst", Limit{Name: "n", Limit: 1, Period: time.Second, Burst: -1}},
		{"unknown algorithm", Limit{Name: "n", Limit: 1, Period: time.Second, Algorithm: 99}},
		{"negative max wait", Limit{Name: "n", Limit: 1, Period: time.Second, MaxWait: -time.Second}},
		{"max wait on sliding window", Limit{Name: "n", Limit: 1, Period: time.Second, Algorithm: slidingWindow, MaxWait: time.Second}},
		{"max wait on fixed window", Limit{Name: "n", Limit: 1, Period: time.Second, Algorithm: fixedWindow, MaxWait: time.Second}},
		{"negative batch", Limit{Name: "n", Limit: 10, Period: time.Second, Batch: -1}},
		{"batch above limit", Limit{Name: "n", Limit: 10, Period: time.Second, Batch: 11}},
		{"batch above maximum", Limit{Name: "n", Limit: 5000, Period: time.Second, Batch: MaxBatch + 1}},
		{"batch with max wait", Limit{Name: "n", Limit: 10, Period: time.Second, Batch: 2, MaxWait: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.Allow(context.Background(), tt.limit, "k")
			if !errors.Is(err, ErrInvalidLimit) {
				t.Fatalf("Allow: got %v, want ErrInvalidLimit", err)
			}
		})
	}
	if st := l.Stats(); st.ScriptCalls != 0 {
		t.Fatalf("invalid limits reached Redis: %+v", st)
	}
}

func TestLimitFromSpec(t *testing.T) {
	tests := []struct {
		name    string
		spec    *meridianv1.RateLimitSpec
		want    Limit
		wantErr bool
	}{
		{"gcra", &meridianv1.RateLimitSpec{Algorithm: gcra, Limit: 100, Period: durationpb.New(time.Second), Burst: 10},
			Limit{Name: "r", Algorithm: gcra, Limit: 100, Period: time.Second, Burst: 10}, false},
		{"queue", &meridianv1.RateLimitSpec{Algorithm: tokenBucket, Limit: 10, Period: durationpb.New(time.Second),
			Queue: &meridianv1.RateLimitQueue{MaxWait: durationpb.New(500 * time.Millisecond)}},
			Limit{Name: "r", Algorithm: tokenBucket, Limit: 10, Period: time.Second, MaxWait: 500 * time.Millisecond}, false},
		{"local batch", &meridianv1.RateLimitSpec{Algorithm: slidingWindow, Limit: 100, Period: durationpb.New(time.Second), LocalBatch: 20},
			Limit{Name: "r", Algorithm: slidingWindow, Limit: 100, Period: time.Second, Batch: 20}, false},
		{"local batch of one", &meridianv1.RateLimitSpec{Limit: 100, Period: durationpb.New(time.Second), LocalBatch: 1},
			Limit{Name: "r", Limit: 100, Period: time.Second, Batch: 1}, false},
		{"queue without max wait", &meridianv1.RateLimitSpec{Limit: 10, Period: durationpb.New(time.Second), Queue: &meridianv1.RateLimitQueue{}}, Limit{}, true},
		{"queue on a window", &meridianv1.RateLimitSpec{Algorithm: fixedWindow, Limit: 10, Period: durationpb.New(time.Second),
			Queue: &meridianv1.RateLimitQueue{MaxWait: durationpb.New(time.Second)}}, Limit{}, true},
		{"local batch above limit", &meridianv1.RateLimitSpec{Limit: 10, Period: durationpb.New(time.Second), LocalBatch: 20}, Limit{}, true},
		{"nil spec", nil, Limit{}, true},
		{"no period", &meridianv1.RateLimitSpec{Limit: 1}, Limit{}, true},
		{"zero limit", &meridianv1.RateLimitSpec{Period: durationpb.New(time.Second)}, Limit{}, true},
		{"huge burst", &meridianv1.RateLimitSpec{Limit: 1, Period: durationpb.New(time.Second), Burst: 1 << 40}, Limit{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LimitFromSpec("r", tt.spec)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrInvalidLimit)) {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestQueuedBatchSharesTheTimeout: requests queued behind a call that uses
// up the whole timeout (Redis paused) do not make a call of their own
// afterwards, which would delay them by a second timeout; they fail with
// ErrUnavailable at once, and only the first call reached Redis.
func TestQueuedBatchSharesTheTimeout(t *testing.T) {
	const callers = 20
	srv := startRedis(t)
	c := srv.client()
	hook := &blockingHook{entered: make(chan struct{}), release: make(chan struct{})}
	c.AddHook(hook)
	l := New(c, Options{Timeout: 200 * time.Millisecond, BreakerFailures: 100, Logger: quietOptions().Logger})
	limit := Limit{Name: "budget", Algorithm: tokenBucket, Limit: 1000, Period: time.Second}

	errs := make(chan error, callers)
	var wg sync.WaitGroup
	call := func() {
		defer wg.Done()
		_, err := l.Allow(context.Background(), limit, "hot")
		errs <- err
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
	// The first call is held until its deadline has passed, as a paused
	// Redis would hold it; the queued batch's budget runs out meanwhile.
	time.Sleep(300 * time.Millisecond)
	close(hook.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Allow: got %v, want ErrUnavailable", err)
		}
	}
	if st := l.Stats(); st.ScriptCalls != 1 || st.FastFailures != callers-1 {
		t.Fatalf("stats %+v: want 1 script call and %d requests failed without one", st, callers-1)
	}
}
