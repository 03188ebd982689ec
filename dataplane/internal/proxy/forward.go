package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	"go.opentelemetry.io/otel/trace"
)

// The lean path forwards ordinary HTTP/1.1 and HTTPS exchanges without
// httputil.ReverseProxy: it builds the outgoing request in one pass over
// the client's headers, calls the pool's transport itself and streams the
// response back, keeping ReverseProxy's observable behaviour (hop-by-hop
// headers, X-Forwarded-*, 1xx, trailers, flushing, aborts, error
// statuses) with about half the allocations and no ResponseWriter
// wrapper. Requests it does not cover (protocol upgrades, gRPC,
// Expect: 100-continue, queries ReverseProxy would re-encode, h2c
// upstreams) keep going through ReverseProxy.

// leanRequest reports whether r can take the lean path.
func leanRequest(r *http.Request) bool {
	h := r.Header
	// Upgrades (those the route allows; Route.screenUpgrade removed
	// the others) need ReverseProxy's hijacking; an
	// Expect: 100-continue exchange is left to it so that its 100 is
	// relayed exactly as before.
	if len(h["Upgrade"]) > 0 || len(h["Expect"]) > 0 {
		return false
	}
	if ct := h[headerContentType]; len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc") {
		return false
	}
	return cleanQuery(r.URL.RawQuery)
}

// maxQueryParams is the count past which ReverseProxy re-encodes a query
// (net/http/httputil's defaultMaxParams).
const maxQueryParams = 10000

// cleanQuery reports whether ReverseProxy would send the query unchanged:
// no ';' separators, no malformed escapes and not too many parameters.
// Other queries go through ReverseProxy, which re-encodes them so that the
// upstream cannot parse parameters differently from the gateway.
func cleanQuery(q string) bool {
	if q == "" {
		return true
	}
	if strings.Count(q, "&")+1 > maxQueryParams {
		return false
	}
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return false
			}
			i += 3
		default:
			i++
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// hopByHop reports whether a canonical header name is one of the
// hop-by-hop headers ReverseProxy always removes (RFC 7230 section 6.1
// and the older RFC 2616 list).
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// connectionListed reports whether header k is named in a Connection
// header, which makes it hop-by-hop too.
func connectionListed(conn []string, k string) bool {
	for _, v := range conn {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(textproto.TrimString(tok), k) {
				return true
			}
		}
	}
	return false
}

// hasToken reports whether a comma-separated header contains tok.
func hasToken(vals []string, tok string) bool {
	return connectionListed(vals, tok)
}

// Shared header values; capacity equals length so an append elsewhere
// copies.
var (
	teTrailers   = []string{"trailers"}[:1:1]
	noUserAgent  = []string{""}[:1:1] // keeps the transport from sending Go's default
	errSwitching = errors.New("upstream switched protocols on a request that asked for no upgrade")
)

// forward holds what one lean exchange needs beyond the outgoing request
// itself, in one allocation. It is never pooled: the transport may still
// read the outgoing request's URL, header values and body after RoundTrip
// returned (an early response, a cancellation).
type forward struct {
	url    url.URL
	body   clientBody
	replay replayBody // the first attempt's body, when buffered for retries
	vals   [3]string  // X-Forwarded-For, X-Forwarded-Host, X-Request-Id
	via    [2]string  // the client's one Via line and the data plane's entry
	hints  informational
}

// informational relays the 1xx responses of one attempt. Each attempt has
// its own: its done flag stops a late report of an earlier attempt.
type informational struct {
	trace httptrace.ClientTrace

	// w and done are shared with the transport's goroutine, which reports
	// 1xx responses until RoundTrip returns.
	mu   sync.Mutex
	w    http.ResponseWriter
	done bool
}

// replayBody is one attempt's copy of a buffered request body. The buffer
// is never written after it was filled, so attempts (and a transport
// still reading an earlier one) share it safely.
type replayBody struct {
	bytes.Reader
}

func (*replayBody) Close() error { return nil }

