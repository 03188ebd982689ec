package gateway

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/global"
)

// startRedis runs a real redis-server on a free loopback port for the
// test and returns its address and a func that kills it.
func startRedis(t *testing.T) (addr string, kill func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server (apt-get install redis-server): %v", err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("redis-server did not start")
	}
	done := false
	kill = func() {
		if !done {
			done = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	t.Cleanup(kill)
	return fmt.Sprintf("127.0.0.1:%d", port), kill
}

// liveRedis returns a real global limiter on a real redis-server and the
// func that kills the server.
func liveRedis(t *testing.T) (*global.Limiter, func()) {
	addr, kill := startRedis(t)
	client := global.NewClient(&redis.UniversalOptions{Addrs: []string{addr}})
	t.Cleanup(func() { client.Close() })
	return global.New(client, global.Options{Logger: discardLogger()}), kill
}
