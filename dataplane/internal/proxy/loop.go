package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
)

// Loops. Every request a data plane forwards carries a Via entry naming
// it (RFC 9110 §7.6.3): "1.1 <node-id>-<token>", where the token is 16 hex
// digits drawn at random when the process starts. A request that arrives
// with this process's own entry has come back (a route whose upstream is
// the data plane itself, or a load balancer in front of it) and is
// answered 508 Loop Detected before routing, so a loop costs one extra
// hop, not every file descriptor the process may open. The node id alone
// would not do: two data planes given the same --node-id (a copied
// manifest, a shared hostname) chained one behind the other would take
// each other's requests for loops; the token tells them apart, and the
// node id keeps the entry readable. A loop through something that drops
// or merges Via entries is caught by the hop bound instead: more than
// MaxHops entries is a 508 too.
//
// Via is added to requests only. RFC 9110 makes it optional on the
// responses a gateway forwards, and nginx (by default) and Envoy (unless
// configured) add none: it would tell every client the node's id.

// MaxHops is the number of Via entries a request may arrive with; one
// more is answered 508.
const MaxHops = 10

const headerVia = "Via"

// Reasons for the access log's error field.
const (
	errLoopDetected = "loop_detected"
	errTooManyHops  = "too_many_hops"
)

var (
	bodyLoopDetected = []byte(`{"error":"loop detected"}` + "\n")
	bodyTooManyHops  = []byte(`{"error":"too many hops"}` + "\n")
)

// Hop is one data plane process's identity in Via headers. It is
// immutable; NewHop makes a new token every time.
type Hop struct {
	name string // the received-by pseudonym
	// Entries by received protocol, capacity 1 so an append elsewhere
	// copies: HTTP/1.0, HTTP/1.1, HTTP/2.
	v10, v11, v2 []string
}

// NewHop returns a Hop named after nodeID (characters that cannot appear
// in a Via pseudonym replaced with '-') and a random token.
func NewHop(nodeID string) *Hop {
	var raw [8]byte
	rand.Read(raw[:]) //nolint:errcheck // crypto/rand.Read never fails (Go 1.24+)
	name := pseudonym(nodeID) + "-" + hex.EncodeToString(raw[:])
	entry := func(proto string) []string { return []string{proto + " " + name}[:1:1] }
	return &Hop{name: name, v10: entry("1.0"), v11: entry("1.1"), v2: entry("2")}
}

// Name returns the pseudonym the Hop's Via entries carry.
func (h *Hop) Name() string { return h.name }

// maxNodeIDLen bounds the node id's part of the pseudonym.
const maxNodeIDLen = 64

// pseudonym turns a node id into an RFC 9110 token.
func pseudonym(nodeID string) string {
	if nodeID == "" {
		return "meridian"
	}
	if len(nodeID) > maxNodeIDLen {
		nodeID = nodeID[:maxNodeIDLen]
	}
	b := []byte(nodeID)
	for i, c := range b {
		if !tokenChar(c) {
			b[i] = '-'
		}
	}
	return string(b)
}

func tokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// entry returns the Via entry for a request received as r was.
func (h *Hop) entry(r *http.Request) []string {
	switch {
	case r.ProtoMajor == 2:
		return h.v2
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return h.v10
	}
	return h.v11
}

// refuse tells why a request whose Via field lines are vals must not be
// forwarded: its entries name h, or there are more than MaxHops of them.
// It returns "" when the request may go on. It allocates nothing.
func (h *Hop) refuse(vals []string) (reason string, body []byte) {
	hops := 0
	for _, v := range vals {
		// Members are separated by commas outside comments; a comment
		// may hold commas and nested, escaped parentheses.
		depth, start := 0, 0
		for i := 0; i <= len(v); i++ {
			if i < len(v) {
				switch c := v[i]; {
				case c == '(':
					depth++
					continue
				case c == ')' && depth > 0:
					depth--
					continue
				case c == '\\' && depth > 0:
					i++
					continue
				case c != ',' || depth > 0:
					continue
				}
			}
			by, ok := receivedBy(v[start:min(i, len(v))])
			start = i + 1
			if !ok {
				continue
			}
			if by == h.name {
				return errLoopDetected, bodyLoopDetected
			}
			if hops++; hops > MaxHops {
				return errTooManyHops, bodyTooManyHops
			}
		}
	}
	return "", nil
}

// receivedBy returns the received-by part of one Via member
// ("1.1 name:port (comment)" gives "name:port"); ok is false for an
// empty member.
func receivedBy(m string) (string, bool) {
	m = strings.TrimLeft(m, " \t")
	if m == "" {
		return "", false
	}
	i := strings.IndexAny(m, " \t")
	if i < 0 {
		return "", true // a protocol without received-by still counts as a hop
	}
	m = strings.TrimLeft(m[i:], " \t")
	if j := strings.IndexAny(m, " \t("); j >= 0 {
		m = m[:j]
	}
	return m, true
}

