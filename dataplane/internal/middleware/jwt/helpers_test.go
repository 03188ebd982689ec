package jwt

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Tokens are minted with go-jose, an implementation other than the
// golang-jwt that verifies them.

// testKeys are the private keys of every algorithm family, generated once
// per test binary (RSA generation is slow under -race).
type testKeys struct {
	secret           []byte
	rsa, rsa2        *rsa.PrivateKey
	p256, p384, p521 *ecdsa.PrivateKey
	p256b            *ecdsa.PrivateKey
	ed               ed25519.PrivateKey
}

var loadKeys = sync.OnceValue(func() *testKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	k := &testKeys{secret: []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")}
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.p256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.p256b, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.p384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	k.p521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return k
})

func keys(t testing.TB) *testKeys {
	t.Helper()
	return loadKeys()
}

func pemOf(t testing.TB, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// signingKey returns the private key that signs alg, and the kid the
// standard test provider knows its public key by.
func (k *testKeys) signingKey(alg string) (any, string) {
	switch alg {
	case "HS256", "HS384", "HS512":
		return k.secret, "hs"
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		return k.rsa, "rsa"
	case "ES256":
		return k.p256, "p256"
	case "ES384":
		return k.p384, "p384"
	case "ES512":
		return k.p521, "p521"
	case "EdDSA":
		return k.ed, "ed"
	}
	panic("no key for " + alg)
}

const (
	testIssuer   = "https://sso.example.com"
	testAudience = "api"
	secretEnv    = "JWT_SECRET"
)

// testSpec is a provider that knows every test key inline and allows
// every algorithm.
func testSpec(t testing.TB) *meridianv1.JWTProviderSpec {
	k := keys(t)
	return &meridianv1.JWTProviderSpec{
		Issuer:     testIssuer,
		Audiences:  []string{testAudience, "other"},
		Algorithms: supportedAlgorithms,
		Keys: []*meridianv1.JWTKey{
			{Kid: "hs", SecretEnv: secretEnv},
			{Kid: "rsa", PublicKeyPem: pemOf(t, &k.rsa.PublicKey)},
			{Kid: "p256", PublicKeyPem: pemOf(t, &k.p256.PublicKey)},
			{Kid: "p384", PublicKeyPem: pemOf(t, &k.p384.PublicKey)},
			{Kid: "p521", PublicKeyPem: pemOf(t, &k.p521.PublicKey)},
			{Kid: "ed", PublicKeyPem: pemOf(t, k.ed.Public())},
		},
		ClockSkew:     durationpb.New(30 * time.Second),
		ForwardClaims: map[string]string{"sub": "X-User-ID", "tenant": "X-Tenant"},
		ConsumerClaim: "sub",
	}
}

// fakeClock is a settable clock shared by a test and its provider.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func testOptions(clock *fakeClock) Options {
	return Options{
		Now:    clock.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		LookupEnv: func(name string) (string, bool) {
			if name == secretEnv {
				return string(loadKeys().secret), true
			}
			return "", false
		},
		ReadFile: func(string) ([]byte, error) { return nil, io.ErrUnexpectedEOF },
	}
}

func newTestProvider(t testing.TB, spec *meridianv1.JWTProviderSpec, opts Options) *Provider {
	t.Helper()
	p, err := NewProvider(context.Background(), "corp", spec, opts)
	if err != nil {
		t.Fatalf("NewProvider: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// claims returns valid claims at clock time now.
func validClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss":    testIssuer,
		"aud":    testAudience,
		"sub":    "user-42",
		"tenant": "acme",
		"scope":  "read write",
		"roles":  []string{"admin", "dev"},
		"iat":    now.Unix(),
		"nbf":    now.Unix(),
		"exp":    now.Add(time.Hour).Unix(),
	}
}

// mint signs claims (any JSON value, or raw []byte payload) with go-jose.
func mint(t testing.TB, alg string, key any, headers map[string]any, claims any) string {
	t.Helper()
	payload, ok := claims.([]byte)
	if !ok {
		var err error
		if payload, err = json.Marshal(claims); err != nil {
			t.Fatal(err)
		}
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range headers {
		opts = opts.WithHeader(jose.HeaderKey(k), v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key}, opts)
	if err != nil {
		t.Fatalf("NewSigner(%s): %v", alg, err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mintStd mints a token for alg with the standard key and kid.
func mintStd(t testing.TB, alg string, claims any) string {
	t.Helper()
	key, kid := keys(t).signingKey(alg)
	return mint(t, alg, key, map[string]any{"kid": kid}, claims)
}

// rawToken assembles a token from a JSON header, a payload and a
// signature, for what no honest signer produces.
func rawToken(header, payload string, sig []byte) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(sig)
}

// jwksServer serves a JWK Set that a test can rotate or break, and counts
// the fetches.
type jwksServer struct {
	*httptest.Server
	body atomic.Pointer[[]byte]
	fail atomic.Bool
	hits atomic.Int64
	// block, when set, holds every request until closed.
	block atomic.Pointer[chan struct{}]
}

func newJWKSServer(t testing.TB, keys ...jose.JSONWebKey) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.set(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if b := s.block.Load(); b != nil {
			select {
			case <-*b:
			case <-r.Context().Done():
				return
			}
		}
		if s.fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(*s.body.Load())
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(t testing.TB, keys ...jose.JSONWebKey) {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	s.body.Store(&b)
}

func jwkOf(pub any, kid, alg string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"}
}
