// Package accesslog writes the data plane's access log: one JSON object per
// request, through log/slog's JSON handler, with flat snake_case field
// names that Loki's json stage and Elasticsearch index as they are. The
// field names are the contract; docs/operations.md lists them.
package accesslog

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Message is every access log line's msg, so a shared stream can be
// filtered on it.
const Message = "access"

// maxValue bounds the free-form client-supplied strings a line carries
// (request id, host, user agent), so a client cannot blow a line up.
const maxValue = 256

// Record is one request's line. Zero values are written as they are,
// except the upstream attempt fields (UpstreamTarget, UpstreamDuration),
// which are left out when no attempt was made, and Error, left out when
// empty.
type Record struct {
	// Time is when the response ended; the line's time field.
	Time time.Time

	RequestID string // X-Request-Id, the client's or the one the gateway generated
	TraceID   string // W3C trace id; "" until tracing sets it
	ClientIP  string // as the clientip resolver sees it (trusted proxies skipped)
	Method    string
	Host      string
	Path      string // the cleaned path the route matched; never the query string
	Protocol  string // HTTP/1.1, HTTP/2.0
	UserAgent string

	Route    string // "" when no route matched
	Upstream string // the route's upstream; "" when no route matched
	Consumer string // the JWT consumerClaim of an authenticated request, or ""

	Status int // the status sent; 0 when the handler ended without sending one
	// Duration is from the route match (for a request no route serves,
	// from the decision to answer it) to the end of the response: the
	// measurement request_duration_seconds observes. Written as integer
	// microseconds (duration_us), as is UpstreamDuration: slog writes a
	// float through encoding/json, an allocation per field.
	Duration time.Duration
	BytesIn  int64 // request body bytes read from the client
	BytesOut int64 // response body bytes written to the client

	Attempts         int           // upstream attempts, retries included; 0 when none was made
	UpstreamTarget   string        // the last attempt's target address
	UpstreamDuration time.Duration // the last attempt's time to its response header (or failure)
	// Error says why the gateway answered instead of an upstream, or why
	// the exchange broke: connect_failure, reset, timeout, canceled,
	// protocol_error, body_too_large, bad_request_body, no_healthy_target,
	// breaker_open, breaker_half_open, response_aborted, no_route,
	// method_not_allowed, invalid_path, no_configuration. "" otherwise.
	Error string
}

// Logger writes access log lines. It is safe for concurrent use.
type Logger struct {
	h      slog.Handler
	sample float64
}

// New returns a Logger writing JSON lines to w, which it writes one whole
// line at a time (a Writer makes that cheap). sample is the fraction, in
// [0, 1], of successful requests logged; failed ones always are.
func New(w io.Writer, sample float64) *Logger {
	return &Logger{h: slog.NewJSONHandler(w, nil), sample: sample}
}

// Sampled reports whether a request is logged: always when it failed
// (status 400 or above, or failed for another reason), otherwise with the
// sampling probability. Callers ask before they build a Record, so an
// unsampled request costs one random number at most.
func (l *Logger) Sampled(status int, failed bool) bool {
	if failed || status >= 400 || l.sample >= 1 {
		return true
	}
	// math/rand/v2's top-level source is per thread: no lock.
	return l.sample > 0 && rand.Float64() < l.sample
}

// Log writes rec as one line. The record is built here rather than with
// slog.Logger.LogAttrs, which would also capture the caller's program
// counter for every line (runtime.Callers) although the handler never
// reports the source.
func (l *Logger) Log(ctx context.Context, rec *Record) {
	// One AddAttrs call: the record grows its attribute slice once.
	var attrs [numAttrs]slog.Attr
	a := append(attrs[:0],
		slog.String("request_id", bounded(rec.RequestID)),
		slog.String("trace_id", rec.TraceID),
		slog.String("client_ip", rec.ClientIP),
		slog.String("method", rec.Method),
		slog.String("host", bounded(rec.Host)),
		slog.String("path", rec.Path),
		slog.String("protocol", rec.Protocol),
		slog.String("user_agent", bounded(rec.UserAgent)),
		slog.String("route", rec.Route),
		slog.String("upstream", rec.Upstream),
		slog.String("consumer", rec.Consumer),
		slog.Int("status", rec.Status),
		slog.Int64("duration_us", rec.Duration.Microseconds()),
		slog.Int64("bytes_in", rec.BytesIn),
		slog.Int64("bytes_out", rec.BytesOut),
		slog.Int("attempts", rec.Attempts),
	)
	if rec.Attempts > 0 {
		a = append(a,
			slog.String("upstream_target", rec.UpstreamTarget),
			slog.Int64("upstream_duration_us", rec.UpstreamDuration.Microseconds()),
		)
	}
	if rec.Error != "" {
		a = append(a, slog.String("error", rec.Error))
	}
	r := slog.NewRecord(rec.Time.UTC(), slog.LevelInfo, Message, 0)
	r.AddAttrs(a...)
	// The handler's only error is the writer's; a Writer never returns
	// one, and a failing log must not fail the request.
	_ = l.h.Handle(ctx, r)
}

// numAttrs is the most attributes a line has.
const numAttrs = 19

func bounded(s string) string {
	if len(s) > maxValue {
		return s[:maxValue]
	}
	return s
}
