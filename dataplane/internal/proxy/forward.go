package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
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
	// Upgrades (WebSocket, h2c) need ReverseProxy's hijacking; an
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
	url   url.URL
	body  requestBody
	vals  [3]string // X-Forwarded-For, X-Forwarded-Host, X-Request-Id
	trace httptrace.ClientTrace

	// w and done are shared with the transport's goroutine, which reports
	// 1xx responses until RoundTrip returns.
	mu   sync.Mutex
	w    http.ResponseWriter
	done bool
}

// requestBody keeps the transport from closing the client's request body
// (closing it can block on a client that has not sent it yet) and stops
// reads once the exchange is over, as ReverseProxy does.
type requestBody struct {
	rc     io.ReadCloser
	closed atomic.Bool
}

var errBodyClosed = errors.New("proxy: read on the request body after the exchange ended")

func (b *requestBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	return b.rc.Read(p)
}

func (b *requestBody) Close() error {
	b.closed.Store(true)
	return nil
}

// got1xx relays an informational response (103 Early Hints and the like)
// to the client while RoundTrip waits for the final one.
func (fw *forward) got1xx(code int, header textproto.MIMEHeader) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.done {
		return nil // RoundTrip returned: the header map is the handler's again
	}
	h := fw.w.Header()
	addHeader(h, http.Header(header))
	fw.w.WriteHeader(code)
	// WriteHeader does not reset the map for 1xx; the final response
	// starts afresh.
	clear(h)
	return nil
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

// forward sends r to target t on the lean path. newID, when set, is a
// request id the gateway generated: it goes to the upstream and the
// client. The attempt's outcome is reported to the pool when the response
// body has been relayed, or has failed to be.
func (rt *Route) forward(w http.ResponseWriter, r *http.Request, t *upstream.Target, newID string) {
	fw := &forward{w: w}
	in := r.Header
	// ids is the response's X-Request-Id. It goes on the client's header
	// map only once RoundTrip returned: a 1xx response clears the map.
	var ids []string
	if newID != "" {
		fw.vals[2] = newID
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
	fw.trace.Got1xxResponse = fw.got1xx
	out := r.WithContext(httptrace.WithClientTrace(ctx, &fw.trace))

	fw.url = *r.URL
	fw.url.Scheme = rt.pool.Scheme()
	fw.url.Host = t.Address()
	rt.rewritePath(&fw.url, r)
	out.URL = &fw.url
	if rt.host != "" {
		out.Host = rt.host
	}
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // lets the transport retry on a stale connection
	} else if r.Body != nil {
		fw.body.rc = r.Body
		out.Body = &fw.body
		defer fw.body.Close()
	}

	// One pass over the client's headers: hop-by-hop ones and those the
	// gateway sets itself are skipped, the rest share the client's values.
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
	if newID != "" {
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
	out.Header = h

	var o upstream.Outcome
	defer func() { rt.pool.Done(t, o) }()
	start := time.Now()
	res, err := rt.pool.Transport().RoundTrip(out)
	fw.mu.Lock()
	fw.done = true
	fw.mu.Unlock()
	if err == nil && res.StatusCode == http.StatusSwitchingProtocols {
		// Nothing asked for it; ReverseProxy refuses it the same way.
		res.Body.Close()
		err = errSwitching
	}
	if err != nil {
		o = rt.upstreamError(w, out, err, ids)
		o.Latency = time.Since(start)
		return
	}
	o.Status, o.Latency = res.StatusCode, time.Since(start)

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
	buf := rt.buffers.Get()
	defer rt.buffers.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if rerr != nil && rerr != io.EOF && !errors.Is(rerr, context.Canceled) {
			rt.log.LogAttrs(r.Context(), slog.LevelWarn, "upstream body read error",
				slog.String("route", rt.name), slog.String("upstream", rt.pool.Name()), slog.String("error", rerr.Error()))
		}
		if n > 0 {
			nw, werr := w.Write(buf[:n])
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

// eventStream reports whether a Content-Type is text/event-stream, whose
// events must reach the client as they come.
func eventStream(ct []string) bool {
	if len(ct) == 0 {
		return false
	}
	base, _, _ := strings.Cut(ct[0], ";")
	return strings.EqualFold(strings.TrimSpace(base), "text/event-stream")
}
