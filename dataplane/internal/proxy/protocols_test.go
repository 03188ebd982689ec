package proxy_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// shortTimeout is a route timeout the long-lived exchanges below outlive
// on purpose: it must not apply to them.
const shortTimeout = 50 * time.Millisecond

// outlive sleeps past shortTimeout.
func outlive() { time.Sleep(3 * shortTimeout) }

// gatewayTo serves one route "/" (with shortTimeout) to an upstream.
func gatewayTo(t *testing.T, upstreamAddr string, scheme meridianv1.Scheme) string {
	t.Helper()
	up := upstreamRes("up", upstreamAddr)
	up.GetUpstream().Spec.Scheme = scheme
	// With metrics, as the data plane runs: every request goes through
	// their ResponseWriter.
	m := metrics.New(prometheus.NewRegistry())
	g := gateway.New(gateway.Options{Logger: discard(), Metrics: m})
	t.Cleanup(g.Close)
	apply(t, g, 1, up, routeRes("r", &meridianv1.RouteSpec{
		Upstream: "up", Match: match(prefix("/")), Timeout: durationpb.New(shortTimeout),
	}))
	return addr(httptestServer(t, g.Handler(proxy.HandlerConfig{Metrics: m})))
}

func TestWebSocketEcho(t *testing.T) {
	up := httptestServer(t, websocket.Handler(func(ws *websocket.Conn) {
		io.Copy(ws, ws)
	}))
	front := gatewayTo(t, addr(up), meridianv1.Scheme_SCHEME_HTTP)

	ws, err := websocket.Dial("ws://"+front+"/echo", "", "http://"+front)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for _, msg := range []string{"hello", "again after the route timeout"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Errorf("echo = %q, want %q", got, msg)
		}
		outlive()
	}
}

func TestStreamingResponses(t *testing.T) {
	tests := []struct {
		name        string
		accept      string
		contentType string
		first       string
		rest        string
	}{
		{name: "server-sent events", accept: "text/event-stream", contentType: "text/event-stream", first: "data: one\n\n", rest: "data: two\n\n"},
		{name: "chunked", first: "part one\n", rest: "part two\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.contentType != "" {
					w.Header().Set("Content-Type", tt.contentType)
				}
				io.WriteString(w, tt.first)
				http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, tt.rest)
			}))
			front := gatewayTo(t, addr(up), meridianv1.Scheme_SCHEME_HTTP)

			req, _ := http.NewRequest("GET", "http://"+front+"/events", nil)
			if tt.accept != "" {
				req.Header.Set("Accept", tt.accept)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				close(release)
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first := make([]byte, len(tt.first))
			got := make(chan error, 1)
			go func() {
				_, err := io.ReadFull(br, first)
				got <- err
			}()
			// The upstream holds the rest back until the first part
			// arrived: a buffering proxy never delivers it.
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				close(release)
				t.Fatal("first part not received while the stream is open")
			}
			if string(first) != tt.first {
				t.Errorf("first = %q, want %q", first, tt.first)
			}
			if tt.accept != "" {
				outlive() // an event stream is not cut by the route timeout
			}
			close(release)
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatal(err)
			}
			if string(rest) != tt.rest {
				t.Errorf("rest = %q, want %q", rest, tt.rest)
			}
		})
	}
}

func TestGRPC(t *testing.T) {
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	up := httptestListener(t)
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(up)
	}()
	defer func() {
		hs.Shutdown()
		gs.Stop()
		<-served
	}()
	front := gatewayTo(t, up.Addr().String(), meridianv1.Scheme_SCHEME_H2C)

	conn, err := grpc.NewClient("passthrough:///"+front, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("status = %v", resp.GetStatus())
		}
	})
	t.Run("unary error status travels in trailers", func(t *testing.T) {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("err = %v, want NotFound", err)
		}
	})
	t.Run("server streaming", func(t *testing.T) {
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		stream, err := client.Watch(sctx, &healthpb.HealthCheckRequest{Service: "svc"})
		if err != nil {
			t.Fatal(err)
		}
		recv := func(want healthpb.HealthCheckResponse_ServingStatus) {
			t.Helper()
			msg, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if msg.GetStatus() != want {
				t.Errorf("status = %v, want %v", msg.GetStatus(), want)
			}
		}
		recv(healthpb.HealthCheckResponse_SERVING)
		outlive() // the stream is not cut by the route timeout
		hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
		recv(healthpb.HealthCheckResponse_NOT_SERVING)
		scancel()
		if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
			t.Errorf("after cancel: %v, want Canceled", err)
		}
	})
}

func TestTimeoutStillAppliesToPlainRequests(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	front := gatewayTo(t, addr(up), meridianv1.Scheme_SCHEME_HTTP)
	for _, accept := range []string{"", "text/html"} {
		req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(body), "timeout") {
			t.Errorf("Accept %q: got %d %s, want 504", accept, resp.StatusCode, body)
		}
	}
}
