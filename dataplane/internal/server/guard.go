package server

import (
	"bytes"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The reasons a request is rejected, the labels GuardConfig.Reject gets.
const (
	reasonCLWithTE  = "content_length_with_transfer_encoding"
	reasonObsFold   = "obs_fold"
	reasonBareLF    = "bare_lf"
	reasonBadTE     = "bad_transfer_encoding"
	reasonBadCL     = "bad_content_length"
	reasonBadChunk  = "bad_chunk"
	reasonBadHeader = "bad_header"
)

const (
	// maxGuardHeader is net/http's largest header section by default
	// (DefaultMaxHeaderBytes and the 4096 bytes of slack it reads beyond
	// it). net/http answers 431 before a longer one is done, so the guard
	// stops buffering there rather than hold a line without bound.
	maxGuardHeader = 1<<20 + 4096
	// maxChunkLine matches net/http's chunked reader, which refuses longer
	// chunk-size lines too.
	maxChunkLine = 4096
	// maxTrailer matches net/http, which refuses a trailer section that
	// does not fit its 4 KiB read buffer.
	maxTrailer = 4096
	// maxKeptLine: a line buffer grown beyond this is dropped once its line
	// is done, so that one long header does not pin memory for the life of
	// a keep-alive connection.
	maxKeptLine = 16 << 10
	// postCRLF is how many CR or LF bytes net/http discards before the
	// request line that follows a POST (old clients sent a CRLF after the
	// body, RFC 9112 section 2.2). The guard skips the same bytes, or it
	// would see an empty request line that net/http never does.
	postCRLF = 4
)

// GuardConfig configures the connections GuardListener accepts.
type GuardConfig struct {
	// Framing rejects HTTP/1.x requests whose framing RFC 9112 calls
	// ambiguous and net/http accepts anyway: Content-Length together with
	// Transfer-Encoding, obs-folded header lines, bare LF line endings,
	// malformed Content-Length, Transfer-Encoding or chunks. Such a
	// request is answered 400 by net/http and its connection closed
	// before any handler sees it (a malformed chunk in a body fails the
	// handler's body read instead). Inspection stops for good at the h2c
	// prior-knowledge preface, after a 101 Switching Protocols is written
	// to an Upgrade request, and past a header section larger than
	// net/http accepts (1 MiB + 4 KiB; it answers 431 itself). It reads
	// the bytes on the connection, so it only works on plaintext
	// listeners: under TLS it would see ciphertext, and the caller leaves
	// it off there.
	Framing bool
	// SendTimeout, when positive, bounds every Write on the connection:
	// each must finish within SendTimeout of its start (between 15/16 of
	// it and all of it), as nginx's send_timeout bounds the time between
	// two successive writes rather than the whole response. It cuts
	// clients that stop reading without cutting slow but steady ones.
	// Deadlines set on the connection by others (http.Server.WriteTimeout,
	// a hijacker) still apply: the earlier of the two wins.
	SendTimeout time.Duration
	// Reject, when not nil, is called once for each request Framing
	// rejects, with a reason from a fixed set fit for a metric label:
	// content_length_with_transfer_encoding, obs_fold, bare_lf,
	// bad_transfer_encoding, bad_content_length, bad_chunk, bad_header.
	// It is called on the goroutine reading the connection.
	Reject func(reason string)
}

// GuardListener returns ln with each accepted connection guarded as c
// says; ln itself when c asks for nothing. The connections have a
// NetConn method that returns the connection ln accepted.
//
// On a TLS listener wrap the TCP listener (net/http adds TLS on top) and
// leave Framing off. With a ConnLimiter, wrap this listener with the
// limiter's, not the other way round: the limiter must see the
// connections net/http serves.
func GuardListener(ln net.Listener, c GuardConfig) net.Listener {
	if !c.Framing && c.SendTimeout <= 0 {
		return ln
	}
	return guardListener{Listener: ln, cfg: c}
}

// guardListener wraps the connections its listener accepts.
type guardListener struct {
	net.Listener
	cfg GuardConfig
}

// Accept returns the next connection, guarded.
func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	g := &guardConn{Conn: c, reject: l.cfg.Reject, sendTimeout: l.cfg.SendTimeout}
	if !l.cfg.Framing {
		g.st = statePass
	}
	return g, nil
}

