package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The request-path hardening tests (issue 13) talk to a real data plane
// over raw sockets, with upstreams served by the test itself so that it
// sees exactly what reached them and how many connections they hold.

// countedUpstream is an upstream served by the test that counts its open
// connections and answers with h.
type countedUpstream struct {
	addr string
	open atomic.Int64 // connections open now
}

func serveCounted(t *testing.T, h http.Handler) *countedUpstream {
	t.Helper()
	u := &countedUpstream{}
	u.addr = serveServer(t, &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ConnState: func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			u.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			u.open.Add(-1)
		}
	}})
	return u
}

// headersSeen answers what the upstream received: its header, as JSON. A
// request asking for an upgrade is switched to the protocol it asked for,
// whatever it was, so that the gateway alone decides what is tunnelled.
func headersSeen(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	if up := r.Header.Get("Upgrade"); up != "" {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", up)
		brw.Flush()
		io.Copy(io.Discard, brw) // raw bytes now, whatever the client sends
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(r.Header)
}

// rawExchange sends req on a new connection to addr and reads one
// response. closed says whether the gateway closed the connection after
// it: an open one must serve a second, plain request.
func rawExchange(t *testing.T, addr, req string) (status int, header http.Header, body string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	// A closed connection reads EOF (or a reset) at once; an open one
	// answers a second request.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /second HTTP/1.1\r\nHost: gw.test\r\n\r\n"); err != nil {
		return res.StatusCode, res.Header, string(b), true
	}
	second, err := http.ReadResponse(br, nil)
	if err != nil {
		return res.StatusCode, res.Header, string(b), true
	}
	second.Body.Close()
	if second.StatusCode != http.StatusOK {
		t.Errorf("second request on the kept connection: status %d", second.StatusCode)
	}
	return res.StatusCode, res.Header, string(b), false
}

// TestMalformedRequests: the raw-socket table of issue 13. Ambiguous
// framing is refused with 400 and the connection closed before any route
// sees it; headers a client uses to strip the gateway's own are removed
// first; upgrades are tunnelled by allow-list only.
func TestMalformedRequests(t *testing.T) {
	skipShort(t)
	up := serveCounted(t, http.HandlerFunc(headersSeen))
	dp := gatewayFor(t, oneRoute("http", []string{up.addr}, ""))

	const host = "Host: gw.test\r\n"
	var manyHeaders strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&manyHeaders, "X-H%d: v\r\n", i)
	}
	tests := []struct {
		name       string
		req        string
		wantStatus int
		wantClosed bool
		// check, when set, judges the upstream's view (the JSON body).
		check func(t *testing.T, seen http.Header)
	}{
		{name: "Content-Length and Transfer-Encoding",
			req:        "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "Transfer-Encoding then Content-Length",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "folded Transfer-Encoding",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "folded ordinary header",
			req:        "GET / HTTP/1.1\r\n" + host + "X-Long: one\r\n\ttwo\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "Transfer-Encoding Chunked (names are case-insensitive)",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			wantStatus: 200, wantClosed: false},
		{name: "two transfer codings",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "bare LF line endings",
			req:        "GET / HTTP/1.1\n" + host[:len(host)-2] + "\n\n",
			wantStatus: 400, wantClosed: true},
		{name: "chunk size not hex",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "negative chunk size",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "chunk size overflowing 64 bits",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "chunk size line ending in bare LF",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "chunk longer than its size",
			req:        "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
			wantStatus: 400, wantClosed: true},
		{name: "5,000 headers",
			req:        "GET / HTTP/1.1\r\n" + host + manyHeaders.String() + "\r\n",
			wantStatus: 431, wantClosed: false},
		{name: "underscore header names are dropped",
			req:        "GET / HTTP/1.1\r\n" + host + "X_User_ID: admin\r\nX-Kept: yes\r\n\r\n",
			wantStatus: 200, wantClosed: false,
			check: func(t *testing.T, seen http.Header) {
				for k := range seen {
					if strings.Contains(k, "_") {
						t.Errorf("upstream saw %s", k)
					}
				}
				if seen.Get("X-Kept") != "yes" {
					t.Errorf("X-Kept = %q, want yes", seen.Get("X-Kept"))
				}
			}},
		{name: "Connection naming the gateway's own headers",
			req: "GET / HTTP/1.1\r\n" + host +
				"Connection: keep-alive, X-Request-Id, X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Via\r\n\r\n",
			wantStatus: 200, wantClosed: false,
			check: func(t *testing.T, seen http.Header) {
				for _, k := range []string{"X-Request-Id", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Via"} {
					if seen.Get(k) == "" {
						t.Errorf("upstream did not get %s: a client's Connection header stripped it", k)
					}
				}
			}},
		{name: "Upgrade h2c is forwarded as a plain request",
			req:        "GET / HTTP/1.1\r\n" + host + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
			wantStatus: 200, wantClosed: false,
			check: func(t *testing.T, seen http.Header) {
				if seen.Get("Upgrade") != "" || seen.Get("Http2-Settings") != "" {
					t.Errorf("upstream saw Upgrade %q, HTTP2-Settings %q", seen.Get("Upgrade"), seen.Get("Http2-Settings"))
				}
			}},
		{name: "unknown upgrade the upstream would accept",
			req:        "GET / HTTP/1.1\r\n" + host + "Connection: Upgrade\r\nUpgrade: tunnel\r\n\r\n",
			wantStatus: 403, wantClosed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body, closed := rawExchange(t, dp.addr, tt.req)
			if status != tt.wantStatus {
				t.Errorf("status %d, want %d (body %.200q)", status, tt.wantStatus, body)
			}
			if closed != tt.wantClosed {
				t.Errorf("connection closed: %v, want %v", closed, tt.wantClosed)
			}
			if tt.check != nil && status == http.StatusOK {
				var seen http.Header
				if err := json.Unmarshal([]byte(body), &seen); err != nil {
					t.Fatalf("upstream's answer %q: %v", body, err)
				}
				tt.check(t, seen)
			}
		})
	}
	if n := scrapeSum(t, "http://"+dp.admin+"/metrics", "meridian_dataplane_malformed_requests_total"); n < 10 {
		t.Errorf("malformed_requests_total = %v, want at least 10", n)
	}
}

