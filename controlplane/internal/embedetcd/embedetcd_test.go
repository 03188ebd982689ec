package embedetcd_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/meridian-gw/meridian/controlplane/internal/embedetcd"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartServesClients(t *testing.T) {
	c := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get = %v, want v", resp.Kvs)
	}
}

func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	cfg := embedetcd.Config{Dir: dir, ClientAddr: etcdtest.FreeAddr(t), PeerAddr: etcdtest.FreeAddr(t)}
	ctx := context.Background()
	for i, want := range []string{"", "v"} {
		srv, err := embedetcd.Start(ctx, cfg)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
		if err != nil {
			srv.Close()
			t.Fatalf("client: %v", err)
		}
		resp, err := c.Get(ctx, "k")
		if err == nil && want == "" {
			_, err = c.Put(ctx, "k", "v")
		}
		c.Close()
		srv.Close()
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Fatalf("run %d: k = %q, want %q", i, got, want)
		}
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  embedetcd.Config
	}{
		{"no dir", embedetcd.Config{ClientAddr: "127.0.0.1:1", PeerAddr: "127.0.0.1:2"}},
		{"port zero", embedetcd.Config{Dir: t.TempDir(), ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:2"}},
		{"no port", embedetcd.Config{Dir: t.TempDir(), ClientAddr: "127.0.0.1:1", PeerAddr: "localhost"}},
		{"https", embedetcd.Config{Dir: t.TempDir(), ClientAddr: "https://127.0.0.1:1", PeerAddr: "127.0.0.1:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := embedetcd.Start(context.Background(), tt.cfg)
			if err == nil {
				srv.Close()
				t.Fatal("Start succeeded, want error")
			}
		})
	}
}
