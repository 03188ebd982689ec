package metrics

import (
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Method label values; any other method is "other", so a client cannot
// make up label values.
const (
	methodGet = iota
	methodHead
	methodPost
	methodPut
	methodPatch
	methodDelete
	methodOptions
	methodOther
	numMethods
)

var methodLabels = [numMethods]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}

func methodIndex(m string) int {
	switch m {
	case http.MethodGet:
		return methodGet
	case http.MethodHead:
		return methodHead
	case http.MethodPost:
		return methodPost
	case http.MethodPut:
		return methodPut
	case http.MethodPatch:
		return methodPatch
	case http.MethodDelete:
		return methodDelete
	case http.MethodOptions:
		return methodOptions
	}
	return methodOther
}

// Status classes 1xx to 5xx, as indexes.
const numClasses = 5

var classLabels = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// classIndex returns the index of status's class; statuses outside
// 100-599 fall into the nearest class.
func classIndex(status int) int {
	return min(max(status/100-1, 0), numClasses-1)
}

// AttemptFailure is why an upstream attempt got no response.
type AttemptFailure uint8

// The failures, after the status classes in Route.attempts.
const (
	// ConnectFailure: no connection (refused, unreachable, connect
	// timeout, TLS handshake failure).
	ConnectFailure AttemptFailure = iota
	// Reset: the connection broke before a whole response header.
	Reset
	// Timeout: the route's timeout or a transport timeout.
	Timeout
	// Canceled: the client went away.
	Canceled
	// ProtocolError: the upstream answered in a way the proxy refuses.
	ProtocolError
	// BodyTooLarge: the client's body passed the route's limit.
	BodyTooLarge
	// BadRequestBody: the client's body could not be read (malformed).
	BadRequestBody
	// RequestBodyTimeout: the client's body stopped arriving.
	RequestBodyTimeout
	numFailures
)

var failureLabels = [numFailures]string{"connect_failure", "reset", "timeout", "canceled", "protocol_error", "body_too_large", "bad_request_body", "request_body_timeout"}

// Route records the requests of one route sending to one upstream. Its
// methods are safe for concurrent use, allocate nothing (but CountBody)
// and do nothing on a nil *Route.
type Route struct {
	route, upstream string

	inFlight        atomic.Int64
	requests        [numMethods][numClasses]atomic.Uint64
	bytesIn         atomic.Uint64
	bytesOut        atomic.Uint64
	attempts        [numClasses + int(numFailures)]atomic.Uint64
	retries         atomic.Uint64
	budgetExhausted atomic.Uint64
	duration        prometheus.Observer
	latency         prometheus.Observer
}

// Begin counts a request in flight; End must follow.
func (r *Route) Begin() {
	if r == nil {
		return
	}
	r.inFlight.Add(1)
}

// End records a request Begin counted: its method, the status it was
// answered with (0, nothing written, counts as the 200 net/http then
// sends), the response body bytes written and how long it took. A 101
// (an upgraded connection) is counted but its duration, the life of a
// tunnel, is not observed.
func (r *Route) End(method string, status int, written int64, d time.Duration) {
	if r == nil {
		return
	}
	r.inFlight.Add(-1)
	if status == 0 {
		status = http.StatusOK
	}
	r.requests[methodIndex(method)][classIndex(status)].Add(1)
	if written > 0 {
		r.bytesOut.Add(uint64(written))
	}
	if status != http.StatusSwitchingProtocols {
		r.duration.Observe(d.Seconds())
	}
}

// CountBody returns body counting the bytes read through it; body itself
// on a nil Route. It allocates, so call it only for requests that have a
// body.
func (r *Route) CountBody(body io.ReadCloser) io.ReadCloser {
	if r == nil {
		return body
	}
	return &countingBody{ReadCloser: body, n: &r.bytesIn}
}

// countingBody adds what it reads to n. It is never pooled: a transport
// may read a request body after the handler returned.
type countingBody struct {
	io.ReadCloser
	n *atomic.Uint64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.n.Add(uint64(n))
	}
	return n, err
}

// AttemptResponse records an upstream attempt that got a response header
// with status after latency.
func (r *Route) AttemptResponse(status int, latency time.Duration) {
	if r == nil {
		return
	}
	r.attempts[classIndex(status)].Add(1)
	if r.latency != nil {
		r.latency.Observe(latency.Seconds())
	}
}

// AttemptFailed records an upstream attempt that got no response.
func (r *Route) AttemptFailed(f AttemptFailure) {
	if r == nil || f >= numFailures {
		return
	}
	r.attempts[numClasses+int(f)].Add(1)
}

// Retry records a retry made.
func (r *Route) Retry() {
	if r == nil {
		return
	}
	r.retries.Add(1)
}

// RetryBudgetExhausted records a retry the route's budget refused.
func (r *Route) RetryBudgetExhausted() {
	if r == nil {
		return
	}
	r.budgetExhausted.Add(1)
}

func (r *Route) collect(m *Metrics, ch chan<- prometheus.Metric) {
	for mi := range r.requests {
		for ci := range r.requests[mi] {
			if v := r.requests[mi][ci].Load(); v > 0 {
				counter(ch, m.requests, v, r.route, r.upstream, methodLabels[mi], classLabels[ci])
			}
		}
	}
	for i := range r.attempts {
		v := r.attempts[i].Load()
		if v == 0 {
			continue
		}
		outcome := ""
		if i < numClasses {
			outcome = classLabels[i]
		} else {
			outcome = failureLabels[i-numClasses]
		}
		counter(ch, m.attempts, v, r.route, r.upstream, outcome)
	}
	gauge(ch, m.inFlight, float64(r.inFlight.Load()), r.route, r.upstream)
	counter(ch, m.bytesOut, r.bytesOut.Load(), r.route, r.upstream)
	if r.route == NoRoute {
		return // reads no body, never retries
	}
	counter(ch, m.bytesIn, r.bytesIn.Load(), r.route, r.upstream)
	counter(ch, m.retries, r.retries.Load(), r.route, r.upstream)
	counter(ch, m.budgetExhausted, r.budgetExhausted.Load(), r.route, r.upstream)
}
