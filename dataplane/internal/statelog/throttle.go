package statelog

import (
	"sync"
	"time"
)

// forgetAfter is how long a key that has lines suppressed is kept without
// any new line: a resource that was removed while flapping does not stay
// in memory for good. Its count is dropped with it.
const forgetAfter = time.Hour

// Throttle is a token bucket per key: a key may have burst lines at once,
// then one more every every (so at most burst + t/every lines over t).
// A line it refuses is counted, and the count is handed to the key's next
// line. Keys cost nothing once their bucket is full again and nothing is
// owed; they are dropped then. It is safe for concurrent use.
//
// It is the generic cell rate algorithm: each key keeps the time at which
// its bucket is full again (tat), which every line pushes back by every;
// a line is allowed while tat is at most (burst-1)×every ahead of now.
type Throttle[K comparable] struct {
	every, tolerance time.Duration

	mu    sync.Mutex
	keys  map[K]*bucket
	swept time.Time
}

type bucket struct {
	tat        time.Time // when the bucket is full again
	suppressed int
}

// NewThrottle returns a Throttle of burst lines per key, one more every
// every. every must be positive and burst at least 1.
func NewThrottle[K comparable](every time.Duration, burst int) *Throttle[K] {
	return &Throttle[K]{every: every, tolerance: time.Duration(burst-1) * every, keys: map[K]*bucket{}}
}

// Allow reports whether a line for key may be written at now and, when it
// may, how many of key's lines were refused since its last one.
func (t *Throttle[K]) Allow(key K, now time.Time) (ok bool, suppressed int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(now)
	b := t.keys[key]
	if b == nil {
		b = &bucket{tat: now}
		t.keys[key] = b
	}
	if b.tat.Before(now) {
		b.tat = now
	}
	if b.tat.Sub(now) > t.tolerance {
		b.suppressed++
		return false, 0
	}
	b.tat = b.tat.Add(t.every)
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// sweep drops, at most once every every, the keys that would start afresh
// anyway (full bucket, nothing owed) and those forgotten. t.mu is held.
func (t *Throttle[K]) sweep(now time.Time) {
	if now.Sub(t.swept) < t.every {
		return
	}
	t.swept = now
	for k, b := range t.keys {
		if !b.tat.After(now) && (b.suppressed == 0 || now.Sub(b.tat) >= forgetAfter) {
			delete(t.keys, k)
		}
	}
}

// len returns the number of keys kept, for tests.
func (t *Throttle[K]) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}
