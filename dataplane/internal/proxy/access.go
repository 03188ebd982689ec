package proxy

import (
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt"
)

// Access log error values (accesslog.Record.Error) the proxy sets itself;
// attempt failures use failKind.label.
const (
	errResponseAborted  = "response_aborted"
	errBadRequestBody   = "bad_request_body"
	errNoHealthyTarget  = "no_healthy_target"
	errBreakerOpen      = "breaker_open"
	errBreakerHalfOpen  = "breaker_half_open"
	errNoRoute          = "no_route"
	errMethodNotAllowed = "method_not_allowed"
	errInvalidPath      = "invalid_path"
	errNoConfiguration  = "no_configuration"
)

// accessLog is the process-wide part of access logging: where lines go
// and how the client address is found.
type accessLog struct {
	log *accesslog.Logger
	ip  *clientip.Resolver
}

// routed logs a request an Entry served, from what m measured and noted.
// The sampling decision comes first, so an unsampled request builds
// nothing.
func (al *accessLog) routed(r *http.Request, rt *Route, m *meter, now time.Time, d time.Duration) {
	if !al.log.Sampled(m.status, m.failure != "") {
		return
	}
	rec := accesslog.Record{
		Time:             now,
		RequestID:        m.requestID,
		TraceID:          m.trace.TraceID(),
		Route:            rt.name,
		Upstream:         rt.pool.Name(),
		UserAgent:        m.userAgent,
		Status:           m.status,
		Duration:         d,
		BytesOut:         m.written,
		Attempts:         m.attempts,
		UpstreamTarget:   m.target,
		UpstreamDuration: m.upstream,
		Error:            m.failure,
	}
	if m.bodyIn != nil {
		rec.BytesIn = m.bodyIn.n.Load()
	}
	if m.ctx != nil {
		rec.Consumer, _ = jwt.ConsumerFrom(m.ctx)
	}
	al.write(r, &rec)
}

// unrouted logs an answer Handler gave itself, before any route.
func (al *accessLog) unrouted(r *http.Request, traceID trace.TraceID, newID string, status int, written int, reason string, now time.Time, d time.Duration) {
	if !al.log.Sampled(status, reason != "") {
		return
	}
	rec := accesslog.Record{
		Time:      now,
		RequestID: newID,
		TraceID:   traceID,
		Status:    status,
		Duration:  d,
		BytesOut:  int64(written),
		Error:     reason,
	}
	if ids := r.Header[headerRequestID]; newID == "" && len(ids) > 0 {
		rec.RequestID = ids[0]
	}
	if ua := r.Header["User-Agent"]; len(ua) > 0 {
		rec.UserAgent = ua[0]
	}
	al.write(r, &rec)
}

// write fills in what the request itself says and writes the line. The
// path is the cleaned one; the query string is never logged, since
// tokens and other secrets travel in it.
func (al *accessLog) write(r *http.Request, rec *accesslog.Record) {
	rec.ClientIP = al.ip.ClientIP(r)
	rec.Method = r.Method
	rec.Host = r.Host
	rec.Path = r.URL.Path
	rec.Protocol = r.Proto
	al.log.Log(rec)
}

// label is the access log's name for an attempt failure, the same as the
// upstream_attempts_total outcome.
func (k failKind) label() string {
	switch k {
	case failConnect:
		return "connect_failure"
	case failTimeout, failDeadline:
		return "timeout"
	case failCanceled:
		return "canceled"
	case failTooLarge:
		return "body_too_large"
	case failProtocol:
		return "protocol_error"
	case failBadBody:
		return errBadRequestBody
	case failBodyTimeout:
		return "request_body_timeout"
	}
	return "reset"
}
