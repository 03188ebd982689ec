// Package global enforces rate limits shared by every data plane through
// Redis: each algorithm is a Lua script run atomically on Redis, timed by the
// Redis clock, with its keys in one hash slot so it runs on Redis Cluster.
//
// A Limiter keeps Redis traffic low by coalescing concurrent decisions for one
// key into a single script call and by answering keys it knows to be over the
// limit locally until their RetryAfter passes. A breaker in front of Redis
// turns a dead or slow Redis into a fast ErrUnavailable, on which the caller
// applies its onStoreFailure policy.
//
// # Queue mode
//
// A token bucket or GCRA Limit with MaxWait > 0 shapes traffic instead of
// rejecting it, like the local scope's queue mode. A request over the rate
// reserves the next free turn inside the script, so the Redis clock alone
// decides: the token bucket may go down to -MaxWait/interval tokens and GCRA
// lets its theoretical arrival time run up to MaxWait past the burst
// tolerance (interval = Period/Limit). A request whose turn is at most
// MaxWait away is Allowed with Decision.Wait set to how long the caller must
// wait before proceeding; once the burst is spent, turns are evenly spaced
// one interval apart, coalesced requests included. Wait is measured from the
// moment Redis decided, so a caller that waits Wait after Allow returns is
// never early. A request whose turn would be more than MaxWait away is denied
// and consumes nothing; its RetryAfter is the time until a request would get
// a turn within MaxWait. Since only time can bring that turn closer, the
// local denial cache stays correct in queue mode. A reservation is not
// returned when the caller gives up waiting.
//
// # Local batches
//
// With Limit.Batch = N > 1 a Limiter trades exactness for fewer Redis calls.
// When a key has no local tokens, one script call asks Redis for
// max(N, demand) tokens, demand being the requests waiting for that call;
// the tokens granted beyond the demand first serve the requests queued
// behind the call and then form the key's reservoir, which later requests on
// this Limiter spend without Redis. A Limiter asks again only once the
// reservoir is empty, so it never holds more than N-1 unspent tokens of a key,
// counting those of a call in flight. Reservoir tokens expire one Period after
// the call that fetched them was sent.
//
// Redis counts every token when it grants it, so nothing is admitted that
// Redis did not grant; batching only moves admissions later in time. Counting
// a request as admitted when it is decided (by the script, or locally when a
// reservoir token is spent), the requests admitted for a key in any interval
// exceed what Redis granted in that interval by at most D*(N-1), D being the
// number of data planes: a sliding window admits at most Limit + D*(N-1)
// requests in any Period, a fixed window at most Limit + D*(N-1) in each of
// its windows, and a token bucket or GCRA at most D*(N-1) more than its
// exact-mode bound over any interval. Every such extra admission uses a
// token Redis granted less than one Period earlier. The same expiry bounds
// the shortfall: each data plane lets at most N-1 tokens of a key expire
// unspent per Period (it fetches again only after its reservoir is spent or
// expired), so expired tokens take at most D*(N-1) per Period from the
// quota, which matters when a data plane sees fewer than N requests of a key
// per Period. A surplus that finds the reservoir map full
// (Options.MaxReservoirEntries) is dropped as well. Stats.DroppedTokens
// counts both.
//
// The lifetime is one Period rather than the N*Period/Limit it takes the
// full rate to spend N tokens: each data plane sees only its share of the
// rate, and the shorter lifetime would let most of every batch expire, so
// that Redis would count tokens nobody used and deny real requests.
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
	DefaultTimeout             = 50 * time.Millisecond
	DefaultBreakerFailures     = 3
	DefaultBreakerCooldown     = time.Second
	DefaultMaxDeniedEntries    = 100_000
	DefaultMaxReservoirEntries = 100_000
)

