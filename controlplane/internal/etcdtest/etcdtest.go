// Package etcdtest starts an embedded etcd on free loopback ports for tests,
// so control-plane tests run against the real thing.
package etcdtest

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/meridian-gw/meridian/controlplane/internal/embedetcd"
)

// Start runs etcd in a temporary directory and returns a client to it.
// Both are closed when the test ends.
func Start(t testing.TB) *clientv3.Client {
	t.Helper()
	srv := StartServer(t)
	c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// StartServer runs etcd in a temporary directory and stops it when the
// test ends.
func StartServer(t testing.TB) *embedetcd.Server {
	t.Helper()
	dir := t.TempDir()
	var lastErr error
	// A free port can be taken between probing and etcd binding it; retry.
	for range 5 {
		srv, err := embedetcd.Start(context.Background(), embedetcd.Config{
			Dir:        dir,
			ClientAddr: FreeAddr(t),
			PeerAddr:   FreeAddr(t),
		})
		if err == nil {
			t.Cleanup(srv.Close)
			return srv
		}
		lastErr = err
		dir = t.TempDir()
	}
	t.Fatalf("start embedded etcd: %v", lastErr)
	return nil
}

// FreeAddr returns a loopback host:port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("probe free port: %v", err)
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
}
