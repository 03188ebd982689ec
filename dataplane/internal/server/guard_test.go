package server_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/server"
)

// scriptConn is a net.Conn whose Read returns the bytes fed to it, at most
// chunk at a time (all of them when chunk is 0), and io.EOF while it has
// none. Writes are kept.
type scriptConn struct {
	in    []byte
	chunk int
	out   []byte
}

func (c *scriptConn) feed(s string) { c.in = append(c.in, s...) }

func (c *scriptConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := len(c.in)
	if c.chunk > 0 && n > c.chunk {
		n = c.chunk
	}
	n = copy(p, c.in[:n])
	c.in = c.in[n:]
	return n, nil
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.out = append(c.out, p...)
	return len(p), nil
}

func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// oneListener accepts one connection, then fails.
type oneListener struct{ c net.Conn }

func (l *oneListener) Accept() (net.Conn, error) {
	if l.c == nil {
		return nil, errors.New("no more connections")
	}
	c := l.c
	l.c = nil
	return c, nil
}
func (l *oneListener) Close() error   { return nil }
func (l *oneListener) Addr() net.Addr { return &net.TCPAddr{} }

// guarded returns c as GuardListener wraps it.
func guarded(t testing.TB, c net.Conn, cfg server.GuardConfig) net.Conn {
	t.Helper()
	g, err := server.GuardListener(&oneListener{c: c}, cfg).Accept()
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// rejects records the reasons given to GuardConfig.Reject.
type rejects struct {
	mu      sync.Mutex
	reasons []string
}

func (r *rejects) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = append(r.reasons, reason)
}

func (r *rejects) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...)
}

