package clientip

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestClientIP(t *testing.T) {
	trusting := New([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")})
	tests := []struct {
		name   string
		r      *Resolver
		remote string
		xff    []string
		want   string
	}{
		{"no trusted proxies: the peer", New(nil), "203.0.113.7:5000", []string{"198.51.100.1"}, "203.0.113.7"},
		{"nil resolver: the peer", nil, "203.0.113.7:5000", []string{"198.51.100.1"}, "203.0.113.7"},
		{"untrusted peer: header ignored", trusting, "203.0.113.7:5000", []string{"198.51.100.1"}, "203.0.113.7"},
		{"trusted peer without header", trusting, "10.1.1.1:5000", nil, "10.1.1.1"},
		{"trusted peer: the forwarded client", trusting, "10.1.1.1:5000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"trusted hops are skipped from the right", trusting, "10.1.1.1:5000", []string{"6.6.6.6, 198.51.100.1, 10.2.2.2"}, "198.51.100.1"},
		{"several header lines", trusting, "10.1.1.1:5000", []string{"6.6.6.6", "198.51.100.1 , 10.2.2.2"}, "198.51.100.1"},
		{"a client cannot prepend its way past the nearest untrusted hop", trusting, "10.1.1.1:5000", []string{"10.9.9.9, 198.51.100.1"}, "198.51.100.1"},
		{"garbage stops at the last trusted hop", trusting, "10.1.1.1:5000", []string{"198.51.100.1, bogus, 10.2.2.2"}, "10.2.2.2"},
		{"every hop trusted: the leftmost", trusting, "10.1.1.1:5000", []string{"10.3.3.3, 10.2.2.2"}, "10.3.3.3"},
		{"empty entries skipped", trusting, "10.1.1.1:5000", []string{" , 198.51.100.1,,"}, "198.51.100.1"},
		{"IPv6 peer", trusting, "[::1]:5000", []string{"2001:db8::1"}, "2001:db8::1"},
		{"IPv4-mapped trusted peer", trusting, "[::ffff:10.1.1.1]:5000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"peer without port", New(nil), "203.0.113.7", nil, "203.0.113.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &http.Request{RemoteAddr: tt.remote, Header: http.Header{}}
			if tt.xff != nil {
				req.Header["X-Forwarded-For"] = tt.xff
			}
			if got := tt.r.ClientIP(req); got != tt.want {
				t.Errorf("ClientIP = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPeerHost(t *testing.T) {
	for in, want := range map[string]string{
		"1.2.3.4:80": "1.2.3.4", "[::1]:80": "::1", "::1": "::1", "1.2.3.4": "1.2.3.4", "": "", "host:1": "host",
	} {
		if got := PeerHost(in); got != want {
			t.Errorf("PeerHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkClientIP(b *testing.B) {
	r := New([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	req := &http.Request{RemoteAddr: "10.1.1.1:5000", Header: http.Header{"X-Forwarded-For": {"198.51.100.1, 10.2.2.2"}}}
	b.ReportAllocs()
	for b.Loop() {
		if r.ClientIP(req) != "198.51.100.1" {
			b.Fatal("wrong client")
		}
	}
}
