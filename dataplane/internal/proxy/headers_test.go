package proxy_test

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestForwardedTrust(t *testing.T) {
	up := echo(t, "up")
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1, upstreamRes("up", addr(up)), routeRes("r", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/"))}))
	h := g.Handler(proxy.HandlerConfig{ClientIP: clientip.New([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32"),
	})})

	spoofed := http.Header{
		"X-Forwarded-For":   {"1.2.3.4"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"public.example"},
	}
	tests := []struct {
		name      string
		peer      string
		header    http.Header
		wantFor   string
		wantProto string
		wantHost  string
	}{
		{name: "untrusted peer, no headers", peer: "203.0.113.9:5555", wantFor: "203.0.113.9", wantProto: "http", wantHost: "gw.test"},
		{name: "untrusted peer, spoofed headers replaced", peer: "203.0.113.9:5555", header: spoofed, wantFor: "203.0.113.9", wantProto: "http", wantHost: "gw.test"},
		{name: "trusted peer, headers extended", peer: "10.1.2.3:5555", header: spoofed, wantFor: "1.2.3.4, 10.1.2.3", wantProto: "https", wantHost: "public.example"},
		{name: "trusted peer, no headers", peer: "10.1.2.3:5555", wantFor: "10.1.2.3", wantProto: "http", wantHost: "gw.test"},
		{name: "trusted peer, several header lines", peer: "10.9.9.9:1", header: http.Header{"X-Forwarded-For": {"1.1.1.1", "2.2.2.2"}},
			wantFor: "1.1.1.1, 2.2.2.2, 10.9.9.9", wantProto: "http", wantHost: "gw.test"},
		{name: "trusted IPv6 peer", peer: "[2001:db8::7]:443", header: spoofed, wantFor: "1.2.3.4, 2001:db8::7", wantProto: "https", wantHost: "public.example"},
		{name: "untrusted IPv6 peer", peer: "[2001:db9::7]:443", header: spoofed, wantFor: "2001:db9::7", wantProto: "http", wantHost: "gw.test"},
		{name: "unparsable peer is untrusted", peer: "garbage", header: spoofed, wantFor: "garbage", wantProto: "http", wantHost: "gw.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://gw.test/x", nil)
			req.RemoteAddr = tt.peer
			for k, vs := range tt.header {
				req.Header[k] = vs
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("status = %d: %s", rec.Code, rec.Body)
			}
			var s seen
			if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
				t.Fatal(err)
			}
			if got := s.Header.Values("X-Forwarded-For"); len(got) != 1 || got[0] != tt.wantFor {
				t.Errorf("X-Forwarded-For = %q, want %q", got, tt.wantFor)
			}
			if got := s.Header.Get("X-Forwarded-Proto"); got != tt.wantProto {
				t.Errorf("X-Forwarded-Proto = %q, want %q", got, tt.wantProto)
			}
			if got := s.Header.Get("X-Forwarded-Host"); got != tt.wantHost {
				t.Errorf("X-Forwarded-Host = %q, want %q", got, tt.wantHost)
			}
		})
	}
}

func TestRequestID(t *testing.T) {
	up := echo(t, "up")
	// own answers with its own X-Request-Id, which must not reach the client.
	own := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "from-upstream")
		json.NewEncoder(w).Encode(seen{Header: r.Header})
	}))
	defer own.Close()
	g := gateway.New(gateway.Options{Logger: discard()})
	defer g.Close()
	apply(t, g, 1,
		upstreamRes("up", addr(up)), upstreamRes("own", addr(own)),
		routeRes("r", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/api"))}),
		routeRes("own", &meridianv1.RouteSpec{Upstream: "own", Match: match(prefix("/own"))}),
	)
	h := g.Handler(proxy.HandlerConfig{})

	tests := []struct {
		name     string
		path     string
		incoming string // "" = none sent
		want     string // "" = expect a generated id
	}{
		{name: "generated when absent", path: "/api"},
		{name: "passed through when present", path: "/api", incoming: "client-id-1", want: "client-id-1"},
		{name: "upstream's own id does not replace ours", path: "/own", incoming: "client-id-2", want: "client-id-2"},
		{name: "generated on an upstream that sets its own", path: "/own"},
		{name: "on error responses too", path: "/none", incoming: "client-id-3", want: "client-id-3"},
		{name: "generated on error responses", path: "/none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://gw.test"+tt.path, nil)
			if tt.incoming != "" {
				req.Header.Set("X-Request-Id", tt.incoming)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Values("X-Request-Id")
			if len(got) != 1 {
				t.Fatalf("response X-Request-Id = %q, want one value", got)
			}
			if tt.want != "" && got[0] != tt.want {
				t.Errorf("response X-Request-Id = %q, want %q", got[0], tt.want)
			}
			if tt.want == "" {
				if b, err := hex.DecodeString(got[0]); err != nil || len(b) != 16 {
					t.Errorf("generated id %q is not 16 bytes of hex", got[0])
				}
			}
			if rec.Code != http.StatusOK {
				return // no upstream saw it
			}
			var s seen
			if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
				t.Fatal(err)
			}
			if up := s.Header.Values("X-Request-Id"); len(up) != 1 || up[0] != got[0] {
				t.Errorf("upstream saw X-Request-Id %q, client got %q", up, got[0])
			}
		})
	}
}

func TestRequestIDsDiffer(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: discard()})
	h := g.Handler(proxy.HandlerConfig{})
	ids := map[string]bool{}
	for range 1000 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		id := rec.Header().Get("X-Request-Id")
		if ids[id] {
			t.Fatalf("id %q repeated", id)
		}
		ids[id] = true
	}
}