// scrapeSum scrapes url and returns the sum of every sample of the metric
// name, whatever its labels (0 when it has none).
func scrapeSum(t *testing.T, url, name string) float64 {
	t.Helper()
	var sum float64
	for _, line := range strings.Split(scrape(t, url), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		sum += f
	}
	return sum
}

// faultConfig routes / to two test upstreams behind a breaker that trips
// at a 50% error rate over 3 requests, with passive ejection after 3
// consecutive failures.
func faultConfig(a, b string) string {
	return fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: up}
spec:
  scheme: http
  targets: [{address: %q}, {address: %q}]
  healthCheck: {passive: {consecutiveFailures: 3, ejectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: meridian/v1
kind: CircuitBreaker
metadata: {name: brk}
spec:
  minRequests: 3
  trip: {errorRate: 0.5}
  open: {duration: 30s}
  scope: upstream
---
apiVersion: meridian/v1
kind: Route
metadata: {name: all}
spec:
  match: {paths: [{prefix: /}]}
  upstream: up
  timeout: 5s
  circuitBreaker: brk
`, a, b)
}

// TestClientFaultsSpareTheUpstream: 50 requests with malformed or
// abandoned bodies, sent while legitimate traffic flows, leave the
// breaker closed and both targets in the pool; the legitimate requests
// all succeed, and the metrics blame the client, not the upstream.
func TestClientFaultsSpareTheUpstream(t *testing.T) {
	skipShort(t)
	a := serveCounted(t, http.HandlerFunc(headersSeen))
	b := serveCounted(t, http.HandlerFunc(headersSeen))
	dp := gatewayFor(t, faultConfig(a.addr, b.addr), "--body-read-timeout", "500ms")

	stop := make(chan struct{})
	var legit, legitErrors atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			code, body, err := dp.get("/legit")
			legit.Add(1)
			if err != nil || code != http.StatusOK {
				legitErrors.Add(1)
				t.Logf("legitimate request: %d %.100q %v", code, body, err)
			}
		}
	}()

	bad := []string{
		"POST /bad HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
		"POST /bad HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
		"POST /bad HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\nstalls here",
	}
	var statuses sync.Map // status -> count
	var sent sync.WaitGroup
	for i := range 50 {
		sent.Add(1)
		go func() {
			defer sent.Done()
			status := badRequest(t, dp.addr, bad[i%len(bad)], i%5 == 4)
			n, _ := statuses.LoadOrStore(status, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		}()
	}
	sent.Wait()
	time.Sleep(200 * time.Millisecond) // legitimate traffic after the last fault
	close(stop)
	wg.Wait()

	statuses.Range(func(k, v any) bool {
		t.Logf("bad requests answered %v: %d", k, v.(*atomic.Int64).Load())
		if s := k.(int); s != 0 && s != http.StatusBadRequest && s != http.StatusRequestTimeout {
			t.Errorf("a bad request got %d, want 400 or 408", s)
		}
		return true
	})
	if legit.Load() == 0 || legitErrors.Load() != 0 {
		t.Errorf("%d of %d legitimate requests failed, want 0 of some", legitErrors.Load(), legit.Load())
	}
	metrics := "http://" + dp.admin + "/metrics"
	if n := scrapeSum(t, metrics, "meridian_dataplane_breaker_transitions_total"); n != 0 {
		t.Errorf("breaker_transitions_total = %v, want 0: the client's faults moved the breaker", n)
	}
	if n := scrapeValue(t, metrics, `meridian_dataplane_upstream_targets{state="ejected",upstream="up"}`); n != 0 {
		t.Errorf("%v targets ejected, want 0", n)
	}
	for _, outcome := range []string{"reset", "timeout", "connect_failure"} {
		series := fmt.Sprintf(`meridian_dataplane_upstream_attempts_total{outcome=%q,route="all",upstream="up"}`, outcome)
		if n := scrapeOptional(t, metrics, series); n != 0 {
			t.Errorf("%s = %v, want 0: a client's fault was counted as the upstream's", series, n)
		}
	}
	client := scrapeOptional(t, metrics, `meridian_dataplane_upstream_attempts_total{outcome="bad_request_body",route="all",upstream="up"}`) +
		scrapeOptional(t, metrics, `meridian_dataplane_upstream_attempts_total{outcome="request_body_timeout",route="all",upstream="up"}`) +
		scrapeOptional(t, metrics, `meridian_dataplane_upstream_attempts_total{outcome="canceled",route="all",upstream="up"}`)
	if client == 0 {
		t.Error("no attempt was counted as the client's fault")
	}
}

// badRequest sends req on its own connection and returns the status of
// the answer, or 0 when leave is set: the client then closes its
// connection midway instead of waiting.
func badRequest(t *testing.T, addr, req string, leave bool) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return -1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req)
	if leave {
		time.Sleep(50 * time.Millisecond)
		return 0
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Errorf("no answer to a bad request: %v", err)
		return -1
	}
	res.Body.Close()
	return res.StatusCode
}

// scrapeOptional is scrapeValue for a series that may not be exposed yet
// (0 then).
func scrapeOptional(t *testing.T, url, series string) float64 {
	t.Helper()
	v, _ := seriesValue(t, scrape(t, url), series)
	return v
}

// TestSlowClients: with --send-timeout and --body-read-timeout of 1s, a
// client that stops reading a large response and one that stops sending
// its body are cut within a few seconds, and the upstream connections
// they held are closed; the gateway serves others meanwhile.
func TestSlowClients(t *testing.T) {
	skipShort(t)
	big := strings.Repeat("x", 1<<20)
	up := serveCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			for range 64 { // 64 MiB: far more than socket buffers hold
				if _, err := io.WriteString(w, big); err != nil {
					return
				}
			}
			return
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	cfg := strings.Replace(oneRoute("http", []string{up.addr}, ""), "  timeout: 2s\n", "", 1) // no route timeout
	dp := gatewayFor(t, cfg, "--send-timeout", "1s", "--body-read-timeout", "1s")

	t.Run("slow reader", func(t *testing.T) {
		c, err := net.Dial("tcp", dp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /big HTTP/1.1\r\nHost: gw.test\r\n\r\n")
		eventually(t, "the upstream holds the slow reader's connection", func() error {
			if n := up.open.Load(); n < 1 {
				return fmt.Errorf("%d upstream connections open", n)
			}
			return nil
		})
		start := time.Now()
		eventually(t, "the slow reader's upstream connection is freed", func() error {
			if n := up.open.Load(); n != 0 {
				return fmt.Errorf("%d upstream connections open after %v", n, time.Since(start).Round(time.Millisecond))
			}
			return nil
		})
		t.Logf("upstream connection freed %v after the gateway had it", time.Since(start).Round(time.Millisecond))
		// The client's connection is closed too: draining what the
		// socket holds ends in EOF or a reset, never a timeout.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the slow reader's connection is still open: %v", err)
		}
	})

	t.Run("slow uploader", func(t *testing.T) {
		c, err := net.Dial("tcp", dp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\nfirst bytes, then nothing")
		start := time.Now()
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to the stalled upload: %v", err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestTimeout {
			t.Errorf("stalled upload: status %d, want 408", res.StatusCode)
		}
		t.Logf("stalled upload answered after %v", time.Since(start).Round(time.Millisecond))
		eventually(t, "the uploader's upstream connection is freed", func() error {
			if n := up.open.Load(); n != 0 {
				return fmt.Errorf("%d upstream connections open", n)
			}
			return nil
		})
		if code, body, err := dp.get("/after"); err != nil || code != http.StatusOK {
			t.Errorf("a request after the slow clients: %d %q %v", code, body, err)
		}
	})
}
