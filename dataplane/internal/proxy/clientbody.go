package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBodyReadTimeout is the dataplane's --body-read-timeout default:
// the longest wait between two reads of a request body, as nginx's
// client_body_timeout (60 s).
const DefaultBodyReadTimeout = 60 * time.Second

// clientBody is the client's request body as the upstream transport
// reads it. An attempt that fails while the client's body is broken, or
// while the transport waits for more of it, failed because of the client:
// clientBody remembers which, so that the failure is answered 400 or 408
// and never counted against the upstream (breaker, passive health,
// outlier stats, retries). It also bounds the wait between two reads
// (--body-read-timeout) with the connection's read deadline.
//
// On the lean path it also keeps the transport from closing the client's
// body (closing can block on a client that has not sent it yet) and stops
// reads once the exchange is over, as ReverseProxy does.
type clientBody struct {
	rc io.ReadCloser
	// deadline sets the read deadline of the request's connection or
	// stream; nil: no read timeout.
	deadline *http.ResponseController
	timeout  time.Duration
	until    time.Time // the route's deadline; zero: none
	armed    time.Time // when the deadline was last moved; only Read uses it
	eof      bool      // Read returned io.EOF; only Read uses it
	// closeThrough: Close closes rc (ReverseProxy's path, where the
	// server's body is closed as net/http would).
	closeThrough bool

	closed  atomic.Bool
	reading atomic.Bool // a Read is waiting on the client
	mu      sync.Mutex
	err     error // the first read error other than io.EOF
}

var errBodyClosed = errors.New("proxy: read on the request body after the exchange ended")

// watchBody returns the body of r wrapped as a clientBody whose reads are
// bounded as setLimits says.
func watchBody(w http.ResponseWriter, r *http.Request, timeout time.Duration, until time.Time) *clientBody {
	b := &clientBody{rc: r.Body}
	b.setLimits(w, timeout, until)
	return b
}

// setLimits bounds each read of the body by timeout, and every read by
// until (the route's deadline), through w's read deadline; zero values
// bound nothing. Without until, a transport stuck reading a stalled body
// would outlive the route's deadline: it waits for its body reader before
// it returns.
func (b *clientBody) setLimits(w http.ResponseWriter, timeout time.Duration, until time.Time) {
	if timeout > 0 || !until.IsZero() {
		b.deadline = http.NewResponseController(w)
		b.timeout, b.until = timeout, until
	}
}

// Read reads from the client, moving the read deadline forward first. The
// deadline moves only when it was set more than a sixteenth of the
// timeout ago, so a body read in many small pieces costs a clock read per
// piece, not a deadline change.
func (b *clientBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	if b.eof {
		// Not even the deadline: past the body's end, net/http's own
		// read watches the connection for a client gone away, and a
		// deadline set now would cut it.
		return 0, io.EOF
	}
	if b.deadline != nil {
		b.arm()
	}
	b.reading.Store(true)
	n, err := b.rc.Read(p)
	b.reading.Store(false)
	if err == io.EOF {
		b.eof = true
	} else if err != nil {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

// arm sets the read deadline before a read: now plus the timeout, but no
// later than until.
func (b *clientBody) arm() {
	now := time.Now()
	if !b.armed.IsZero() && (b.timeout == 0 || now.Sub(b.armed) <= b.timeout/16) {
		return
	}
	b.armed = now
	d := b.until
	if b.timeout > 0 && (d.IsZero() || now.Add(b.timeout).Before(d)) {
		d = now.Add(b.timeout)
	}
	b.deadline.SetReadDeadline(d) //nolint:errcheck // a writer without deadlines reads unbounded
}

// Close ends reads: later ones fail. It closes the client's body only on
// ReverseProxy's path.
func (b *clientBody) Close() error {
	b.closed.Store(true)
	if b.closeThrough {
		return b.rc.Close()
	}
	return nil
}

// fault reports whether an attempt that just failed failed because of the
// client's body, and how that is answered: a body that broke (a malformed
// chunk, a connection closed midway) is the client's, and so is an attempt
// that ended while the transport waited for more of the body (the
// body-read timeout, the route's deadline or an upstream that gave up on
// a stalled upload). A nil b has no fault.
func (b *clientBody) fault() (failure, bool) {
	if b == nil {
		return failure{}, false
	}
	b.mu.Lock()
	err := b.err
	b.mu.Unlock()
	var netErr net.Error
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil && !b.reading.Load():
		return failure{}, false
	case errors.As(err, &tooLarge):
		return failure{kind: failTooLarge, status: http.StatusRequestEntityTooLarge, body: bodyTooLarge}, true
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return failure{kind: failBodyTimeout, status: http.StatusRequestTimeout, body: bodyBodyTimeout}, true
	case errors.Is(err, io.ErrUnexpectedEOF):
		// The client closed its connection before the end of its body.
		return failure{kind: failCanceled, status: http.StatusBadRequest, body: bodyBadBody}, true
	}
	return failure{kind: failBadBody, status: http.StatusBadRequest, body: bodyBadBody}, true
}
