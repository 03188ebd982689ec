package server

// Idle returns the number of connections l counts as idle, for tests that
// must wait for the server to have marked a connection idle.
func Idle(l *ConnLimiter) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for e := l.idle.head; e != nil; e = e.next {
		n++
	}
	return n
}
