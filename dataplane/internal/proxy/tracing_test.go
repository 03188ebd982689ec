package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

// tracedGateway serves spec (upstream "up" at target) through a handler
// traced into an in-memory exporter, synchronously so spans are there
// when the request returns.
func tracedGateway(t *testing.T, spec *meridianv1.RouteSpec, target string) (http.Handler, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := tracing.New(sdktrace.AlwaysSample(), sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	g := gateway.New(gateway.Options{Logger: discard()})
	t.Cleanup(g.Close)
	spec.Upstream = "up"
	spec.Match = match(prefix("/api"))
	apply(t, g, 1, upstreamRes("up", target), routeRes("r", spec))
	return g.Handler(proxy.HandlerConfig{TracerProvider: tp}), exp
}

func attr(s tracetest.SpanStub, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// TestTracingRetries checks that a retried request yields one server span
// and one client span per attempt, each a child of the server span, and
// that each attempt's upstream request carries that attempt's context.
func TestTracingRetries(t *testing.T) {
	var (
		mu       sync.Mutex
		received []trace.SpanContext
		calls    atomic.Int32
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(r.Header))
		mu.Lock()
		received = append(received, trace.SpanContextFromContext(ctx))
		mu.Unlock()
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer up.Close()
	h, exp := tracedGateway(t, retrySpec(1, "503"), addr(up))

	const clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	req := httptest.NewRequest("GET", "http://gw.test/api/x?secret=1", nil)
	req.Header.Set("Traceparent", "00-"+clientTrace+"-00f067aa0ba902b7-01")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d, want 200", w.Code)
	}
	if got := w.Header().Get(proxy.HeaderTraceID); got != clientTrace {
		t.Errorf("%s = %q, want %q", proxy.HeaderTraceID, got, clientTrace)
	}

	spans := exp.GetSpans()
	var server tracetest.SpanStub
	var attempts []tracetest.SpanStub
	for _, s := range spans {
		switch s.SpanKind {
		case trace.SpanKindServer:
			server = s
		case trace.SpanKindClient:
			attempts = append(attempts, s)
		}
	}
	if len(spans) != 3 || len(attempts) != 2 {
		t.Fatalf("got %d spans (%d attempts), want a server span and 2 attempts", len(spans), len(attempts))
	}
	if got := server.SpanContext.TraceID().String(); got != clientTrace {
		t.Errorf("server span trace %s, want the client's %s", got, clientTrace)
	}
	if got := server.Parent.SpanID().String(); got != "00f067aa0ba902b7" {
		t.Errorf("server span parent %s, want the client's span", got)
	}
	for k, want := range map[attribute.Key]string{
		"meridian.route": "r", "meridian.upstream": "up", "url.path": "/api/x", "http.request.method": "GET",
	} {
		if got := attr(server, k).AsString(); got != want {
			t.Errorf("server span %s = %q, want %q", k, got, want)
		}
	}
	if got := attr(server, "http.response.status_code").AsInt64(); got != 200 {
		t.Errorf("server span status %d, want 200", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(received) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(received))
	}
	wantStatus := []int64{503, 200}
	for i, a := range attempts {
		if a.Parent.SpanID() != server.SpanContext.SpanID() || a.SpanContext.TraceID() != server.SpanContext.TraceID() {
			t.Errorf("attempt %d: parent %s, want the server span %s", i, a.Parent.SpanID(), server.SpanContext.SpanID())
		}
		if got := attr(a, "http.response.status_code").AsInt64(); got != wantStatus[i] {
			t.Errorf("attempt %d: status %d, want %d", i, got, wantStatus[i])
		}
		if got := attr(a, "server.address").AsString(); got != addr(up) {
			t.Errorf("attempt %d: server.address %q, want %q", i, got, addr(up))
		}
		if got := received[i]; got.TraceID() != a.SpanContext.TraceID() || got.SpanID() != a.SpanContext.SpanID() {
			t.Errorf("upstream request %d: traceparent %s/%s, want attempt span %s/%s",
				i, got.TraceID(), got.SpanID(), a.SpanContext.TraceID(), a.SpanContext.SpanID())
		}
	}
}

// TestTracingFailure checks the attempt span of an upstream that refuses
// connections and the access log's trace id hook default.
func TestTracingFailure(t *testing.T) {
	h, exp := tracedGateway(t, &meridianv1.RouteSpec{}, deadAddr(t))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "http://gw.test/api/x", nil))
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", w.Code)
	}
	id := w.Header().Get(proxy.HeaderTraceID)
	if len(id) != 32 || strings.Trim(id, "0") == "" {
		t.Errorf("%s = %q, want a new trace id", proxy.HeaderTraceID, id)
	}
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2", len(spans))
	}
	for _, s := range spans {
		if s.SpanContext.TraceID().String() != id {
			t.Errorf("span %q in trace %s, want %s", s.Name, s.SpanContext.TraceID(), id)
		}
		if s.SpanKind == trace.SpanKindClient && attr(s, "error.type").AsString() != "connect_failure" {
			t.Errorf("attempt error.type %q, want connect_failure", attr(s, "error.type").AsString())
		}
		if s.SpanKind == trace.SpanKindServer {
			if got := attr(s, "http.response.status_code").AsInt64(); got != 502 {
				t.Errorf("server status %d, want 502", got)
			}
			if got := attr(s, "error.type").AsString(); got != "connect_failure" {
				t.Errorf("server error.type %q, want connect_failure", got)
			}
		}
	}
}

