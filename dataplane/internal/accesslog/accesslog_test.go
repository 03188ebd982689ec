package accesslog

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func decode(t *testing.T, line []byte) map[string]any {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("not JSON: %q: %v", line, err)
	}
	return got
}

func TestLogFields(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 890123000, time.FixedZone("CET", 3600))
	tests := []struct {
		name   string
		rec    Record
		want   map[string]any
		absent []string
	}{
		{
			name: "proxied",
			rec: Record{
				Time: at, RequestID: "id1", TraceID: testTraceID, ClientIP: "10.0.0.1", Method: "GET", Host: "api.test",
				Path: "/a/b", Protocol: "HTTP/1.1", UserAgent: "curl/8", Route: "r", Upstream: "u", Consumer: "alice",
				Status: 200, Duration: 1234567 * time.Nanosecond, BytesIn: 3, BytesOut: 42,
				Attempts: 2, UpstreamTarget: "10.1.1.1:80", UpstreamDuration: 999 * time.Microsecond,
			},
			want: map[string]any{
				"time": "2025-03-04T04:06:07.890123Z", "level": "INFO", "msg": "access",
				"request_id": "id1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "client_ip": "10.0.0.1", "method": "GET", "host": "api.test",
				"path": "/a/b", "protocol": "HTTP/1.1", "user_agent": "curl/8", "route": "r", "upstream": "u",
				"consumer": "alice", "status": 200.0, "duration_us": 1234.0, "bytes_in": 3.0, "bytes_out": 42.0,
				"attempts": 2.0, "upstream_target": "10.1.1.1:80", "upstream_duration_us": 999.0,
			},
			absent: []string{"error"},
		},
		{
			name: "answered by the gateway",
			rec:  Record{Time: at, Method: "GET", Path: "/x", Status: 404, Error: "no_route", UserAgent: strings.Repeat("a", 300)},
			want: map[string]any{
				"route": "", "upstream": "", "consumer": "", "trace_id": "", "status": 404.0, "attempts": 0.0,
				"error": "no_route", "user_agent": strings.Repeat("a", maxValue),
			},
			absent: []string{"upstream_target", "upstream_duration_us"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			New(&buf, 1).Log(&tt.rec)
			if n := bytes.Count(buf.Bytes(), []byte("\n")); n != 1 {
				t.Fatalf("%d lines, want 1: %q", n, buf.String())
			}
			got := decode(t, buf.Bytes())
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %#v, want %#v", k, got[k], v)
				}
			}
			for _, k := range tt.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s present: %v", k, got[k])
				}
			}
		})
	}
}

func TestSampled(t *testing.T) {
	tests := []struct {
		name   string
		sample float64
		status int
		failed bool
		want   bool // for every try
	}{
		{"all", 1, 200, false, true},
		{"none, success", 0, 200, false, false},
		{"none, redirect", 0, 302, false, false},
		{"none, client error", 0, 404, false, true},
		{"none, server error", 0, 503, false, true},
		{"none, failed with a 200", 0, 200, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(&bytes.Buffer{}, tt.sample)
			for range 1000 {
				if got := l.Sampled(tt.status, tt.failed); got != tt.want {
					t.Fatalf("Sampled(%d, %v) = %v", tt.status, tt.failed, got)
				}
			}
		})
	}
	// A fraction logs some successes and skips others; with 10000 tries
	// at one half, all or none is out of reach of chance.
	l := New(&bytes.Buffer{}, 0.5)
	var n int
	for range 10000 {
		if l.Sampled(200, false) {
			n++
		}
	}
	if n < 4000 || n > 6000 {
		t.Errorf("sample 0.5 logged %d of 10000", n)
	}
}

// lockedBuffer is a bytes.Buffer safe for the flusher and the test.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond; the deadline is only a bound on a broken test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWriterFlushes(t *testing.T) {
	t.Run("on close", func(t *testing.T) {
		var out lockedBuffer
		w := NewWriter(&out, WriterOptions{FlushInterval: time.Hour})
		w.Write([]byte("a\n"))
		w.Write([]byte("b\n"))
		if out.String() != "" {
			t.Fatalf("written before a flush: %q", out.String())
		}
		w.Close()
		if out.String() != "a\nb\n" {
			t.Fatalf("after Close: %q", out.String())
		}
		w.Write([]byte("late\n"))
		w.Close()
		if out.String() != "a\nb\n" {
			t.Fatalf("a write after Close reached the output: %q", out.String())
		}
	})
	t.Run("when the buffer fills", func(t *testing.T) {
		var out lockedBuffer
		w := NewWriter(&out, WriterOptions{FlushSize: 8, FlushInterval: time.Hour})
		defer w.Close()
		w.Write([]byte("12345\n"))
		w.Write([]byte("67890\n"))
		waitFor(t, "a size-triggered flush", func() bool { return out.String() == "12345\n67890\n" })
	})
	t.Run("every interval", func(t *testing.T) {
		var out lockedBuffer
		w := NewWriter(&out, WriterOptions{FlushInterval: time.Millisecond})
		defer w.Close()
		w.Write([]byte("tick\n"))
		waitFor(t, "a timed flush", func() bool { return out.String() == "tick\n" })
	})
}

// blockingWriter holds every write until release is closed.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
	lockedBuffer
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.started) })
	<-b.release
	return b.lockedBuffer.Write(p)
}

func TestWriterDropsWhenTheOutputIsStuck(t *testing.T) {
	out := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	var mu sync.Mutex
	var reported []error
	w := NewWriter(out, WriterOptions{FlushSize: 4, MaxPending: 8, FlushInterval: time.Hour, OnError: func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	}})
	w.Write([]byte("aaa\n")) // fills the buffer: the flusher takes it and blocks
	<-out.started
	// Requests go on without waiting: 8 bytes fit, the rest is dropped.
	for _, line := range []string{"bbb\n", "ccc\n", "ddd\n", "eee\n"} {
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	close(out.release)
	w.Close()
	if got := out.String(); got != "aaa\nbbb\nccc\n" {
		t.Errorf("output = %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 1 || !strings.Contains(reported[0].Error(), "2 lines dropped") {
		t.Errorf("reported %v, want one report of 2 lines dropped", reported)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriterReportsOutputErrors(t *testing.T) {
	var got []error
	w := NewWriter(failingWriter{}, WriterOptions{FlushInterval: time.Hour, OnError: func(err error) { got = append(got, err) }})
	w.Write([]byte("x\n"))
	w.Close() // the flusher has stopped: got is ours to read
	if len(got) != 1 || !strings.Contains(got[0].Error(), "disk full") {
		t.Errorf("reported %v", got)
	}
}

// TestLogThroughWriter checks that a line is written whole: the handler
// writes each record with one Write.
func TestLogThroughWriter(t *testing.T) {
	var out lockedBuffer
	w := NewWriter(&out, WriterOptions{FlushInterval: time.Hour})
	l := New(w, 1)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			l.Log(&Record{Time: time.Now(), Status: 200 + i, Path: "/p"})
		})
	}
	wg.Wait()
	w.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 50 {
		t.Fatalf("%d lines, want 50", len(lines))
	}
	for _, line := range lines {
		decode(t, []byte(line))
	}
}
