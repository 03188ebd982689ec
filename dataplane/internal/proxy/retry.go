package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Retry defaults and bounds; see Route for what they mean.
const (
	// MaxRetries bounds retry.attempts, as config validation does.
	MaxRetries = 10
	// DefaultBackoffBase is the first wait when retry.backoff.base is
	// unset; an explicit 0s retries at once.
	DefaultBackoffBase = 25 * time.Millisecond
	// DefaultBudgetPercent applies when retry.budgetPercent is 0.
	DefaultBudgetPercent = 20
	// MaxReplayBody is the largest request body buffered for replay.
	MaxReplayBody = 64 << 10
	// budgetFloor is how many retries a route may make in any rolling
	// second whatever its volume, so a quiet route can still retry.
	budgetFloor = 3
	// The budget's rolling window is budgetSlots slots of budgetSlot: one
	// second. A short window keeps a healthy spell before an outage from
	// lending the outage its retries: retries in any second stay within
	// percent of that second's requests.
	budgetSlots = 10
	budgetSlot  = 100 * time.Millisecond
)

// retryOn is a set of retry conditions other than listed statuses.
type retryOn uint8

const (
	onConnect retryOn = 1 << iota // connect_failure
	onReset                       // reset
	onTimeout                     // timeout
	on5xx                         // 5xx
	onGateway                     // gateway_error
)

// onNoResponse are the conditions under which an attempt that got no
// response at all is retried whatever went wrong: the gateway would answer
// it with a 502 or 504 itself.
const onNoResponse = on5xx | onGateway

// retryPolicy is a route's compiled spec.retry.
type retryPolicy struct {
	attempts      int // retries after the first try
	on            retryOn
	statuses      [10]uint64 // bit s: retry a response with status s (100-599)
	base, max     time.Duration
	nonIdempotent bool
	replayMax     int64 // largest body buffered for replay
	budget        budget
}

// newRetryPolicy compiles spec; nil when it allows no retry. maxBody is
// the route's body limit, 0 for none. Errors are *config.FieldError.
func newRetryPolicy(route string, spec *meridianv1.RetryPolicy, maxBody int64) (*retryPolicy, error) {
	if spec.GetAttempts() == 0 {
		return nil, nil
	}
	fail := func(path, format string, args ...any) error {
		return &config.FieldError{Kind: config.KindRoute, Name: route, Path: path, Msg: fmt.Sprintf(format, args...)}
	}
	if spec.GetAttempts() > MaxRetries {
		return nil, fail("spec.retry.attempts", "must be at most %d", MaxRetries)
	}
	p := &retryPolicy{
		attempts:      int(spec.GetAttempts()),
		nonIdempotent: spec.GetNonIdempotent(),
		replayMax:     MaxReplayBody,
	}
	if maxBody > 0 {
		p.replayMax = min(p.replayMax, maxBody)
	}
	for i, on := range spec.GetOn() {
		switch on {
		case "connect_failure":
			p.on |= onConnect
		case "reset":
			p.on |= onReset
		case "timeout":
			p.on |= onTimeout
		case "5xx":
			p.on |= on5xx
		case "gateway_error":
			p.on |= onGateway
		default:
			code, err := strconv.Atoi(on)
			if err != nil || code < 100 || code > 599 {
				return nil, fail(fmt.Sprintf("spec.retry.on[%d]", i), "%q is not connect_failure, reset, timeout, 5xx, gateway_error or an HTTP status", on)
			}
			p.statuses[code/64] |= 1 << (code % 64)
		}
	}
	if len(spec.GetOn()) == 0 {
		p.on = onConnect | onReset
	}

	p.base = DefaultBackoffBase
	if b := spec.GetBackoff().GetBase(); b != nil {
		p.base = b.AsDuration()
	}
	p.max = 10 * p.base
	if m := spec.GetBackoff().GetMax(); m != nil {
		p.max = m.AsDuration()
		if spec.GetBackoff().GetBase() == nil {
			p.base = min(p.base, p.max)
		}
	}
	if p.base < 0 || p.max < p.base {
		return nil, fail("spec.retry.backoff.base", "must be between 0 and max (%s)", p.max)
	}

	percent := int64(spec.GetBudgetPercent())
	if percent == 0 {
		percent = DefaultBudgetPercent
	}
	if percent > 100 {
		return nil, fail("spec.retry.budgetPercent", "must be at most 100")
	}
	p.budget.percent = percent
	return p, nil
}