// FramingError is the error a guarded connection's Read returns for a
// request it rejects. net/http answers 400 Bad Request to it while it
// reads a request header; a handler reading a body sees it as the body's
// error.
type FramingError struct {
	// Reason is the label GuardConfig.Reject was given.
	Reason string
}

// Error returns "malformed request: " and the reason.
func (e *FramingError) Error() string { return "malformed request: " + e.Reason }

// guardState is where in the request stream the next byte falls.
type guardState uint8

const (
	stateHeader    guardState = iota // request line and header fields
	stateBody                        // a Content-Length body
	stateChunkSize                   // a chunk-size line
	stateChunkData                   // a chunk's data
	stateChunkEnd                    // the CRLF after a chunk's data
	stateTrailer                     // the trailer section after the last chunk
	statePass                        // not HTTP/1.x any more, or not inspected
)

// request is what the guard knows of the request whose header it reads.
type request struct {
	started bool // the request line was read
	size    int  // bytes of the header section so far
	http10  bool
	post    bool
	upgrade bool
	hasCL   bool
	cl      int64
	chunked bool
	// pending is a fault of the last field line, reported once the next
	// line shows it was not folded: a folded line is reported as such,
	// not as the half of a field it continues.
	pending string
}

// guardConn is a connection GuardListener accepted.
type guardConn struct {
	net.Conn
	reject func(string)

	// Read side: only the reading goroutine uses these, and net/http
	// never reads a connection from two goroutines at once.
	st       guardState
	req      request
	lastPOST bool   // the last request was a POST: skip CR and LF after it
	skip     int    // CR and LF bytes still to skip before a request line
	notFirst bool   // a request line was read: PRI is a preface only first
	remain   int64  // bytes left of a body or a chunk's data
	crlf     int    // bytes of the CRLF after a chunk's data seen
	trailer  int    // bytes of the trailer section so far
	line     []byte // the start of a line the last Read did not finish
	served   bool   // a request's header was let through
	failure  *FramingError
	failed   bool // failure was returned once

	// Write side: writes and deadlines may come from several goroutines.
	sendTimeout time.Duration
	wmu         sync.Mutex
	theirs      time.Time // the write deadline others set; zero: none
	setAt       time.Time // when Write last set the deadline; zero: never
	watch       switchWatch
}

// NetConn returns the connection the listener accepted.
func (c *guardConn) NetConn() net.Conn { return c.Conn }

// Read reads from the connection and checks the bytes before net/http
// gets them. On a fault it returns the bytes of this read before the
// line where the fault shows, and the error on the next call: net/http
// acts on a request only once it has the empty line ending its header,
// so a faulty request never reaches a handler (even when the start of
// its line went out with an earlier read), while a valid one before it
// in the same read does.
func (c *guardConn) Read(p []byte) (int, error) {
	if c.failure != nil {
		return c.readFailed()
	}
	n, err := c.Conn.Read(p)
	if c.st == statePass || n == 0 {
		return n, err
	}
	if c.watch.switched.Load() {
		c.pass()
		return n, err
	}
	keep, reason := c.scan(p[:n])
	if reason == "" {
		return n, err
	}
	c.failure = &FramingError{Reason: reason}
	if c.reject != nil {
		c.reject(reason)
	}
	if keep > 0 {
		return keep, nil
	}
	return c.readFailed()
}

