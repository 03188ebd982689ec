package upstream

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
)

// Ring sizing for consistent_hash. A target of weight w gets about
// w × ringPointsPerWeight points, so with ordinary weights a target's
// points do not depend on the other targets and adding or removing one
// target moves only the keys that land on its points (about 1/N). Very
// large weights are scaled down to keep the ring within maxRingPoints.
const (
	ringPointsPerWeight = 160
	maxRingPoints       = 1 << 16
)

type clientIPKey struct{}

type claimsKey struct{}

// WithClientIP records the client's address as the proxy determined it
// (the trusted X-Forwarded-For hop, for instance). consistent_hash with
// hashOn client_ip uses it in preference to the request's RemoteAddr.
func WithClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

// ClientIP returns the address recorded by WithClientIP.
func ClientIP(ctx context.Context) (string, bool) {
	ip, ok := ctx.Value(clientIPKey{}).(string)
	return ip, ok && ip != ""
}

// Claims is what consistent_hash with hashOn claim:<name> reads: the
// verified token claims the authentication middleware records with
// WithClaims.
type Claims interface {
	// Claim returns a claim as a string, or false when it is absent.
	Claim(name string) (string, bool)
}

// WithClaims records the request's verified claims.
func WithClaims(ctx context.Context, c Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// ClaimsFrom returns the claims recorded by WithClaims.
func ClaimsFrom(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(Claims)
	return c, ok && c != nil
}

type hashSource int

const (
	hashHeader hashSource = iota
	hashCookie
	hashClientIP
	hashClaim
	hashParam
)

// hashKey is a parsed spec.loadBalancer.hashOn.
type hashKey struct {
	source hashSource
	name   string // canonical header name, cookie, claim or parameter name
}

func parseHashKey(s string) (hashKey, error) {
	if s == "client_ip" {
		return hashKey{source: hashClientIP}, nil
	}
	prefix, name, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return hashKey{}, fmt.Errorf("%q is not one of header:<name>, cookie:<name>, client_ip, claim:<name>, param:<name>", s)
	}
	switch prefix {
	case "header":
		return hashKey{source: hashHeader, name: textproto.CanonicalMIMEHeaderKey(name)}, nil
	case "cookie":
		return hashKey{source: hashCookie, name: name}, nil
	case "claim":
		return hashKey{source: hashClaim, name: name}, nil
	case "param":
		return hashKey{source: hashParam, name: name}, nil
	}
	return hashKey{}, fmt.Errorf("%q is not one of header:<name>, cookie:<name>, client_ip, claim:<name>, param:<name>", s)
}

// value extracts the key from r; "" means the request has none.
func (k hashKey) value(r *http.Request) string {
	switch k.source {
	case hashHeader:
		if v := r.Header[k.name]; len(v) > 0 {
			return v[0]
		}
	case hashCookie:
		return cookieValue(r.Header, k.name)
	case hashClientIP:
		if ip, ok := ClientIP(r.Context()); ok {
			return ip
		}
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			return host
		}
		return r.RemoteAddr
	case hashClaim:
		if c, ok := ClaimsFrom(r.Context()); ok {
			v, _ := c.Claim(k.name)
			return v
		}
	case hashParam:
		return r.PathValue(k.name)
	}
	return ""
}

// cookieValue finds one cookie without parsing the others, which
// r.Cookie would (and allocate for).
func cookieValue(h http.Header, name string) string {
	for _, line := range h["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			k, v, ok := strings.Cut(part, "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return ""
}

// ring is consistent hashing on a ring of virtual nodes (Ketama). A key
// goes to the first point at or after its hash, walking on past points of
// unavailable targets, so an ejected target's keys spread over the others
// and come back when it does. Requests without a key use fallback.
type ring struct {
	targets  []*Target
	points   []ringPoint
	key      hashKey
	fallback picker
}

type ringPoint struct {
	hash   uint64
	target int
}

func newRing(ts []*Target, key hashKey, fallback picker) *ring {
	var total int64
	for _, t := range ts {
		total += t.weight
	}
	scale := float64(ringPointsPerWeight)
	if total > 0 && float64(total)*scale > maxRingPoints {
		scale = maxRingPoints / float64(total)
	}
	r := &ring{targets: ts, key: key, fallback: fallback}
	for i, t := range ts {
		n := max(1, int(math.Round(float64(t.weight)*scale)))
		for v := range n {
			r.points = append(r.points, ringPoint{hash: pointHash(t.addr, uint64(v)), target: i})
		}
	}
	slices.SortFunc(r.points, func(a, b ringPoint) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		// Addresses are unique, so equal hashes still order the same way
		// on every data plane.
		return strings.Compare(ts[a.target].addr, ts[b.target].addr)
	})
	return r
}

func (rg *ring) pick(r *http.Request, now func() int64) *Target {
	if len(rg.points) == 0 {
		return nil
	}
	var key string
	if r != nil {
		key = rg.key.value(r)
	}
	if key == "" {
		return rg.fallback.pick(r, now)
	}
	h := stringHash(key)
	lo, hi := 0, len(rg.points)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if rg.points[mid].hash < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	for k := range len(rg.points) {
		i := lo + k
		if i >= len(rg.points) {
			i -= len(rg.points)
		}
		if t := rg.targets[rg.points[i].target]; t.available(now) {
			return t
		}
	}
	return nil
}

// Hashes are FNV-1a finished with a 64-bit mixer: fixed, so every data
// plane maps a key to the same target, and well spread on the ring.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func stringHash(s string) uint64 {
	h := uint64(fnvOffset)
	for i := range len(s) {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return mix64(h)
}

func pointHash(addr string, v uint64) uint64 {
	h := uint64(fnvOffset)
	for i := range len(addr) {
		h ^= uint64(addr[i])
		h *= fnvPrime
	}
	for range 8 {
		h ^= v & 0xff
		h *= fnvPrime
		v >>= 8
	}
	return mix64(h)
}

// mix64 is the SplitMix64 / MurmurHash3 finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
