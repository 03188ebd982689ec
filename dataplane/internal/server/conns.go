package server

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
)

// DefaultMaxConnections is the dataplane's --max-connections default. A
// connection cap keeps a flood of connections from exhausting file
// descriptors (accept then fails and every client waits); idle ones are
// reclaimed at the cap, so it only refuses clients when this many
// connections are busy at once, which is far beyond a normal load. It is
// well under the open-file limit Go raises itself to (usually 524288 or
// more): each proxied request may hold an upstream connection too.
const DefaultMaxConnections = 10000

// warnInterval is the least time between two "connection limit reached"
// warnings, so that a flood at the cap costs one log line per interval.
const warnInterval = 10 * time.Second

// ConnLimits configures a ConnLimiter.
type ConnLimits struct {
	// Max is the most client connections open at once on the listeners
	// the limiter wraps, together. 0: no cap (connections are still
	// counted).
	Max int
	// Logger gets the warning when the cap is reached, at most once per
	// 10 s; nil: no warnings.
	Logger *slog.Logger
	// Metrics counts open connections and the ones the cap closed; nil:
	// none.
	Metrics *metrics.Metrics
}

// ConnLimiter caps the traffic listeners' connections as nginx does: at
// the cap, a new connection closes the connection that has been idle the
// longest (a keep-alive connection between requests), and only when none
// is idle is the new connection closed at once. Wrap each listener with
// Listener and install ConnState as the http.Server's hook (New does,
// from Config.Connections).
//
// The cost is per connection event, never per request body or byte: one
// map entry per connection, and a mutex held for a few pointer updates
// when a connection turns active or idle. Connections taken over by a
// handler (WebSocket upgrades) leave the count, as net/http stops
// tracking them. A nil *ConnLimiter limits and counts nothing.
type ConnLimiter struct {
	max int
	log *slog.Logger
	rec *metrics.Connections

	mu    sync.Mutex
	conns map[net.Conn]*tracked // by the connection Accept returned
	idle  idleList              // idle connections, longest idle first
	// Events since the last warning, and when that was.
	reclaimed, refused int
	lastWarn           time.Time
}

// tracked is one open connection.
type tracked struct {
	conn       net.Conn
	idle       bool
	prev, next *tracked // neighbours in the idle list while idle
}

// NewConnLimiter returns a limiter with the limits c. It warns on
// c.Logger when c.Max is more than half the process's open-file limit:
// connections would then fail for want of descriptors before the cap
// could reclaim any.
func NewConnLimiter(c ConnLimits) *ConnLimiter {
	if c.Max > 0 && c.Logger != nil {
		if limit, ok := openFileLimit(); ok && uint64(c.Max) > limit/2 {
			c.Logger.Warn("--max-connections is more than half the open-file limit; raise the limit (ulimit -n, LimitNOFILE) or lower the cap",
				"max_connections", c.Max, "open_file_limit", limit)
		}
	}
	return &ConnLimiter{
		max: c.Max, log: c.Logger, rec: c.Metrics.Connections(),
		conns: map[net.Conn]*tracked{},
	}
}

// Listener returns ln with its connections counted against the cap; ln
// itself when l is nil. Wrap the plain listener before Serve and the TLS
// one before ServeTLS (which adds TLS around the wrapper).
func (l *ConnLimiter) Listener(ln net.Listener) net.Listener {
	if l == nil {
		return ln
	}
	return limitedListener{Listener: ln, limiter: l}
}

// Open returns the number of connections counted as open.
func (l *ConnLimiter) Open() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// limitedListener admits each accepted connection through its limiter.
// Refused connections are closed here and never reach the http.Server:
// no goroutine, no TLS handshake, no log line of net/http's for them.
type limitedListener struct {
	net.Listener
	limiter *ConnLimiter
}

// Accept returns the next connection the limiter admits.
func (ll limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ll.limiter.admit(c) {
			return c, nil
		}
	}
}