// readFailed returns the framing error once, then io.EOF: net/http
// answers the first with a 400 and closes quietly on the second, so a
// handler that answered its failed body read itself gets no second
// response after its own. Until a request has been let through, though,
// only net/http's header reading can get the error, and the error is
// repeated: its look for the h2c preface at the start of a connection
// swallows the first one.
func (c *guardConn) readFailed() (int, error) {
	if c.failed && c.served {
		return 0, io.EOF
	}
	c.failed = true
	return 0, c.failure
}

// scan runs the framing state machine over b. On a fault it returns the
// reason and how many bytes of b come before the unit at fault (the line,
// or the CRLF after a chunk), 0 when that unit began in an earlier read.
func (c *guardConn) scan(b []byte) (keep int, reason string) {
	for i := 0; i < len(b); {
		if len(c.line) == 0 && c.crlf == 0 {
			keep = i
		}
		var n int
		switch c.st {
		case statePass:
			return 0, ""
		case stateHeader:
			n, reason = c.scanHeader(b[i:])
		case stateBody, stateChunkData:
			n = c.scanData(b[i:])
		case stateChunkEnd:
			n, reason = c.scanChunkEnd(b[i:])
		default:
			n, reason = c.scanLine(b[i:])
		}
		if reason != "" {
			return keep, reason
		}
		i += n
	}
	return 0, ""
}

// scanHeader skips the CR and LF net/http discards after a POST, then
// reads header section lines.
func (c *guardConn) scanHeader(b []byte) (int, string) {
	if c.skip == 0 || c.req.started || len(c.line) > 0 {
		return c.scanLine(b)
	}
	n := 0
	for n < len(b) && c.skip > 0 && (b[n] == '\r' || b[n] == '\n') {
		n++
		c.skip--
	}
	if n < len(b) {
		c.skip = 0 // the request line starts at b[n]
	}
	if n == 0 {
		return c.scanLine(b)
	}
	return n, ""
}

// scanLine reads b up to the end of the current line and checks the line
// once it is whole. Only the start of a line that b does not finish is
// copied, to be joined with the rest on the next read.
func (c *guardConn) scanLine(b []byte) (int, string) {
	lf := bytes.IndexByte(b, '\n')
	n := len(b)
	if lf >= 0 {
		n = lf + 1
	}
	if reason := c.count(n); reason != "" || c.st == statePass {
		return n, reason
	}
	if lf < 0 {
		c.line = append(c.line, b...)
		return n, ""
	}
	line := b[:n]
	if len(c.line) > 0 {
		c.line = append(c.line, line...)
		line = c.line
	}
	reason := c.endLine(line)
	if cap(c.line) > maxKeptLine {
		c.line = nil
	} else {
		c.line = c.line[:0]
	}
	return n, reason
}

// count adds n bytes to the current section and enforces its cap.
func (c *guardConn) count(n int) string {
	switch c.st {
	case stateHeader:
		c.req.size += n
		if c.req.size > maxGuardHeader {
			c.pass() // net/http's 431 closes the connection first
		}
	case stateChunkSize:
		if len(c.line)+n > maxChunkLine {
			return reasonBadChunk
		}
	case stateTrailer:
		c.trailer += n
		if c.trailer > maxTrailer {
			return reasonBadChunk
		}
	}
	return ""
}

// endLine checks a whole line, LF included, of the current section.
func (c *guardConn) endLine(line []byte) string {
	switch c.st {
	case stateHeader:
		return c.headerLine(line)
	case stateChunkSize:
		return c.chunkSizeLine(line)
	default:
		return c.trailerLine(line)
	}
}

// headerLine checks a line of the header section.
func (c *guardConn) headerLine(line []byte) string {
	content, reason := lineContent(line, reasonBareLF, reasonBadHeader)
	switch {
	case reason != "":
		return reason
	case !c.req.started:
		return c.requestLine(content)
	case len(content) > 0 && (content[0] == ' ' || content[0] == '\t'):
		return reasonObsFold
	case c.req.pending != "":
		return c.req.pending
	case len(content) == 0:
		c.endHeader()
		return ""
	}
	c.req.pending = c.field(content)
	return ""
}