// MaxBatch is the largest Limit.Batch accepted: one script call grants at
// most this many tokens, which keeps the sliding window's log writes small.
const MaxBatch = 1000

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
	// MaxWait > 0 turns on queue mode (token bucket and GCRA only): a
	// request over the rate is allowed with a Wait of up to MaxWait instead
	// of being denied. See the package documentation.
	MaxWait time.Duration
	// Batch is the number of tokens a Limiter takes from Redis per call and
	// spends locally (local batches, up to MaxBatch and at most Limit); 0 or
	// 1 means every decision goes to Redis. It cannot be combined with
	// MaxWait. See the package documentation for the overshoot it allows.
	Batch int64
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
		Batch:     int64(spec.GetLocalBatch()),
	}
	if q := spec.GetQueue(); q != nil {
		l.MaxWait = q.GetMaxWait().AsDuration()
		if l.MaxWait <= 0 {
			return Limit{}, fmt.Errorf("%w: queue.maxWait must be positive", ErrInvalidLimit)
		}
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
	case l.MaxWait < 0:
		return l, fmt.Errorf("%w: maxWait %s must not be negative", ErrInvalidLimit, l.MaxWait)
	case l.Batch < 0 || l.Batch > MaxBatch || l.Batch > l.Limit:
		return l, fmt.Errorf("%w: batch %d must be in 0..%d and at most the limit", ErrInvalidLimit, l.Batch, MaxBatch)
	case l.MaxWait > 0 && l.Batch > 1:
		return l, fmt.Errorf("%w: batch cannot be combined with maxWait", ErrInvalidLimit)
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
		if l.MaxWait > 0 {
			return l, fmt.Errorf("%w: maxWait needs token bucket or GCRA", ErrInvalidLimit)
		}
	default:
		return l, fmt.Errorf("%w: unknown algorithm %d", ErrInvalidLimit, int32(l.Algorithm))
	}
	return l, nil
}

// Decision is the outcome of one Allow call; it mirrors the local scope's
// decision so the gateway can swap scopes.
type Decision struct {
	// Allowed reports whether the request may proceed (after Wait).
	Allowed bool
	// Wait is, when Allowed in queue mode, how long the caller must wait
	// before proceeding, measured from Redis's decision; 0 otherwise.
	Wait time.Duration
	// Limit is the policy quota per period (RateLimit-Policy "q").
	Limit int64
	// Remaining is how many more requests would be allowed right now
	// without waiting (RateLimit "r"); never negative. With local batches it
	// counts this Limiter's unspent tokens plus what Redis had left when it
	// last granted some.
	Remaining int64
	// RetryAfter is how long until a denied request could succeed; 0 when
	// Allowed.
	RetryAfter time.Duration
	// Reset is how long until the key's quota is fully restored
	// (RateLimit "t"), queued reservations included.
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
	// MaxReservoirEntries caps the keys holding local-batch tokens; when
	// full (after dropping expired reservoirs), the surplus of a call is
	// dropped unspent, which errs on the side of admitting less.
	MaxReservoirEntries int
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
	// LocalGrants is the number of decisions allowed on local-batch tokens
	// fetched by an earlier script call.
	LocalGrants uint64
	// DroppedTokens is the number of local-batch tokens that expired, or
	// found no room in the reservoir map, before being spent.
	DroppedTokens uint64
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
	maxKeep int
	log     *slog.Logger
	brk     breaker

	mu       sync.Mutex
	inflight map[string]*slot      // Redis key -> call in flight
	denied   map[string]denial     // Redis key -> known over the limit
	reserve  map[string]*reservoir // Redis key -> unspent local-batch tokens

	decisions, scriptCalls, coalesced, localDenials atomic.Uint64
	localGrants, droppedTokens                      atomic.Uint64
	failures, fastFailures, opened, closed          atomic.Uint64
}

// slot tracks the script call in flight for one key and the batch of callers
// queued behind it.
type slot struct {
	next *batch
}

// batch is a group of concurrent requests for one key decided together: the
// first local requests take tokens left over by the previous call, the rest
// go to a single script call that grants the first res.granted of them.
type batch struct {
	n      int64
	local  int64         // leading requests already granted from a surplus
	served bool          // local == n: no script call needed
	start  chan struct{} // closed when the batch may run (the previous call ended)
	done   chan struct{} // closed when res and err are set
	res    result
	err    error
	// deadline is the Timeout counted from when the batch's first request
	// arrived: waiting behind another call spends the same budget as the
	// batch's own call, so no request waits much past one Timeout.
	deadline time.Time
}

// result is a script's answer.
type result struct {
	granted, remaining int64 // remaining may be negative in queue mode
	retryAfter, reset  time.Duration
	// firstWait is the queue-mode wait of the first request the call
	// granted (negative while tokens are left); each later one waits one
	// interval more.
	firstWait time.Duration
	interval  float64 // nanoseconds, Period/Limit
}

// denial remembers a key that is over the limit until its RetryAfter passes.
type denial struct {
	limit Limit
	until time.Time
	reset time.Time
}

