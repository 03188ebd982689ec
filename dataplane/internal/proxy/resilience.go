package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// headerBreaker tells a client that a breaker answered, not the upstream.
const headerBreaker = "X-Meridian-Breaker"

var (
	breakerOpen     = []string{breaker.Open.String()}[:1:1]
	breakerHalfOpen = []string{breaker.HalfOpen.String()}[:1:1]

	bodyBreakerOpen     = []byte(`{"error":"circuit breaker open"}` + "\n")
	bodyBreakerHalfOpen = []byte(`{"error":"circuit breaker half-open"}` + "\n")
	bodyBadBody         = []byte(`{"error":"could not read request body"}` + "\n")
	bodyBodyTimeout     = []byte(`{"error":"request body timeout"}` + "\n")
)

// fallback is a compiled CircuitBreakerSpec.fallback.
type fallback struct {
	status int
	body   []byte
	header []headerValue
}

// newFallback compiles f; nil keeps the default JSON answer. A status
// outside 200-599 (0 included) is 503.
func newFallback(f *meridianv1.Fallback) *fallback {
	if f == nil {
		return nil
	}
	fb := &fallback{status: int(f.GetStatus()), body: []byte(f.GetBody()), header: sortedValues(f.GetHeaders())}
	if fb.status < 200 || fb.status > 599 {
		fb.status = http.StatusServiceUnavailable
	}
	return fb
}

// rejected reports whether err is a breaker's refusal.
func rejected(err error) bool {
	return errors.Is(err, breaker.ErrOpen) || errors.Is(err, breaker.ErrHalfOpenFull)
}

