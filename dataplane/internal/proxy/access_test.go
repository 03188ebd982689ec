package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt/jwttest"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

const accessSecret = "proxy-access-log-secret-32-bytes"

// lines is an access log output safe for the handlers and the test.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// parse returns every line, raw and decoded.
func (l *lines) parse(t *testing.T) (raw []string, decoded []map[string]any) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimSuffix(l.buf.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("access log line is not JSON: %q: %v", line, err)
		}
		raw, decoded = append(raw, line), append(decoded, m)
	}
	return raw, decoded
}

func signHS256(t *testing.T, sub string) string {
	t.Helper()
	return jwttest.HS256(t, accessSecret, josejwt.Claims{Subject: sub, Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))})
}

func jwtProviderSpec() *meridianv1.JWTProviderSpec {
	return &meridianv1.JWTProviderSpec{
		Algorithms: []string{"HS256"}, Keys: []*meridianv1.JWTKey{{Kid: "k1", SecretEnv: "PROXY_ACCESS_SECRET"}},
		TokenFrom: []string{"header:Authorization", "query:access_token"}, ConsumerClaim: "sub",
	}
}

// accessGateway serves, with metrics and an access log to out: /api/users
// (an echo upstream), /down (nothing listening), /secure (JWT, then a
// local limit of one request per hour per consumer).
func accessGateway(t *testing.T, out io.Writer, sample float64) (front *httptest.Server, usersAddr, downAddr string) {
	t.Helper()
	t.Setenv("PROXY_ACCESS_SECRET", accessSecret)
	users := echo(t, "users")
	usersAddr, downAddr = addr(users), deadAddr(t)
	m := metrics.New(prometheus.NewRegistry())
	g := gateway.New(gateway.Options{Logger: discard(), Metrics: m})
	t.Cleanup(g.Close)
	secure := &meridianv1.RouteSpec{
		Upstream: "users", Match: match(prefix("/secure")),
		Auth: &meridianv1.RouteAuth{Jwt: "sso"}, RateLimits: []string{"per-consumer"},
	}
	apply(t, g, 1,
		upstreamRes("users", usersAddr),
		upstreamRes("down", downAddr),
		&meridianv1.Resource{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: &meridianv1.JWTProvider{
			Metadata: &meridianv1.Metadata{Name: "sso"}, Spec: jwtProviderSpec(),
		}}},
		&meridianv1.Resource{Kind: &meridianv1.Resource_RateLimit{RateLimit: &meridianv1.RateLimit{
			Metadata: &meridianv1.Metadata{Name: "per-consumer"},
			Spec: &meridianv1.RateLimitSpec{
				Scope: meridianv1.RateLimitScope_RATE_LIMIT_SCOPE_LOCAL, Algorithm: meridianv1.RateLimitAlgorithm_RATE_LIMIT_ALGORITHM_TOKEN_BUCKET,
				Limit: 1, Period: durationpb.New(time.Hour), Key: []string{"consumer"},
			},
		}}},
		routeRes("users", &meridianv1.RouteSpec{Upstream: "users", Match: match(prefix("/api/users"))}),
		routeRes("down", &meridianv1.RouteSpec{Upstream: "down", Match: match(prefix("/down"))}),
		routeRes("secure", secure),
	)
	h := g.Handler(proxy.HandlerConfig{Metrics: m, AccessLog: accesslog.New(out, sample)})
	return httptestServer(t, h), usersAddr, downAddr
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestAccessLog(t *testing.T) {
	var out lines
	front, usersAddr, downAddr := accessGateway(t, &out, 1)
	alice := signHS256(t, "alice")

	type request struct {
		name   string
		method string
		target string // path and query
		header map[string]string
		body   string
		status int
		want   map[string]any // fields compared as JSON decodes them
		absent []string
	}
	reqs := []request{
		{
			name: "200 proxied", method: "GET", target: "/api/users/1/../2?access_token=QUERYSECRET&page=1",
			header: map[string]string{"X-Request-Id": "req-200", "User-Agent": "client/1.0"},
			status: 200,
			want: map[string]any{
				"msg": "access", "level": "INFO", "request_id": "req-200", "trace_id": "", "client_ip": "127.0.0.1",
				"method": "GET", "path": "/api/users/2", "protocol": "HTTP/1.1", "user_agent": "client/1.0",
				"route": "users", "upstream": "users", "consumer": "", "status": 200.0, "bytes_in": 0.0,
				"attempts": 1.0, "upstream_target": usersAddr,
			},
			absent: []string{"error"},
		},
		{
			// A query ReverseProxy would re-encode takes its path rather
			// than the lean one.
			name: "200 through ReverseProxy", method: "GET", target: "/api/users/rp?x=QUERYSECRET;y=2",
			header: map[string]string{"X-Request-Id": "req-rp"},
			status: 200,
			want: map[string]any{
				"path": "/api/users/rp", "route": "users", "status": 200.0, "attempts": 1.0, "upstream_target": usersAddr,
			},
			absent: []string{"error"},
		},
		{
			name: "request body counted", method: "POST", target: "/api/users", body: "hello",
			header: map[string]string{"X-Request-Id": "req-post"},
			status: 200,
			want:   map[string]any{"method": "POST", "bytes_in": 5.0, "status": 200.0, "route": "users"},
		},
		{
			name: "404 no route", method: "GET", target: "/nowhere?token=QUERYSECRET",
			status: 404,
			want: map[string]any{
				"route": "", "upstream": "", "status": 404.0, "error": "no_route", "path": "/nowhere",
				"attempts": 0.0, "bytes_out": float64(len(`{"error":"no route"}` + "\n")),
			},
			absent: []string{"upstream_target", "upstream_duration_us"},
		},
		{
			name: "502 dead upstream", method: "GET", target: "/down/x",
			header: map[string]string{"X-Request-Id": "req-502"},
			status: 502,
			want: map[string]any{
				"route": "down", "upstream": "down", "status": 502.0, "error": "connect_failure",
				"attempts": 1.0, "upstream_target": downAddr,
			},
		},
		{
			name: "200 authenticated", method: "GET", target: "/secure/a",
			header: map[string]string{"X-Request-Id": "req-jwt", "Authorization": "Bearer " + alice},
			status: 200,
			want:   map[string]any{"route": "secure", "consumer": "alice", "status": 200.0, "attempts": 1.0},
		},
		{
			// The consumer of a rate limited request is logged once the
			// gateway notes it after authentication (proxy.Authenticated).
			name: "429 rate limited", method: "GET", target: "/secure/b",
			header: map[string]string{"X-Request-Id": "req-429", "Authorization": "Bearer " + alice},
			status: 429,
			want:   map[string]any{"route": "secure", "upstream": "users", "status": 429.0, "attempts": 0.0, "consumer": "alice"},
			absent: []string{"upstream_target", "upstream_duration_us"},
		},
		{
			name: "401 token in the query", method: "GET", target: "/secure/c?access_token=QUERYSECRET",
			header: map[string]string{"X-Request-Id": "req-401"},
			status: 401,
			want:   map[string]any{"route": "secure", "consumer": "", "status": 401.0, "path": "/secure/c"},
		},
	}
	ids := map[string]request{}
	for _, rq := range reqs {
		req, err := http.NewRequest(rq.method, front.URL+rq.target, strings.NewReader(rq.body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range rq.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", rq.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != rq.status {
			t.Fatalf("%s: status %d, want %d (%s)", rq.name, resp.StatusCode, rq.status, body)
		}
		if rq.want["bytes_out"] == nil {
			rq.want["bytes_out"] = float64(len(body))
		}
		// Lines are matched to requests by id: a handler may finish
		// logging after the client has its response.
		ids[resp.Header.Get("X-Request-Id")] = rq
	}
	front.Close() // waits for the handlers, so every line is written
	http.DefaultClient.CloseIdleConnections()

	raw, decoded := out.parse(t)
	if len(decoded) != len(reqs) {
		t.Fatalf("%d lines for %d requests:\n%s", len(decoded), len(reqs), strings.Join(raw, "\n"))
	}
	for i, line := range decoded {
		id, _ := line["request_id"].(string)
		rq, ok := ids[id]
		if !ok {
			t.Errorf("line with unknown request_id: %s", raw[i])
			continue
		}
		delete(ids, id)
		for k, v := range rq.want {
			if line[k] != v {
				t.Errorf("%s: %s = %#v, want %#v", rq.name, k, line[k], v)
			}
		}
		for _, k := range rq.absent {
			if _, ok := line[k]; ok {
				t.Errorf("%s: %s present: %v", rq.name, k, line[k])
			}
		}
		if rq.header["X-Request-Id"] == "" && !hexID.MatchString(id) {
			t.Errorf("%s: generated request_id %q", rq.name, id)
		}
		// Every line has these, whatever answered.
		for _, k := range []string{"time", "duration_us", "client_ip", "host", "user_agent", "bytes_in", "bytes_out"} {
			if _, ok := line[k]; !ok {
				t.Errorf("%s: %s missing", rq.name, k)
			}
		}
		if d, _ := line["duration_us"].(float64); d < 0 {
			t.Errorf("%s: duration_us = %v", rq.name, d)
		}
		if a, _ := line["attempts"].(float64); a > 0 {
			if d, ok := line["upstream_duration_us"].(float64); !ok || d < 0 {
				t.Errorf("%s: upstream_duration_us = %v", rq.name, line["upstream_duration_us"])
			}
		}
		// Secrets: neither the query string nor credentials.
		for _, secret := range []string{"QUERYSECRET", "access_token", "page=1", "?", alice, "Bearer", "Authorization"} {
			if strings.Contains(raw[i], secret) {
				t.Errorf("%s: line contains %q: %s", rq.name, secret, raw[i])
			}
		}
	}
}

func TestAccessLogSampling(t *testing.T) {
	var out lines
	front, _, _ := accessGateway(t, &out, 0)
	for _, path := range []string{"/api/users/1", "/nowhere", "/api/users/2", "/down/x", "/api/users/3"} {
		resp, err := http.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	front.Close()
	http.DefaultClient.CloseIdleConnections()

	raw, decoded := out.parse(t)
	var got []string
	for _, line := range decoded {
		got = append(got, line["path"].(string))
	}
	// Line order follows request order only loosely; compare as a set.
	if len(got) != 2 || !(got[0] == "/nowhere" && got[1] == "/down/x" || got[0] == "/down/x" && got[1] == "/nowhere") {
		t.Errorf("sample 0 logged %v, want the two failures only:\n%s", got, strings.Join(raw, "\n"))
	}
}

// oneRoute routes every request to one entry.
type oneRoute struct{ e *proxy.Entry }

func (o oneRoute) Route(*http.Request) *proxy.Entry { return o.e }
func (o oneRoute) Allow(*http.Request) string       { return "" }

// TestAccessLogAuthenticated: middleware after authentication that
// answers itself (a rate limit) gets the consumer logged by calling
// proxy.Authenticated; an unsampled trace's id is logged too.
func TestAccessLogAuthenticated(t *testing.T) {
	t.Setenv("PROXY_ACCESS_SECRET", accessSecret)
	pool, err := upstream.New("users", &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: deadAddr(t)}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rt, err := proxy.NewRoute(proxy.RouteConfig{Name: "r", Spec: &meridianv1.RouteSpec{Upstream: "users"}, Pool: pool, Buffers: proxy.NewBufferPool(), Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := jwt.NewProvider(context.Background(), "sso", jwtProviderSpec(), jwt.Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	limited := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxy.Authenticated(w, r)
		w.WriteHeader(http.StatusTooManyRequests)
	})
	chain, err := jwt.New(p, &meridianv1.RouteAuth{Jwt: "sso"}, limited)
	if err != nil {
		t.Fatal(err)
	}
	var out lines
	h := proxy.NewHandler(func() proxy.Routes { return oneRoute{proxy.NewEntry(rt, chain)} }, proxy.HandlerConfig{
		AccessLog:      accesslog.New(&out, 1),
		TracerProvider: tracing.New(sdktrace.ParentBased(sdktrace.AlwaysSample())),
	})
	req := httptest.NewRequest("GET", "http://gw.test/x", nil)
	req.Header.Set("Authorization", "Bearer "+signHS256(t, "bob"))
	// An unsampled trace: the line still carries its id.
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d", rec.Code)
	}
	_, decoded := out.parse(t)
	if len(decoded) != 1 {
		t.Fatalf("%d lines", len(decoded))
	}
	line := decoded[0]
	if line["consumer"] != "bob" || line["status"] != 429.0 || line["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736" || line["attempts"] != 0.0 {
		t.Errorf("line = %v", line)
	}
}