// reservoir holds local-batch tokens of one key, valid until until.
type reservoir struct {
	limit     Limit
	tokens    int64 // > 0 while in the map
	until     time.Time
	remaining int64 // Redis's remaining when it granted them
	reset     time.Time
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
	if opts.MaxReservoirEntries <= 0 {
		opts.MaxReservoirEntries = DefaultMaxReservoirEntries
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Limiter{
		client:   client,
		scripts:  newScripts(),
		timeout:  opts.Timeout,
		maxDeny:  opts.MaxDeniedEntries,
		maxKeep:  opts.MaxReservoirEntries,
		log:      opts.Logger,
		brk:      breaker{threshold: opts.BreakerFailures, cooldown: opts.BreakerCooldown},
		inflight: make(map[string]*slot),
		denied:   make(map[string]denial),
		reserve:  make(map[string]*reservoir),
	}
}

// NewClient returns a go-redis universal client for opts (one address:
// standalone; MasterName set: Sentinel; several addresses or IsClusterMode:
// Cluster) that honours context deadlines, so Options.Timeout bounds every
// call, and fails fast: a refused connection or a failed command is not
// retried (unless opts asks for retries), because a decision Redis cannot
// make in time is answered by the limit's onStoreFailure policy and
// retrying would only spend the timeout. opts is not modified.
func NewClient(opts *redis.UniversalOptions) redis.UniversalClient {
	o := *opts
	o.ContextTimeoutEnabled = true
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = 1
	}
	return redis.NewUniversalClient(&o)
}