// got1xx relays an informational response (103 Early Hints and the like)
// to the client while RoundTrip waits for the final one.
func (in *informational) got1xx(code int, header textproto.MIMEHeader) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.done {
		return nil // RoundTrip returned: the header map is the handler's again
	}
	h := in.w.Header()
	addHeader(h, http.Header(header))
	in.w.WriteHeader(code)
	// WriteHeader does not reset the map for 1xx; the final response
	// starts afresh.
	clear(h)
	return nil
}

// finish stops relaying: RoundTrip returned.
func (in *informational) finish() {
	in.mu.Lock()
	in.done = true
	in.mu.Unlock()
}

// addHeader adds src's values to dst. A key dst lacks takes src's slice
// as is: the transport hands the response's header over to the caller.
func addHeader(dst, src http.Header) {
	for k, vv := range src {
		if prev, ok := dst[k]; ok {
			dst[k] = append(prev[:len(prev):len(prev)], vv...)
		} else {
			dst[k] = vv
		}
	}
}

// forward sends r on the lean path, first to a's target, and retries as
// p and the route's policy allow (see Route). The request id p.newID,
// when set, was generated by the gateway: it goes to the upstream and the
// client. Each attempt's outcome goes to its breaker when the response
// header arrives, and to the pool when the attempt is over: at once for
// one that is retried, when the response body has been relayed (or has
// failed to be) for the last.
func (rt *Route) forward(w http.ResponseWriter, r *http.Request, a try, p plan) {
	fw := &forward{}
	fw.hints.w = w
	in := r.Header
	// ids is the response's X-Request-Id. It goes on the client's header
	// map only once RoundTrip returned: a 1xx response clears the map.
	var ids []string
	if p.newID != "" {
		fw.vals[2] = p.newID
		ids = fw.vals[2:3:3]
	} else if v := in[headerRequestID]; len(v) > 0 {
		ids = v[:1:1]
	}

	ctx := r.Context()
	if rt.timeout > 0 && !longLived(r) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rt.timeout)
		defer cancel()
	}
	fw.hints.trace.Got1xxResponse = fw.hints.got1xx
	if rt.connWait && r.ContentLength == 0 && rt.awaitsResponse(r) {
		fw.hints.trace.GotConn = rt.gotConnHook // see roundTrip
	}
	out := r.WithContext(httptrace.WithClientTrace(ctx, &fw.hints.trace))

	fw.url = *r.URL
	fw.url.Scheme = rt.pool.Scheme()
	fw.url.Host = a.target.Address()
	rt.rewritePath(&fw.url, r)
	out.URL = &fw.url
	if rt.host != "" {
		out.Host = rt.host
	}
	out.Close = false
	switch {
	case r.ContentLength == 0:
		out.Body = nil // lets the transport retry on a stale connection
	case p.replay != nil:
		fw.replay.Reset(p.replay)
		out.Body = &fw.replay
	case r.Body != nil:
		fw.body.rc = r.Body
		until, _ := ctx.Deadline()
		fw.body.setLimits(w, rt.bodyTimeoutFor(r), until)
		out.Body = &fw.body
		defer fw.body.Close()
	}

	// One pass over the client's headers: hop-by-hop ones and those the
	// gateway sets itself are skipped, the rest share the client's values.
	// Every attempt sends the same map; nothing writes to it once built.
	// Behind Handler, Connection lists only connection options by now
	// (see sanitize), so no header the gateway set is skipped as listed.
	h := make(http.Header, len(in)+5+len(rt.request.set)+len(rt.request.add))
	conn := in["Connection"]
	for k, vv := range in {
		if hopByHop(k) || k == headerForwardedFor || k == headerForwardedProto || k == headerForwardedHost || k == headerForwardedRFC {
			continue
		}
		if len(conn) > 0 && connectionListed(conn, k) {
			continue
		}
		h[k] = vv
	}
	if te := in["Te"]; len(te) > 0 && hasToken(te, "trailers") {
		h["Te"] = teTrailers
	}
	if p.newID != "" {
		h[headerRequestID] = ids
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = noUserAgent
	}
	// X-Forwarded-*: what is left on the client's request was sent by a
	// trusted proxy (Handler dropped the rest) and is extended.
	fw.vals[0] = clientip.PeerHost(r.RemoteAddr)
	if prior := in[headerForwardedFor]; len(prior) > 0 {
		fw.vals[0] = strings.Join(prior, ", ") + ", " + fw.vals[0]
	}
	h[headerForwardedFor] = fw.vals[0:1:1]
	if v := in[headerForwardedProto]; len(v) > 0 {
		h[headerForwardedProto] = v
	} else if r.TLS != nil {
		h[headerForwardedProto] = protoHTTPS
	} else {
		h[headerForwardedProto] = protoHTTP
	}
	if v := in[headerForwardedHost]; len(v) > 0 {
		h[headerForwardedHost] = v
	} else {
		fw.vals[1] = r.Host
		h[headerForwardedHost] = fw.vals[1:2:2]
	}
	if v := in[headerForwardedRFC]; len(v) > 0 {
		h[headerForwardedRFC] = v
	}
	rt.request.apply(h)
	if rt.hop != nil {
		// After the policy, which may edit the client's entries but not
		// drop the one loop detection needs.
		rt.appendVia(h, r, h[headerVia], &fw.via)
	}
	out.Header = h

	// A traced request's upstream receives its trace context (for a
	// sampled trace, the context of each attempt's client span). A 1xx
	// response clears the client's header map, so the trace id header is
	// put back after.
	tc := p.rec.traceContext()
	var traceIDs []string
	if tc.IsValid() {
		traceIDs = w.Header()[HeaderTraceID]
	}

	var o upstream.Outcome
	defer func() { rt.pool.Done(a.target, o) }()
	start := p.start
	if start.IsZero() {
		start = time.Now()
	}
	hints := &fw.hints
	var tried [MaxRetries + 1]*upstream.Target
	var res *http.Response
	var err error
	var f failure
	// The attempt's client span, while it is open: a failed attempt's ends
	// at once, an answered one's when its body is done with (relayed, or
	// dropped for a retry), as on the ReverseProxy path.
	var span trace.Span
	for n := 0; ; n++ {
		span = nil
		if tc.IsValid() {
			out, span = tracedAttempt(out, tc, a.target.Address(), n)
		}
		res, err = rt.roundTrip(out)
		hints.finish()
		if err == nil && res.StatusCode == http.StatusSwitchingProtocols {
			// Nothing asked for it; ReverseProxy refuses it the same way.
			res.Body.Close()
			res, err = nil, errSwitching
		}
		latency := time.Since(start)
		p.rec.attempt(n+1, a.target.Address(), latency)
		var retry bool
		if err != nil {
			f = classify(out, err, &fw.body)
			endAttempt(span, 0, f.kind.label())
			span = nil
			o = f.poolOutcome(err, latency)
			a.recordFailure(f, latency)
			rt.metrics.AttemptFailed(f.kind.outcome())
			retry = p.retry && n < rt.retry.attempts && rt.retry.retryFailure(f)
		} else {
			o = upstream.Outcome{Status: res.StatusCode, Latency: latency}
			a.recordStatus(res.StatusCode, latency)
			rt.metrics.AttemptResponse(res.StatusCode, latency)
			retry = p.retry && n < rt.retry.attempts && rt.retry.retryStatus(res.StatusCode)
		}
		if !retry {
			break
		}
		tried[n] = a.target
		next, nextStart, cause := rt.nextAttempt(ctx, r, n, tried[:n+1])
		if cause != nil {
			// The deadline passed or the client left while waiting: the
			// held response can no longer be read.
			if res != nil {
				res.Body.Close()
				endAttempt(span, res.StatusCode, "")
				span, res = nil, nil
			}
			err = cause
			f = classify(out, err, nil)
			break
		}
		if next.target == nil {
			break // the last attempt's result is the answer
		}
		rt.metrics.Retry()
		if err != nil {
			rt.log.LogAttrs(ctx, slog.LevelDebug, "upstream error, retrying",
				slog.String("route", rt.name), slog.String("upstream", rt.pool.Name()),
				slog.Int("status", f.status), slog.String("error", err.Error()))
		} else {
			res.Body.Close()
			endAttempt(span, res.StatusCode, "")
		}
		rt.pool.Done(a.target, o)
		a, start = next, nextStart
		out, hints = retryRequest(ctx, out, w, a.target, p.replay, rt.gotConnHook)
	}
	if traceIDs != nil {
		w.Header()[HeaderTraceID] = traceIDs
	}
	if err != nil {
		p.rec.fail(f.kind.label())
		rt.writeFailure(w, out, f, err, ids)
		return
	}

	bodyFailure := ""
	if span != nil {
		defer func() { endAttempt(span, res.StatusCode, bodyFailure) }()
	}
	dst := w.Header()
	if ids != nil {
		dst[headerRequestID] = ids
	}
	rt.copyResponseHeader(dst, res.Header)
	announced := len(res.Trailer)
	if announced > 0 {
		// The transport keeps the Trailer header out of res.Header.
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)

	if err := rt.copyBody(w, res, r); err != nil {
		p.rec.fail(errResponseAborted)
		bodyFailure = errResponseAborted
		defer res.Body.Close()
		// A response cut midway must not look complete to the client:
		// abort the connection (or stream), as ReverseProxy does, when
		// running under an http.Server, which recovers the panic.
		if r.Context().Value(http.ServerContextKey) != nil {
			panic(http.ErrAbortHandler)
		}
		return
	}
	res.Body.Close() // now, to populate res.Trailer

	if len(res.Trailer) > 0 {
		// Force chunking so net/http sends trailers rather than computing
		// a Content-Length for a short body.
		http.NewResponseController(w).Flush() //nolint:errcheck // nothing to do if it cannot
	}
	if len(res.Trailer) == announced {
		addHeader(dst, res.Trailer)
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// nextAttempt decides whether retry n (0 for the first) is made after the
// attempts at tried, waits its backoff and claims it. It returns a zero
// try when the retry is not made: the route's breaker is open, the backoff
// would end past the route's deadline, the budget is spent, or admit
// refuses (breaker, no target). cause is set when ctx ended during the
// wait.
func (rt *Route) nextAttempt(ctx context.Context, r *http.Request, n int, tried []*upstream.Target) (a try, start time.Time, cause error) {
	p := rt.retry
	if b := rt.breaker; b != nil && b.State() == breaker.Open {
		return try{}, start, nil
	}
	wait := p.backoff(n)
	now := time.Now()
	if deadline, ok := ctx.Deadline(); ok && !now.Add(wait).Before(deadline) {
		return try{}, start, nil
	}
	if !p.budget.take(now) {
		rt.metrics.RetryBudgetExhausted()
		return try{}, start, nil
	}
	if wait > 0 {
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return try{}, start, ctx.Err()
		}
		now = time.Now()
	} else if err := ctx.Err(); err != nil {
		return try{}, start, err
	}
	a, err := rt.admit(r, now, tried)
	if err != nil {
		return try{}, start, nil
	}
	return a, now, nil
}

