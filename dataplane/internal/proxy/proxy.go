// Package proxy forwards requests to upstreams. Handler is the data plane's
// traffic entry point: it reads the live configuration once per request,
// cleans the client's header (Connection-listed names, underscores,
// client-address headers of untrusted peers), normalises the path, tags
// the request with an X-Request-Id, finds the route and hands over to that
// route's handler. Route is one route's forwarding step (body limit,
// rewrite, header edits, timeout, reverse proxy), built once per
// configuration.
package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/router"
	"github.com/meridian-gw/meridian/proto/tracing"
	"go.opentelemetry.io/otel/trace"
)

// Routes resolves a request to the entry of the route it matches. The
// compiled configuration implements it.
type Routes interface {
	// Route returns the entry for r, or nil when no route matches. It may
	// record template parameters on r (r.SetPathValue).
	Route(r *http.Request) *Entry
	// Allow returns the methods allowed on r's host and path, comma
	// separated for an Allow header, when a route matches everything but
	// the method; otherwise "".
	Allow(r *http.Request) string
}

// DefaultMaxHeaders is the default of HandlerConfig.MaxHeaders and of the
// dataplane's --max-headers: Envoy's default max_headers_count.
const DefaultMaxHeaders = 100

// HandlerConfig is the process-wide part of the traffic handler.
type HandlerConfig struct {
	// MaxHeaders is the most request header fields accepted, counting
	// every value line (a name sent twice counts twice) and not Host. A
	// request with more is answered 431 before any route or upstream sees
	// it. 0: no limit; the server's MaxHeaderBytes still bounds the size.
	MaxHeaders int
	// ClientIP knows the trusted proxies: peers whose X-Forwarded-For,
	// -Proto and -Host are believed and extended. From any other peer they
	// are dropped and replaced with what this hop sees, and Forwarded,
	// X-Real-IP, True-Client-IP, CF-Connecting-IP, X-Client-IP and
	// Fastly-Client-IP are dropped. Nil trusts no one.
	ClientIP *clientip.Resolver
	// AllowUnderscoreHeaders keeps client request headers whose names
	// contain an underscore. By default they are dropped, as nginx does
	// (underscores_in_headers off): CGI-style upstreams read X_User_ID and
	// X-User-ID as the same variable, so one could shadow the other.
	AllowUnderscoreHeaders bool
	// Metrics counts the requests no route serves, under the route
	// metrics.NoRoute; nil: none. Routes record their own.
	Metrics *metrics.Metrics
	// AccessLog gets one line per request, routed or not, with its trace
	// id when it is traced; nil: none.
	AccessLog *accesslog.Logger
	// TracerProvider, when set, traces every request: a server span per
	// request and a client span per upstream attempt, continuing and
	// propagating W3C Trace Context. Nil: no tracing, at no cost.
	TracerProvider *tracing.Provider
	// Hop is this data plane's identity: a request whose Via names it, or
	// that made more than MaxHops, is answered 508 (see loop.go). Nil: no
	// loop detection.
	Hop *Hop
}

// Handler is the traffic http.Handler.
type Handler struct {
	current     func() Routes
	ip          *clientip.Resolver
	underscores bool // keep header names with an underscore
	maxHeaders  int  // 0: no limit
	unrouted    *metrics.Route
	access      *accessLog // nil: no access log
	tracer      *tracer    // nil: no tracing
	hop         *Hop       // nil: no loop detection
}

// NewHandler returns a Handler that calls current once per request to get
// the live configuration; current returns nil while none is applied.
func NewHandler(current func() Routes, c HandlerConfig) *Handler {
	h := &Handler{
		current: current, ip: c.ClientIP, underscores: c.AllowUnderscoreHeaders, maxHeaders: c.MaxHeaders,
		unrouted: c.Metrics.Unrouted(), tracer: newTracer(c.TracerProvider), hop: c.Hop,
	}
	if c.AccessLog != nil {
		h.access = &accessLog{log: c.AccessLog, ip: c.ClientIP}
	}
	return h
}

// Canned JSON bodies, allocated once.
var (
	bodyNoRoute          = []byte(`{"error":"no route"}` + "\n")
	bodyMethodNotAllowed = []byte(`{"error":"method not allowed"}` + "\n")
	bodyNoConfig         = []byte(`{"error":"no configuration applied"}` + "\n")
	bodyBadPath          = []byte(`{"error":"invalid request path"}` + "\n")
	bodyNoHealthy        = []byte(`{"error":"no healthy upstream target"}` + "\n")
	bodyBadGateway       = []byte(`{"error":"upstream error"}` + "\n")
	bodyConnectFailed    = []byte(`{"error":"upstream connect failure"}` + "\n")
	bodyGatewayTime      = []byte(`{"error":"upstream timeout"}` + "\n")
	bodyTooLarge         = []byte(`{"error":"request body too large"}` + "\n")
	bodyTooManyHeaders   = []byte(`{"error":"too many request header fields"}` + "\n")
)

