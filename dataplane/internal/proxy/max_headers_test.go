package proxy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/server"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// headerFields returns n header lines "X-Hnnnn: v" with values of
// valueLen bytes; fields of 12 bytes each keep 5,000 of them under the
// server's 64 KiB header limit.
func headerFields(n, valueLen int) string {
	var b strings.Builder
	v := strings.Repeat("v", valueLen)
	for i := range n {
		fmt.Fprintf(&b, "X-H%04d: %s\r\n", i, v)
	}
	return b.String()
}

// TestMaxHeaders sends raw requests with many header fields to a gateway
// behind the data plane's traffic server with its default limits
// (--max-headers 100, --max-header-bytes 64 KiB). Past the field count
// the gateway answers 431 itself, before any route or upstream, and the
// connection stays usable as net/http keeps it; past the byte limit
// net/http answers 431 and closes.
func TestMaxHeaders(t *testing.T) {
	var reached atomic.Int64
	up := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.Write([]byte("upstream"))
	}))
	g := gateway.New(gateway.Options{Logger: discard()})
	t.Cleanup(g.Close)
	apply(t, g, 1, upstreamRes("up", addr(up)),
		routeRes("all", &meridianv1.RouteSpec{Upstream: "up", Match: match(prefix("/"))}))
	front := func(max int) string {
		srv := httptest.NewUnstartedServer(nil)
		srv.Config = server.New(g.Handler(proxy.HandlerConfig{MaxHeaders: max}),
			server.Config{ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: server.DefaultMaxHeaderBytes})
		srv.Start()
		t.Cleanup(srv.Close)
		return addr(srv)
	}
	limited, unlimited := front(proxy.DefaultMaxHeaders), front(0)

	tests := []struct {
		name       string
		front      string
		fields     string // header lines besides Host
		wantStatus int
		wantBody   string // prefix
		wantClose  bool
	}{
		{name: "100 fields", front: limited, fields: headerFields(100, 1), wantStatus: 200, wantBody: "upstream"},
		{name: "101 fields", front: limited, fields: headerFields(101, 1), wantStatus: 431, wantBody: `{"error":"too many request header fields"}`},
		{name: "a name twice counts twice", front: limited, fields: headerFields(50, 1) + headerFields(51, 1),
			wantStatus: 431, wantBody: `{"error":"too many request header fields"}`},
		{name: "underscore names count", front: limited, fields: headerFields(100, 1) + "X_Extra: v\r\n",
			wantStatus: 431, wantBody: `{"error":"too many request header fields"}`},
		// 101 fields sent, 97 once Connection is applied: counted as sent.
		{name: "Connection-listed names count", front: limited,
			fields:     headerFields(100, 1) + "Connection: X-H0000, X-H0001, X-H0002\r\n",
			wantStatus: 431, wantBody: `{"error":"too many request header fields"}`},
		{name: "5,000 fields in 60 KB", front: limited, fields: headerFields(5000, 1),
			wantStatus: 431, wantBody: `{"error":"too many request header fields"}`},
		{name: "5,000 fields past 64 KiB", front: limited, fields: headerFields(5000, 12),
			wantStatus: 431, wantBody: "431 Request Header Fields Too Large", wantClose: true},
		{name: "no limit: 5,000 fields in 60 KB", front: unlimited, fields: headerFields(5000, 1), wantStatus: 200, wantBody: "upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", tt.front)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			// Written while the response is read: the server may answer
			// and stop reading before it has all of a large header.
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: gw.test\r\n%s\r\n", tt.fields)
			}()
			defer func() { <-wrote }()
			br := bufio.NewReader(conn)
			before := reached.Load()
			status, body, closed := readRaw(t, br)
			if status != tt.wantStatus || !strings.HasPrefix(body, tt.wantBody) {
				t.Errorf("got %d %q, want %d %q", status, body, tt.wantStatus, tt.wantBody)
			}
			if wantReached := tt.wantStatus == 200; (reached.Load() > before) != wantReached {
				t.Errorf("upstream reached: %v, want %v", reached.Load() > before, wantReached)
			}
			if closed != tt.wantClose {
				t.Errorf("response closes the connection: %v, want %v", closed, tt.wantClose)
			}
			if tt.wantClose {
				return
			}
			<-wrote
			// The connection still serves a request.
			fmt.Fprint(conn, "GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
			if status, body, _ := readRaw(t, br); status != 200 || body != "upstream" {
				t.Errorf("next request on the connection: %d %q", status, body)
			}
		})
	}
}

// readRaw reads one response: status, body, and whether it closes the
// connection (Connection: close, then end of stream).
func readRaw(t *testing.T, br *bufio.Reader) (int, string, bool) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Close {
		return resp.StatusCode, string(body), false
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("Connection: close, then %v instead of the end of the stream", err)
	}
	return resp.StatusCode, string(body), true
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "reset")
}
