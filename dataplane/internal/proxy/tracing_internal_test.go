package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/meridian-gw/meridian/proto/tracing"
)

// TestInjectAttemptMatchesPropagator holds the hand-formatted traceparent
// to what OpenTelemetry's W3C propagator writes for the same context.
func TestInjectAttemptMatchesPropagator(t *testing.T) {
	ts, err := trace.ParseTraceState("vendor=abc,other=1")
	if err != nil {
		t.Fatal(err)
	}
	base := trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
	}
	tests := []struct {
		name  string
		flags trace.TraceFlags
		state trace.TraceState
	}{
		{"sampled", trace.FlagsSampled, trace.TraceState{}},
		{"unsampled", 0, trace.TraceState{}},
		{"with tracestate", trace.FlagsSampled, ts},
		{"unknown flag bits dropped", 0xff, trace.TraceState{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.TraceFlags, cfg.TraceState = tt.flags, tt.state
			sc := trace.NewSpanContext(cfg)
			want := http.Header{}
			propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.HeaderCarrier(want))
			got := http.Header{traceparent: {"stale"}, tracestate: {"stale=1"}}
			inject(sc, got)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("header %v, want the propagator's %v", got, want)
			}
		})
	}
	t.Run("no trace", func(t *testing.T) {
		h := http.Header{traceparent: {"stale"}}
		inject(trace.SpanContext{}, h)
		if len(h) != 0 {
			t.Errorf("header %v, want the client's context removed and none added", h)
		}
	})
}

// BenchmarkTraceUnsampled is what tracing adds to a request whose trace is
// not sampled: the server span's start and end, and the context written
// for the upstream.
func BenchmarkTraceUnsampled(b *testing.B) {
	tp := tracing.New(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0)))
	defer tp.Shutdown(context.Background())
	tr := newTracer(tp)
	w := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://gw.test/api/x", nil)
	out := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		_, span, sc := tr.startServer(w, req, "r", "u")
		inject(sc, out)
		endServer(span, 200, "")
	}
}
