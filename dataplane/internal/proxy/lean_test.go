package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// leanGateway serves one route "/" without a timeout to an HTTP/1.1
// upstream running h, so ordinary requests take the lean path.
func leanGateway(t *testing.T, h http.Handler) string {
	t.Helper()
	up := httptestServer(t, h)
	// With metrics, as the data plane runs: every request goes through
	// their ResponseWriter.
	m := metrics.New(prometheus.NewRegistry())
	g := gateway.New(gateway.Options{Logger: discard(), Metrics: m})
	t.Cleanup(g.Close)
	apply(t, g, 1, upstreamRes("up", addr(up)), routeRes("r", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/"))}))
	return "http://" + addr(httptestServer(t, g.Handler(proxy.HandlerConfig{Metrics: m})))
}

func TestLeanHopByHopHeaders(t *testing.T) {
	front := leanGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Resp-Hop")
		h.Set("X-Resp-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("X-Resp-Kept", "1")
		json.NewEncoder(w).Encode(seen{Header: r.Header})
	}))

	tests := []struct {
		name     string
		header   http.Header
		wantGone []string
		wantKept map[string]string
		wantTE   string
	}{
		{
			name: "standard hop-by-hop headers",
			header: http.Header{"Keep-Alive": {"timeout=5"}, "Proxy-Authorization": {"Basic eA=="}, "Proxy-Connection": {"keep-alive"},
				"Trailer": {"X-T"}, "X-Kept": {"yes"}},
			wantGone: []string{"Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Trailer"},
			wantKept: map[string]string{"X-Kept": "yes"},
		},
		{
			name:     "headers named in Connection",
			header:   http.Header{"Connection": {"X-Hop-One, x-hop-two", "X-Hop-Three"}, "X-Hop-One": {"1"}, "X-Hop-Two": {"2"}, "X-Hop-Three": {"3"}, "X-Kept": {"yes"}},
			wantGone: []string{"Connection", "X-Hop-One", "X-Hop-Two", "X-Hop-Three"},
			wantKept: map[string]string{"X-Kept": "yes"},
		},
		{
			name:     "TE is reduced to trailers",
			header:   http.Header{"Te": {"gzip, trailers"}},
			wantGone: []string{"Connection"},
			wantTE:   "trailers",
		},
		{
			name:     "other TE is dropped",
			header:   http.Header{"Te": {"gzip"}},
			wantGone: []string{"Te"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", front+"/hop", nil)
			for k, v := range tt.header {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var s seen
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.wantGone {
				if v, ok := s.Header[k]; ok {
					t.Errorf("upstream got %s: %q", k, v)
				}
			}
			for k, v := range tt.wantKept {
				if got := s.Header.Get(k); got != v {
					t.Errorf("upstream got %s = %q, want %q", k, got, v)
				}
			}
			if got := s.Header.Get("Te"); got != tt.wantTE {
				t.Errorf("upstream got TE %q, want %q", got, tt.wantTE)
			}
			for _, k := range []string{"X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate"} {
				if v, ok := resp.Header[k]; ok {
					t.Errorf("client got %s: %q", k, v)
				}
			}
			if resp.Header.Get("X-Resp-Kept") != "1" || resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("client headers %v", resp.Header)
			}
		})
	}
}