// requestLine notes what the request line says about framing.
func (c *guardConn) requestLine(content []byte) string {
	if len(content) == 0 {
		return reasonBadHeader // net/http refuses it too
	}
	if !c.notFirst && string(content) == "PRI * HTTP/2.0" {
		c.pass() // the h2c preface: HTTP/2 frames follow
		return ""
	}
	c.notFirst = true
	method := content
	if sp := bytes.IndexByte(content, ' '); sp >= 0 {
		method = content[:sp]
	}
	c.req.started = true
	c.req.post = string(method) == "POST"
	c.req.http10 = hasSuffix(content, " HTTP/1.0")
	return ""
}

// field checks a header field line and notes the fields that frame the
// body or may end HTTP on the connection.
func (c *guardConn) field(content []byte) string {
	colon := bytes.IndexByte(content, ':')
	if colon <= 0 || !isToken(content[:colon]) {
		return reasonBadHeader
	}
	name, value := content[:colon], trimOWS(content[colon+1:])
	switch {
	case equalFold(name, "content-length"):
		return c.contentLength(value)
	case equalFold(name, "transfer-encoding"):
		return c.transferEncoding(value)
	case equalFold(name, "upgrade"):
		c.req.upgrade = true
	}
	return ""
}

// contentLength accepts Content-Length values that all agree.
func (c *guardConn) contentLength(v []byte) string {
	n, ok := parseDecimal(v)
	switch {
	case !ok, c.req.hasCL && n != c.req.cl:
		return reasonBadCL
	case c.req.chunked:
		return reasonCLWithTE
	}
	c.req.hasCL, c.req.cl = true, n
	return ""
}

// transferEncoding accepts one Transfer-Encoding: chunked on HTTP/1.1,
// the only coding net/http decodes; anything else leaves the body's end
// to interpretation.
func (c *guardConn) transferEncoding(v []byte) string {
	switch {
	case c.req.chunked, c.req.http10, !equalFold(v, "chunked"):
		return reasonBadTE
	case c.req.hasCL:
		return reasonCLWithTE
	}
	c.req.chunked = true
	return ""
}

// endHeader moves on to the body the header announced.
func (c *guardConn) endHeader() {
	r := c.req
	c.req = request{}
	c.served = true
	c.lastPOST = r.post
	if r.upgrade {
		c.armSwitch()
	}
	switch {
	case r.chunked:
		c.st = stateChunkSize
	case r.cl > 0:
		c.st, c.remain = stateBody, r.cl
	default:
		c.endMessage()
	}
}

// endMessage expects the next request.
func (c *guardConn) endMessage() {
	c.st = stateHeader
	if c.lastPOST {
		c.skip = postCRLF
	}
}

// pass stops inspecting the connection.
func (c *guardConn) pass() {
	c.st = statePass
	c.line = nil
}

// scanData passes body or chunk data through uncopied.
func (c *guardConn) scanData(b []byte) int {
	n := len(b)
	if int64(n) > c.remain {
		n = int(c.remain)
	}
	c.remain -= int64(n)
	if c.remain > 0 {
		return n
	}
	if c.st == stateChunkData {
		c.st = stateChunkEnd
	} else {
		c.endMessage()
	}
	return n
}

// scanChunkEnd checks the CRLF that must follow a chunk's data.
func (c *guardConn) scanChunkEnd(b []byte) (int, string) {
	n := 0
	for ; n < len(b) && c.crlf < 2; n++ {
		if b[n] != "\r\n"[c.crlf] {
			return n, reasonBadChunk
		}
		c.crlf++
	}
	if c.crlf == 2 {
		c.crlf, c.st = 0, stateChunkSize
	}
	return n, ""
}