// ConnState is the http.Server ConnState hook that tracks which
// connections are idle and forgets closed and hijacked ones.
func (l *ConnLimiter) ConnState(c net.Conn, state http.ConnState) {
	if l == nil || state == http.StateNew {
		return // new connections were counted by Accept
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn() // the connection Accept returned
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.conns[c]
	if e == nil {
		return // reclaimed already, or not accepted through Listener
	}
	switch state {
	case http.StateIdle:
		l.idle.remove(e) // HTTP/2 may report idle twice
		l.idle.pushBack(e)
	case http.StateActive:
		l.idle.remove(e)
	case http.StateClosed, http.StateHijacked:
		l.forgetLocked(e)
	}
}

// admit counts c, a connection just accepted, and reports whether to keep
// it: below the cap it is kept; at the cap, the longest-idle connection
// is closed to make room, and without one c is closed.
func (l *ConnLimiter) admit(c net.Conn) bool {
	l.mu.Lock()
	victim, room := l.makeRoomLocked()
	if room {
		l.conns[c] = &tracked{conn: c}
		l.rec.SetOpen(len(l.conns))
	}
	w := l.noteLocked(victim != nil, !room)
	l.mu.Unlock()

	// Closing the accepted connection itself, not a TLS layer over it:
	// no close_notify alert to write, which could block on a client that
	// does not read. The server's goroutine of a reclaimed connection
	// then fails its read and ends.
	if victim != nil {
		victim.Close()
		l.rec.Reclaimed()
	}
	if !room {
		c.Close()
		l.rec.Refused()
	}
	if w.due {
		// Counts since the previous warning, at least warnInterval ago.
		l.log.Warn("connection limit reached: idle connections closed to admit new ones, new ones refused when none was idle",
			"max_connections", l.max, "idle_reclaimed", w.reclaimed, "refused", w.refused)
	}
	return room
}

// makeRoomLocked reports whether a new connection fits: below the cap it
// does; at the cap it does once the longest-idle connection, returned as
// victim and already forgotten, is closed.
func (l *ConnLimiter) makeRoomLocked() (victim net.Conn, room bool) {
	if l.max <= 0 || len(l.conns) < l.max {
		return nil, true
	}
	e := l.idle.head
	if e == nil {
		return nil, false
	}
	l.forgetLocked(e)
	return e.conn, true
}

// forgetLocked stops tracking e.
func (l *ConnLimiter) forgetLocked(e *tracked) {
	l.idle.remove(e)
	delete(l.conns, e.conn)
	l.rec.SetOpen(len(l.conns))
}

// warning is a due "connection limit reached" log line, with the events
// since the previous one.
type warning struct {
	due                bool
	reclaimed, refused int
}

// noteLocked adds an admit's events to those since the last warning and
// returns a due warning when the last one is warnInterval old (or there
// was none).
func (l *ConnLimiter) noteLocked(reclaimed, refused bool) warning {
	if !reclaimed && !refused || l.log == nil {
		return warning{}
	}
	if reclaimed {
		l.reclaimed++
	}
	if refused {
		l.refused++
	}
	now := time.Now()
	if !l.lastWarn.IsZero() && now.Sub(l.lastWarn) < warnInterval {
		return warning{}
	}
	w := warning{due: true, reclaimed: l.reclaimed, refused: l.refused}
	l.reclaimed, l.refused, l.lastWarn = 0, 0, now
	return w
}

// idleList is a doubly linked list threaded through the tracked entries,
// so marking a connection idle or active allocates nothing.
type idleList struct{ head, tail *tracked }

// pushBack appends e, which is not in the list, as the latest idle.
func (q *idleList) pushBack(e *tracked) {
	e.idle, e.prev, e.next = true, q.tail, nil
	if q.tail != nil {
		q.tail.next = e
	} else {
		q.head = e
	}
	q.tail = e
}

// remove takes e out of the list if it is in it.
func (q *idleList) remove(e *tracked) {
	if !e.idle {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		q.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		q.tail = e.prev
	}
	e.idle, e.prev, e.next = false, nil, nil
}
