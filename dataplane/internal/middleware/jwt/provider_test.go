package jwt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestVerifyEveryAlgorithm(t *testing.T) {
	clock := newClock()
	p := newTestProvider(t, testSpec(t), testOptions(clock))
	k := keys(t)
	for _, alg := range supportedAlgorithms {
		key, kid := k.signingKey(alg)
		for _, tc := range []struct {
			name    string
			headers map[string]any
		}{
			{"kid", map[string]any{"kid": kid}},
			{"no kid", nil},
		} {
			t.Run(alg+"/"+tc.name, func(t *testing.T) {
				tok := mint(t, alg, key, tc.headers, validClaims(clock.Now()))
				id, err := p.verify(context.Background(), tok)
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				if sub, _ := id.claims.Claim("sub"); sub != "user-42" {
					t.Errorf("sub = %q", sub)
				}
				if id.consumer != "user-42" || !id.hasConsumer {
					t.Errorf("consumer = %q, %v", id.consumer, id.hasConsumer)
				}
			})
		}
	}
}

// TestAlgorithmAllowList: a provider verifies only what it allows, and a
// token of an allowed algorithm still needs a key of that family.
func TestAlgorithmAllowList(t *testing.T) {
	clock := newClock()
	spec := testSpec(t)
	spec.Algorithms = []string{"ES256"}
	p := newTestProvider(t, spec, testOptions(clock))
	for _, alg := range supportedAlgorithms {
		t.Run(alg, func(t *testing.T) {
			_, err := p.verify(context.Background(), mintStd(t, alg, validClaims(clock.Now())))
			if alg == "ES256" {
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				return
			}
			if err != errAlgorithm {
				t.Fatalf("verify = %v, want %v", err, errAlgorithm)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	clock := newClock()
	now := clock.Now()
	k := keys(t)

	// The attacker's own keys and key set.
	attackerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	attacker := newJWKSServer(t, jwkOf(&attackerKey.PublicKey, "evil", "ES256"))
	attackerJWK := jwkOf(&attackerKey.PublicKey, "", "ES256")
	attackerCert := selfSigned(t, attackerKey)

	with := func(edit func(map[string]any)) map[string]any {
		c := validClaims(now)
		edit(c)
		return c
	}
	rsaPEM := pemOf(t, &k.rsa.PublicKey)
	valid := mintStd(t, "RS256", validClaims(now))
	parts := strings.Split(valid, ".")

	tests := []struct {
		name  string
		spec  func(*meridianv1.JWTProviderSpec)
		token string
		want  *authError
	}{
		// alg none, in any case, with and without a signature.
		{name: "alg none", token: rawToken(`{"alg":"none","typ":"JWT"}`, `{"sub":"x"}`, nil), want: errAlgorithm},
		{name: "alg None", token: rawToken(`{"alg":"None"}`, `{"sub":"x"}`, nil), want: errAlgorithm},
		{name: "alg NONE", token: rawToken(`{"alg":"NONE"}`, `{"sub":"x"}`, nil), want: errAlgorithm},
		{name: "alg nOnE with signature", token: rawToken(`{"alg":"nOnE","kid":"hs"}`, `{"sub":"x"}`, []byte("sig")), want: errAlgorithm},
		{name: "alg missing", token: rawToken(`{"typ":"JWT"}`, `{"sub":"x"}`, []byte("sig")), want: errAlgorithm},
		{name: "alg not a string", token: rawToken(`{"alg":["RS256"]}`, `{"sub":"x"}`, []byte("sig")), want: errAlgorithm},
		{name: "alg unknown", token: rawToken(`{"alg":"HS1024"}`, `{"sub":"x"}`, []byte("sig")), want: errAlgorithm},

		// RS→HS confusion: HS256 signed with the RSA public key PEM as
		// the HMAC secret.
		{name: "HS256 with RSA PEM as secret, kid rsa", token: mint(t, "HS256", []byte(rsaPEM), map[string]any{"kid": "rsa"}, validClaims(now)), want: errKidMismatch},
		{name: "HS256 with RSA PEM as secret, no kid", token: mint(t, "HS256", []byte(rsaPEM), nil, validClaims(now)), want: errSignature},
		{
			name:  "HS256 with RSA PEM as secret, RSA-only provider",
			spec:  func(s *meridianv1.JWTProviderSpec) { s.Algorithms = []string{"RS256", "HS256"}; s.Keys = s.Keys[1:2] },
			token: mint(t, "HS256", []byte(rsaPEM), nil, validClaims(now)),
			want:  errNoKey,
		},
		{
			name:  "HS256 with RSA PEM as secret, HS not allowed",
			spec:  func(s *meridianv1.JWTProviderSpec) { s.Algorithms = []string{"RS256"} },
			token: mint(t, "HS256", []byte(rsaPEM), map[string]any{"kid": "rsa"}, validClaims(now)),
			want:  errAlgorithm,
		},

		// kid naming a key of another type or curve.
		{name: "ES256 with kid of RSA key", token: mint(t, "ES256", k.p256, map[string]any{"kid": "rsa"}, validClaims(now)), want: errKidMismatch},
		{name: "RS256 with kid of EC key", token: mint(t, "RS256", k.rsa, map[string]any{"kid": "p256"}, validClaims(now)), want: errKidMismatch},
		{name: "ES384 with kid of P-256 key", token: mint(t, "ES384", k.p384, map[string]any{"kid": "p256"}, validClaims(now)), want: errKidMismatch},
		{name: "EdDSA with kid of HMAC key", token: mint(t, "EdDSA", k.ed, map[string]any{"kid": "hs"}, validClaims(now)), want: errKidMismatch},
		{name: "HS256 with kid of Ed25519 key", token: mint(t, "HS256", k.secret, map[string]any{"kid": "ed"}, validClaims(now)), want: errKidMismatch},
		{name: "unknown kid", token: mint(t, "ES256", k.p256, map[string]any{"kid": "nope"}, validClaims(now)), want: errUnknownKid},
		{name: "kid not a string", token: mint(t, "ES256", k.p256, map[string]any{"kid": 7}, validClaims(now)), want: errMalformed},

		// Keys offered by the token itself are never used.
		{name: "jku to attacker key set", token: mint(t, "ES256", attackerKey, map[string]any{"kid": "evil", "jku": attacker.URL}, validClaims(now)), want: errUnknownKid},
		{name: "x5u to attacker key set", token: mint(t, "ES256", attackerKey, map[string]any{"kid": "evil", "x5u": attacker.URL}, validClaims(now)), want: errUnknownKid},
		{name: "jku, kid of a real key", token: mint(t, "ES256", attackerKey, map[string]any{"kid": "p256", "jku": attacker.URL}, validClaims(now)), want: errSignature},
		{name: "embedded jwk", token: mint(t, "ES256", attackerKey, map[string]any{"jwk": attackerJWK}, validClaims(now)), want: errSignature},
		{name: "embedded x5c", token: mint(t, "ES256", attackerKey, map[string]any{"x5c": []string{attackerCert}}, validClaims(now)), want: errSignature},
		{name: "crit header", token: mint(t, "ES256", k.p256, map[string]any{"kid": "p256", "crit": []string{"exp"}, "exp": 1}, validClaims(now)), want: errCrit},

		// Signatures.
		{name: "stripped signature", token: parts[0] + "." + parts[1] + ".", want: errSignature},
		{name: "two segments", token: parts[0] + "." + parts[1], want: errMalformed},
		{name: "four segments", token: valid + ".x", want: errMalformed},
		{name: "signature of another token", token: parts[0] + "." + strings.Split(mintStd(t, "RS256", with(func(c map[string]any) { c["sub"] = "admin" })), ".")[1] + "." + parts[2], want: errSignature},
		{name: "other key, same kid", token: mint(t, "RS256", k.rsa2, map[string]any{"kid": "rsa"}, validClaims(now)), want: errSignature},
		{name: "other key, same curve", token: mint(t, "ES256", k.p256b, map[string]any{"kid": "p256"}, validClaims(now)), want: errSignature},
		{name: "padded base64", token: parts[0] + "=." + parts[1] + "." + parts[2], want: errMalformed},
		{name: "empty", token: "", want: errMalformed},
		{name: "1 MiB", token: strings.Repeat("a", 1<<20), want: errTooLarge},
		{name: "1 MiB of dots", token: strings.Repeat(".", 1<<20), want: errTooLarge},

		// Header and claims that are not JSON objects.
		{name: "header array", token: rawToken(`["alg","HS256"]`, `{}`, []byte("s")), want: errMalformed},
		{name: "header string", token: rawToken(`"HS256"`, `{}`, []byte("s")), want: errMalformed},
		{name: "header not JSON", token: rawToken(`{alg:HS256}`, `{}`, []byte("s")), want: errMalformed},
		{name: "header null", token: rawToken(`null`, `{}`, []byte("s")), want: errAlgorithm},
		{name: "signed claims array", token: mintStd(t, "ES256", []byte(`[1,2,3]`)), want: errMalformed},
		{name: "signed claims string", token: mintStd(t, "ES256", []byte(`"sub"`)), want: errMalformed},
		{name: "signed claims number", token: mintStd(t, "ES256", []byte(`42`)), want: errMalformed},
		{name: "signed claims null", token: mintStd(t, "ES256", []byte(`null`)), want: errNoExp},
		{name: "signed claims not JSON", token: mintStd(t, "ES256", []byte(`sub=admin`)), want: errMalformed},

		// Time.
		{name: "expired", token: mintStd(t, "ES256", with(func(c map[string]any) { c["exp"] = now.Add(-31 * time.Second).Unix() })), want: errExpired},
		{name: "expired at exp+skew", token: mintStd(t, "ES256", with(func(c map[string]any) { c["exp"] = now.Add(-30 * time.Second).Unix() })), want: errExpired},
		{name: "no exp", token: mintStd(t, "ES256", with(func(c map[string]any) { delete(c, "exp") })), want: errNoExp},
		{name: "exp a string", token: mintStd(t, "ES256", with(func(c map[string]any) { c["exp"] = "tomorrow" })), want: errBadTime},
		{name: "exp huge", token: mintStd(t, "ES256", with(func(c map[string]any) { c["exp"] = 1e300 })), want: errBadTime},
		{name: "exp negative", token: mintStd(t, "ES256", with(func(c map[string]any) { c["exp"] = -1 })), want: errBadTime},
		{name: "nbf in the future", token: mintStd(t, "ES256", with(func(c map[string]any) { c["nbf"] = now.Add(31 * time.Second).Unix() })), want: errNotYet},
		{name: "iat in the future", token: mintStd(t, "ES256", with(func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() })), want: errIssuedFuture},
		{name: "nbf an object", token: mintStd(t, "ES256", with(func(c map[string]any) { c["nbf"] = map[string]any{} })), want: errBadTime},

		// Issuer and audience.
		{name: "wrong iss", token: mintStd(t, "ES256", with(func(c map[string]any) { c["iss"] = "https://evil.example.com" })), want: errIssuer},
		{name: "no iss", token: mintStd(t, "ES256", with(func(c map[string]any) { delete(c, "iss") })), want: errIssuer},
		{name: "iss array", token: mintStd(t, "ES256", with(func(c map[string]any) { c["iss"] = []string{testIssuer} })), want: errIssuer},
		{name: "wrong aud", token: mintStd(t, "ES256", with(func(c map[string]any) { c["aud"] = "billing" })), want: errAudience},
		{name: "wrong aud array", token: mintStd(t, "ES256", with(func(c map[string]any) { c["aud"] = []string{"billing", "ops"} })), want: errAudience},
		{name: "no aud", token: mintStd(t, "ES256", with(func(c map[string]any) { delete(c, "aud") })), want: errAudience},
		{name: "aud number", token: mintStd(t, "ES256", with(func(c map[string]any) { c["aud"] = 1 })), want: errAudience},

		// A claim that would inject a header.
		{name: "forwarded claim with newline", token: mintStd(t, "ES256", with(func(c map[string]any) { c["sub"] = "u\r\nX-Admin: 1" })), want: errClaimHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t)
			if tc.spec != nil {
				tc.spec(spec)
			}
			p := newTestProvider(t, spec, testOptions(clock))
			id, err := p.verify(context.Background(), tc.token)
			if err != tc.want {
				t.Fatalf("verify = %v, %v; want %v", id, err, tc.want)
			}
			if (tc.token != "" && strings.Contains(err.desc, tc.token)) || strings.Contains(err.desc, string(k.secret)) {
				t.Errorf("description %q echoes the token or the secret", err.desc)
			}
		})
	}
	if n := attacker.hits.Load(); n != 0 {
		t.Errorf("attacker's key set fetched %d times", n)
	}
}

func TestVerifyAccepts(t *testing.T) {
	clock := newClock()
	now := clock.Now()
	with := func(edit func(map[string]any)) map[string]any {
		c := validClaims(now)
		edit(c)
		return c
	}
	tests := []struct {
		name   string
		spec   func(*meridianv1.JWTProviderSpec)
		claims map[string]any
	}{
		{name: "aud array with one match", claims: with(func(c map[string]any) { c["aud"] = []string{"billing", "other"} })},
		{name: "expired within skew", claims: with(func(c map[string]any) { c["exp"] = now.Add(-29 * time.Second).Unix() })},
		{name: "nbf within skew", claims: with(func(c map[string]any) { c["nbf"] = now.Add(29 * time.Second).Unix() })},
		{name: "fractional exp", claims: with(func(c map[string]any) { c["exp"] = float64(now.Unix()) + 0.5 })},
		{name: "no nbf, no iat", claims: with(func(c map[string]any) { delete(c, "nbf"); delete(c, "iat") })},
		{name: "no issuer configured", spec: func(s *meridianv1.JWTProviderSpec) { s.Issuer = "" }, claims: with(func(c map[string]any) { c["iss"] = "anyone" })},
		{name: "no audiences configured", spec: func(s *meridianv1.JWTProviderSpec) { s.Audiences = nil }, claims: with(func(c map[string]any) { delete(c, "aud") })},
		{name: "forwarded claim absent", claims: with(func(c map[string]any) { delete(c, "tenant") })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t)
			if tc.spec != nil {
				tc.spec(spec)
			}
			p := newTestProvider(t, spec, testOptions(clock))
			if _, err := p.verify(context.Background(), mintStd(t, "ES256", tc.claims)); err != nil {
				t.Fatalf("verify: %v", err)
			}
		})
	}
}

