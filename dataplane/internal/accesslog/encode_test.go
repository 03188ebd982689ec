package accesslog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// slogLine is the reference the hand-built line is held to: the same
// fields, in the same order, through log/slog's JSON handler.
func slogLine(t testing.TB, rec *Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	attrs := []slog.Attr{
		slog.String("request_id", bounded(rec.RequestID)),
		slog.String("trace_id", traceIDString(rec.TraceID)),
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
	}
	if rec.Attempts > 0 {
		attrs = append(attrs,
			slog.String("upstream_target", rec.UpstreamTarget),
			slog.Int64("upstream_duration_us", rec.UpstreamDuration.Microseconds()))
	}
	if rec.Error != "" {
		attrs = append(attrs, slog.String("error", rec.Error))
	}
	r := slog.NewRecord(rec.Time.UTC(), slog.LevelInfo, Message, 0)
	r.AddAttrs(attrs...)
	if err := slog.NewJSONHandler(&buf, nil).Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testTraceID is W3C's example trace id, 4bf92f3577b34da6a3ce929d0e0e4736.
var testTraceID = trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}

func traceIDString(id trace.TraceID) string {
	if !id.IsValid() {
		return ""
	}
	return id.String()
}

func TestLineMatchesSlog(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 890123000, time.FixedZone("CET", 3600))
	tests := []struct {
		name string
		rec  Record
	}{
		{"proxied", Record{
			Time: at, RequestID: "id1", TraceID: testTraceID, ClientIP: "10.0.0.1", Method: "GET", Host: "api.test",
			Path: "/a/b", Protocol: "HTTP/1.1", UserAgent: "curl/8", Route: "r", Upstream: "u", Consumer: "alice",
			Status: 200, Duration: 1234567 * time.Nanosecond, BytesIn: 3, BytesOut: 42,
			Attempts: 2, UpstreamTarget: "10.1.1.1:80", UpstreamDuration: 999 * time.Microsecond,
		}},
		{"gateway answer", Record{Time: at.Truncate(time.Second), Method: "GET", Path: "/x", Status: 404, Error: "no_route"}},
		{"empty fields", Record{Time: at}},
		{"escapes", Record{
			Time: at, Method: "GET", Path: "/\"q\"\\/<a>&\u007f", Host: "h\x00\x01\x1f\t\r\n",
			UserAgent: "bad \xff\xfe utf-8 \u2028\u2029 é 日本 😀", RequestID: strings.Repeat("é", 200),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := appendLine(nil, &tt.rec)
			if want := slogLine(t, &tt.rec); !bytes.Equal(got, want) {
				t.Errorf("line:\n got %s\nwant %s", got, want)
			}
		})
	}
}

// FuzzLine: whatever bytes a client puts in the free-form fields, the
// line is exactly slog's, so it is one valid JSON line.
func FuzzLine(f *testing.F) {
	f.Add("/a", "curl/8", "api.test", int64(1), 200)
	f.Add("/\x00\"\\", "\xff\u2028", strings.Repeat("x", 300), int64(-5), 0)
	f.Fuzz(func(t *testing.T, path, ua, host string, n int64, status int) {
		rec := Record{
			Time: time.Unix(0, n).UTC(), Path: path, UserAgent: ua, Host: host, RequestID: ua + host,
			Status: status, Duration: time.Duration(n), BytesIn: n, Attempts: status % 3, Error: path,
		}
		if y := rec.Time.Year(); y < 0 || y >= 10000 {
			t.Skip("slog refuses years outside 0-9999; request times are now")
		}
		got := appendLine(nil, &rec)
		if want := slogLine(t, &rec); !bytes.Equal(got, want) {
			t.Fatalf("line:\n got %q\nwant %q", got, want)
		}
	})
}
