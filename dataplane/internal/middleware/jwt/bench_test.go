package jwt

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// BenchmarkVerify measures Provider.verify: "uncached" pays for parsing
// and the signature on every call, "cached" is a client resending its
// token.
func BenchmarkVerify(b *testing.B) {
	clock := newClock()
	for _, alg := range []string{"HS256", "RS256", "ES256", "EdDSA"} {
		tok := mintStd(b, alg, validClaims(clock.Now()))
		for _, mode := range []struct {
			name string
			size int
		}{{"uncached", -1}, {"cached", 0}} {
			b.Run(alg+"/"+mode.name, func(b *testing.B) {
				opts := testOptions(clock)
				opts.CacheSize = mode.size
				p := newTestProvider(b, testSpec(b), opts)
				ctx := context.Background()
				if _, err := p.verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					if _, err := p.verify(ctx, tok); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkMiddleware is the whole per-request path of a route with JWT
// auth (RS256, cached): extract, verify, strip, forward claims.
func BenchmarkMiddleware(b *testing.B) {
	clock := newClock()
	p := newTestProvider(b, testSpec(b), testOptions(clock))
	h, err := New(p, &meridianv1.RouteAuth{Jwt: "corp"}, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	if err != nil {
		b.Fatal(err)
	}
	auth := "Bearer " + mintStd(b, "RS256", validClaims(clock.Now()))
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r.Header.Set("Authorization", auth)
		h.ServeHTTP(w, r)
	}
}
