package proxy

import (
	"net/http"
	"slices"
	"testing"
)

func TestDropConnectionListed(t *testing.T) {
	tests := []struct {
		name     string
		conn     []string
		wantConn []string // nil: no Connection header left
		wantGone []string
		wantKept []string
	}{
		{name: "options only: untouched", conn: []string{"keep-alive"}, wantConn: []string{"keep-alive"}, wantKept: []string{"X-Foo"}},
		{name: "upgrade kept, listed name dropped", conn: []string{"Upgrade, X-User-ID"}, wantConn: []string{"Upgrade"},
			wantGone: []string{"X-User-Id"}, wantKept: []string{"Upgrade", "X-Foo"}},
		{name: "only listed names: Connection goes", conn: []string{"x-request-id", "X-Foo"}, wantGone: []string{"X-Request-Id", "X-Foo", "Connection"}},
		{name: "empty tokens and spaces", conn: []string{" , close ,, X-Foo\t", "TE"}, wantConn: []string{"close, TE"},
			wantGone: []string{"X-Foo"}, wantKept: []string{"Te"}},
		{name: "an odd token is no header", conn: []string{"X Foo"}, wantKept: []string{"X-Foo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Connection": tt.conn, "X-User-Id": {"a"}, "X-Request-Id": {"b"}, "X-Foo": {"c"}, "Upgrade": {"websocket"}, "Te": {"trailers"}}
			dropConnectionListed(h, tt.conn)
			if got := h["Connection"]; !slices.Equal(got, tt.wantConn) {
				t.Errorf("Connection = %q, want %q", got, tt.wantConn)
			}
			for _, k := range tt.wantGone {
				if _, ok := h[k]; ok {
					t.Errorf("%s kept", k)
				}
			}
			for _, k := range tt.wantKept {
				if _, ok := h[k]; !ok {
					t.Errorf("%s dropped", k)
				}
			}
		})
	}
}

// TestSanitizeAllocs: the common requests (no Connection header or one
// with connection options only, no underscores, no client-address
// headers) cost no allocation.
func TestSanitizeAllocs(t *testing.T) {
	h := &Handler{}
	for _, conn := range [][]string{nil, {"keep-alive"}, {"Upgrade"}, {"close"}} {
		r := &http.Request{RemoteAddr: "203.0.113.1:1", Header: http.Header{
			"User-Agent": {"test"}, "Accept": {"*/*"}, "Accept-Encoding": {"gzip"},
		}}
		if conn != nil {
			r.Header["Connection"] = conn
		}
		if n := testing.AllocsPerRun(100, func() { h.sanitize(r) }); n != 0 {
			t.Errorf("Connection %q: %v allocations, want 0", conn, n)
		}
	}
}
