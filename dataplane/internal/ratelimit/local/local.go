// Package local implements per-data-plane rate limiting: token bucket,
// sliding window, GCRA and fixed window, over a sharded, size-capped map of
// per-key state. Time is always passed in by the caller so the algorithms
// can be tested against a controllable clock and so one request uses one
// clock reading across every limit it crosses.
//
// Memory is bounded two ways. Sweep, driven by the caller (the package starts
// no goroutines), drops keys whose state has decayed back to "never seen", so
// dropping them changes no future decision. MaxKeys caps the map: once a
// shard is full, requests for keys it does not hold share one overflow bucket
// with the same limit (see Store.Allow).
//
// # Queue mode
//
// A token bucket or GCRA spec with queue.maxWait shapes traffic instead of
// rejecting it, like Sentinel's uniform-rate queueing or the Reserve method
// of golang.org/x/time/rate. A request over the rate reserves the next free
// turn: if that turn is at most maxWait away, the request is Allowed with
// Decision.Wait set to how long the caller must wait before proceeding. The
// reservation consumes quota at once, so requests arriving together after
// the burst is spent get evenly spaced turns: waits 0 for the burst, then
// period/limit, 2*period/limit, and so on. A request whose turn would be
// more than maxWait away is denied and consumes nothing, so it does not push
// later requests back; its RetryAfter is the time until a request would get
// a turn within maxWait.
//
// A reservation is not returned when the caller gives up waiting (say the
// client disconnects): the turn counts as spent. That errs on the side of the
// backend and keeps Allow free of per-request allocations.
package local

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// DefaultMaxKeys is the key cap used when Options.MaxKeys is 0.
const DefaultMaxKeys = 100_000

// maxShards is the shard count for stores large enough to use it all; more
// shards mean less lock contention, and 64 keeps per-shard caps meaningful.
const maxShards = 64

// MaxPeriod is the longest period accepted; it keeps window arithmetic on
// Unix nanoseconds far from int64 overflow.
const MaxPeriod = 366 * 24 * time.Hour

// ErrInvalidSpec is returned (wrapped) by New for a spec it cannot enforce.
var ErrInvalidSpec = errors.New("invalid rate limit spec")

// Decision is the outcome of one Allow call, carrying what a 429 response
// (Retry-After) and the IETF RateLimit / RateLimit-Policy header fields need.
type Decision struct {
	// Allowed reports whether the request may proceed (after Wait).
	Allowed bool
	// Wait is, when Allowed in queue mode, how long the caller must wait
	// before proceeding; 0 otherwise.
	Wait time.Duration
	// Limit is the policy quota per period (RateLimit-Policy "q").
	Limit int64
	// Remaining is how many more requests would be allowed right now
	// without waiting (RateLimit "r"); never negative.
	Remaining int64
	// RetryAfter is how long until a denied request could succeed; 0 when
	// Allowed.
	RetryAfter time.Duration
	// Reset is how long until the key's quota is fully restored
	// (RateLimit "t"), queued reservations included.
	Reset time.Duration
	// Overflow reports that the key was not tracked because the store was
	// full, so the decision came from the shared overflow bucket.
	Overflow bool
}

// Limiter is the shape of a rate limit decision as the gateway consumes it;
// *Store satisfies it.
type Limiter interface {
	Allow(key string, now time.Time) Decision
}

// Options tunes a Store's memory use.
type Options struct {
	// MaxKeys caps the number of tracked keys; 0 means DefaultMaxKeys.
	MaxKeys int
}

// algorithm is the per-key arithmetic of one limiting algorithm.
type algorithm interface {
	// allow decides one request for st at now (unix nanoseconds) and updates st.
	allow(st *state, now int64) Decision
	// idle reports whether st at now is indistinguishable from a fresh key,
	// so dropping it changes no future decision.
	idle(st *state, now int64) bool
}

// state is the per-key state; each algorithm documents its use of the fields.
type state struct {
	a, b, c int64
	f       float64
}

type shard struct {
	mu      sync.Mutex
	entries map[string]*state
}

// Store holds per-key state for one RateLimit and decides requests against it.
// It is safe for concurrent use.
type Store struct {
	algo     algorithm
	seed     maphash.Seed
	shards   []shard
	mask     uint64
	shardCap int

	overflowMu sync.Mutex
	overflow   state
}

// New returns a Store enforcing spec locally. The spec's algorithm picks the
// arithmetic (unspecified means token bucket) and queue turns it into queue
// mode (see the package doc); scope, key, shadow and on_store_failure are the
// caller's business and are ignored here.
func New(spec *meridianv1.RateLimitSpec, opts Options) (*Store, error) {
	algo, err := newAlgorithm(spec)
	if err != nil {
		return nil, err
	}
	maxKeys := opts.MaxKeys
	if maxKeys < 0 {
		return nil, fmt.Errorf("max keys %d: must not be negative", maxKeys)
	}
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}
	n := maxShards
	for n > 1 && n > maxKeys {
		n /= 2
	}
	s := &Store{
		algo:     algo,
		seed:     maphash.MakeSeed(),
		shards:   make([]shard, n),
		mask:     uint64(n - 1),
		shardCap: maxKeys / n,
	}
	for i := range s.shards {
		s.shards[i].entries = make(map[string]*state)
	}
	return s, nil
}

