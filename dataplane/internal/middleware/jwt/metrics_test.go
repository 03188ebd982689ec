package jwt

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics/metricstest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// TestReasonMetrics: every request the middleware judges is counted once,
// under the provider and the reason it was let through or turned away.
func TestReasonMetrics(t *testing.T) {
	clock := newClock()
	reg := prometheus.NewRegistry()
	opts := testOptions(clock)
	opts.Metrics = metrics.New(reg).JWT("corp")
	p := newTestProvider(t, testSpec(t), opts)
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	plain, err := New(p, &meridianv1.RouteAuth{Jwt: "corp"}, next)
	if err != nil {
		t.Fatal(err)
	}
	strict, err := New(p, &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "roles", Contains: []string{"root"}}}}, next)
	if err != nil {
		t.Fatal(err)
	}

	now := clock.Now()
	with := func(edit func(map[string]any)) string {
		c := validClaims(now)
		edit(c)
		return mintStd(t, "ES256", c)
	}
	tests := []struct {
		reason string
		h      http.Handler
		tokens []string // Authorization: Bearer <token> headers
	}{
		{"ok", plain, []string{mintStd(t, "ES256", validClaims(now))}},
		{"missing", plain, nil},
		{"multiple", plain, []string{"a.b.c", "d.e.f"}},
		{"malformed", plain, []string{"not-a-token"}},
		{"too_large", plain, []string{strings.Repeat("a", MaxTokenSize+1)}},
		{"bad_algorithm", plain, []string{rawToken(`{"alg":"none","typ":"JWT"}`, `{"sub":"x"}`, nil)}},
		{"unknown_key", plain, []string{mint(t, "ES256", keys(t).p256, map[string]any{"kid": "nobody"}, validClaims(now))}},
		{"bad_signature", plain, []string{mint(t, "ES256", keys(t).p256b, map[string]any{"kid": "p256"}, validClaims(now))}},
		{"expired", plain, []string{with(func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() })}},
		{"not_yet_valid", plain, []string{with(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() })}},
		{"wrong_issuer", plain, []string{with(func(c map[string]any) { c["iss"] = "https://evil.example" })}},
		{"wrong_audience", plain, []string{with(func(c map[string]any) { c["aud"] = "elsewhere" })}},
		{"invalid_claim", plain, []string{with(func(c map[string]any) { delete(c, "exp") })}},
		{"insufficient_scope", strict, []string{mintStd(t, "ES256", validClaims(now))}},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		for _, tok := range tt.tokens {
			r.Header.Add("Authorization", "Bearer "+tok)
		}
		tt.h.ServeHTTP(httptest.NewRecorder(), r)
	}
	for _, tt := range tests {
		if got, _ := metricstest.Lookup(t, reg, "meridian_dataplane_jwt_requests_total", "provider", "corp", "reason", tt.reason); got != 1 {
			t.Errorf("reason %s counted %v times, want 1", tt.reason, got)
		}
	}
}
