package proxy

import (
	"context"
	"encoding/hex"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/meridian-gw/meridian/proto/tracing"
)

// Tracing: with HandlerConfig.TracerProvider set, every request gets a
// server span (continuing the client's W3C traceparent, if any) and every
// upstream attempt a client span, child of it, whose context goes to the
// upstream in traceparent/tracestate. A request whose trace is not
// sampled gets only a span context: the upstream receives it and the
// access log its trace id. Without a provider nothing here runs: the hot
// path only tests a nil tracer.

// tracerName is the instrumentation scope of the proxy's spans.
const tracerName = "github.com/meridian-gw/meridian/dataplane/internal/proxy"

// HeaderTraceID is the response header that carries the request's trace
// id when the request is sampled or continues a client's trace.
const HeaderTraceID = "X-Trace-Id"

// Span attribute keys beyond OpenTelemetry's HTTP semantic conventions.
const (
	attrRoute    = attribute.Key("meridian.route")
	attrUpstream = attribute.Key("meridian.upstream")
	attrAttempt  = attribute.Key("meridian.attempt")
)

// Semantic convention keys, spelled here to keep semconv's package
// versions out of the way.
const (
	attrMethod  = attribute.Key("http.request.method")
	attrPath    = attribute.Key("url.path")
	attrStatus  = attribute.Key("http.response.status_code")
	attrServer  = attribute.Key("server.address")
	attrError   = attribute.Key("error.type")
	traceparent = "Traceparent"
	spanName    = "HTTP" // a server span's name until it is known to record
	tracestate  = "Tracestate"
)

// traceContext is the W3C Trace Context propagator; it has no state.
var traceContext propagation.TraceContext

// Span start options, made once: each call of trace.WithSpanKind boxes
// its value, an allocation per request.
var (
	serverKind = trace.WithSpanKind(trace.SpanKindServer)
	clientKind = trace.WithSpanKind(trace.SpanKindClient)
)

// tracer starts the proxy's spans: the provider takes the sampling
// decision first, so a request whose trace is not sampled costs no
// SDK span, no context layer and no request copy.
type tracer struct {
	provider *tracing.Provider
	tracer   trace.Tracer
}

func newTracer(p *tracing.Provider) *tracer {
	if p == nil {
		return nil
	}
	return &tracer{provider: p, tracer: p.Tracer(tracerName)}
}

// startServer starts the server span of r, continuing the client's trace
// context. It returns the span's context and, when the span records,
// the span and r carrying it; an unsampled request gets neither (nil, r
// itself). The trace id goes on the response when the span is sampled
// or the client sent a trace.
func (t *tracer) startServer(w http.ResponseWriter, r *http.Request, route, upstream string) (*http.Request, trace.Span, trace.SpanContext) {
	// The client's context is read from the header alone: the propagator
	// runs only when there is a traceparent, as its lookups canonicalize
	// and allocate.
	var parent trace.SpanContext
	if _, ok := r.Header[traceparent]; ok {
		parent = trace.SpanContextFromContext(traceContext.Extract(context.Background(), propagation.HeaderCarrier(r.Header)))
	}
	sc, record := t.provider.Decide(parent, spanName, trace.SpanKindServer)
	if sc.IsSampled() || parent.IsValid() {
		w.Header()[HeaderTraceID] = []string{sc.TraceID().String()}
	}
	if !record {
		return r, nil, sc
	}
	// The parent goes on the context even when there is none (an empty
	// one): the SDK and the sampler then find it at the first level,
	// instead of walking net/http's whole context chain to miss it.
	ctx := tracing.WithIDs(trace.ContextWithRemoteSpanContext(r.Context(), parent), sc)
	ctx, span := t.tracer.Start(ctx, spanName, serverKind)
	if route != "" {
		span.SetName(r.Method + " " + route)
		span.SetAttributes(attrRoute.String(route), attrUpstream.String(upstream))
	} else {
		span.SetName("HTTP " + r.Method)
	}
	span.SetAttributes(attrMethod.String(r.Method), attrPath.String(r.URL.Path), attrServer.String(r.Host))
	return r.WithContext(ctx), span, sc
}

// endServer ends a server span with the status the client got. A nil
// span (an unsampled request) is ignored.
func endServer(span trace.Span, status int, failure string) {
	if span == nil {
		return
	}
	if status != 0 {
		span.SetAttributes(attrStatus.Int(status))
	}
	if failure != "" {
		span.SetAttributes(attrError.String(failure))
	}
	if status >= 500 || status == 0 {
		span.SetStatus(codes.Error, failure)
	}
	span.End()
}

// startAttempt starts the client span of upstream attempt n (1 for the
// first) to target when tc, the server span's context, is sampled: the
// span is then the child of the server span ctx carries. It returns ctx
// itself and nil otherwise: an unsampled request's attempts get no span
// of their own, as nothing would be exported, and the upstream gets the
// server span's context (sampled flag off) instead.
func startAttempt(ctx context.Context, tc trace.SpanContext, method, target string, n int) (context.Context, trace.Span) {
	if !tc.IsSampled() {
		return ctx, nil
	}
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, "HTTP "+method,
		clientKind,
		trace.WithAttributes(attrMethod.String(method), attrServer.String(target), attrAttempt.Int(n)))
}

// inject writes sc, an attempt's trace context, on h, the upstream
// request's header, replacing the client's. It writes what the W3C
// propagator's Inject writes, formatted here in one buffer: it runs for
// every request while tracing is on, sampled or not.
func inject(sc trace.SpanContext, h http.Header) {
	delete(h, traceparent)
	delete(h, tracestate)
	if !sc.IsValid() {
		return
	}
	tid, sid := sc.TraceID(), sc.SpanID()
	var buf [len("00-") + 2*len(tid) + 1 + 2*len(sid) + len("-00")]byte
	b := append(buf[:0], "00-"...)
	b = hex.AppendEncode(b, tid[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, sid[:])
	// Only the flags the specification defines: sampled and random.
	flags := [1]byte{byte(sc.TraceFlags() & (trace.FlagsSampled | trace.FlagsRandom))}
	b = append(b, '-')
	b = hex.AppendEncode(b, flags[:])
	h[traceparent] = []string{string(b)}
	if ts := sc.TraceState(); ts.Len() > 0 {
		h[tracestate] = []string{ts.String()}
	}
}

// endAttempt ends an attempt span with the upstream's status (0: none
// came) and failure, why the exchange failed or broke ("": it did not). A
// nil span is ignored.
func endAttempt(span trace.Span, status int, failure string) {
	if span == nil {
		return
	}
	if status != 0 {
		span.SetAttributes(attrStatus.Int(status))
	}
	switch {
	case failure != "":
		span.SetAttributes(attrError.String(failure))
		span.SetStatus(codes.Error, failure)
	case status >= 500:
		span.SetStatus(codes.Error, strconv.Itoa(status))
	}
	span.End()
}
