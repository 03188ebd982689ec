package jwt

import (
	"context"
	"strings"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary tokens to the verification path. It must
// never panic and never accept anything but the valid seeds.
func FuzzParse(f *testing.F) {
	clock := newClock()
	p, err := NewProvider(context.Background(), "corp", testSpec(f), testOptions(clock))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(p.Close)
	valid := map[string]bool{}
	for _, alg := range []string{"HS256", "RS256", "PS384", "ES256", "ES512", "EdDSA"} {
		tok := mintStd(f, alg, validClaims(clock.Now()))
		valid[tok] = true
		f.Add(tok)
		parts := strings.Split(tok, ".")
		f.Add(parts[0] + "." + parts[1] + ".")
		f.Add(parts[0] + ".e30." + parts[2])
	}
	f.Add(rawToken(`{"alg":"none"}`, `{"exp":9999999999}`, nil))
	f.Add(rawToken(`{"alg":"HS256","kid":"rsa"}`, `{"exp":9999999999}`, []byte("x")))
	f.Add(rawToken(`{"alg":"ES256","crit":["b64"],"b64":false}`, `{}`, []byte("x")))
	f.Add(rawToken(`[]`, `[]`, nil))
	f.Add("..")
	f.Add("a.b.c.d")
	f.Add("")

	f.Fuzz(func(t *testing.T, token string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		id, aerr := p.verify(ctx, token)
		if aerr == nil {
			if !valid[token] {
				t.Fatalf("accepted a token nobody signed: %q", token)
			}
			if id == nil || id.claims == nil {
				t.Fatal("accepted without an identity")
			}
			return
		}
		if aerr.status != 401 || aerr.code != "invalid_token" || aerr.desc == "" {
			t.Fatalf("rejection %+v", aerr)
		}
		if len(token) > 8 && strings.Contains(aerr.desc, token) {
			t.Fatal("description echoes the token")
		}
	})
}
