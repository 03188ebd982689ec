package global

import (
	"sync"
	"time"
)

// breakerState is where the breaker in front of Redis stands.
type breakerState int

const (
	breakerClosed   breakerState = iota // calls go to Redis
	breakerOpen                         // calls fail fast until the cool-down ends
	breakerHalfOpen                     // one probe call is in flight
)

// breaker fails calls fast after consecutive Redis failures, so a dead or slow
// Redis costs one timeout per cool-down rather than one per request.
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu       sync.Mutex
	state    breakerState
	failures int
	openedAt time.Time
}

// acquire reports whether a call may go to Redis now. In the open state the
// first caller after the cool-down becomes the single probe.
func (b *breaker) acquire(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerClosed:
		return true
	case breakerOpen:
		if now.Sub(b.openedAt) < b.cooldown {
			return false
		}
		b.state = breakerHalfOpen
		return true
	default: // half-open: the probe is out, everyone else waits for its verdict
		return false
	}
}

// success records a call that reached Redis and reports whether it closed the
// breaker.
func (b *breaker) success() (recovered bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = 0
	if b.state == breakerClosed {
		return false
	}
	b.state = breakerClosed
	return true
}

// failure records a failed call and reports whether it opened the breaker.
func (b *breaker) failure(now time.Time) (opened bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerHalfOpen:
		b.state = breakerOpen
		b.openedAt = now
		return false // already counted as open when it first opened
	case breakerOpen:
		return false
	}
	b.failures++
	if b.failures < b.threshold {
		return false
	}
	b.state = breakerOpen
	b.openedAt = now
	return true
}

// isOpen reports whether calls are currently refused.
func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state != breakerClosed
}
