package proxy

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"go.opentelemetry.io/otel/trace"
)

// RouteConfig is what NewRoute needs to build one route's handler.
type RouteConfig struct {
	Name string
	Spec *meridianv1.RouteSpec
	// Pool is the route's upstream.
	Pool *upstream.Pool
	// Buffers is shared by every route.
	Buffers *BufferPool
	// Log receives upstream errors.
	Log *slog.Logger
	// ErrorLog receives net/http's own proxy messages; nil uses Log.
	ErrorLog *log.Logger
	// Breaker guards the route when its CircuitBreaker has scope upstream or
	// route; nil: none.
	Breaker *breaker.Breaker
	// TargetBreaker returns the breaker of one target address when the
	// CircuitBreaker has scope target; nil: none. It returns nil for an
	// address it does not know. Breaker takes precedence when both are set.
	TargetBreaker func(address string) *breaker.Breaker
	// Fallback is what a rejecting breaker answers; nil: 503 with a JSON
	// error body.
	Fallback *meridianv1.Fallback
	// Metrics records the route's requests and upstream attempts; nil:
	// none.
	Metrics *metrics.Route
	// Hop is the data plane's identity, added to the Via header of every
	// request sent upstream; nil: none.
	Hop *Hop
	// ResponseHeaderTimeout bounds each attempt's wait for its response
	// to begin when the spec sets no timeout; 0:
	// upstream.DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// BodyReadTimeout bounds the wait between two reads of a request body
	// (--body-read-timeout); 0: none. Long-lived streams (gRPC, see
	// longLived) are not bounded.
	BodyReadTimeout time.Duration
	// SendTimeout bounds each write of a response body to an HTTP/2
	// stream (--send-timeout), which flow control can hold back while the
	// connection itself is writable; 0: none. HTTP/1 connections are
	// bounded by the listener (server.GuardConfig.SendTimeout).
	SendTimeout time.Duration
}

