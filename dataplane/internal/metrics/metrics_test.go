package metrics

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRouteRecords(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	r := m.Route("api", "users")
	if m.Route("api", "users") != r {
		t.Fatal("Route returned another recorder for the same route and upstream")
	}

	for _, req := range []struct {
		method  string
		status  int
		written int64
	}{
		{http.MethodGet, 200, 10},
		{http.MethodGet, 204, 0},
		{http.MethodGet, 0, 0}, // nothing written: net/http sends 200
		{"BREW", 503, 5},       // made-up methods are "other"
		{http.MethodPost, 429, 7},
		{http.MethodGet, 101, 0}, // an upgrade: counted, not observed
		{http.MethodDelete, 999, 0},
	} {
		r.Begin()
		r.End(req.method, req.status, req.written, 3*time.Millisecond)
	}
	r.Begin() // one still running

	body := r.CountBody(io.NopCloser(strings.NewReader("hello world")))
	if b, err := io.ReadAll(body); err != nil || string(b) != "hello world" {
		t.Fatalf("CountBody read %q, %v", b, err)
	}
	r.AttemptResponse(200, time.Millisecond)
	r.AttemptResponse(503, time.Millisecond)
	r.AttemptFailed(ConnectFailure)
	r.AttemptFailed(ConnectFailure)
	r.AttemptFailed(Timeout)
	r.Retry()
	r.Retry()
	r.RetryBudgetExhausted()

	want := `
# HELP meridian_dataplane_requests_total Requests answered, by route, its upstream, method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or other) and status class (1xx: upgraded). Requests no route served have route and upstream "(none)".
# TYPE meridian_dataplane_requests_total counter
meridian_dataplane_requests_total{method="DELETE",route="api",status_class="5xx",upstream="users"} 1
meridian_dataplane_requests_total{method="GET",route="api",status_class="1xx",upstream="users"} 1
meridian_dataplane_requests_total{method="GET",route="api",status_class="2xx",upstream="users"} 3
meridian_dataplane_requests_total{method="POST",route="api",status_class="4xx",upstream="users"} 1
meridian_dataplane_requests_total{method="other",route="api",status_class="5xx",upstream="users"} 1
# HELP meridian_dataplane_requests_in_flight Requests being served, by route.
# TYPE meridian_dataplane_requests_in_flight gauge
meridian_dataplane_requests_in_flight{route="(none)",upstream="(none)"} 0
meridian_dataplane_requests_in_flight{route="api",upstream="users"} 1
# HELP meridian_dataplane_request_body_bytes_total Request body bytes read from clients, by route.
# TYPE meridian_dataplane_request_body_bytes_total counter
meridian_dataplane_request_body_bytes_total{route="api",upstream="users"} 11
# HELP meridian_dataplane_response_body_bytes_total Response body bytes written to clients, by route.
# TYPE meridian_dataplane_response_body_bytes_total counter
meridian_dataplane_response_body_bytes_total{route="(none)",upstream="(none)"} 0
meridian_dataplane_response_body_bytes_total{route="api",upstream="users"} 22
# HELP meridian_dataplane_upstream_attempts_total Attempts sent to upstream targets, retries included, by outcome: the response's status class, or connect_failure, reset, timeout, canceled (the client left), protocol_error, or the client's faults, which say nothing about the upstream: body_too_large (the client's body passed the route's limit), bad_request_body (it was malformed) and request_body_timeout (it stopped arriving).
# TYPE meridian_dataplane_upstream_attempts_total counter
meridian_dataplane_upstream_attempts_total{outcome="2xx",route="api",upstream="users"} 1
meridian_dataplane_upstream_attempts_total{outcome="5xx",route="api",upstream="users"} 1
meridian_dataplane_upstream_attempts_total{outcome="connect_failure",route="api",upstream="users"} 2
meridian_dataplane_upstream_attempts_total{outcome="timeout",route="api",upstream="users"} 1
# HELP meridian_dataplane_retries_total Retries made, by route.
# TYPE meridian_dataplane_retries_total counter
meridian_dataplane_retries_total{route="api",upstream="users"} 2
# HELP meridian_dataplane_retry_budget_exhausted_total Retries a route's policy wanted but its retry budget refused.
# TYPE meridian_dataplane_retry_budget_exhausted_total counter
meridian_dataplane_retry_budget_exhausted_total{route="api",upstream="users"} 1
`
	names := []string{
		"meridian_dataplane_requests_total", "meridian_dataplane_requests_in_flight",
		"meridian_dataplane_request_body_bytes_total", "meridian_dataplane_response_body_bytes_total",
		"meridian_dataplane_upstream_attempts_total", "meridian_dataplane_retries_total",
		"meridian_dataplane_retry_budget_exhausted_total",
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	// Histograms: 6 requests observed (the upgrade is not), 2 attempts
	// with a response.
	if got := histogramCount(t, reg, "meridian_dataplane_request_duration_seconds", "api"); got != 6 {
		t.Errorf("request duration count = %d, want 6", got)
	}
	if got := histogramCount(t, reg, "meridian_dataplane_upstream_latency_seconds", "api"); got != 2 {
		t.Errorf("upstream latency count = %d, want 2", got)
	}
	if got := histogramCount(t, reg, "meridian_dataplane_upstream_latency_seconds", NoRoute); got != -1 {
		t.Errorf("unrouted requests have an upstream latency histogram (count %d)", got)
	}
}

// histogramCount returns the sample count of the named histogram for
// route, or -1 when it has none.
func histogramCount(t *testing.T, reg *prometheus.Registry, name, route string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && l.GetValue() == route {
					return int(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return -1
}

func TestPolicyRecorders(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	l := m.RateLimit("per-user")
	if m.RateLimit("per-user") != l {
		t.Fatal("RateLimit returned another recorder for the same name")
	}
	l.Decision(LimitAllowed)
	l.Decision(LimitAllowed)
	l.Decision(LimitRejected)
	l.Decision(LimitShadowRejected)
	l.Decision(LimitQueued)
	l.StoreFailure(PolicyDeny)
	l.StoreSwitch()
	m.RateLimit("idle")

	j := m.JWT("sso")
	j.Record(JWTOK)
	j.Record(JWTExpired)
	j.Record(JWTExpired)
	j.Record(JWTInsufficientScope)

	want := `
# HELP meridian_dataplane_ratelimit_decisions_total Rate limit decisions, by RateLimit and outcome: allowed, queued (allowed after a wait), rejected (429) or shadow_rejected (over the limit in shadow mode, let through).
# TYPE meridian_dataplane_ratelimit_decisions_total counter
meridian_dataplane_ratelimit_decisions_total{limit="per-user",outcome="allowed"} 2
meridian_dataplane_ratelimit_decisions_total{limit="per-user",outcome="queued"} 1
meridian_dataplane_ratelimit_decisions_total{limit="per-user",outcome="rejected"} 1
meridian_dataplane_ratelimit_decisions_total{limit="per-user",outcome="shadow_rejected"} 1
# HELP meridian_dataplane_ratelimit_store_failure_decisions_total Decisions of global RateLimits taken without Redis, by RateLimit and the onStoreFailure policy that decided: local, allow or deny.
# TYPE meridian_dataplane_ratelimit_store_failure_decisions_total counter
meridian_dataplane_ratelimit_store_failure_decisions_total{limit="per-user",policy="deny"} 1
# HELP meridian_dataplane_ratelimit_store_switches_total Switches of a global RateLimit between counting in Redis and its onStoreFailure policy, both ways.
# TYPE meridian_dataplane_ratelimit_store_switches_total counter
meridian_dataplane_ratelimit_store_switches_total{limit="idle"} 0
meridian_dataplane_ratelimit_store_switches_total{limit="per-user"} 1
# HELP meridian_dataplane_jwt_requests_total Requests a JWTProvider judged, by reason: ok, or why it rejected them (missing, multiple, malformed, too_large, bad_algorithm, unknown_key, bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience, invalid_claim, insufficient_scope).
# TYPE meridian_dataplane_jwt_requests_total counter
meridian_dataplane_jwt_requests_total{provider="sso",reason="expired"} 2
meridian_dataplane_jwt_requests_total{provider="sso",reason="insufficient_scope"} 1
meridian_dataplane_jwt_requests_total{provider="sso",reason="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"meridian_dataplane_ratelimit_decisions_total", "meridian_dataplane_ratelimit_store_failure_decisions_total",
		"meridian_dataplane_ratelimit_store_switches_total", "meridian_dataplane_jwt_requests_total"); err != nil {
		t.Error(err)
	}
}

// TestRetain: recorders of resources the live configuration no longer has
// leave the scrape; those it keeps keep counting.
func TestRetain(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	kept, moved, gone := m.Route("kept", "u1"), m.Route("moved", "u1"), m.Route("gone", "u1")
	for _, r := range []*Route{kept, moved, gone} {
		r.Begin()
		r.End(http.MethodGet, 200, 1, time.Millisecond)
	}
	m.RateLimit("keep").Decision(LimitAllowed)
	m.RateLimit("drop").Decision(LimitAllowed)
	m.JWT("keep").Record(JWTOK)
	m.JWT("drop").Record(JWTOK)

	m.Retain(Live{
		Routes:       map[string]string{"kept": "u1", "moved": "u2"},
		RateLimits:   []string{"keep"},
		JWTProviders: []string{"keep"},
	})
	if m.Route("kept", "u1") != kept {
		t.Error("a kept route got a new recorder")
	}
	if m.Route("moved", "u1") == moved {
		t.Error("a route moved to another upstream kept its recorder")
	}
	m.Retain(Live{Routes: map[string]string{"kept": "u1", "moved": "u2"}, RateLimits: []string{"keep"}, JWTProviders: []string{"keep"}})

	want := `
# HELP meridian_dataplane_requests_total Requests answered, by route, its upstream, method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or other) and status class (1xx: upgraded). Requests no route served have route and upstream "(none)".
# TYPE meridian_dataplane_requests_total counter
meridian_dataplane_requests_total{method="GET",route="kept",status_class="2xx",upstream="u1"} 1
# HELP meridian_dataplane_ratelimit_decisions_total Rate limit decisions, by RateLimit and outcome: allowed, queued (allowed after a wait), rejected (429) or shadow_rejected (over the limit in shadow mode, let through).
# TYPE meridian_dataplane_ratelimit_decisions_total counter
meridian_dataplane_ratelimit_decisions_total{limit="keep",outcome="allowed"} 1
# HELP meridian_dataplane_jwt_requests_total Requests a JWTProvider judged, by reason: ok, or why it rejected them (missing, multiple, malformed, too_large, bad_algorithm, unknown_key, bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience, invalid_claim, insufficient_scope).
# TYPE meridian_dataplane_jwt_requests_total counter
meridian_dataplane_jwt_requests_total{provider="keep",reason="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"meridian_dataplane_requests_total", "meridian_dataplane_ratelimit_decisions_total", "meridian_dataplane_jwt_requests_total"); err != nil {
		t.Error(err)
	}
	for _, route := range []string{"gone", "moved"} {
		if n := histogramCount(t, reg, "meridian_dataplane_request_duration_seconds", route); n > 0 {
			t.Errorf("route %q still has a duration histogram with %d samples", route, n)
		}
	}
	if n := histogramCount(t, reg, "meridian_dataplane_request_duration_seconds", "kept"); n != 1 {
		t.Errorf("kept route's duration count = %d, want 1", n)
	}
}

func TestNilRecordersRecordNothing(t *testing.T) {
	var m *Metrics
	m.Retain(Live{})
	r := m.Route("r", "u")
	if r != nil || m.Unrouted() != nil || m.RateLimit("l") != nil || m.JWT("p") != nil {
		t.Fatal("a nil Metrics handed out a recorder")
	}
	r.Begin()
	r.End(http.MethodGet, 200, 1, time.Second)
	r.AttemptResponse(200, time.Second)
	r.AttemptFailed(Reset)
	r.Retry()
	r.RetryBudgetExhausted()
	body := io.NopCloser(strings.NewReader("x"))
	if r.CountBody(body) != body {
		t.Error("a nil Route wrapped the body")
	}
	var l *RateLimit
	l.Decision(LimitAllowed)
	l.StoreFailure(PolicyLocal)
	l.StoreSwitch()
	var j *JWT
	j.Record(JWTOK)
}

func TestLabelIndexes(t *testing.T) {
	methods := map[string]string{
		"GET": "GET", "HEAD": "HEAD", "POST": "POST", "PUT": "PUT", "PATCH": "PATCH", "DELETE": "DELETE",
		"OPTIONS": "OPTIONS", "TRACE": "other", "CONNECT": "other", "get": "other", "": "other", "PROPFIND": "other",
	}
	for in, want := range methods {
		if got := methodLabels[methodIndex(in)]; got != want {
			t.Errorf("method %q: label %q, want %q", in, got, want)
		}
	}
	classes := map[int]string{0: "1xx", 100: "1xx", 101: "1xx", 200: "2xx", 299: "2xx", 304: "3xx", 404: "4xx", 500: "5xx", 599: "5xx", 999: "5xx"}
	for status, want := range classes {
		if got := classLabels[classIndex(status)]; got != want {
			t.Errorf("status %d: class %q, want %q", status, got, want)
		}
	}
}

func TestObserver(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewObserver(func(o *Observation) {
		o.ConfigVersion = 42
		o.ConfigAppliedAt = time.Unix(1700000000, 500_000_000)
		o.Connected = false
		o.SyncAge = 90 * time.Second
		o.SnapshotsReceived, o.Nacks = 7, 2
		o.Upstreams = []UpstreamState{
			{Name: "users", Healthy: 2, Unhealthy: 1, Ejected: 1, ActiveChecks: true, ChecksPassed: 10, ChecksFailed: 3},
			{Name: "static", Healthy: 1},
		}
		o.Breakers = []BreakerState{
			{Breaker: "cb", Upstream: "users", State: BreakerOpen, Transitions: 3, Rejected: 9},
			{Breaker: "per-target", Upstream: "users", Target: "10.0.0.1:80", State: BreakerHalfOpen, Transitions: 2},
		}
		o.RateLimits = []RateLimitState{{Name: "global", Fallback: true}}
		o.Redis = &RedisState{Available: true, ScriptCalls: 5, Failures: 1, FastFailures: 4}
	}), NewBuildInfo("v1.2.3"))

	want := `
# HELP meridian_dataplane_build_info Always 1; the version label is the data plane's build version.
# TYPE meridian_dataplane_build_info gauge
meridian_dataplane_build_info{version="v1.2.3"} 1
# HELP meridian_dataplane_config_version Version of the live configuration; 0 before one is applied.
# TYPE meridian_dataplane_config_version gauge
meridian_dataplane_config_version 42
# HELP meridian_dataplane_config_applied_timestamp_seconds When the live configuration was applied, in Unix seconds; 0 before one is.
# TYPE meridian_dataplane_config_applied_timestamp_seconds gauge
meridian_dataplane_config_applied_timestamp_seconds 1.7000000005e+09
# HELP meridian_dataplane_controlplane_connected 1 while a stream to a control plane is open, else 0.
# TYPE meridian_dataplane_controlplane_connected gauge
meridian_dataplane_controlplane_connected 0
# HELP meridian_dataplane_config_sync_age_seconds Seconds since a control-plane stream was last open (the control plane pushes every change at once, so the configuration is current while one is): 0 while one is, counted from start when none has been.
# TYPE meridian_dataplane_config_sync_age_seconds gauge
meridian_dataplane_config_sync_age_seconds 90
# HELP meridian_dataplane_snapshots_received_total Snapshots received from control planes.
# TYPE meridian_dataplane_snapshots_received_total counter
meridian_dataplane_snapshots_received_total 7
# HELP meridian_dataplane_nacks_total Snapshots rejected (NACKed) because they did not validate or compile here.
# TYPE meridian_dataplane_nacks_total counter
meridian_dataplane_nacks_total 2
# HELP meridian_dataplane_upstream_targets Targets of an upstream by state: healthy, unhealthy (failing active health checks) or ejected (by passive outlier detection).
# TYPE meridian_dataplane_upstream_targets gauge
meridian_dataplane_upstream_targets{state="ejected",upstream="static"} 0
meridian_dataplane_upstream_targets{state="ejected",upstream="users"} 1
meridian_dataplane_upstream_targets{state="healthy",upstream="static"} 1
meridian_dataplane_upstream_targets{state="healthy",upstream="users"} 2
meridian_dataplane_upstream_targets{state="unhealthy",upstream="static"} 0
meridian_dataplane_upstream_targets{state="unhealthy",upstream="users"} 1
# HELP meridian_dataplane_health_checks_total Active health check probes, by upstream and result: success or failure.
# TYPE meridian_dataplane_health_checks_total counter
meridian_dataplane_health_checks_total{result="failure",upstream="users"} 3
meridian_dataplane_health_checks_total{result="success",upstream="users"} 10
# HELP meridian_dataplane_breaker_state Circuit breaker state: 0 closed, 1 half-open, 2 open. Labels a breaker's scope does not use are empty.
# TYPE meridian_dataplane_breaker_state gauge
meridian_dataplane_breaker_state{breaker="cb",route="",target="",upstream="users"} 2
meridian_dataplane_breaker_state{breaker="per-target",route="",target="10.0.0.1:80",upstream="users"} 1
# HELP meridian_dataplane_breaker_transitions_total Circuit breaker state changes.
# TYPE meridian_dataplane_breaker_transitions_total counter
meridian_dataplane_breaker_transitions_total{breaker="cb",route="",target="",upstream="users"} 3
meridian_dataplane_breaker_transitions_total{breaker="per-target",route="",target="10.0.0.1:80",upstream="users"} 2
# HELP meridian_dataplane_breaker_rejected_total Requests a circuit breaker refused (answered with its fallback or another target).
# TYPE meridian_dataplane_breaker_rejected_total counter
meridian_dataplane_breaker_rejected_total{breaker="cb",route="",target="",upstream="users"} 9
meridian_dataplane_breaker_rejected_total{breaker="per-target",route="",target="10.0.0.1:80",upstream="users"} 0
# HELP meridian_dataplane_ratelimit_store_fallback 1 while a global RateLimit is decided by its onStoreFailure policy (Redis unavailable or not configured), else 0.
# TYPE meridian_dataplane_ratelimit_store_fallback gauge
meridian_dataplane_ratelimit_store_fallback{limit="global"} 1
# HELP meridian_dataplane_ratelimit_redis_available 1 while calls to Redis for global rate limits go through, 0 while its client-side breaker holds them back.
# TYPE meridian_dataplane_ratelimit_redis_available gauge
meridian_dataplane_ratelimit_redis_available 1
# HELP meridian_dataplane_ratelimit_redis_calls_total Script calls sent to Redis for global rate limits.
# TYPE meridian_dataplane_ratelimit_redis_calls_total counter
meridian_dataplane_ratelimit_redis_calls_total 5
# HELP meridian_dataplane_ratelimit_redis_failures_total Script calls to Redis that failed or timed out.
# TYPE meridian_dataplane_ratelimit_redis_failures_total counter
meridian_dataplane_ratelimit_redis_failures_total 1
# HELP meridian_dataplane_ratelimit_redis_short_circuited_total Global rate limit decisions not sent to Redis because its client-side breaker was open.
# TYPE meridian_dataplane_ratelimit_redis_short_circuited_total counter
meridian_dataplane_ratelimit_redis_short_circuited_total 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestLint runs client_golang's linter (what promtool check metrics
// applies) over every metric, each with a sample.
func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	r := m.Route("r", "u")
	r.Begin()
	r.End(http.MethodGet, 200, 1, time.Millisecond)
	r.AttemptResponse(200, time.Millisecond)
	m.RateLimit("l").Decision(LimitAllowed)
	m.RateLimit("l").StoreFailure(PolicyLocal)
	m.JWT("p").Record(JWTOK)
	reg.MustRegister(NewObserver(func(o *Observation) {
		o.Upstreams = []UpstreamState{{Name: "u", ActiveChecks: true}}
		o.Breakers = []BreakerState{{Breaker: "b", Upstream: "u"}}
		o.RateLimits = []RateLimitState{{Name: "l"}}
		o.Redis = &RedisState{}
	}), NewBuildInfo("dev"))
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// BenchmarkRequest is what metrics add to a proxied request: the route's
// in-flight gauge, request counter, duration and upstream latency.
func BenchmarkRequest(b *testing.B) {
	r := New(prometheus.NewRegistry()).Route("r", "u")
	b.ReportAllocs()
	for b.Loop() {
		r.Begin()
		r.AttemptResponse(200, time.Millisecond)
		r.End(http.MethodGet, 200, 512, 2*time.Millisecond)
	}
}

func BenchmarkRequestParallel(b *testing.B) {
	r := New(prometheus.NewRegistry()).Route("r", "u")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Begin()
			r.AttemptResponse(200, time.Millisecond)
			r.End(http.MethodGet, 200, 512, 2*time.Millisecond)
		}
	})
}