// retryRequest returns the outgoing request of a retry to target t: prev's
// with its own URL, 1xx relay and copy of the buffered body. prev is left
// as it is, since its transport may still read it.
func retryRequest(ctx context.Context, prev *http.Request, w http.ResponseWriter, t *upstream.Target, replay []byte, gotConn func(httptrace.GotConnInfo)) (*http.Request, *informational) {
	hints := &informational{w: w}
	hints.trace.Got1xxResponse = hints.got1xx
	if replay == nil && prev.Body == nil {
		hints.trace.GotConn = gotConn // bodiless: see Route.roundTrip
	}
	out := prev.WithContext(httptrace.WithClientTrace(ctx, &hints.trace))
	u := *prev.URL
	u.Host = t.Address()
	out.URL = &u
	if replay != nil {
		body := &replayBody{}
		body.Reset(replay)
		out.Body = body
	}
	return out, hints
}

// tracedAttempt puts the trace context on the upstream request of
// attempt n (0 for the first) to target. When tc, the server span's
// context, is sampled, that is the context of a new client span for the
// attempt, returned with out carrying it; otherwise it is tc itself, and
// the span is nil. A retry's header map is shared with the earlier
// attempts' (a transport may still read those), so it gets a copy of its
// own.
func tracedAttempt(out *http.Request, tc trace.SpanContext, target string, n int) (*http.Request, trace.Span) {
	ctx, span := startAttempt(out.Context(), tc, out.Method, target, n+1)
	if span == nil {
		// Unsampled: every attempt carries the server span's context,
		// written once.
		if n == 0 {
			inject(tc, out.Header)
		}
		return out, nil
	}
	out = out.WithContext(ctx)
	if n > 0 {
		out.Header = maps.Clone(out.Header)
	}
	inject(span.SpanContext(), out.Header)
	return out, span
}

