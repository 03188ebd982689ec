package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// serveRoute builds one Route straight from its specs, without a gateway,
// and serves it; it returns the front's base URL. c's Breaker,
// TargetBreaker and Fallback are passed on.
func serveRoute(t testing.TB, spec *meridianv1.RouteSpec, up *meridianv1.UpstreamSpec, c proxy.RouteConfig) string {
	t.Helper()
	front, _ := servePool(t, spec, up, c)
	return front
}

// servePool is serveRoute that also returns the route's pool.
func servePool(t testing.TB, spec *meridianv1.RouteSpec, up *meridianv1.UpstreamSpec, c proxy.RouteConfig) (string, *upstream.Pool) {
	t.Helper()
	pool, err := upstream.New("up", up, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		pool.Transport().CloseIdleConnections()
	})
	c.Name, c.Spec, c.Pool, c.Buffers, c.Log = "r", spec, pool, proxy.NewBufferPool(), discard()
	rt, err := proxy.NewRoute(c)
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr(httptestServer(t, rt)), pool
}

func upstreamSpec(scheme meridianv1.Scheme, addrs ...string) *meridianv1.UpstreamSpec {
	spec := &meridianv1.UpstreamSpec{Scheme: scheme}
	for _, a := range addrs {
		spec.Targets = append(spec.Targets, &meridianv1.Target{Address: a})
	}
	return spec
}

func httpUpstream(addrs ...string) *meridianv1.UpstreamSpec {
	return upstreamSpec(meridianv1.Scheme_SCHEME_HTTP, addrs...)
}

// newBreaker returns a breaker that trips after n consecutive failures,
// stays open for open and closes after one successful probe. Its other
// conditions never trip.
func newBreaker(t testing.TB, n uint32, open time.Duration, opts breaker.Options) *breaker.Breaker {
	t.Helper()
	b, err := breaker.New(&meridianv1.CircuitBreakerSpec{
		Trip:     &meridianv1.TripConditions{ConsecutiveFailures: n},
		Open:     &meridianv1.OpenPolicy{Duration: durationpb.New(open)},
		HalfOpen: &meridianv1.HalfOpenPolicy{Probes: 1, Successes: 1},
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// counted is an upstream that counts its requests and answers with h;
// n is the request's number, from 1.
func counted(t testing.TB, h func(w http.ResponseWriter, r *http.Request, n int64)) (string, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(w, r, hits.Add(1))
	}))
	return addr(srv), &hits
}

func answer(code int) func(http.ResponseWriter, *http.Request, int64) {
	return func(w http.ResponseWriter, r *http.Request, _ int64) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(code)
		io.WriteString(w, strconv.Itoa(code))
	}
}

// resetConn closes the connection without answering.
func resetConn(w http.ResponseWriter, _ *http.Request, _ int64) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		conn.Close()
	}
}

