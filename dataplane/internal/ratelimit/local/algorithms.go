package local

import (
	"math"
	"time"
)

// tokenBucket follows golang.org/x/time/rate: a bucket of capacity burst
// (0 in the spec means limit) refilled continuously at limit per period; a
// request takes one token. A full bucket lets burst requests through at
// once, so any window of one period can admit up to burst+limit requests.
// In queue mode a request may also take a token the bucket does not hold
// yet, down to maxWait's worth of refill below empty, and waits until that
// token has been refilled (x/time/rate's Reserve).
//
// state: a = time of the last update, f = deficit (burst minus tokens), so
// the zero state is a full bucket and a deficit above burst is a queued
// reservation. Refill is computed as elapsed*limit/period in float64 rather
// than elapsed*(limit/period), so a whole-token refill comes out as exactly
// one token instead of 0.999....
type tokenBucket struct {
	limit   int64
	period  float64
	burst   float64
	maxWait time.Duration
}

func newTokenBucket(limit int64, period time.Duration, burst int64, maxWait time.Duration) *tokenBucket {
	return &tokenBucket{
		limit:   limit,
		period:  float64(period),
		burst:   float64(burst),
		maxWait: maxWait,
	}
}

// deficit returns the deficit of st at now.
func (tb *tokenBucket) deficit(st *state, now int64) float64 {
	elapsed := now - st.a
	if elapsed <= 0 {
		// A clock that stepped back refills nothing; it never refills twice.
		return st.f
	}
	d := st.f - float64(elapsed)*float64(tb.limit)/tb.period
	if d < 0 {
		return 0
	}
	return d
}

// dur converts a number of tokens to the time the bucket takes to refill them.
func (tb *tokenBucket) dur(tokens float64) time.Duration {
	if tokens <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(tokens * tb.period / float64(tb.limit)))
}

func (tb *tokenBucket) allow(st *state, now int64) Decision {
	d := tb.deficit(st, now)
	if now > st.a {
		st.a = now
	}
	// owed is how far below empty the bucket would be after taking a token;
	// the request must wait until that much has been refilled.
	var wait time.Duration
	if owed := d + 1 - tb.burst; owed > 0 {
		wait = tb.dur(owed)
	}
	if wait > tb.maxWait {
		// Nothing is taken, so a denied request delays no one; it could
		// reserve a turn once wait has shrunk to maxWait.
		st.f = d
		return Decision{
			Limit:      tb.limit,
			RetryAfter: max(wait-tb.maxWait, 1),
			Reset:      tb.dur(d),
		}
	}
	d++
	st.f = d
	return Decision{
		Allowed:   true,
		Wait:      wait,
		Limit:     tb.limit,
		Remaining: max(int64(tb.burst-d), 0),
		Reset:     tb.dur(d),
	}
}

func (tb *tokenBucket) idle(st *state, now int64) bool {
	return tb.deficit(st, now) == 0
}

// gcra is the generic cell rate algorithm: requests are spaced one emission
// interval (period/limit) apart, with a tolerance of burst-1 intervals, so
// any window of one period admits at most limit+burst-1 requests. burst 0 in
// the spec means 1: strict pacing, no burst at all and no window edge to
// exploit. The interval is truncated to whole nanoseconds, which makes the
// rate at most one nanosecond per request faster than specified. In queue
// mode a request that arrives early by at most maxWait beyond the tolerance
// is admitted with a wait until it is no longer early, and pushes the TAT on
// as if it had arrived then.
//
// state: a = theoretical arrival time (TAT) of the next request; the zero
// state is a key never seen and a TAT in the future holds either used burst
// or queued reservations.
type gcra struct {
	limit     int64
	interval  int64
	tolerance int64
	maxWait   int64
}

func newGCRA(limit, interval, burst int64, maxWait time.Duration) *gcra {
	return &gcra{limit: limit, interval: interval, tolerance: (burst - 1) * interval, maxWait: int64(maxWait)}
}

func (g *gcra) allow(st *state, now int64) Decision {
	tat := max(st.a, now)
	// A request up to the tolerance ahead of the TAT spends burst; only
	// what lies beyond the tolerance has to be waited out.
	wait := max(tat-now-g.tolerance, 0)
	if wait > g.maxWait {
		// Nothing is taken, as for the token bucket.
		return Decision{
			Limit:      g.limit,
			RetryAfter: time.Duration(wait - g.maxWait),
			Reset:      time.Duration(tat - now),
		}
	}
	st.a = tat + g.interval
	return Decision{
		Allowed:   true,
		Wait:      time.Duration(wait),
		Limit:     g.limit,
		Remaining: max((now+g.tolerance+g.interval-st.a)/g.interval, 0),
		Reset:     time.Duration(st.a - now),
	}
}

