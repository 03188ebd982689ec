package jwt

import (
	"crypto/sha256"
	"sync"
	"time"
)

// DefaultCacheSize is how many verified tokens a provider remembers.
const DefaultCacheSize = 10000

const cacheShards = 16

// tokenCache remembers verified tokens by the SHA-256 of their text, so a
// client that sends the same token again skips signature verification.
// It is bounded; when a shard is full an expired entry, or else an
// arbitrary one (Go map iteration order is random), makes room. Random
// eviction is close enough to LRU for this load: hot tokens come back and
// are re-added after one verification.
type tokenCache struct {
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[[sha256.Size]byte]*identity
}

func newTokenCache(size int) *tokenCache {
	if size <= 0 {
		return nil
	}
	c := &tokenCache{perShard: max(1, size/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[[sha256.Size]byte]*identity)
	}
	return c
}

// get returns the identity verified for the token with hash h if it may
// still be used at now. A nil cache never hits.
func (c *tokenCache) get(h [sha256.Size]byte, now time.Time) *identity {
	if c == nil {
		return nil
	}
	s := &c.shards[h[0]%cacheShards]
	s.mu.RLock()
	id := s.m[h]
	s.mu.RUnlock()
	if id == nil || !id.usableAt(now) {
		return nil
	}
	return id
}

func (c *tokenCache) put(h [sha256.Size]byte, id *identity, now time.Time) {
	if c == nil {
		return
	}
	s := &c.shards[h[0]%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[h]; !ok && len(s.m) >= c.perShard {
		// Look at a few random entries, prefer an expired one: bounded
		// work per insert even under a flood of distinct tokens.
		var victim [sha256.Size]byte
		seen := 0
		for k, old := range s.m {
			if seen == 0 || !old.usableAt(now) {
				victim = k
			}
			seen++
			if !old.usableAt(now) || seen == 8 {
				break
			}
		}
		delete(s.m, victim)
	}
	s.m[h] = id
}

func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