func TestNewProviderErrors(t *testing.T) {
	clock := newClock()
	k := keys(t)
	small, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		edit    func(*meridianv1.JWTProviderSpec, *Options)
		wantErr string
	}{
		{name: "no algorithms", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.Algorithms = nil }, wantErr: "allow-list is empty"},
		{name: "alg none", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.Algorithms = []string{"none"} }, wantErr: `"none" is not supported`},
		{name: "no keys", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.Keys = nil }, wantErr: "one of jwksURI or keys"},
		{name: "secretEnv unset", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.Keys[0].SecretEnv = "NOPE" }, wantErr: "environment variable NOPE is not set"},
		{
			name: "secret too short",
			edit: func(_ *meridianv1.JWTProviderSpec, o *Options) {
				o.LookupEnv = func(string) (string, bool) { return "short-secret", true }
			},
			wantErr: "shorter than 32 bytes",
		},
		{
			name: "secretFile unreadable",
			edit: func(s *meridianv1.JWTProviderSpec, _ *Options) {
				s.Keys[0] = &meridianv1.JWTKey{Kid: "hs", SecretFile: "/run/secrets/jwt"}
			},
			wantErr: "secretFile",
		},
		{name: "bad PEM", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.Keys[1].PublicKeyPem = "nope" }, wantErr: "no PEM block"},
		{name: "P-224 key", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.Keys[1].PublicKeyPem = pemOf(t, &small.PublicKey) }, wantErr: "P-224"},
		{name: "bad tokenFrom", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.TokenFrom = []string{"body:token"} }, wantErr: "tokenFrom[0]"},
		{name: "bad forward header", edit: func(s *meridianv1.JWTProviderSpec, _ *Options) { s.ForwardClaims = map[string]string{"sub": "X User"} }, wantErr: "not a header name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec, opts := testSpec(t), testOptions(clock)
			tc.edit(spec, &opts)
			p, err := NewProvider(context.Background(), "corp", spec, opts)
			if err == nil {
				p.Close()
				t.Fatal("NewProvider succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), string(k.secret)) || strings.Contains(err.Error(), "short-secret") {
				t.Errorf("error %q contains a secret", err)
			}
		})
	}
}

