// Package jwt authenticates requests with JSON Web Tokens: the JWTProvider
// resource (a Provider, built once per resource and kept across config
// pushes that leave it unchanged) and the per-route middleware (New) that
// applies a route's auth to it.
//
// Answers follow RFC 6750. A request without a token gets 401 with
// `WWW-Authenticate: Bearer realm="<provider>"` and no error code (§3.1:
// the client may not know it needs one); a bad token gets 401 with
// error="invalid_token" and a short error_description; a token given more
// than once (two Authorization headers, a repeated query parameter or
// cookie) gets 400 invalid_request, because the gateway and the upstream
// could disagree about which one counts; a valid token that lacks a route's
// required claims gets 403 insufficient_scope. Descriptions never contain
// the token, a claim value or a secret.
//
// Tokens are verified with github.com/golang-jwt/jwt/v5 after this package
// has chosen the key: the algorithm must be in the provider's allow-list,
// the key is chosen by kid among the inline keys and the JWKS, and a key
// only ever verifies algorithms of its own family (key.fits). The jku, x5u,
// jwk and x5c headers are ignored; a crit header is refused. exp is
// required.
package jwt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

type sourceKind int

const (
	fromHeader sourceKind = iota + 1
	fromQuery
	fromCookie
)

// source is one tokenFrom entry.
type source struct {
	kind sourceKind
	name string // canonical for headers
	// bearer: the header carries "Bearer <token>" (Authorization); other
	// headers carry the bare token.
	bearer bool
}

func parseSource(s string) (source, error) {
	kind, name, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return source{}, fmt.Errorf("%q is not header:<name>, query:<name> or cookie:<name>", s)
	}
	switch kind {
	case "header":
		name = http.CanonicalHeaderKey(name)
		return source{kind: fromHeader, name: name, bearer: name == "Authorization"}, nil
	case "query":
		return source{kind: fromQuery, name: name}, nil
	case "cookie":
		return source{kind: fromCookie, name: name}, nil
	}
	return source{}, fmt.Errorf("%q is not header:<name>, query:<name> or cookie:<name>", s)
}

type middleware struct {
	p            *Provider
	next         http.Handler
	require      []requirement
	forwardToken bool
	realm        string // `Bearer realm="<provider>"`
}

// New returns the handler that lets a request through to next only with a
// valid token from p that meets auth's requireClaims. On the way it
// removes the configured token sources from the request unless
// auth.forwardToken (when it keeps only the one the token came from),
// replaces the provider's forwardClaims headers with the token's claims
// (incoming headers of those names are always removed, so a client cannot
// forge them), and records the identity for ConsumerFrom and ClaimsFrom.
// It edits the request's headers in place, as middleware does.
func New(p *Provider, auth *meridianv1.RouteAuth, next http.Handler) (http.Handler, error) {
	switch {
	case p == nil:
		return nil, errors.New("jwt: nil provider")
	case next == nil:
		return nil, errors.New("jwt: nil next handler")
	case auth == nil:
		return nil, errors.New("jwt: nil route auth")
	case auth.GetJwt() != p.name:
		return nil, fmt.Errorf("jwt: route names provider %q, got %q", auth.GetJwt(), p.name)
	}
	m := &middleware{
		p:            p,
		next:         next,
		forwardToken: auth.GetForwardToken(),
		realm:        `Bearer realm="` + descriptionSafe(p.name) + `"`,
	}
	for i, c := range auth.GetRequireClaims() {
		if c.GetClaim() == "" || (len(c.GetValues()) == 0) == (len(c.GetContains()) == 0) {
			return nil, fmt.Errorf("jwt: requireClaims[%d]: a claim and exactly one of values, contains are required", i)
		}
		m.require = append(m.require, requirement{claim: c.GetClaim(), values: c.GetValues(), contains: c.GetContains()})
	}
	return m, nil
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, used, aerr := m.p.token(r)
	if aerr == nil {
		var id *identity
		id, aerr = m.p.verify(r.Context(), token)
		if aerr == nil {
			for i := range m.require {
				if !m.require[i].met(id.claims) {
					aerr = &authError{
						status: http.StatusForbidden,
						code:   "insufficient_scope",
						desc:   "token lacks required claim " + m.require[i].claim,
						reason: metrics.JWTInsufficientScope,
					}
					break
				}
			}
		}
		if aerr == nil {
			m.p.metrics.Record(metrics.JWTOK)
			m.serve(w, r, used, id)
			return
		}
	}
	m.p.metrics.Record(aerr.reason)
	m.p.log.DebugContext(r.Context(), "request rejected", "status", aerr.status, "reason", aerr.desc)
	m.reject(w, aerr)
}