func newAlgorithm(spec *meridianv1.RateLimitSpec) (algorithm, error) {
	if spec == nil {
		return nil, fmt.Errorf("%w: spec is missing", ErrInvalidSpec)
	}
	if spec.GetLimit() == 0 {
		return nil, fmt.Errorf("%w: limit must be positive", ErrInvalidSpec)
	}
	if spec.GetLimit() > math.MaxInt32 {
		return nil, fmt.Errorf("%w: limit %d is too large", ErrInvalidSpec, spec.GetLimit())
	}
	if spec.GetPeriod() == nil {
		return nil, fmt.Errorf("%w: period is missing", ErrInvalidSpec)
	}
	if err := spec.GetPeriod().CheckValid(); err != nil {
		return nil, fmt.Errorf("%w: period: %w", ErrInvalidSpec, err)
	}
	period := spec.GetPeriod().AsDuration()
	if period <= 0 || period > MaxPeriod {
		return nil, fmt.Errorf("%w: period %s must be positive and at most %s", ErrInvalidSpec, period, MaxPeriod)
	}
	limit := int64(spec.GetLimit())
	burst := spec.GetBurst()
	if burst > math.MaxInt32 {
		return nil, fmt.Errorf("%w: burst %d is too large", ErrInvalidSpec, burst)
	}
	maxWait, err := queueMaxWait(spec.GetQueue())
	if err != nil {
		return nil, err
	}
	interval := int64(period) / limit
	switch spec.GetAlgorithm() {
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_UNSPECIFIED,
		meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET:
		if burst == 0 {
			burst = uint64(limit)
		}
		return newTokenBucket(limit, period, int64(burst), maxWait), nil
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_GCRA:
		if interval < 1 {
			return nil, fmt.Errorf("%w: limit %d per %s is finer than a nanosecond", ErrInvalidSpec, limit, period)
		}
		if burst == 0 {
			burst = 1
		}
		if int64(burst) > math.MaxInt64/4/interval {
			return nil, fmt.Errorf("%w: burst %d over period %s overflows", ErrInvalidSpec, burst, period)
		}
		return newGCRA(limit, interval, int64(burst), maxWait), nil
	case meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW,
		meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW:
		if maxWait > 0 {
			// Window counters have no later turn to hand out.
			return nil, fmt.Errorf("%w: queue needs algorithm token_bucket or gcra, not %s", ErrInvalidSpec, spec.GetAlgorithm())
		}
		if spec.GetAlgorithm() == meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_SLIDING_WINDOW {
			return &slidingWindow{limit: limit, period: int64(period)}, nil
		}
		return &fixedWindow{limit: limit, period: int64(period)}, nil
	default:
		return nil, fmt.Errorf("%w: unknown algorithm %d", ErrInvalidSpec, int32(spec.GetAlgorithm()))
	}
}

// queueMaxWait returns q's maxWait, or 0 when q is nil (no queue mode).
func queueMaxWait(q *meridianv1.RateLimitQueue) (time.Duration, error) {
	if q == nil {
		return 0, nil
	}
	if q.GetMaxWait() == nil {
		return 0, fmt.Errorf("%w: queue.maxWait is missing", ErrInvalidSpec)
	}
	if err := q.GetMaxWait().CheckValid(); err != nil {
		return 0, fmt.Errorf("%w: queue.maxWait: %w", ErrInvalidSpec, err)
	}
	// MaxPeriod bounds it for the same reason as the period: the turn
	// arithmetic on Unix nanoseconds stays far from int64 overflow.
	d := q.GetMaxWait().AsDuration()
	if d <= 0 || d > MaxPeriod {
		return 0, fmt.Errorf("%w: queue.maxWait %s must be positive and at most %s", ErrInvalidSpec, d, MaxPeriod)
	}
	return d, nil
}

// Allow decides one request for key at now.
//
// When the key's shard is full and the key is not tracked, the request is
// decided against a single overflow bucket shared by all such keys, with the
// same limit. This was chosen over evicting tracked keys because eviction
// hands the evicted key a fresh quota: a flood of spoofed or distinct client
// IPs could then reset the counters of the heaviest real clients. The cost is
// that, while the store is full, new clients share one quota until Sweep
// frees room; Decision.Overflow lets the caller count and log that.
func (s *Store) Allow(key string, now time.Time) Decision {
	t := now.UnixNano()
	sh := &s.shards[maphash.String(s.seed, key)&s.mask]
	sh.mu.Lock()
	st, ok := sh.entries[key]
	if !ok {
		if len(sh.entries) >= s.shardCap {
			sh.mu.Unlock()
			s.overflowMu.Lock()
			d := s.algo.allow(&s.overflow, t)
			s.overflowMu.Unlock()
			d.Overflow = true
			return d
		}
		st = &state{}
		sh.entries[key] = st
	}
	d := s.algo.allow(st, t)
	sh.mu.Unlock()
	return d
}

// Sweep drops every key whose state at now equals that of a never-seen key,
// and returns how many it dropped. The caller should run it about once per
// period; it locks one shard at a time, so Allow on other shards proceeds.
func (s *Store) Sweep(now time.Time) int {
	t := now.UnixNano()
	dropped := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, st := range sh.entries {
			if s.algo.idle(st, t) {
				delete(sh.entries, k)
				dropped++
			}
		}
		sh.mu.Unlock()
	}
	return dropped
}

// Len returns the number of tracked keys (the overflow bucket excluded).
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.entries)
		sh.mu.Unlock()
	}
	return n
}
