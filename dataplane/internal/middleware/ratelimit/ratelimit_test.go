package ratelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt/jwttest"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/local"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testSecret = "ratelimit-test-secret-of-32-byte"

// recorder is a Limiter that allows everything and records the keys.
type recorder struct{ keys []string }

func (r *recorder) Allow(_ context.Context, key string, _ time.Time) local.Decision {
	r.keys = append(r.keys, key)
	return local.Decision{Allowed: true, Limit: 10, Remaining: 9}
}

// token mints an HS256 token with go-jose, not the library that verifies it.
func token(t *testing.T, claims map[string]any) string {
	t.Helper()
	claims["exp"] = time.Now().Add(time.Hour).Unix()
	return jwttest.HS256(t, testSecret, claims)
}

// withAuth puts the real JWT middleware in front of h, so consumer and
// claim parts read what it verified. Requests without a token go around
// it, as on a route without auth.
func withAuth(t *testing.T, h http.Handler) http.Handler {
	t.Helper()
	t.Setenv("RL_TEST_SECRET", testSecret)
	p, err := jwt.NewProvider(context.Background(), "sso", &meridianv1.JWTProviderSpec{
		Algorithms: []string{"HS256"}, ConsumerClaim: "sub",
		Keys: []*meridianv1.JWTKey{{Kid: "k1", SecretEnv: "RL_TEST_SECRET"}},
	}, jwt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	auth, err := jwt.New(p, &meridianv1.RouteAuth{Jwt: "sso"}, h)
	if err != nil {
		t.Fatal(err)
	}
	return auth
}

func TestKeys(t *testing.T) {
	tests := []struct {
		name    string
		key     []string
		remote  string
		headers map[string]string
		claims  map[string]any // nil: no token
		want    string
	}{
		{"client ip v4", []string{"client_ip"}, "192.0.2.1:1234", nil, nil, "192.0.2.1"},
		{"client ip v6", []string{"client_ip"}, "[2001:db8::1]:1234", nil, nil, "2001:db8::1"},
		{"client ip ignores forwarded from untrusted peer", []string{"client_ip"}, "192.0.2.1:1", map[string]string{"X-Forwarded-For": "203.0.113.9"}, nil, "192.0.2.1"},
		{"client ip behind trusted proxy", []string{"client_ip"}, "10.0.0.5:1", map[string]string{"X-Forwarded-For": "203.0.113.9, 10.0.0.7"}, nil, "203.0.113.9"},
		{"route", []string{"route"}, "192.0.2.1:1", nil, nil, "users"},
		{"header", []string{"header:x-api-key"}, "192.0.2.1:1", map[string]string{"X-Api-Key": "k-1"}, nil, "k-1"},
		{"header missing", []string{"header:x-api-key"}, "192.0.2.1:1", nil, nil, ""},
		{"header empty is missing", []string{"header:x-api-key"}, "192.0.2.1:1", map[string]string{"X-Api-Key": ""}, nil, ""},
		{"consumer", []string{"consumer"}, "192.0.2.1:1", nil, map[string]any{"sub": "alice"}, "alice"},
		{"consumer without token", []string{"consumer"}, "192.0.2.1:1", nil, nil, ""},
		{"claim", []string{"claim:tenant"}, "192.0.2.1:1", nil, map[string]any{"sub": "a", "tenant": "acme"}, "acme"},
		{"claim number", []string{"claim:tier"}, "192.0.2.1:1", nil, map[string]any{"sub": "a", "tier": 3}, "3"},
		{"claim missing", []string{"claim:tenant"}, "192.0.2.1:1", nil, map[string]any{"sub": "a"}, ""},
		{"composite", []string{"consumer", "header:x-api-key"}, "192.0.2.1:1", map[string]string{"X-Api-Key": "k"}, map[string]any{"sub": "bob"},
			"\x01\x03bob\x01\x01k"},
		{"composite with missing part", []string{"consumer", "route"}, "192.0.2.1:1", nil, nil, "\x00\x01\x05users"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.key, "users", clientip.New([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}))
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{}
			next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
			var h http.Handler = New([]Limit{{Name: "l", Key: k, Limiter: rec, Period: time.Second}}, Options{}, next)
			if tt.claims != nil {
				h = withAuth(t, h)
			}
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = tt.remote
			for n, v := range tt.headers {
				req.Header.Set(n, v)
			}
			if tt.claims != nil {
				req.Header.Set("Authorization", "Bearer "+token(t, tt.claims))
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if len(rec.keys) != 1 || rec.keys[0] != tt.want {
				t.Errorf("keys %q, want [%q]", rec.keys, tt.want)
			}
		})
	}
}

