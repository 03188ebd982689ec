package jwt

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Claims are the verified claims of a request's token. They are shared by
// every request that presents the same token and must not be modified; the
// type offers reads only.
type Claims struct {
	m map[string]any
}

// Claim returns a claim as a string: strings as they are, numbers in their
// JSON text, booleans as true/false, arrays and objects as compact JSON. A
// claim that is absent or null reports false. *Claims satisfies
// upstream.Claims, so the gateway can hand it to upstream.WithClaims.
func (c *Claims) Claim(name string) (string, bool) {
	if c == nil {
		return "", false
	}
	v, ok := c.m[name]
	if !ok {
		return "", false
	}
	return claimString(v)
}

func claimString(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(v), true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// items returns a claim read as a list: the words of a space-separated
// string (OAuth scope) or the scalar members of an array (roles, groups).
func (c *Claims) items(name string) []string {
	switch v := c.m[name].(type) {
	case string:
		return strings.Fields(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, item := range v {
			switch item.(type) {
			case []any, map[string]any:
				continue
			}
			if s, ok := claimString(item); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// identity is what a verified token establishes. It is immutable once
// built, cached, and shared by every request that presents the token.
type identity struct {
	claims      *Claims
	consumer    string
	hasConsumer bool
	headers     []header
	// The token may be used in [notBefore, notAfter): nbf and iat minus
	// the clock skew, exp plus the skew (and, in the cache, no later than
	// the provider's cache lifetime).
	notBefore time.Time
	notAfter  time.Time
}

type header struct{ name, value string }

func (id *identity) usableAt(now time.Time) bool {
	return !now.Before(id.notBefore) && now.Before(id.notAfter)
}

type identityKey struct{}

func withIdentity(ctx context.Context, id *identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// ConsumerFrom returns the consumer identity (the provider's consumerClaim)
// of the request's verified token; false when the route has no JWT auth,
// the provider names no consumerClaim or the token lacks it.
func ConsumerFrom(ctx context.Context) (string, bool) {
	id, ok := identityFrom(ctx)
	if !ok || !id.hasConsumer {
		return "", false
	}
	return id.consumer, true
}

// ClaimsFrom returns the verified claims of the request's token.
func ClaimsFrom(ctx context.Context) (*Claims, bool) {
	id, ok := identityFrom(ctx)
	if !ok {
		return nil, false
	}
	return id.claims, true
}

// requirement is one RouteAuth.requireClaims entry.
type requirement struct {
	claim    string
	values   []string
	contains []string
}

func (r *requirement) met(c *Claims) bool {
	if len(r.values) > 0 {
		v, ok := c.Claim(r.claim)
		return ok && slices.Contains(r.values, v)
	}
	have := c.items(r.claim)
	for _, want := range r.contains {
		if !slices.Contains(have, want) {
			return false
		}
	}
	return true
}

// Latest NumericDate accepted: 9999-12-31T23:59:59Z. Larger values are
// garbage, and would overflow time arithmetic.
const maxNumericDate = 253402300799

// numericDate reads an RFC 7519 NumericDate claim. present is false when
// the claim is absent; err is set when it is not a number in range.
func numericDate(m map[string]any, name string) (t time.Time, present bool, err error) {
	v, ok := m[name]
	if !ok {
		return time.Time{}, false, nil
	}
	var f float64
	switch v := v.(type) {
	case json.Number:
		f, err = v.Float64()
		if err != nil {
			return time.Time{}, true, errBadTime
		}
	case float64:
		f = v
	default:
		return time.Time{}, true, errBadTime
	}
	if math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return time.Time{}, true, errBadTime
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true, nil
}