// Route forwards the requests of one route to its upstream. It is
// immutable; a new configuration builds new Routes.
//
// Ordinary exchanges with an HTTP/1.1 or HTTPS upstream take the lean path
// (forward.go); the others go through httputil.ReverseProxy.
//
// The route timeout bounds a whole exchange (until the response body is
// sent) of ordinary requests, retries and the waits between them
// included; when it expires before a response, the client gets a 504. It
// is not applied to requests that open a long-lived stream: protocol
// upgrades (WebSocket), gRPC calls (they carry their own grpc-timeout
// deadline) and server-sent events subscriptions (Accept:
// text/event-stream). Connecting is bounded by the upstream's
// timeouts.connect, in its transport's dialer. A route without a timeout
// bounds each attempt's wait for its response to begin instead
// (RouteConfig.ResponseHeaderTimeout, see loop.go); what follows the
// response header is not bounded.
//
// A circuit breaker (RouteConfig.Breaker, or TargetBreaker per target) is
// asked before every attempt. A refusal of the first attempt answers the
// fallback (default: 503 {"error":"circuit breaker open"}) with
// X-Meridian-Breaker: open or half-open, and nothing reaches the upstream;
// with scope target another target is picked first, a few times at most.
// The outcome is recorded when the response header arrives (latency: time
// to header), so a streamed body never counts as in flight: a status the
// breaker's failureStatuses lists, a connect failure or a reset is a
// Failure, the route timeout (or another transport timeout) a Timeout, a
// client gone away Canceled, anything else a Success.
//
// Retries (spec.retry) happen on the lean path only; requests that take
// ReverseProxy (upgrades, gRPC, Expect: 100-continue, queries it would
// re-encode, h2c upstreams) are tried once. attempts is the number of
// retries after the first try (at most MaxRetries). Conditions (spec.retry.on,
// default connect_failure and reset):
//   - connect_failure: no connection (refused, unreachable, connect timeout,
//     TLS handshake failure);
//   - reset: the connection broke before a whole response header arrived;
//   - timeout: a transport timeout before the route's deadline (a connect
//     or TLS handshake timeout), or on a route without a timeout, an
//     upstream that did not begin its response within the response
//     header timeout (see loop.go). There is no other per-attempt timeout: an
//     attempt cut by the route timeout ends the request with a 504 and is
//     never retried, and an upstream's own 504 is retried by "504",
//     gateway_error or 5xx;
//   - 5xx: a response status of 500-599; gateway_error: 502, 503 or 504.
//     Both also retry an attempt that got no response at all (which the
//     gateway would answer with 502 or 504);
//   - "503" and the like: a response with that status.
//
// Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are
// retried unless spec.retry.nonIdempotent. A request body is buffered for
// replay when its length is known and at most MaxReplayBody (or
// spec.maxBodyBytes if smaller); a longer or chunked body is sent once,
// streamed, and never retried. Each retry waits a full-jitter backoff,
// uniform in [0, min(max, base·2ⁿ)) before retry n (base 25ms when unset,
// 0s for none; max 10×base when unset), goes to a target not tried yet when
// the upstream has one, and is asked of the breaker again. Retries may add
// at most spec.retry.budgetPercent (default 20) percent to the route's
// requests that went upstream in the last second, or 3 retries in that
// second if that is more; a one-second window keeps a healthy spell from
// lending an outage that follows it extra retries.
//
// When a wanted retry is not made (no attempts left, no budget, the
// breaker open or refusing, no healthy target, or the backoff would end
// past the route's deadline) the client gets the last attempt's result:
// the upstream's response, or the 502/504 its failure maps to. Only a
// client gone away or the deadline passing during the backoff wait itself
// ends the request differently (nothing, or a 504).
type Route struct {
	name        string
	pool        *upstream.Pool
	timeout     time.Duration
	maxBody     int64 // 0: no limit
	stripPrefix string
	addPrefix   string
	path        []pathPart // rewrite.path, nil when unset
	host        string
	request     headerOps
	response    headerOps
	rp          *httputil.ReverseProxy
	buffers     *BufferPool
	lean        bool // the upstream is not h2c, so the lean path may serve
	log         *slog.Logger
	upgrades    upgradeSet // the protocols a client may switch to (upgrade.go)

	breaker       *breaker.Breaker
	targetBreaker func(address string) *breaker.Breaker
	fallback      *fallback    // nil: the default JSON answer
	retry         *retryPolicy // nil: no retries
	guarded       bool         // a breaker or retries: serve reads the clock first
	picks         int          // how many picks admit may make for one attempt

	metrics *metrics.Route // nil: none

	hop           *Hop          // nil: no Via
	headerTimeout time.Duration // bounds the wait for a response; 0 when the route has a timeout
	connWait      bool          // bodiless lean requests are bounded by their connection (gotConnHook)
	gotConnHook   func(httptrace.GotConnInfo)

	bodyTimeout time.Duration // between two reads of a request body; 0: none
	sendTimeout time.Duration // between two writes to an HTTP/2 stream; 0: none
}