// response is what a client got.
type response struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, req *http.Request) response {
	t.Helper()
	// The timeout only keeps a broken proxy from hanging the test.
	ctx, cancel := context.WithTimeout(req.Context(), 20*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func doGet(t testing.TB, url string) response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

// eventually polls cond every few milliseconds for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBreakerFallback(t *testing.T) {
	tests := []struct {
		name       string
		scheme     meridianv1.Scheme // h2c upstreams take ReverseProxy
		fallback   *meridianv1.Fallback
		wantStatus int
		wantBody   string
		wantHeader map[string]string
	}{
		{
			name:       "lean path, default answer",
			wantStatus: http.StatusServiceUnavailable,
			wantBody:   `{"error":"circuit breaker open"}` + "\n",
			wantHeader: map[string]string{"Content-Type": "application/json"},
		},
		{
			name:       "reverse proxy path, default answer",
			scheme:     meridianv1.Scheme_SCHEME_H2C,
			wantStatus: http.StatusServiceUnavailable,
			wantBody:   `{"error":"circuit breaker open"}` + "\n",
			wantHeader: map[string]string{"Content-Type": "application/json"},
		},
		{
			name:       "configured fallback",
			fallback:   &meridianv1.Fallback{Status: 200, Body: "cached", Headers: map[string]string{"content-type": "text/plain", "x-fallback": "yes"}},
			wantStatus: http.StatusOK,
			wantBody:   "cached",
			wantHeader: map[string]string{"Content-Type": "text/plain", "X-Fallback": "yes"},
		},
		{
			name:       "configured fallback without a status",
			scheme:     meridianv1.Scheme_SCHEME_H2C,
			fallback:   &meridianv1.Fallback{Body: `{"error":"upstream unavailable"}`, Headers: map[string]string{"Content-Type": "application/json"}},
			wantStatus: http.StatusServiceUnavailable,
			wantBody:   `{"error":"upstream unavailable"}`,
			wantHeader: map[string]string{"Content-Type": "application/json"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, hits := counted(t, answer(http.StatusInternalServerError))
			b := newBreaker(t, 2, time.Hour, breaker.Options{})
			front := serveRoute(t, &meridianv1.RouteSpec{}, upstreamSpec(tt.scheme, up), proxy.RouteConfig{Breaker: b, Fallback: tt.fallback})

			for i := range 2 {
				if got := doGet(t, front+"/"); got.status != http.StatusInternalServerError || got.header.Get("X-Meridian-Breaker") != "" {
					t.Fatalf("request %d: %d %q (breaker %q), want the upstream's 500", i, got.status, got.body, got.header.Get("X-Meridian-Breaker"))
				}
			}
			if s := b.State(); s != breaker.Open {
				t.Fatalf("breaker %s after 2 failures, want open", s)
			}
			for i := range 3 {
				got := doGet(t, front+"/")
				if got.status != tt.wantStatus || got.body != tt.wantBody {
					t.Errorf("request %d: %d %q, want %d %q", i, got.status, got.body, tt.wantStatus, tt.wantBody)
				}
				if v := got.header.Get("X-Meridian-Breaker"); v != "open" {
					t.Errorf("X-Meridian-Breaker = %q, want open", v)
				}
				for k, v := range tt.wantHeader {
					if got.header.Get(k) != v {
						t.Errorf("%s = %q, want %q", k, got.header.Get(k), v)
					}
				}
			}
			if n := hits.Load(); n != 2 {
				t.Errorf("upstream saw %d requests, want 2: an open breaker must not let any through", n)
			}
			if n := b.Snapshot().Rejected; n != 3 {
				t.Errorf("breaker rejected %d, want 3", n)
			}
		})
	}
}

func TestBreakerTargetScope(t *testing.T) {
	bad, badHits := counted(t, answer(http.StatusInternalServerError))
	good, goodHits := counted(t, answer(http.StatusOK))
	breakers := map[string]*breaker.Breaker{
		bad:  newBreaker(t, 1, time.Hour, breaker.Options{}),
		good: newBreaker(t, 1, time.Hour, breaker.Options{}),
	}
	lookup := func(a string) *breaker.Breaker { return breakers[a] }
	front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(bad, good), proxy.RouteConfig{TargetBreaker: lookup})

	// Round robin starts with bad, whose breaker trips on its first 500;
	// then every pick of bad is refused and the request goes to good.
	if got := doGet(t, front+"/"); got.status != http.StatusInternalServerError {
		t.Fatalf("first request: %d, want bad's 500", got.status)
	}
	for i := range 6 {
		if got := doGet(t, front+"/"); got.status != http.StatusOK {
			t.Fatalf("request %d: %d %q, want good's 200", i, got.status, got.body)
		}
	}
	if badHits.Load() != 1 || goodHits.Load() != 6 {
		t.Errorf("bad saw %d, good %d; want 1 and 6", badHits.Load(), goodHits.Load())
	}

	// With both targets open, no one admits: the fallback.
	tk, err := breakers[good].Allow()
	if err != nil {
		t.Fatal(err)
	}
	breakers[good].Record(tk, breaker.Failure, 0)
	got := doGet(t, front+"/")
	if got.status != http.StatusServiceUnavailable || got.header.Get("X-Meridian-Breaker") != "open" {
		t.Errorf("both open: %d %q (breaker %q), want the 503 fallback", got.status, got.body, got.header.Get("X-Meridian-Breaker"))
	}
	if badHits.Load() != 1 || goodHits.Load() != 6 {
		t.Errorf("after the fallback bad saw %d, good %d; want 1 and 6", badHits.Load(), goodHits.Load())
	}
}

