package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/websocket"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// meteredGateway serves route "r" (spec, sending to upstreamAddr) with
// metrics, and returns its address and the registry.
func meteredGateway(t *testing.T, upstreamAddr string, spec *meridianv1.RouteSpec) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	g := gateway.New(gateway.Options{Logger: discard(), Metrics: m})
	t.Cleanup(g.Close)
	spec.Upstream, spec.Match = "up", match(prefix("/"))
	apply(t, g, 1, upstreamRes("up", upstreamAddr), routeRes("r", spec))
	return addr(httptestServer(t, g.Handler(proxy.HandlerConfig{Metrics: m}))), reg
}

// settle waits until route r has no request in flight: every request the
// test made has been recorded then.
func settle(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for metricstest.Value(t, reg, "meridian_dataplane_requests_in_flight", "route", "r") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("requests still in flight")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMetricsProtocols: requests that take the less common paths are
// recorded as what they were.
func TestMetricsProtocols(t *testing.T) {
	t.Run("websocket upgrade", func(t *testing.T) {
		up := httptestServer(t, websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }))
		front, reg := meteredGateway(t, addr(up), &meridianv1.RouteSpec{})
		ws, err := websocket.Dial("ws://"+front+"/echo", "", "http://"+front)
		if err != nil {
			t.Fatal(err)
		}
		if err := websocket.Message.Send(ws, "hi"); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != "hi" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		ws.Close()
		settle(t, reg)
		if v := metricstest.Value(t, reg, "meridian_dataplane_requests_total", "route", "r", "status_class", "1xx"); v != 1 {
			t.Errorf("upgrades counted = %v, want 1", v)
		}
		if v := metricstest.Value(t, reg, "meridian_dataplane_upstream_attempts_total", "route", "r", "outcome", "1xx"); v != 1 {
			t.Errorf("upgrade attempts = %v, want 1", v)
		}
		if v := metricstest.Value(t, reg, "meridian_dataplane_request_duration_seconds", "route", "r"); v != 0 {
			t.Errorf("a tunnel's life was observed as a request duration (%v samples)", v)
		}
	})

	t.Run("bodies both ways, lean and ReverseProxy paths", func(t *testing.T) {
		up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Write(b) // echo
		}))
		front, reg := meteredGateway(t, addr(up), &meridianv1.RouteSpec{})
		const body = "twelve bytes"
		var received int
		for _, expect := range []bool{false, true} { // Expect: 100-continue takes ReverseProxy
			req, _ := http.NewRequest("POST", "http://"+front+"/echo", strings.NewReader(body))
			if expect {
				req.Header.Set("Expect", "100-continue")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != body {
				t.Fatalf("echo = %q", b)
			}
			received += len(b)
		}
		settle(t, reg)
		for _, s := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"meridian_dataplane_request_body_bytes_total", []string{"route", "r"}, 2 * float64(len(body))},
			{"meridian_dataplane_response_body_bytes_total", []string{"route", "r"}, float64(received)},
			{"meridian_dataplane_requests_total", []string{"route", "r", "method", "POST", "status_class", "2xx"}, 2},
			{"meridian_dataplane_upstream_attempts_total", []string{"route", "r", "outcome", "2xx"}, 2},
			{"meridian_dataplane_upstream_latency_seconds", []string{"route", "r"}, 2},
		} {
			if got := metricstest.Value(t, reg, s.name, s.labels...); got != s.want {
				t.Errorf("%s%v = %v, want %v", s.name, s.labels, got, s.want)
			}
		}
	})

	t.Run("response cut midway", func(t *testing.T) {
		up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "ten bytes!")
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // the upstream dies mid-body
		}))
		front, reg := meteredGateway(t, addr(up), &meridianv1.RouteSpec{})
		resp, err := http.Get("http://" + front + "/")
		if err == nil {
			io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		settle(t, reg)
		if v := metricstest.Value(t, reg, "meridian_dataplane_requests_total", "route", "r", "status_class", "2xx"); v != 1 {
			t.Errorf("aborted response counted %v times, want 1 (as the 200 it started as)", v)
		}
		if v := metricstest.Value(t, reg, "meridian_dataplane_response_body_bytes_total", "route", "r"); v != 10 {
			t.Errorf("response bytes = %v, want the 10 relayed", v)
		}
	})

	t.Run("body over the route's limit", func(t *testing.T) {
		up := httptestServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		front, reg := meteredGateway(t, addr(up), &meridianv1.RouteSpec{MaxBodyBytes: 4})
		resp, err := http.Post("http://"+front+"/", "text/plain", strings.NewReader("too long"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d, want 413", resp.StatusCode)
		}
		settle(t, reg)
		if v := metricstest.Value(t, reg, "meridian_dataplane_requests_total", "route", "r", "method", "POST", "status_class", "4xx"); v != 1 {
			t.Errorf("413s counted = %v, want 1", v)
		}
		if v, ok := metricstest.Lookup(t, reg, "meridian_dataplane_upstream_attempts_total", "route", "r"); ok {
			t.Errorf("attempts = %v for a request answered before any", v)
		}
	})
}
