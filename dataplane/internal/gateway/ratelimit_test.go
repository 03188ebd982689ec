package gateway

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/global"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func rateLimitRes(name string, scope meridianv1.RateLimitScope, limit uint64, key ...string) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_RateLimit{RateLimit: &meridianv1.RateLimit{
		Metadata: &meridianv1.Metadata{Name: name},
		Spec: &meridianv1.RateLimitSpec{
			Scope: scope, Algorithm: meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET,
			Limit: limit, Period: durationpb.New(time.Hour), Key: key,
		},
	}}}
}

func limitedRoute(name, up, path string, limits ...string) *meridianv1.Resource {
	r := routeRes(name, up, prefix(path))
	r.GetRoute().Spec.RateLimits = limits
	return r
}

// TestRateLimitsSurviveUnrelatedPushes: a local RateLimit answers 429 once
// its bucket is empty; a push that leaves the RateLimit unchanged keeps the
// bucket, one that changes it starts afresh; a global-scope RateLimit
// without Redis falls back to counting locally.
func TestRateLimitsSurviveUnrelatedPushes(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer up.Close()
	upRes := upstreamRes("up", targets(up.Listener.Addr().String()))
	local := meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_LOCAL
	global := meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL

	g := newGateway()
	ctx := context.Background()
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()
	get := func(path string) int {
		t.Helper()
		resp, err := http.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	apply := func(version uint64, rs ...*meridianv1.Resource) {
		t.Helper()
		if err := g.Apply(ctx, snapshot(version, rs...), SourceControlPlane); err != nil {
			t.Fatal(err)
		}
	}

	base := []*meridianv1.Resource{upRes,
		rateLimitRes("one", local, 1, "route"),
		rateLimitRes("fleet", global, 1, "route"),
		limitedRoute("limited", "up", "/limited", "one"),
		limitedRoute("global", "up", "/global", "fleet"),
	}
	apply(1, base...)
	steps := []struct {
		name  string
		apply func()
		path  string
		want  int
	}{
		{"first request", nil, "/limited", http.StatusOK},
		{"bucket empty", nil, "/limited", http.StatusTooManyRequests},
		{"global scope without Redis counts locally", nil, "/global", http.StatusOK},
		{"global scope without Redis is still limited", nil, "/global", http.StatusTooManyRequests},
		{"unrelated push keeps the bucket", func() {
			apply(2, append(base, routeRes("other", "up", prefix("/other")))...)
		}, "/limited", http.StatusTooManyRequests},
		{"changed RateLimit starts afresh", func() {
			apply(3, upRes, rateLimitRes("one", local, 2, "route"), limitedRoute("limited", "up", "/limited", "one"))
		}, "/limited", http.StatusOK},
	}
	for _, s := range steps {
		if s.apply != nil {
			s.apply()
		}
		if got := get(s.path); got != s.want {
			t.Errorf("%s: status %d, want %d", s.name, got, s.want)
		}
	}
	if g.sweepStop == nil {
		t.Error("no sweeper running with a local RateLimit live")
	}

	g.Close()
	front.Close()
	up.Close()
	http.DefaultClient.CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

// TestRateLimitRunsAfterAuth: consumer keys see the verified identity, so
// two consumers get separate buckets.
func TestRateLimitRunsAfterAuth(t *testing.T) {
	t.Setenv("GW_TEST_SECRET", testSecret)
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer up.Close()
	provider := jwtRes("sso", &meridianv1.JWTKey{Kid: "k1", SecretEnv: "GW_TEST_SECRET"})
	provider.GetJwtProvider().Spec.ConsumerClaim = "sub"
	route := limitedRoute("api", "up", "/", "per-consumer")
	route.GetRoute().Spec.Auth = &meridianv1.RouteAuth{Jwt: "sso"}

	g := newGateway()
	defer g.Close()
	if err := g.Apply(context.Background(), snapshot(1, upstreamRes("up", targets(up.Listener.Addr().String())), provider,
		rateLimitRes("per-consumer", meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_LOCAL, 1, "consumer"), route), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()
	alice, bob := hs256(t, "alice"), hs256(t, "bob")
	tests := []struct {
		name, token string
		want        int
	}{
		{"alice", alice, http.StatusOK},
		{"alice again", alice, http.StatusTooManyRequests},
		{"bob has his own bucket", bob, http.StatusOK},
		{"no token is rejected by auth first", "", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, front.URL+"/", nil)
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
		if tt.want != http.StatusUnauthorized && resp.Header.Get("RateLimit") == "" {
			t.Errorf("%s: no RateLimit header", tt.name)
		}
	}
}

// TestGlobalStoreFailure: with Redis unreachable (a real limiter dialing a
// closed port), a global RateLimit follows its onStoreFailure policy; local
// enforces this data plane's share of the limit at the fleet size the
// control plane reported.
func TestGlobalStoreFailure(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer up.Close()
	dead := deadRedis(t)

	tests := []struct {
		name       string
		policy     meridianv1.StoreFailurePolicy
		limit      uint64
		fleet      int
		want       []int
		policyName string // its label in metrics
	}{
		// The share is paced: a tenth of it may come back to back.
		{"local is the default", meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_UNSPECIFIED, 30, 1, []int{200, 200, 200, 429}, "local"},
		{"local share of a fleet of 3", meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_LOCAL, 90, 3, []int{200, 200, 200, 429}, "local"},
		{"local share rounds up", meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_LOCAL, 1, 5, []int{200, 429}, "local"},
		{"allow", meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_ALLOW, 1, 1, []int{200, 200, 200}, "allow"},
		{"deny", meridianv1.StoreFailurePolicy_STORE_FAILURE_POLICY_DENY, 100, 1, []int{429, 429}, "deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			g := New(Options{Logger: discardLogger(), Redis: dead, Metrics: metrics.New(reg)})
			defer g.Close()
			reg.MustRegister(metrics.NewObserver(g.Observe))
			g.SetFleetSize(tt.fleet)
			rl := rateLimitRes("fleet", meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL, tt.limit, "route")
			rl.GetRateLimit().Spec.OnStoreFailure = tt.policy
			if err := g.Apply(context.Background(), snapshot(1, upstreamRes("up", targets(up.Listener.Addr().String())), rl,
				limitedRoute("r", "up", "/", "fleet")), SourceControlPlane); err != nil {
				t.Fatal(err)
			}
			h := g.Handler(proxy.HandlerConfig{})
			for i, want := range tt.want {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
				if w.Code != want {
					t.Errorf("request %d: status %d, want %d", i+1, w.Code, want)
				}
				if w.Code == http.StatusTooManyRequests && w.Header().Get("Retry-After") == "" {
					t.Errorf("request %d: 429 without Retry-After", i+1)
				}
			}
			if got := g.Current().limits["fleet"].switches.Load(); got != 1 {
				t.Errorf("%d switches to onStoreFailure counted, want 1", got)
			}
			allowed, rejected := 0.0, 0.0
			for _, code := range tt.want {
				if code == http.StatusOK {
					allowed++
				} else {
					rejected++
				}
			}
			for _, s := range []struct {
				name   string
				labels []string
				want   float64
			}{
				{"meridian_dataplane_ratelimit_store_failure_decisions_total", []string{"limit", "fleet", "policy", tt.policyName}, float64(len(tt.want))},
				{"meridian_dataplane_ratelimit_store_switches_total", []string{"limit", "fleet"}, 1},
				{"meridian_dataplane_ratelimit_store_fallback", []string{"limit", "fleet"}, 1},
			} {
				if got := metricstest.Value(t, reg, s.name, s.labels...); got != s.want {
					t.Errorf("%s%v = %v, want %v", s.name, s.labels, got, s.want)
				}
			}
			for outcome, want := range map[string]float64{"allowed": allowed, "rejected": rejected} {
				if got, _ := metricstest.Lookup(t, reg, "meridian_dataplane_ratelimit_decisions_total", "limit", "fleet", "outcome", outcome); got != want {
					t.Errorf("%s decisions = %v, want %v", outcome, got, want)
				}
			}
			if got := metricstest.Value(t, reg, "meridian_dataplane_ratelimit_redis_calls_total"); got < 1 {
				t.Errorf("Redis calls = %v, want at least the first, failed one", got)
			}
		})
	}
}

// deadRedis returns a real global limiter whose Redis address refuses
// connections.
func deadRedis(t *testing.T) *global.Limiter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	client := global.NewClient(&redis.UniversalOptions{Addrs: []string{addr}, MaxRetries: -1})
	t.Cleanup(func() { client.Close() })
	return global.New(client, global.Options{Logger: discardLogger()})
}

// TestAllRoutesLimit: a RateLimit with allRoutes applies to routes that do
// not list it, and a route that lists it too is charged once.
func TestAllRoutesLimit(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer up.Close()
	every := rateLimitRes("everyone", meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_LOCAL, 2, "route")
	every.GetRateLimit().Spec.AllRoutes = true
	g := newGateway()
	defer g.Close()
	if err := g.Apply(context.Background(), snapshot(1, upstreamRes("up", targets(up.Listener.Addr().String())), every,
		routeRes("plain", "up", prefix("/plain")), limitedRoute("listed", "up", "/listed", "everyone")), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	h := g.Handler(proxy.HandlerConfig{})
	for _, path := range []string{"/plain", "/listed"} {
		for i, want := range []int{200, 200, 429} {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
			if w.Code != want {
				t.Errorf("%s request %d: status %d, want %d", path, i+1, w.Code, want)
			}
		}
	}
}

// TestLocalFallbackStartsFromRecentTraffic: what Redis admitted on this
// data plane is counted in its local share too, so when Redis dies the
// share is already spent instead of letting a whole share through again.
func TestLocalFallbackStartsFromRecentTraffic(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer up.Close()
	limiter, kill := liveRedis(t)
	g := New(Options{Logger: discardLogger(), Redis: limiter})
	defer g.Close()
	g.SetFleetSize(3) // a share of 40 of the 120, 4 of them back to back
	rl := rateLimitRes("fleet", meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_GLOBAL, 120, "route")
	rl.GetRateLimit().Spec.Algorithm = meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW
	if err := g.Apply(context.Background(), snapshot(1, upstreamRes("up", targets(up.Listener.Addr().String())), rl,
		limitedRoute("r", "up", "/", "fleet")), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	h := g.Handler(proxy.HandlerConfig{})
	status := func() int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
		return w.Code
	}
	for i := range 6 {
		if got := status(); got != http.StatusOK {
			t.Fatalf("request %d through Redis: status %d, want 200 (6 of 120 per hour)", i+1, got)
		}
	}
	kill()
	if got := status(); got != http.StatusTooManyRequests {
		t.Errorf("first request with Redis dead: status %d, want 429 (the share's burst of 4 was spent through Redis)", got)
	}
}
