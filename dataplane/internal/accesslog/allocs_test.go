//go:build !race

package accesslog

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestLogAllocations holds the line at what slog needs: its record's
// attribute slice past the five it keeps inline. (The race detector
// changes allocation counts, hence the build tag.)
func TestLogAllocations(t *testing.T) {
	w := NewWriter(io.Discard, WriterOptions{FlushInterval: time.Hour})
	defer w.Close()
	l := New(w, 1)
	rec := Record{
		Time: time.Now(), RequestID: "id", ClientIP: "192.0.2.1", Method: "GET", Path: "/p", Route: "r", Upstream: "u",
		Status: 502, Attempts: 1, UpstreamTarget: "10.0.0.1:80", Error: "connect_failure",
	}
	ctx := context.Background()
	if n := testing.AllocsPerRun(50, func() { l.Log(ctx, &rec) }); n > 1 {
		t.Errorf("%v allocations per line, want at most 1", n)
	}
	if n := testing.AllocsPerRun(50, func() { l.Sampled(200, false) }); n != 0 {
		t.Errorf("%v allocations per sampling decision", n)
	}
}
