// Package breaker is the circuit breaker of a CircuitBreaker resource: a
// state machine (closed, open, half-open) fed by a sliding window of
// request outcomes.
//
// A caller asks Allow before sending a request upstream and, when it is
// allowed, reports what happened with Record:
//
//	start := time.Now()
//	t, err := b.AllowAt(start) // or b.Allow()
//	if err != nil {
//		return err // ErrOpen or ErrHalfOpenFull: answer with the fallback
//	}
//	res, err := transport.RoundTrip(req)
//	b.Record(t, outcome(res, err), time.Since(start))
//
// Both are safe for concurrent use, take no lock and allocate nothing
// while the breaker is closed. The caller classifies outcomes: a response
// whose status IsFailureStatus, a connect error or a reset is a Failure,
// running out of time is a Timeout, and a client that went away is
// Canceled.
//
// The window is a ring of bucket-sized slots, each counting the requests
// that started in it: admitted, ended, failed, slower than the latency
// threshold. A judge reads the ring at most every 25 ms and trips the
// breaker when a condition holds over the whole window, or holds beyond
// doubt over its most recent part, counting requests still in flight past
// the latency threshold as slow: an outage trips it within tens of
// milliseconds and a latency step within about the threshold plus a
// bucket, even when the window is full of healthy requests.
// consecutiveFailures is checked on every failure. A second ring of one-second slots with latency histograms
// keeps the last minute for metrics (Snapshot). The counters every request
// writes are striped so that cores do not contend for them (see stripes).
package breaker

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Defaults for the fields a CircuitBreakerSpec leaves at zero. Zeros that
// are a setting of their own are kept: a zero errorRate or
// consecutiveFailures is off, a zero jitter is none.
const (
	DefaultWindow       = 10 * time.Second
	DefaultBucket       = 100 * time.Millisecond // or the window, if shorter
	DefaultMinRequests  = 20
	DefaultOpenDuration = 5 * time.Second
	DefaultMaxDuration  = 60 * time.Second // or open.duration, if longer
	DefaultMultiplier   = 2
	DefaultProbes       = 1
	DefaultSuccesses    = 3
	DefaultProbeTimeout = 30 * time.Second
)

// DefaultFailureStatuses are the statuses that count as failures when the
// spec lists none.
func DefaultFailureStatuses() []uint32 { return []uint32{500, 502, 503, 504} }

// MaxSlots bounds the window's buckets, as config validation does.
const MaxSlots = 10_000

// Errors Allow returns for a request it refuses.
var (
	// ErrOpen: the breaker is open.
	ErrOpen = errors.New("circuit breaker open")
	// ErrHalfOpenFull: the breaker is half-open and every probe is in
	// flight.
	ErrHalfOpenFull = errors.New("circuit breaker half-open, probes in flight")
)

// State is where the breaker stands.
type State int32

// The states.
const (
	Closed State = iota
	Open
	HalfOpen
)

// String returns "closed", "open" or "half-open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Outcome is what became of an allowed request.
type Outcome uint8

// The outcomes.
const (
	// Success: any response whose status is not a failure status.
	Success Outcome = iota
	// Failure: a failure status, a connect error or a reset.
	Failure
	// Timeout: no answer in time. It is a failure, counted apart too.
	Timeout
	// Canceled: the client went away. It counts neither way and only
	// gives the ticket back.
	Canceled
)

// String returns "success", "failure", "timeout" or "canceled".
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Timeout:
		return "timeout"
	case Canceled:
		return "canceled"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Causes of a trip, as Snapshot.LastTrip gives them.
const (
	CauseErrorRate           = "errorRate"
	CauseLatency             = "latency"
	CauseConsecutiveFailures = "consecutiveFailures"
	CauseProbe               = "probe" // a half-open probe failed
)

// Ticket is an allowed request's claim on the breaker. Record must be
// called exactly once with every ticket Allow returns without an error.
// The zero Ticket is ignored by Record.
//
// The compiler keeps a struct of at most 4 fields in registers; a fifth
// would send every Ticket through memory and make Allow and Record about
// 15 ns slower.
type Ticket struct {
	start  int64 // since the breaker's base, in nanoseconds
	bucket int64 // start's bucket in the window
	probe  int32 // 1 + the probe slot it holds; 0 if not a probe
	stripe uint8 // 1 + the stripe its counts go to; 0 in the zero Ticket
}

// Options are the breaker's dependencies. The zero value uses the real
// ones.
type Options struct {
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// Rand draws the open duration's jitter. It is used under a lock.
	// Default: math/rand/v2's global source.
	Rand rand.Source
	// ProbeTimeout is how long a half-open probe may stay unrecorded
	// before its slot goes to another request; pass the route timeout.
	// Default: DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// Observer is told of every state transition. Default: none.
	Observer Observer
}

