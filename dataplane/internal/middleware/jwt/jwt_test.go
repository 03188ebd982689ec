package jwt

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"

	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
)

// *Claims is what the upstream package's consistent hashing reads.
var _ upstream.Claims = (*Claims)(nil)

// seen is what the handler behind the middleware received.
type seen struct {
	called   bool
	header   http.Header
	query    string
	consumer string
	hasCons  bool
	claims   *Claims
}

func recordNext(s *seen) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.called = true
		s.header = r.Header.Clone()
		s.query = r.URL.RawQuery
		s.consumer, s.hasCons = ConsumerFrom(r.Context())
		s.claims, _ = ClaimsFrom(r.Context())
		w.WriteHeader(http.StatusNoContent)
	})
}

func TestMiddleware(t *testing.T) {
	clock := newClock()
	spec := testSpec(t)
	spec.TokenFrom = []string{"header:Authorization", "query:access_token", "cookie:jwt"}
	p := newTestProvider(t, spec, testOptions(clock))
	tok := mintStd(t, "ES256", validClaims(clock.Now()))
	noSub := validClaims(clock.Now())
	delete(noSub, "sub")
	tokNoSub := mintStd(t, "ES256", noSub)
	expired := validClaims(clock.Now())
	expired["exp"] = clock.Now().Add(-time.Hour).Unix()
	tokExpired := mintStd(t, "ES256", expired)

	type want struct {
		status    int
		challenge string            // WWW-Authenticate
		header    map[string]string // upstream headers; "" = absent
		query     string
		consumer  string
	}
	tests := []struct {
		name  string
		auth  *meridianv1.RouteAuth
		build func(r *http.Request)
		url   string
		want  want
	}{
		{
			name:  "bearer header",
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 204, header: map[string]string{"Authorization": "", "X-User-Id": "user-42", "X-Tenant": "acme"}, consumer: "user-42"},
		},
		{
			name:  "bearer scheme is case-insensitive",
			build: func(r *http.Request) { r.Header.Set("Authorization", "bearer  "+tok) },
			want:  want{status: 204, consumer: "user-42"},
		},
		{
			name: "query parameter, removed, the rest kept in order",
			url:  "/x?b=2&access_token=" + tok + "&a=1&a=%20x",
			want: want{status: 204, query: "b=2&a=1&a=%20x", consumer: "user-42"},
		},
		{
			name: "cookie, removed, other cookies kept",
			build: func(r *http.Request) {
				r.Header.Add("Cookie", "session=abc; jwt="+tok+"; theme=dark")
			},
			want: want{status: 204, header: map[string]string{"Cookie": "session=abc; theme=dark"}, consumer: "user-42"},
		},
		{
			name:  "only cookie removed entirely",
			build: func(r *http.Request) { r.Header.Add("Cookie", "jwt="+tok) },
			want:  want{status: 204, header: map[string]string{"Cookie": ""}},
		},
		{
			name: "header first, every source stripped",
			url:  "/x?access_token=other&q=1",
			build: func(r *http.Request) {
				r.Header.Set("Authorization", "Bearer "+tok)
				r.Header.Add("Cookie", "jwt=garbage; a=b")
			},
			want: want{status: 204, query: "q=1", header: map[string]string{"Authorization": "", "Cookie": "a=b"}},
		},
		{
			name: "basic auth is no bearer token: the query token counts",
			url:  "/x?access_token=" + tok,
			build: func(r *http.Request) {
				r.SetBasicAuth("u", "p")
			},
			want: want{status: 204, query: "", header: map[string]string{"Authorization": ""}},
		},
		{
			name: "forwardToken keeps the source used, strips the others",
			auth: &meridianv1.RouteAuth{Jwt: "corp", ForwardToken: true},
			url:  "/x?access_token=other",
			build: func(r *http.Request) {
				r.Header.Set("Authorization", "Bearer "+tok)
			},
			want: want{status: 204, query: "", header: map[string]string{"Authorization": "Bearer " + tok}},
		},
		{
			name: "forged forwardClaims headers replaced",
			build: func(r *http.Request) {
				r.Header.Set("Authorization", "Bearer "+tok)
				r.Header.Set("X-User-ID", "admin")
				r.Header.Add("x-tenant", "evil")
			},
			want: want{status: 204, header: map[string]string{"X-User-Id": "user-42", "X-Tenant": "acme"}},
		},
		{
			name: "forged header stripped when the claim is absent",
			build: func(r *http.Request) {
				r.Header.Set("Authorization", "Bearer "+tokNoSub)
				r.Header.Set("X-User-ID", "admin")
			},
			want: want{status: 204, header: map[string]string{"X-User-Id": "", "X-Tenant": "acme"}},
		},
		{
			name: "missing token",
			want: want{status: 401, challenge: `Bearer realm="corp"`},
		},
		{
			name:  "empty bearer",
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") },
			want:  want{status: 401, challenge: `Bearer realm="corp", error="invalid_token", error_description="malformed token"`},
		},
		{
			name:  "expired",
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tokExpired) },
			want:  want{status: 401, challenge: `Bearer realm="corp", error="invalid_token", error_description="token expired"`},
		},
		{
			name:  "garbage",
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok[:len(tok)-4]+"AAAA") },
			want:  want{status: 401, challenge: `Bearer realm="corp", error="invalid_token", error_description="invalid signature"`},
		},
		{
			name:  "1 MiB token",
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+strings.Repeat("x", 1<<20)) },
			want:  want{status: 401, challenge: `Bearer realm="corp", error="invalid_token", error_description="token longer than 8192 bytes"`},
		},
		{
			name: "two Authorization headers",
			build: func(r *http.Request) {
				r.Header.Add("Authorization", "Bearer "+tok)
				r.Header.Add("Authorization", "Bearer "+tokNoSub)
			},
			want: want{status: 400, challenge: `Bearer realm="corp", error="invalid_request", error_description="token given more than once"`},
		},
		{
			name: "query parameter twice",
			url:  "/x?access_token=" + tok + "&access%5Ftoken=" + tokNoSub,
			want: want{status: 400, challenge: `Bearer realm="corp", error="invalid_request", error_description="token given more than once"`},
		},
		{
			name: "required claim values met",
			auth: &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{
				{Claim: "tenant", Values: []string{"globex", "acme"}},
				{Claim: "scope", Contains: []string{"write", "read"}},
				{Claim: "roles", Contains: []string{"admin"}},
			}},
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 204},
		},
		{
			name:  "required value not met",
			auth:  &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "tenant", Values: []string{"globex"}}}},
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 403, challenge: `Bearer realm="corp", error="insufficient_scope", error_description="token lacks required claim tenant"`},
		},
		{
			name:  "scope not contained",
			auth:  &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "scope", Contains: []string{"read", "admin"}}}},
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 403, challenge: `Bearer realm="corp", error="insufficient_scope", error_description="token lacks required claim scope"`},
		},
		{
			name:  "role not in array",
			auth:  &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "roles", Contains: []string{"root"}}}},
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 403, challenge: `Bearer realm="corp", error="insufficient_scope", error_description="token lacks required claim roles"`},
		},
		{
			name:  "required claim absent",
			auth:  &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "groups", Contains: []string{"x"}}}},
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 403, challenge: `Bearer realm="corp", error="insufficient_scope", error_description="token lacks required claim groups"`},
		},
		{
			name:  "array claim never equals a value",
			auth:  &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "roles", Values: []string{"admin"}}}},
			build: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) },
			want:  want{status: 403, challenge: `Bearer realm="corp", error="insufficient_scope", error_description="token lacks required claim roles"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auth := tc.auth
			if auth == nil {
				auth = &meridianv1.RouteAuth{Jwt: "corp"}
			}
			var s seen
			h, err := New(p, auth, recordNext(&s))
			if err != nil {
				t.Fatal(err)
			}
			url := tc.url
			if url == "" {
				url = "/x"
			}
			r := httptest.NewRequest(http.MethodGet, url, nil)
			if tc.build != nil {
				tc.build(r)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)

			if rec.Code != tc.want.status {
				t.Fatalf("status = %d, want %d (%s)", rec.Code, tc.want.status, rec.Header().Get("WWW-Authenticate"))
			}
			if tc.want.status != http.StatusNoContent {
				if s.called {
					t.Error("rejected request reached the upstream")
				}
				if got := rec.Header().Get("WWW-Authenticate"); got != tc.want.challenge {
					t.Errorf("WWW-Authenticate = %s, want %s", got, tc.want.challenge)
				}
				var body map[string]string
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] == "" {
					t.Errorf("body %q: %v", rec.Body, err)
				}
				if rec.Body.Len() > 200 {
					t.Errorf("body is %d bytes", rec.Body.Len())
				}
				for _, secret := range []string{tok, tokNoSub, tokExpired, string(keys(t).secret), "user-42"} {
					if strings.Contains(rec.Body.String(), secret) || strings.Contains(rec.Header().Get("WWW-Authenticate"), secret) {
						t.Errorf("answer echoes a token, secret or claim value")
					}
				}
				return
			}
			if !s.called {
				t.Fatal("upstream not called")
			}
			for name, want := range tc.want.header {
				if got := strings.Join(s.header.Values(name), ","); got != want {
					t.Errorf("upstream %s = %q, want %q", name, got, want)
				}
			}
			if tc.url != "" && s.query != tc.want.query {
				t.Errorf("upstream query = %q, want %q", s.query, tc.want.query)
			}
			if tc.want.consumer != "" && (s.consumer != tc.want.consumer || !s.hasCons) {
				t.Errorf("consumer = %q, %v; want %q", s.consumer, s.hasCons, tc.want.consumer)
			}
			if s.claims == nil {
				t.Error("no claims in the context")
			}
		})
	}
}

func TestClaimsConversions(t *testing.T) {
	clock := newClock()
	p := newTestProvider(t, testSpec(t), testOptions(clock))
	c := validClaims(clock.Now())
	c["big"] = json.Number("12345678901234567890")
	c["admin"] = true
	c["nothing"] = nil
	c["obj"] = map[string]any{"a": 1}
	id, err := p.verify(t.Context(), mintStd(t, "ES256", c))
	if err != nil {
		t.Fatal(err)
	}
	var claims upstream.Claims = id.claims
	for _, tc := range []struct {
		name string
		want string
		ok   bool
	}{
		{"sub", "user-42", true},
		{"big", "12345678901234567890", true},
		{"admin", "true", true},
		{"roles", `["admin","dev"]`, true},
		{"obj", `{"a":1}`, true},
		{"nothing", "", false},
		{"absent", "", false},
	} {
		got, ok := claims.Claim(tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Claim(%q) = %q, %v; want %q, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestContextWithoutIdentity(t *testing.T) {
	if c, ok := ConsumerFrom(t.Context()); ok || c != "" {
		t.Errorf("ConsumerFrom = %q, %v", c, ok)
	}
	if c, ok := ClaimsFrom(t.Context()); ok || c != nil {
		t.Errorf("ClaimsFrom = %v, %v", c, ok)
	}
	var nilClaims *Claims
	if _, ok := nilClaims.Claim("sub"); ok {
		t.Error("nil Claims has a claim")
	}
}

func TestNewErrors(t *testing.T) {
	clock := newClock()
	p := newTestProvider(t, testSpec(t), testOptions(clock))
	next := http.NotFoundHandler()
	tests := []struct {
		name string
		p    *Provider
		auth *meridianv1.RouteAuth
		next http.Handler
	}{
		{"nil provider", nil, &meridianv1.RouteAuth{Jwt: "corp"}, next},
		{"nil auth", p, nil, next},
		{"nil next", p, &meridianv1.RouteAuth{Jwt: "corp"}, nil},
		{"other provider", p, &meridianv1.RouteAuth{Jwt: "other"}, next},
		{"requirement without claim", p, &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Values: []string{"a"}}}}, next},
		{"requirement with both", p, &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "a", Values: []string{"a"}, Contains: []string{"b"}}}}, next},
		{"requirement with neither", p, &meridianv1.RouteAuth{Jwt: "corp", RequireClaims: []*meridianv1.ClaimRequirement{{Claim: "a"}}}, next},
	}
	for _, tc := range tests {
		if _, err := New(tc.p, tc.auth, tc.next); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
}