func (g *gcra) idle(st *state, now int64) bool {
	return st.a <= now
}

// fixedWindow counts requests in windows of one period aligned to the Unix
// epoch and admits limit per window. It is the cheapest algorithm but lets
// up to 2*limit through around a window edge: limit at the end of one window
// and limit again at the start of the next. burst is ignored.
//
// state: a = window index, b = requests admitted in it.
type fixedWindow struct {
	limit  int64
	period int64
}

func (fw *fixedWindow) allow(st *state, now int64) Decision {
	if w := floorDiv(now, fw.period); w > st.a {
		// A clock that stepped back keeps counting in the newer window.
		st.a, st.b = w, 0
	}
	reset := time.Duration(max((st.a+1)*fw.period-now, 0))
	if st.b >= fw.limit {
		return Decision{Limit: fw.limit, RetryAfter: max(reset, 1), Reset: reset}
	}
	st.b++
	return Decision{Allowed: true, Limit: fw.limit, Remaining: fw.limit - st.b, Reset: reset}
}

func (fw *fixedWindow) idle(st *state, now int64) bool {
	return st.b == 0 || floorDiv(now, fw.period) > st.a
}

// slidingWindow is the two-window approximation used by Kong and Cloudflare:
// it keeps the counts of the current and the previous fixed window and
// estimates the count over the last period as
//
//	previous*(period-elapsed)/period + current
//
// admitting a request while that estimate stays within limit. It removes
// fixed window's edge burst (a full previous window blocks the start of the
// next one), but it assumes the previous window's requests were spread
// evenly: when they were bunched at its end, a true sliding window of one
// period can see more than limit (up to nearly 2*limit in the adversarial
// worst case; Cloudflare measured 0.003% of requests misjudged on real
// traffic). burst is ignored.
//
// state: a = current window index, b = its count, c = the previous window's count.
type slidingWindow struct {
	limit  int64
	period int64
}

func (sw *slidingWindow) roll(st *state, now int64) {
	w := floorDiv(now, sw.period)
	switch {
	case w <= st.a:
		// Same window, or a clock that stepped back: keep counting.
	case w == st.a+1:
		st.a, st.b, st.c = w, 0, st.b
	default:
		st.a, st.b, st.c = w, 0, 0
	}
}

func (sw *slidingWindow) allow(st *state, now int64) Decision {
	sw.roll(st, now)
	p := float64(sw.period)
	elapsed := min(max(now-st.a*sw.period, 0), sw.period)
	weight := float64(sw.period-elapsed) / p
	est := float64(st.c)*weight + float64(st.b)
	limit := float64(sw.limit)
	if est+1 > limit {
		return Decision{
			Limit:      sw.limit,
			RetryAfter: max(sw.retryAfter(st, elapsed), 1),
			Reset:      sw.reset(st, now),
		}
	}
	st.b++
	return Decision{
		Allowed:   true,
		Limit:     sw.limit,
		Remaining: max(int64(math.Floor(limit-est-1)), 0),
		Reset:     sw.reset(st, now),
	}
}

// retryAfter is the time until the estimate leaves room for one request.
func (sw *slidingWindow) retryAfter(st *state, elapsed int64) time.Duration {
	p := float64(sw.period)
	if st.b+1 <= sw.limit {
		// Room in this window once enough of the previous one has slid out:
		// c*(p-e)/p <= limit-b-1.
		e := p * (1 - float64(sw.limit-st.b-1)/float64(st.c))
		return time.Duration(math.Ceil(e - float64(elapsed)))
	}
	// This window is full; in the next one it becomes the previous window.
	e := p * (1 - float64(sw.limit-1)/float64(st.b))
	return time.Duration(float64(sw.period-elapsed) + math.Ceil(e))
}

// reset is the time until both windows have slid out.
func (sw *slidingWindow) reset(st *state, now int64) time.Duration {
	end := (st.a + 1) * sw.period
	if st.b > 0 {
		end += sw.period
	}
	return time.Duration(max(end-now, 0))
}

func (sw *slidingWindow) idle(st *state, now int64) bool {
	w := floorDiv(now, sw.period)
	return (st.b == 0 && st.c == 0) || w >= st.a+2 || (w == st.a+1 && st.b == 0)
}

// floorDiv is a/b rounded toward negative infinity, for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