// NewRoute builds the handler of one route. Errors are *config.FieldError.
func NewRoute(c RouteConfig) (*Route, error) {
	spec := c.Spec
	rw := spec.GetRewrite()
	rt := &Route{
		name:        c.Name,
		pool:        c.Pool,
		timeout:     spec.GetTimeout().AsDuration(),
		stripPrefix: rw.GetStripPrefix(),
		addPrefix:   rw.GetPrefix(),
		host:        rw.GetHost(),
		request:     compileHeaderOps(spec.GetHeaders().GetRequest()),
		response:    compileHeaderOps(spec.GetHeaders().GetResponse()),
		buffers:     c.Buffers,
		log:         c.Log,

		breaker:  c.Breaker,
		fallback: newFallback(c.Fallback),
		metrics:  c.Metrics,
		upgrades: upgradeSet(config.RouteUpgrades(spec)),
	}
	if c.Breaker == nil {
		rt.targetBreaker = c.TargetBreaker
	}
	// A few picks to find a target not tried yet or whose breaker admits;
	// with one target there is nothing else to find.
	rt.picks = 1
	if n := len(c.Pool.Targets()); n > 1 {
		rt.picks = min(n+1, 4)
	}
	// An h2c upstream keeps ReverseProxy: its transport speaks HTTP/2
	// without TLS, which the lean path is not meant for.
	if p := c.Pool.Transport().Protocols; p == nil || !p.UnencryptedHTTP2() {
		rt.lean = true
	}
	if n := spec.GetMaxBodyBytes(); n > 0 {
		rt.maxBody = int64(min(n, 1<<62))
	}
	if p := rw.GetPath(); p != "" {
		parts, err := parsePathRewrite(p)
		if err != nil {
			return nil, &config.FieldError{Kind: config.KindRoute, Name: c.Name, Path: "spec.rewrite.path", Msg: err.Error()}
		}
		rt.path = parts
	}
	retry, err := newRetryPolicy(c.Name, spec.GetRetry(), rt.maxBody)
	if err != nil {
		return nil, err
	}
	rt.retry = retry
	rt.guarded = rt.breaker != nil || rt.targetBreaker != nil || rt.retry != nil
	rt.hop = c.Hop
	rt.bodyTimeout, rt.sendTimeout = c.BodyReadTimeout, c.SendTimeout
	var transport http.RoundTripper = c.Pool.Transport()
	if rt.timeout <= 0 {
		rt.headerTimeout = cmp.Or(c.ResponseHeaderTimeout, upstream.DefaultResponseHeaderTimeout)
		transport = awaitTransport{rt}
		if rt.lean && c.Pool.ConnDeadlines() {
			rt.connWait = true
			rt.gotConnHook = rt.gotConn // one method value for every request
		}
	}
	errorLog := c.ErrorLog
	if errorLog == nil {
		errorLog = slog.NewLogLogger(c.Log.Handler(), slog.LevelWarn)
	}
	rt.rp = &httputil.ReverseProxy{
		Rewrite:        rt.rewrite,
		Transport:      transport,
		BufferPool:     c.Buffers,
		ErrorHandler:   rt.proxyError,
		ErrorLog:       errorLog,
		ModifyResponse: rt.modifyResponse,
	}
	return rt, nil
}

// Name returns the route's name.
func (rt *Route) Name() string { return rt.name }

// Upstream returns the route's upstream pool.
func (rt *Route) Upstream() *upstream.Pool { return rt.pool }

// ServeHTTP forwards r to a target of the route's upstream and reports the
// attempt's outcome to the pool, which drives passive health checks. The
// request's X-Request-Id, if any, is passed on as it is.
func (rt *Route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt.serve(w, r, "")
}

