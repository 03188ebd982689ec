package proxy

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/meridian-gw/meridian/proto/config"
)

// Protocol upgrades (RFC 9110 section 7.8) are tunnelled by allow-list:
// once an upstream answers 101 Switching Protocols the connection is a
// byte stream to that upstream, and nothing that follows on it is
// authenticated or routed by the gateway. A route's spec.upgrades
// (default [websocket]) says which protocols a client may switch to; the
// rest follows Envoy:
//
//   - a request offering none of them is refused, 403, and its connection
//     closed (Envoy's answer to an upgrade its route does not enable, which
//     also closes the connection against payloads smuggled after the
//     request);
//   - an h2c offer is never tunnelled: Upgrade and HTTP2-Settings are
//     removed and the request is forwarded as plain HTTP/1.1, as a server
//     that does not speak h2c treats it (RFC 9113 section 3.1 deprecates
//     the upgrade; Envoy strips it too);
//   - when several protocols are offered the upstream is offered only the
//     first allowed one, so that its 101 can be checked against it;
//   - a 101 for a protocol other than the one offered, or to a request that
//     offered none, is a 502 and nothing is tunnelled (modifyResponse).
//
// Upgrade without "upgrade" in Connection, or on HTTP/1.0, is no upgrade
// request: a sender must list it (RFC 9110 section 7.8) and a server
// ignores it on HTTP/1.0. The stray header is removed; it would not have
// been forwarded anyway.

const (
	headerUpgrade       = "Upgrade"
	headerHTTP2Settings = "Http2-Settings"
	errUpgradeRefused   = "upgrade_not_allowed" // the access log's error
)

var (
	bodyUpgradeNotAllowed = []byte(`{"error":"upgrade not allowed"}` + "\n")
	connectionClose       = []string{"close"}[:1:1]
)

// upgradeSet is the protocols a route allows, lower-case names without
// a version.
type upgradeSet []string

// allows reports whether protocol name (any case) is in the set.
func (s upgradeSet) allows(name string) bool {
	for _, p := range s {
		if strings.EqualFold(p, name) {
			return true
		}
	}
	return false
}

// protocolName returns the name of an Upgrade protocol, "name" or
// "name/version", and whether it is well-formed: tokens both.
func protocolName(p string) (string, bool) {
	name, version, versioned := strings.Cut(p, "/")
	if !httpguts.ValidHeaderFieldName(name) || versioned && !httpguts.ValidHeaderFieldName(version) {
		return "", false
	}
	return name, true
}

// screenUpgrade applies the route's allow-list to r, which has an Upgrade
// header, before anything is forwarded. It reports false when it answered
// r itself (403); otherwise r's header offers at most one allowed
// protocol. It allocates only when it rewrites or refuses the offer.
func (rt *Route) screenUpgrade(w http.ResponseWriter, r *http.Request, newID string) bool {
	h := r.Header
	if !r.ProtoAtLeast(1, 1) || !hasToken(h["Connection"], "upgrade") {
		delete(h, headerUpgrade)
		return true
	}
	var chosen string // the first allowed protocol offered
	h2c, other := false, false
	for _, v := range h[headerUpgrade] {
		for v != "" {
			var p string
			p, v, _ = strings.Cut(v, ",")
			if p = textproto.TrimString(p); p == "" {
				continue
			}
			name, ok := protocolName(p)
			switch {
			case ok && strings.EqualFold(name, config.UpgradeH2C):
				h2c = true
			case ok && chosen == "" && rt.upgrades.allows(name):
				chosen = p
			default:
				other = true
			}
		}
	}
	if h2c {
		delete(h, headerHTTP2Settings)
	}
	switch {
	case chosen != "":
		if u := h[headerUpgrade]; len(u) != 1 || u[0] != chosen {
			h[headerUpgrade] = []string{chosen}
		}
		return true
	case other:
		recorderOf(w).fail(errUpgradeRefused)
		w.Header()["Connection"] = connectionClose
		rt.writeEarly(w, newID, true, http.StatusForbidden, bodyUpgradeNotAllowed)
		return false
	}
	// Only h2c (or nothing) was offered: a plain request.
	delete(h, headerUpgrade)
	return true
}

// checkSwitch is modifyResponse's check of a 101 Switching Protocols: the
// upstream must switch to the protocol it was offered, which screenUpgrade
// allowed. ReverseProxy compares the two as well, but with an error that
// would count as a reset and with no regard for the route's allow-list.
func (rt *Route) checkSwitch(resp *http.Response) error {
	var offered string
	if req := resp.Request; req != nil && hasToken(req.Header["Connection"], "upgrade") {
		if u := req.Header[headerUpgrade]; len(u) > 0 {
			offered = u[0]
		}
	}
	if offered == "" {
		return errSwitching
	}
	var got string
	if hasToken(resp.Header["Connection"], "upgrade") {
		if u := resp.Header[headerUpgrade]; len(u) > 0 {
			got = u[0]
		}
	}
	name, ok := protocolName(got)
	if !strings.EqualFold(got, offered) || !ok || !rt.upgrades.allows(name) {
		return &switchError{got: got, offered: offered}
	}
	return nil
}

// switchError is a 101 for a protocol the request was not offering. It
// is errSwitching to classify: the upstream's protocol error, a 502.
type switchError struct{ got, offered string }

func (e *switchError) Error() string {
	return fmt.Sprintf("upstream switched to protocol %q when %q was requested", e.got, e.offered)
}

func (e *switchError) Is(target error) bool { return target == errSwitching }
