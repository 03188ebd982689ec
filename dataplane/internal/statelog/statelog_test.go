package statelog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// clock is a settable clock, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func (c *clock) Now() time.Time      { return epoch.Add(time.Duration(c.ns.Load())) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// sink is a JSON slog handler's output.
type sink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// take returns the lines written since the last take, decoded, without
// their time.
func (s *sink) take(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []map[string]any
	for l := range strings.Lines(s.buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		delete(m, "time")
		lines = append(lines, m)
	}
	s.buf.Reset()
	return lines
}

// newLogger returns a Logger writing JSON at level to a sink, throttled on
// clk with the default bucket.
func newLogger(level slog.Level, clk *clock) (*Logger, *sink) {
	s := &sink{}
	log := slog.New(slog.NewJSONHandler(s, &slog.HandlerOptions{Level: level}))
	return New(log, Options{Now: clk.Now}), s
}

// wantLine fails unless lines is exactly one line with these fields.
func wantLine(t *testing.T, lines []map[string]any, want map[string]any) {
	t.Helper()
	if len(lines) != 1 {
		t.Fatalf("%d lines, want 1: %v", len(lines), lines)
	}
	if !maps.Equal(lines[0], want) {
		got, _ := json.Marshal(lines[0])
		exp, _ := json.Marshal(want)
		t.Errorf("line\n got  %s\n want %s", got, exp)
	}
}

func TestTargetLines(t *testing.T) {
	refused := errors.New("dial tcp 10.0.0.7:8080: connect: connection refused")
	base := func(level, msg, check, from, to string) map[string]any {
		return map[string]any{"level": level, "msg": msg, "upstream": "users", "target": "10.0.0.7:8080",
			"check": check, "from": from, "to": to}
	}
	with := func(m map[string]any, kv ...any) map[string]any {
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name string
		tr   upstream.Transition
		want map[string]any
	}{
		{
			name: "unhealthy",
			tr: upstream.Transition{Check: upstream.ActiveCheck, From: upstream.Healthy, To: upstream.Unhealthy,
				Count: 3, Threshold: 3, Err: refused},
			want: with(base("WARN", "upstream target unhealthy", "active", "healthy", "unhealthy"),
				"reason", "3 consecutive failed probes: "+refused.Error(), "failed_probes", 3.0, "threshold", 3.0),
		},
		{
			name: "unhealthy at the first probe",
			tr: upstream.Transition{Check: upstream.ActiveCheck, From: upstream.Healthy, To: upstream.Unhealthy,
				First: true, Count: 1, Threshold: 3, Err: errors.New("status 503")},
			want: with(base("WARN", "upstream target unhealthy", "active", "healthy", "unhealthy"),
				"reason", "first probe failed: status 503", "failed_probes", 1.0, "threshold", 3.0),
		},
		{
			name: "healthy",
			tr: upstream.Transition{Check: upstream.ActiveCheck, From: upstream.Unhealthy, To: upstream.Healthy,
				Count: 2, Threshold: 2},
			want: with(base("INFO", "upstream target healthy", "active", "unhealthy", "healthy"),
				"reason", "2 consecutive passed probes", "passed_probes", 2.0, "threshold", 2.0),
		},
		{
			name: "ejected",
			tr: upstream.Transition{Check: upstream.PassiveCheck, From: upstream.Healthy, To: upstream.Ejected,
				Count: 5, Threshold: 5, Err: errors.New("status 502"), Ejection: time.Minute, Ejections: 2},
			want: with(base("WARN", "upstream target ejected", "passive", "healthy", "ejected"),
				"reason", "5 consecutive failed requests (last: status 502), ejected for 1m0s",
				"failed_requests", 5.0, "threshold", 5.0, "ejection", "1m0s", "ejections", 2.0),
		},
		{
			name: "returned",
			tr: upstream.Transition{Check: upstream.PassiveCheck, From: upstream.Ejected, To: upstream.Healthy,
				Ejection: 30 * time.Second},
			want: with(base("INFO", "upstream target returned", "passive", "ejected", "healthy"),
				"reason", "ejection of 30s ended", "ejection", "30s"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, s := newLogger(slog.LevelInfo, &clock{})
			tt.tr.Upstream, tt.tr.Target = "users", "10.0.0.7:8080"
			l.TargetTransition(tt.tr)
			wantLine(t, s.take(t), tt.want)
		})
	}
}

