package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/server"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seen is what an echo upstream reports about the request it received.
type seen struct {
	Upstream string      `json:"upstream"`
	Path     string      `json:"path"`
	RawPath  string      `json:"rawPath"`
	Query    string      `json:"query"`
	Host     string      `json:"host"`
	Header   http.Header `json:"header"`
}

func echo(t testing.TB, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", name)
		w.Header().Set("X-Internal", "secret-ish")
		json.NewEncoder(w).Encode(seen{Upstream: name, Path: r.URL.Path, RawPath: r.URL.RawPath, Query: r.URL.RawQuery, Host: r.Host, Header: r.Header})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func addr(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

func upstreamRes(name string, addrs ...string) *meridianv1.Resource {
	spec := &meridianv1.UpstreamSpec{}
	for _, a := range addrs {
		spec.Targets = append(spec.Targets, &meridianv1.Target{Address: a})
	}
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: name}, Spec: spec,
	}}}
}

func routeRes(name string, spec *meridianv1.RouteSpec) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
		Metadata: &meridianv1.Metadata{Name: name}, Spec: spec,
	}}}
}

func match(paths ...*meridianv1.PathMatch) *meridianv1.RouteMatch {
	return &meridianv1.RouteMatch{Paths: paths}
}

func prefix(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Prefix{Prefix: p}}
}