// TestCompositeKeysDoNotCollide: values that would collide under a naive
// separator join, or a missing part against a present one, get distinct keys.
func TestCompositeKeysDoNotCollide(t *testing.T) {
	k, err := ParseKey([]string{"header:a", "header:b"}, "r", nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	h := New([]Limit{{Name: "l", Key: k, Limiter: rec}}, Options{}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for _, hs := range []map[string]string{
		{"A": "x\x00", "B": "y"}, {"A": "x", "B": "\x00y"}, {"A": "x"}, {"B": "x"}, {}, {"A": "missing"},
	} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		for n, v := range hs {
			req.Header[n] = []string{v}
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	seen := map[string]bool{}
	for _, key := range rec.keys {
		if seen[key] {
			t.Errorf("key %q produced twice", key)
		}
		seen[key] = true
	}
}

func TestParseKeyErrors(t *testing.T) {
	for _, spec := range [][]string{nil, {"ip"}, {"header:"}, {"query:x"}, {"client_ip", "nope"}} {
		if _, err := ParseKey(spec, "r", nil); err == nil {
			t.Errorf("ParseKey(%q) succeeded", spec)
		}
	}
}

// storeLimiter adapts a *local.Store, which needs no context, to Limiter.
type storeLimiter struct{ s *local.Store }

func (l storeLimiter) Allow(_ context.Context, key string, now time.Time) local.Decision {
	return l.s.Allow(key, now)
}

func store(t *testing.T, limit uint64, period time.Duration) storeLimiter {
	t.Helper()
	s, err := local.New(&meridianv1.RateLimitSpec{
		Algorithm: meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_FIXED_WINDOW,
		Limit:     limit, Period: durationpb.New(period),
	}, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return storeLimiter{s}
}

func TestAnswers(t *testing.T) {
	routeKey, err := ParseKey([]string{"route"}, "r", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Fixed windows align to the epoch; 0.5s into a minute, resets round up.
	now := time.Unix(60*16_667, int64(500*time.Millisecond))
	type want struct {
		status            int
		policy, ratelimit string
		retryAfter, body  string
	}
	tests := []struct {
		name   string
		limits func(t *testing.T) []Limit
		want   []want // one per request, in order
	}{
		{
			name: "enforced",
			limits: func(t *testing.T) []Limit {
				return []Limit{{Name: "per-route", Key: routeKey, Limiter: store(t, 2, time.Second), Period: time.Second}}
			},
			want: []want{
				{200, `"per-route";q=2;w=1`, `"per-route";r=1;t=1`, "", ""},
				{200, `"per-route";q=2;w=1`, `"per-route";r=0;t=1`, "", ""},
				{429, `"per-route";q=2;w=1`, `"per-route";r=0;t=1`, "1", `{"error":"rate limited","limit":"per-route"}` + "\n"},
			},
		},
		{
			name: "shadow never rejects",
			limits: func(t *testing.T) []Limit {
				return []Limit{{Name: "trial", Key: routeKey, Limiter: store(t, 1, time.Minute), Period: time.Minute, Shadow: true}}
			},
			want: []want{
				{200, `"trial";q=1;w=60`, `"trial";r=0;t=60`, "", ""},
				{200, `"trial";q=1;w=60`, `"trial";r=0;t=60`, "", ""},
			},
		},
		{
			name: "most restrictive limit is reported",
			limits: func(t *testing.T) []Limit {
				return []Limit{
					{Name: "loose", Key: routeKey, Limiter: store(t, 100, time.Second), Period: time.Second},
					{Name: "tight", Key: routeKey, Limiter: store(t, 3, time.Minute), Period: time.Minute},
				}
			},
			want: []want{
				{200, `"tight";q=3;w=60`, `"tight";r=2;t=60`, "", ""},
			},
		},
		{
			name: "first exceeded limit answers",
			limits: func(t *testing.T) []Limit {
				return []Limit{
					{Name: "first", Key: routeKey, Limiter: store(t, 1, time.Second), Period: time.Second},
					{Name: "second", Key: routeKey, Limiter: store(t, 1, time.Second), Period: time.Second},
				}
			},
			want: []want{
				{200, `"first";q=1;w=1`, `"first";r=0;t=1`, "", ""},
				{429, `"first";q=1;w=1`, `"first";r=0;t=1`, "1", `{"error":"rate limited","limit":"first"}` + "\n"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls++ })
			h := New(tt.limits(t), Options{Now: func() time.Time { return now }}, next)
			wantCalls := 0
			for i, w := range tt.want {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
				if w.status == http.StatusOK {
					wantCalls++
				}
				got := want{rec.Code, rec.Header().Get("RateLimit-Policy"), rec.Header().Get("RateLimit"),
					rec.Header().Get("Retry-After"), ""}
				if rec.Code != http.StatusOK {
					got.body = rec.Body.String()
				}
				if got != w {
					t.Errorf("request %d: got %+v, want %+v", i, got, w)
				}
			}
			if calls != wantCalls {
				t.Errorf("next called %d times, want %d", calls, wantCalls)
			}
		})
	}
}

// TestRejectionSparesLaterLimits: a request rejected by one limit does not
// spend the quota of the limits after it.
func TestRejectionSparesLaterLimits(t *testing.T) {
	k, _ := ParseKey([]string{"route"}, "r", nil)
	rec := &recorder{}
	h := New([]Limit{
		{Name: "a", Key: k, Limiter: store(t, 1, time.Hour), Period: time.Hour},
		{Name: "b", Key: k, Limiter: rec, Period: time.Hour},
	}, Options{}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for range 3 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	}
	if len(rec.keys) != 1 {
		t.Errorf("second limit consulted %d times, want 1", len(rec.keys))
	}
}

// waiter is a Limiter in queue mode: it admits every request with a
// fixed Wait.
type waiter struct{ wait time.Duration }

func (q waiter) Allow(context.Context, string, time.Time) local.Decision {
	return local.Decision{Allowed: true, Limit: 1, Wait: q.wait}
}

// TestQueueWaits: a request admitted with a Wait reaches the next handler
// only after the longest Wait of its enforcing limits; a shadow limit's
// Wait is ignored; a client that leaves while waiting never reaches it.
func TestQueueWaits(t *testing.T) {
	k, _ := ParseKey([]string{"route"}, "r", nil)
	const wait = 30 * time.Millisecond
	tests := []struct {
		name     string
		limits   []Limit
		cancel   bool
		minDelay time.Duration
		reached  bool
	}{
		{"longest wait of two limits", []Limit{
			{Name: "a", Key: k, Limiter: waiter{wait / 2}, Period: time.Second},
			{Name: "b", Key: k, Limiter: waiter{wait}, Period: time.Second},
		}, false, wait, true},
		{"shadow limits do not delay", []Limit{
			{Name: "a", Key: k, Limiter: waiter{time.Hour}, Period: time.Second, Shadow: true},
		}, false, 0, true},
		{"client gone while waiting", []Limit{
			{Name: "a", Key: k, Limiter: waiter{time.Hour}, Period: time.Second},
		}, true, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var reached bool
			h := New(tt.limits, Options{}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached = true }))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(10*time.Millisecond, cancel)
			}
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
			start := time.Now()
			h.ServeHTTP(httptest.NewRecorder(), req)
			if reached != tt.reached {
				t.Errorf("next handler reached = %v, want %v", reached, tt.reached)
			}
			// A lower bound only: sleeping less than the reserved turn
			// would break the pacing; sleeping longer is the scheduler's.
			if d := time.Since(start); d < tt.minDelay {
				t.Errorf("request went on after %s, before its turn at %s", d, tt.minDelay)
			}
		})
	}
}

