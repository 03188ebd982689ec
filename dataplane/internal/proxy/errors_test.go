package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// onlyReader hides a reader's length, so the client sends it chunked.
type onlyReader struct{ io.Reader }

func TestErrorStatuses(t *testing.T) {
	// hits counts the requests of each subtest (X-Case), since a cut-off
	// request of one case can reach the upstream after the next began.
	var mu sync.Mutex
	hits := map[string]int64{}
	readAll := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.Header.Get("X-Case")]++
		mu.Unlock()
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		w.Write(b)
	}))
	release := make(chan struct{})
	defer close(release)
	slow := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	reset := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // no response at all
		}
	}))

	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1,
		upstreamRes("read", addr(readAll)), upstreamRes("slow", addr(slow)),
		upstreamRes("reset", addr(reset)), upstreamRes("dead", deadAddr(t)),
		routeRes("get-only", &meridianv1.RouteSpec{Upstream: "read", Match: &meridianv1.RouteMatch{
			Methods: []string{"GET", "HEAD"}, Paths: []*meridianv1.PathMatch{prefix("/get-only")},
		}}),
		routeRes("limited", &meridianv1.RouteSpec{Upstream: "read", Match: match(prefix("/limited")), MaxBodyBytes: 10}),
		routeRes("slow", &meridianv1.RouteSpec{Upstream: "slow", Match: match(prefix("/slow")), Timeout: durationpb.New(50 * time.Millisecond)}),
		routeRes("reset", &meridianv1.RouteSpec{Upstream: "reset", Match: match(prefix("/reset"))}),
		routeRes("dead", &meridianv1.RouteSpec{Upstream: "dead", Match: match(prefix("/dead"))}),
	)
	front := httptestServer(t, g.Handler(proxy.HandlerConfig{}))

	tests := []struct {
		name       string
		method     string
		path       string
		body       io.Reader
		wantStatus int
		wantError  string // the JSON body's error; "" when the upstream answers
		wantAllow  string
		wantHits   int64 // -1: don't care
	}{
		{name: "404 no route", method: "GET", path: "/nowhere", wantStatus: 404, wantError: "no route", wantHits: -1},
		{name: "405 method not allowed", method: "POST", path: "/get-only", wantStatus: 405, wantError: "method not allowed", wantAllow: "GET, HEAD", wantHits: -1},
		{name: "allowed method passes", method: "GET", path: "/get-only", wantStatus: 200, wantHits: -1},
		{name: "413 known length never reaches the upstream", method: "POST", path: "/limited", body: strings.NewReader(strings.Repeat("x", 11)),
			wantStatus: 413, wantError: "request body too large", wantHits: 0},
		{name: "413 streamed body past the limit", method: "POST", path: "/limited", body: onlyReader{strings.NewReader(strings.Repeat("x", 100))},
			wantStatus: 413, wantError: "request body too large", wantHits: -1},
		{name: "body at the limit passes", method: "POST", path: "/limited", body: strings.NewReader(strings.Repeat("x", 10)), wantStatus: 200, wantHits: 1},
		{name: "streamed body under the limit passes", method: "POST", path: "/limited", body: onlyReader{strings.NewReader("12345")}, wantStatus: 200, wantHits: 1},
		{name: "502 connect failure", method: "GET", path: "/dead", wantStatus: 502, wantError: "upstream connect failure", wantHits: -1},
		{name: "502 reset", method: "GET", path: "/reset", wantStatus: 502, wantError: "upstream error", wantHits: -1},
		{name: "504 route timeout", method: "GET", path: "/slow", wantStatus: 504, wantError: "upstream timeout", wantHits: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, front.URL+tt.path, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Case", tt.name)
			resp, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantError != "" {
				want := `{"error":"` + tt.wantError + `"}`
				if strings.TrimSpace(string(body)) != want || resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("body = %s (%s), want %s", body, resp.Header.Get("Content-Type"), want)
				}
			}
			if got := resp.Header.Get("Allow"); got != tt.wantAllow {
				t.Errorf("Allow = %q, want %q", got, tt.wantAllow)
			}
			mu.Lock()
			got := hits[tt.name]
			mu.Unlock()
			if tt.wantHits >= 0 && got != tt.wantHits {
				t.Errorf("upstream saw %d requests, want %d", got, tt.wantHits)
			}
		})
	}
}

// TestOutcomesFeedEjection checks that the proxy reports each attempt to
// the pool: a target that refuses connections is ejected after the
// configured consecutive failures, and traffic continues on the other.
func TestOutcomesFeedEjection(t *testing.T) {
	live := echo(t, "live")
	up := upstreamRes("mixed", deadAddr(t), addr(live))
	up.GetUpstream().Spec.HealthCheck = &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{
		ConsecutiveFailures: 2, EjectionTime: durationpb.New(time.Hour), MaxEjectionPercent: 50,
	}}
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, up, routeRes("r", &meridianv1.RouteSpec{Upstream: "mixed", Match: match(prefix("/"))}))
	front := httptestServer(t, g.Handler(proxy.HandlerConfig{}))

	failures := 0
	for range 4 {
		if status, _ := get(t, front.URL+"/"); status == http.StatusBadGateway {
			failures++
		}
	}
	if failures != 2 {
		t.Errorf("%d of the first 4 requests failed, want 2 (round robin until ejection)", failures)
	}
	for i := range 10 {
		if status, body := get(t, front.URL+"/"); status != http.StatusOK {
			t.Fatalf("request %d after ejection: %d %s", i, status, body)
		}
	}
}
