package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// otlpReceiver is an OTLP/gRPC trace collector run by the test: it keeps
// every span it is sent.
type otlpReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (o *otlpReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			o.spans = append(o.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// traceSpans returns the spans received of trace id (hex).
func (o *otlpReceiver) traceSpans(id string) []*tracepb.Span {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range o.spans {
		if hex.EncodeToString(s.GetTraceId()) == id {
			out = append(out, s)
		}
	}
	return out
}

// startOTLPReceiver serves an otlpReceiver on a loopback port and returns
// it with its address.
func startOTLPReceiver(t *testing.T) (*otlpReceiver, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv := &otlpReceiver{}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, recv)
	go srv.Serve(l) //nolint:errcheck // ends with Stop at cleanup
	t.Cleanup(srv.Stop)
	return recv, l.Addr().String()
}

func spanAttr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			v := kv.GetValue()
			if _, ok := v.GetValue().(*commonpb.AnyValue_IntValue); ok {
				return fmt.Sprint(v.GetIntValue())
			}
			return v.GetStringValue()
		}
	}
	return ""
}

// TestTracing runs a data plane exporting spans over OTLP/gRPC to the
// test, sends a request carrying a client's traceparent and checks that
// the trace is continued end to end: the server span is the client span's
// child, the attempt span the server span's, and the upstream receives
// the attempt span's context; the client gets the trace id back.
func TestTracing(t *testing.T) {
	skipShort(t)
	recv, collector := startOTLPReceiver(t)

	var (
		mu       sync.Mutex
		upParent string // the traceparent the upstream received
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upParent = r.Header.Get("Traceparent")
		mu.Unlock()
		io.WriteString(w, "traced\n") //nolint:errcheck // the data plane may be gone
	}))
	t.Cleanup(up.Close)
	upAddr := up.Listener.Addr().String()

	cp := startControlplane(t, "cp", t.TempDir(), "")
	dp := startDataplane(t, "dp-1", t.TempDir(), []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + collector,
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_TRACES_SAMPLER=parentbased_always_on",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}, cp.addr)
	cfg := fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: traced-up}
spec:
  targets: [{address: %q}]
---
apiVersion: meridian/v1
kind: Route
metadata: {name: traced}
spec:
  match: {paths: [{prefix: /traced/}]}
  upstream: traced-up
`, upAddr)
	v := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "traced.yaml", cfg)))
	waitSynced(t, cp.addr, v, dp.id)

	const (
		clientTrace = "0af7651916cd43dd8448eb211c80319c"
		clientSpan  = "b7ad6b7169203331"
	)
	req, err := http.NewRequest("GET", "http://"+dp.addr+"/traced/x?q=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Traceparent", "00-"+clientTrace+"-"+clientSpan+"-01")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck // only the status matters
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Trace-Id"); got != clientTrace {
		t.Errorf("X-Trace-Id %q, want the client's trace %q", got, clientTrace)
	}

	var server, attempt *tracepb.Span
	eventually(t, "server and attempt spans exported", func() error {
		server, attempt = nil, nil
		for _, s := range recv.traceSpans(clientTrace) {
			switch s.GetKind() {
			case tracepb.Span_SPAN_KIND_SERVER:
				server = s
			case tracepb.Span_SPAN_KIND_CLIENT:
				attempt = s
			}
		}
		if server == nil || attempt == nil {
			return fmt.Errorf("spans of trace %s: server %v, attempt %v", clientTrace, server != nil, attempt != nil)
		}
		return nil
	})
	if got := hex.EncodeToString(server.GetParentSpanId()); got != clientSpan {
		t.Errorf("server span parent %s, want the client's span %s", got, clientSpan)
	}
	if got, want := hex.EncodeToString(attempt.GetParentSpanId()), hex.EncodeToString(server.GetSpanId()); got != want {
		t.Errorf("attempt span parent %s, want the server span %s", got, want)
	}
	for key, want := range map[string]string{
		"meridian.route":            "traced",
		"meridian.upstream":         "traced-up",
		"http.response.status_code": "200",
		"http.request.method":       "GET",
		"url.path":                  "/traced/x",
	} {
		if got := spanAttr(server, key); got != want {
			t.Errorf("server span %s = %q, want %q", key, got, want)
		}
	}
	for key, want := range map[string]string{"server.address": upAddr, "http.response.status_code": "200"} {
		if got := spanAttr(attempt, key); got != want {
			t.Errorf("attempt span %s = %q, want %q", key, got, want)
		}
	}

	mu.Lock()
	got := upParent
	mu.Unlock()
	parts := strings.Split(got, "-")
	if len(parts) != 4 || parts[1] != clientTrace || parts[2] != hex.EncodeToString(attempt.GetSpanId()) {
		t.Errorf("upstream traceparent %q, want trace %s with parent the attempt span %x", got, clientTrace, attempt.GetSpanId())
	}
}