// chunkSizeLine checks chunk-size [ ";" chunk-ext ] CRLF.
func (c *guardConn) chunkSizeLine(line []byte) string {
	content, reason := lineContent(line, reasonBadChunk, reasonBadChunk)
	if reason != "" {
		return reason
	}
	size, rest, ok := parseHex(content)
	if !ok {
		return reasonBadChunk
	}
	// Whitespace after the size is tolerated as net/http and nginx do:
	// no parser reads a different size from it.
	if rest = trimOWS(rest); len(rest) > 0 && rest[0] != ';' {
		return reasonBadChunk
	}
	if size == 0 {
		c.st, c.trailer = stateTrailer, 0
		return ""
	}
	c.st, c.remain = stateChunkData, size
	return ""
}

// trailerLine checks a line of the trailer section.
func (c *guardConn) trailerLine(line []byte) string {
	content, reason := lineContent(line, reasonBadChunk, reasonBadChunk)
	switch {
	case reason != "":
		return reason
	case len(content) == 0:
		c.endMessage()
		return ""
	case content[0] == ' ' || content[0] == '\t':
		return reasonObsFold
	}
	if colon := bytes.IndexByte(content, ':'); colon <= 0 || !isToken(content[:colon]) {
		return reasonBadChunk
	}
	return ""
}

// lineContent returns line, which ends in LF, without its CRLF. It
// returns bareLF when the LF has no CR before it, strayCR when a CR is
// elsewhere in the line.
func lineContent(line []byte, bareLF, strayCR string) ([]byte, string) {
	end := len(line) - 1
	if end == 0 || line[end-1] != '\r' {
		return nil, bareLF
	}
	content := line[:end-1]
	if bytes.IndexByte(content, '\r') >= 0 {
		return nil, strayCR
	}
	return content, ""
}

// parseDecimal parses a Content-Length value: digits only, few enough
// that the value fits in an int64.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}

// parseHex parses the chunk size at the start of b, at most 16 hex
// digits whose value fits in an int64, and returns what follows it.
func parseHex(b []byte) (int64, []byte, bool) {
	var n uint64
	i := 0
	for ; i < len(b); i++ {
		d, ok := hexValue(b[i])
		if !ok {
			break
		}
		if i == 16 {
			return 0, nil, false
		}
		n = n<<4 | uint64(d)
	}
	if i == 0 || n > math.MaxInt64 {
		return 0, nil, false
	}
	return int64(n), b[i:], true
}

func hexValue(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}

// isToken reports whether b is a non-empty RFC 9110 token, as a field
// name must be.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, ch := range b {
		if !isTokenByte(ch) {
			return false
		}
	}
	return true
}

func isTokenByte(ch byte) bool {
	switch {
	case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0
}

// trimOWS removes spaces and tabs around b.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold reports whether b is lower, ignoring ASCII case; lower is
// lower-case. It spares converting b to a string.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, ch := range b {
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != lower[i] {
			return false
		}
	}
	return true
}

func hasSuffix(b []byte, s string) bool {
	return len(b) >= len(s) && string(b[len(b)-len(s):]) == s
}

