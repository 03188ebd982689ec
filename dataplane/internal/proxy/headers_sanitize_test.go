package proxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/net/http/httpguts"

	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt/jwttest"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

const sanitizeSecret = "proxy-sanitize-test-secret-32-by"

// sanitizeGateway serves, to upstreamAddr: /secure, behind JWT (provider
// "sso", the token's sub forwarded as X-User-ID), and /policy, whose
// header policy sets X-User-ID to "policy-user". Both set X-Gateway to
// "meridian". It returns the gateway and a token for sub "alice".
func sanitizeGateway(tb testing.TB, upstreamAddr string) (*gateway.Gateway, string) {
	tb.Helper()
	tb.Setenv("PROXY_SANITIZE_SECRET", sanitizeSecret)
	g := gateway.New(gateway.Options{Logger: discard()})
	tb.Cleanup(g.Close)
	set := func(kv ...string) *meridianv1.HeaderPolicy {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return &meridianv1.HeaderPolicy{Request: &meridianv1.HeaderOps{Set: m}}
	}
	apply(tb, g, 1,
		upstreamRes("up", upstreamAddr),
		&meridianv1.Resource{Kind: &meridianv1.Resource_JwtProvider{JwtProvider: &meridianv1.JWTProvider{
			Metadata: &meridianv1.Metadata{Name: "sso"},
			Spec: &meridianv1.JWTProviderSpec{
				Algorithms: []string{"HS256"}, Keys: []*meridianv1.JWTKey{{Kid: "k1", SecretEnv: "PROXY_SANITIZE_SECRET"}},
				TokenFrom: []string{"header:Authorization"}, ConsumerClaim: "sub",
				ForwardClaims: map[string]string{"sub": "X-User-ID"},
			},
		}}},
		routeRes("secure", &meridianv1.RouteSpec{
			Upstream: "up", Match: match(prefix("/secure")), Auth: &meridianv1.RouteAuth{Jwt: "sso"},
			Headers: set("X-Gateway", "meridian"),
		}),
		routeRes("policy", &meridianv1.RouteSpec{
			Upstream: "up", Match: match(prefix("/policy")),
			Headers: set("X-Gateway", "meridian", "X-User-ID", "policy-user"),
		}),
	)
	token := jwttest.HS256(tb, sanitizeSecret, josejwt.Claims{Subject: "alice", Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))})
	return g, token
}

// forwardingPaths make a request take each of the two forwarding paths:
// the lean one, and httputil.ReverseProxy (an upgrade, or Expect:
// 100-continue).
var forwardingPaths = []struct {
	name string
	add  func(h http.Header)
}{
	{"lean", func(http.Header) {}},
	{"reverse proxy: upgrade", func(h http.Header) {
		h.Add("Connection", "Upgrade")
		h.Set("Upgrade", "websocket")
	}},
	{"reverse proxy: expect", func(h http.Header) { h.Set("Expect", "100-continue") }},
}

// checkGatewayHeaders checks what every proxied request carries upstream:
// the request id the client got, once; X-Forwarded-For as wantFor; the
// route's X-Gateway.
func checkGatewayHeaders(t *testing.T, got http.Header, resp http.Header, wantFor string) {
	t.Helper()
	if ids := resp.Values("X-Request-Id"); len(ids) != 1 || !slices.Equal(got["X-Request-Id"], ids) {
		t.Errorf("upstream X-Request-Id %q, client got %q", got["X-Request-Id"], ids)
	}
	if v := got["X-Forwarded-For"]; len(v) != 1 || v[0] != wantFor {
		t.Errorf("upstream X-Forwarded-For %q, want %q", v, wantFor)
	}
	if v := got["X-Gateway"]; !slices.Equal(v, []string{"meridian"}) {
		t.Errorf("upstream X-Gateway %q, want [meridian]", v)
	}
}

