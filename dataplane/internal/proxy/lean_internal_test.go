package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestLeanRequest(t *testing.T) {
	tests := []struct {
		name   string
		target string
		header http.Header
		want   bool
	}{
		{name: "plain GET", target: "/a?x=1&y=%20", want: true},
		{name: "SSE subscription", target: "/events", header: http.Header{"Accept": {"text/event-stream"}}, want: true},
		{name: "WebSocket upgrade", target: "/ws", header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, want: false},
		{name: "Upgrade without Connection", target: "/", header: http.Header{"Upgrade": {"h2c"}}, want: false},
		{name: "gRPC", target: "/pkg.Svc/Call", header: http.Header{"Content-Type": {"application/grpc+proto"}}, want: false},
		{name: "Expect: 100-continue", target: "/", header: http.Header{"Expect": {"100-continue"}}, want: false},
		{name: "semicolon in query", target: "/?a=1;b=2", want: false},
		{name: "bad escape in query", target: "/?a=%zz", want: false},
		{name: "truncated escape in query", target: "/?a=%2", want: false},
		{name: "too many query parameters", target: "/?" + strings.Repeat("a=1&", maxQueryParams), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.target, nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			if got := leanRequest(r); got != tt.want {
				t.Errorf("leanRequest = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConnectionListed(t *testing.T) {
	conn := []string{"keep-alive, X-Foo", " x-bar ,", "Upgrade"}
	for k, want := range map[string]bool{"X-Foo": true, "X-Bar": true, "Keep-Alive": true, "Upgrade": true, "X-Baz": false, "": false} {
		if got := connectionListed(conn, k); got != want {
			t.Errorf("connectionListed(%q) = %v, want %v", k, got, want)
		}
	}
}

func TestEventStream(t *testing.T) {
	for ct, want := range map[string]bool{"text/event-stream": true, "Text/Event-Stream; charset=utf-8": true, " text/event-stream ;x": true, "text/plain": false, "": false} {
		if got := eventStream([]string{ct}); got != want {
			t.Errorf("eventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}
