package tracing

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Provider is an OpenTelemetry SDK tracer provider that keeps hold of its
// sampler, so that a hot path can take the sampling decision itself
// (Decide) and skip the SDK for the spans the sampler drops: with ratio
// sampling that is nearly every request, and the SDK's non-recording
// span, its context layers and a request copy to carry them cost more
// than the decision.
type Provider struct {
	*sdktrace.TracerProvider
	sampler sdktrace.Sampler
}

// New returns a Provider that samples with sampler; opts add the rest
// (exporter, resource). Its ID generator is the SDK's random one, except
// that a span started under WithIDs takes the IDs given there.
func New(sampler sdktrace.Sampler, opts ...sdktrace.TracerProviderOption) *Provider {
	opts = append(opts, sdktrace.WithSampler(sampler), sdktrace.WithIDGenerator(idGenerator{}))
	return &Provider{TracerProvider: sdktrace.NewTracerProvider(opts...), sampler: sampler}
}

// Decide takes the sampling decision the SDK takes when it starts a span
// named name of kind under parent, a remote span context (invalid for a
// new trace; its flags are then ignored), and returns the new span's
// context. When record is false that context is all there is: the SDK
// would return a span that records nothing and carries it, so the caller
// can skip starting one. When record is true the caller starts the span
// under WithIDs(ctx, sc), and the SDK, asking the same sampler about the
// same trace id, records it with sc's IDs. (The samplers the OTEL_
// variables name decide on the parent and the trace id alone; a sampler
// that decided otherwise would be asked twice, and the second answer
// would win.)
func (p *Provider) Decide(parent trace.SpanContext, name string, kind trace.SpanKind) (sc trace.SpanContext, record bool) {
	ctx := context.Background()
	var tid trace.TraceID
	var flags trace.TraceFlags // the parent's, as the SDK keeps them
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
		tid, flags = parent.TraceID(), parent.TraceFlags()&^trace.FlagsSampled
	} else {
		tid = newTraceID()
	}
	res := p.sampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: tid, Name: name, Kind: kind})
	if res.Decision == sdktrace.RecordAndSample {
		flags |= trace.FlagsSampled
	}
	sc = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: newSpanID(), TraceFlags: flags, TraceState: res.Tracestate})
	return sc, res.Decision != sdktrace.Drop
}

// WithIDs returns ctx under which the next span a Provider starts (only
// that one: its children get their own) takes sc's trace and span IDs.
func WithIDs(ctx context.Context, sc trace.SpanContext) context.Context {
	return context.WithValue(ctx, presetKey{}, &preset{trace: sc.TraceID(), span: sc.SpanID()})
}

type presetKey struct{}

// preset is WithIDs' value. used makes it good for one span: the
// children of that span are started under a context that still holds it.
type preset struct {
	trace trace.TraceID
	span  trace.SpanID
	used  atomic.Bool
}

// take reports whether ctx holds preset IDs in trace tid (any trace when
// tid is zero) that are still unused, and marks them used.
func take(ctx context.Context, tid trace.TraceID) (*preset, bool) {
	p, ok := ctx.Value(presetKey{}).(*preset)
	if !ok || (tid.IsValid() && p.trace != tid) {
		return nil, false
	}
	return p, p.used.CompareAndSwap(false, true)
}

// idGenerator is the SDK's random ID generator, plus WithIDs.
type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if p, ok := take(ctx, trace.TraceID{}); ok {
		return p.trace, p.span
	}
	return newTraceID(), newSpanID()
}

func (idGenerator) NewSpanID(ctx context.Context, tid trace.TraceID) trace.SpanID {
	if p, ok := take(ctx, tid); ok {
		return p.span
	}
	return newSpanID()
}

// newTraceID and newSpanID return random non-zero IDs. math/rand/v2's
// top-level source is per thread (runtime ChaCha8): no lock.
func newTraceID() trace.TraceID {
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid
}

func newSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
