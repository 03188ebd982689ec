package proxy_test

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// switchingUpstream is a raw HTTP/1.1 upstream that switches protocols
// whenever answer names one: it writes a 101 with that Upgrade and then
// echoes every byte, as a tunnel would. Otherwise it answers 200
// "plain:<path>" and keeps the connection for the next request.
type switchingUpstream struct {
	addr string

	mu   sync.Mutex
	seen []http.Header // the header of every request it read, in order
}

// answer returns the protocol to switch to for a request offering
// offered (its Upgrade, "" for none), or "" to answer 200.
func newSwitchingUpstream(t *testing.T, answer func(offered string) string) *switchingUpstream {
	t.Helper()
	l := httptestListener(t)
	u := &switchingUpstream{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go u.serve(c, answer)
		}
	}()
	return u
}

func (u *switchingUpstream) serve(c net.Conn, answer func(string) string) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		u.mu.Lock()
		u.seen = append(u.seen, req.Header.Clone())
		u.mu.Unlock()
		if p := answer(req.Header.Get("Upgrade")); p != "" {
			fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", p)
			io.Copy(c, br) // the tunnel: echo
			return
		}
		body := "plain:" + req.URL.Path
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
}

// requests returns the headers of the requests the upstream read.
func (u *switchingUpstream) requests() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

// Upstream behaviours.
var (
	// switchToOffered switches to whatever it is offered: an upstream
	// that speaks h2c, foo and WebSocket alike.
	switchToOffered = func(offered string) string { return offered }
	// switchToOther switches to another protocol than the offered one.
	switchToOther = func(offered string) string {
		if offered == "" {
			return ""
		}
		return "other"
	}
	// switchAlways answers 101 even to a request offering nothing.
	switchAlways = func(string) string { return "foo" }
)