// serve is ServeHTTP for Handler, which passes the request id it generated
// (newID) so that the id reaches the upstream and the client without
// being stored on r first; "" when the client sent one. Handler has put a
// client's id on the response already.
func (rt *Route) serve(w http.ResponseWriter, r *http.Request, newID string) {
	if len(r.Header[headerUpgrade]) > 0 && !rt.screenUpgrade(w, r, newID) {
		return
	}
	lean := rt.lean && leanRequest(r)
	if newID != "" && !lean {
		ids := []string{newID}
		r.Header[headerRequestID] = ids
		w.Header()[headerRequestID] = ids
	}
	rec := recorderOf(w) // nil unless the access log records the request or it is traced
	if rec != nil {
		rec.ctx = r.Context() // past authentication: the consumer, if any
	}
	if rt.maxBody > 0 && r.ContentLength > rt.maxBody {
		rec.fail(failTooLarge.label())
		rt.writeEarly(w, newID, lean, http.StatusRequestEntityTooLarge, bodyTooLarge)
		return
	}
	p := plan{rec: rec}
	if lean && rt.retry != nil && rt.retry.allows(r) {
		p.retry = true
		if r.ContentLength > 0 && r.Body != nil && r.Body != http.NoBody {
			// Read before the breaker is asked, so that a slow client's
			// upload does not count as the upstream's latency.
			p.replay = make([]byte, r.ContentLength)
			// Before the route's deadline starts: the replay is read
			// first, bounded by the body-read timeout alone.
			body := watchBody(w, r, rt.bodyTimeoutFor(r), time.Time{})
			if _, err := io.ReadFull(body, p.replay); err != nil {
				f, _ := body.fault()
				rec.fail(f.kind.label())
				rt.writeEarly(w, newID, lean, f.status, f.body)
				return
			}
		}
	}
	if rt.guarded {
		p.start = time.Now()
	}
	a, err := rt.admit(r, p.start, nil)
	if err != nil {
		if rejected(err) {
			if errors.Is(err, breaker.ErrHalfOpenFull) {
				rec.fail(errBreakerHalfOpen)
			} else {
				rec.fail(errBreakerOpen)
			}
			rt.writeFallback(w, newID, lean, err)
			return
		}
		// upstream.ErrNoHealthyTarget, the pool's only error: every
		// target is down or ejected (or there is none), so answer now,
		// not queue.
		rec.fail(errNoHealthyTarget)
		rt.writeEarly(w, newID, lean, http.StatusServiceUnavailable, bodyNoHealthy)
		return
	}
	if rt.retry != nil {
		rt.retry.budget.request(p.start)
	}
	if rt.maxBody > 0 && r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		// A body of unknown length (chunked, HTTP/2 without
		// content-length) is cut where it passes the limit; the transport
		// returns the *http.MaxBytesError, answered with 413.
		r.Body = http.MaxBytesReader(w, r.Body, rt.maxBody)
	}
	if lean {
		p.newID = newID
		rt.forward(w, r, a, p)
		return
	}
	// The target travels to rewrite on the request: ReverseProxy clones r
	// and the clone keeps the URL's scheme and host.
	r.URL.Scheme = rt.pool.Scheme()
	r.URL.Host = a.target.Address()

	x := exchanges.Get().(*exchange)
	x.ResponseWriter = w
	x.ids = w.Header()[headerRequestID]
	x.traced = w.Header()[HeaderTraceID]
	x.start = p.start
	if x.start.IsZero() {
		x.start = time.Now()
	}
	x.try = a
	x.rec = rec
	if tc := rec.traceContext(); tc.IsValid() {
		// One attempt: ReverseProxy is never retried. rewrite injects
		// the context the request carries into the upstream request:
		// the attempt span's, or the server span's when unsampled.
		ctx, span := startAttempt(r.Context(), tc, r.Method, a.target.Address(), 1)
		if span == nil {
			ctx = trace.ContextWithSpanContext(ctx, tc)
		}
		x.span = span
		r = r.WithContext(ctx)
	}
	defer rt.finish(x, a.target)
	if rt.timeout > 0 && !longLived(r) {
		ctx, cancel := context.WithTimeout(r.Context(), rt.timeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		until, _ := r.Context().Deadline()
		x.body = watchBody(w, r, rt.bodyTimeoutFor(r), until)
		x.body.closeThrough = true
		r.Body = x.body
	}
	rt.rp.ServeHTTP(x, r)
}

// plan is what serve decided about a request before its first attempt.
type plan struct {
	newID  string    // a request id the gateway generated, or ""
	start  time.Time // when the first attempt was admitted; zero if the route is not guarded
	retry  bool      // the policy, the method and the body allow retries
	replay []byte    // the buffered request body of a retryable request, or nil
	rec    *meter    // notes attempts for the access log; nil when it is off
}

// writeEarly answers before any upstream was tried. On the lean path the
// generated request id is not on the response yet.
func (rt *Route) writeEarly(w http.ResponseWriter, newID string, lean bool, status int, body []byte) {
	if lean && newID != "" {
		w.Header()[headerRequestID] = []string{newID}
	}
	writeJSON(w, status, body)
}