// looped answers 508 when r's Via says it has been here before, or has
// made too many hops, and reports whether it did.
func (h *Handler) looped(w http.ResponseWriter, r *http.Request, newID string) bool {
	vals := r.Header[headerVia]
	if len(vals) == 0 || h.hop == nil {
		return false
	}
	reason, body := h.hop.refuse(vals)
	if reason == "" {
		return false
	}
	h.writeError(w, r, newID, http.StatusLoopDetected, body, reason)
	return true
}

// appendVia adds the route's Via entry to h, the header of a request
// received as in was, after the entries in prior (the client's). A
// single prior line goes into spare, so that the common cases allocate
// nothing.
func (rt *Route) appendVia(h http.Header, in *http.Request, prior []string, spare *[2]string) {
	own := rt.hop.entry(in)
	switch len(prior) {
	case 0:
		h[headerVia] = own
	case 1:
		spare[0], spare[1] = prior[0], own[0]
		h[headerVia] = spare[:2:2]
	default:
		h[headerVia] = append(slices.Clip(prior), own[0])
	}
}

// Waiting for a response. A route without a timeout bounds each
// attempt's wait for the upstream's response to begin to its response
// header timeout (upstream.DefaultResponseHeaderTimeout), so that no
// request waits forever for an upstream that never answers. The body
// that follows is not bounded: downloads, server-sent events, WebSocket
// and other tunnels go on as long as they last. A gRPC call that carries
// a grpc-timeout has its own deadline and is not bounded.
//
// A bodiless request to a plain HTTP/1.1 upstream is bounded by its
// connection (upstream.AwaitResponse, a GotConn hook the route made
// once), which costs nothing per request. Others (a body, TLS, h2c, the
// ReverseProxy path) get a timer started when the request has been
// written, as http.Transport.ResponseHeaderTimeout does, so a slow
// upload is not counted against the upstream.

// headerGRPCTimeout is gRPC's deadline header.
const headerGRPCTimeout = "Grpc-Timeout"

// awaitsResponse reports whether an attempt of out waits a bounded time
// for its response.
func (rt *Route) awaitsResponse(out *http.Request) bool {
	return rt.headerTimeout > 0 && len(out.Header[headerGRPCTimeout]) == 0
}

// gotConn is the GotConn hook of bodiless lean requests on routes whose
// upstream's connections bound the wait themselves.
func (rt *Route) gotConn(info httptrace.GotConnInfo) {
	upstream.AwaitResponse(info.Conn, rt.headerTimeout)
}

// roundTrip sends one attempt of the lean path: through a header timer
// unless the attempt needs none or its connection bounds the wait.
func (rt *Route) roundTrip(out *http.Request) (*http.Response, error) {
	if out.Body == nil && rt.connWait || !rt.awaitsResponse(out) {
		return rt.pool.Transport().RoundTrip(out)
	}
	return awaitHeaders(rt.pool.Transport(), out, rt.headerTimeout)
}

// awaitTransport is the ReverseProxy path's transport on a route
// without a timeout.
type awaitTransport struct{ rt *Route }

func (t awaitTransport) RoundTrip(out *http.Request) (*http.Response, error) {
	if !t.rt.awaitsResponse(out) {
		return t.rt.pool.Transport().RoundTrip(out)
	}
	return awaitHeaders(t.rt.pool.Transport(), out, t.rt.headerTimeout)
}

// headerWait is one attempt's timer: started when the request has been
// written, it cancels the attempt unless its response header arrived
// first.
type headerWait struct {
	trace  httptrace.ClientTrace
	d      time.Duration
	cancel context.CancelCauseFunc

	mu      sync.Mutex // the transport reports WroteRequest on its own goroutine
	timer   *time.Timer
	done    bool // RoundTrip returned
	expired bool
}

// awaitHeaders is t.RoundTrip(req) with the wait for the response header,
// counted from when the request has been written, bounded to d. Past it
// the attempt is cancelled and the error is a
// *upstream.ResponseTimeoutError.
func awaitHeaders(t http.RoundTripper, req *http.Request, d time.Duration) (*http.Response, error) {
	hw := &headerWait{d: d}
	ctx, cancel := context.WithCancelCause(req.Context())
	hw.cancel = cancel
	hw.trace.WroteRequest = hw.wrote
	res, err := t.RoundTrip(req.WithContext(httptrace.WithClientTrace(ctx, &hw.trace)))
	hw.mu.Lock()
	hw.done = true
	expired := hw.expired
	if hw.timer != nil {
		hw.timer.Stop()
	}
	hw.mu.Unlock()
	if expired {
		if res != nil {
			res.Body.Close()
		}
		return nil, &upstream.ResponseTimeoutError{After: d}
	}
	// Not cancelled: the response body is read under ctx, which ends
	// with the request's.
	return res, err
}

func (hw *headerWait) wrote(httptrace.WroteRequestInfo) {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.done || hw.timer != nil {
		return // answered already, or a write the transport retried
	}
	hw.timer = time.AfterFunc(hw.d, hw.expire)
}

func (hw *headerWait) expire() {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if !hw.done {
		hw.expired = true
		hw.cancel(&upstream.ResponseTimeoutError{After: hw.d})
	}
}
