package upstream

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// connPair returns an awaitConn dialled through an http pool's transport
// dialer and the server's end of it.
func connPair(t *testing.T) (*awaitConn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tr, err := newTransport(&meridianv1.UpstreamSpec{})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := tr.DialContext(t.Context(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	t.Cleanup(func() { c.Close(); srv.Close() })
	ac, ok := c.(*awaitConn)
	if !ok {
		t.Fatalf("an http pool dialled a %T, want *awaitConn", c)
	}
	return ac, srv
}

func TestAwaitResponse(t *testing.T) {
	const d = 100 * time.Millisecond
	buf := make([]byte, 16)

	t.Run("no response in time", func(t *testing.T) {
		c, _ := connPair(t)
		if !AwaitResponse(c, d) {
			t.Fatal("AwaitResponse refused an awaitConn")
		}
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		start := time.Now()
		_, err := c.Read(buf)
		var rte *ResponseTimeoutError
		if !errors.As(err, &rte) || rte.After != d {
			t.Fatalf("Read: %v, want a ResponseTimeoutError after %v", err, d)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%v is not a net.Error timeout", err)
		}
		if took := time.Since(start); took < d/2 || took > 2*time.Second {
			t.Errorf("timed out after %v, want about %v", took, d)
		}
	})

	t.Run("writes push the deadline back", func(t *testing.T) {
		c, srv := connPair(t)
		AwaitResponse(c, d)
		go func() {
			for range 4 {
				time.Sleep(d / 2)
				c.Write([]byte("x"))
			}
			time.Sleep(d / 2)
			srv.Write([]byte("HTTP/1.1 200 OK\r\n"))
		}()
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			t.Fatalf("Read: %v; the deadline did not follow the writes", err)
		}
	})

	t.Run("the first byte disarms", func(t *testing.T) {
		c, srv := connPair(t)
		AwaitResponse(c, d)
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		srv.Write([]byte("H"))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		go func() {
			c.Write([]byte("more of the request body, after the response began"))
			time.Sleep(3 * d)
			srv.Write([]byte("TTP/1.1 200 OK\r\n"))
		}()
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("a quiet response was cut: %v", err)
		}
	})

	t.Run("not armed", func(t *testing.T) {
		c, srv := connPair(t)
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		go func() {
			time.Sleep(3 * d)
			srv.Write([]byte("H"))
		}()
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("a connection never armed timed out: %v", err)
		}
	})

	t.Run("other connections", func(t *testing.T) {
		c, _ := connPair(t)
		if AwaitResponse(c.Conn, d) || AwaitResponse(nil, d) || AwaitResponse(c, 0) {
			t.Error("AwaitResponse accepted a connection it cannot bound, or no bound")
		}
	})
}

func TestConnDeadlines(t *testing.T) {
	for scheme, want := range map[meridianv1.Scheme]bool{
		meridianv1.Scheme_SCHEME_UNSPECIFIED: true,
		meridianv1.Scheme_SCHEME_HTTP:        true,
		meridianv1.Scheme_SCHEME_HTTPS:       false,
		meridianv1.Scheme_SCHEME_H2C:         false,
	} {
		p, err := New("u", &meridianv1.UpstreamSpec{Scheme: scheme, Targets: []*meridianv1.Target{{Address: "127.0.0.1:1"}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.ConnDeadlines(); got != want {
			t.Errorf("%v: ConnDeadlines() = %v, want %v", scheme, got, want)
		}
		p.Close()
	}
}