func TestBreakerHalfOpen(t *testing.T) {
	const (
		fail = iota
		block
		ok
	)
	var mode atomic.Int32
	arrived := make(chan struct{}, 1)
	up, hits := counted(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		switch mode.Load() {
		case fail:
			w.WriteHeader(http.StatusInternalServerError)
		case block:
			arrived <- struct{}{}
			<-r.Context().Done()
		default:
			w.WriteHeader(http.StatusOK)
		}
	})
	// A probe's slot must come back from Record, not from ProbeTimeout.
	b := newBreaker(t, 1, 50*time.Millisecond, breaker.Options{ProbeTimeout: time.Hour})
	front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(up), proxy.RouteConfig{Breaker: b})

	if got := doGet(t, front+"/"); got.status != http.StatusInternalServerError {
		t.Fatalf("first request: %d, want 500", got.status)
	}
	eventually(t, "the breaker is half-open", func() bool { return b.State() == breaker.HalfOpen })

	// The probe hangs upstream; meanwhile the breaker has no probe to spare.
	mode.Store(block)
	ctx, cancel := context.WithCancel(context.Background())
	probeDone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", front+"/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		probeDone <- err
	}()
	<-arrived
	got := doGet(t, front+"/")
	if got.status != http.StatusServiceUnavailable || got.header.Get("X-Meridian-Breaker") != "half-open" ||
		got.body != `{"error":"circuit breaker half-open"}`+"\n" {
		t.Errorf("during the probe: %d %q (breaker %q), want 503 half-open", got.status, got.body, got.header.Get("X-Meridian-Breaker"))
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}

	// The probe's client goes away: Canceled gives the slot back, and the
	// next request probes and closes the breaker.
	cancel()
	if err := <-probeDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled probe: %v", err)
	}
	mode.Store(ok)
	eventually(t, "a probe gets through", func() bool {
		got := doGet(t, front+"/")
		if got.status == http.StatusServiceUnavailable && got.header.Get("X-Meridian-Breaker") == "half-open" {
			return false // the cancelled probe is not recorded yet
		}
		if got.status != http.StatusOK {
			t.Fatalf("probe: %d %q (breaker %q), want 200", got.status, got.body, got.header.Get("X-Meridian-Breaker"))
		}
		return true
	})
	if s := b.State(); s != breaker.Closed {
		t.Errorf("breaker %s after a successful probe, want closed", s)
	}
	if got := doGet(t, front+"/"); got.status != http.StatusOK {
		t.Errorf("after closing: %d, want 200", got.status)
	}
}

