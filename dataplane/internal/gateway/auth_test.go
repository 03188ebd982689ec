package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt/jwttest"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

const testSecret = "gateway-test-secret-of-32-bytes!"

// hs256 mints a token with go-jose, not the library that verifies it.
func hs256(t *testing.T, sub string) string {
	t.Helper()
	return jwttest.HS256(t, testSecret, josejwt.Claims{Subject: sub, Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))})
}

// TestRouteAuthIsWiredAndProvidersSurvivePushes: a route naming a
// JWTProvider rejects requests without a valid token, and a push that does
// not change the provider keeps the same provider (keys, JWKS, cache).
func TestRouteAuthIsWiredAndProvidersSurvivePushes(t *testing.T) {
	t.Setenv("GW_TEST_SECRET", testSecret)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Saw-Authorization", r.Header.Get("Authorization"))
	}))
	defer up.Close()
	provider := jwtRes("sso", &meridianv1.JWTKey{Kid: "k1", SecretEnv: "GW_TEST_SECRET"})
	secure := routeRes("secure", "up", prefix("/secure"))
	secure.GetRoute().Spec.Auth = &meridianv1.RouteAuth{Jwt: "sso"}
	open := routeRes("open", "up", prefix("/open"))

	g := newGateway()
	defer g.Close()
	ctx := context.Background()
	if err := g.Apply(ctx, snapshot(1, upstreamRes("up", targets(up.Listener.Addr().String())), provider, secure), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()

	tests := []struct {
		name, path, token string
		want              int
	}{
		{"no token", "/secure/x", "", http.StatusUnauthorized},
		{"garbage token", "/secure/x", "not.a.token", http.StatusUnauthorized},
		{"valid token", "/secure/x", hs256(t, "alice"), http.StatusOK},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, front.URL+tt.path, nil)
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
		if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Saw-Authorization") != "" {
			t.Errorf("%s: the token reached the upstream", tt.name)
		}
	}

	before := g.Current().providers["sso"]
	if err := g.Apply(ctx, snapshot(2, upstreamRes("up", targets(up.Listener.Addr().String())), provider, secure, open), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	if after := g.Current().providers["sso"]; after != before {
		t.Error("an unchanged JWTProvider was rebuilt by a push")
	}
	changed := jwtRes("sso", &meridianv1.JWTKey{Kid: "k2", SecretEnv: "GW_TEST_SECRET"})
	if err := g.Apply(ctx, snapshot(3, upstreamRes("up", targets(up.Listener.Addr().String())), changed, secure), SourceControlPlane); err != nil {
		t.Fatal(err)
	}
	if g.Current().providers["sso"] == before {
		t.Error("a changed JWTProvider was not rebuilt")
	}
}