func TestSecretFile(t *testing.T) {
	clock := newClock()
	spec := testSpec(t)
	spec.Keys[0] = &meridianv1.JWTKey{Kid: "hs", SecretFile: "/run/secrets/jwt"}
	opts := testOptions(clock)
	opts.ReadFile = func(path string) ([]byte, error) {
		if path != "/run/secrets/jwt" {
			return nil, errors.New("unexpected path")
		}
		// Written with echo: the trailing newline is not the secret's.
		return append(append([]byte{}, keys(t).secret...), '\n'), nil
	}
	p := newTestProvider(t, spec, opts)
	if _, err := p.verify(context.Background(), mintStd(t, "HS512", validClaims(clock.Now()))); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

func TestHMACKeyLengthPerAlgorithm(t *testing.T) {
	clock := newClock()
	secret32 := strings.Repeat("k", 32)
	spec := testSpec(t)
	opts := testOptions(clock)
	opts.LookupEnv = func(string) (string, bool) { return secret32, true }
	p := newTestProvider(t, spec, opts)
	// go-jose refuses to sign HS384 with a 32-byte key, so build the
	// token by hand: RFC 7518 §3.2 forbids the key for HS384 whatever
	// the signature.
	if _, err := p.verify(context.Background(), mint(t, "HS256", []byte(secret32), map[string]any{"kid": "hs"}, validClaims(clock.Now()))); err != nil {
		t.Fatalf("HS256 with a 32-byte key: %v", err)
	}
	tok := rawToken(`{"alg":"HS384","kid":"hs"}`, `{}`, make([]byte, 48))
	if _, err := p.verify(context.Background(), tok); err != errKidMismatch {
		t.Fatalf("HS384 with a 32-byte key: %v, want %v", err, errKidMismatch)
	}
}

func TestMatches(t *testing.T) {
	clock := newClock()
	spec := testSpec(t)
	p := newTestProvider(t, spec, testOptions(clock))
	same := proto.Clone(spec).(*meridianv1.JWTProviderSpec)
	changed := proto.Clone(spec).(*meridianv1.JWTProviderSpec)
	changed.ClockSkew = durationpb.New(time.Minute)
	spec.Issuer = "mutated after NewProvider"
	for _, tc := range []struct {
		name string
		spec *meridianv1.JWTProviderSpec
		pn   string
		want bool
	}{
		{"same", same, "corp", true},
		{"other name", same, "other", false},
		{"changed", changed, "corp", false},
	} {
		if got := p.Matches(tc.pn, tc.spec); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func selfSigned(t testing.TB, key *ecdsa.PrivateKey) string {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<33, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	// x5c carries standard base64 DER, not PEM.
	return base64.StdEncoding.EncodeToString(der)
}
