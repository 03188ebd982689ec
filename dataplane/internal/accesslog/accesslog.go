// Package accesslog writes the data plane's access log: one JSON object per
// request, in the shape of log/slog's JSON handler, with flat snake_case
// field names that Loki's json stage and Elasticsearch index as they are. The
// field names are the contract; docs/operations.md lists them.
package accesslog

import (
	"encoding/hex"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
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

	RequestID string        // X-Request-Id, the client's or the one the gateway generated
	TraceID   trace.TraceID // W3C trace id; zero (written "") when the request has no trace
	ClientIP  string        // as the clientip resolver sees it (trusted proxies skipped)
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
	// microseconds (duration_us), as is UpstreamDuration, which keeps
	// the field a JSON integer for every indexer.
	Duration time.Duration
	BytesIn  int64 // request body bytes read from the client
	BytesOut int64 // response body bytes written to the client

	Attempts         int           // upstream attempts, retries included; 0 when none was made
	UpstreamTarget   string        // the last attempt's target address
	UpstreamDuration time.Duration // the last attempt's time to its response header (or failure)
	// Error says why the gateway answered instead of an upstream, or why
	// the exchange broke: connect_failure, reset, timeout, canceled,
	// protocol_error, body_too_large, bad_request_body,
	// request_body_timeout, no_healthy_target,
	// breaker_open, breaker_half_open, response_aborted, no_route,
	// method_not_allowed, invalid_path, no_configuration. "" otherwise.
	Error string
}

// Logger writes access log lines. It is safe for concurrent use.
type Logger struct {
	w      io.Writer
	sample float64
	// bufs holds *[]byte line buffers: a line is built in one and handed
	// to w whole, with no allocation once the pool is warm.
	bufs sync.Pool
}

// New returns a Logger writing JSON lines to w, which it writes one whole
// line at a time (a Writer makes that cheap). sample is the fraction, in
// [0, 1], of successful requests logged; failed ones always are.
func New(w io.Writer, sample float64) *Logger {
	l := &Logger{w: w, sample: sample}
	l.bufs.New = func() any {
		b := make([]byte, 0, 1024)
		return &b
	}
	return l
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

// Log writes rec as one line. The line is the JSON object slog's JSON
// handler would write for the same fields (time, level, msg first), built
// by hand: a fixed schema appended to a pooled buffer costs a fraction of
// slog's per-attribute work, and an access log line is written for every
// request.
func (l *Logger) Log(rec *Record) {
	bp := l.bufs.Get().(*[]byte)
	b := appendLine((*bp)[:0], rec)
	// A Writer never fails, and a failing log must not fail the request.
	_, _ = l.w.Write(b)
	if cap(b) <= maxPooledLine {
		*bp = b
		l.bufs.Put(bp)
	}
}

// maxPooledLine is the largest buffer put back in the pool; a rare huge
// line (long paths) is left to the garbage collector.
const maxPooledLine = 16 << 10

// appendLine appends rec's JSON object and a newline to b. Each field's
// key comes with its punctuation as one constant, so a field costs one
// append before its value.
func appendLine(b []byte, rec *Record) []byte {
	b = append(b, `{"time":"`...)
	b = rec.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"`+Message+`","request_id":"`...)
	b = appendEscaped(b, bounded(rec.RequestID))
	b = append(b, `","trace_id":"`...)
	if rec.TraceID.IsValid() {
		b = hex.AppendEncode(b, rec.TraceID[:])
	}
	b = appendString(b, `","client_ip":"`, rec.ClientIP)
	b = appendString(b, `","method":"`, rec.Method)
	b = appendString(b, `","host":"`, bounded(rec.Host))
	b = appendString(b, `","path":"`, rec.Path)
	b = appendString(b, `","protocol":"`, rec.Protocol)
	b = appendString(b, `","user_agent":"`, bounded(rec.UserAgent))
	b = appendString(b, `","route":"`, rec.Route)
	b = appendString(b, `","upstream":"`, rec.Upstream)
	b = appendString(b, `","consumer":"`, rec.Consumer)
	b = appendInt(b, `","status":`, int64(rec.Status))
	b = appendInt(b, `,"duration_us":`, rec.Duration.Microseconds())
	b = appendInt(b, `,"bytes_in":`, rec.BytesIn)
	b = appendInt(b, `,"bytes_out":`, rec.BytesOut)
	b = appendInt(b, `,"attempts":`, int64(rec.Attempts))
	if rec.Attempts > 0 {
		b = appendString(b, `,"upstream_target":"`, rec.UpstreamTarget)
		b = appendInt(b, `","upstream_duration_us":`, rec.UpstreamDuration.Microseconds())
	}
	if rec.Error != "" {
		b = appendString(b, `,"error":"`, rec.Error)
		b = append(b, '"')
	}
	return append(b, "}\n"...)
}

// appendString appends key, a constant that ends a field and opens the
// next one up to its value's opening quote, then v escaped; the caller
// (the next key) closes the quote.
func appendString(b []byte, key, v string) []byte {
	return appendEscaped(append(b, key...), v)
}

// appendInt appends key, a constant as appendString's, then v.
func appendInt(b []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(b, key...), v, 10)
}

// plain[c] reports whether byte c goes into a JSON string as it is: ASCII
// but for control characters, the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// appendEscaped appends s as the inside of a JSON string, escaped as
// encoding/json does it minus HTML escaping: quote, backslash and control
// characters escaped, invalid UTF-8 replaced by U+FFFD, and U+2028/U+2029
// escaped for JavaScript-based readers. Client-supplied values (host,
// user agent, path) can hold any bytes, and must not break the line.
func appendEscaped(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if plain[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(b, s[start:]...)
}

func bounded(s string) string {
	if len(s) > maxValue {
		return s[:maxValue]
	}
	return s
}