// readUntilError reads g until an error and returns the bytes read before
// it and the error.
func readUntilError(g net.Conn, bufSize int) ([]byte, error) {
	var got []byte
	buf := make([]byte, bufSize)
	for {
		n, err := g.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
}

// reasonOf returns the reason of a *FramingError, "" for another error.
func reasonOf(err error) string {
	var fe *server.FramingError
	if errors.As(err, &fe) {
		return fe.Reason
	}
	return ""
}

const (
	get     = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	chunked = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	// looksLikeHeaders is a body that a parser out of step would take for
	// a request.
	looksLikeHeaders = "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
)

func post(body string) string {
	return "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// guardCase is a byte stream sent by a client. In a rejected one, "|"
// marks where delivery in one read stops: the start of the line at fault.
type guardCase struct {
	name   string
	in     string
	reason string // "": accepted
	// served is how many valid requests come before the fault (rejected
	// cases), or in all (accepted ones); 0 for a stream a real server
	// cannot be sent (not HTTP/1.x).
	served int
	// noServer: the stream is left out of TestGuardServer, where the
	// handler's answer would not be a plain 200 (PRI, CONNECT).
	noServer bool
}

func (c guardCase) input() string { return strings.Replace(c.in, "|", "", 1) }

func (c guardCase) keep() string {
	k, _, _ := strings.Cut(c.in, "|")
	return k
}

var guardCases = []guardCase{
	{name: "get", in: get, served: 1},
	{name: "pipelined gets", in: get + get + get, served: 3},
	{name: "body that looks like headers", in: post(looksLikeHeaders) + get, served: 2},
	{name: "get with body", in: "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + get, served: 2},
	{name: "chunked with extensions and trailer", in: chunked +
		"5;name=value\r\nhello\r\n6;a=\"b c\"\r\n world\r\n" +
		"1a\r\n" + strings.Repeat("x", 26) + "\r\n0\r\nX-Checksum: abc\r\nX-B:\r\n\r\n" + get, served: 2},
	{name: "chunked, size with whitespace", in: chunked + "5 \r\nhello\r\n0\r\n\r\n" + get, served: 2},
	{name: "chunked, upper-case hex", in: chunked + "A\r\n0123456789\r\n0\r\n\r\n", served: 1},
	{name: "Transfer-Encoding Chunked", in: strings.Replace(chunked, "chunked", " Chunked ", 1) + "0\r\n\r\n", served: 1},
	{name: "equal content lengths", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello" + get, served: 2},
	{name: "CRLF after a POST body", in: post("hi") + "\r\n" + get, served: 2},
	{name: "h2c preface", in: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\n\n garbage\r\r"},

	{name: "content-length and transfer-encoding", reason: "content_length_with_transfer_encoding",
		in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n|\r\n0\r\n\r\n"},
	{name: "transfer-encoding and content-length", reason: "content_length_with_transfer_encoding",
		in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n|\r\n0\r\n\r\n"},
	{name: "content lengths differ", reason: "bad_content_length",
		in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n|\r\nhello!"},
	{name: "content length list", reason: "bad_content_length",
		in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n|\r\nhello"},
	{name: "content length with sign", reason: "bad_content_length",
		in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n|\r\nhello"},
	{name: "content length too long", reason: "bad_content_length",
		in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000005\r\n|\r\nhello"},
	{name: "folded transfer-encoding", reason: "obs_fold",
		in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n| chunked\r\n\r\n0\r\n\r\n"},
	{name: "folded field", reason: "obs_fold", in: "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n|\tc\r\n\r\n"},
	{name: "bare LF in a field", reason: "bare_lf", in: "GET / HTTP/1.1\r\n|Host: a\n\r\n"},
	{name: "bare LF ending the header", reason: "bare_lf", in: "GET / HTTP/1.1\r\nHost: a\r\n|\n"},
	{name: "bare LF in the request line", reason: "bare_lf", in: "|GET / HTTP/1.1\nHost: a\r\n\r\n"},
	{name: "bare CR", reason: "bad_header", in: "GET / HTTP/1.1\r\n|Host: a\rX: b\r\n\r\n"},
	{name: "space before colon", reason: "bad_header",
		in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n|\r\n0\r\n\r\n"},
	// Short: the server first reads 14 bytes, looking for the h2c
	// preface, and a reset would lose the 400 if it left any unread.
	{name: "empty request line", reason: "bad_header", in: "|\r\n\r\n"},
	{name: "CRLF after a GET", reason: "bad_header", in: get + "|\r\n" + get, served: 1},
	{name: "gzip, chunked", reason: "bad_transfer_encoding",
		in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n|\r\n0\r\n\r\n"},
	{name: "two transfer-encodings", reason: "bad_transfer_encoding",
		in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n|\r\n0\r\n\r\n"},
	{name: "transfer-encoding on HTTP/1.0", reason: "bad_transfer_encoding",
		in: "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n|\r\n0\r\n\r\n"},
	{name: "chunk size not hex", reason: "bad_chunk", in: chunked + "|zz\r\n"},
	{name: "chunk size with bare LF", reason: "bad_chunk", in: chunked + "|5\nhello\r\n0\r\n\r\n"},
	{name: "chunk size with bare CR", reason: "bad_chunk", in: chunked + "|5;a\rb\r\nhello\r\n0\r\n\r\n"},
	{name: "chunk size 17 digits", reason: "bad_chunk", in: chunked + "|00000000000000001\r\nx\r\n0\r\n\r\n"},
	{name: "chunk size over int64", reason: "bad_chunk", in: chunked + "|8000000000000000\r\n"},
	{name: "chunk size line too long", reason: "bad_chunk", in: chunked + "|5;" + strings.Repeat("e", 4100) + "\r\nhello\r\n0\r\n\r\n"},
	{name: "chunk data without CRLF", reason: "bad_chunk", in: chunked + "5\r\nhello|xx\r\n0\r\n\r\n"},
	{name: "chunk data with LF only", reason: "bad_chunk", in: chunked + "5\r\nhello|\n0\r\n\r\n"},
	{name: "chunk data with CR only", reason: "bad_chunk", in: chunked + "5\r\nhello|\r0\r\n\r\n"},
	{name: "folded trailer", reason: "obs_fold", in: chunked + "0\r\nX: a\r\n| b\r\n\r\n"},
	{name: "trailer with bare LF", reason: "bad_chunk", in: chunked + "0\r\n|X: a\n\r\n"},
	{name: "valid request then a bad one", reason: "bare_lf", in: get + "|GET / HTTP/1.1\nHost: a\r\n\r\n", served: 1},
	{name: "valid body then a bad request", reason: "content_length_with_transfer_encoding", served: 1,
		in: post(looksLikeHeaders) + "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n|\r\n0\r\n\r\n"},
	{name: "PRI later is a request", reason: "bare_lf", in: get + "PRI * HTTP/2.0\r\n\r\n|x\n", served: 2, noServer: true},
	{name: "upgrade not answered", reason: "bare_lf", served: 1,
		in: "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n|\x81\x05hello\n"},
	{name: "CONNECT is inspected", reason: "bare_lf", served: 1, noServer: true,
		in: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n|\x16\x03\x01\n"},
}

// TestGuardFraming feeds each stream through a guarded connection, in one
// read and one byte per read.
func TestGuardFraming(t *testing.T) {
	for _, tc := range guardCases {
		for _, chunk := range []int{0, 1} {
			t.Run(fmt.Sprintf("%s/chunk=%d", tc.name, chunk), func(t *testing.T) {
				in := tc.input()
				var rej rejects
				g := guarded(t, &scriptConn{in: []byte(in), chunk: chunk}, server.GuardConfig{Framing: true, Reject: rej.add})
				got, err := readUntilError(g, len(in)+1)
				if !strings.HasPrefix(in, string(got)) {
					t.Fatalf("read %q, not a prefix of the input", got)
				}
				if tc.reason == "" {
					if err != io.EOF || string(got) != in || len(rej.list()) != 0 {
						t.Fatalf("read %d of %d bytes, error %v, rejects %v; want all, io.EOF, none", len(got), len(in), err, rej.list())
					}
					return
				}
				checkRejected(t, g, tc, got, err, chunk)
				if r := rej.list(); len(r) != 1 || r[0] != tc.reason {
					t.Errorf("Reject got %v, want [%s]", r, tc.reason)
				}
			})
		}
	}
}

// checkRejected checks what a rejected stream's reads returned.
func checkRejected(t *testing.T, g net.Conn, tc guardCase, got []byte, err error, chunk int) {
	t.Helper()
	if reasonOf(err) != tc.reason {
		t.Fatalf("error %v, want a FramingError %q", err, tc.reason)
	}
	keep := tc.keep()
	switch {
	case chunk == 0 && string(got) != keep:
		t.Errorf("read %q before the error, want %q", got, keep)
	case chunk != 0 && len(got) < len(keep):
		t.Errorf("read %d bytes before the error, want at least %d", len(got), len(keep))
	case len(got) >= len(tc.input()):
		t.Errorf("read the whole input before the error")
	}
	// Once a request was let through, the error comes once; before, it
	// is repeated for net/http's header reading.
	served := strings.Contains(keep, "\r\n\r\n")
	for range 2 {
		n, again := g.Read(make([]byte, 16))
		if served && (n != 0 || again != io.EOF) {
			t.Fatalf("Read after the error: %d, %v; want 0, io.EOF", n, again)
		}
		if !served && (n != 0 || again != err) {
			t.Fatalf("Read after the error in the first request: %d, %v; want 0, %v", n, again, err)
		}
	}
}

// TestGuardErrorOnNextRead checks that the bytes before a fault come with
// no error, and the error alone on the next Read.
func TestGuardErrorOnNextRead(t *testing.T) {
	in := get + "GET / HTTP/1.1\nHost: a\r\n\r\n"
	g := guarded(t, &scriptConn{in: []byte(in)}, server.GuardConfig{Framing: true})
	buf := make([]byte, 4096)
	n, err := g.Read(buf)
	if err != nil || string(buf[:n]) != get {
		t.Fatalf("first Read: %q, %v; want the valid request, nil", buf[:n], err)
	}
	n, err = g.Read(buf)
	if n != 0 || reasonOf(err) != "bare_lf" {
		t.Fatalf("second Read: %d, %v; want 0, bare_lf", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) {
		t.Fatalf("%v is a net.Error or io.EOF: net/http would not answer 400", err)
	}
	if n, err = g.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("third Read: %d, %v; want 0, io.EOF", n, err)
	}
}

// TestGuardHugeHeader checks that a header section larger than net/http
// ever accepts is passed through rather than buffered.
func TestGuardHugeHeader(t *testing.T) {
	in := "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 1<<20+8192) + "\r\n\n\nnot http\n"
	for _, chunk := range []int{0, 1000} {
		g := guarded(t, &scriptConn{in: []byte(in), chunk: chunk}, server.GuardConfig{Framing: true})
		got, err := readUntilError(g, 4096)
		if err != io.EOF || string(got) != in {
			t.Fatalf("chunk %d: read %d of %d bytes, error %v", chunk, len(got), len(in), err)
		}
	}
}

// TestGuardSwitch checks that inspection stops when, and only when, the
// response written to an upgrade or CONNECT request switches protocols.
func TestGuardSwitch(t *testing.T) {
	const (
		upgrade = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
		connect = "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
		after   = "\x81\x05hello\n\r\n \x00" // not HTTP
	)
	tests := []struct {
		name     string
		request  string
		writes   []string
		switched bool
	}{
		{"101", upgrade, []string{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"}, true},
		{"101 a byte at a time", upgrade, strings.Split("HTTP/1.1 101 Switching Protocols\r\n\r\n", ""), true},
		{"100 then 101", upgrade, []string{"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 101 Switching Protocols\r\n\r\n"}, true},
		{"103 split then 101", upgrade, []string{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r", "\n\r", "\nHTTP/1.1 101 Switching Protocols\r\n\r\n"}, true},
		{"CONNECT 200", connect, []string{"HTTP/1.1 200 OK\r\n\r\n"}, false},
		{"upgrade refused", upgrade, []string{"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"}, false},
		{"upgrade answered 200", upgrade, []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}, false},
		{"200 then 101 later", upgrade, []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 101 Switching Protocols\r\n\r\n"}, false},
		{"CONNECT 101", connect, []string{"HTTP/1.1 101 Switching Protocols\r\n\r\n"}, false},
		{"101 to a plain request", get, []string{"HTTP/1.1 101 Switching Protocols\r\n\r\n"}, false},
	}
	for _, tc := range tests {
		for _, chunk := range []int{0, 1} {
			t.Run(fmt.Sprintf("%s/chunk=%d", tc.name, chunk), func(t *testing.T) {
				sc := &scriptConn{in: []byte(tc.request), chunk: chunk}
				g := guarded(t, sc, server.GuardConfig{Framing: true})
				if got, err := readUntilError(g, 4096); err != io.EOF || string(got) != tc.request {
					t.Fatalf("request: read %q, %v", got, err)
				}
				for _, w := range tc.writes {
					if _, err := io.WriteString(g, w); err != nil {
						t.Fatal(err)
					}
				}
				if want := strings.Join(tc.writes, ""); string(sc.out) != want {
					t.Fatalf("wrote %q, want %q", sc.out, want)
				}
				sc.feed(after)
				got, err := readUntilError(g, 4096)
				if tc.switched && (err != io.EOF || string(got) != after) {
					t.Fatalf("after the switch: read %q, %v; want all, io.EOF", got, err)
				}
				if !tc.switched && reasonOf(err) == "" {
					t.Fatalf("without a switch: read %q, %v; want a FramingError", got, err)
				}
			})
		}
	}
}

// TestGuardListenerUnchanged checks that a config asking for nothing
// leaves the listener alone, and that guarded connections expose theirs.
func TestGuardListenerUnchanged(t *testing.T) {
	ln := &oneListener{c: &scriptConn{}}
	if got := server.GuardListener(ln, server.GuardConfig{}); got != net.Listener(ln) {
		t.Fatalf("GuardListener with an empty config returned %T, want the listener", got)
	}
	sc := &scriptConn{}
	g := guarded(t, sc, server.GuardConfig{SendTimeout: time.Second})
	nc, ok := g.(interface{ NetConn() net.Conn })
	if !ok || nc.NetConn() != net.Conn(sc) {
		t.Fatalf("guarded connection %T does not return the accepted one from NetConn", g)
	}
}

// guardServer serves, on a loopback listener wrapped by GuardListener
// with cfg, a handler that reads the body and answers 200 with its length,
// or 400 when the body cannot be read. It returns the address.
func guardServer(t *testing.T, cfg server.GuardConfig, h http.Handler) string {
	t.Helper()
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, "bad body", http.StatusBadRequest)
				return
			}
			fmt.Fprint(w, len(body))
		})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveGuarded(t, server.GuardListener(ln, cfg), h)
}

func serveGuarded(t *testing.T, ln net.Listener, h http.Handler) string {
	t.Helper()
	srv := server.New(h, server.Config{ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: server.DefaultMaxHeaderBytes})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// readResponse reads a response and its body.
func readResponse(t *testing.T, br *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("reading a response body: %v", err)
	}
	resp.Body.Close()
	return resp
}

// expectClosed fails t unless the server closes c (end of stream or
// reset) within prompt, after sending anything but a response.
func expectClosed(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(prompt))
	rest, err := io.ReadAll(br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", prompt)
	}
	if strings.Contains(string(rest), "HTTP/1.1 2") {
		t.Fatalf("a further response after the rejection: %q", rest)
	}
}

// TestGuardServer sends each stream to a real server and checks the valid
// ones are served on a kept connection and the others answered 400, or
// cut after the valid requests before them, and closed.
func TestGuardServer(t *testing.T) {
	var rej rejects
	addr := guardServer(t, server.GuardConfig{Framing: true, Reject: rej.add}, nil)
	for _, tc := range guardCases {
		if tc.noServer || tc.reason == "" && tc.served == 0 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			c.SetDeadline(time.Now().Add(prompt))
			if _, err := io.WriteString(c, tc.input()); err != nil {
				t.Fatal(err)
			}
			for i := range tc.served {
				if resp := readResponse(t, br); resp.StatusCode != http.StatusOK || resp.Close {
					t.Fatalf("response %d: status %d, close %v; want 200 on a kept connection", i, resp.StatusCode, resp.Close)
				}
			}
			if tc.reason == "" {
				// Still open: another request is served.
				io.WriteString(c, get)
				if resp := readResponse(t, br); resp.StatusCode != http.StatusOK {
					t.Fatalf("request after the stream: status %d", resp.StatusCode)
				}
				return
			}
			if tc.served == 0 {
				status, err := br.ReadString('\n')
				if err != nil || !strings.HasPrefix(status, "HTTP/1.1 400 ") {
					t.Fatalf("status line %q, %v; want HTTP/1.1 400", status, err)
				}
			}
			expectClosed(t, c, br)
		})
	}
	// Rejects are counted once a connection's read fails, which may come
	// after its response: check them once all are done.
	for _, tc := range guardCases {
		if tc.reason != "" && !contains(rej.list(), tc.reason) {
			t.Errorf("no reject %q counted", tc.reason)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestGuardServerBadChunkBody checks that a malformed chunk after a valid
// header fails the handler's body read, and the connection is closed.
func TestGuardServerBadChunkBody(t *testing.T) {
	bodyErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		bodyErr <- err
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	})
	addr := guardServer(t, server.GuardConfig{Framing: true}, h)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(prompt))
	io.WriteString(c, chunked+"5\r\nhello\r\nzz\r\n")
	br := bufio.NewReader(c)
	if resp := readResponse(t, br); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want the handler's 400", resp.StatusCode)
	}
	if err := <-bodyErr; reasonOf(err) != "bad_chunk" {
		t.Fatalf("handler's body read: %v, want the bad_chunk FramingError", err)
	}
	expectClosed(t, c, br)
}

// bufferListener sets small socket buffers on the connections it accepts,
// so that a client that does not read blocks writes soon.
type bufferListener struct{ net.Listener }

func (l bufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(32 << 10)
	}
	return c, err
}

// writer answers with size bytes in 32 KiB writes and sends the first
// write error, or nil, and how long the writes took.
type writer struct {
	size int
	done chan writeResult
}

type writeResult struct {
	err     error
	elapsed time.Duration
}

func (h writer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w.Header().Set("Content-Length", strconv.Itoa(h.size))
	buf := make([]byte, 32<<10)
	var err error
	for sent := 0; sent < h.size && err == nil; sent += len(buf) {
		_, err = w.Write(buf[:min(len(buf), h.size-sent)])
	}
	h.done <- writeResult{err, time.Since(start)}
}

// dialSmall connects with a small receive buffer, set before the
// handshake so the window stays small.
func dialSmall(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
		})
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func serveWriter(t *testing.T, sendTimeout time.Duration, h writer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveGuarded(t, server.GuardListener(bufferListener{ln}, server.GuardConfig{SendTimeout: sendTimeout}), h)
}

// TestGuardSendTimeoutCutsStalledClient checks that a write to a client
// that stopped reading fails with a timeout.
func TestGuardSendTimeoutCutsStalledClient(t *testing.T) {
	h := writer{size: 64 << 20, done: make(chan writeResult, 1)}
	c := dialSmall(t, serveWriter(t, 300*time.Millisecond, h))
	io.WriteString(c, get)
	select {
	case res := <-h.done:
		var ne net.Error
		if res.err == nil || !errors.Is(res.err, os.ErrDeadlineExceeded) && !(errors.As(res.err, &ne) && ne.Timeout()) {
			t.Fatalf("handler's writes ended with %v, want a timeout", res.err)
		}
		t.Logf("cut after %v: %v", res.elapsed, res.err)
	case <-time.After(10 * time.Second):
		t.Fatal("writes to a client that does not read were not cut within 10s")
	}
}

// throttled reads at most 32 KiB per 100 ms.
type throttled struct{ r io.Reader }

func (t throttled) Read(p []byte) (int, error) {
	time.Sleep(100 * time.Millisecond)
	return t.r.Read(p[:min(len(p), 32<<10)])
}

// TestGuardSendTimeoutSparesSlowClient checks that a client reading
// slowly but steadily gets the whole response, although it takes longer
// than SendTimeout.
func TestGuardSendTimeoutSparesSlowClient(t *testing.T) {
	const size = 768 << 10
	h := writer{size: size, done: make(chan writeResult, 1)}
	c := dialSmall(t, serveWriter(t, time.Second, h))
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, get)
	resp, err := http.ReadResponse(bufio.NewReaderSize(throttled{c}, 32<<10), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size {
		t.Fatalf("read %d of %d bytes: %v", n, size, err)
	}
	res := <-h.done
	if res.err != nil {
		t.Fatalf("handler's writes failed after %v: %v", res.elapsed, res.err)
	}
	t.Logf("writes took %v with a 1s send timeout", res.elapsed)
}

// deadlineConn records the write deadlines set on it.
type deadlineConn struct {
	scriptConn
	mu        sync.Mutex
	deadlines []time.Time
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadlines = append(c.deadlines, t)
	return nil
}

func (c *deadlineConn) last() (time.Time, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadlines[len(c.deadlines)-1], len(c.deadlines)
}

// TestGuardSendTimeoutDeadlines checks the deadlines Write sets: renewed
// only once a sixteenth of the timeout old, and never later than one set
// by others.
func TestGuardSendTimeoutDeadlines(t *testing.T) {
	const timeout = time.Hour // writes here take far less than timeout/16
	dc := &deadlineConn{}
	g := guarded(t, dc, server.GuardConfig{SendTimeout: timeout})
	start := time.Now()
	g.Write([]byte("a"))
	d, n := dc.last()
	if n != 1 || d.Before(start.Add(timeout)) || d.After(time.Now().Add(timeout)) {
		t.Fatalf("after a write: %d deadlines, last %v; want one, an hour from now", n, d)
	}
	g.Write([]byte("b"))
	if _, n := dc.last(); n != 1 {
		t.Fatalf("a second write right after the first set the deadline again")
	}
	theirs := time.Now().Add(time.Minute)
	g.SetWriteDeadline(theirs)
	if d, _ := dc.last(); !d.Equal(theirs) {
		t.Fatalf("their earlier deadline: set %v, want %v", d, theirs)
	}
	later := time.Now().Add(2 * time.Hour)
	g.SetWriteDeadline(later)
	if d, _ := dc.last(); !d.Before(later) {
		t.Fatalf("their later deadline: set %v, want the send timeout's, before %v", d, later)
	}
	g.SetDeadline(time.Time{})
	if d, _ := dc.last(); d.IsZero() {
		t.Fatalf("clearing their deadline cleared the send timeout's")
	}
}

// loopConn reads its data over and over.
type loopConn struct {
	scriptConn
	data []byte
	off  int
}

func (c *loopConn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m := copy(p[n:], c.data[c.off:])
		n += m
		c.off = (c.off + m) % len(c.data)
	}
	return n, nil
}

// BenchmarkGuardRead measures a Read on a keep-alive stream: 4 KiB reads
// (net/http's buffer) of small GETs, and 32 KiB reads (the proxy's copy
// buffer) of POSTs with 64 KiB bodies.
func BenchmarkGuardRead(b *testing.B) {
	gets := strings.Repeat("GET /api/v1/items?id=42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\nCookie: session=0123456789abcdef\r\n\r\n", 37)
	for _, bc := range []struct {
		name   string
		stream string
		buf    int
		off    bool // unguarded, for comparison
	}{
		{"get", gets, 4 << 10, false},
		{"get-unguarded", gets, 4 << 10, true},
		{"post64k", post(strings.Repeat("x", 64<<10)), 32 << 10, false},
		{"post64k-unguarded", post(strings.Repeat("x", 64<<10)), 32 << 10, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			g := guarded(b, &loopConn{data: []byte(bc.stream)}, server.GuardConfig{Framing: !bc.off})
			buf := make([]byte, bc.buf)
			b.SetBytes(int64(bc.buf))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestGuardServerUpgrade checks that a connection a handler switched with
// a 101 carries the new protocol's bytes untouched.
func TestGuardServerUpgrade(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw) // echo until the client closes
	})
	addr := guardServer(t, server.GuardConfig{Framing: true}, h)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(prompt))
	io.WriteString(c, "GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("response %v, %v; want 101", resp, err)
	}
	const frames = "\x81\x05hello\n\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
	io.WriteString(c, frames)
	got := make([]byte, len(frames))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != frames {
		t.Fatalf("echoed %q, %v; want %q", got, err, frames)
	}
}

// TestGuardServerH2C checks that HTTP/2 with prior knowledge, which the
// traffic server speaks on plaintext listeners, passes the guard.
func TestGuardServerH2C(t *testing.T) {
	addr := guardServer(t, server.GuardConfig{Framing: true}, nil)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &protocols}, Timeout: prompt}
	defer client.CloseIdleConnections()
	body := looksLikeHeaders + "\r\n\nContent-Length: 5\r\n"
	for range 2 {
		resp, err := client.Post("http://"+addr+"/", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK || string(got) != strconv.Itoa(len(body)) {
			t.Fatalf("%s %d %q; want HTTP/2 200 %d", resp.Proto, resp.StatusCode, got, len(body))
		}
	}
}
