package tracing

import (
	"context"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func TestNewProvider(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantOn  bool
		wantErr string
	}{
		{name: "no endpoint: off", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}},
		{name: "empty endpoint: off", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": ""}},
		{name: "endpoint, default protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, wantOn: true},
		{name: "traces endpoint over grpc", env: map[string]string{
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
		}, wantOn: true},
		{name: "unknown protocol", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
		}, wantErr: `OTEL_EXPORTER_OTLP_PROTOCOL "http/json": want grpc or http/protobuf`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, err := NewProvider(context.Background(), "test", lookupIn(tt.env), 0.5)
			if wantedErr(t, err, tt.wantErr) {
				return
			}
			if (tp != nil) != tt.wantOn {
				t.Fatalf("provider %v, want on = %v", tp, tt.wantOn)
			}
			if tp != nil {
				// Nothing listens: shutting down must not hang or fail
				// with no span recorded.
				if err := tp.Shutdown(context.Background()); err != nil {
					t.Errorf("shutdown: %v", err)
				}
			}
		})
	}
}

func TestSamplerFromEnv(t *testing.T) {
	tests := []struct {
		sampler, arg string
		want         string // the sampler's Description
		wantErr      string
	}{
		{want: "ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"},
		{sampler: "always_off", want: "AlwaysOffSampler"},
		{sampler: " Always_On ", want: "AlwaysOnSampler"},
		{sampler: "traceidratio", arg: "0.25", want: "TraceIDRatioBased{0.25}"},
		{sampler: "traceidratio", want: "TraceIDRatioBased{1}"},
		{sampler: "parentbased_traceidratio", arg: "0.5", want: "ParentBased{root:TraceIDRatioBased{0.5},remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"},
		{sampler: "parentbased_always_off", want: "ParentBased{root:AlwaysOffSampler,remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"},
		{sampler: "traceidratio", arg: "1.5", wantErr: `OTEL_TRACES_SAMPLER_ARG "1.5": want a ratio from 0 to 1`},
		{sampler: "parentbased_traceidratio", arg: "half", wantErr: `OTEL_TRACES_SAMPLER_ARG "half"`},
		{sampler: "jaeger_remote", wantErr: `OTEL_TRACES_SAMPLER "jaeger_remote"`},
	}
	for _, tt := range tests {
		t.Run(tt.sampler+"/"+tt.arg, func(t *testing.T) {
			s, err := samplerFromEnv(lookupIn(map[string]string{"OTEL_TRACES_SAMPLER": tt.sampler, "OTEL_TRACES_SAMPLER_ARG": tt.arg}))
			if wantedErr(t, err, tt.wantErr) {
				return
			}
			if got := s.Description(); got != tt.want {
				t.Errorf("sampler %s, want %s", got, tt.want)
			}
		})
	}
}

// TestDecideMatchesSDK holds Decide to what the SDK does when it starts
// the same span: under WithIDs both use the same IDs, so the span
// contexts must be equal and the span must record exactly when Decide
// said so, for every sampler and kind of parent.
func TestDecideMatchesSDK(t *testing.T) {
	state, err := trace.ParseTraceState("vendor=abc")
	if err != nil {
		t.Fatal(err)
	}
	parent := trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		Remote:  true, TraceState: state,
	}
	sampled, unsampled := parent, parent
	sampled.TraceFlags = trace.FlagsSampled
	unsampled.TraceFlags = trace.FlagsRandom
	parents := map[string]trace.SpanContext{
		"new trace":         {},
		"sampled parent":    trace.NewSpanContext(sampled),
		"unsampled parent":  trace.NewSpanContext(unsampled),
		"random-flag trace": trace.NewSpanContext(trace.SpanContextConfig{TraceFlags: trace.FlagsRandom}),
	}
	samplers := []sdktrace.Sampler{
		sdktrace.AlwaysSample(), sdktrace.NeverSample(), sdktrace.TraceIDRatioBased(0.5),
		sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.5)), sdktrace.ParentBased(sdktrace.NeverSample()),
	}
	for _, s := range samplers {
		p := New(s)
		tr := p.Tracer("test")
		for name, parent := range parents {
			t.Run(s.Description()+"/"+name, func(t *testing.T) {
				recorded := 0
				for range 200 {
					sc, record := p.Decide(parent, "HTTP", trace.SpanKindServer)
					ctx := context.Background()
					if parent.IsValid() {
						ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
					}
					_, span := tr.Start(WithIDs(ctx, sc), "HTTP", trace.WithSpanKind(trace.SpanKindServer))
					if got := span.SpanContext(); !got.Equal(sc) {
						t.Fatalf("Decide gave %+v, the SDK's span has %+v", sc, got)
					}
					if span.IsRecording() != record {
						t.Fatalf("Decide said record = %v, the SDK's span records: %v", record, span.IsRecording())
					}
					if parent.IsValid() && sc.TraceID() != parent.TraceID() {
						t.Fatalf("trace %s, want the parent's", sc.TraceID())
					}
					span.End()
					if record {
						recorded++
					}
				}
				t.Logf("%d of 200 recorded", recorded)
			})
		}
		p.Shutdown(context.Background())
	}
}

// TestWithIDsOnce: the IDs go to the first span started under the
// context, not to its children nor to a second span.
func TestWithIDsOnce(t *testing.T) {
	p := New(sdktrace.AlwaysSample())
	defer p.Shutdown(context.Background())
	tr := p.Tracer("test")
	want, _ := p.Decide(trace.SpanContext{}, "root", trace.SpanKindServer)
	ctx := WithIDs(context.Background(), want)
	rootCtx, root := tr.Start(ctx, "root")
	if got := root.SpanContext(); got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() {
		t.Fatalf("root %s/%s, want %s/%s", got.TraceID(), got.SpanID(), want.TraceID(), want.SpanID())
	}
	_, child := tr.Start(rootCtx, "child")
	if got := child.SpanContext(); got.TraceID() != want.TraceID() || got.SpanID() == want.SpanID() {
		t.Errorf("child %s/%s, want the root's trace and a span id of its own", got.TraceID(), got.SpanID())
	}
	_, again := tr.Start(ctx, "again")
	if got := again.SpanContext(); got.TraceID() == want.TraceID() || got.SpanID() == want.SpanID() {
		t.Errorf("second span under the context got the used IDs %s/%s", got.TraceID(), got.SpanID())
	}
}

// lookupIn is a lookupEnv reading env.
func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// wantedErr fails t unless err is nil when want is "", or contains want;
// it reports whether an error was wanted, and so the case is done.
func wantedErr(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	return true
}
