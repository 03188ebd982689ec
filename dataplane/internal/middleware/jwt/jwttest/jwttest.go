// Package jwttest mints tokens for tests of code behind the jwt
// middleware. It signs with go-jose, not the library that verifies them,
// so a test cannot pass because both sides share a mistake.
package jwttest

import (
	"testing"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
)

// HS256 returns claims signed with secret under HS256, with key id "k1".
// claims is anything go-jose serializes: josejwt.Claims or a map.
func HS256(t testing.TB, secret string, claims any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(secret)}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := josejwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
