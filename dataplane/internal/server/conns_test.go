package server_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/dataplane/internal/server"
	"github.com/meridian-gw/meridian/dataplane/internal/server/servertest"
)

// prompt bounds what must happen "at once": generous, as the machine may
// be busy; the tests never assert tight timings.
const prompt = 5 * time.Second

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })

// serveLimited serves h on a loopback listener wrapped by lim, over TLS
// when certs are given, until the test ends. It returns the address.
func serveLimited(t *testing.T, h http.Handler, lim *server.ConnLimiter, certs []tls.Certificate) string {
	t.Helper()
	srv := server.New(h, server.Config{ReadHeaderTimeout: 10 * time.Second, Certificates: certs, Connections: lim})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		if certs != nil {
			served <- srv.ServeTLS(lim.Listener(ln), "", "")
			return
		}
		served <- srv.Serve(lim.Listener(ln))
	}()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// rawClient is one HTTP/1.1 keep-alive connection written by hand.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{conn: c, br: bufio.NewReader(c)}
}

// send writes a keep-alive GET.
func (c *rawClient) send(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.conn, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
}

// response reads a response and fails t unless it is a 200 that keeps
// the connection open.
func (c *rawClient) response(t *testing.T) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(prompt))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("no response within %v: %v", prompt, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("status %d, close %v; want 200 on a kept connection", resp.StatusCode, resp.Close)
	}
}

// closedWithin reports whether the server closed the connection (end of
// stream or reset) within d, without sending anything.
func (c *rawClient) closedWithin(d time.Duration) bool {
	c.conn.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// waitIdle waits until lim counts n idle connections.
func waitIdle(t *testing.T, lim *server.ConnLimiter, n int) {
	t.Helper()
	deadline := time.Now().Add(prompt)
	for server.Idle(lim) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle connections, want %d", server.Idle(lim), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func rejected(t *testing.T, reg prometheus.Gatherer, reason string) float64 {
	t.Helper()
	return metricstest.Value(t, reg, "meridian_dataplane_connections_rejected_total", "reason", reason)
}

// TestConnLimitReclaimsLongestIdle: 8 keep-alive connections, each idle
// after one request, against a cap of 4: each new one past the cap closes
// the connection idle the longest, so the last 4 stay open, and a fresh
// client is served at once. Without a cap all stay open.
func TestConnLimitReclaimsLongestIdle(t *testing.T) {
	const clients = 8
	tests := []struct {
		name       string
		max        int
		wantClosed int // the first wantClosed clients, longest idle
	}{
		{name: "cap 4", max: 4, wantClosed: 4},
		{name: "no cap", max: 0, wantClosed: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			lim := server.NewConnLimiter(server.ConnLimits{Max: tt.max, Metrics: metrics.New(reg)})
			addr := serveLimited(t, ok, lim, nil)
			var cs []*rawClient
			for i := range clients {
				c := dialRaw(t, addr)
				c.send(t)
				c.response(t)
				cs = append(cs, c)
				// Idle in order, so "longest idle" is "first".
				waitIdle(t, lim, min(i+1, clients-tt.wantClosed))
			}
			for i, c := range cs {
				if i < tt.wantClosed {
					if !c.closedWithin(prompt) {
						t.Errorf("client %d (idle longest) still open", i)
					}
				} else if c.closedWithin(100 * time.Millisecond) {
					t.Errorf("client %d closed", i)
				}
			}
			if got := lim.Open(); got != clients-tt.wantClosed {
				t.Errorf("open = %d, want %d", got, clients-tt.wantClosed)
			}

			start := time.Now()
			fresh := dialRaw(t, addr)
			fresh.send(t)
			fresh.response(t)
			if d := time.Since(start); d > prompt {
				t.Errorf("fresh client served after %v", d)
			}
			wantReclaimed, wantOpen := tt.wantClosed, clients+1
			if tt.max > 0 {
				wantReclaimed, wantOpen = tt.wantClosed+1, tt.max
			}
			if got := rejected(t, reg, "idle_reclaimed"); got != float64(wantReclaimed) {
				t.Errorf("idle_reclaimed = %v, want %d", got, wantReclaimed)
			}
			if got := rejected(t, reg, "at_capacity"); got != 0 {
				t.Errorf("at_capacity = %v, want 0", got)
			}
			if got := metricstest.Value(t, reg, "meridian_dataplane_connections_open"); got != float64(wantOpen) {
				t.Errorf("connections_open = %v, want %d", got, wantOpen)
			}
		})
	}
}