// Observer is told of a breaker's state transitions, each once, in the
// order they happen. BreakerTransition is called by whatever made the
// transition (a request's Allow or Record, State, Snapshot) with the
// breaker's transition lock held, after the new state took effect:
// requests on the lock-free path are not held up, but it must return
// quickly and must not call the Breaker.
type Observer interface {
	BreakerTransition(Transition)
}

// Transition is one change of a breaker's state, with what caused it.
// Fields that do not apply to it are zero.
type Transition struct {
	From, To State

	// Cause is why the breaker opened (To == Open): a Cause constant.
	Cause string
	// For CauseErrorRate and CauseLatency: Requests is the number of
	// outcomes known over Window, the newest part of the window (or all
	// of it) over which the condition held; Failures and Slow count the
	// failed ones and those slower than LatencyThreshold (requests still
	// in flight past it included). Threshold is errorRate, or for latency
	// 1-quantile: the fraction of slow requests above which it trips.
	// For CauseConsecutiveFailures, Failures is the streak and Threshold
	// consecutiveFailures.
	Requests, Failures, Slow int64
	Window                   time.Duration
	Threshold                float64
	LatencyThreshold         time.Duration
	// OpenFor is how long the breaker stays open (To == Open).
	OpenFor time.Duration

	// Probe and ProbeLatency are the outcome of the half-open probe that
	// closed or reopened the breaker (From == HalfOpen); a Success is
	// slow when ProbeLatency exceeds LatencyThreshold (then set).
	Probe        Outcome
	ProbeLatency time.Duration
	// Probes is how many probes may be in flight at once (To ==
	// HalfOpen); Successes is how many must succeed to close it (To ==
	// HalfOpen), or did (To == Closed).
	Probes, Successes int
}

// probeFree marks a probe slot no probe holds; a held one holds the
// probe's start.
const probeFree = math.MinInt64

// Breaker is one circuit breaker. Create it with New.
type Breaker struct {
	// Configuration, fixed by New.
	now          func() time.Time
	base         time.Time // time 0 of the int64 times below
	randFloat    func() float64
	bucketLen    int64 // nanoseconds
	slots        int64 // buckets in the window
	mask         int64 // len(ring)-1
	minRequests  int64
	errorRate    float64 // 0: off
	errorGate    int64   // requests a window suffix needs to judge errorRate
	slowAfter    int64   // latency threshold in nanoseconds; 0: off
	slowRate     float64 // 1 - quantile
	latencyMin   int64   // requests the whole window needs to judge latency
	latencyGate  int64   // requests a window suffix needs to judge latency
	consecutive  int64   // 0: off
	failStatuses []uint32
	openBase     float64 // nanoseconds
	openMax      float64
	multiplier   float64
	jitter       float64
	successes    int
	probeTimeout int64
	observer     Observer

	// Hot state, lock-free. Every request reads these; the counters it
	// writes are striped (see stripes).
	state        atomic.Int32
	openUntil    atomic.Int64
	closedBucket atomic.Int64   // the judge ignores buckets before it
	nextJudge    atomic.Int64   // written every judgeEvery
	probes       []atomic.Int64 // start of the probe holding it, or probeFree
	// ring holds the bucket each slot of the window counts, or slotEmpty,
	// or slotClearing; counts[i][j] is stripe i of slot j's counters.
	ring   []atomic.Int64
	counts [stripes][]slotCounts
	// failStreak cannot be striped: a success resets it. Only failures
	// and the first success after one write it, and the padding keeps
	// those writes off the line of the fields above.
	_          [64]byte
	failStreak atomic.Int64
	metrics    metrics
	rejected   stripedCounter

	mu          sync.Mutex // serializes transitions; guards the fields below
	level       int        // trips since the last long closed period
	closedAt    int64
	probeWins   int // successful probes in this half-open period
	transitions uint64
	lastTrip    string
}