func TestLeanResponses(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	front := leanGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "body")
			w.Header().Set("X-Checksum", "abc")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		case "/head":
			w.Header().Set("Content-Length", "1234")
			w.Header().Set("Content-Type", "text/plain")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("Etag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/stream":
			io.WriteString(w, "first\n")
			http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "rest\n")
		case "/hints":
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "final")
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		}
	}))

	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		header   http.Header
		status   int
		wantBody string
		check    func(t *testing.T, resp *http.Response, infos []int)
	}{
		{name: "trailers over HTTP/1.1 chunked", method: "GET", path: "/trailers", status: 200, wantBody: "body",
			check: func(t *testing.T, resp *http.Response, _ []int) {
				if resp.ContentLength != -1 || len(resp.TransferEncoding) == 0 {
					t.Errorf("not chunked: length %d, encoding %v", resp.ContentLength, resp.TransferEncoding)
				}
				if resp.Trailer.Get("X-Checksum") != "abc" || resp.Trailer.Get("X-Late") != "late" {
					t.Errorf("trailers %v", resp.Trailer)
				}
			}},
		{name: "HEAD keeps the length, sends no body", method: "HEAD", path: "/head", status: 200,
			check: func(t *testing.T, resp *http.Response, _ []int) {
				if resp.ContentLength != 1234 {
					t.Errorf("Content-Length = %d, want 1234", resp.ContentLength)
				}
			}},
		{name: "204 without body", method: "GET", path: "/204", status: 204,
			check: func(t *testing.T, resp *http.Response, _ []int) {
				if len(resp.TransferEncoding) != 0 || resp.Header.Get("Content-Length") != "" {
					t.Errorf("framing on a 204: %v %v", resp.TransferEncoding, resp.Header)
				}
			}},
		{name: "304 without body", method: "GET", path: "/304", status: 304,
			check: func(t *testing.T, resp *http.Response, _ []int) {
				if resp.Header.Get("Etag") != `"v1"` || len(resp.TransferEncoding) != 0 {
					t.Errorf("304 headers %v, encoding %v", resp.Header, resp.TransferEncoding)
				}
			}},
		{name: "103 early hints are relayed", method: "GET", path: "/hints", status: 200, wantBody: "final",
			check: func(t *testing.T, resp *http.Response, infos []int) {
				if len(infos) != 1 || infos[0] != http.StatusEarlyHints {
					t.Errorf("informational responses %v, want [103]", infos)
				}
				if resp.Header.Get("Link") != "" || resp.Header.Get("X-Request-Id") == "" {
					t.Errorf("final headers %v", resp.Header)
				}
			}},
		{name: "Expect: 100-continue is relayed", method: "POST", path: "/echo", body: "payload",
			header: http.Header{"Expect": {"100-continue"}}, status: 200, wantBody: "payload",
			check: func(t *testing.T, resp *http.Response, infos []int) {
				if len(infos) != 1 || infos[0] != http.StatusContinue {
					t.Errorf("informational responses %v, want [100]", infos)
				}
				if resp.Header.Get("X-Request-Id") == "" {
					t.Errorf("final headers %v", resp.Header)
				}
			}},
		{name: "request body", method: "POST", path: "/echo", body: "payload", status: 200, wantBody: "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var infos []int
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
					infos = append(infos, code)
					return nil
				},
			})
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, _ := http.NewRequestWithContext(ctx, tt.method, front+tt.path, body)
			for k, v := range tt.header {
				req.Header[k] = v
			}
			// A client that waits for the 100, so the upstream's is what it gets.
			client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
			defer client.CloseIdleConnections()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || string(got) != tt.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, got, tt.status, tt.wantBody)
			}
			if tt.check != nil {
				tt.check(t, resp, infos)
			}
		})
	}

	t.Run("response without Content-Length streams", func(t *testing.T) {
		resp, err := http.Get(front + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		first := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(resp.Body).ReadString('\n')
			first <- line
		}()
		// The upstream holds the rest back (until the test ends): only a
		// proxy that flushes delivers the first line now.
		select {
		case line := <-first:
			if line != "first\n" {
				t.Errorf("first line %q", line)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("first line not received while the stream is open")
		}
	})
}

func TestLeanClientCancelMidBody(t *testing.T) {
	upstreamGone := make(chan struct{})
	front := leanGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		<-r.Context().Done() // the gateway must cancel its upstream request
		close(upstreamGone)
	}))
	// The timeout only keeps a broken proxy from hanging the test.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", front+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-upstreamGone:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not cancelled after the client went away")
	}
}
