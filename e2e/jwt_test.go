package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
)

// issuer is a real JWKS endpoint whose signing key can be rotated.
type issuer struct {
	mu   sync.Mutex
	key  *rsa.PrivateKey
	kid  string
	hits int
}

func (is *issuer) rotate(t *testing.T, kid string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.key, is.kid = key, kid
}

func (is *issuer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.hits++
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}

// mint signs a token with the issuer's current key (go-jose; the data
// plane verifies with golang-jwt).
func (is *issuer) mint(t *testing.T, sub string) string {
	t.Helper()
	is.mu.Lock()
	key, kid := is.key, is.kid
	is.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := josejwt.Signed(signer).Claims(josejwt.Claims{
		Issuer: "https://issuer.test", Subject: sub, Audience: josejwt.Audience{"api"},
		Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour)),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestJWTWithRotatingJWKS: a route protected by a JWTProvider whose keys
// come from a real JWKS endpoint; the issuer rotates its key mid-test and
// tokens signed with the new key are accepted with no config push.
func TestJWTWithRotatingJWKS(t *testing.T) {
	skipShort(t)
	is := &issuer{}
	is.rotate(t, "key-1")
	jwks := serve(t, is)
	echo := startEcho(t, "echo-1")
	config := oneRoute("http", []string{echo}, "") + fmt.Sprintf(`  auth: {jwt: sso}
---
apiVersion: meridian/v1
kind: JWTProvider
metadata: {name: sso}
spec:
  issuer: https://issuer.test
  audiences: [api]
  algorithms: [RS256]
  jwksURI: http://%s/jwks.json
  jwksRefreshInterval: 1s
  forwardClaims: {sub: X-User-ID}
`, jwks)
	dp := gatewayFor(t, config)
	before, err := dp.config()
	if err != nil {
		t.Fatal(err)
	}

	call := func(token string, header map[string]string) (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+dp.addr+"/me", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body strings.Builder
		_, _ = fmt.Fprint(&body, readAll(resp))
		return resp.StatusCode, resp.Header, body.String()
	}

	code, hdr, _ := call("", nil)
	if code != 401 || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("no token: %d %q, want 401 with a Bearer challenge", code, hdr.Get("WWW-Authenticate"))
	}
	code, _, body := call(is.mint(t, "alice"), map[string]string{"X-User-ID": "forged"})
	if code != 200 || !strings.Contains(body, `"X-User-Id":["alice"]`) || strings.Contains(body, "forged") || strings.Contains(body, "Authorization") {
		t.Fatalf("token signed with key-1: %d %s", code, body)
	}

	// The issuer rotates; the data plane learns the new key from the
	// endpoint (background refresh, or on demand for the unknown kid,
	// rate-limited to one fetch per 10s) without any config push.
	is.rotate(t, "key-2")
	bob := is.mint(t, "bob")
	eventually(t, "token signed with the rotated key accepted", func() error {
		code, _, body := call(bob, nil)
		if code != 200 || !strings.Contains(body, `"X-User-Id":["bob"]`) {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	after, err := dp.config()
	if err != nil {
		t.Fatal(err)
	}
	if after.Version != before.Version || after.SnapshotsReceived != before.SnapshotsReceived {
		t.Errorf("key rotation needed a config push: %+v → %+v", before, after)
	}
	// A token signed by a key the issuer never published stays out.
	stranger := &issuer{}
	stranger.rotate(t, "key-2")
	if code, hdr, _ := call(stranger.mint(t, "mallory"), nil); code != 401 || !strings.Contains(hdr.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("token with a forged key: %d %q", code, hdr.Get("WWW-Authenticate"))
	}
}

func readAll(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