// finish reports the attempt to the pool. It also runs when ReverseProxy
// aborts a response midway with http.ErrAbortHandler.
func (rt *Route) finish(x *exchange, t *upstream.Target) {
	o := upstream.Outcome{Err: x.err, Status: x.status, Latency: x.latency}
	if o.Err == nil && o.Status == 0 {
		// A protocol switch hijacks the connection without WriteHeader.
		o.Status = http.StatusSwitchingProtocols
		o.Latency = time.Since(x.start)
	}
	x.rec.attempt(1, t.Address(), o.Latency)
	if x.failed {
		x.rec.fail(x.failure.label())
		rt.metrics.AttemptFailed(x.failure.outcome())
	} else {
		rt.metrics.AttemptResponse(o.Status, o.Latency)
	}
	if x.try.breaker != nil {
		// Neither a status nor an error: an aborted response.
		x.try.recordFailure(failure{kind: failCanceled}, time.Since(x.start))
	}
	if x.span != nil {
		failure := ""
		if x.failed {
			failure = x.failure.label()
		}
		endAttempt(x.span, o.Status, failure)
	}
	rt.pool.Done(t, o)
	*x = exchange{}
	exchanges.Put(x)
}

// bodyTimeoutFor is the wait allowed between two reads of r's body: none
// for a long-lived stream, whose client may rightly pause.
func (rt *Route) bodyTimeoutFor(r *http.Request) time.Duration {
	if longLived(r) {
		return 0
	}
	return rt.bodyTimeout
}

// longLived reports whether r opens a stream the route timeout must not
// cut.
func longLived(r *http.Request) bool {
	h := r.Header
	if len(h["Upgrade"]) > 0 {
		return true
	}
	if ct := h[headerContentType]; len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc") {
		return true
	}
	if a := h["Accept"]; len(a) > 0 && strings.Contains(a[0], "text/event-stream") {
		return true
	}
	return false
}

// exchange wraps the client's ResponseWriter for one proxied request, to
// learn what the upstream attempt did: the status it answered or the error
// that stopped it. Unwrap keeps http.ResponseController (flush, hijack)
// working through it.
type exchange struct {
	http.ResponseWriter
	ids     []string // the response's X-Request-Id
	traced  []string // the response's X-Trace-Id
	start   time.Time
	latency time.Duration
	status  int
	err     error
	try     try         // its breaker, if any, is recorded with the first final status
	rec     *meter      // the access log's, or nil
	body    *clientBody // the client's request body; nil: none
	// failed is set when no response could be relayed; failure says why.
	failed  bool
	failure failKind
	span    trace.Span // the attempt's client span; nil when not traced
}

var exchanges = sync.Pool{New: func() any { return new(exchange) }}

// WriteHeader records the first final status; 1xx other than 100 are
// passed on as is.
func (x *exchange) WriteHeader(code int) {
	if code == http.StatusContinue {
		// The server sends its own 100 Continue when the transport starts
		// reading the client's body, which it does only after the
		// upstream's 100 (or ExpectContinueTimeout). Relaying the
		// upstream's too races with it and can send the client two.
		return
	}
	if x.status == 0 && code >= 200 {
		x.status = code
		x.latency = time.Since(x.start)
		x.recordStatus()
		// ReverseProxy clears the header map after relaying a 1xx.
		h := x.Header()
		if x.ids != nil && h[headerRequestID] == nil {
			h[headerRequestID] = x.ids
		}
		if x.traced != nil && h[HeaderTraceID] == nil {
			h[HeaderTraceID] = x.traced
		}
	}
	x.ResponseWriter.WriteHeader(code)
}

// Write records an implicit 200.
func (x *exchange) Write(p []byte) (int, error) {
	if x.status == 0 {
		x.status = http.StatusOK
		x.latency = time.Since(x.start)
		x.recordStatus()
	}
	return x.ResponseWriter.Write(p)
}

// recordStatus reports the relayed status to the breaker, if any.
func (x *exchange) recordStatus() {
	x.try.recordStatus(x.status, x.latency)
}