// writeFallback answers a request a breaker refused with err, before any
// upstream was tried: the fallback, or a 503 JSON error, with
// X-Meridian-Breaker: open or half-open.
func (rt *Route) writeFallback(w http.ResponseWriter, newID string, lean bool, err error) {
	h := w.Header()
	if lean && newID != "" {
		h[headerRequestID] = []string{newID}
	}
	state, body := breakerOpen, bodyBreakerOpen
	if errors.Is(err, breaker.ErrHalfOpenFull) {
		state, body = breakerHalfOpen, bodyBreakerHalfOpen
	}
	h[headerBreaker] = state
	fb := rt.fallback
	if fb == nil {
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	for _, kv := range fb.header {
		h[kv.key] = kv.values
	}
	w.WriteHeader(fb.status)
	if len(fb.body) > 0 {
		w.Write(fb.body) //nolint:errcheck // the client may be gone; nothing to do
	}
}

// try is one attempt's claim: its target and, when a breaker guards the
// attempt, the breaker and its ticket, to Record exactly once.
type try struct {
	target  *upstream.Target
	breaker *breaker.Breaker
	ticket  breaker.Ticket
}

// admit claims an attempt starting at now: the route's breaker must admit
// it, then a target is picked whose own breaker (scope target) admits it.
// A target in tried, or refused by its breaker, is given back and another
// picked, up to rt.picks times; the last pick is kept even if tried. The
// error is the pool's (no healthy target) or the last breaker refusal.
func (rt *Route) admit(r *http.Request, now time.Time, tried []*upstream.Target) (try, error) {
	var a try
	if b := rt.breaker; b != nil {
		tk, err := b.AllowAt(now)
		if err != nil {
			return a, err
		}
		a.breaker, a.ticket = b, tk
	}
	picks := 1
	if len(tried) > 0 || rt.targetBreaker != nil {
		picks = rt.picks
	}
	var refused error
	for i := range picks {
		t, err := rt.pool.Pick(r)
		if err != nil {
			refused = err
			break
		}
		if i < picks-1 && slices.Contains(tried, t) {
			rt.pool.Done(t, upstream.Outcome{})
			continue
		}
		if a.breaker == nil && rt.targetBreaker != nil {
			if b := rt.targetBreaker(t.Address()); b != nil {
				tk, err := b.AllowAt(now)
				if err != nil {
					rt.pool.Done(t, upstream.Outcome{})
					refused = err
					continue
				}
				a.breaker, a.ticket = b, tk
			}
		}
		a.target = t
		return a, nil
	}
	if a.breaker != nil {
		// The route's breaker admitted a request no target can take: give
		// the ticket back, it says nothing about the upstream's answers.
		a.breaker.Record(a.ticket, breaker.Canceled, 0)
	}
	return try{}, refused
}

// recordStatus reports to the attempt's breaker, if any, that a response
// with this status arrived after latency.
func (a *try) recordStatus(status int, latency time.Duration) {
	b := a.breaker
	if b == nil {
		return
	}
	o := breaker.Success
	if b.IsFailureStatus(status) {
		o = breaker.Failure
	}
	b.Record(a.ticket, o, latency)
	a.breaker = nil
}

// recordFailure reports to the attempt's breaker, if any, that it failed
// without a response.
func (a *try) recordFailure(f failure, latency time.Duration) {
	b := a.breaker
	if b == nil {
		return
	}
	var o breaker.Outcome
	switch {
	case f.kind == failDeadline, f.kind == failTimeout:
		o = breaker.Timeout
	case f.clients():
		o = breaker.Canceled
	default:
		o = breaker.Failure
	}
	b.Record(a.ticket, o, latency)
	a.breaker = nil
}

// failKind is why an attempt got no response.
type failKind uint8

const (
	// failReset: the connection broke before a whole response header
	// arrived (reset, closed by the upstream, a protocol error).
	failReset failKind = iota
	// failConnect: no connection (refused, unreachable, connect timeout,
	// TLS handshake failure).
	failConnect
	// failTimeout: a transport timeout while the route's deadline had not
	// passed.
	failTimeout
	// failDeadline: the route's timeout expired.
	failDeadline
	// failCanceled: the client went away.
	failCanceled
	// failTooLarge: the client's body passed the route's limit.
	failTooLarge
	// failProtocol: the upstream answered in a way the proxy refuses.
	failProtocol
	// failBadBody: the client's body could not be read (a malformed
	// chunk, say).
	failBadBody
	// failBodyTimeout: the client's body stopped arriving: the attempt
	// ended while the transport waited for more of it.
	failBodyTimeout
)

// outcome is the attempt failure metrics report for k.
func (k failKind) outcome() metrics.AttemptFailure {
	switch k {
	case failConnect:
		return metrics.ConnectFailure
	case failTimeout, failDeadline:
		return metrics.Timeout
	case failCanceled:
		return metrics.Canceled
	case failTooLarge:
		return metrics.BodyTooLarge
	case failProtocol:
		return metrics.ProtocolError
	case failBadBody:
		return metrics.BadRequestBody
	case failBodyTimeout:
		return metrics.RequestBodyTimeout
	}
	return metrics.Reset
}

// failure is a classified attempt error and the answer it gets.
type failure struct {
	kind    failKind
	timeout bool // a timeout, including a connect timeout
	status  int
	body    []byte
}

// classify says why an attempt on r (the outgoing request, whose context
// carries the route's deadline) failed with err, body being the client's
// body as the transport read it (nil: none). The status says whose fault
// it was: 400 or 408 the client's body (broken, or stalled), 413 the
// client's body too long, 502 a connect failure or reset, 504 a timeout.
func classify(r *http.Request, err error, body *clientBody) failure {
	if f, ok := body.fault(); ok {
		return f
	}
	var tooLarge *http.MaxBytesError
	var opErr *net.OpError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var alert tls.AlertError
	ctxErr := r.Context().Err()
	timeout := errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout()
	switch {
	case errors.As(err, &tooLarge):
		return failure{kind: failTooLarge, status: http.StatusRequestEntityTooLarge, body: bodyTooLarge}
	case errors.Is(ctxErr, context.Canceled):
		// The status is what the client would have got; it is gone.
		return failure{kind: failCanceled, status: http.StatusBadGateway, body: bodyBadGateway}
	case ctxErr != nil:
		return failure{kind: failDeadline, timeout: true, status: http.StatusGatewayTimeout, body: bodyGatewayTime}
	case errors.As(err, &opErr) && opErr.Op == "dial", errors.As(err, &certErr), errors.As(err, &alert):
		return failure{kind: failConnect, timeout: timeout, status: http.StatusBadGateway, body: bodyConnectFailed}
	case timeout:
		return failure{kind: failTimeout, timeout: true, status: http.StatusGatewayTimeout, body: bodyGatewayTime}
	case errors.Is(err, errSwitching):
		return failure{kind: failProtocol, status: http.StatusBadGateway, body: bodyBadGateway}
	}
	return failure{kind: failReset, status: http.StatusBadGateway, body: bodyBadGateway}
}

// clients reports whether the failure was the client's doing.
func (f failure) clients() bool {
	switch f.kind {
	case failCanceled, failTooLarge, failBadBody, failBodyTimeout:
		return true
	}
	return false
}

// poolOutcome is what a failed attempt tells the pool about its target.
func (f failure) poolOutcome(err error, latency time.Duration) upstream.Outcome {
	switch {
	case f.kind == failTooLarge:
		return upstream.Outcome{Status: f.status, Latency: latency} // the client's fault
	case f.clients():
		// Nothing about the target: passive health and outlier
		// ejection ignore it.
		return upstream.Outcome{Err: context.Canceled, Latency: latency}
	}
	return upstream.Outcome{Err: err, Latency: latency}
}