func tmpl(p string) *meridianv1.PathMatch {
	return &meridianv1.PathMatch{Kind: &meridianv1.PathMatch_Template{Template: p}}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func apply(t testing.TB, g *gateway.Gateway, version uint64, rs ...*meridianv1.Resource) {
	t.Helper()
	snap := &meridianv1.Snapshot{Version: version, Hash: config.Hash(rs), Resources: rs}
	if err := g.Apply(context.Background(), snap, gateway.SourceControlPlane); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

func TestProxy(t *testing.T) {
	users, orders := echo(t, "users"), echo(t, "orders")
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1,
		upstreamRes("users", addr(users)),
		upstreamRes("orders", addr(orders)),
		upstreamRes("down", deadAddr(t)),
		routeRes("users", &meridianv1.RouteSpec{Upstream: "users", Match: match(prefix("/api/users"))}),
		routeRes("orders", &meridianv1.RouteSpec{
			Upstream: "orders", Match: match(prefix("/api/orders")),
			Rewrite: &meridianv1.Rewrite{StripPrefix: "/api", Prefix: "/v2", Host: "orders.internal"},
			Headers: &meridianv1.HeaderPolicy{
				Request:  &meridianv1.HeaderOps{Set: map[string]string{"X-Gateway": "meridian"}, Add: map[string]string{"X-Added": "1"}, Remove: []string{"Cookie"}},
				Response: &meridianv1.HeaderOps{Set: map[string]string{"X-Served-By": "meridian"}, Remove: []string{"X-Internal"}},
			},
		}),
		routeRes("user-by-id", &meridianv1.RouteSpec{
			Upstream: "users", Match: match(tmpl("/u/{id}")),
			Rewrite: &meridianv1.Rewrite{Path: "/users/{id}/profile"},
		}),
		routeRes("down", &meridianv1.RouteSpec{Upstream: "down", Match: match(prefix("/down"))}),
	)
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()

	tests := []struct {
		name       string
		path       string
		header     http.Header
		wantStatus int
		wantBody   string // for error responses
		check      func(t *testing.T, s seen, resp *http.Response)
	}{
		{name: "routes to users", path: "/api/users/1?x=1", wantStatus: 200, check: func(t *testing.T, s seen, resp *http.Response) {
			if s.Upstream != "users" || s.Path != "/api/users/1" || s.Query != "x=1" {
				t.Errorf("seen %+v", s)
			}
			if resp.Header.Get("X-Internal") == "" {
				t.Error("response header removed on a route without response ops")
			}
		}},
		{name: "strip and add prefix, host, headers", path: "/api/orders/9", header: http.Header{"Cookie": {"a=b"}, "X-Added": {"0"}}, wantStatus: 200,
			check: func(t *testing.T, s seen, resp *http.Response) {
				if s.Upstream != "orders" || s.Path != "/v2/orders/9" {
					t.Errorf("upstream %q path %q", s.Upstream, s.Path)
				}
				if s.Host != "orders.internal" {
					t.Errorf("host = %q", s.Host)
				}
				if s.Header.Get("X-Gateway") != "meridian" || s.Header.Get("Cookie") != "" {
					t.Errorf("request headers %v", s.Header)
				}
				if got := s.Header.Values("X-Added"); len(got) != 2 || got[1] != "1" {
					t.Errorf("X-Added = %v, want [0 1]", got)
				}
				if resp.Header.Get("X-Served-By") != "meridian" || resp.Header.Get("X-Internal") != "" {
					t.Errorf("response headers %v", resp.Header)
				}
			}},
		{name: "forwarded headers", path: "/api/users", header: http.Header{"X-Forwarded-For": {"203.0.113.7"}}, wantStatus: 200,
			check: func(t *testing.T, s seen, _ *http.Response) {
				// No trusted proxies: the client's chain is replaced.
				if got := s.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
					t.Errorf("X-Forwarded-For = %q", got)
				}
				if s.Header.Get("X-Forwarded-Proto") != "http" || s.Header.Get("X-Forwarded-Host") != addr(front) {
					t.Errorf("forwarded headers %v", s.Header)
				}
				if s.Host != addr(front) {
					t.Errorf("client Host not preserved: %q", s.Host)
				}
			}},
		{name: "template rewrite", path: "/u/42", wantStatus: 200, check: func(t *testing.T, s seen, _ *http.Response) {
			if s.Path != "/users/42/profile" {
				t.Errorf("path = %q", s.Path)
			}
		}},
		{name: "dot segments are resolved before routing", path: "/api/users/../orders/1", wantStatus: 200, check: func(t *testing.T, s seen, _ *http.Response) {
			if s.Upstream != "orders" || s.Path != "/v2/orders/1" {
				t.Errorf("seen %+v", s)
			}
		}},
		{name: "encoded dot segments are resolved too", path: "/api/users/%2e%2E/orders/1", wantStatus: 200, check: func(t *testing.T, s seen, _ *http.Response) {
			if s.Upstream != "orders" || s.Path != "/v2/orders/1" {
				t.Errorf("seen %+v", s)
			}
		}},
		{name: "duplicate slashes are merged", path: "//api//users///1", wantStatus: 200, check: func(t *testing.T, s seen, _ *http.Response) {
			if s.Upstream != "users" || s.Path != "/api/users/1" {
				t.Errorf("seen %+v", s)
			}
		}},
		{name: "an encoded slash stays encoded", path: "/api/users/a%2Fb/../c", wantStatus: 200, check: func(t *testing.T, s seen, _ *http.Response) {
			if s.Upstream != "users" || s.Path != "/api/users/c" || s.RawPath != "" {
				t.Errorf("seen %+v", s)
			}
		}},
		{name: "an encoded slash reaches the upstream", path: "/api/users/a%2Fb", wantStatus: 200, check: func(t *testing.T, s seen, _ *http.Response) {
			if s.Path != "/api/users/a/b" || s.RawPath != "/api/users/a%2Fb" {
				t.Errorf("seen %+v", s)
			}
		}},
		{name: "encoded slashes hiding dot segments are rejected", path: "/api/users/..%2F..%2Forders", wantStatus: 400, wantBody: `{"error":"invalid request path"}`},
		{name: "no route", path: "/nothing", wantStatus: 404, wantBody: `{"error":"no route"}`},
		{name: "upstream down", path: "/down", wantStatus: 502, wantBody: `{"error":"upstream connect failure"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", front.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Keep dot segments: the client would otherwise not send them raw.
			req.URL.Opaque = "//" + addr(front) + strings.SplitN(tt.path, "?", 2)[0]
			for k, vs := range tt.header {
				req.Header[k] = vs
			}
			resp, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantBody != "" {
				if strings.TrimSpace(string(body)) != tt.wantBody || resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("body = %s (%s), want %s", body, resp.Header.Get("Content-Type"), tt.wantBody)
				}
				return
			}
			var s seen
			if err := json.Unmarshal(body, &s); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			tt.check(t, s, resp)
		})
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestRoundRobin(t *testing.T) {
	a, b := echo(t, "a"), echo(t, "b")
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, upstreamRes("ab", addr(a), addr(b)), routeRes("r", &meridianv1.RouteSpec{Upstream: "ab", Match: match(prefix("/"))}))
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()

	var got []string
	for range 4 {
		_, body := get(t, front.URL+"/")
		var s seen
		json.Unmarshal([]byte(body), &s)
		got = append(got, s.Upstream)
	}
	if strings.Join(got, "") != "abab" {
		t.Errorf("targets = %v, want alternating a b", got)
	}
}

func TestNoConfig(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: discard()})
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()
	if status, _ := get(t, front.URL+"/"); status != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", status)
	}
}

func TestNoTargets(t *testing.T) {
	// The validator requires targets, so build the route directly.
	pool, err := upstream.New("empty", &meridianv1.UpstreamSpec{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := proxy.NewRoute(proxy.RouteConfig{Name: "r", Spec: &meridianv1.RouteSpec{}, Pool: pool, Buffers: proxy.NewBufferPool(), Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	rt.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "no healthy upstream target") {
		t.Errorf("got %d %s, want 503 no healthy upstream target", rec.Code, rec.Body)
	}
}

func TestRouteTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, upstreamRes("slow", addr(slow)), routeRes("r", &meridianv1.RouteSpec{
		Upstream: "slow", Match: match(prefix("/")), Timeout: durationpb.New(50 * time.Millisecond),
	}))
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()
	if status, body := get(t, front.URL+"/"); status != http.StatusGatewayTimeout {
		t.Errorf("got %d %s, want 504", status, body)
	}
}

func TestSwapWhileInFlight(t *testing.T) {
	arrived := make(chan struct{})
	release := make(chan struct{})
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		w.Write([]byte("old"))
	}))
	defer old.Close()
	fresh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("new"))
	}))
	defer fresh.Close()

	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	route := routeRes("r", &meridianv1.RouteSpec{Upstream: "u", Match: match(prefix("/"))})
	apply(t, g, 1, upstreamRes("u", addr(old)), route)
	front := httptest.NewServer(g.Handler(proxy.HandlerConfig{}))
	defer front.Close()

	var wg sync.WaitGroup
	var slowBody string
	var slowStatus int
	wg.Add(1)
	go func() {
		defer wg.Done()
		slowStatus, slowBody = get(t, front.URL+"/slow")
	}()
	<-arrived
	apply(t, g, 2, upstreamRes("u", addr(fresh)), route)
	if _, body := get(t, front.URL+"/fast"); body != "new" {
		t.Errorf("request after swap got %q, want new", body)
	}
	close(release)
	wg.Wait()
	if slowStatus != 200 || slowBody != "old" {
		t.Errorf("in-flight request got %d %q, want 200 old", slowStatus, slowBody)
	}
}

// discardWriter is a minimal ResponseWriter so the benchmark measures the
// proxy, not a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func benchUpstream(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	b.Cleanup(srv.Close)
	return srv
}

func runProxyBench(b *testing.B, h http.Handler) {
	req := httptest.NewRequest("GET", "http://gw.test/api/users/1", nil)
	// What a typical client sends; the proxy clones these for the upstream.
	req.Header.Set("User-Agent", "bench/1.0")
	req.Header.Set("Accept", "*/*")
	req.Header.Set("Accept-Encoding", "gzip")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		// Clients rarely send an id; the gateway generates one per request.
		delete(req.Header, "X-Request-Id")
		h.ServeHTTP(w, req)
	}
}

// BenchmarkProxy measures the gateway's handler as the data plane runs it,
// metrics included; BenchmarkProxyNoMetrics is the same without them.
// BenchmarkProxyAccessLog adds the access log, every request logged
// through the buffered Writer to io.Discard; BenchmarkProxyAccessLogSampledOut
// logs none (sample 0, all successes), the cost of deciding.
// BenchmarkBareReverseProxy is the floor: httputil.ReverseProxy with the
// same transport defaults.
func BenchmarkProxy(b *testing.B) {
	benchGateway(b, metrics.New(prometheus.NewRegistry()), nil)
}

func BenchmarkProxyNoMetrics(b *testing.B) {
	benchGateway(b, nil, nil)
}

func BenchmarkProxyAccessLog(b *testing.B) {
	w := accesslog.NewWriter(io.Discard, accesslog.WriterOptions{})
	defer w.Close()
	benchGateway(b, metrics.New(prometheus.NewRegistry()), accesslog.New(w, 1))
}

func BenchmarkProxyAccessLogSampledOut(b *testing.B) {
	w := accesslog.NewWriter(io.Discard, accesslog.WriterOptions{})
	defer w.Close()
	benchGateway(b, metrics.New(prometheus.NewRegistry()), accesslog.New(w, 0))
}

// BenchmarkProxyObserved has everything the data plane observes on:
// metrics, every request access-logged, and 1% of traces sampled (into
// a discarding exporter), as bench/proxies.sh's meridian-obs-on target
// runs it.
func BenchmarkProxyObserved(b *testing.B) {
	w := accesslog.NewWriter(io.Discard, accesslog.WriterOptions{})
	defer w.Close()
	tp := tracing.New(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01)), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	defer tp.Shutdown(context.Background())
	m := metrics.New(prometheus.NewRegistry())
	benchHandler(b, m, proxy.HandlerConfig{Metrics: m, AccessLog: accesslog.New(w, 1), TracerProvider: tp})
}

func benchGateway(b *testing.B, m *metrics.Metrics, access *accesslog.Logger) {
	benchHandler(b, m, proxy.HandlerConfig{Metrics: m, AccessLog: access})
}

func benchHandler(b *testing.B, m *metrics.Metrics, c proxy.HandlerConfig) {
	srv := benchUpstream(b)
	g := gateway.New(gateway.Options{Logger: discard(), Metrics: m})
	defer g.Close()
	apply(b, g, 1, upstreamRes("users", addr(srv)), routeRes("r", &meridianv1.RouteSpec{
		Upstream: "users", Match: match(prefix("/api/users")),
	}))
	runProxyBench(b, g.Handler(c))
}

func BenchmarkBareReverseProxy(b *testing.B) {
	srv := benchUpstream(b)
	u, _ := url.Parse(srv.URL)
	tr := &http.Transport{MaxIdleConnsPerHost: upstream.DefaultMaxIdleConnsPerHost}
	defer tr.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.SetXForwarded() },
		Transport:  tr,
		BufferPool: proxy.NewBufferPool(),
	}
	runProxyBench(b, rp)
}

// httptestServer starts h behind the traffic server configuration the
// data plane uses (HTTP/1.1 and h2c).
func httptestServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = server.New(h, server.Config{ReadHeaderTimeout: 10 * time.Second})
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// httptestListener returns a loopback listener closed at cleanup.
func httptestListener(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
