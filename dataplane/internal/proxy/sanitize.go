package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
)

// The client's request header is cleaned once, as the request enters the
// gateway: before any middleware forwards JWT claims, before the request
// id, the X-Forwarded-* headers and the route's header policy are set.
// What the gateway sets afterwards therefore always reaches the upstream:
// a client can neither have it removed (by naming it in Connection) nor
// shadow it under a name an upstream folds into the same variable (CGI
// and WSGI map both X-User-ID and X_User_ID to HTTP_X_USER_ID).

const headerConnection = "Connection"

// errTooManyHeaders is the access log's error of a request sanitize
// refused for its number of header fields.
const errTooManyHeaders = "too_many_headers"

// sanitize removes from r's header what a client must not send upstream:
// the headers its Connection header names (hop-by-hop for this hop only,
// and a way to strip gateway headers further on), header names with an
// underscore unless h allows them, and the client-address headers of a
// peer that is not a trusted proxy. It allocates only when Connection
// names something besides connection options.
//
// It reports false, leaving the header half cleaned, when the request has
// more header fields than h.maxHeaders: the caller answers 431. The
// fields (every value line; Host is not in r.Header) are counted in the
// loop that runs anyway, before Connection can have any removed, so a
// client cannot hide fields from the count by listing them there.
func (h *Handler) sanitize(r *http.Request) bool {
	hdr := r.Header
	fields := 0
	addressed := false // a header claims a client address or a hop
	for k, v := range hdr {
		fields += len(v)
		switch {
		case !h.underscores && strings.IndexByte(k, '_') >= 0:
			delete(hdr, k) // deleting during range is safe
		case clientAddressHeader(k):
			addressed = true
		}
	}
	if h.maxHeaders > 0 && fields > h.maxHeaders {
		return false
	}
	if conn := hdr[headerConnection]; len(conn) > 0 {
		dropConnectionListed(hdr, conn)
	}
	// Connection may have named a client-address header that is gone now;
	// dropClientAddresses then finds nothing more to remove.
	if addressed && !h.ip.TrustedPeer(r.RemoteAddr) {
		dropClientAddresses(hdr)
	}
	return true
}

// dropConnectionListed removes the headers conn (the client's Connection
// values) names, except connection options, and reduces Connection to
// those options, so that nothing later (middleware, the lean path,
// ReverseProxy) sees a client-listed name and drops a header of that name
// the gateway set.
func dropConnectionListed(hdr http.Header, conn []string) {
	if onlyOptions(conn) {
		return // the common case ("keep-alive", "Upgrade"): nothing to do
	}
	var kept []string
	for _, v := range conn {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			tok = textproto.TrimString(tok)
			switch {
			case tok == "":
			case connectionOption(tok):
				kept = append(kept, tok)
			default:
				delete(hdr, http.CanonicalHeaderKey(tok))
			}
		}
	}
	if len(kept) == 0 {
		delete(hdr, headerConnection)
		return
	}
	hdr[headerConnection] = []string{strings.Join(kept, ", ")}
}

// onlyOptions reports whether every token of conn is a connection option
// (or empty), without allocating.
func onlyOptions(conn []string) bool {
	for _, v := range conn {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if tok = textproto.TrimString(tok); tok != "" && !connectionOption(tok) {
				return false
			}
		}
	}
	return true
}

// connectionOption reports whether a Connection token, in any case, is one
// a client may keep: "close" and the standard hop-by-hop headers (those
// hopByHop names), which both forwarding paths drop anyway. They stay
// listed because ReverseProxy relays a WebSocket handshake only when
// Connection names Upgrade.
func connectionOption(tok string) bool {
	for _, o := range [...]string{
		"Close", "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	} {
		if strings.EqualFold(tok, o) {
			return true
		}
	}
	return false
}

// clientAddressHeader reports whether a canonical header name carries the
// client's address or the hops before the gateway: X-Forwarded-*,
// Forwarded, and the single-address headers proxies and CDNs set. Only a
// trusted proxy's are believed.
func clientAddressHeader(k string) bool {
	switch k {
	case headerForwardedFor, headerForwardedProto, headerForwardedHost, headerForwardedRFC,
		"X-Real-Ip", "True-Client-Ip", "Cf-Connecting-Ip", "X-Client-Ip", "Fastly-Client-Ip":
		return true
	}
	return false
}

// dropClientAddresses removes every client-address header: the peer is
// not a trusted proxy, so routes replace X-Forwarded-* with what this hop
// sees and the upstream gets no address the client made up.
func dropClientAddresses(hdr http.Header) {
	for k := range hdr {
		if clientAddressHeader(k) {
			delete(hdr, k)
		}
	}
}