// Write writes p, first bounding it by SendTimeout and looking for the
// answer to a protocol switch.
func (c *guardConn) Write(p []byte) (int, error) {
	if c.sendTimeout > 0 || c.watch.armed.Load() {
		if err := c.beforeWrite(p); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

// beforeWrite watches p for a switch and moves the write deadline to
// SendTimeout from now. Resetting a deadline costs a timer update, so it
// is kept while less than a sixteenth of SendTimeout old.
func (c *guardConn) beforeWrite(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.watch.armed.Load() {
		c.watch.scan(p)
	}
	if c.sendTimeout <= 0 {
		return nil
	}
	now := time.Now()
	if !c.setAt.IsZero() && now.Sub(c.setAt) <= c.sendTimeout/16 {
		return nil
	}
	c.setAt = now
	return c.Conn.SetWriteDeadline(earlier(now.Add(c.sendTimeout), c.theirs))
}

// SetWriteDeadline sets the write deadline to t, or to the SendTimeout of
// the write under way when that is earlier; a zero t removes only t.
func (c *guardConn) SetWriteDeadline(t time.Time) error {
	if c.sendTimeout <= 0 {
		return c.Conn.SetWriteDeadline(t)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.theirs = t
	d := t
	if !c.setAt.IsZero() {
		d = earlier(c.setAt.Add(c.sendTimeout), t)
	}
	return c.Conn.SetWriteDeadline(d)
}

// SetDeadline sets the read deadline and, as SetWriteDeadline does, the
// write deadline.
func (c *guardConn) SetDeadline(t time.Time) error {
	if c.sendTimeout <= 0 {
		return c.Conn.SetDeadline(t)
	}
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// earlier returns the earlier of two deadlines, where zero is none.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// armSwitch makes Write look for the response to a request that may
// switch protocols.
func (c *guardConn) armSwitch() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.watch.arm()
}

// switchWatch tells when the connection stops carrying HTTP/1.x: after a
// 101 to an Upgrade request. Stopping at the request itself would let any
// request with an Upgrade header, which the proxy may answer without
// switching (an h2c offer, a refused or failed upgrade), turn the guard
// off for the rest of the connection. The status is read from the
// response as it is written, before the client can have it, so the bytes
// the client sends after seeing it are read after the switch is known.
//
// CONNECT is not a switch: a 2xx to it can be an upstream's ordinary
// answer relayed by the proxy, after which net/http goes on reading
// requests, and the gateway tunnels no CONNECT.
//
// It reads the first status line written once a request asks to switch.
// That is the request's own response unless requests were pipelined
// behind a response still being written; the guard then keeps inspecting
// and may reject a tunnel, which browsers, never pipelining, do not meet.
type switchWatch struct {
	armed    atomic.Bool // a switch was asked for; its answer is not yet seen
	switched atomic.Bool // the connection carries another protocol now

	// The rest is guarded by guardConn.wmu.
	status  [len("HTTP/1.1 101")]byte
	n       int  // bytes of status read
	interim bool // skipping a 1xx response other than 101
	blank   int  // bytes of the CRLF CRLF ending that 1xx seen
}

// arm starts looking for a switch; an earlier one not yet answered is
// looked for still.
func (w *switchWatch) arm() {
	if w.armed.Load() || w.switched.Load() {
		return
	}
	w.n, w.interim, w.blank = 0, false, 0
	w.armed.Store(true)
}

// scan reads p, written bytes, for the status of the response.
func (w *switchWatch) scan(p []byte) {
	for _, b := range p {
		if w.interim {
			w.blank = nextBlank(w.blank, b)
			if w.blank == 4 {
				w.interim, w.n, w.blank = false, 0, 0
			}
			continue
		}
		w.status[w.n] = b
		if w.n++; w.n < len(w.status) {
			continue
		}
		code := statusCode(w.status[:])
		if code >= 100 && code < 200 && code != 101 {
			w.interim = true // 100 Continue, 103 Early Hints: the answer follows
			continue
		}
		w.switched.Store(code == 101)
		w.armed.Store(false)
		return
	}
}

// nextBlank advances the match of "\r\n\r\n" by b from matched bytes.
func nextBlank(matched int, b byte) int {
	switch {
	case b == "\r\n\r\n"[matched]:
		return matched + 1
	case b == '\r':
		return 1
	}
	return 0
}

// statusCode returns the code of a status line's start "HTTP/1.x NNN",
// 0 if it is none.
func statusCode(s []byte) int {
	if string(s[:7]) != "HTTP/1." || s[8] != ' ' {
		return 0
	}
	code := 0
	for _, d := range s[9:12] {
		if d < '0' || d > '9' {
			return 0
		}
		code = code*10 + int(d-'0')
	}
	return code
}