// TestBreakerOutcomes checks what each kind of attempt counts as, read
// back from the breaker's metrics once the client has its answer.
func TestBreakerOutcomes(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	hang := func(w http.ResponseWriter, r *http.Request, _ int64) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	tests := []struct {
		name       string
		handler    func(http.ResponseWriter, *http.Request, int64) // nil: a dead address
		scheme     meridianv1.Scheme
		wantStatus int
		want       breaker.Aggregate // Requests, Failures, Timeouts
	}{
		{name: "success", handler: answer(http.StatusOK), wantStatus: 200, want: breaker.Aggregate{Requests: 1}},
		{name: "client error status", handler: answer(http.StatusNotFound), wantStatus: 404, want: breaker.Aggregate{Requests: 1}},
		{name: "failure status", handler: answer(http.StatusServiceUnavailable), wantStatus: 503, want: breaker.Aggregate{Requests: 1, Failures: 1}},
		{name: "connect failure", wantStatus: 502, want: breaker.Aggregate{Requests: 1, Failures: 1}},
		{name: "reset", handler: resetConn, wantStatus: 502, want: breaker.Aggregate{Requests: 1, Failures: 1}},
		{name: "route timeout", handler: hang, wantStatus: 504, want: breaker.Aggregate{Requests: 1, Failures: 1, Timeouts: 1}},
		{name: "route timeout, reverse proxy", handler: hang, scheme: meridianv1.Scheme_SCHEME_H2C, wantStatus: 504, want: breaker.Aggregate{Requests: 1, Failures: 1, Timeouts: 1}},
		{name: "failure status, reverse proxy", handler: answer(http.StatusInternalServerError), scheme: meridianv1.Scheme_SCHEME_H2C, wantStatus: 500, want: breaker.Aggregate{Requests: 1, Failures: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := deadAddr(t)
			if tt.handler != nil {
				target, _ = counted(t, tt.handler)
			}
			b := newBreaker(t, 1000, time.Hour, breaker.Options{})
			front := serveRoute(t, &meridianv1.RouteSpec{Timeout: durationpb.New(100 * time.Millisecond)},
				upstreamSpec(tt.scheme, target), proxy.RouteConfig{Breaker: b})
			if got := doGet(t, front+"/"); got.status != tt.wantStatus {
				t.Fatalf("status %d %q, want %d", got.status, got.body, tt.wantStatus)
			}
			got := b.Snapshot().Last60s
			got.P50, got.P95, got.P99 = 0, 0, 0
			if got != tt.want {
				t.Errorf("breaker counted %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestBreakerRecordsAtHeaders checks that an exchange whose body (or
// upgraded connection) is still open is already recorded.
func TestBreakerRecordsAtHeaders(t *testing.T) {
	t.Run("streamed body", func(t *testing.T) {
		release := make(chan struct{})
		up, _ := counted(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			io.WriteString(w, "first\n")
			http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		b := newBreaker(t, 1000, time.Hour, breaker.Options{})
		front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(up), proxy.RouteConfig{Breaker: b})
		resp, err := http.Get(front + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "first\n" {
			t.Fatalf("first line %q, %v", line, err)
		}
		if n := b.Snapshot().Last60s.Requests; n != 1 {
			t.Errorf("breaker recorded %d requests while the body streams, want 1", n)
		}
		close(release)
	})
	t.Run("websocket", func(t *testing.T) {
		up := httptestServer(t, websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }))
		b := newBreaker(t, 1000, time.Hour, breaker.Options{})
		front := strings.TrimPrefix(serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(addr(up)), proxy.RouteConfig{Breaker: b}), "http://")
		ws, err := websocket.Dial("ws://"+front+"/echo", "", "http://"+front)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		if err := websocket.Message.Send(ws, "hi"); err != nil {
			t.Fatal(err)
		}
		var msg string
		if err := websocket.Message.Receive(ws, &msg); err != nil || msg != "hi" {
			t.Fatalf("echo %q, %v", msg, err)
		}
		if a := b.Snapshot().Last60s; a.Requests != 1 || a.Failures != 0 {
			t.Errorf("breaker recorded %+v while the connection is open, want 1 success", a)
		}
	})
}

// retrySpec is a route retrying attempts times on conditions on, without
// backoff and with the whole budget.
func retrySpec(attempts uint32, on ...string) *meridianv1.RouteSpec {
	return &meridianv1.RouteSpec{Retry: &meridianv1.RetryPolicy{
		Attempts: attempts, On: on, BudgetPercent: 100,
		Backoff: &meridianv1.Backoff{Base: durationpb.New(0)},
	}}
}

func TestRetryDifferentTarget(t *testing.T) {
	tests := []struct {
		name string
		bad  func(http.ResponseWriter, *http.Request, int64) // nil: a dead address
		on   []string
	}{
		{name: "listed status", bad: answer(http.StatusServiceUnavailable), on: []string{"503"}},
		{name: "5xx", bad: answer(http.StatusInternalServerError), on: []string{"5xx"}},
		{name: "gateway_error status", bad: answer(http.StatusBadGateway), on: []string{"gateway_error"}},
		{name: "connect failure", on: []string{"connect_failure"}},
		{name: "gateway_error without a response", on: []string{"gateway_error"}},
		{name: "reset", bad: resetConn, on: []string{"reset"}},
		{name: "default conditions", bad: resetConn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := deadAddr(t)
			var badHits *atomic.Int64
			if tt.bad != nil {
				bad, badHits = counted(t, tt.bad)
			}
			good, goodHits := counted(t, answer(http.StatusOK))
			// Smooth weighted round robin with weights 2 and 1 picks bad,
			// good, bad, bad, good, bad...: a retry's first pick is often
			// bad again, and must be passed over.
			up := httpUpstream(bad, good)
			up.Targets[0].Weight = 2
			front := serveRoute(t, retrySpec(1, tt.on...), up, proxy.RouteConfig{})
			// With one retry, every request must reach good: a retry never
			// goes back to the target that just failed.
			const n = 6
			for i := range n {
				if got := doGet(t, front+"/"); got.status != http.StatusOK {
					t.Fatalf("request %d: %d %q, want 200", i, got.status, got.body)
				}
			}
			if goodHits.Load() != n {
				t.Errorf("good saw %d requests, want %d", goodHits.Load(), n)
			}
			if badHits != nil && badHits.Load() == 0 {
				t.Error("bad saw no request: nothing was retried")
			}
		})
	}
}

func TestRetryConditions(t *testing.T) {
	tests := []struct {
		name       string
		on         []string
		first      func(http.ResponseWriter, *http.Request, int64) // the first attempt; later ones get 200
		wantHits   int64
		wantStatus int
	}{
		{name: "unlisted status", on: []string{"503"}, first: answer(502), wantHits: 1, wantStatus: 502},
		{name: "gateway_error skips 500", on: []string{"gateway_error"}, first: answer(500), wantHits: 1, wantStatus: 500},
		{name: "5xx takes 500", on: []string{"5xx"}, first: answer(500), wantHits: 2, wantStatus: 200},
		{name: "listed 4xx", on: []string{"429"}, first: answer(429), wantHits: 2, wantStatus: 200},
		{name: "defaults skip statuses", first: answer(503), wantHits: 1, wantStatus: 503},
		{name: "timeout is not an upstream's 504", on: []string{"timeout"}, first: answer(504), wantHits: 1, wantStatus: 504},
		{name: "listed status is no reset", on: []string{"502"}, first: resetConn, wantHits: 1, wantStatus: 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, hits := counted(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				if n == 1 {
					tt.first(w, r, n)
					return
				}
				w.WriteHeader(http.StatusOK)
			})
			front := serveRoute(t, retrySpec(3, tt.on...), httpUpstream(up), proxy.RouteConfig{})
			if got := doGet(t, front+"/"); got.status != tt.wantStatus {
				t.Errorf("status %d %q, want %d", got.status, got.body, tt.wantStatus)
			}
			if hits.Load() != tt.wantHits {
				t.Errorf("upstream saw %d requests, want %d", hits.Load(), tt.wantHits)
			}
		})
	}
}

func TestRetryMethodsAndBodies(t *testing.T) {
	small := strings.Repeat("0123456789abcdef", 640)                      // 10 KiB
	large := strings.Repeat("0123456789abcdef", proxy.MaxReplayBody/16+1) // past the replay limit
	tests := []struct {
		name          string
		method        string
		body          string
		chunked       bool
		nonIdempotent bool
		wantRetried   bool
	}{
		{name: "GET", method: "GET", wantRetried: true},
		{name: "DELETE", method: "DELETE", wantRetried: true},
		{name: "POST", method: "POST", body: small},
		{name: "PATCH", method: "PATCH", body: small},
		{name: "POST with nonIdempotent", method: "POST", body: small, nonIdempotent: true, wantRetried: true},
		{name: "PUT replays its body", method: "PUT", body: small, wantRetried: true},
		{name: "PUT with a body past the limit", method: "PUT", body: large},
		{name: "PUT with a chunked body", method: "PUT", body: small, chunked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var bodies []string
			up, hits := counted(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				b, err := io.ReadAll(r.Body)
				if err != nil {
					t.Errorf("upstream read: %v", err)
				}
				mu.Lock()
				bodies = append(bodies, string(b))
				mu.Unlock()
				if n == 1 {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				io.WriteString(w, "ok")
			})
			spec := retrySpec(1, "503")
			spec.Retry.NonIdempotent = tt.nonIdempotent
			front := serveRoute(t, spec, httpUpstream(up), proxy.RouteConfig{})

			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
				if tt.chunked {
					body = onlyReader{body}
				}
			}
			req, err := http.NewRequest(tt.method, front+"/", body)
			if err != nil {
				t.Fatal(err)
			}
			got := do(t, req)

			wantStatus, wantHits := http.StatusServiceUnavailable, int64(1)
			if tt.wantRetried {
				wantStatus, wantHits = http.StatusOK, 2
			}
			if got.status != wantStatus || hits.Load() != wantHits {
				t.Errorf("got %d after %d upstream requests, want %d after %d", got.status, hits.Load(), wantStatus, wantHits)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, b := range bodies {
				if b != tt.body {
					t.Errorf("attempt %d sent a body of %d bytes, want the %d sent", i, len(b), len(tt.body))
				}
			}
		})
	}
}