// copyResponseHeader copies the upstream's response header to the
// client's, without hop-by-hop headers and the upstream's X-Request-Id
// (the gateway's own is already there), with the route's response header
// policy applied.
func (rt *Route) copyResponseHeader(dst, src http.Header) {
	conn := src["Connection"]
	if rt.response.empty() {
		for k, vv := range src {
			if hopByHop(k) || k == headerRequestID || len(conn) > 0 && connectionListed(conn, k) {
				continue
			}
			if prev, ok := dst[k]; ok {
				dst[k] = append(prev[:len(prev):len(prev)], vv...)
			} else {
				dst[k] = vv
			}
		}
		return
	}
	// The policy may set names the passes above would drop, so apply it
	// after dropping, as ReverseProxy's ModifyResponse sees the header.
	for k := range src {
		if hopByHop(k) || k == headerRequestID || len(conn) > 0 && connectionListed(conn, k) {
			delete(src, k)
		}
	}
	rt.response.apply(src)
	addHeader(dst, src)
}

// copyBody streams the response body to the client through a pooled
// buffer. Server-sent events and bodies of unknown length are flushed
// after every read, so a stream is never held back; the header goes out
// at once for them too.
func (rt *Route) copyBody(w http.ResponseWriter, res *http.Response, r *http.Request) error {
	var rc *http.ResponseController
	if res.ContentLength == -1 || eventStream(res.Header[headerContentType]) {
		rc = http.NewResponseController(w)
		rc.Flush() //nolint:errcheck // a writer that cannot flush streams as it can
	}
	var stream *http.ResponseController // bounds writes to an HTTP/2 stream
	if r.ProtoMajor == 2 && rt.sendTimeout > 0 {
		stream = http.NewResponseController(w)
	}
	buf := rt.buffers.Get()
	defer rt.buffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if rerr != nil && rerr != io.EOF && !errors.Is(rerr, context.Canceled) {
			rt.log.LogAttrs(r.Context(), slog.LevelWarn, "upstream body read error",
				slog.String("route", rt.name), slog.String("upstream", rt.pool.Name()), slog.String("error", rerr.Error()))
		}
		if n > 0 {
			nw, werr := rt.writeBody(w, stream, buf[:n])
			if werr != nil {
				return werr
			}
			if nw != n {
				return io.ErrShortWrite
			}
			if rc != nil {
				rc.Flush() //nolint:errcheck // as above
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// writeBody writes p to the client. With stream set (an HTTP/2 response),
// the write must finish within the send timeout: flow control can hold an
// HTTP/2 stream back while its connection stays writable, which the
// listener's per-connection timeout does not see. The deadline is cleared
// after the write, since an HTTP/2 stream whose write deadline passes is
// reset even when nothing is being written (a quiet event stream).
func (rt *Route) writeBody(w http.ResponseWriter, stream *http.ResponseController, p []byte) (int, error) {
	if stream == nil {
		return w.Write(p)
	}
	stream.SetWriteDeadline(time.Now().Add(rt.sendTimeout)) //nolint:errcheck // a writer without deadlines writes unbounded
	n, err := w.Write(p)
	if err == nil {
		stream.SetWriteDeadline(time.Time{}) //nolint:errcheck // as above
	}
	return n, err
}

// eventStream reports whether a Content-Type is text/event-stream, whose
// events must reach the client as they come.
func eventStream(ct []string) bool {
	if len(ct) == 0 {
		return false
	}
	base, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(base), "text/event-stream")
}