func (m *middleware) serve(w http.ResponseWriter, r *http.Request, used int, id *identity) {
	r = r.WithContext(withIdentity(r.Context(), id))
	for i, src := range m.p.sources {
		if m.forwardToken && i == used {
			continue
		}
		switch src.kind {
		case fromHeader:
			delete(r.Header, src.name)
		case fromQuery:
			if r.URL.RawQuery != "" {
				u := *r.URL
				u.RawQuery = removeQueryParam(u.RawQuery, src.name)
				r.URL = &u
			}
		case fromCookie:
			removeCookie(r.Header, src.name)
		}
	}
	for _, f := range m.p.forward {
		delete(r.Header, f.header)
	}
	for _, h := range id.headers {
		r.Header[h.name] = []string{h.value}
	}
	m.next.ServeHTTP(w, r)
}

// token finds the request's token: the first source in tokenFrom order
// that is present. used is that source's index.
func (p *Provider) token(r *http.Request) (token string, used int, err *authError) {
	for i, src := range p.sources {
		var vals []string
		switch src.kind {
		case fromHeader:
			vals = r.Header[src.name]
		case fromQuery:
			vals = queryParam(r.URL.RawQuery, src.name)
		case fromCookie:
			for _, c := range r.CookiesNamed(src.name) {
				vals = append(vals, c.Value)
			}
		}
		if len(vals) == 0 {
			continue
		}
		if len(vals) > 1 {
			return "", i, errMultipleTokens
		}
		v := strings.TrimSpace(vals[0])
		if src.bearer {
			scheme, rest, _ := strings.Cut(v, " ")
			if !strings.EqualFold(scheme, "Bearer") {
				// Another scheme (Basic, ...) is no bearer token.
				continue
			}
			v = strings.TrimLeft(rest, " ")
		}
		if v == "" {
			if src.bearer {
				return "", i, errMalformed
			}
			continue
		}
		return v, i, nil
	}
	return "", -1, errNoToken
}

// queryParam returns the values of the query parameter name, unescaped,
// without parsing the whole query into a map.
func queryParam(raw, name string) []string {
	var vals []string
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k != name {
			if uk, err := url.QueryUnescape(k); err != nil || uk != name {
				continue
			}
		}
		if uv, err := url.QueryUnescape(v); err == nil {
			v = uv
		}
		vals = append(vals, v)
	}
	return vals
}

// removeQueryParam drops every name=... pair and keeps the rest of the
// query byte for byte.
func removeQueryParam(raw, name string) string {
	var b strings.Builder
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, _, _ := strings.Cut(pair, "=")
		if uk, err := url.QueryUnescape(k); k == name || (err == nil && uk == name) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(pair)
	}
	return b.String()
}

// removeCookie drops every cookie called name from the Cookie headers and
// keeps the other cookies as they were.
func removeCookie(h http.Header, name string) {
	lines := h["Cookie"]
	if len(lines) == 0 {
		return
	}
	out := lines[:0:0]
	for _, line := range lines {
		var kept []string
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			k, _, _ := strings.Cut(part, "=")
			if part == "" || strings.TrimSpace(k) == name {
				continue
			}
			kept = append(kept, part)
		}
		if len(kept) > 0 {
			out = append(out, strings.Join(kept, "; "))
		}
	}
	if len(out) == 0 {
		delete(h, "Cookie")
		return
	}
	h["Cookie"] = out
}

func (m *middleware) reject(w http.ResponseWriter, e *authError) {
	desc := descriptionSafe(e.desc)
	challenge := m.realm
	code := e.code
	if code != "" {
		challenge += `, error="` + code + `", error_description="` + desc + `"`
	} else {
		code = "unauthorized"
	}
	h := w.Header()
	h.Set("WWW-Authenticate", challenge)
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	body, _ := json.Marshal(struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}{code, desc})
	w.WriteHeader(e.status)
	_, _ = w.Write(append(body, '\n'))
}

// identityFrom is the context lookup shared by ConsumerFrom and ClaimsFrom.
func identityFrom(ctx context.Context) (*identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*identity)
	return id, ok && id != nil
}