// Stats returns the Limiter's counters.
func (l *Limiter) Stats() Stats {
	return Stats{
		Decisions:     l.decisions.Load(),
		ScriptCalls:   l.scriptCalls.Load(),
		Coalesced:     l.coalesced.Load(),
		LocalDenials:  l.localDenials.Load(),
		LocalGrants:   l.localGrants.Load(),
		DroppedTokens: l.droppedTokens.Load(),
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
// or ctx's error when ctx ends first. An Allowed decision with Wait > 0
// (queue mode) means the caller must wait Wait before proceeding.
//
// Concurrent calls for the same key share script calls: while one call is in
// flight, later callers queue into one batch that the next call decides at
// once. A caller whose ctx ends while queued still holds its place in the
// batch, so it may consume a request it does not use. With Limit.Batch > 1,
// a request may be allowed on a token an earlier call fetched, even while
// Redis is unavailable: Redis counted that token already.
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
	if r, ok := l.reserve[rkey]; ok {
		if r.limit == limit && now.Before(r.until) {
			r.tokens--
			if r.tokens == 0 {
				delete(l.reserve, rkey)
			}
			d := Decision{
				Allowed:   true,
				Limit:     limit.Limit,
				Remaining: max(r.remaining+r.tokens, 0),
				Reset:     max(r.reset.Sub(now), 0),
			}
			l.mu.Unlock()
			l.localGrants.Add(1)
			l.decisions.Add(1)
			return d, nil
		}
		delete(l.reserve, rkey)
		l.droppedTokens.Add(uint64(r.tokens))
	}
	s, busy := l.inflight[rkey]
	if !busy {
		// Nothing in flight: run a batch of one right away.
		s = &slot{}
		l.inflight[rkey] = s
		b := &batch{n: 1, done: make(chan struct{}), deadline: now.Add(l.timeout)}
		l.mu.Unlock()
		l.run(limit, rkey, b)
		return l.decide(limit, b, 0)
	}
	b := s.next
	leader := b == nil
	if leader {
		b = &batch{start: make(chan struct{}), done: make(chan struct{}), deadline: now.Add(l.timeout)}
		s.next = b
	}
	idx := b.n
	b.n++
	l.mu.Unlock()

	if leader {
		// The leader must run the batch even if its own ctx ends, or the
		// others would wait forever; the call is bounded by the timeout.
		<-b.start
		if !b.served {
			l.run(limit, rkey, b)
		}
		return l.decide(limit, b, idx)
	}
	l.coalesced.Add(1)
	select {
	case <-b.done:
		return l.decide(limit, b, idx)
	case <-ctx.Done():
		return Decision{}, ctx.Err()
	}
}

// run makes the script call for b, publishes its result and hands the key to
// the batch queued behind it, if any. With local batches the call asks for at
// least limit.Batch tokens; the surplus serves the queued batch first and is
// kept in the key's reservoir after that.
func (l *Limiter) run(limit Limit, rkey string, b *batch) {
	sent := time.Now()
	demand := b.n - b.local
	b.res, b.err = l.call(limit, rkey, max(limit.Batch, demand), demand, b.deadline)
	var surplus int64
	if b.err == nil {
		surplus = max(b.res.granted-demand, 0)
	}
	close(b.done)

	l.mu.Lock()
	defer l.mu.Unlock()
	if b.err == nil && b.res.granted < demand && b.res.retryAfter > 0 {
		l.rememberDenial(limit, rkey, b.res)
	}
	s := l.inflight[rkey]
	next := s.next
	s.next = nil
	if next != nil && surplus > 0 {
		// The queued requests arrived before any later caller could see a
		// reservoir, so they get the surplus first; a call is made only for
		// the rest, which keeps this Limiter's unspent tokens below Batch.
		next.local = min(surplus, next.n)
		surplus -= next.local
		if next.local == next.n {
			next.served = true
			next.res = result{remaining: b.res.remaining + surplus, reset: b.res.reset}
			close(next.done)
			close(next.start)
			next = nil
		}
	}
	if surplus > 0 {
		l.keep(limit, rkey, surplus, b.res, sent)
	}
	if next == nil {
		delete(l.inflight, rkey)
		return
	}
	close(next.start)
}

// decide turns request idx of batch b into a Decision.
func (l *Limiter) decide(limit Limit, b *batch, idx int64) (Decision, error) {
	if idx < b.local {
		// Granted from the previous call's surplus, whatever this call did.
		l.localGrants.Add(1)
		l.decisions.Add(1)
		d := Decision{Allowed: true, Limit: limit.Limit, Remaining: b.local - 1 - idx}
		if b.err == nil {
			d.Remaining = max(b.res.remaining+b.local+b.res.granted-1-idx, 0)
			d.Reset = b.res.reset
		}
		return d, nil
	}
	if b.err != nil {
		return Decision{}, b.err
	}
	l.decisions.Add(1)
	d := Decision{Limit: limit.Limit, Reset: b.res.reset}
	if j := idx - b.local; j < b.res.granted {
		d.Allowed = true
		// Later requests of the batch took tokens after this one did.
		d.Remaining = max(b.res.remaining+b.res.granted-1-j, 0)
		if limit.MaxWait > 0 {
			d.Wait = max(b.res.firstWait+time.Duration(float64(j)*b.res.interval), 0)
		}
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

// keep stores tokens granted by a call sent at sent in rkey's reservoir,
// valid for one Period from sent, so no token outlives a Period after Redis
// counted it; the caller holds l.mu.
func (l *Limiter) keep(limit Limit, rkey string, tokens int64, res result, sent time.Time) {
	now := time.Now()
	if old, ok := l.reserve[rkey]; ok {
		// Not expected: Allow spends or drops a key's reservoir before it
		// makes a call for the key. Counted so no token goes unaccounted.
		l.droppedTokens.Add(uint64(old.tokens))
		delete(l.reserve, rkey)
	}
	if len(l.reserve) >= l.maxKeep {
		for k, r := range l.reserve {
			if !now.Before(r.until) {
				l.droppedTokens.Add(uint64(r.tokens))
				delete(l.reserve, k)
			}
		}
		if len(l.reserve) >= l.maxKeep {
			l.droppedTokens.Add(uint64(tokens))
			return
		}
	}
	l.reserve[rkey] = &reservoir{
		limit:     limit,
		tokens:    tokens,
		until:     sent.Add(limit.Period),
		remaining: res.remaining,
		reset:     now.Add(res.reset),
	}
}

// call runs limit's script for n tokens on rkey, on behalf of demand
// requests, behind the breaker and bounded by deadline.
func (l *Limiter) call(limit Limit, rkey string, n, demand int64, deadline time.Time) (result, error) {
	if !time.Now().Before(deadline) {
		// The batch spent its budget waiting behind a call that took the
		// whole timeout; Redis is not known to have failed this call.
		l.fastFailures.Add(uint64(demand))
		return result{}, fmt.Errorf("%w: timed out waiting behind another call", ErrUnavailable)
	}
	if !l.brk.acquire(time.Now()) {
		l.fastFailures.Add(uint64(demand))
		return result{}, fmt.Errorf("%w: breaker open", ErrUnavailable)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
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
	maxWaitUS := limit.MaxWait.Microseconds()
	keys := []string{rkey}
	var args []any
	switch limit.Algorithm {
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET:
		args = []any{limit.Limit, periodUS, limit.Burst, n, maxWaitUS}
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		interval := float64(periodUS) / float64(limit.Limit)
		args = []any{fmt.Sprintf("%.6f", interval), limit.Burst, n, maxWaitUS}
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
	if len(vals) != 4 && len(vals) != 5 {
		return result{}, fmt.Errorf("script reply has %d values, want 4 or 5", len(vals))
	}
	res := result{
		granted:    vals[0],
		remaining:  vals[1],
		retryAfter: time.Duration(vals[2]) * time.Microsecond,
		reset:      time.Duration(vals[3]) * time.Microsecond,
		interval:   float64(periodUS) * float64(time.Microsecond) / float64(limit.Limit),
	}
	if len(vals) == 5 {
		res.firstWait = time.Duration(vals[4]) * time.Microsecond
	}
	return res, nil
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