// TestTracingUnsampled: a request whose trace is not sampled exports no
// span, and its upstream still gets the trace, continued with the
// sampled flag off.
func TestTracingUnsampled(t *testing.T) {
	var got atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Traceparent"))
	}))
	defer up.Close()
	exp := tracetest.NewInMemoryExporter()
	tp := tracing.New(sdktrace.ParentBased(sdktrace.AlwaysSample()), sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, upstreamRes("up", addr(up)), routeRes("r", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/api"))}))
	const traceID, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req := httptest.NewRequest("GET", "http://gw.test/api/x", nil)
	req.Header.Set("Traceparent", "00-"+traceID+"-"+parent+"-00")
	w := httptest.NewRecorder()
	g.Handler(proxy.HandlerConfig{TracerProvider: tp}).ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	v, _ := got.Load().(string)
	parts := strings.Split(v, "-")
	if len(parts) != 4 || parts[1] != traceID || parts[2] == parent || parts[3] != "00" {
		t.Errorf("upstream traceparent %q, want trace %s continued by the gateway, unsampled", v, traceID)
	}
	if n := len(exp.GetSpans()); n != 0 {
		t.Errorf("%d spans exported for an unsampled trace", n)
	}
	if v := w.Header().Get(proxy.HeaderTraceID); v != traceID {
		t.Errorf("%s = %q, want the client's trace %s", proxy.HeaderTraceID, v, traceID)
	}
}

// TestTracingRatio samples by trace id ratio, as the data plane's
// --trace-sample does, on both the lean path and ReverseProxy's (a query
// with ';'). Every upstream request carries a trace context and every
// access log line its trace id; the sampled ones are exactly those
// exported, the upstream holding the attempt span's context, and the
// others export nothing and carry the server span's context unsampled.
func TestTracingRatio(t *testing.T) {
	var (
		mu       sync.Mutex
		received = map[string]trace.SpanContext{} // by X-Request-Id
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(r.Header))
		mu.Lock()
		received[r.Header.Get("X-Request-Id")] = trace.SpanContextFromContext(ctx)
		mu.Unlock()
	}))
	defer up.Close()
	exp := tracetest.NewInMemoryExporter()
	tp := tracing.New(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.5)), sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, upstreamRes("up", addr(up)), routeRes("r", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/api"))}))
	var out lines
	h := g.Handler(proxy.HandlerConfig{TracerProvider: tp, AccessLog: accesslog.New(&out, 1)})

	const n = 64
	returned := map[string]string{} // X-Trace-Id by request id
	for i := range n {
		target := "http://gw.test/api/x"
		if i%2 == 1 {
			target += "?a;b" // ReverseProxy's path
		}
		req := httptest.NewRequest("GET", target, nil)
		id := fmt.Sprintf("req-%d", i)
		req.Header.Set("X-Request-Id", id)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: status %d", target, w.Code)
		}
		returned[id] = w.Header().Get(proxy.HeaderTraceID)
	}

	servers := map[trace.TraceID]tracetest.SpanStub{}
	attempts := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		if s.SpanKind == trace.SpanKindServer {
			servers[s.SpanContext.TraceID()] = s
		} else {
			attempts[s.SpanContext.SpanID()] = s
		}
	}
	_, logged := out.parse(t)
	if len(logged) != n {
		t.Fatalf("%d access log lines, want %d", len(logged), n)
	}
	mu.Lock()
	defer mu.Unlock()
	sampled := 0
	for _, line := range logged {
		id, _ := line["request_id"].(string)
		sc, ok := received[id]
		if !ok || !sc.IsValid() {
			t.Errorf("%s: upstream got no trace context", id)
			continue
		}
		if line["trace_id"] != sc.TraceID().String() {
			t.Errorf("%s: logged trace %v, upstream got %s", id, line["trace_id"], sc.TraceID())
		}
		server, exported := servers[sc.TraceID()]
		if !sc.IsSampled() {
			if exported || returned[id] != "" {
				t.Errorf("%s: unsampled, yet exported %v, %s %q", id, exported, proxy.HeaderTraceID, returned[id])
			}
			continue
		}
		sampled++
		attempt, ok := attempts[sc.SpanID()]
		if !exported || !ok {
			t.Errorf("%s: sampled, but server span exported %v, attempt span %v", id, exported, ok)
			continue
		}
		if attempt.Parent.SpanID() != server.SpanContext.SpanID() || returned[id] != sc.TraceID().String() {
			t.Errorf("%s: attempt parent %s, want server span %s; %s %q", id, attempt.Parent.SpanID(), server.SpanContext.SpanID(), proxy.HeaderTraceID, returned[id])
		}
	}
	if sampled == 0 || sampled == n || len(servers) != sampled || len(attempts) != sampled {
		t.Errorf("%d of %d requests sampled, %d server and %d attempt spans exported; want some sampled, one of each per sampled request",
			sampled, n, len(servers), len(attempts))
	}
}

