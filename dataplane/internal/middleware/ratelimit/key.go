package ratelimit

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"

	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt"
)

type partKind uint8

const (
	partClientIP partKind = iota + 1
	partRoute
	partConsumer
	partHeader
	partClaim
)

// part is one element of a RateLimit's spec.key.
type part struct {
	kind partKind
	name string // canonical header name, or claim name
}

// Key is a compiled spec.key for one route: it turns a request into the
// bucket key its RateLimit counts it under.
//
// A part the request lacks (no such header, no verified token, an empty
// value) is counted under an explicit "missing" value for that part, never
// skipped, so leaving a header out cannot escape a limit. Missing is
// encoded so that it cannot equal any present value: a single-part key uses
// the request's value as is and "" for missing (present values are never
// empty, since empty counts as missing); a composite key writes each part
// as a 0 byte when missing, or a 1 byte, the value's length as a uvarint
// and the value, so neither separators inside values nor missing parts can
// make two different requests share a key.
type Key struct {
	parts []part
	route string
	ip    *clientip.Resolver
}

// ParseKey compiles spec.key for the named route. Parts are client_ip (the
// client's address as ip resolves it: the connection's peer, or the
// forwarded client behind a trusted proxy), route, consumer (the
// JWTProvider's consumerClaim of the verified token), header:<name> and
// claim:<name> (a claim of the verified token). A nil ip trusts no proxy.
func ParseKey(spec []string, route string, ip *clientip.Resolver) (Key, error) {
	if len(spec) == 0 {
		return Key{}, fmt.Errorf("key: at least one part is required")
	}
	k := Key{route: route, ip: ip, parts: make([]part, 0, len(spec))}
	for _, s := range spec {
		var p part
		switch s {
		case "client_ip":
			p.kind = partClientIP
		case "route":
			p.kind = partRoute
		case "consumer":
			p.kind = partConsumer
		default:
			kind, name, ok := strings.Cut(s, ":")
			if !ok || name == "" {
				return Key{}, fmt.Errorf("key part %q: want client_ip, route, consumer, header:<name> or claim:<name>", s)
			}
			switch kind {
			case "header":
				p = part{kind: partHeader, name: http.CanonicalHeaderKey(name)}
			case "claim":
				p = part{kind: partClaim, name: name}
			default:
				return Key{}, fmt.Errorf("key part %q: want client_ip, route, consumer, header:<name> or claim:<name>", s)
			}
		}
		k.parts = append(k.parts, p)
	}
	return k, nil
}

// value returns p's value for r, or "" when r lacks it.
func (k *Key) value(p part, r *http.Request) string {
	switch p.kind {
	case partClientIP:
		return k.ip.ClientIP(r)
	case partRoute:
		return k.route
	case partConsumer:
		v, _ := jwt.ConsumerFrom(r.Context())
		return v
	case partHeader:
		// The name is canonical already; indexing skips Get's
		// canonicalisation. Only the first value counts.
		if vs := r.Header[p.name]; len(vs) > 0 {
			return vs[0]
		}
		return ""
	case partClaim:
		c, ok := jwt.ClaimsFrom(r.Context())
		if !ok {
			return ""
		}
		v, _ := c.Claim(p.name)
		return v
	}
	return ""
}

// single reports whether the key has one part, so value alone is the key
// and building it allocates nothing.
func (k *Key) single() bool { return len(k.parts) == 1 }

// appendComposite appends the composite encoding of r's key to buf.
func (k *Key) appendComposite(buf []byte, r *http.Request) []byte {
	for _, p := range k.parts {
		v := k.value(p, r)
		if v == "" {
			buf = append(buf, 0)
			continue
		}
		buf = append(buf, 1)
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		buf = append(buf, v...)
	}
	return buf
}
