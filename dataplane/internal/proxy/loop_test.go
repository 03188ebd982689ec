package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// ownVia matches the entry of a data plane started with --node-id dp-a.
var ownVia = regexp.MustCompile(`^(1\.1|2) (dp-a-[0-9a-f]{16})$`)

// viaGateway serves a gateway of node dp-a with the route "/" to an echo
// upstream that counts its requests, plus spec's extra settings.
func viaGateway(t *testing.T, spec *meridianv1.RouteSpec) (front string, hits *atomic.Int64) {
	t.Helper()
	up := echo(t, "up")
	hits = new(atomic.Int64)
	counting := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		up.Config.Handler.ServeHTTP(w, r)
	}))
	g := gateway.New(gateway.Options{Logger: discard(), NodeID: "dp-a"})
	t.Cleanup(g.Close)
	spec.Upstream, spec.Match = "up", match(prefix("/"))
	apply(t, g, 1, upstreamRes("up", addr(counting)), routeRes("r", spec))
	return "http://" + addr(httptestServer(t, g.Handler(proxy.HandlerConfig{}))), hits
}

// viaSeen sends a GET with the given Via lines and returns the upstream's
// Via lines and the response.
func viaSeen(t *testing.T, url string, via ...string) ([]string, response) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for _, v := range via {
		req.Header.Add("Via", v)
	}
	resp := do(t, req)
	if resp.status != 200 {
		return nil, resp
	}
	var s seen
	if err := json.Unmarshal([]byte(resp.body), &s); err != nil {
		t.Fatalf("%s: %v", resp.body, err)
	}
	return s.Header["Via"], resp
}

