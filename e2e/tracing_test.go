package e2e

import (
	"bytes"
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

// named returns the spans received called name.
func (o *otlpReceiver) named(name string) []*tracepb.Span {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range o.spans {
		if s.GetName() == name {
			out = append(out, s)
		}
	}
	return out
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

// TestTracing runs a control plane and a data plane exporting spans over
// OTLP/gRPC to the test. A request carrying a client's traceparent is
// traced end to end: the server span is the client span's child, the
// attempt span the server span's, and the upstream receives the attempt
// span's context; the client gets the trace id back. The gRPC between the
// programs is traced too: the admin Apply has its server span, and the
// data plane's discovery stream is one trace across both programs, with
// each snapshot's apply a span in it.
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

	otelEnv := []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + collector,
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_TRACES_SAMPLER=parentbased_always_on",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
	cp := startControlplaneEnv(t, "cp", t.TempDir(), "", otelEnv)
	dp := startDataplane(t, "dp-1", t.TempDir(), otelEnv, cp.addr)
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

	checkControlPlaneSpans(t, recv, dp, v)
}

// checkControlPlaneSpans stops dp, which ends its discovery stream (a
// stream's spans are exported when it ends), and checks the gRPC spans:
// the admin Apply's server span, the stream's client span on the data
// plane and server span on the control plane (its child, so one trace),
// the control plane's "snapshot sent" event of version v on its stream
// span, and the data plane's "apply snapshot" span of version v under the
// stream's client span.
func checkControlPlaneSpans(t *testing.T, recv *otlpReceiver, dp *dataplane, v uint64) {
	t.Helper()
	const (
		applyRPC  = "meridian.v1.AdminService/Apply"
		streamRPC = "meridian.v1.ConfigDiscoveryService/StreamSnapshots"
	)
	dp.stop()
	var apply, client, server, applied *tracepb.Span
	eventually(t, "control-plane and stream spans exported", func() error {
		apply, client, server, applied = nil, nil, nil, nil
		for _, s := range recv.named(applyRPC) {
			if s.GetKind() == tracepb.Span_SPAN_KIND_SERVER {
				apply = s
			}
		}
		for _, s := range recv.named(streamRPC) {
			switch s.GetKind() {
			case tracepb.Span_SPAN_KIND_CLIENT:
				client = s
			case tracepb.Span_SPAN_KIND_SERVER:
				server = s
			}
		}
		for _, s := range recv.named("apply snapshot") {
			if spanAttr(s, "meridian.snapshot.version") == fmt.Sprint(v) {
				applied = s
			}
		}
		if apply == nil || client == nil || server == nil || applied == nil {
			return fmt.Errorf("admin Apply %v, stream client %v, stream server %v, apply snapshot v%d %v",
				apply != nil, client != nil, server != nil, v, applied != nil)
		}
		return nil
	})
	if got := spanAttr(apply, "rpc.response.status_code"); got != "OK" {
		t.Errorf("Apply span status code %q, want OK", got)
	}
	clientID := hex.EncodeToString(client.GetSpanId())
	if !bytes.Equal(server.GetTraceId(), client.GetTraceId()) || hex.EncodeToString(server.GetParentSpanId()) != clientID {
		t.Errorf("control plane's stream span (trace %x, parent %x) is not the data plane's stream span's (trace %x, span %s) child",
			server.GetTraceId(), server.GetParentSpanId(), client.GetTraceId(), clientID)
	}
	if !bytes.Equal(applied.GetTraceId(), client.GetTraceId()) || hex.EncodeToString(applied.GetParentSpanId()) != clientID {
		t.Errorf("apply snapshot span (trace %x, parent %x) is not under the stream's client span %s",
			applied.GetTraceId(), applied.GetParentSpanId(), clientID)
	}
	var sent bool
	for _, e := range server.GetEvents() {
		if e.GetName() == "snapshot sent" {
			for _, kv := range e.GetAttributes() {
				if kv.GetKey() == "meridian.snapshot.version" && kv.GetValue().GetIntValue() == int64(v) {
					sent = true
				}
			}
		}
	}
	if !sent {
		t.Errorf("the control plane's stream span has no \"snapshot sent\" event for v%d: %v", v, server.GetEvents())
	}
}