// TestConnLimitProtocols: the cap holds on both kinds of listener and
// with HTTP/2, whose connections net/http reports idle with another
// net.Conn (the TLS one) than Accept returned.
func TestConnLimitProtocols(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := servertest.SelfSigned(t, dir, "a.test")
	certs, err := server.LoadCertificates([]string{certFile}, []string{keyFile})
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // a test certificate
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	tests := []struct {
		name      string
		tls       bool
		transport func() *http.Transport
		wantProto string
	}{
		{name: "HTTP/1.1", transport: func() *http.Transport { return &http.Transport{} }, wantProto: "HTTP/1.1"},
		{name: "h2c", transport: func() *http.Transport { return &http.Transport{Protocols: h2c} }, wantProto: "HTTP/2.0"},
		{name: "HTTP/1.1 over TLS", tls: true, wantProto: "HTTP/1.1",
			transport: func() *http.Transport { return &http.Transport{TLSClientConfig: tlsConfig} }},
		{name: "HTTP/2 over TLS", tls: true, wantProto: "HTTP/2.0",
			transport: func() *http.Transport { return &http.Transport{TLSClientConfig: tlsConfig, ForceAttemptHTTP2: true} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const max = 4
			reg := prometheus.NewRegistry()
			lim := server.NewConnLimiter(server.ConnLimits{Max: max, Metrics: metrics.New(reg)})
			var url string
			if tt.tls {
				url = "https://" + serveLimited(t, ok, lim, certs)
			} else {
				url = "http://" + serveLimited(t, ok, lim, nil)
			}
			get := func(t *testing.T) {
				t.Helper()
				tr := tt.transport()
				t.Cleanup(tr.CloseIdleConnections)
				resp, err := (&http.Client{Transport: tr, Timeout: prompt}).Get(url)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Proto != tt.wantProto {
					t.Fatalf("%d over %s, want 200 over %s", resp.StatusCode, resp.Proto, tt.wantProto)
				}
			}
			for i := range 2 * max {
				get(t) // each from its own transport: a connection of its own
				waitIdle(t, lim, min(i+1, max))
			}
			if got := lim.Open(); got != max {
				t.Errorf("open = %d, want %d", got, max)
			}
			start := time.Now()
			get(t)
			if d := time.Since(start); d > prompt {
				t.Errorf("fresh client served after %v", d)
			}
			if got := rejected(t, reg, "idle_reclaimed"); got != max+1 {
				t.Errorf("idle_reclaimed = %v, want %d", got, max+1)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestConnLimitRefusesWhenAllBusy: with all 4 connections inside a
// handler, new connections are closed at once, with one warning for the
// burst; once the requests finish, a new connection reclaims an idle one.
func TestConnLimitRefusesWhenAllBusy(t *testing.T) {
	const max = 4
	release := make(chan struct{})
	entered := make(chan struct{}, max)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	})
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	lim := server.NewConnLimiter(server.ConnLimits{
		Max: max, Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Metrics: metrics.New(reg),
	})
	addr := serveLimited(t, h, lim, nil)
	released := false
	defer func() {
		if !released {
			close(release) // let the handlers end before the server closes
		}
	}()

	var busy []*rawClient
	for range max {
		c := dialRaw(t, addr)
		c.send(t)
		busy = append(busy, c)
	}
	for range max {
		select {
		case <-entered:
		case <-time.After(prompt):
			t.Fatal("handlers not entered")
		}
	}
	for i := range 3 {
		c := dialRaw(t, addr)
		c.conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n")) // may fail: it is being closed
		if !c.closedWithin(prompt) {
			t.Fatalf("connection %d past the cap not closed", max+i+1)
		}
	}
	if got := rejected(t, reg, "at_capacity"); got != 3 {
		t.Errorf("at_capacity = %v, want 3", got)
	}
	if got := rejected(t, reg, "idle_reclaimed"); got != 0 {
		t.Errorf("idle_reclaimed = %v, want 0", got)
	}
	if n := strings.Count(logs.String(), "connection limit reached"); n != 1 {
		t.Errorf("%d warnings, want 1 per 10s:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"max_connections":4,"idle_reclaimed":0,"refused":1`) {
		t.Errorf("warning lacks the counts:\n%s", logs.String())
	}

	close(release)
	released = true
	for _, c := range busy {
		c.response(t)
	}
	waitIdle(t, lim, max)
	fresh := dialRaw(t, addr)
	fresh.send(t)
	fresh.response(t)
	if got := rejected(t, reg, "idle_reclaimed"); got != 1 {
		t.Errorf("idle_reclaimed = %v, want 1", got)
	}
}

// TestConnLimitForgetsHijacked: a connection a handler takes over (as a
// WebSocket upgrade does) leaves the count.
func TestConnLimitForgetsHijacked(t *testing.T) {
	hijacked := make(chan net.Conn, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		hijacked <- c
	})
	lim := server.NewConnLimiter(server.ConnLimits{Max: 4})
	addr := serveLimited(t, h, lim, nil)
	c := dialRaw(t, addr)
	c.send(t)
	var sc net.Conn
	select {
	case sc = <-hijacked:
		defer sc.Close()
	case <-time.After(prompt):
		t.Fatal("not hijacked")
	}
	if got := lim.Open(); got != 0 {
		t.Errorf("open = %d after the hijack, want 0", got)
	}
}

// TestConnLimiterNil: a nil limiter leaves listeners and hooks alone.
func TestConnLimiterNil(t *testing.T) {
	var lim *server.ConnLimiter
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if lim.Listener(ln) != ln {
		t.Error("a nil limiter wrapped the listener")
	}
	lim.ConnState(nil, http.StateIdle)
	if lim.Open() != 0 {
		t.Error("a nil limiter counts connections")
	}
}

// TestConnLimiterWarnsAboveFileLimit: a cap the open-file limit cannot
// back is reported at start.
func TestConnLimiterWarnsAboveFileLimit(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no RLIMIT_NOFILE")
	}
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	server.NewConnLimiter(server.ConnLimits{Max: 1 << 40, Logger: log})
	if !strings.Contains(logs.String(), "open-file limit") {
		t.Errorf("no warning for a cap of 2^40 connections:\n%s", logs.String())
	}
	logs = syncBuffer{}
	server.NewConnLimiter(server.ConnLimits{Max: 4, Logger: log})
	if logs.String() != "" {
		t.Errorf("warning for a cap of 4:\n%s", logs.String())
	}
}

// onceListener accepts one connection, then blocks until closed.
type onceListener struct {
	net.Listener
	conn net.Conn
}

func (l *onceListener) Accept() (net.Conn, error) {
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	return nil, fmt.Errorf("no more connections")
}

// BenchmarkConnState is what the cap adds to each request of a keep-alive
// connection: net/http reports it active, then idle again.
func BenchmarkConnState(b *testing.B) {
	client, conn := net.Pipe()
	defer client.Close()
	lim := server.NewConnLimiter(server.ConnLimits{Max: 10})
	c, err := lim.Listener(&onceListener{conn: conn}).Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		lim.ConnState(c, http.StateActive)
		lim.ConnState(c, http.StateIdle)
	}
}