// Hijack is how ReverseProxy takes over the connection after a 101
// Switching Protocols: the upgrade succeeded, so the breaker learns it now
// rather than when the connection closes.
func (x *exchange) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if x.status == 0 && x.try.breaker != nil {
		x.try.recordStatus(http.StatusSwitchingProtocols, time.Since(x.start))
	}
	return http.NewResponseController(x.ResponseWriter).Hijack()
}

// Unwrap returns the client's ResponseWriter.
func (x *exchange) Unwrap() http.ResponseWriter { return x.ResponseWriter }

func (rt *Route) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	// out.URL's scheme and host were set on the inbound request by ServeHTTP.
	rt.rewritePath(out.URL, in)
	// The client's Host is kept (as Envoy and Traefik do) unless rewritten.
	if rt.host != "" {
		out.Host = rt.host
	}
	// ReverseProxy dropped the client's X-Forwarded-*; Handler already
	// removed them from in unless the peer is a trusted proxy, so what is
	// left on in is believed and extended.
	h := out.Header
	// One backing array for both new values; each slice's capacity is its
	// length, so an append elsewhere copies instead of overwriting.
	vals := make([]string, 2)
	vals[0] = clientip.PeerHost(in.RemoteAddr)
	if prior := in.Header[headerForwardedFor]; len(prior) > 0 {
		vals[0] = strings.Join(prior, ", ") + ", " + vals[0]
	}
	h[headerForwardedFor] = vals[0:1:1]
	if v := in.Header[headerForwardedProto]; len(v) > 0 {
		h[headerForwardedProto] = v
	} else if in.TLS != nil {
		h[headerForwardedProto] = protoHTTPS
	} else {
		h[headerForwardedProto] = protoHTTP
	}
	if v := in.Header[headerForwardedHost]; len(v) > 0 {
		h[headerForwardedHost] = v
	} else {
		vals[1] = in.Host
		h[headerForwardedHost] = vals[1:2:2]
	}
	if v := in.Header[headerForwardedRFC]; len(v) > 0 {
		h[headerForwardedRFC] = v
	}
	rt.request.apply(h)
	if rt.hop != nil {
		// After the policy, which may edit the client's entries but not
		// drop the one loop detection needs.
		h[headerVia] = append(slices.Clip(h[headerVia]), rt.hop.entry(in)[0])
	}
	if sc := trace.SpanContextFromContext(out.Context()); sc.IsValid() {
		inject(sc, h)
	}
}

// Shared X-Forwarded-Proto values; capacity equals length so an append
// elsewhere copies.
var (
	protoHTTP  = []string{"http"}[:1:1]
	protoHTTPS = []string{"https"}[:1:1]
)

// rewritePath applies the route's path rewrite to u, the outgoing URL.
func (rt *Route) rewritePath(u *url.URL, in *http.Request) {
	if rt.path != nil {
		u.Path = expandPath(rt.path, in)
		u.RawPath = ""
		return
	}
	if rt.stripPrefix == "" && rt.addPrefix == "" {
		return
	}
	u.Path = rt.editPath(u.Path)
	if u.RawPath != "" {
		// Keep escapes such as %2F when the prefix is plain on both forms.
		u.RawPath = rt.editPath(u.RawPath)
	}
}

func (rt *Route) editPath(p string) string {
	if rt.stripPrefix != "" {
		if rest, ok := strings.CutPrefix(p, rt.stripPrefix); ok {
			p = rest
			if !strings.HasPrefix(p, "/") {
				p = "/" + p
			}
		}
	}
	if rt.addPrefix != "" {
		if strings.HasSuffix(rt.addPrefix, "/") {
			p = rt.addPrefix + p[1:]
		} else {
			p = rt.addPrefix + p
		}
	}
	return p
}

func (rt *Route) modifyResponse(resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if err := rt.checkSwitch(resp); err != nil {
			return err // closes the upstream connection; proxyError answers 502
		}
	}
	// Handler already put the request's id on the response; an upstream
	// echoing it (or another) must not duplicate or replace it.
	delete(resp.Header, headerRequestID)
	rt.response.apply(resp.Header)
	return nil
}