func TestBreakerLines(t *testing.T) {
	names := BreakerNames{Breaker: "users-cb", Upstream: "users", Route: "get-user"}
	base := func(level, msg, from, to string, kv ...any) map[string]any {
		m := map[string]any{"level": level, "msg": msg, "breaker": "users-cb", "route": "get-user", "upstream": "users",
			"from": from, "to": to}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	q := 0.99
	tests := []struct {
		name string
		tr   breaker.Transition
		want map[string]any
	}{
		{
			name: "opened on error rate",
			tr: breaker.Transition{From: breaker.Closed, To: breaker.Open, Cause: breaker.CauseErrorRate,
				Requests: 40, Failures: 22, Window: 10 * time.Second, Threshold: 0.5, OpenFor: 5 * time.Second},
			want: base("WARN", "circuit breaker opened", "closed", "open", "cause", "errorRate",
				"reason", "22 of 40 requests failed in the last 10s: ratio 0.55, threshold 0.5",
				"requests", 40.0, "failures", 22.0, "failure_ratio", 0.55, "threshold", 0.5, "window", "10s",
				"open_for", "5s"),
		},
		{
			name: "opened on latency",
			tr: breaker.Transition{From: breaker.Closed, To: breaker.Open, Cause: breaker.CauseLatency,
				Requests: 300, Slow: 12, Window: 2 * time.Second, Threshold: 1 - q,
				LatencyThreshold: 250 * time.Millisecond, OpenFor: 5 * time.Second},
			want: base("WARN", "circuit breaker opened", "closed", "open", "cause", "latency",
				"reason", "12 of 300 requests slower than 250ms in the last 2s: ratio 0.04, threshold 0.01",
				"requests", 300.0, "slow", 12.0, "slow_ratio", 0.04, "threshold", 0.01,
				"latency_threshold", "250ms", "window", "2s", "open_for", "5s"),
		},
		{
			name: "opened on consecutive failures",
			tr: breaker.Transition{From: breaker.Closed, To: breaker.Open, Cause: breaker.CauseConsecutiveFailures,
				Failures: 5, Threshold: 5, OpenFor: 20 * time.Second},
			want: base("WARN", "circuit breaker opened", "closed", "open", "cause", "consecutiveFailures",
				"reason", "5 consecutive failures", "consecutive_failures", 5.0, "threshold", 5.0, "open_for", "20s"),
		},
		{
			name: "reopened by a failed probe",
			tr: breaker.Transition{From: breaker.HalfOpen, To: breaker.Open, Cause: breaker.CauseProbe,
				Probe: breaker.Timeout, ProbeLatency: 2 * time.Second, OpenFor: 10 * time.Second},
			want: base("WARN", "circuit breaker opened", "half-open", "open", "cause", "probe",
				"reason", "half-open probe failed: timeout after 2s", "probe", "timeout", "probe_latency", "2s",
				"open_for", "10s"),
		},
		{
			name: "reopened by a slow probe",
			tr: breaker.Transition{From: breaker.HalfOpen, To: breaker.Open, Cause: breaker.CauseProbe,
				Probe: breaker.Success, ProbeLatency: 301 * time.Millisecond, LatencyThreshold: 300 * time.Millisecond,
				OpenFor: 10 * time.Second},
			want: base("WARN", "circuit breaker opened", "half-open", "open", "cause", "probe",
				"reason", "half-open probe failed: slow after 301ms, over 300ms", "probe", "slow",
				"probe_latency", "301ms", "open_for", "10s"),
		},
		{
			name: "half-open",
			tr:   breaker.Transition{From: breaker.Open, To: breaker.HalfOpen, Probes: 1, Successes: 3},
			want: base("INFO", "circuit breaker half-open", "open", "half-open",
				"reason", "open time is up: probing", "probes", 1.0, "successes_needed", 3.0),
		},
		{
			name: "closed",
			tr: breaker.Transition{From: breaker.HalfOpen, To: breaker.Closed, Probe: breaker.Success,
				ProbeLatency: 12 * time.Millisecond, Successes: 3},
			want: base("INFO", "circuit breaker closed", "half-open", "closed",
				"reason", "3 consecutive successful probes", "probe", "success", "probe_latency", "12ms", "successful_probes", 3.0),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, s := newLogger(slog.LevelInfo, &clock{})
			l.Breaker(names).BreakerTransition(tt.tr)
			wantLine(t, s.take(t), tt.want)
		})
	}

	t.Run("scope target names the target, not the route", func(t *testing.T) {
		l, s := newLogger(slog.LevelInfo, &clock{})
		l.Breaker(BreakerNames{Breaker: "cb", Upstream: "users", Target: "10.0.0.7:8080"}).
			BreakerTransition(breaker.Transition{From: breaker.Open, To: breaker.HalfOpen, Probes: 2, Successes: 2})
		wantLine(t, s.take(t), map[string]any{"level": "INFO", "msg": "circuit breaker half-open", "breaker": "cb",
			"upstream": "users", "target": "10.0.0.7:8080", "from": "open", "to": "half-open",
			"reason": "open time is up: probing", "probes": 2.0, "successes_needed": 2.0})
	})
}

