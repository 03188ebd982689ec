package accesslog

import (
	"io"
	"testing"
	"time"
)

// BenchmarkLog is one line's cost: encoding it and appending it to a
// Writer.
func BenchmarkLog(b *testing.B) {
	w := NewWriter(io.Discard, WriterOptions{})
	defer w.Close()
	l := New(w, 1)
	rec := Record{
		Time: time.Now(), RequestID: "0123456789abcdef0123456789abcdef", ClientIP: "192.0.2.1", Method: "GET",
		Host: "api.example.com", Path: "/api/users/1", Protocol: "HTTP/1.1", UserAgent: "bench/1.0",
		Route: "r", Upstream: "users", Status: 200, Duration: 1234 * time.Microsecond, BytesOut: 512,
		Attempts: 1, UpstreamTarget: "10.0.0.1:8080", UpstreamDuration: time.Millisecond,
	}
	b.ReportAllocs()
	for b.Loop() {
		l.Log(&rec)
	}
}