func TestRetryDeadline(t *testing.T) {
	t.Run("a backoff past the deadline is not waited", func(t *testing.T) {
		up, hits := counted(t, answer(http.StatusServiceUnavailable))
		const century = 100 * 365 * 24 * time.Hour
		spec := retrySpec(5, "503")
		spec.Timeout = durationpb.New(200 * time.Millisecond)
		spec.Retry.Backoff = &meridianv1.Backoff{Base: durationpb.New(century), Max: durationpb.New(century)}
		front := serveRoute(t, spec, httpUpstream(up), proxy.RouteConfig{})
		// The wait is drawn from [0, a century): it ends before the
		// deadline about once in 10¹⁰ runs.
		if got := doGet(t, front+"/"); got.status != http.StatusServiceUnavailable || got.body != "503" {
			t.Errorf("status %d %q, want the upstream's 503 at once", got.status, got.body)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("upstream saw %d requests, want 1", n)
		}
	})
	t.Run("the route timeout cuts a retry", func(t *testing.T) {
		up, hits := counted(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			if n == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			<-r.Context().Done()
		})
		b := newBreaker(t, 1000, time.Hour, breaker.Options{})
		spec := retrySpec(5, "503")
		spec.Timeout = durationpb.New(300 * time.Millisecond)
		front := serveRoute(t, spec, httpUpstream(up), proxy.RouteConfig{Breaker: b})
		if got := doGet(t, front+"/"); got.status != http.StatusGatewayTimeout || got.body != `{"error":"upstream timeout"}`+"\n" {
			t.Errorf("status %d %q, want 504", got.status, got.body)
		}
		if n := hits.Load(); n != 2 {
			t.Errorf("upstream saw %d requests, want 2", n)
		}
		if a := b.Snapshot().Last60s; a.Requests != 2 || a.Failures != 2 || a.Timeouts != 1 {
			t.Errorf("breaker counted %+v, want 2 requests: a 503 and a timeout", a)
		}
	})
}