// retryStatus reports whether a response with this status is retried.
func (p *retryPolicy) retryStatus(status int) bool {
	if status >= 100 && status <= 599 && p.statuses[status/64]&(1<<(status%64)) != 0 {
		return true
	}
	if status >= 500 && p.on&on5xx != 0 {
		return true
	}
	return status >= 502 && status <= 504 && p.on&onGateway != 0
}

// retryFailure reports whether an attempt that got no response is retried.
func (p *retryPolicy) retryFailure(f failure) bool {
	switch f.kind {
	case failConnect:
		return p.on&(onConnect|onNoResponse) != 0 || f.timeout && p.on&onTimeout != 0
	case failReset:
		return p.on&(onReset|onNoResponse) != 0
	case failTimeout:
		return p.on&(onTimeout|onNoResponse) != 0
	}
	return false
}

// allows reports whether r may be retried at all: its method is
// idempotent or the policy allows others, and its body, if any, has a
// known length small enough to buffer.
func (p *retryPolicy) allows(r *http.Request) bool {
	if !p.nonIdempotent && !idempotent(r.Method) {
		return false
	}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return true
	}
	return r.ContentLength > 0 && r.ContentLength <= p.replayMax
}

// idempotent reports whether RFC 9110 makes method idempotent.
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// backoff returns the wait before retry n (0 for the first): full jitter,
// uniform in [0, min(max, base·2ⁿ)).
func (p *retryPolicy) backoff(n int) time.Duration {
	limit := p.max
	if n < 62 && p.base < p.max>>n {
		limit = p.base << n
	}
	if limit <= 0 {
		return 0
	}
	// math/rand/v2's global source is per-thread: no lock, no allocation.
	return time.Duration(rand.Int64N(int64(limit)))
}

// budget caps a route's retries at percent of its requests that went
// upstream in the last second (a rolling window of budgetSlots slots), or
// at budgetFloor retries in that second when that is more. A retry is
// claimed before it is checked, so concurrent claims can only undershoot
// the cap, never pass it.
type budget struct {
	percent  int64
	requests [budgetSlots]atomic.Uint64 // per slot: slot number<<32 | count
	retries  [budgetSlots]atomic.Uint64
}

// budgetTick is the slot number of t.
func budgetTick(t time.Time) int64 { return t.UnixMilli() / budgetSlot.Milliseconds() }

// count adds one to the slot of tick, starting the slot afresh when it
// still holds an older tick.
func count(slots *[budgetSlots]atomic.Uint64, tick int64) {
	s := &slots[uint64(tick)%budgetSlots]
	tag := uint64(uint32(tick)) << 32
	for {
		v := s.Load()
		if v&^0xffffffff == tag {
			s.Add(1)
			return
		}
		if s.CompareAndSwap(v, tag|1) {
			return
		}
	}
}

// sum returns the count of the window ending at tick.
func sum(slots *[budgetSlots]atomic.Uint64, tick int64) int64 {
	var window int64
	for i := range slots {
		v := slots[i].Load()
		if age := uint32(tick) - uint32(v>>32); age < budgetSlots {
			window += int64(v & 0xffffffff)
		}
	}
	return window
}

// request counts a request that went upstream at t.
func (b *budget) request(t time.Time) { count(&b.requests, budgetTick(t)) }

// take claims a retry at t if the budget has room.
func (b *budget) take(t time.Time) bool {
	tick := budgetTick(t)
	count(&b.retries, tick)
	reqs, rets := sum(&b.requests, tick), sum(&b.retries, tick)
	if rets*100 > reqs*b.percent && rets > budgetFloor {
		uncount(&b.retries, tick)
		return false
	}
	return true
}

// uncount takes back a count of tick, unless its slot moved on to a newer
// tick meanwhile (then the count is gone anyway).
func uncount(slots *[budgetSlots]atomic.Uint64, tick int64) {
	s := &slots[uint64(tick)%budgetSlots]
	tag := uint64(uint32(tick)) << 32
	for {
		v := s.Load()
		if v&^0xffffffff != tag || v&0xffffffff == 0 {
			return
		}
		if s.CompareAndSwap(v, v-1) {
			return
		}
	}
}
