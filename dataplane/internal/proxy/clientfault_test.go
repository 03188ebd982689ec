package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/dataplane/internal/breaker"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// TestClientFaultsAreTheClients sends requests whose body is broken,
// stalls or is abandoned, to a route whose breaker opens on one failure,
// whose single target is ejected after one failure and which retries
// resets: the client gets 400 or 408 (or nothing, having left), and
// afterwards the breaker is still closed and a good request is served,
// so nothing was counted against the upstream.
func TestClientFaultsAreTheClients(t *testing.T) {
	tests := []struct {
		name string
		spec *meridianv1.RouteSpec
		// send writes the request; the connection stays open until the
		// answer is read unless it closes it.
		send       func(c net.Conn)
		wantStatus int // 0: the client left, no answer is read
		// noBodyTimeout: the route has no body-read timeout (otherwise
		// 300ms).
		noBodyTimeout bool
	}{
		{
			name: "malformed chunk size",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
			},
			wantStatus: http.StatusBadRequest,
		},
		{
			// Expect: 100-continue takes ReverseProxy's path.
			name: "malformed chunk through ReverseProxy",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
			},
			wantStatus: http.StatusBadRequest,
		},
		{
			name: "body stalls through ReverseProxy",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\nonly this")
			},
			wantStatus: http.StatusRequestTimeout,
		},
		{
			name: "chunk data without its CRLF",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")
			},
			wantStatus: http.StatusBadRequest,
		},
		{
			name: "length-delimited body stalls",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
			},
			wantStatus: http.StatusRequestTimeout,
		},
		{
			name: "chunked body stalls",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
			},
			wantStatus: http.StatusRequestTimeout,
		},
		{
			name: "body stalls past the route timeout",
			spec: &meridianv1.RouteSpec{Timeout: durationpb.New(150 * time.Millisecond)},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
			},
			wantStatus:    http.StatusRequestTimeout,
			noBodyTimeout: true,
		},
		{
			name: "retryable body stalls before the first attempt",
			spec: retrySpec(2, "reset", "connect_failure"),
			send: func(c net.Conn) {
				io.WriteString(c, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
			},
			wantStatus: http.StatusRequestTimeout,
		},
		{
			name: "client leaves midway through its body",
			spec: &meridianv1.RouteSpec{},
			send: func(c net.Conn) {
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
				time.Sleep(50 * time.Millisecond) // the attempt is under way
				c.Close()
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, _ := counted(t, answer(http.StatusOK))
			b := newBreaker(t, 1, time.Hour, breaker.Options{})
			spec := httpUpstream(up)
			spec.HealthCheck = &meridianv1.HealthCheck{Passive: &meridianv1.PassiveHealthCheck{
				ConsecutiveFailures: 1, EjectionTime: durationpb.New(time.Hour), MaxEjectionPercent: 100,
			}}
			c := proxy.RouteConfig{Breaker: b, BodyReadTimeout: 300 * time.Millisecond}
			if tt.noBodyTimeout {
				c.BodyReadTimeout = 0
			}
			front := serveRoute(t, tt.spec, spec, c)

			conn, err := net.Dial("tcp", strings.TrimPrefix(front, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			tt.send(conn)
			if tt.wantStatus != 0 {
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(conn)
				res, err := http.ReadResponse(br, nil)
				for err == nil && res.StatusCode == http.StatusContinue {
					res, err = http.ReadResponse(br, nil)
				}
				if err != nil {
					t.Fatalf("reading the answer: %v", err)
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != tt.wantStatus {
					t.Errorf("status %d %q, want %d", res.StatusCode, body, tt.wantStatus)
				}
			} else {
				time.Sleep(100 * time.Millisecond) // the attempt has ended
			}
			if s := b.State(); s != breaker.Closed {
				t.Errorf("breaker %s after the client's fault, want closed", s)
			}
			if got := doGet(t, front+"/"); got.status != http.StatusOK {
				t.Errorf("a good request after the client's fault: %d %q, want 200 (the target must not be ejected)", got.status, got.body)
			}
		})
	}
}