// TestTracingTraceIDAfter1xx: net/http clears the response header map
// once a 1xx is relayed, and the trace id must still reach the client on
// the final response, on the lean path and on ReverseProxy's (a query
// with ';').
func TestTracingTraceIDAfter1xx(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Write([]byte("final"))
	}))
	defer up.Close()
	h, exp := tracedGateway(t, &meridianv1.RouteSpec{}, addr(up))
	front := httptest.NewServer(h)
	defer front.Close()
	for _, target := range []string{"/api/x", "/api/x?a;b"} {
		exp.Reset()
		resp, err := http.Get(front.URL + target)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var server trace.TraceID
		for _, s := range exp.GetSpans() {
			if s.SpanKind == trace.SpanKindServer {
				server = s.SpanContext.TraceID()
			}
		}
		if got := resp.Header.Get(proxy.HeaderTraceID); resp.StatusCode != http.StatusOK || got == "" || got != server.String() {
			t.Errorf("%s: status %d, %s %q, want the server span's trace %s", target, resp.StatusCode, proxy.HeaderTraceID, got, server)
		}
	}
}

// TestTracingAttemptEndsWithBody: an attempt's span lasts until the
// upstream's body has been relayed, not just its header, on both paths.
func TestTracingAttemptEndsWithBody(t *testing.T) {
	var mu sync.Mutex
	var lastWrite time.Time
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "head ")
		http.NewResponseController(w).Flush()
		time.Sleep(20 * time.Millisecond) // the header is well on its way
		mu.Lock()
		lastWrite = time.Now()
		mu.Unlock()
		io.WriteString(w, "tail")
	}))
	defer up.Close()
	h, exp := tracedGateway(t, &meridianv1.RouteSpec{}, addr(up))
	for _, target := range []string{"/api/x", "/api/x?a;b"} {
		exp.Reset()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "http://gw.test"+target, nil))
		if w.Body.String() != "head tail" {
			t.Fatalf("%s: body %q", target, w.Body)
		}
		mu.Lock()
		written := lastWrite
		mu.Unlock()
		var attempts int
		for _, s := range exp.GetSpans() {
			if s.SpanKind != trace.SpanKindClient {
				continue
			}
			attempts++
			if !s.EndTime.After(written) {
				t.Errorf("%s: attempt span ended at %v, before the upstream wrote its last bytes at %v", target, s.EndTime, written)
			}
			if got := attr(s, "http.response.status_code").AsInt64(); got != 200 {
				t.Errorf("%s: attempt status %d", target, got)
			}
		}
		if attempts != 1 {
			t.Errorf("%s: %d attempt spans", target, attempts)
		}
	}
}

// TestTracingOff checks that without a provider the client's trace
// context passes through untouched and no trace id is returned.
func TestTracingOff(t *testing.T) {
	var got atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Traceparent"))
	}))
	defer up.Close()
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, upstreamRes("up", addr(up)), routeRes("r", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/api"))}))
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req := httptest.NewRequest("GET", "http://gw.test/api/x", nil)
	req.Header.Set("Traceparent", tp)
	w := httptest.NewRecorder()
	g.Handler(proxy.HandlerConfig{}).ServeHTTP(w, req)
	if v, _ := got.Load().(string); v != tp {
		t.Errorf("upstream traceparent %q, want the client's %q", v, tp)
	}
	if v := w.Header().Get(proxy.HeaderTraceID); v != "" {
		t.Errorf("%s = %q with tracing off", proxy.HeaderTraceID, v)
	}
}

// BenchmarkProxyTraced is BenchmarkProxyNoMetrics with tracing on: every
// trace sampled into a discarding exporter, or none.
func BenchmarkProxyTraced(b *testing.B) {
	for _, bc := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{
		{"sampled", sdktrace.AlwaysSample()},
		{"unsampled", sdktrace.NeverSample()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := benchUpstream(b)
			tp := tracing.New(bc.sampler, sdktrace.WithSyncer(tracetest.NewNoopExporter()))
			defer tp.Shutdown(context.Background())
			g := gateway.New(gateway.Options{Logger: discard()})
			defer g.Close()
			apply(b, g, 1, upstreamRes("users", addr(srv)), routeRes("r", &meridianv1.RouteSpec{
				Upstream: "users", Match: match(prefix("/api/users")),
			}))
			runProxyBench(b, g.Handler(proxy.HandlerConfig{TracerProvider: tp}))
		})
	}
}
