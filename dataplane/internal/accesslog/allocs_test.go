//go:build !race

package accesslog

import (
	"io"
	"testing"
	"time"
)

// TestLogAllocations: a line costs no allocation once the buffer pool is
// warm. (The race detector changes allocation counts, hence the build
// tag.)
func TestLogAllocations(t *testing.T) {
	w := NewWriter(io.Discard, WriterOptions{FlushInterval: time.Hour})
	defer w.Close()
	l := New(w, 1)
	rec := Record{
		Time: time.Now(), RequestID: "id", ClientIP: "192.0.2.1", Method: "GET", Path: "/p", Route: "r", Upstream: "u",
		Status: 502, Attempts: 1, UpstreamTarget: "10.0.0.1:80", Error: "connect_failure",
	}
	if n := testing.AllocsPerRun(50, func() { l.Log(&rec) }); n != 0 {
		t.Errorf("%v allocations per line, want none", n)
	}
	if n := testing.AllocsPerRun(50, func() { l.Sampled(200, false) }); n != 0 {
		t.Errorf("%v allocations per sampling decision", n)
	}
}
