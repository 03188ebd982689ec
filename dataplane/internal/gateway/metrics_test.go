package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt/jwttest"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// signHS256 mints a token for the provider of TestMetrics.
func signHS256(t *testing.T, secret string, exp time.Time) string {
	t.Helper()
	return jwttest.HS256(t, secret, josejwt.Claims{Subject: "alice", Expiry: josejwt.NewNumericDate(exp)})
}

// TestMetrics sends known traffic through a gateway and checks that every
// counter moved by exactly what that traffic should have made it move.
func TestMetrics(t *testing.T) {
	t.Setenv("GW_METRICS_SECRET", testSecret)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello from "+r.URL.Path+"\n")
	}))
	defer up.Close()
	upAddr := up.Listener.Addr().String()

	users := upstreamRes("users", targets(upAddr))
	users.GetUpstream().Spec.HealthCheck = &meridianv1.HealthCheck{Active: &meridianv1.ActiveHealthCheck{
		Path: "/healthz", Interval: durationpb.New(time.Hour), // one probe, at start
	}}
	pair := upstreamRes("pair", targets(deadAddr(t), upAddr))
	pair.GetUpstream().Spec.HealthCheck = &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{
		ConsecutiveFailures: 1, MaxEjectionPercent: 50, EjectionTime: durationpb.New(time.Hour),
	}}

	retry := func(attempts uint32) *meridianv1.RetryPolicy {
		return &meridianv1.RetryPolicy{Attempts: attempts, On: []string{"connect_failure"},
			Backoff: &meridianv1.Backoff{Base: durationpb.New(0)}}
	}
	flaky := routeRes("flaky", "dead", prefix("/flaky"))
	flaky.GetRoute().Spec.Retry = retry(2)
	stingy := routeRes("stingy", "dead", prefix("/stingy"))
	stingy.GetRoute().Spec.Retry = retry(10) // more than the budget's 3 a second
	fragile := routeRes("fragile", "dead", prefix("/fragile"))
	fragile.GetRoute().Spec.CircuitBreaker = "cb"
	auth := routeRes("auth", "users", prefix("/auth"))
	auth.GetRoute().Spec.Auth = &meridianv1.RouteAuth{Jwt: "sso"}

	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	g := New(Options{Logger: discardLogger(), Metrics: m})
	defer g.Close()
	reg.MustRegister(metrics.NewObserver(g.Observe))
	err := g.Apply(context.Background(), snapshot(7,
		users, pair, upstreamRes("dead", targets(deadAddr(t))),
		rateLimitRes("per-route", meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_LOCAL, 3, "route"),
		limitedRoute("api", "users", "/api", "per-route"),
		jwtRes("sso", &meridianv1.JWTKey{Kid: "k1", SecretEnv: "GW_METRICS_SECRET"}), auth,
		flaky, stingy, fragile, breakerRes("cb", meridianv1.BreakerScope_BREAKER_SCOPE_ROUTE, 1),
		routeRes("pair", "pair", prefix("/pair")),
	), SourceControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{Metrics: m}))
	defer front.Close()

	var bodyBytes = map[string]int{} // response body bytes by route
	send := func(route, method, path, body, token string) int {
		t.Helper()
		req, err := http.NewRequest(method, front.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body == "" {
			req.Body = http.NoBody
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		bodyBytes[route] += len(b)
		return resp.StatusCode
	}

	// api: 3 allowed (2 GET, 1 POST with 11 body bytes), then 2 over the
	// limit.
	for i, tt := range []struct {
		method, body string
		want         int
	}{
		{"GET", "", 200}, {"POST", "hello world", 200}, {"GET", "", 200}, {"GET", "", 429}, {"GET", "", 429},
	} {
		if got := send("api", tt.method, "/api/x", tt.body, ""); got != tt.want {
			t.Fatalf("api request %d: %d, want %d", i, got, tt.want)
		}
	}
	if got := send("", "GET", "/nowhere", "", ""); got != 404 {
		t.Fatalf("/nowhere: %d, want 404", got)
	}
	// auth: one good token, three rejected for different reasons.
	for i, tt := range []struct {
		token string
		want  int
	}{
		{signHS256(t, testSecret, time.Now().Add(time.Hour)), 200},
		{"", 401},
		{signHS256(t, testSecret, time.Now().Add(-time.Hour)), 401},
		{signHS256(t, "another-secret-of-at-least-32-bytes", time.Now().Add(time.Hour)), 401},
	} {
		if got := send("auth", "GET", "/auth/x", "", tt.token); got != tt.want {
			t.Fatalf("auth request %d: %d, want %d", i, got, tt.want)
		}
	}
	// flaky: three attempts (two retries) at a dead target, then 502.
	if got := send("flaky", "GET", "/flaky", "", ""); got != 502 {
		t.Fatalf("flaky: %d, want 502", got)
	}
	// stingy: the budget allows 3 retries in a second, refuses the 4th.
	if got := send("stingy", "GET", "/stingy", "", ""); got != 502 {
		t.Fatalf("stingy: %d, want 502", got)
	}
	// fragile: one failure trips the breaker, which refuses the next.
	if got := send("fragile", "GET", "/fragile", "", ""); got != 502 {
		t.Fatalf("fragile first: %d, want 502", got)
	}
	if got := send("fragile", "GET", "/fragile", "", ""); got != 503 {
		t.Fatalf("fragile second: %d, want 503 from the breaker", got)
	}
	// pair: round robin sends one of the first two requests to the dead
	// target, which is then ejected.
	failed := 0
	for range 2 {
		if send("pair", "GET", "/pair", "", "") == 502 {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("pair: %d requests failed, want 1", failed)
	}
	// Wait until every request is recorded (a client may see a response
	// before the handler returned) and the health checker has probed
	// users, once, at start.
	deadline := time.Now().Add(10 * time.Second)
	for {
		inFlight := 0.0
		for _, route := range []string{"api", "auth", "flaky", "stingy", "fragile", "pair", "(none)"} {
			inFlight += metricstest.Value(t, reg, "meridian_dataplane_requests_in_flight", "route", route)
		}
		checked, _ := metricstest.Lookup(t, reg, "meridian_dataplane_health_checks_total", "upstream", "users", "result", "success")
		if inFlight == 0 && checked > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v requests in flight, %v health checks of users", inFlight, checked)
		}
		time.Sleep(10 * time.Millisecond)
	}

	type sample struct {
		name   string
		labels []string
		want   float64
	}
	for _, s := range []sample{
		// Requests by route, method and status class.
		{"meridian_dataplane_requests_total", []string{"route", "api", "upstream", "users", "method", "GET", "status_class", "2xx"}, 2},
		{"meridian_dataplane_requests_total", []string{"route", "api", "upstream", "users", "method", "POST", "status_class", "2xx"}, 1},
		{"meridian_dataplane_requests_total", []string{"route", "api", "upstream", "users", "method", "GET", "status_class", "4xx"}, 2},
		{"meridian_dataplane_requests_total", []string{"route", "(none)", "upstream", "(none)", "method", "GET", "status_class", "4xx"}, 1},
		{"meridian_dataplane_requests_total", []string{"route", "auth", "method", "GET", "status_class", "2xx"}, 1},
		{"meridian_dataplane_requests_total", []string{"route", "auth", "method", "GET", "status_class", "4xx"}, 3},
		{"meridian_dataplane_requests_total", []string{"route", "flaky", "upstream", "dead", "method", "GET", "status_class", "5xx"}, 1},
		{"meridian_dataplane_requests_total", []string{"route", "fragile", "method", "GET", "status_class", "5xx"}, 2},
		{"meridian_dataplane_request_duration_seconds", []string{"route", "api", "upstream", "users"}, 5},
		{"meridian_dataplane_request_duration_seconds", []string{"route", "(none)"}, 1},
		{"meridian_dataplane_requests_in_flight", []string{"route", "api"}, 0},
		{"meridian_dataplane_request_body_bytes_total", []string{"route", "api"}, 11},
		{"meridian_dataplane_response_body_bytes_total", []string{"route", "api"}, float64(bodyBytes["api"])},
		{"meridian_dataplane_response_body_bytes_total", []string{"route", "(none)"}, float64(bodyBytes[""])},
		// Upstream attempts, retries and the retry budget.
		{"meridian_dataplane_upstream_attempts_total", []string{"route", "api", "upstream", "users", "outcome", "2xx"}, 3},
		{"meridian_dataplane_upstream_latency_seconds", []string{"route", "api", "upstream", "users"}, 3},
		{"meridian_dataplane_upstream_attempts_total", []string{"route", "flaky", "outcome", "connect_failure"}, 3},
		{"meridian_dataplane_retries_total", []string{"route", "flaky"}, 2},
		{"meridian_dataplane_retry_budget_exhausted_total", []string{"route", "flaky"}, 0},
		{"meridian_dataplane_upstream_attempts_total", []string{"route", "stingy", "outcome", "connect_failure"}, 4},
		{"meridian_dataplane_retries_total", []string{"route", "stingy"}, 3},
		{"meridian_dataplane_retry_budget_exhausted_total", []string{"route", "stingy"}, 1},
		{"meridian_dataplane_upstream_attempts_total", []string{"route", "fragile", "outcome", "connect_failure"}, 1},
		// Rate limits and JWT.
		{"meridian_dataplane_ratelimit_decisions_total", []string{"limit", "per-route", "outcome", "allowed"}, 3},
		{"meridian_dataplane_ratelimit_decisions_total", []string{"limit", "per-route", "outcome", "rejected"}, 2},
		{"meridian_dataplane_jwt_requests_total", []string{"provider", "sso", "reason", "ok"}, 1},
		{"meridian_dataplane_jwt_requests_total", []string{"provider", "sso", "reason", "missing"}, 1},
		{"meridian_dataplane_jwt_requests_total", []string{"provider", "sso", "reason", "expired"}, 1},
		{"meridian_dataplane_jwt_requests_total", []string{"provider", "sso", "reason", "bad_signature"}, 1},
		// Observed at scrape time.
		{"meridian_dataplane_breaker_state", []string{"breaker", "cb", "route", "fragile", "upstream", "dead", "target", ""}, metrics.BreakerOpen},
		{"meridian_dataplane_breaker_transitions_total", []string{"breaker", "cb", "route", "fragile"}, 1},
		{"meridian_dataplane_breaker_rejected_total", []string{"breaker", "cb", "route", "fragile"}, 1},
		{"meridian_dataplane_upstream_targets", []string{"upstream", "pair", "state", "ejected"}, 1},
		{"meridian_dataplane_upstream_targets", []string{"upstream", "pair", "state", "healthy"}, 1},
		{"meridian_dataplane_upstream_targets", []string{"upstream", "users", "state", "healthy"}, 1},
		{"meridian_dataplane_upstream_targets", []string{"upstream", "users", "state", "unhealthy"}, 0},
		{"meridian_dataplane_health_checks_total", []string{"upstream", "users", "result", "success"}, 1},
		{"meridian_dataplane_health_checks_total", []string{"upstream", "users", "result", "failure"}, 0},
		{"meridian_dataplane_config_version", nil, 7},
	} {
		if got := metricstest.Value(t, reg, s.name, s.labels...); got != s.want {
			t.Errorf("%s%v = %v, want %v", s.name, s.labels, got, s.want)
		}
	}
	for _, absent := range []sample{
		{"meridian_dataplane_ratelimit_decisions_total", []string{"limit", "per-route", "outcome", "shadow_rejected"}, 0},
		{"meridian_dataplane_upstream_attempts_total", []string{"route", "api", "outcome", "5xx"}, 0},
		{"meridian_dataplane_health_checks_total", []string{"upstream", "pair"}, 0}, // no active checks
	} {
		if v, ok := metricstest.Lookup(t, reg, absent.name, absent.labels...); ok {
			t.Errorf("%s%v = %v, want no sample", absent.name, absent.labels, v)
		}
	}

	// A push that drops routes drops their series; the others keep
	// counting from where they were.
	err = g.Apply(context.Background(), snapshot(8,
		users, rateLimitRes("per-route", meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_LOCAL, 3, "route"),
		limitedRoute("api", "users", "/api", "per-route"),
	), SourceControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	if got := metricstest.Value(t, reg, "meridian_dataplane_requests_total", "route", "api", "method", "GET", "status_class", "2xx"); got != 2 {
		t.Errorf("api GET 2xx after a push = %v, want 2", got)
	}
	for _, name := range []string{"meridian_dataplane_retries_total", "meridian_dataplane_request_duration_seconds"} {
		if v, ok := metricstest.Lookup(t, reg, name, "route", "flaky"); ok {
			t.Errorf("%s of the removed route flaky = %v, want no sample", name, v)
		}
	}
	for _, name := range []string{"meridian_dataplane_jwt_requests_total", "meridian_dataplane_breaker_state"} {
		if names := metricstest.Names(t, reg, name); len(names) > 0 {
			t.Errorf("%s still reported after its resources were removed", name)
		}
	}
	if got := metricstest.Value(t, reg, "meridian_dataplane_config_version"); got != 8 {
		t.Errorf("config version = %v, want 8", got)
	}
}
