// Package global enforces rate limits shared by every data plane through
// Redis: each algorithm is a Lua script run atomically on Redis, timed by the
// Redis clock, with its keys in one hash slot so it runs on Redis Cluster.
//
// A Limiter keeps Redis traffic low by coalescing concurrent decisions for one
// key into a single script call and by answering keys it knows to be over the
// limit locally until their RetryAfter passes. A breaker in front of Redis
// turns a dead or slow Redis into a fast ErrUnavailable, on which the caller
// applies its onStoreFailure policy.
package global

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// ErrUnavailable is returned (wrapped) by Allow when Redis cannot decide: the
// call failed or timed out, or the breaker is open. The caller applies the
// limit's onStoreFailure policy.
var ErrUnavailable = errors.New("rate limit store unavailable")

// ErrInvalidLimit is returned (wrapped) by Allow for a Limit it cannot enforce.
var ErrInvalidLimit = errors.New("invalid rate limit")

// Defaults for Options fields left zero.
const (
	DefaultTimeout          = 50 * time.Millisecond
	DefaultBreakerFailures  = 3
	DefaultBreakerCooldown  = time.Second
	DefaultMaxDeniedEntries = 100_000
)

// maxTagKeyLen bounds the user key kept verbatim in a Redis key; longer keys
// (e.g. a long header value) are hashed so Redis keys stay small.
const maxTagKeyLen = 128

// Limit is one rate limit as the global scope enforces it.
type Limit struct {
	// Name identifies the RateLimit resource; it is part of every Redis key,
	// so two limits never share counters.
	Name string
	// Algorithm picks the arithmetic; unspecified means token bucket.
	Algorithm meridianv1.RateLimitAlgorithm
	// Limit is the number of requests per Period.
	Limit int64
	// Period is the window (fixed and sliding window) or refill period.
	Period time.Duration
	// Burst is the token bucket capacity (0 means Limit) or the number of
	// back-to-back requests GCRA admits (0 means 1). Windows ignore it.
	Burst int64
}

// LimitFromSpec builds the Limit for the RateLimit resource name.
func LimitFromSpec(name string, spec *meridianv1.RateLimitSpec) (Limit, error) {
	if spec == nil {
		return Limit{}, fmt.Errorf("%w: spec is missing", ErrInvalidLimit)
	}
	if spec.GetLimit() > math.MaxInt32 || spec.GetBurst() > math.MaxInt32 {
		return Limit{}, fmt.Errorf("%w: limit or burst is too large", ErrInvalidLimit)
	}
	if spec.GetPeriod() == nil {
		return Limit{}, fmt.Errorf("%w: period is missing", ErrInvalidLimit)
	}
	l := Limit{
		Name:      name,
		Algorithm: spec.GetAlgorithm(),
		Limit:     int64(spec.GetLimit()),
		Period:    spec.GetPeriod().AsDuration(),
		Burst:     int64(spec.GetBurst()),
	}
	if _, err := l.normalize(); err != nil {
		return Limit{}, err
	}
	return l, nil
}

// normalize validates l and fills its defaults.
func (l Limit) normalize() (Limit, error) {
	switch {
	case l.Name == "":
		return l, fmt.Errorf("%w: name is empty", ErrInvalidLimit)
	case l.Limit <= 0 || l.Limit > math.MaxInt32:
		return l, fmt.Errorf("%w: limit %d must be in 1..%d", ErrInvalidLimit, l.Limit, math.MaxInt32)
	case l.Period < time.Millisecond:
		return l, fmt.Errorf("%w: period %s must be at least 1ms", ErrInvalidLimit, l.Period)
	case l.Burst < 0 || l.Burst > math.MaxInt32:
		return l, fmt.Errorf("%w: burst %d must be in 0..%d", ErrInvalidLimit, l.Burst, math.MaxInt32)
	}
	switch l.Algorithm {
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_UNSPECIFIED:
		l.Algorithm = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET
		fallthrough
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET:
		if l.Burst == 0 {
			l.Burst = l.Limit
		}
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		if l.Burst == 0 {
			l.Burst = 1
		}
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW,
		meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW:
	default:
		return l, fmt.Errorf("%w: unknown algorithm %d", ErrInvalidLimit, int32(l.Algorithm))
	}
	return l, nil
}