// New returns a closed breaker for spec. See the Default constants for the
// fields spec may leave at zero; it must set at least one trip condition.
// The window is rounded up to whole buckets.
func New(spec *meridianv1.CircuitBreakerSpec, opts Options) (*Breaker, error) {
	b := &Breaker{
		now:          opts.Now,
		randFloat:    rand.Float64,
		probeTimeout: int64(opts.ProbeTimeout),
		observer:     opts.Observer,
	}
	if b.now == nil {
		b.now = time.Now
	}
	if opts.Rand != nil {
		b.randFloat = rand.New(opts.Rand).Float64
	}
	if b.probeTimeout <= 0 {
		b.probeTimeout = int64(DefaultProbeTimeout)
	}

	window := orDefault(spec.GetWindow().AsDuration(), DefaultWindow)
	bucket := orDefault(spec.GetBucket().AsDuration(), min(DefaultBucket, window))
	if window <= 0 || bucket <= 0 {
		return nil, fmt.Errorf("circuit breaker: window (%s) and bucket (%s) must be positive", window, bucket)
	}
	b.bucketLen = int64(bucket)
	b.slots = (int64(window) + b.bucketLen - 1) / b.bucketLen
	if b.slots > MaxSlots {
		return nil, fmt.Errorf("circuit breaker: window (%s) would need %d buckets of %s, more than %d", window, b.slots, bucket, MaxSlots)
	}
	// A ring of a power of two slots finds a bucket's slot with a mask;
	// the judge reads only the last b.slots of it.
	size := int64(1)
	for size < b.slots {
		size <<= 1
	}
	b.mask = size - 1
	b.ring = make([]atomic.Int64, size)
	for i := range b.ring {
		b.ring[i].Store(slotEmpty)
	}
	for i := range b.counts {
		b.counts[i] = make([]slotCounts, size)
	}
	b.metrics.init()

	b.minRequests = int64(spec.GetMinRequests())
	if b.minRequests == 0 {
		b.minRequests = DefaultMinRequests
	}
	trip := spec.GetTrip()
	b.errorRate = trip.GetErrorRate()
	if b.errorRate < 0 || b.errorRate > 1 {
		return nil, fmt.Errorf("circuit breaker: errorRate %g is not between 0 and 1", b.errorRate)
	}
	if b.errorRate > 0 {
		b.errorGate = max(b.minRequests, int64(math.Ceil(suffixMinExpected/b.errorRate)))
	}
	if l := trip.GetLatency(); l != nil {
		q, threshold := l.GetQuantile(), l.GetThreshold().AsDuration()
		if q <= 0 || q >= 1 || threshold <= 0 {
			return nil, fmt.Errorf("circuit breaker: latency needs a quantile between 0 and 1 exclusive (got %g) and a positive threshold (got %s)", q, threshold)
		}
		b.slowAfter = int64(threshold)
		b.slowRate = 1 - q
		// The q-quantile of fewer than 1/(1-q) requests is their maximum:
		// one slow request would trip the breaker.
		b.latencyMin = max(b.minRequests, int64(math.Ceil(1/b.slowRate)))
		b.latencyGate = max(b.minRequests, int64(math.Ceil(suffixMinExpected/b.slowRate)))
	}
	b.consecutive = int64(trip.GetConsecutiveFailures())
	if b.errorRate == 0 && b.slowAfter == 0 && b.consecutive == 0 {
		return nil, errors.New("circuit breaker: no trip condition (errorRate, latency or consecutiveFailures)")
	}
	b.failStatuses = spec.GetFailureStatuses()
	if len(b.failStatuses) == 0 {
		b.failStatuses = DefaultFailureStatuses()
	}

	open := spec.GetOpen()
	openBase := orDefault(open.GetDuration().AsDuration(), DefaultOpenDuration)
	openMax := orDefault(open.GetMaxDuration().AsDuration(), max(DefaultMaxDuration, openBase))
	if openBase <= 0 || openMax < openBase {
		return nil, fmt.Errorf("circuit breaker: open duration %s must be positive and at most maxDuration %s", openBase, openMax)
	}
	b.openBase, b.openMax = float64(openBase), float64(openMax)
	b.multiplier = open.GetMultiplier()
	if b.multiplier == 0 {
		b.multiplier = DefaultMultiplier
	}
	b.jitter = open.GetJitter()
	if b.multiplier < 1 || b.jitter < 0 || b.jitter > 1 {
		return nil, fmt.Errorf("circuit breaker: open multiplier %g must be at least 1 and jitter %g between 0 and 1", b.multiplier, b.jitter)
	}

	probes := int(spec.GetHalfOpen().GetProbes())
	if probes == 0 {
		probes = DefaultProbes
	}
	b.probes = make([]atomic.Int64, probes)
	b.freeProbes()
	b.successes = int(spec.GetHalfOpen().GetSuccesses())
	if b.successes == 0 {
		b.successes = DefaultSuccesses
	}

	b.base = b.now()
	b.nextJudge.Store(judgeEvery)
	return b, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// IsFailureStatus reports whether a response with this status is a
// Failure under the spec's failureStatuses.
func (b *Breaker) IsFailureStatus(status int) bool {
	return status > 0 && slices.Contains(b.failStatuses, uint32(status))
}

// since converts t to the breaker's time; times before New count as New's.
func (b *Breaker) since(t time.Time) int64 {
	return max(int64(t.Sub(b.base)), 0)
}

// Allow is AllowAt with the breaker's clock.
func (b *Breaker) Allow() (Ticket, error) {
	return b.AllowAt(b.now())
}

// AllowAt decides whether a request starting at now may go upstream. It
// returns ErrOpen or ErrHalfOpenFull if not, and otherwise a ticket to
// give to Record. now must come from the breaker's clock (Options.Now); a
// caller that already read it at the request's start saves a second read.
func (b *Breaker) AllowAt(now time.Time) (Ticket, error) {
	t := b.since(now)
	if t >= b.nextJudge.Load() {
		b.maybeJudge(t)
	}
	if State(b.state.Load()) == Closed {
		return b.admit(t, 0), nil
	}
	return b.allowSlow(t)
}

// admit counts a request starting at t and returns its ticket.
func (b *Breaker) admit(t int64, probe int32) Ticket {
	k := t / b.bucketLen
	stripe := stripeOf(t)
	if j := k & b.mask; b.ring[j].Load() == k || b.takeSlot(j, k) {
		b.counts[stripe][j].started.Add(1)
	}
	return Ticket{start: t, bucket: k, probe: probe, stripe: 1 + stripe}
}

// allowSlow is AllowAt for an open or half-open breaker.
func (b *Breaker) allowSlow(t int64) (Ticket, error) {
	if State(b.state.Load()) == Open {
		if t < b.openUntil.Load() {
			b.rejected.add(stripeOf(t))
			return Ticket{}, ErrOpen
		}
		b.mu.Lock()
		b.halfOpen(t)
		b.mu.Unlock()
	}
	switch State(b.state.Load()) {
	case Closed:
		return b.admit(t, 0), nil
	case Open:
		b.rejected.add(stripeOf(t))
		return Ticket{}, ErrOpen
	}
	for i := range b.probes {
		p := &b.probes[i]
		held := p.Load()
		if (held == probeFree || t-held >= b.probeTimeout) && p.CompareAndSwap(held, t) {
			return b.admit(t, int32(i+1)), nil
		}
	}
	b.rejected.add(stripeOf(t))
	return Ticket{}, ErrHalfOpenFull
}

// Record reports the outcome of a ticket's request, latency after its
// start. Call it when the outcome is known (the response's status, an
// error), not after a streamed body: until then the request counts as in
// flight, and as slow once in flight past the latency threshold. The time
// of the outcome is taken as the ticket's start plus latency, so Record
// reads no clock.
func (b *Breaker) Record(t Ticket, o Outcome, latency time.Duration) {
	if t.stripe == 0 {
		return
	}
	stripe := t.stripe - 1
	latency = max(latency, 0)
	end := t.start + int64(latency)
	failed := o == Failure || o == Timeout
	slow := b.slowAfter > 0 && int64(latency) > b.slowAfter

	if j := t.bucket & b.mask; b.ring[j].Load() == t.bucket {
		// Counted only if the slot still holds the request's bucket: a
		// request in flight for longer than the ring has dropped out of
		// the window.
		s := &b.counts[stripe][j]
		s.ended.Add(1)
		switch {
		case o == Canceled:
			s.canceled.Add(1)
		case failed:
			s.failures.Add(1)
		}
		if slow && o != Canceled {
			s.slow.Add(1)
		}
	}
	if o != Canceled {
		b.metrics.record(end/int64(time.Second), stripe, o, latency)
	}

	if t.probe > 0 {
		b.recordProbe(t, o, failed || slow, end)
		return
	}
	if b.consecutive > 0 && o != Canceled && State(b.state.Load()) == Closed {
		if !failed {
			if b.failStreak.Load() != 0 {
				b.failStreak.Store(0)
			}
		} else if n := b.failStreak.Add(1); n >= b.consecutive {
			b.trip(end, Transition{Cause: CauseConsecutiveFailures, Failures: n, Threshold: float64(b.consecutive)})
			return
		}
	}
	if end >= b.nextJudge.Load() {
		b.maybeJudge(end)
	}
}

// recordProbe gives back a probe's slot and applies its outcome: a failed
// or slow probe opens the breaker again, and enough successful ones close
// it. A probe whose slot already went to another after ProbeTimeout, or
// that belongs to an earlier half-open period, changes nothing.
func (b *Breaker) recordProbe(t Ticket, o Outcome, bad bool, end int64) {
	if !b.probes[t.probe-1].CompareAndSwap(t.start, probeFree) || o == Canceled {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if State(b.state.Load()) != HalfOpen {
		return
	}
	latency := time.Duration(end - t.start)
	if bad {
		tr := Transition{Cause: CauseProbe, Probe: o, ProbeLatency: latency}
		if b.slowAfter > 0 {
			tr.LatencyThreshold = time.Duration(b.slowAfter)
		}
		b.open(end, tr)
		return
	}
	b.probeWins++
	if b.probeWins >= b.successes {
		b.close(end, latency)
	}
}

// trip opens a closed breaker; tr says why (see open).
func (b *Breaker) trip(now int64, tr Transition) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if State(b.state.Load()) == Closed {
		b.open(now, tr)
	}
}

// open moves the breaker to Open for the current open duration: the base
// duration times multiplier for each trip since the breaker last stayed
// closed for maxDuration, capped at maxDuration, times a random factor
// between 1-jitter and 1+jitter, capped at maxDuration again. tr holds the
// cause and its numbers, for the observer. b.mu is held.
func (b *Breaker) open(now int64, tr Transition) {
	if State(b.state.Load()) == Closed && float64(now-b.closedAt) >= b.openMax {
		b.level = 0
	}
	d := min(b.openBase*math.Pow(b.multiplier, float64(b.level)), b.openMax)
	if b.jitter > 0 {
		d = min(d*(1+b.jitter*(2*b.randFloat()-1)), b.openMax)
	}
	b.level++
	b.openUntil.Store(now + int64(d))
	b.freeProbes()
	b.lastTrip = tr.Cause
	tr.To, tr.OpenFor = Open, time.Duration(d)
	b.setState(tr)
}

// halfOpen moves an open breaker whose time is up to HalfOpen. b.mu is
// held.
func (b *Breaker) halfOpen(now int64) {
	if State(b.state.Load()) != Open || now < b.openUntil.Load() {
		return
	}
	b.probeWins = 0
	b.freeProbes()
	b.setState(Transition{To: HalfOpen, Probes: len(b.probes), Successes: b.successes})
}

// close moves the breaker to Closed with a fresh window; probe is the
// latency of the probe that closed it. b.mu is held.
func (b *Breaker) close(now int64, probe time.Duration) {
	b.closedAt = now
	b.closedBucket.Store(now / b.bucketLen)
	b.failStreak.Store(0)
	b.setState(Transition{To: Closed, Probe: Success, ProbeLatency: probe, Successes: b.probeWins})
}

// setState moves the breaker to tr.To, counts the transition and reports
// it: the one place every transition goes through, for Snapshot's count
// and the observer alike. b.mu is held.
func (b *Breaker) setState(tr Transition) {
	tr.From = State(b.state.Load())
	b.state.Store(int32(tr.To))
	b.transitions++
	if b.observer != nil {
		b.observer.BreakerTransition(tr)
	}
}

func (b *Breaker) freeProbes() {
	for i := range b.probes {
		b.probes[i].Store(probeFree)
	}
}

// State returns the breaker's state, moving it from Open to HalfOpen if
// its open time is up.
func (b *Breaker) State() State {
	s := State(b.state.Load())
	if now := b.since(b.now()); s == Open && now >= b.openUntil.Load() {
		b.mu.Lock()
		b.halfOpen(now)
		b.mu.Unlock()
		s = State(b.state.Load())
	}
	return s
}

// Snapshot is a breaker's state and recent traffic, for metrics.
type Snapshot struct {
	State State
	// OpenUntil is when an open breaker lets probes through.
	OpenUntil time.Time
	// Transitions counts state changes since New.
	Transitions uint64
	// LastTrip is the cause of the last move to Open (a Cause constant),
	// or "".
	LastTrip string
	// Rejected counts requests Allow refused since New.
	Rejected uint64
	// Last5s and Last60s are the outcomes recorded in the current second
	// and the 4 (59) before it, by the time the outcome was known.
	Last5s, Last60s Aggregate
}

// Snapshot returns the breaker's state and recent traffic.
func (b *Breaker) Snapshot() Snapshot {
	state := b.State()
	now := b.since(b.now())
	b.mu.Lock()
	s := Snapshot{
		State:       state,
		Transitions: b.transitions,
		LastTrip:    b.lastTrip,
		Rejected:    b.rejected.load(),
	}
	b.mu.Unlock()
	if state == Open {
		s.OpenUntil = b.base.Add(time.Duration(b.openUntil.Load()))
	}
	sec := now / int64(time.Second)
	s.Last5s = b.metrics.aggregate(sec, 5)
	s.Last60s = b.metrics.aggregate(sec, metricSeconds)
	return s
}