// TestDecisionMetrics: each decision is recorded under its limit with
// what it did to the request.
func TestDecisionMetrics(t *testing.T) {
	k, _ := ParseKey([]string{"route"}, "r", nil)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	h := New([]Limit{
		{Name: "shadow", Key: k, Limiter: store(t, 1, time.Hour), Period: time.Hour, Shadow: true, Metrics: m.RateLimit("shadow")},
		{Name: "queue", Key: k, Limiter: waiter{time.Millisecond}, Period: time.Second, Metrics: m.RateLimit("queue")},
		{Name: "enforced", Key: k, Limiter: store(t, 2, time.Hour), Period: time.Hour, Metrics: m.RateLimit("enforced")},
	}, Options{}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for range 3 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	}
	for _, tt := range []struct {
		limit, outcome string
		want           float64
	}{
		{"shadow", "allowed", 1},
		{"shadow", "shadow_rejected", 2},
		{"queue", "queued", 3},
		{"enforced", "allowed", 2},
		{"enforced", "rejected", 1},
	} {
		if got := metricstest.Value(t, reg, "meridian_dataplane_ratelimit_decisions_total", "limit", tt.limit, "outcome", tt.outcome); got != tt.want {
			t.Errorf("%s %s = %v, want %v", tt.limit, tt.outcome, got, tt.want)
		}
	}
}

func TestSFString(t *testing.T) {
	for in, want := range map[string]string{"a": `"a"`, `a"b\c`: `"a\"b\\c"`} {
		if got := sfString(in); got != want {
			t.Errorf("sfString(%q) = %s, want %s", in, got, want)
		}
	}
}

func BenchmarkSingleKey(b *testing.B) {
	k, _ := ParseKey([]string{"client_ip"}, "r", nil)
	s, _ := local.New(&meridianv1.RateLimitSpec{Limit: 1 << 30, Period: durationpb.New(time.Second)}, local.Options{})
	h := New([]Limit{{Name: "ip", Key: k, Limiter: storeLimiter{s}, Period: time.Second}}, Options{}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	b.ReportAllocs()
	for b.Loop() {
		_ = h.key(&h.limits[0].Key, req)
	}
}
