package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
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
// bucket, one that changes it starts afresh; a global-scope RateLimit is
// not enforced yet.
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
		{"global scope is not enforced", nil, "/global", http.StatusOK},
		{"global scope is not enforced again", nil, "/global", http.StatusOK},
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
