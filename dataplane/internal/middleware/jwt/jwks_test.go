package jwt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func jwksSpec(uri string, interval time.Duration) *meridianv1.JWTProviderSpec {
	spec := &meridianv1.JWTProviderSpec{
		Issuer:     testIssuer,
		Audiences:  []string{testAudience},
		Algorithms: []string{"RS256", "ES256", "EdDSA"},
		JwksUri:    uri,
	}
	if interval > 0 {
		spec.JwksRefreshInterval = durationpb.New(interval)
	}
	return spec
}

func jwksProvider(t *testing.T, srv *jwksServer, clock *fakeClock, interval time.Duration) *Provider {
	t.Helper()
	opts := testOptions(clock)
	opts.HTTPClient = srv.Client()
	return newTestProvider(t, jwksSpec(srv.URL, interval), opts)
}

func wantVerify(t *testing.T, p *Provider, tok string, want *authError) {
	t.Helper()
	if _, err := p.verify(context.Background(), tok); err != want {
		t.Fatalf("verify = %v, want %v", err, want)
	}
}

// TestJWKSRotation: the issuer replaces its key; the new kid is accepted
// with no config push, through the on-demand refresh an unknown kid
// triggers, at most once per jwksMinGap.
func TestJWKSRotation(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.rsa.PublicKey, "k1", "RS256"))
	p := jwksProvider(t, srv, clock, time.Hour)
	claims := validClaims(clock.Now())

	// The first request waits for the initial fetch.
	wantVerify(t, p, mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, claims), nil)
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}

	srv.set(t, jwkOf(&k.p256.PublicKey, "k2", "ES256"))
	next := mint(t, "ES256", k.p256, map[string]any{"kid": "k2"}, claims)
	// Too soon after the last fetch: no refetch, the kid is unknown.
	wantVerify(t, p, next, errUnknownKid)
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1 (refresh within the minimum gap)", n)
	}
	clock.Advance(jwksMinGap + time.Second)
	wantVerify(t, p, next, nil)
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
	// The retired key no longer verifies new tokens.
	clock.Advance(jwksMinGap + time.Second)
	wantVerify(t, p, mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, validClaims(clock.Now())), errUnknownKid)
}

// TestJWKSBackgroundRefresh: with a short interval the key set follows the
// issuer without any token asking for it.
func TestJWKSBackgroundRefresh(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.rsa.PublicKey, "k1", ""))
	p := jwksProvider(t, srv, clock, 20*time.Millisecond)
	wantVerify(t, p, mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, validClaims(clock.Now())), nil)

	srv.set(t, jwkOf(k.ed.Public(), "k2", ""))
	before := srv.hits.Load()
	deadline := time.Now().Add(10 * time.Second)
	for srv.hits.Load() < before+2 {
		if time.Now().After(deadline) {
			t.Fatal("no background refresh")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The fake clock never moved, so the on-demand path is closed: only
	// the background refresh can have brought k2.
	if got := p.jwks.current().byKid["k2"]; got == nil {
		t.Fatal("k2 not in the key set after background refreshes")
	}
	wantVerify(t, p, mint(t, "EdDSA", k.ed, map[string]any{"kid": "k2"}, validClaims(clock.Now())), nil)
}

// TestJWKSEndpointFailing: a failing endpoint leaves the cached set in
// use.
func TestJWKSEndpointFailing(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.rsa.PublicKey, "k1", "RS256"))
	p := jwksProvider(t, srv, clock, time.Hour)
	wantVerify(t, p, mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, validClaims(clock.Now())), nil)

	srv.fail.Store(true)
	clock.Advance(jwksMinGap + time.Second)
	// Unknown kid: one refresh, which fails.
	wantVerify(t, p, mint(t, "ES256", k.p256, map[string]any{"kid": "k2"}, validClaims(clock.Now())), errUnknownKid)
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
	// A token not seen before, signed with the cached key, still passes.
	c := validClaims(clock.Now())
	c["sub"] = "someone-else"
	wantVerify(t, p, mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, c), nil)

	// Garbage from the endpoint is a failure too.
	srv.fail.Store(false)
	b := []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)
	srv.body.Store(&b)
	clock.Advance(jwksMinGap + time.Second)
	wantVerify(t, p, mint(t, "ES256", k.p256, map[string]any{"kid": "k3"}, validClaims(clock.Now())), errUnknownKid)
	c["sub"] = "a-third"
	wantVerify(t, p, mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, c), nil)
}

// TestJWKSStartsDown: the issuer is unreachable when the provider starts;
// tokens fail until it answers, then pass with no config push.
func TestJWKSStartsDown(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.rsa.PublicKey, "k1", "RS256"))
	srv.fail.Store(true)
	p := jwksProvider(t, srv, clock, time.Hour)
	tok := mint(t, "RS256", k.rsa, map[string]any{"kid": "k1"}, validClaims(clock.Now()))
	wantVerify(t, p, tok, errUnknownKid)
	wantVerify(t, p, mint(t, "RS256", k.rsa, nil, validClaims(clock.Now())), errNoKey)

	srv.fail.Store(false)
	clock.Advance(jwksMinGap + time.Second)
	wantVerify(t, p, tok, nil)
}

