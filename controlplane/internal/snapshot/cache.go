package snapshot

import "sync"

// Cache holds the current snapshot and tells subscribers about new ones.
// The zero value is not usable; call NewCache.
type Cache struct {
	mu      sync.Mutex
	current *Snapshot
	subs    map[chan *Snapshot]struct{}
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{subs: make(map[chan *Snapshot]struct{})}
}

// Current returns the latest snapshot, or nil before the first Set.
func (c *Cache) Current() *Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Set makes s current and offers it to every subscriber. A snapshot that
// is not newer than the current one is ignored (a relist may observe the
// same version again); Set reports whether s became current. Set never
// blocks on a subscriber.
func (c *Cache) Set(s *Snapshot) bool {
	if s == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil && s.Version() <= c.current.Version() {
		return false
	}
	c.current = s
	for ch := range c.subs {
		offer(ch, s)
	}
	return true
}

// Subscribe returns a channel that always holds the latest snapshot not
// yet received: a slow subscriber skips intermediate versions instead of
// holding up the publisher. The current snapshot, if any, is already in
// the channel. Call cancel when done; the channel is never closed.
func (c *Cache) Subscribe() (updates <-chan *Snapshot, cancel func()) {
	ch := make(chan *Snapshot, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil {
		ch <- c.current
	}
	c.subs[ch] = struct{}{}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.subs, ch)
	}
}

// offer replaces whatever ch holds with s. Only Set sends, under c.mu, so
// after draining there is room.
func offer(ch chan *Snapshot, s *Snapshot) {
	select {
	case <-ch:
	default:
	}
	ch <- s
}
