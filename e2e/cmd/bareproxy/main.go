// Command bareproxy is the baseline the whole-system benchmark (bench/
// proxies.sh) holds Meridian against: a plain httputil.ReverseProxy to one
// upstream, with a pooled copy buffer and a transport that keeps enough idle
// connections for a proxy. It has no router, middleware or logging, so the
// gap between it and Meridian is the cost of everything Meridian adds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8090", "address to serve on")
	target := flag.String("upstream", "http://127.0.0.1:9001", "upstream base URL")
	pprofListen := flag.String("pprof-listen", "", "address for /debug/pprof/ (off when empty)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bareproxy: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	u, err := url.Parse(*target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		fmt.Fprintf(os.Stderr, "bareproxy: --upstream: %q is not a base URL such as http://127.0.0.1:9001\n", *target)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *pprofListen, u); err != nil {
		fmt.Fprintf(os.Stderr, "bareproxy: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, listen, pprofListen string, upstream *url.URL) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	// The same idle-connection settings Meridian's upstream transport uses
	// by default, so the comparison is about the request path, not pooling.
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	defer tr.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.Out.Host = pr.In.Host // as Meridian does
			pr.SetXForwarded()
		},
		Transport:  tr,
		BufferPool: newBufferPool(),
	}
	servers := []*http.Server{{Handler: rp, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}}
	listeners := []net.Listener{ln}
	if pprofListen != "" {
		pln, err := net.Listen("tcp", pprofListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--pprof-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		servers = append(servers, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second})
		listeners = append(listeners, pln)
		fmt.Printf("pprof listening on %s\n", pln.Addr())
	}
	fmt.Printf("bareproxy listening on %s\n", ln.Addr())

	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Go(func() {
			if err := srv.Serve(listeners[i]); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		})
	}
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		if serr := srv.Shutdown(shutdownCtx); serr != nil {
			srv.Close()
		}
	}
	wg.Wait()
	return err
}

const bufferSize = 32 << 10

// bufferPool is an httputil.BufferPool of 32 KiB buffers. It pools array
// pointers so that neither Get nor Put allocates.
type bufferPool struct {
	pool sync.Pool
}

func newBufferPool() *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any { return new([bufferSize]byte) }}}
}

func (b *bufferPool) Get() []byte { return b.pool.Get().(*[bufferSize]byte)[:] }

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) < bufferSize {
		return
	}
	b.pool.Put((*[bufferSize]byte)(buf[:bufferSize]))
}
