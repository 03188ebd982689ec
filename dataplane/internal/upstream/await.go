package upstream

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// DefaultResponseHeaderTimeout is how long an attempt of a route without a
// timeout waits for its upstream's response to begin: nginx's
// proxy_read_timeout default. Without it, an upstream that accepts a
// request and never answers (or a data plane routed back to itself)
// holds the client, its upstream connection and their file descriptors
// forever.
const DefaultResponseHeaderTimeout = 60 * time.Second

// ResponseTimeoutError is the error of an attempt whose upstream did not
// begin its response within the bound the proxy set for it. It is a
// net.Error whose Timeout is true.
type ResponseTimeoutError struct {
	After time.Duration
}

func (e *ResponseTimeoutError) Error() string {
	return "upstream sent no response within " + e.After.String()
}

// Timeout reports true: the proxy answers 504 and counts a timeout.
func (e *ResponseTimeoutError) Timeout() bool { return true }

// Temporary reports true, as net/http's own response header timeout does.
func (e *ResponseTimeoutError) Temporary() bool { return true }

// awaitConn is a connection of a plain HTTP/1.1 upstream (see
// Pool.ConnDeadlines). AwaitResponse arms it for one request: from then
// on a read deadline, pushed back after each write of the request, bounds
// the wait for the response's first byte; that byte disarms it, so a
// response body, a streamed event or a tunnel after a 101 is never cut,
// however long it goes quiet. It costs the proxy no allocation per
// request, unlike http.Transport.ResponseHeaderTimeout (a timer, its
// channel and a deferred call per round trip) or a per-request context.
//
// HTTP/1.1 without pipelining is what makes this right: a connection
// carries one exchange at a time, the request is written before the
// response begins (an early response only disarms sooner), and the
// transport's reader waits on the connection only for the response of
// the request just sent. It is not used for TLS (the bytes below TLS
// include handshake and session tickets) nor for HTTP/2, where one
// connection carries many streams.
type awaitConn struct {
	net.Conn
	awaiting atomic.Bool
	wait     atomic.Int64 // the bound, in nanoseconds
}

// AwaitResponse bounds to d the time the request that was just given conn
// (httptrace.ClientTrace.GotConn's GotConnInfo.Conn) waits for the first
// byte of its response, counted from the last write of the request. It
// reports false, and does nothing, when conn is not a connection of a
// pool whose ConnDeadlines is true, or d is not positive. When the bound
// passes, the transport's read fails with a *ResponseTimeoutError, the
// connection is closed and RoundTrip returns that error.
//
// A request with a body must not use it: a client uploading slowly would
// leave gaps between writes longer than d that are not the upstream's
// doing. AwaitResponse allocates nothing.
func AwaitResponse(conn net.Conn, d time.Duration) bool {
	c, ok := conn.(*awaitConn)
	if !ok || d <= 0 {
		return false
	}
	c.wait.Store(int64(d))
	c.awaiting.Store(true)
	c.Conn.SetReadDeadline(time.Now().Add(d)) //nolint:errcheck // a closed connection fails the request anyway
	return true
}

func (c *awaitConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.awaiting.Load() {
		c.Conn.SetReadDeadline(time.Now().Add(time.Duration(c.wait.Load()))) //nolint:errcheck // as above
		if !c.awaiting.Load() {
			// The response began while the deadline was being set.
			c.Conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
		}
	}
	return n, err
}

func (c *awaitConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if c.awaiting.Load() && c.awaiting.CompareAndSwap(true, false) {
			c.Conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
		}
	} else if err != nil && c.awaiting.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
		err = &ResponseTimeoutError{After: time.Duration(c.wait.Load())}
	}
	return n, err
}

// ConnDeadlines reports whether the pool's connections take
// AwaitResponse: plain HTTP/1.1 upstreams (scheme http). For https and
// h2c ones the proxy bounds the wait otherwise.
func (p *Pool) ConnDeadlines() bool { return connDeadlines(p.spec) }

func connDeadlines(spec *meridianv1.UpstreamSpec) bool {
	s := spec.GetScheme()
	return s == meridianv1.Scheme_SCHEME_HTTP || s == meridianv1.Scheme_SCHEME_UNSPECIFIED
}