func TestSanitizeHeaders(t *testing.T) {
	up := echo(t, "up")
	g, token := sanitizeGateway(t, addr(up))
	trusted := clientip.New([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	strict := g.Handler(proxy.HandlerConfig{ClientIP: trusted})
	lenient := g.Handler(proxy.HandlerConfig{ClientIP: trusted, AllowUnderscoreHeaders: true})

	const untrustedPeer, trustedPeer = "203.0.113.9:5555", "10.1.2.3:5555"
	clientIPs := map[string]string{
		"X-Real-Ip": "1.1.1.1", "True-Client-Ip": "2.2.2.2", "Cf-Connecting-Ip": "3.3.3.3",
		"X-Client-Ip": "4.4.4.4", "Fastly-Client-Ip": "5.5.5.5", "Forwarded": "for=6.6.6.6",
	}
	tests := []struct {
		name        string
		path        string // /secure sends alice's token
		peer        string // default untrustedPeer
		underscores bool   // the lenient handler
		header      [][2]string
		want        map[string][]string // exactly these upstream values
		gone        []string            // upstream has none of these
		wantFor     string              // default the peer's host
		newID       bool                // the client's X-Request-Id is dropped: a generated one is sent
	}{
		{
			name: "Connection naming a forwarded claim", path: "/secure",
			header: [][2]string{{"Connection", "X-User-ID"}, {"X-User-ID", "admin"}},
			want:   map[string][]string{"X-User-Id": {"alice"}},
		},
		{
			name: "Connection naming policy-set headers", path: "/policy",
			header: [][2]string{{"Connection", "x-user-id, X-Gateway"}, {"X-User-ID", "admin"}, {"X-Gateway", "evil"}},
			want:   map[string][]string{"X-User-Id": {"policy-user"}},
		},
		{
			name: "Connection naming X-Request-Id", path: "/policy",
			header: [][2]string{{"Connection", "X-Request-Id"}},
			newID:  true,
		},
		{
			name: "Connection naming the client's own X-Request-Id", path: "/policy",
			header: [][2]string{{"Connection", "X-Request-Id"}, {"X-Request-Id", "client-1"}},
			newID:  true,
		},
		{
			name: "one request id, the same both ways", path: "/policy",
			header: [][2]string{{"X-Request-Id", "client-1"}, {"X-Request-Id", "client-2"}},
			want:   map[string][]string{"X-Request-Id": {"client-1"}},
		},
		{
			name: "Connection naming X-Forwarded-*", path: "/policy",
			header: [][2]string{{"Connection", "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"}},
			want:   map[string][]string{"X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"gw.test"}},
		},
		{
			name: "a trusted proxy's X-Forwarded-For named in Connection is its own hop's", path: "/policy", peer: trustedPeer,
			header:  [][2]string{{"Connection", "X-Forwarded-For"}, {"X-Forwarded-For", "9.9.9.9"}},
			wantFor: "10.1.2.3",
		},
		{
			name: "Connection naming another header", path: "/policy",
			header: [][2]string{{"Connection", "keep-alive, X-Foo"}, {"Connection", "X-Bar"}, {"X-Foo", "1"}, {"X-Bar", "2"}, {"X-Kept", "yes"}},
			want:   map[string][]string{"X-Kept": {"yes"}},
			gone:   []string{"X-Foo", "X-Bar"},
		},
		{
			name: "underscore names dropped by default", path: "/secure",
			header: [][2]string{{"X_User_ID", "admin"}, {"X_Other", "1"}},
			want:   map[string][]string{"X-User-Id": {"alice"}},
			gone:   []string{"X_user_id", "X_other"},
		},
		{
			name: "underscore names kept when allowed", path: "/secure", underscores: true,
			header: [][2]string{{"X_Other", "1"}},
			want:   map[string][]string{"X-User-Id": {"alice"}, "X_other": {"1"}},
		},
		{
			name: "client-IP headers from an untrusted peer dropped", path: "/policy",
			header: pairs(clientIPs),
			gone:   names(clientIPs),
		},
		{
			name: "client-IP headers from a trusted proxy kept", path: "/policy", peer: trustedPeer,
			header: pairs(clientIPs),
			want:   asValues(clientIPs),
		},
	}
	for _, tt := range tests {
		for _, fp := range forwardingPaths {
			t.Run(tt.name+"/"+fp.name, func(t *testing.T) {
				req := httptest.NewRequest("GET", "http://gw.test"+tt.path, nil)
				req.RemoteAddr = untrustedPeer
				if tt.peer != "" {
					req.RemoteAddr = tt.peer
				}
				if tt.path == "/secure" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				for _, kv := range tt.header {
					req.Header.Add(kv[0], kv[1])
				}
				fp.add(req.Header)
				h := strict
				if tt.underscores {
					h = lenient
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
				wantFor := tt.wantFor
				if wantFor == "" {
					wantFor = clientip.PeerHost(req.RemoteAddr)
				}
				checkGatewayHeaders(t, s.Header, rec.Header(), wantFor)
				if tt.newID {
					if id := rec.Header().Get("X-Request-Id"); !hexID.MatchString(id) {
						t.Errorf("X-Request-Id %q is not a generated one", id)
					}
				}
				for k, v := range tt.want {
					if got := s.Header[k]; !slices.Equal(got, v) {
						t.Errorf("upstream %s = %q, want %q", k, got, v)
					}
				}
				for _, k := range tt.gone {
					if v, ok := s.Header[k]; ok {
						t.Errorf("upstream got %s: %q", k, v)
					}
				}
				if !tt.underscores {
					for k := range s.Header {
						if strings.Contains(k, "_") {
							t.Errorf("upstream got %s", k)
						}
					}
				}
				// The upgrade still reaches the upstream as one.
				if fp.name == "reverse proxy: upgrade" && (s.Header.Get("Upgrade") != "websocket" || s.Header.Get("Connection") != "Upgrade") {
					t.Errorf("upstream Upgrade %q, Connection %q", s.Header.Get("Upgrade"), s.Header.Get("Connection"))
				}
			})
		}
	}
}

// pairs, names and asValues turn a header name to value map into a
// test's header lines, names and wanted values.
func pairs(m map[string]string) [][2]string {
	var out [][2]string
	for k, v := range m {
		out = append(out, [2]string{k, v})
	}
	return out
}

func names(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func asValues(m map[string]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		out[k] = []string{v}
	}
	return out
}

// TestSanitizeRawRequests sends, over a raw connection, a request whose
// Connection header names each header the gateway sets (and one with an
// underscore name): each is answered 200 on a connection kept open, and
// the upstream gets the gateway's values.
func TestSanitizeRawRequests(t *testing.T) {
	up := echo(t, "up")
	g, token := sanitizeGateway(t, addr(up))
	front := httptestServer(t, g.Handler(proxy.HandlerConfig{}))
	gatewaySet := map[string]string{
		"X-User-Id":         "alice",
		"X-Gateway":         "meridian",
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "gw.test",
	}
	conn, err := net.Dial("tcp", addr(front))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	send := func(t *testing.T, extra string) (*http.Response, seen) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /secure/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer %s\r\n%s\r\n", token, extra)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s seen
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if resp.Close {
			t.Error("connection closed")
		}
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatal(err)
		}
		return resp, s
	}
	for _, name := range append(names(gatewaySet), "X-Request-Id") {
		t.Run("Connection: "+name, func(t *testing.T) {
			resp, s := send(t, "Connection: "+name+"\r\n"+name+": evil\r\n")
			for k, v := range gatewaySet {
				if got := s.Header[k]; !slices.Equal(got, []string{v}) {
					t.Errorf("upstream %s = %q, want [%s]", k, got, v)
				}
			}
			if id := resp.Header.Get("X-Request-Id"); id == "evil" || !slices.Equal(s.Header["X-Request-Id"], []string{id}) {
				t.Errorf("upstream X-Request-Id %q, client got %q", s.Header["X-Request-Id"], id)
			}
		})
	}
	t.Run("underscore name", func(t *testing.T) {
		_, s := send(t, "X_User_ID: admin\r\n")
		if got := s.Header["X-User-Id"]; !slices.Equal(got, []string{"alice"}) {
			t.Errorf("upstream X-User-Id = %q", got)
		}
		for k := range s.Header {
			if strings.Contains(k, "_") {
				t.Errorf("upstream got %s", k)
			}
		}
	})
}

// TestUpgradeKeepsGatewayHeaders: a WebSocket handshake whose Connection
// header also names X-User-ID is still upgraded and tunnelled, and the
// upstream's handshake carries the X-User-ID of the token. (The x/net
// websocket client writes its own Connection header, so the handshake is
// written by hand.)
func TestUpgradeKeepsGatewayHeaders(t *testing.T) {
	up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Saw-User: %s\r\n\r\n",
			strings.Join(r.Header.Values("X-User-Id"), ","))
		brw.Flush()
		io.Copy(conn, brw) // echo until the client closes
	}))
	g, token := sanitizeGateway(t, addr(up))
	front := addr(httptestServer(t, g.Handler(proxy.HandlerConfig{})))

	conn, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /secure/ws HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer %s\r\n"+
		"Connection: Upgrade, X-User-ID\r\nUpgrade: websocket\r\nX-User-ID: admin\r\n\r\n", token)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Saw-User"); got != "alice" {
		t.Errorf("upstream handshake X-User-Id = %q, want alice", got)
	}
	io.WriteString(conn, "ping")
	echoed := make([]byte, 4)
	if _, err := io.ReadFull(br, echoed); err != nil || string(echoed) != "ping" {
		t.Errorf("tunnel echo = %q, %v", echoed, err)
	}
}

