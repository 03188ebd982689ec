package proxy

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// Entry is where a matched route's requests start: the route's
// middleware chain, which ends in its Route. When the route has metrics,
// the entry measures every request it serves, whoever answers it (the
// upstream, a rate limit, authentication, a breaker's fallback): its
// status, body bytes each way and duration.
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

// ServeHTTP serves r as Handler does once r matched the route. The
// request's X-Request-Id, if any, is passed on as it is.
func (e *Entry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.serve(w, r, "")
}

// serve measures the request, if the route has metrics, and runs it; newID
// is the request id Handler generated, as for Route.serve.
func (e *Entry) serve(w http.ResponseWriter, r *http.Request, newID string) {
	rm := e.route.metrics
	if rm == nil {
		e.dispatch(w, r, newID)
		return
	}
	start := time.Now()
	rm.Begin()
	m := meters.Get().(*meter)
	m.ResponseWriter = w
	// Deferred: an upstream response cut midway ends the handler with a
	// panic (http.ErrAbortHandler), which must not leave the request in
	// flight.
	defer func() {
		rm.End(r.Method, m.status, m.written, time.Since(start))
		*m = meter{}
		meters.Put(m)
	}()
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = rm.CountBody(r.Body)
	}
	e.dispatch(m, r, newID)
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
// serves, to learn the final status and count the body bytes written.
// Unwrap keeps http.ResponseController (flush, deadlines) working
// through it. It is pooled: nothing keeps it past the handler's return,
// as a transport may keep a request (never a ResponseWriter).
type meter struct {
	http.ResponseWriter
	status  int // the first final status; 101 for a hijacked connection
	written int64
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
