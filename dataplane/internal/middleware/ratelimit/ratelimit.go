// Package ratelimit is the per-route rate limiting middleware: it applies a
// route's RateLimits, in the order of its spec.rateLimits, to each request,
// and answers 429 when a limit that is not in shadow mode is exceeded.
//
// Responses carry the RateLimit and RateLimit-Policy header fields of
// draft-ietf-httpapi-ratelimit-headers-10 (the structured-field form
// introduced in -08: a named policy with q and w parameters, and the live
// r and t of that policy), for the most restrictive limit the request
// crossed:
//
//	RateLimit-Policy: "per-user";q=100;w=1
//	RateLimit: "per-user";r=42;t=1
//
// w and t are whole seconds rounded up, as the draft's integers require.
package ratelimit

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/local"
)

// Limiter decides one request for a key at a time. ctx is the request's:
// a limiter that asks a remote store bounds the call by it.
type Limiter interface {
	Allow(ctx context.Context, key string, now time.Time) local.Decision
}

// Limit is one RateLimit as applied to one route.
type Limit struct {
	// Name is the RateLimit's name, reported in headers, bodies and logs.
	Name string
	// Key turns a request into its bucket key.
	Key Key
	// Limiter holds the buckets; it is shared by every route that names
	// the RateLimit.
	Limiter Limiter
	// Period is the spec's period, reported as the policy's window.
	Period time.Duration
	// Shadow counts and reports but never rejects.
	Shadow bool
	// Metrics records the limit's decisions; nil: none.
	Metrics *metrics.RateLimit
}

// Options are the middleware's collaborators.
type Options struct {
	// Route is the route's name, for logs.
	Route string
	// Log receives shadow-mode rejections at debug level; nil discards.
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Handler applies a route's limits before calling the next handler.
type Handler struct {
	limits []limit
	next   http.Handler
	route  string
	log    *slog.Logger
	now    func() time.Time
	// bufs holds composite-key buffers, so building one costs only the
	// final string.
	bufs sync.Pool
}

// limit is a Limit with its constant answer parts rendered once.
type limit struct {
	Limit
	sfName string // the name as a structured-field string
	window string // the RateLimit-Policy ";w=<seconds>" parameter
	body   []byte // the 429 body
}

// New returns a Handler applying limits, in order, in front of next.
func New(limits []Limit, opts Options, next http.Handler) *Handler {
	h := &Handler{next: next, route: opts.Route, log: opts.Log, now: opts.Now}
	for _, l := range limits {
		name, _ := json.Marshal(l.Name) // a string always marshals
		sf := sfString(l.Name)
		h.limits = append(h.limits, limit{
			Limit:  l,
			sfName: sf,
			window: ";w=" + strconv.FormatInt(max(1, seconds(l.Period)), 10),
			body:   []byte(`{"error":"rate limited","limit":` + string(name) + "}\n"),
		})
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.bufs.New = func() any { b := make([]byte, 0, 128); return &b }
	return h
}

// ServeHTTP decides r against each limit in order with one clock reading.
// The first enforcing limit that is exceeded answers 429 and the later ones
// are not consulted, so a rejected request does not spend their quota.
//
// A limit in queue mode admits a request over the rate with a Wait: its
// reserved turn. The request proceeds once every limit's turn has come
// (the longest Wait); a client that goes away while waiting gets nothing.
// Shadow limits never delay.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := h.now()
	ctx := r.Context()
	var (
		best    local.Decision
		bestIdx = -1
		wait    time.Duration
	)
	for i := range h.limits {
		l := &h.limits[i]
		d := l.Limiter.Allow(ctx, h.key(&l.Key, r), now)
		if !d.Allowed && !l.Shadow {
			l.Metrics.Decision(metrics.LimitRejected)
			writeHeaders(w.Header(), l, d)
			reject(w, l, d)
			return
		}
		switch {
		case !d.Allowed:
			l.Metrics.Decision(metrics.LimitShadowRejected)
			if h.log != nil {
				h.log.LogAttrs(ctx, slog.LevelDebug, "rate limit exceeded in shadow mode",
					slog.String("route", h.route), slog.String("limit", l.Name))
			}
		case d.Wait > 0 && !l.Shadow:
			l.Metrics.Decision(metrics.LimitQueued)
		default:
			l.Metrics.Decision(metrics.LimitAllowed)
		}
		if !l.Shadow {
			wait = max(wait, d.Wait)
		}
		if bestIdx < 0 || moreRestrictive(d, best) {
			best, bestIdx = d, i
		}
	}
	if bestIdx >= 0 {
		writeHeaders(w.Header(), &h.limits[bestIdx], best)
	}
	if wait > 0 && !sleep(ctx, wait) {
		return
	}
	h.next.ServeHTTP(w, r)
}

// sleep waits for d and reports whether ctx was still live at the end.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// key returns r's bucket key under k.
func (h *Handler) key(k *Key, r *http.Request) string {
	if k.single() {
		return k.value(k.parts[0], r)
	}
	bp := h.bufs.Get().(*[]byte)
	b := k.appendComposite((*bp)[:0], r)
	s := string(b)
	if cap(b) <= 4096 {
		// Oversized buffers (huge header values) are dropped rather than
		// pinned in the pool.
		*bp = b
		h.bufs.Put(bp)
	}
	return s
}

// moreRestrictive reports whether a leaves the client less room than b:
// fewer requests remaining, or as few for longer.
func moreRestrictive(a, b local.Decision) bool {
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.Reset > b.Reset
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

func writeHeaders(hdr http.Header, l *limit, d local.Decision) {
	// q comes from the decision so an overflow or future store can report
	// the quota it actually applied; w is constant per limit.
	hdr.Set("RateLimit-Policy", l.sfName+";q="+strconv.FormatInt(d.Limit, 10)+l.window)
	hdr.Set("RateLimit", l.sfName+";r="+strconv.FormatInt(d.Remaining, 10)+";t="+strconv.FormatInt(seconds(d.Reset), 10))
}

func reject(w http.ResponseWriter, l *limit, d local.Decision) {
	hdr := w.Header()
	// Retry-After 0 would invite an immediate retry that fails again.
	hdr.Set("Retry-After", strconv.FormatInt(max(1, seconds(d.RetryAfter)), 10))
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = w.Write(l.body)
}

// sfString renders s as a structured-field string (RFC 9651 §3.3.3).
// Resource names are validated to plain ASCII, so escaping is a guard.
func sfString(s string) string {
	if !strings.ContainsAny(s, `"\`) {
		return `"` + s + `"`
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
