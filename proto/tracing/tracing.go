// Package tracing builds the OpenTelemetry tracer provider of both
// programs from the standard OTEL_ environment variables, so the control
// plane and the data plane are configured alike. It lives in the proto
// module because that is the code the programs share.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"
)

// NewProvider returns the tracer provider for the OTLP exporter the
// standard OTEL_ environment configures, or nil when neither
// OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
// set: tracing is off. The protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
// or OTEL_EXPORTER_OTLP_PROTOCOL, grpc or http/protobuf (the default, as
// the specification says). The exporters read the other OTEL_EXPORTER_OTLP_*
// variables (headers, TLS, timeout) and the batch processor OTEL_BSP_*
// themselves. sample, when 0 to 1, samples new traces at that ratio and
// follows the parent's decision otherwise; when negative the sampler is
// OTEL_TRACES_SAMPLER's (and _ARG), parentbased_always_on by default; one
// it does not know is an error.
// serviceName is the default service.name of the spans; OTEL_SERVICE_NAME
// and OTEL_RESOURCE_ATTRIBUTES override it. The caller owns the provider
// and shuts it down, which flushes it.
func NewProvider(ctx context.Context, serviceName string, lookupEnv func(string) (string, bool), sample float64) (*Provider, error) {
	if !nonEmpty(lookupEnv, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") && !nonEmpty(lookupEnv, "OTEL_EXPORTER_OTLP_ENDPOINT") {
		return nil, nil
	}
	sampler := sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sample))
	if sample < 0 {
		var err error
		if sampler, err = samplerFromEnv(lookupEnv); err != nil {
			return nil, err
		}
	}
	protocol, ok := lookupEnv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if !ok || protocol == "" {
		protocol, _ = lookupEnv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var client otlptrace.Client
	switch protocol {
	case "grpc":
		client = otlptracegrpc.NewClient()
	case "", "http/protobuf":
		client = otlptracehttp.NewClient()
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: want grpc or http/protobuf", protocol)
	}
	// New does not connect: an unreachable collector only costs dropped
	// spans, never the data plane's start.
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", serviceName)),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	return New(sampler, sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// samplerFromEnv is the sampler OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG name, as the SDK reads them, except that a
// value it does not know is an error rather than a logged fallback.
func samplerFromEnv(lookupEnv func(string) (string, bool)) (sdktrace.Sampler, error) {
	name, _ := lookupEnv("OTEL_TRACES_SAMPLER")
	name = strings.ToLower(strings.TrimSpace(name))
	arg, _ := lookupEnv("OTEL_TRACES_SAMPLER_ARG")
	arg = strings.TrimSpace(arg)
	ratio := func() (sdktrace.Sampler, error) {
		if arg == "" {
			return sdktrace.TraceIDRatioBased(1), nil
		}
		v, err := strconv.ParseFloat(arg, 64)
		if err != nil || v < 0 || v > 1 {
			return nil, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG %q: want a ratio from 0 to 1", arg)
		}
		return sdktrace.TraceIDRatioBased(v), nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "parentbased_traceidratio":
		s, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.ParentBased(s), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		return ratio()
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER %q: want always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio", name)
}

func nonEmpty(lookupEnv func(string) (string, bool), name string) bool {
	v, ok := lookupEnv(name)
	return ok && v != ""
}

// ServerHandler returns the gRPC stats handler that gives every call a
// server span in tp, continuing the caller's W3C trace context. A stream's
// span lasts as long as the stream and is exported when it ends.
func ServerHandler(tp trace.TracerProvider) stats.Handler {
	return otelgrpc.NewServerHandler(grpcOptions(tp)...)
}

// ClientHandler is ServerHandler's client side: a client span per call,
// its context sent in the call's metadata.
func ClientHandler(tp trace.TracerProvider) stats.Handler {
	return otelgrpc.NewClientHandler(grpcOptions(tp)...)
}

// grpcOptions name the provider and propagator outright: OpenTelemetry's
// globals are left alone, so nothing depends on process-wide state.
func grpcOptions(tp trace.TracerProvider) []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
	}
}
