// Package clientip finds the address of the client behind a request: the
// connection's peer, or, when the peer is a trusted proxy, the nearest
// untrusted address in X-Forwarded-For (as nginx's real_ip_recursive and
// Envoy's xff_num_trusted_hops do). Rate limits keyed on client_ip and the
// proxy's X-Forwarded-* handling share it, so they agree on whom to trust.
package clientip

import (
	"net/http"
	"net/netip"
	"strings"
)

const headerForwardedFor = "X-Forwarded-For"

// Resolver knows which peers are trusted proxies. The zero value trusts
// nobody, so the client is always the connection's peer.
type Resolver struct {
	trusted []netip.Prefix
}

// New returns a Resolver trusting the peers in trusted.
func New(trusted []netip.Prefix) *Resolver {
	return &Resolver{trusted: trusted}
}

// TrustedPeer reports whether remoteAddr ("host:port", as in
// http.Request.RemoteAddr) is a trusted proxy.
func (r *Resolver) TrustedPeer(remoteAddr string) bool {
	if r == nil || len(r.trusted) == 0 {
		return false
	}
	return r.trustedHost(PeerHost(remoteAddr))
}

func (r *Resolver) trustedHost(host string) bool {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range r.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ClientIP returns the client's address for req without allocating. It is
// the peer's address unless the peer is trusted; then X-Forwarded-For is
// read from the right, skipping trusted hops, and the first untrusted
// address is the client. An entry that is not an IP address stops the
// walk at the last trusted hop, so a forged or garbled header can never
// name an arbitrary client; when every hop is trusted, the leftmost one is
// the client.
func (r *Resolver) ClientIP(req *http.Request) string {
	peer := PeerHost(req.RemoteAddr)
	if r == nil || len(r.trusted) == 0 || !r.trustedHost(peer) {
		return peer
	}
	vals := req.Header[headerForwardedFor]
	last := peer
	for i := len(vals) - 1; i >= 0; i-- {
		v := vals[i]
		for v != "" {
			var hop string
			if j := strings.LastIndexByte(v, ','); j >= 0 {
				hop, v = v[j+1:], v[:j]
			} else {
				hop, v = v, ""
			}
			hop = strings.TrimSpace(hop)
			if hop == "" {
				continue
			}
			if _, err := netip.ParseAddr(hop); err != nil {
				return last
			}
			if !r.trustedHost(hop) {
				return hop
			}
			last = hop
		}
	}
	return last
}

// PeerHost returns the host of a "host:port" or "[v6]:port" address
// without allocating; an address without a port is returned as is.
func PeerHost(addr string) string {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return addr
	}
	if addr[0] != '[' && strings.IndexByte(addr[:i], ':') >= 0 {
		// A bare IPv6 address.
		return addr
	}
	host := addr[:i]
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return host
}
