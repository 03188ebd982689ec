package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons of connections_rejected_total: why the traffic listeners'
// connection cap closed a connection.
const (
	// ConnIdleReclaimed: an idle keep-alive connection closed to make
	// room for a new one.
	ConnIdleReclaimed = "idle_reclaimed"
	// ConnAtCapacity: a new connection closed at once, none being idle.
	ConnAtCapacity = "at_capacity"
)

// Connections records the traffic listeners' client connections. Its
// methods are called once per connection event, never per request; a
// nil *Connections records nothing.
type Connections struct {
	open      atomic.Int64
	reclaimed atomic.Uint64
	refused   atomic.Uint64

	mu        sync.Mutex
	malformed map[string]uint64 // by reason; the listener's reasons are a fixed set
}

// SetOpen records the number of open client connections.
func (c *Connections) SetOpen(n int) {
	if c != nil {
		c.open.Store(int64(n))
	}
}

// Reclaimed counts an idle connection closed to admit a new one.
func (c *Connections) Reclaimed() {
	if c != nil {
		c.reclaimed.Add(1)
	}
}

// Refused counts a new connection closed because the cap was reached
// and no connection was idle.
func (c *Connections) Refused() {
	if c != nil {
		c.refused.Add(1)
	}
}

// Malformed counts a request the traffic listener refused for its framing
// (server.GuardConfig), by reason. It is called once per refused
// request, which also closes its connection.
func (c *Connections) Malformed(reason string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	if c.malformed == nil {
		c.malformed = map[string]uint64{}
	}
	c.malformed[reason]++
	c.mu.Unlock()
}

// Connections returns the recorder of the traffic listeners'
// connections. Nil on a nil Metrics.
func (m *Metrics) Connections() *Connections {
	if m == nil {
		return nil
	}
	return m.conns
}

// collect sends both reasons always, 0 included: the set is fixed, and a
// rate() over a series that exists from the start needs no special case.
func (c *Connections) collect(m *Metrics, ch chan<- prometheus.Metric) {
	gauge(ch, m.connsOpen, float64(c.open.Load()))
	counter(ch, m.connsRejected, c.reclaimed.Load(), ConnIdleReclaimed)
	counter(ch, m.connsRejected, c.refused.Load(), ConnAtCapacity)
	c.mu.Lock()
	defer c.mu.Unlock()
	for reason, n := range c.malformed {
		counter(ch, m.malformed, n, reason)
	}
}