// Decision is the outcome of one Allow call; it mirrors the local scope's
// decision so the gateway can swap scopes.
type Decision struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Limit is the policy quota per period (RateLimit-Policy "q").
	Limit int64
	// Remaining is how many more requests would be allowed right now
	// (RateLimit "r"); never negative.
	Remaining int64
	// RetryAfter is how long until a denied request could succeed; 0 when
	// Allowed.
	RetryAfter time.Duration
	// Reset is how long until the key's quota is fully restored
	// (RateLimit "t").
	Reset time.Duration
}

// Options tunes a Limiter; zero fields take the defaults above.
type Options struct {
	// Timeout bounds each script call, including waiting for a connection.
	Timeout time.Duration
	// BreakerFailures is how many consecutive failed calls open the breaker.
	BreakerFailures int
	// BreakerCooldown is how long the open breaker fails fast before one
	// probe call is let through.
	BreakerCooldown time.Duration
	// MaxDeniedEntries caps the over-limit keys remembered for local answers;
	// when full, further denials simply go to Redis again.
	MaxDeniedEntries int
	// Logger receives breaker switches; nil means slog.Default().
	Logger *slog.Logger
}

// Stats are cumulative counters of a Limiter.
type Stats struct {
	// Decisions is the number of Allow calls that returned a Decision.
	Decisions uint64
	// ScriptCalls is the number of script calls sent to Redis.
	ScriptCalls uint64
	// Coalesced is the number of decisions that rode on another caller's
	// script call instead of making their own.
	Coalesced uint64
	// LocalDenials is the number of decisions answered locally because the
	// key was known to be over the limit.
	LocalDenials uint64
	// Failures is the number of script calls that failed or timed out.
	Failures uint64
	// FastFailures is the number of Allow calls refused by the open breaker
	// without contacting Redis.
	FastFailures uint64
	// BreakerOpened counts switches from global counting to unavailable.
	BreakerOpened uint64
	// BreakerClosed counts automatic recoveries to global counting.
	BreakerClosed uint64
}

// Limiter decides requests against limits shared through Redis. It is safe
// for concurrent use and starts no goroutines.
type Limiter struct {
	client  redis.Scripter
	scripts scripts
	timeout time.Duration
	maxDeny int
	log     *slog.Logger
	brk     breaker

	mu       sync.Mutex
	inflight map[string]*slot  // Redis key -> call in flight
	denied   map[string]denial // Redis key -> known over the limit

	decisions, scriptCalls, coalesced, localDenials atomic.Uint64
	failures, fastFailures, opened, closed          atomic.Uint64
}

// slot tracks the script call in flight for one key and the batch of callers
// queued behind it.
type slot struct {
	next *batch
}

// batch is a group of concurrent requests for one key decided by a single
// script call: the first granted of n are allowed, the rest denied.
type batch struct {
	n     int64
	start chan struct{} // closed when the batch may run (the previous call ended)
	done  chan struct{} // closed when res and err are set
	res   result
	err   error
}

// result is a script's answer.
type result struct {
	granted, remaining int64
	retryAfter, reset  time.Duration
}

// denial remembers a key that is over the limit until its RetryAfter passes.
type denial struct {
	limit Limit
	until time.Time
	reset time.Time
}

