package jwt

import (
	"fmt"
	"testing"
	"time"
)

// TestCacheHit: a token verified once is not verified again while valid,
// and never used past exp, before nbf or past the cache lifetime.
func TestCacheHit(t *testing.T) {
	clock := newClock()
	p := newTestProvider(t, testSpec(t), testOptions(clock))
	start := clock.Now()
	c := validClaims(start)
	c["exp"] = start.Add(time.Minute).Unix()
	tok := mintStd(t, "RS256", c)
	wantVerify(t, p, tok, nil)

	// Take every key away: only the cache can vouch for the token now.
	keys := p.static
	p.static = newKeySet(nil)
	for _, tc := range []struct {
		name string
		at   time.Time
		want *authError
	}{
		{"cached", start.Add(time.Second), nil},
		{"cached within skew after exp", start.Add(time.Minute + 29*time.Second), nil},
		{"not past exp+skew", start.Add(time.Minute + 30*time.Second), errUnknownKid},
		{"not before nbf-skew (clock stepped back)", start.Add(-31 * time.Second), errUnknownKid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock.mu.Lock()
			clock.t = tc.at
			clock.mu.Unlock()
			wantVerify(t, p, tok, tc.want)
		})
	}

	// With the keys back, the uncached path gives the precise answer.
	p.static = keys
	clock.mu.Lock()
	clock.t = start.Add(time.Hour)
	clock.mu.Unlock()
	wantVerify(t, p, tok, errExpired)
}

// TestCacheLifetime: entries also end after the refresh interval, so a key
// the issuer withdraws stops vouching for cached tokens.
func TestCacheLifetime(t *testing.T) {
	clock := newClock()
	p := newTestProvider(t, testSpec(t), testOptions(clock))
	c := validClaims(clock.Now())
	c["exp"] = clock.Now().Add(24 * time.Hour).Unix()
	tok := mintStd(t, "ES256", c)
	wantVerify(t, p, tok, nil)
	p.static = newKeySet(nil)
	clock.Advance(DefaultJWKSRefreshInterval - time.Second)
	wantVerify(t, p, tok, nil)
	clock.Advance(2 * time.Second)
	wantVerify(t, p, tok, errUnknownKid)
}

func TestCacheBounded(t *testing.T) {
	clock := newClock()
	for _, tc := range []struct {
		size, tokens, max int
	}{
		{size: 32, tokens: 500, max: 32},
		{size: 1, tokens: 10, max: cacheShards},
		{size: -1, tokens: 10, max: 0},
	} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			opts := testOptions(clock)
			opts.CacheSize = tc.size
			p := newTestProvider(t, testSpec(t), opts)
			for i := range tc.tokens {
				c := validClaims(clock.Now())
				c["jti"] = i
				wantVerify(t, p, mintStd(t, "HS256", c), nil)
			}
			if n := p.cache.len(); n > tc.max || (tc.max > 0 && n == 0) {
				t.Fatalf("cache holds %d entries, want 1..%d", n, tc.max)
			}
		})
	}
}

func TestCachePrefersExpiredVictims(t *testing.T) {
	clock := newClock()
	c := newTokenCache(cacheShards) // one entry per shard
	now := clock.Now()
	var a, b [32]byte
	b[1] = 1 // same shard as a (shard = h[0] % cacheShards)
	c.put(a, &identity{notAfter: now.Add(time.Minute)}, now)
	c.put(b, &identity{notAfter: now.Add(time.Minute)}, now)
	if c.get(a, now) != nil || c.get(b, now) == nil {
		t.Fatal("full shard did not evict the old entry for the new one")
	}
	if got := c.get(b, now.Add(time.Minute)); got != nil {
		t.Fatal("entry used at notAfter")
	}
	var nilCache *tokenCache
	nilCache.put(a, &identity{}, now)
	if nilCache.get(a, now) != nil || nilCache.len() != 0 {
		t.Fatal("disabled cache hit")
	}
}
