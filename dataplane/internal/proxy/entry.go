package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Entry is where a matched route's requests start: the route's
// middleware chain, which ends in its Route. When the route has metrics
// or the access log is on, the entry measures every request it serves,
// whoever answers it (the upstream, a rate limit, authentication, a
// breaker's fallback): its status, body bytes each way and duration.
type Entry struct {
	route *Route
	chain http.Handler // the route's middleware, then route; nil when it has none
}

// NewEntry returns the entry of rt, whose requests chain serves: rt's
// middleware in front of rt, or rt itself.
func NewEntry(rt *Route, chain http.Handler) *Entry {
	e := &Entry{route: rt, chain: chain}
	if h, ok := chain.(*Route); ok && h == rt {
		e.chain = nil
	}
	return e
}

// ServeHTTP serves r as Handler does once r matched the route, access
// log aside. The request's X-Request-Id, if any, is passed on as it is.
func (e *Entry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.serve(w, r, "", nil, nil)
}

// serve measures the request, if the route has metrics or al (the access
// log) is set or tr traces it, and runs it; newID is the request id
// Handler generated, as for Route.serve. One measurement feeds all.
func (e *Entry) serve(w http.ResponseWriter, r *http.Request, newID string, al *accessLog, tr *tracer) {
	rm := e.route.metrics
	if rm == nil && al == nil && tr == nil {
		e.dispatch(w, r, newID)
		return
	}
	var span trace.Span
	var tc trace.SpanContext
	if tr != nil {
		// Before the meter is set up: the access log and the route see
		// the request carrying the span, when it records.
		r, span, tc = tr.startServer(w, r, e.route.name, e.route.pool.Name())
	}
	start := time.Now()
	rm.Begin()
	m := meters.Get().(*meter)
	m.ResponseWriter = w
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = rm.CountBody(r.Body)
		if al != nil {
			m.bodyIn = &bodyCount{ReadCloser: r.Body}
			r.Body = m.bodyIn
		}
	}
	// The route notes attempts and failures on the meter for the access
	// log and for the server span's error.type alike, and finds the
	// trace context to send upstream there.
	m.noting = al != nil || tr != nil
	m.trace = tc
	if al != nil {
		// Read now: middleware may edit the header map on the way.
		m.requestID = newID
		if ids := r.Header[headerRequestID]; newID == "" && len(ids) > 0 {
			m.requestID = ids[0]
		}
		if ua := r.Header["User-Agent"]; len(ua) > 0 {
			m.userAgent = ua[0]
		}
	}
	completed := false
	// Deferred: an upstream response cut midway ends the handler with a
	// panic (http.ErrAbortHandler), which must not leave the request in
	// flight, nor unlogged.
	defer func() {
		// One clock read, the monotonic one: the end's wall time is the
		// start's plus the duration.
		d := time.Since(start)
		now := start.Add(d)
		rm.End(r.Method, m.status, m.written, d)
		if al != nil {
			if !completed && m.failure == "" {
				m.failure = errResponseAborted
			}
			if completed && m.status == 0 {
				m.status = http.StatusOK // what net/http sends for a handler that wrote nothing
			}
			al.routed(r, e.route, m, now, d)
		}
		if span != nil {
			status := m.status
			if completed && status == 0 {
				status = http.StatusOK
			}
			endServer(span, status, m.failure)
		}
		*m = meter{}
		meters.Put(m)
	}()
	e.dispatch(m, r, newID)
	completed = true
}

func (e *Entry) dispatch(w http.ResponseWriter, r *http.Request, newID string) {
	if e.chain == nil {
		e.route.serve(w, r, newID)
		return
	}
	if newID != "" {
		ids := []string{newID}
		r.Header[headerRequestID] = ids
		w.Header()[headerRequestID] = ids
	}
	e.chain.ServeHTTP(w, r)
}

// meter wraps the client's ResponseWriter for one request an Entry
// serves, to learn the final status and count the body bytes written;
// with the access log or tracing on, the route also notes on it what it
// learnt about the upstream and finds the trace context to pass on (see
// recorderOf). Unwrap keeps http.ResponseController (flush, deadlines)
// working through it. It is
// pooled: nothing keeps it past the handler's return, as a transport may
// keep a request (never a ResponseWriter).
type meter struct {
	http.ResponseWriter
	status  int // the first final status; 101 for a hijacked connection
	written int64

	// What the route notes, only when noting: for the access log and
	// the tracing.
	noting    bool
	trace     trace.SpanContext // the server span's; invalid when not traced
	requestID string
	userAgent string
	bodyIn    *bodyCount      // nil: no request body
	ctx       context.Context // the authenticated request's, for the consumer; nil: none seen
	attempts  int
	target    string        // the last attempt's target address
	upstream  time.Duration // the last attempt's time to its response header
	failure   string        // accesslog.Record.Error
}

var meters = sync.Pool{New: func() any { return new(meter) }}

// WriteHeader notes the first final status; 1xx responses pass through.
func (m *meter) WriteHeader(code int) {
	if m.status == 0 && code >= 200 {
		m.status = code
	}
	m.ResponseWriter.WriteHeader(code)
}

// Write counts the bytes written; the first write implies a 200.
func (m *meter) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	n, err := m.ResponseWriter.Write(p)
	m.written += int64(n)
	return n, err
}

// Hijack is how a protocol upgrade (WebSocket) takes the connection
// after the upstream's 101, which is written to the connection, not
// through WriteHeader.
func (m *meter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(m.ResponseWriter).Hijack()
	if err == nil && m.status == 0 {
		m.status = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

// Unwrap returns the client's ResponseWriter.
func (m *meter) Unwrap() http.ResponseWriter { return m.ResponseWriter }

// recorderOf returns the meter of the request w answers when the access
// log records it or it is traced, so the route can note what it learnt
// there and find its trace context; nil otherwise. Middleware wrapping
// the writer is seen through if it has an Unwrap method, as
// http.ResponseController does.
func recorderOf(w http.ResponseWriter) *meter {
	for range 8 {
		switch v := w.(type) {
		case *meter:
			if v.noting {
				return v
			}
			return nil
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return nil
		}
	}
	return nil
}

// Authenticated notes r, whose context carries the verified JWT identity,
// for the access log line of the request w answers, so that middleware
// answering after authentication (a rate limit's 429) is logged with the
// consumer. The route notes the requests it serves itself; this is for
// the middleware in between.
func Authenticated(w http.ResponseWriter, r *http.Request) {
	if m := recorderOf(w); m != nil {
		m.ctx = r.Context()
	}
}

// attempt notes an upstream attempt: the n-th, to target, answered (or
// failed) after latency. It does nothing on a nil meter.
func (m *meter) attempt(n int, target string, latency time.Duration) {
	if m == nil {
		return
	}
	m.attempts, m.target, m.upstream = n, target, latency
}

// traceContext returns the server span's context, invalid on a nil meter
// or an untraced request.
func (m *meter) traceContext() trace.SpanContext {
	if m == nil {
		return trace.SpanContext{}
	}
	return m.trace
}

// fail notes why the gateway answered itself; nothing on a nil meter.
func (m *meter) fail(reason string) {
	if m == nil {
		return
	}
	m.failure = reason
}

// bodyCount counts the request body bytes read, for the access log. It is
// never pooled and n is atomic: a transport may still read the body after
// the handler returned.
type bodyCount struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *bodyCount) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.n.Add(int64(n))
	}
	return n, err
}