// Header names in canonical form, so map lookups need no canonicalising.
const (
	headerRequestID       = "X-Request-Id"
	headerForwardedFor    = "X-Forwarded-For"
	headerForwardedProto  = "X-Forwarded-Proto"
	headerForwardedHost   = "X-Forwarded-Host"
	headerForwardedRFC    = "Forwarded"
	headerAllow           = "Allow"
	headerContentType     = "Content-Type"
	headerContentTypeOpts = "X-Content-Type-Options"
)

// ServeHTTP routes r with the configuration live when it arrived; the
// request finishes on that configuration even if a new one is swapped in.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// First: whatever the gateway sets from here on must survive, and a
	// client's X-Request-Id named in Connection must not be echoed.
	if !h.sanitize(r) {
		// Too many header fields. The answer carries an id of the
		// gateway's own: sanitize stopped before Connection was applied.
		h.writeError(w, r, newRequestID(), http.StatusRequestHeaderFieldsTooLarge, bodyTooManyHeaders, errTooManyHeaders)
		return
	}
	// The id goes on every answer, errors included, so a client can quote
	// it; the route passes the same id to the upstream. A generated id is
	// handed to the route as a string: it places it on both requests
	// without allocating a header slice of its own.
	var newID string
	if ids := r.Header[headerRequestID]; len(ids) > 0 && ids[0] != "" {
		// One id, the same both ways: a second one would reach only the
		// upstream.
		ids = ids[:1:1]
		r.Header[headerRequestID] = ids
		w.Header()[headerRequestID] = ids
	} else {
		delete(r.Header, headerRequestID) // an empty one is replaced
		newID = newRequestID()
	}
	if h.looped(w, r, newID) {
		return
	}

	routes := h.current()
	if routes == nil {
		h.writeError(w, r, newID, http.StatusServiceUnavailable, bodyNoConfig, errNoConfiguration)
		return
	}
	if !normalizePath(r) {
		h.writeError(w, r, newID, http.StatusBadRequest, bodyBadPath, errInvalidPath)
		return
	}
	e := routes.Route(r)
	if e == nil {
		if allow := routes.Allow(r); allow != "" {
			w.Header()[headerAllow] = []string{allow}
			h.writeError(w, r, newID, http.StatusMethodNotAllowed, bodyMethodNotAllowed, errMethodNotAllowed)
			return
		}
		h.writeError(w, r, newID, http.StatusNotFound, bodyNoRoute, errNoRoute)
		return
	}
	e.serve(w, r, newID, h.access, h.tracer)
}

// writeError is writeJSON for Handler's own answers, which carry the
// generated request id, if any. They are counted under no route and
// logged with route "" and reason as the error.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, newID string, status int, body []byte, reason string) {
	if newID != "" {
		w.Header()[headerRequestID] = []string{newID}
	}
	if h.unrouted == nil && h.access == nil && h.tracer == nil {
		writeJSON(w, status, body)
		return
	}
	var tc trace.SpanContext
	if h.tracer != nil {
		var span trace.Span
		r, span, tc = h.tracer.startServer(w, r, "", "")
		defer endServer(span, status, reason)
	}
	start := time.Now()
	h.unrouted.Begin()
	writeJSON(w, status, body)
	now := time.Now()
	d := now.Sub(start)
	h.unrouted.End(r.Method, status, int64(len(body)), d)
	if h.access != nil {
		h.access.unrouted(r, tc.TraceID(), newID, status, len(body), reason, now, d)
	}
}

// newRequestID returns 16 random bytes in hex. math/rand/v2's top-level
// source is per-thread (runtime ChaCha8), so ids need no lock; they must be
// unique, not secret.
func newRequestID() string {
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(raw[8:], rand.Uint64())
	var out [32]byte
	hex.Encode(out[:], raw[:])
	return string(out[:])
}

// normalizePath cleans the path with router.CleanPath before routing, so
// that /public/../admin cannot match a /public route and then reach /admin
// on an upstream that normalises; the cleaned path is also what the
// upstream receives. It reports false for a request target that is not an
// absolute path (CONNECT authority or "*" forms), and for one whose
// percent-encoded slashes or dots would, once decoded, form dot segments
// or empty segments: an upstream that decodes them would resolve a path
// the router never saw.
func normalizePath(r *http.Request) bool {
	u := r.URL
	if !strings.HasPrefix(u.Path, "/") {
		return false
	}
	esc := u.EscapedPath() // u.Path itself unless the client escaped more than needed
	clean := router.CleanPath(esc)
	if clean == esc && u.RawPath == "" {
		return true // the common case: nothing to do, nothing allocated
	}
	decoded, err := url.PathUnescape(clean)
	if err != nil || router.CleanPath(decoded) != decoded {
		return false
	}
	u.Path = decoded
	u.RawPath = ""
	if clean != decoded {
		u.RawPath = clean // keep the client's escapes, such as %2F
	}
	return true
}

// Header values shared by every error response; net/http never mutates
// them, and their capacity equals their length so an append copies.
var (
	jsonContentType = []string{"application/json"}[:1:1]
	nosniff         = []string{"nosniff"}[:1:1]
)

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h[headerContentType] = jsonContentType
	h[headerContentTypeOpts] = nosniff
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}