// TestJWKSRandomKidFlood: tokens with random kids cost at most one fetch
// per jwksMinGap, however many arrive.
func TestJWKSRandomKidFlood(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.p256.PublicKey, "k1", "ES256"))
	p := jwksProvider(t, srv, clock, time.Hour)
	wantVerify(t, p, mint(t, "ES256", k.p256, map[string]any{"kid": "k1"}, validClaims(clock.Now())), nil)

	flood := func() {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 25 {
					kid := make([]byte, 8)
					_, _ = rand.Read(kid)
					tok := mint(t, "ES256", k.p256, map[string]any{"kid": hex.EncodeToString(kid)}, validClaims(clock.Now()))
					if _, err := p.verify(context.Background(), tok); err != errUnknownKid {
						t.Errorf("verify = %v, want %v", err, errUnknownKid)
					}
				}
			})
		}
		wg.Wait()
	}
	for round, want := range []int64{1, 2, 2, 3} {
		if round == 1 || round == 3 {
			clock.Advance(jwksMinGap + time.Second)
		}
		flood()
		if n := srv.hits.Load(); n != want {
			t.Fatalf("round %d: fetches = %d, want %d", round, n, want)
		}
	}
}

// TestJWKSCloseWhileWaiting: Close returns while a request waits on a
// fetch that hangs, and the waiting request gives up.
func TestJWKSCloseWhileWaiting(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.p256.PublicKey, "k1", "ES256"))
	block := make(chan struct{})
	srv.block.Store(&block)
	defer close(block)
	opts := testOptions(clock)
	opts.HTTPClient = srv.Client()
	p, err := NewProvider(context.Background(), "corp", jwksSpec(srv.URL, time.Hour), opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *authError)
	go func() {
		_, err := p.verify(context.Background(), mint(t, "ES256", k.p256, map[string]any{"kid": "k1"}, validClaims(clock.Now())))
		done <- err
	}()
	p.Close()
	p.Close() // idempotent
	if err := <-done; err != errUnknownKid {
		t.Fatalf("verify after Close = %v, want %v", err, errUnknownKid)
	}
}

// TestJWKSRequestContext: a request whose context ends stops waiting for
// a slow fetch.
func TestJWKSRequestContext(t *testing.T) {
	k := keys(t)
	clock := newClock()
	srv := newJWKSServer(t, jwkOf(&k.p256.PublicKey, "k1", "ES256"))
	block := make(chan struct{})
	srv.block.Store(&block)
	p := jwksProvider(t, srv, clock, time.Hour)
	defer close(block)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.verify(ctx, mint(t, "ES256", k.p256, map[string]any{"kid": "k1"}, validClaims(clock.Now()))); err != errUnknownKid {
		t.Fatalf("verify = %v, want %v", err, errUnknownKid)
	}
}

func TestParseJWKS(t *testing.T) {
	k := keys(t)
	tests := []struct {
		name     string
		body     string
		wantKids []string
		wantErr  string
		skipped  int
	}{
		{name: "not JSON", body: `nope`, wantErr: "decode JWKS"},
		{name: "no keys", body: `{"keys":[]}`, wantErr: "no usable keys"},
		{name: "keys not an array", body: `{"keys":{}}`, wantErr: "decode JWKS"},
		{name: "oct is never taken from a JWKS", body: `{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`, wantErr: "no usable keys", skipped: 1},
		{
			name: "odd keys skipped, good ones kept",
			body: `{"keys":[
				{"kty":"EC","kid":"off-curve","crv":"P-256","x":"` + strings.Repeat("A", 43) + `","y":"` + strings.Repeat("A", 43) + `"},
				{"kty":"EC","kid":"p224","crv":"P-224","x":"AA","y":"AA"},
				{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
				{"kty":"RSA","kid":"tiny","n":"AQAB","e":"AQAB"},
				{"kty":"OKP","kid":"x25519","crv":"X25519","x":"AA"},
				{"kty":"RSA","kid":"pinned-wrong","alg":"ES256",` + rsaMembers(t) + `},
				[1,2],
				` + jwkJSON(t, jwkOf(k.ed.Public(), "ed", "EdDSA")) + `,
				` + jwkJSON(t, jwkOf(&k.p384.PublicKey, "p384", "")) + `
			]}`,
			wantKids: []string{"ed", "p384"},
			skipped:  7,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, skipped, err := parseJWKS([]byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if len(skipped) != tc.skipped {
				t.Errorf("skipped = %q, want %d", skipped, tc.skipped)
			}
			var kids []string
			for _, k := range got {
				kids = append(kids, k.kid)
			}
			if strings.Join(kids, ",") != strings.Join(tc.wantKids, ",") {
				t.Errorf("kids = %v, want %v", kids, tc.wantKids)
			}
		})
	}
}

func jwkJSON(t *testing.T, k interface{ MarshalJSON() ([]byte, error) }) string {
	t.Helper()
	b, err := k.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rsaMembers returns the "n" and "e" members of the test RSA key.
func rsaMembers(t *testing.T) string {
	var m map[string]string
	if err := json.Unmarshal([]byte(jwkJSON(t, jwkOf(&keys(t).rsa.PublicKey, "", ""))), &m); err != nil {
		t.Fatal(err)
	}
	return `"n":"` + m["n"] + `","e":"` + m["e"] + `"`
}