func TestRetryBudget(t *testing.T) {
	up, hits := counted(t, answer(http.StatusServiceUnavailable))
	spec := retrySpec(3, "503")
	spec.Retry.BudgetPercent = 20
	front := serveRoute(t, spec, httpUpstream(up), proxy.RouteConfig{})

	const n = 200
	start := time.Now()
	for i := range n {
		if got := doGet(t, front+"/"); got.status != http.StatusServiceUnavailable {
			t.Fatalf("request %d: %d, want 503", i, got.status)
		}
	}
	// The budget allows 20% of the requests (or 3 retries in a second
	// when that is more) in every rolling second the test spanned; without
	// it the upstream would see 4n.
	seconds := int64(math.Ceil(time.Since(start).Seconds())) + 1
	limit := n + n/5 + 3*seconds
	if got := hits.Load(); got > limit || got <= n {
		t.Errorf("upstream saw %d requests for %d client requests, want more than %d and at most %d", got, n, n, limit)
	}
}

func TestNoRetryWhileOpen(t *testing.T) {
	up, hits := counted(t, answer(http.StatusServiceUnavailable))
	b := newBreaker(t, 2, time.Hour, breaker.Options{})
	front := serveRoute(t, retrySpec(5, "503"), httpUpstream(up), proxy.RouteConfig{Breaker: b})

	// The second attempt trips the breaker: retrying stops there, and the
	// client gets the last upstream answer.
	got := doGet(t, front+"/")
	if got.status != http.StatusServiceUnavailable || got.body != "503" || got.header.Get("X-Meridian-Breaker") != "" {
		t.Errorf("status %d %q (breaker %q), want the upstream's 503", got.status, got.body, got.header.Get("X-Meridian-Breaker"))
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
	got = doGet(t, front+"/")
	if got.status != http.StatusServiceUnavailable || got.header.Get("X-Meridian-Breaker") != "open" {
		t.Errorf("next request: %d %q (breaker %q), want the fallback", got.status, got.body, got.header.Get("X-Meridian-Breaker"))
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}

// TestRetryConcurrent sends concurrent requests through retries and a
// breaker: every attempt must be recorded once by the breaker and reported
// once to the pool.
func TestRetryConcurrent(t *testing.T) {
	a, aHits := counted(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if n%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	b, bHits := counted(t, answer(http.StatusOK))
	br := newBreaker(t, 1000, time.Hour, breaker.Options{})
	front, pool := servePool(t, retrySpec(2, "503"), httpUpstream(a, b), proxy.RouteConfig{Breaker: br})

	const workers, each = 4, 25
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				req, _ := http.NewRequest("PUT", front+"/", strings.NewReader("body"))
				if got := do(t, req); got.status != http.StatusOK && got.status != http.StatusServiceUnavailable {
					t.Errorf("status %d %q", got.status, got.body)
				}
			}
		})
	}
	wg.Wait()
	seconds := uint64(math.Ceil(time.Since(start).Seconds())) + 1
	hits := aHits.Load() + bHits.Load()
	if hits < workers*each {
		t.Fatalf("upstreams saw %d requests, want at least %d", hits, workers*each)
	}
	// Recording twice would count more than the upstreams saw. The
	// breaker's metrics may drop the few outcomes recorded while a
	// one-second slot turns over (see breaker's turnover), at most one per
	// worker per second the test spans.
	if got := br.Snapshot().Last60s.Requests; got > uint64(hits) || got+workers*seconds < uint64(hits) {
		t.Errorf("breaker recorded %d attempts, upstreams saw %d", got, hits)
	}
	eventually(t, "every attempt is reported to the pool", func() bool {
		for _, s := range pool.Status() {
			if s.InFlight != 0 {
				return false
			}
		}
		return true
	})
}

