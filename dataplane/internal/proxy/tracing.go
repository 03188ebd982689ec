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
)

// Tracing: with HandlerConfig.TracerProvider set, every request gets a
// server span (continuing the client's W3C traceparent, if any) and every
// upstream attempt a client span, child of it, whose context goes to the
// upstream in traceparent/tracestate. Without a provider nothing here
// runs: the hot path only tests a nil tracer.

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

// TraceID returns the trace id of r's span, zero when r has none. It is
// what HandlerConfig.TraceID defaults to when tracing is on.
func TraceID(r *http.Request) trace.TraceID {
	return trace.SpanContextFromContext(r.Context()).TraceID()
}

// startServer starts the server span of r, continuing the client's trace
// context, and returns r carrying it. The trace id goes on the response
// when the span is sampled or the client sent a trace.
func startServer(tr trace.Tracer, w http.ResponseWriter, r *http.Request, route, upstream string) (*http.Request, trace.Span) {
	// The client's context is read from the header alone (the propagator
	// only when there is a traceparent: its lookups canonicalize and
	// allocate) and put on the request's context even when there is none
	// (an empty one): the SDK and the sampler then find the parent at the
	// first level, instead of walking net/http's whole context chain,
	// three times, to miss it.
	var parent trace.SpanContext
	if _, ok := r.Header[traceparent]; ok {
		parent = trace.SpanContextFromContext(traceContext.Extract(context.Background(), propagation.HeaderCarrier(r.Header)))
	}
	remote := parent.IsValid()
	ctx := trace.ContextWithRemoteSpanContext(r.Context(), parent)
	ctx, span := tr.Start(ctx, "HTTP", serverKind)
	// The name and attributes are built only for a span that records:
	// with ratio sampling most do not, and the samplers the OTEL_
	// variables choose look at neither.
	if span.IsRecording() {
		if route != "" {
			span.SetName(r.Method + " " + route)
			span.SetAttributes(attrRoute.String(route), attrUpstream.String(upstream))
		} else {
			span.SetName("HTTP " + r.Method)
		}
		span.SetAttributes(attrMethod.String(r.Method), attrPath.String(r.URL.Path), attrServer.String(r.Host))
	}
	if sc := span.SpanContext(); sc.IsValid() && (sc.IsSampled() || remote) {
		w.Header()[HeaderTraceID] = []string{sc.TraceID().String()}
	}
	return r.WithContext(ctx), span
}

// endServer ends a server span with the status the client got.
func endServer(span trace.Span, status int, failure string) {
	if !span.IsRecording() {
		span.End()
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
// first) to target when ctx carries a server span that records; it
// returns ctx itself and nil otherwise. An unsampled request's attempts
// get no span of their own: nothing would be exported, and the upstream
// gets the server span's context (sampled flag off) instead.
func startAttempt(ctx context.Context, method, target string, n int) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, "HTTP "+method,
		clientKind,
		trace.WithAttributes(attrMethod.String(method), attrServer.String(target), attrAttempt.Int(n)))
}

// injectAttempt writes the attempt's trace context on h, the upstream
// request's header, replacing the client's. It writes what the W3C
// propagator's Inject writes, formatted here in one buffer: it runs for
// every request while tracing is on, sampled or not.
func injectAttempt(ctx context.Context, h http.Header) {
	delete(h, traceparent)
	delete(h, tracestate)
	sc := trace.SpanContextFromContext(ctx)
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

// endAttempt ends an attempt span with the upstream's status, or with
// failure when it did not answer. A nil span is ignored.
func endAttempt(span trace.Span, status int, failure string) {
	if span == nil {
		return
	}
	if failure != "" {
		span.SetAttributes(attrError.String(failure))
		span.SetStatus(codes.Error, failure)
	} else {
		span.SetAttributes(attrStatus.Int(status))
		if status >= 500 {
			span.SetStatus(codes.Error, strconv.Itoa(status))
		}
	}
	span.End()
}