// New returns a Limiter using client. For timeouts to hold, the client must
// honour context deadlines (ContextTimeoutEnabled); NewClient does that.
func New(client redis.UniversalClient, opts Options) *Limiter {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.BreakerFailures <= 0 {
		opts.BreakerFailures = DefaultBreakerFailures
	}
	if opts.BreakerCooldown <= 0 {
		opts.BreakerCooldown = DefaultBreakerCooldown
	}
	if opts.MaxDeniedEntries <= 0 {
		opts.MaxDeniedEntries = DefaultMaxDeniedEntries
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Limiter{
		client:   client,
		scripts:  newScripts(),
		timeout:  opts.Timeout,
		maxDeny:  opts.MaxDeniedEntries,
		log:      opts.Logger,
		brk:      breaker{threshold: opts.BreakerFailures, cooldown: opts.BreakerCooldown},
		inflight: make(map[string]*slot),
		denied:   make(map[string]denial),
	}
}

// NewClient returns a go-redis universal client for opts (one address:
// standalone; MasterName set: Sentinel; several addresses or IsClusterMode:
// Cluster) that honours context deadlines, so Options.Timeout bounds every
// call. opts is not modified.
func NewClient(opts *redis.UniversalOptions) redis.UniversalClient {
	o := *opts
	o.ContextTimeoutEnabled = true
	return redis.NewUniversalClient(&o)
}

// Stats returns the Limiter's counters.
func (l *Limiter) Stats() Stats {
	return Stats{
		Decisions:     l.decisions.Load(),
		ScriptCalls:   l.scriptCalls.Load(),
		Coalesced:     l.coalesced.Load(),
		LocalDenials:  l.localDenials.Load(),
		Failures:      l.failures.Load(),
		FastFailures:  l.fastFailures.Load(),
		BreakerOpened: l.opened.Load(),
		BreakerClosed: l.closed.Load(),
	}
}

// Available reports whether the breaker lets calls through to Redis.
func (l *Limiter) Available() bool {
	return !l.brk.isOpen()
}

// Allow decides one request for key under limit. It returns an error wrapping
// ErrUnavailable when Redis cannot decide, ErrInvalidLimit for a bad limit,
// or ctx's error when ctx ends first.
//
// Concurrent calls for the same key share script calls: while one call is in
// flight, later callers queue into one batch that the next call decides at
// once. A caller whose ctx ends while queued still holds its place in the
// batch, so it may consume a request it does not use.
func (l *Limiter) Allow(ctx context.Context, limit Limit, key string) (Decision, error) {
	limit, err := limit.normalize()
	if err != nil {
		return Decision{}, err
	}
	rkey := RedisKey(limit, key)
	now := time.Now()

	l.mu.Lock()
	if d, ok := l.denied[rkey]; ok {
		if d.limit == limit && now.Before(d.until) {
			l.mu.Unlock()
			l.localDenials.Add(1)
			l.decisions.Add(1)
			return Decision{
				Allowed:    false,
				Limit:      limit.Limit,
				RetryAfter: d.until.Sub(now),
				Reset:      max(d.reset.Sub(now), 0),
			}, nil
		}
		delete(l.denied, rkey)
	}
	s, busy := l.inflight[rkey]
	if !busy {
		// Nothing in flight: run a batch of one right away.
		s = &slot{}
		l.inflight[rkey] = s
		b := &batch{n: 1, done: make(chan struct{})}
		l.mu.Unlock()
		l.run(limit, rkey, b)
		return l.decide(limit, rkey, b, 0)
	}
	b := s.next
	leader := b == nil
	if leader {
		b = &batch{start: make(chan struct{}), done: make(chan struct{})}
		s.next = b
	}
	idx := b.n
	b.n++
	l.mu.Unlock()

	if leader {
		// The leader must run the batch even if its own ctx ends, or the
		// others would wait forever; the call is bounded by the timeout.
		<-b.start
		l.run(limit, rkey, b)
		return l.decide(limit, rkey, b, idx)
	}
	l.coalesced.Add(1)
	select {
	case <-b.done:
		return l.decide(limit, rkey, b, idx)
	case <-ctx.Done():
		return Decision{}, ctx.Err()
	}
}

// run makes the script call for b, publishes its result and hands the key to
// the batch queued behind it, if any.
func (l *Limiter) run(limit Limit, rkey string, b *batch) {
	b.res, b.err = l.call(limit, rkey, b.n)
	close(b.done)

	l.mu.Lock()
	defer l.mu.Unlock()
	if b.err == nil && b.res.granted < b.n && b.res.retryAfter > 0 {
		l.rememberDenial(limit, rkey, b.res)
	}
	s := l.inflight[rkey]
	if s.next == nil {
		delete(l.inflight, rkey)
		return
	}
	next := s.next
	s.next = nil
	close(next.start)
}

// decide turns request idx of batch b into a Decision.
func (l *Limiter) decide(limit Limit, rkey string, b *batch, idx int64) (Decision, error) {
	if b.err != nil {
		return Decision{}, b.err
	}
	l.decisions.Add(1)
	d := Decision{Limit: limit.Limit, Reset: b.res.reset}
	if idx < b.res.granted {
		d.Allowed = true
		// Later requests of the batch took tokens after this one did.
		d.Remaining = b.res.remaining + (b.res.granted - 1 - idx)
		return d, nil
	}
	d.RetryAfter = b.res.retryAfter
	return d, nil
}

// rememberDenial records that rkey is over the limit until res.retryAfter
// passes; the caller holds l.mu.
func (l *Limiter) rememberDenial(limit Limit, rkey string, res result) {
	now := time.Now()
	if len(l.denied) >= l.maxDeny {
		for k, d := range l.denied {
			if !now.Before(d.until) {
				delete(l.denied, k)
			}
		}
		if len(l.denied) >= l.maxDeny {
			return
		}
	}
	l.denied[rkey] = denial{limit: limit, until: now.Add(res.retryAfter), reset: now.Add(res.reset)}
}

// call runs limit's script for n requests on rkey, behind the breaker and
// bounded by the timeout.
func (l *Limiter) call(limit Limit, rkey string, n int64) (result, error) {
	if !l.brk.acquire(time.Now()) {
		l.fastFailures.Add(uint64(n))
		return result{}, fmt.Errorf("%w: breaker open", ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	l.scriptCalls.Add(1)
	res, err := l.eval(ctx, limit, rkey, n)
	if err != nil {
		l.failures.Add(1)
		if l.brk.failure(time.Now()) {
			l.opened.Add(1)
			l.log.Warn("global rate limiting unavailable, Redis failing", "failures", l.brk.threshold, "error", err)
		}
		return result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if l.brk.success() {
		l.closed.Add(1)
		l.log.Info("global rate limiting recovered, Redis reachable")
	}
	return res, nil
}

// scriptFor returns the script deciding algo.
func (l *Limiter) scriptFor(algo meridianv1.RateLimitAlgorithm) *redis.Script {
	switch algo {
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		return l.scripts.gcra
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW:
		return l.scripts.slidingWindow
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW:
		return l.scripts.fixedWindow
	default:
		return l.scripts.tokenBucket
	}
}

// eval runs the script and parses its reply.
func (l *Limiter) eval(ctx context.Context, limit Limit, rkey string, n int64) (result, error) {
	periodUS := limit.Period.Microseconds()
	keys := []string{rkey}
	var args []any
	switch limit.Algorithm {
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET:
		args = []any{limit.Limit, periodUS, limit.Burst, n}
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		interval := float64(periodUS) / float64(limit.Limit)
		args = []any{fmt.Sprintf("%.6f", interval), limit.Burst, n}
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW:
		keys = append(keys, rkey+":seq")
		args = []any{limit.Limit, periodUS, n}
	default: // fixed window; normalize rejected anything else
		args = []any{limit.Limit, periodUS, n}
	}
	cmd := l.scriptFor(limit.Algorithm).Run(ctx, l.client, keys, args...)
	vals, err := cmd.Int64Slice()
	if err != nil {
		return result{}, err
	}
	if len(vals) != 4 {
		return result{}, fmt.Errorf("script reply has %d values, want 4", len(vals))
	}
	return result{
		granted:    vals[0],
		remaining:  max(vals[1], 0),
		retryAfter: time.Duration(vals[2]) * time.Microsecond,
		reset:      time.Duration(vals[3]) * time.Microsecond,
	}, nil
}

// RedisKey returns the Redis key holding limit's state for key. Everything
// identifying the decision sits in one {hash tag}, so every key a script
// touches (the sliding window adds "<key>:seq") maps to one Cluster slot. A
// key that is long or contains braces is replaced by its SHA-256 so the tag
// stays short and well formed; keys that merely look hashed are hashed too,
// so a crafted key cannot share another key's counters.
func RedisKey(limit Limit, key string) string {
	// The name never holds ':' verbatim, so the first ':' separates it from
	// the key unambiguously.
	return "rl:{" + tagPart(limit.Name, "{}:") + ":" + tagPart(key, "{}") + "}:" + algoSuffix(limit.Algorithm)
}

// tagPart returns s, or its hash when s is long, holds any of bad or looks
// hashed already.
func tagPart(s, bad string) string {
	const marker = "h~"
	if len(s) <= maxTagKeyLen && !strings.ContainsAny(s, bad) && !strings.HasPrefix(s, marker) {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return marker + hex.EncodeToString(sum[:16])
}

func algoSuffix(a meridianv1.RateLimitAlgorithm) string {
	switch a {
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		return "gcra"
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW:
		return "sw"
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW:
		return "fw"
	default:
		return "tb"
	}
}