// proxyError is ReverseProxy's error handler: it answers and records the
// attempt's outcome on the exchange.
func (rt *Route) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x, ok := w.(*exchange)
	var ids []string
	if ok {
		ids = x.ids
	}
	var body *clientBody
	if ok {
		body = x.body
	}
	f := classify(r, err, body)
	if ok {
		x.latency = time.Since(x.start)
		// Before writing: the answer's status is the gateway's, not the
		// upstream's.
		x.try.recordFailure(f, x.latency)
	}
	if len(r.Header[headerUpgrade]) > 0 {
		// A failed upgrade closes the connection, as a refused one does.
		w.Header()["Connection"] = connectionClose
	}
	rt.writeFailure(w, r, f, err, ids)
	if ok {
		o := f.poolOutcome(err, x.latency)
		x.status, x.err = o.Status, o.Err
		x.failed, x.failure = true, f.kind
	}
}

// writeFailure answers when no upstream response could be relayed, with
// ids as the response's X-Request-Id when set, and logs err (at debug
// level when it was the client's doing).
func (rt *Route) writeFailure(w http.ResponseWriter, r *http.Request, f failure, err error, ids []string) {
	level := slog.LevelWarn
	if f.clients() {
		level = slog.LevelDebug
	}
	rt.log.LogAttrs(r.Context(), level, "upstream error",
		slog.String("route", rt.name), slog.String("upstream", rt.pool.Name()),
		slog.Int("status", f.status), slog.String("error", err.Error()))
	if ids != nil {
		w.Header()[headerRequestID] = ids
	}
	writeJSON(w, f.status, f.body)
}

// headerOps are applied in the order remove, set, add.
type headerOps struct {
	remove []string
	set    []headerValue
	add    []headerValue
}

type headerValue struct {
	key    string
	values []string // one value, capacity 1 so an append elsewhere copies
}

func compileHeaderOps(ops *meridianv1.HeaderOps) headerOps {
	var h headerOps
	for _, k := range ops.GetRemove() {
		h.remove = append(h.remove, http.CanonicalHeaderKey(k))
	}
	h.set = sortedValues(ops.GetSet())
	h.add = sortedValues(ops.GetAdd())
	return h
}

func sortedValues(m map[string]string) []headerValue {
	var out []headerValue
	for k, v := range m {
		out = append(out, headerValue{key: http.CanonicalHeaderKey(k), values: []string{v}[:1:1]})
	}
	slices.SortFunc(out, func(a, b headerValue) int { return strings.Compare(a.key, b.key) })
	return out
}

func (h *headerOps) empty() bool {
	return len(h.remove) == 0 && len(h.set) == 0 && len(h.add) == 0
}

func (h *headerOps) apply(hdr http.Header) {
	for _, k := range h.remove {
		delete(hdr, k)
	}
	for _, kv := range h.set {
		hdr[kv.key] = kv.values
	}
	for _, kv := range h.add {
		// Clipped: the existing values may be shared with another header
		// map (the lean path shares the client's), so append copies.
		hdr[kv.key] = append(slices.Clip(hdr[kv.key]), kv.values[0])
	}
}

// pathPart is a literal segment or a {param} of rewrite.path.
type pathPart struct {
	text  string
	param bool
}

func parsePathRewrite(s string) ([]pathPart, error) {
	t, err := config.ParseTemplate(s)
	if err != nil {
		return nil, err
	}
	parts := make([]pathPart, len(t.Segments))
	for i, seg := range t.Segments {
		if seg.Param != "" {
			parts[i] = pathPart{text: seg.Param, param: true}
		} else {
			parts[i] = pathPart{text: seg.Literal}
		}
	}
	return parts, nil
}

// expandPath fills rewrite.path's {params} from the route's template match;
// a parameter the match did not bind expands to "".
func expandPath(parts []pathPart, in *http.Request) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteByte('/')
		if p.param {
			b.WriteString(in.PathValue(p.text))
		} else {
			b.WriteString(p.text)
		}
	}
	return b.String()
}