// TestFlappingRateLimited flaps a target and a breaker once a second for a
// minute: each gets its burst, then a line every DefaultEvery carrying the
// count of those left out, and neither takes the other's tokens.
func TestFlappingRateLimited(t *testing.T) {
	clk := &clock{}
	l, s := newLogger(slog.LevelInfo, clk)
	b := l.Breaker(BreakerNames{Breaker: "cb", Upstream: "users"})
	down := upstream.Transition{Upstream: "users", Target: "10.0.0.7:8080", Check: upstream.ActiveCheck,
		From: upstream.Healthy, To: upstream.Unhealthy, Count: 1, Threshold: 1, Err: errors.New("status 500")}
	up := upstream.Transition{Upstream: "users", Target: "10.0.0.7:8080", Check: upstream.ActiveCheck,
		From: upstream.Unhealthy, To: upstream.Healthy, Count: 1, Threshold: 1}
	const seconds = 60
	for i := range seconds {
		if i%2 == 0 {
			l.TargetTransition(down)
			b.BreakerTransition(breaker.Transition{From: breaker.HalfOpen, To: breaker.Open, Cause: breaker.CauseProbe, Probe: breaker.Failure})
		} else {
			l.TargetTransition(up)
			b.BreakerTransition(breaker.Transition{From: breaker.Open, To: breaker.HalfOpen, Probes: 1, Successes: 1})
		}
		clk.Add(time.Second)
	}
	lines := s.take(t)
	byKey := map[string][]float64{} // suppressed counts of each key's lines
	for _, l := range lines {
		key := fmt.Sprint(l["breaker"], "/", l["target"])
		n, _ := l["suppressed"].(float64)
		byKey[key] = append(byKey[key], n)
	}
	// Lines at 0-4 s (the burst), then at 10, 20, ... 50 s, each after the
	// 9 (the first: 5) left out since the one before: 60 transitions, 10
	// lines, 50 suppressed.
	want := []float64{0, 0, 0, 0, 0, 5, 9, 9, 9, 9}
	for _, key := range []string{"<nil>/10.0.0.7:8080", "cb/<nil>"} {
		got := byKey[key]
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: suppressed counts of its lines %v, want %v", key, got, want)
		}
	}
	if len(lines) != 2*len(want) {
		t.Errorf("%d lines, want %d", len(lines), 2*len(want))
	}
}

func TestLevelOff(t *testing.T) {
	clk := &clock{}
	l, s := newLogger(slog.LevelWarn, clk)
	tr := upstream.Transition{Upstream: "u", Target: "a:1", Check: upstream.ActiveCheck, From: upstream.Unhealthy, To: upstream.Healthy}
	for range 2 * DefaultBurst {
		l.TargetTransition(tr) // INFO: off, and takes no token
	}
	tr.From, tr.To = upstream.Healthy, upstream.Unhealthy
	l.TargetTransition(tr)
	lines := s.take(t)
	if len(lines) != 1 || lines[0]["level"] != "WARN" || lines[0]["suppressed"] != nil {
		t.Fatalf("lines %v, want one WARN line with nothing suppressed", lines)
	}
}

// TestBreakerEndToEnd runs a real breaker with the Logger as its observer
// through trip, half-open, a failed probe, and recovery: one line each.
func TestBreakerEndToEnd(t *testing.T) {
	clk := &clock{}
	l, s := newLogger(slog.LevelInfo, clk)
	b, err := breaker.New(&meridianv1.CircuitBreakerSpec{
		Trip:     &meridianv1.TripConditions{ConsecutiveFailures: 3},
		Open:     &meridianv1.OpenPolicy{Duration: durationpb.New(5 * time.Second)},
		HalfOpen: &meridianv1.HalfOpenPolicy{Successes: 1},
	}, breaker.Options{Now: clk.Now, Observer: l.Breaker(BreakerNames{Breaker: "cb", Upstream: "users"})})
	if err != nil {
		t.Fatal(err)
	}
	send := func(o breaker.Outcome) {
		t.Helper()
		tk, err := b.Allow()
		if err != nil {
			t.Fatalf("Allow: %v", err)
		}
		clk.Add(time.Millisecond)
		b.Record(tk, o, time.Millisecond)
	}
	type want struct{ level, msg, from, to string }
	var steps []want
	check := func(w ...want) {
		t.Helper()
		lines := s.take(t)
		if len(lines) != len(w) {
			t.Fatalf("%d lines, want %d: %v", len(lines), len(w), lines)
		}
		for i, l := range lines {
			if l["level"] != w[i].level || l["msg"] != w[i].msg || l["from"] != w[i].from || l["to"] != w[i].to ||
				l["breaker"] != "cb" || l["upstream"] != "users" {
				t.Errorf("line %d: %v, want %+v", i, l, w[i])
			}
		}
		steps = append(steps, w...)
	}

	for range 3 {
		send(breaker.Failure)
	}
	check(want{"WARN", "circuit breaker opened", "closed", "open"})
	clk.Add(5 * time.Second)
	send(breaker.Failure) // the probe
	check(want{"INFO", "circuit breaker half-open", "open", "half-open"}, want{"WARN", "circuit breaker opened", "half-open", "open"})
	clk.Add(10 * time.Second)
	send(breaker.Success)
	check(want{"INFO", "circuit breaker half-open", "open", "half-open"}, want{"INFO", "circuit breaker closed", "half-open", "closed"})
	if n := b.Snapshot().Transitions; n != uint64(len(steps)) {
		t.Errorf("%d transitions, %d lines", n, len(steps))
	}
}