// fuzzSkipped are header names the fuzz target does not send: framing and
// authentication are tested elsewhere, and the forwarding path is chosen
// by the target's own argument.
var fuzzSkipped = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Authorization": true, "Expect": true, "Upgrade": true,
}

// fuzzPeer is an untrusted client.
const fuzzPeer = "192.0.2.10"

// FuzzSanitizeHeaders builds a request from fuzzed header lines ("Name:
// value", one a line) as the server would parse it, sends it through the
// gateway on a JWT route on either forwarding path, and checks that it
// does not panic and that the headers the gateway sets reach the upstream
// with the gateway's values: X-Request-Id (the one the client got),
// X-Forwarded-For (the peer), X-Gateway (the route's policy), X-User-Id
// (the token's sub), with no underscore names or client-address headers
// from this untrusted peer.
func FuzzSanitizeHeaders(f *testing.F) {
	up := echo(f, "up")
	g, token := sanitizeGateway(f, addr(up))
	h := g.Handler(proxy.HandlerConfig{})
	for _, seed := range []string{
		"",
		"Connection: X-User-ID\nX-User-ID: admin",
		"Connection: X-Request-Id, X-Forwarded-For\nX-Request-Id: abc\nX-Forwarded-For: 1.2.3.4",
		"Connection: keep-alive, X-Gateway\nX-Gateway: evil",
		"X_User_ID: admin\nx_gateway: evil",
		"X-Real-IP: 1.2.3.4\nTrue-Client-IP: 5.6.7.8\nForwarded: for=1.2.3.4",
		"Connection: Upgrade\nUpgrade: websocket",
		"Connection: close, TE\nTE: trailers\nX-Request-Id: client",
		"Connection: ,,X-Forwarded-Host , X-Forwarded-Proto\nX-Forwarded-Host: evil\nX-Forwarded-Proto: https",
	} {
		for path := range uint8(3) {
			f.Add(seed, path)
		}
	}
	f.Fuzz(func(t *testing.T, lines string, path uint8) {
		var raw strings.Builder
		raw.WriteString("GET /secure/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer " + token + "\r\n")
		n := 0
		for line := range strings.SplitSeq(lines, "\n") {
			name, value, ok := strings.Cut(line, ":")
			value = strings.TrimSpace(value)
			if !ok || n == 64 || !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) ||
				fuzzSkipped[http.CanonicalHeaderKey(name)] {
				continue
			}
			raw.WriteString(name + ": " + value + "\r\n")
			n++
		}
		switch path % 3 {
		case 1:
			raw.WriteString("Expect: 100-continue\r\n")
		case 2:
			raw.WriteString("Connection: Upgrade\r\nUpgrade: websocket\r\n")
		}
		raw.WriteString("\r\n")
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw.String())))
		if err != nil {
			return // the server would have answered 400
		}
		req.RemoteAddr = fuzzPeer + ":1234"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusUnauthorized && httpguts.HeaderValuesContainsToken(req.Header["Connection"], "Authorization") {
			return // the token was named hop-by-hop, so it was dropped
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d: %s\nrequest:\n%s", rec.Code, rec.Body, raw.String())
		}
		var s seen
		if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
			t.Fatalf("upstream answer %q: %v", rec.Body, err)
		}
		got := s.Header
		want := map[string]string{
			"X-Forwarded-For": fuzzPeer, "X-Forwarded-Host": "gw.test", "X-Forwarded-Proto": "http",
			"X-Gateway": "meridian", "X-User-Id": "alice", "X-Request-Id": throughJSON(rec.Header().Get("X-Request-Id")),
		}
		for k, v := range want {
			if !slices.Equal(got[k], []string{v}) {
				t.Errorf("upstream %s = %q, want [%s]\nrequest:\n%s", k, got[k], v, raw.String())
			}
		}
		for k := range got {
			if strings.Contains(k, "_") || k == "X-Real-Ip" || k == "True-Client-Ip" || k == "Cf-Connecting-Ip" ||
				k == "X-Client-Ip" || k == "Fastly-Client-Ip" || k == "Forwarded" {
				t.Errorf("upstream got %s: %q\nrequest:\n%s", k, got[k], raw.String())
			}
		}
	})
}

// throughJSON returns v as the echo upstream's JSON report carries it:
// invalid UTF-8 becomes U+FFFD.
func throughJSON(v string) string {
	b, _ := json.Marshal(v)
	var out string
	json.Unmarshal(b, &out) //nolint:errcheck // what Marshal wrote decodes
	return out
}