func TestViaAdded(t *testing.T) {
	front, _ := viaGateway(t, &meridianv1.RouteSpec{})
	for _, path := range []string{
		"/lean",
		"/reverse-proxy?a=1;b=2", // ';' sends it through ReverseProxy
	} {
		for _, prior := range [][]string{nil, {"1.0 cdn"}, {"1.0 cdn, 1.1 lb (nginx)", "2 edge"}} {
			t.Run(fmt.Sprintf("%s/%d prior", path, len(prior)), func(t *testing.T) {
				got, resp := viaSeen(t, front+path, prior...)
				if resp.status != 200 {
					t.Fatalf("status %d: %s", resp.status, resp.body)
				}
				if len(got) != len(prior)+1 {
					t.Fatalf("upstream saw Via %q, want %q and the data plane's own", got, prior)
				}
				for i, p := range prior {
					if got[i] != p {
						t.Errorf("Via[%d] = %q, want the client's %q", i, got[i], p)
					}
				}
				if own := got[len(got)-1]; !ownVia.MatchString(own) || !strings.HasPrefix(own, "1.1 ") {
					t.Errorf("own entry %q, want 1.1 dp-a-<16 hex>", own)
				}
				if v := resp.header.Values("Via"); len(v) != 0 {
					t.Errorf("response carries Via %q; the data plane adds none to responses", v)
				}
			})
		}
	}

	// The entry is the same on every request and path: one per process.
	a, _ := viaSeen(t, front+"/lean")
	b, _ := viaSeen(t, front+"/reverse-proxy?x;y")
	if a[0] != b[0] {
		t.Errorf("entries differ: %q and %q", a[0], b[0])
	}
	// Another Gateway with the same node id has a token of its own.
	other, _ := viaGateway(t, &meridianv1.RouteSpec{})
	c, _ := viaSeen(t, other+"/lean")
	if c[0] == a[0] {
		t.Errorf("two data planes with the same node id share the entry %q", a[0])
	}

	// HTTP/2 clients are received as protocol 2.
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(front + "/h2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s seen
	json.NewDecoder(resp.Body).Decode(&s)
	if v := s.Header["Via"]; resp.ProtoMajor != 2 || len(v) != 1 || !strings.HasPrefix(v[0], "2 dp-a-") {
		t.Errorf("over HTTP/%d the upstream saw Via %q, want 2 dp-a-...", resp.ProtoMajor, v)
	}
}

// A route's header policy edits the client's entries, not the data
// plane's own, which loop detection relies on.
func TestViaSurvivesHeaderPolicy(t *testing.T) {
	front, _ := viaGateway(t, &meridianv1.RouteSpec{Headers: &meridianv1.HeaderPolicy{
		Request: &meridianv1.HeaderOps{Remove: []string{"Via"}},
	}})
	for _, path := range []string{"/lean", "/rp?a;b"} {
		got, _ := viaSeen(t, front+path, "1.1 secret-internal-proxy")
		if len(got) != 1 || !ownVia.MatchString(got[0]) {
			t.Errorf("%s: upstream saw Via %q, want only the data plane's", path, got)
		}
	}
}

func TestLoopDetected(t *testing.T) {
	front, hits := viaGateway(t, &meridianv1.RouteSpec{})
	got, _ := viaSeen(t, front+"/learn")
	own := ownVia.FindStringSubmatch(got[0])[2]

	many := func(n int) []string {
		var hops []string
		for i := range n {
			hops = append(hops, fmt.Sprintf("1.1 proxy-%d", i))
		}
		return hops
	}
	tests := []struct {
		name   string
		via    []string
		status int
		body   string
	}{
		{"own entry", []string{"1.1 " + own}, 508, `{"error":"loop detected"}`},
		{"own entry later in a list", []string{"1.0 cdn, 2 " + own + " (meridian)"}, 508, `{"error":"loop detected"}`},
		{"own entry on a second line", []string{"1.0 cdn", "1.1 lb", "1.1 " + own}, 508, `{"error":"loop detected"}`},
		{"same node id, another process", []string{"1.1 dp-a-0123456789abcdef"}, 200, ""},
		{"a comment naming us is no entry", []string{"1.1 cdn (seen " + own + ", twice)"}, 200, ""},
		{"MaxHops entries", []string{strings.Join(many(proxy.MaxHops), ", ")}, 200, ""},
		{"one more than MaxHops", []string{strings.Join(many(proxy.MaxHops-1), ", "), "1.1 last, 1.1 one-too-many"}, 508, `{"error":"too many hops"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := hits.Load()
			_, resp := viaSeen(t, front+"/x", tc.via...)
			if resp.status != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.status, resp.body, tc.status)
			}
			forwarded := hits.Load() - start
			if tc.status == 508 {
				if strings.TrimSpace(resp.body) != tc.body || resp.header.Get("Content-Type") != "application/json" {
					t.Errorf("508 body %q (%s), want %s as JSON", resp.body, resp.header.Get("Content-Type"), tc.body)
				}
				if resp.header.Get("X-Request-Id") == "" {
					t.Error("508 without X-Request-Id")
				}
				if forwarded != 0 {
					t.Errorf("a 508 request reached the upstream %d times", forwarded)
				}
			} else if forwarded != 1 {
				t.Errorf("forwarded %d times, want 1", forwarded)
			}
		})
	}
}

// A route whose upstream is the gateway itself: the request comes back
// once, is answered 508, and that answer goes back to the client. No
// more than two hops, on either forwarding path.
func TestSelfLoop(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: discard(), NodeID: "dp-a"})
	t.Cleanup(g.Close)
	var entered atomic.Int64
	h := g.Handler(proxy.HandlerConfig{})
	front := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		h.ServeHTTP(w, r)
	}))
	apply(t, g, 1, upstreamRes("self", addr(front)), routeRes("loop", &meridianv1.RouteSpec{Upstream: "self", Match: match(prefix("/"))}))
	for _, path := range []string{"/lean", "/rp?a;b"} {
		entered.Store(0)
		resp := doGet(t, front.URL+path)
		if resp.status != 508 || !strings.Contains(resp.body, "loop detected") {
			t.Errorf("%s: %d %s, want 508 loop detected", path, resp.status, resp.body)
		}
		if n := entered.Load(); n != 2 {
			t.Errorf("%s: the gateway saw the request %d times, want 2", path, n)
		}
	}
}

// ---------------------------------------------------- response header timeout

const headerWait = 150 * time.Millisecond

// hanging is an upstream that never answers until the test ends; it
// reads the whole request body first.
func hanging(t *testing.T) string {
	t.Helper()
	stop := make(chan struct{})
	srv := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(stop) })
	return addr(srv)
}

func timedRequest(t *testing.T, method, url, body string) (response, time.Duration) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	start := time.Now()
	resp := do(t, req)
	return resp, time.Since(start)
}

func TestResponseHeaderTimeout(t *testing.T) {
	c := proxy.RouteConfig{ResponseHeaderTimeout: headerWait}
	tests := []struct {
		name   string
		scheme meridianv1.Scheme
		method string
		path   string
		body   string
	}{
		{"bodiless lean request, bounded by its connection", meridianv1.Scheme_SCHEME_HTTP, "GET", "/x", ""},
		{"lean request with a body, bounded by a timer", meridianv1.Scheme_SCHEME_HTTP, "POST", "/x", "payload"},
		{"ReverseProxy path", meridianv1.Scheme_SCHEME_HTTP, "GET", "/x?a;b", ""},
		{"h2c upstream", meridianv1.Scheme_SCHEME_H2C, "GET", "/x", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			front := serveRoute(t, &meridianv1.RouteSpec{}, upstreamSpec(tc.scheme, hanging(t)), c)
			for range 2 { // the second on a new connection: the first was closed
				resp, took := timedRequest(t, tc.method, front+tc.path, tc.body)
				if resp.status != 504 || !strings.Contains(resp.body, "upstream timeout") {
					t.Fatalf("%d %s, want 504 upstream timeout", resp.status, resp.body)
				}
				if took < headerWait || took > headerWait+3*time.Second {
					t.Errorf("answered after %v, want about %v", took, headerWait)
				}
			}
		})
	}
}

func TestResponseHeaderTimeoutSparesWhatFollows(t *testing.T) {
	c := proxy.RouteConfig{ResponseHeaderTimeout: headerWait}
	quiet := func() { time.Sleep(3 * headerWait) }

	t.Run("a route timeout replaces it", func(t *testing.T) {
		slow, _ := counted(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			quiet()
			io.WriteString(w, "late")
		})
		front := serveRoute(t, &meridianv1.RouteSpec{Timeout: durationpb.New(10 * time.Second)}, httpUpstream(slow), c)
		if resp := doGet(t, front+"/x"); resp.status != 200 || resp.body != "late" {
			t.Errorf("%d %s, want the late answer", resp.status, resp.body)
		}
	})

	t.Run("a quiet response body", func(t *testing.T) {
		streaming, _ := counted(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: 1\n\n")
			http.NewResponseController(w).Flush()
			quiet()
			io.WriteString(w, "data: 2\n\n")
		})
		front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(streaming), c)
		for _, path := range []string{"/lean", "/rp?a;b"} {
			if resp := doGet(t, front+path); resp.status != 200 || resp.body != "data: 1\n\ndata: 2\n\n" {
				t.Errorf("%s: %d %q, want both events", path, resp.status, resp.body)
			}
		}
	})

	t.Run("a slow upload", func(t *testing.T) {
		echoBody, _ := counted(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			io.Copy(w, r.Body)
		})
		front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(echoBody), c)
		pr, pw := io.Pipe()
		go func() {
			for _, part := range []string{"a", "b", "c"} {
				pw.Write([]byte(part))
				quiet()
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", front+"/x", pr)
		if resp := do(t, req); resp.status != 200 || resp.body != "abc" {
			t.Errorf("%d %q, want the body echoed", resp.status, resp.body)
		}
	})

	t.Run("an idle pooled connection", func(t *testing.T) {
		var conns atomic.Int64
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
		srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		}
		srv.Start()
		t.Cleanup(srv.Close)
		front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(addr(srv)), c)
		for range 3 {
			if resp := doGet(t, front+"/x"); resp.status != 200 {
				t.Fatalf("%d %s", resp.status, resp.body)
			}
			quiet()
		}
		if n := conns.Load(); n != 1 {
			t.Errorf("the upstream saw %d connections, want 1 kept alive: the deadline outlived its response", n)
		}
	})

	t.Run("a WebSocket tunnel", func(t *testing.T) {
		up := httptestServer(t, websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }))
		front := strings.TrimPrefix(serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(addr(up)), c), "http://")
		ws, err := websocket.Dial("ws://"+front+"/echo", "", "http://"+front)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		for _, msg := range []string{"one", "after a quiet spell"} {
			quiet()
			websocket.Message.Send(ws, msg)
			var got string
			if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
				t.Fatalf("echo = %q, %v; want %q", got, err, msg)
			}
		}
	})

	t.Run("a gRPC call with its own deadline", func(t *testing.T) {
		slow, _ := counted(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			quiet()
			io.WriteString(w, "late")
		})
		front := serveRoute(t, &meridianv1.RouteSpec{}, httpUpstream(slow), c)
		req, _ := http.NewRequest("POST", front+"/x", strings.NewReader("m"))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Grpc-Timeout", "10S")
		if resp := do(t, req); resp.status != 200 || resp.body != "late" {
			t.Errorf("%d %s, want the late answer", resp.status, resp.body)
		}
	})
}