// TestUpgradeAllowList sends raw requests through a data plane to a raw
// upstream ready to switch protocols, and checks the status, whether the
// connection became a tunnel, whether it was closed, and what the
// upstream was offered. After an answer that is not a 101 on a
// connection left open, a second request on it must come back as an
// HTTP response from the upstream: the connection is still HTTP, so every
// later request goes through routing (and authentication) again.
func TestUpgradeAllowList(t *testing.T) {
	const h2cOffer = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
	tests := []struct {
		name     string
		upgrades []string // the route's spec.upgrades
		upstream func(string) string
		target   string // request target; "/up" when empty
		proto    string // "HTTP/1.1" when empty
		header   string // raw header lines after Host
		status   int
		tunnel   bool   // bytes written after the response come back echoed
		closed   bool   // the gateway closed the connection after its answer
		offered  string // the Upgrade the upstream saw; "-" when it saw no request
		second   int    // the status of a second request on a connection kept; 200 when 0
		logged   string // the access log's error for the first request (not checked for a tunnel)
	}{
		{name: "websocket allowed by default", upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: websocket\r\n", status: 101, tunnel: true, offered: "websocket"},
		{name: "websocket in another case", upstream: switchToOffered,
			header: "Connection: keep-alive, upgrade\r\nUpgrade: WebSocket\r\n", status: 101, tunnel: true, offered: "WebSocket"},
		{name: "h2c is forwarded as a plain request", upstream: switchToOffered,
			header: h2cOffer, status: 200},
		{name: "h2c even when the route allows everything else", upgrades: []string{"websocket", "foo"}, upstream: switchToOffered,
			header: h2cOffer, status: 200},
		{name: "unknown upgrade refused", upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: foo\r\n", status: 403, closed: true, offered: "-", logged: "upgrade_not_allowed"},
		{name: "unknown upgrade with h2c refused", upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: h2c, foo\r\n", status: 403, closed: true, offered: "-", logged: "upgrade_not_allowed"},
		{name: "malformed protocol refused", upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: websocket/\t13\r\n", status: 403, closed: true, offered: "-", logged: "upgrade_not_allowed"},
		{name: "allowed protocol tunnelled", upgrades: []string{"websocket", "foo"}, upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: foo\r\n", status: 101, tunnel: true, offered: "foo"},
		{name: "websocket not allowed on a route without it", upgrades: []string{"foo"}, upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: websocket\r\n", status: 403, closed: true, offered: "-", logged: "upgrade_not_allowed"},
		{name: "none allows no upgrade", upgrades: []string{"none"}, upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: websocket\r\n", status: 403, closed: true, offered: "-", logged: "upgrade_not_allowed"},
		{name: "first allowed of several offered", upstream: switchToOffered,
			header: "Connection: Upgrade\r\nUpgrade: foo, websocket/13\r\nUpgrade: bar\r\n", status: 101, tunnel: true, offered: "websocket/13"},
		{name: "h2c dropped from an offer with websocket", upstream: switchToOffered,
			header: h2cOffer[:len("Connection: Upgrade, HTTP2-Settings\r\n")] + "Upgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
			status: 101, tunnel: true, offered: "websocket"},
		{name: "upstream switches to another protocol", upstream: switchToOther,
			header: "Connection: Upgrade\r\nUpgrade: websocket\r\n", status: 502, closed: true, offered: "websocket", logged: "protocol_error"},
		{name: "upstream switches without an offer, lean path", upstream: switchAlways,
			status: 502, second: 502, logged: "protocol_error"},
		{name: "upstream switches without an offer, ReverseProxy path", upstream: switchAlways, target: "/up?a;b",
			status: 502, second: 502, logged: "protocol_error"},
		{name: "Upgrade without Connection: upgrade is no offer", upstream: switchToOffered,
			header: "Upgrade: foo\r\n", status: 200},
		{name: "Upgrade on HTTP/1.0 is no offer", upstream: switchToOffered, proto: "HTTP/1.0",
			header: "Connection: Upgrade\r\nUpgrade: websocket\r\n", status: 200, closed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newSwitchingUpstream(t, tt.upstream)
			// With metrics and an access log, as the data plane runs: the
			// tunnel is hijacked through their ResponseWriter.
			m := metrics.New(prometheus.NewRegistry())
			g := gateway.New(gateway.Options{Logger: discard(), Metrics: m})
			t.Cleanup(g.Close)
			apply(t, g, 1, upstreamRes("up", up.addr), routeRes("r", &meridianv1.RouteSpec{
				Upstream: "up", Match: match(prefix("/")), Upgrades: tt.upgrades,
			}))
			var log lines
			front := addr(httptestServer(t, g.Handler(proxy.HandlerConfig{Metrics: m, AccessLog: accesslog.New(&log, 1)})))

			c, err := net.Dial("tcp", front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			target, proto := cmp.Or(tt.target, "/up"), cmp.Or(tt.proto, "HTTP/1.1")
			fmt.Fprintf(c, "GET %s %s\r\nHost: gw\r\n%s\r\n", target, proto, tt.header)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status == 200 && string(body) != "plain:/up" {
				t.Errorf("body %q, want the upstream's plain answer", body)
			}
			if tt.status == 403 && !strings.Contains(string(body), "upgrade not allowed") {
				t.Errorf("body %q, want upgrade not allowed", body)
			}

			// A tunnel echoes; HTTP answers a second request; a closed
			// connection reads EOF.
			const second = "GET /second HTTP/1.1\r\nHost: gw\r\n\r\n"
			io.WriteString(c, second)
			if tt.status == 101 {
				echo := make([]byte, len(second))
				if _, err := io.ReadFull(br, echo); err != nil || string(echo) != second {
					t.Errorf("tunnel: read %q, %v; want the bytes echoed", echo, err)
				}
			} else {
				resp2, err := http.ReadResponse(br, nil)
				switch {
				case err != nil && !tt.closed:
					t.Errorf("connection closed after the answer (%v), want it kept", err)
				case err == nil && tt.closed:
					t.Errorf("connection kept after the answer (second answer %d), want it closed", resp2.StatusCode)
				case err == nil:
					body2, _ := io.ReadAll(resp2.Body)
					want, wantBody := cmp.Or(tt.second, 200), "plain:/second"
					if want != 200 {
						wantBody = string(body) // the same answer again
					}
					if resp2.StatusCode != want || string(body2) != wantBody {
						t.Errorf("second request on the connection: %d %q, want %d %q", resp2.StatusCode, body2, want, wantBody)
					}
				}
			}
			if tt.tunnel != (tt.status == 101) {
				t.Fatalf("bad test case: tunnel %v with status %d", tt.tunnel, tt.status)
			}
			if !tt.tunnel {
				// The line is written once the handler returns, which
				// may be after the client read the answer.
				var decoded []map[string]any
				for end := time.Now().Add(5 * time.Second); len(decoded) == 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
					_, decoded = log.parse(t)
				}
				if len(decoded) == 0 {
					t.Fatal("no access log line")
				}
				if got, _ := decoded[0]["error"].(string); got != tt.logged {
					t.Errorf("access log error %q, want %q", got, tt.logged)
				}
			}

			seen := up.requests()
			if tt.offered == "-" {
				if len(seen) != 0 {
					t.Errorf("the upstream got %d requests, want none", len(seen))
				}
				return
			}
			if len(seen) == 0 {
				t.Fatal("the upstream got no request")
			}
			first := seen[0]
			if got := strings.Join(first.Values("Upgrade"), ", "); got != tt.offered {
				t.Errorf("the upstream was offered Upgrade %q, want %q", got, tt.offered)
			}
			if v := first.Values("Http2-Settings"); len(v) > 0 {
				t.Errorf("HTTP2-Settings %q reached the upstream", v)
			}
		})
	}
}