func TestRetryPolicyErrors(t *testing.T) {
	tests := []struct {
		name  string
		retry *meridianv1.RetryPolicy
		path  string
	}{
		{name: "too many attempts", retry: &meridianv1.RetryPolicy{Attempts: proxy.MaxRetries + 1}, path: "spec.retry.attempts"},
		{name: "unknown condition", retry: &meridianv1.RetryPolicy{Attempts: 1, On: []string{"sometimes"}}, path: "spec.retry.on[0]"},
		{name: "status out of range", retry: &meridianv1.RetryPolicy{Attempts: 1, On: []string{"reset", "600"}}, path: "spec.retry.on[1]"},
		{name: "base past max", retry: &meridianv1.RetryPolicy{Attempts: 1, Backoff: &meridianv1.Backoff{Base: durationpb.New(time.Second), Max: durationpb.New(time.Millisecond)}}, path: "spec.retry.backoff.base"},
		{name: "budget past 100", retry: &meridianv1.RetryPolicy{Attempts: 1, BudgetPercent: 101}, path: "spec.retry.budgetPercent"},
	}
	pool, err := upstream.New("up", httpUpstream("127.0.0.1:1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proxy.NewRoute(proxy.RouteConfig{Name: "r", Spec: &meridianv1.RouteSpec{Retry: tt.retry}, Pool: pool, Buffers: proxy.NewBufferPool(), Log: discard()})
			if err == nil || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("NewRoute error %v, want one naming %s", err, tt.path)
			}
		})
	}
}

// BenchmarkRoute compares a route without breaker and retries with one
// that has both but never uses them (the breaker stays closed, the
// upstream answers 200).
func BenchmarkRoute(b *testing.B) {
	srv := benchUpstream(b)
	for _, bb := range []struct {
		name  string
		spec  *meridianv1.RouteSpec
		guard bool
	}{
		{name: "plain", spec: &meridianv1.RouteSpec{}},
		{name: "breaker+retry", spec: retrySpec(3, "connect_failure", "reset", "503"), guard: true},
	} {
		b.Run(bb.name, func(b *testing.B) {
			var c proxy.RouteConfig
			if bb.guard {
				c.Breaker = newBreaker(b, 5, time.Second, breaker.Options{})
			}
			pool, err := upstream.New("up", httpUpstream(addr(srv)), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Transport().CloseIdleConnections()
			c.Name, c.Spec, c.Pool, c.Buffers, c.Log = "r", bb.spec, pool, proxy.NewBufferPool(), discard()
			rt, err := proxy.NewRoute(c)
			if err != nil {
				b.Fatal(err)
			}
			runProxyBench(b, rt)
		})
	}
}