// TestPoolEndToEnd runs a real pool with the Logger as its observer: an
// active check that loses and regains a target, and passive ejection and
// return of another.
func TestPoolEndToEnd(t *testing.T) {
	var status, probes atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
		probes.Add(1)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	l, s := newLogger(slog.LevelInfo, &clock{})
	wait := func(what string, n int) []map[string]any {
		t.Helper()
		var lines []map[string]any
		for deadline := time.Now().Add(10 * time.Second); len(lines) < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: %v", what, lines)
			}
			lines = append(lines, s.take(t)...)
		}
		return lines
	}

	active, err := upstream.NewWithOptions("users", &meridianv1.UpstreamSpec{
		Targets: []*meridianv1.Target{{Address: addr}},
		HealthCheck: &meridianv1.HealthCheck{Active: &meridianv1.ActiveHealthCheck{
			Interval: durationpb.New(5 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 2,
		}},
	}, nil, upstream.Options{Observer: l})
	if err != nil {
		t.Fatal(err)
	}
	defer active.Transport().CloseIdleConnections()
	defer active.Close()
	for deadline := time.Now().Add(10 * time.Second); probes.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no probe")
		}
	}
	status.Store(http.StatusServiceUnavailable) // after a first probe that passed
	wantLine(t, wait("the target to go down", 1), map[string]any{"level": "WARN", "msg": "upstream target unhealthy",
		"upstream": "users", "target": addr, "check": "active", "from": "healthy", "to": "unhealthy",
		"reason": "2 consecutive failed probes: status 503", "failed_probes": 2.0, "threshold": 2.0})
	status.Store(http.StatusOK)
	wantLine(t, wait("the target to recover", 1), map[string]any{"level": "INFO", "msg": "upstream target healthy",
		"upstream": "users", "target": addr, "check": "active", "from": "unhealthy", "to": "healthy",
		"reason": "1 passed probe", "passed_probes": 1.0, "threshold": 1.0})
	active.Close()

	passive, err := upstream.NewWithOptions("orders", &meridianv1.UpstreamSpec{
		Targets: []*meridianv1.Target{{Address: "10.0.0.1:80"}, {Address: "10.0.0.2:80"}},
		HealthCheck: &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{
			ConsecutiveFailures: 2, EjectionTime: durationpb.New(20 * time.Millisecond),
		}},
	}, nil, upstream.Options{Observer: l})
	if err != nil {
		t.Fatal(err)
	}
	defer passive.Close()
	tg, err := passive.Pick(nil)
	if err != nil {
		t.Fatal(err)
	}
	passive.Done(tg, upstream.Outcome{Status: 503})
	tg2, _ := passive.Pick(nil)
	passive.Done(tg2, upstream.Outcome{Status: 200})
	tg, _ = passive.Pick(nil)
	passive.Done(tg, upstream.Outcome{Status: 503})
	wantLine(t, s.take(t), map[string]any{"level": "WARN", "msg": "upstream target ejected",
		"upstream": "orders", "target": tg.Address(), "check": "passive", "from": "healthy", "to": "ejected",
		"reason":          "2 consecutive failed requests (last: status 503), ejected for 20ms",
		"failed_requests": 2.0, "threshold": 2.0, "ejection": "20ms", "ejections": 1.0})
	time.Sleep(30 * time.Millisecond)
	passive.Status()
	passive.Status()
	wantLine(t, s.take(t), map[string]any{"level": "INFO", "msg": "upstream target returned",
		"upstream": "orders", "target": tg.Address(), "check": "passive", "from": "ejected", "to": "healthy",
		"reason": "ejection of 20ms ended", "ejection": "20ms"})
}
