package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/cache"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// bootFromCache runs the program with a cached snapshot routing "/" to
// upstreamAddr and no reachable control plane. It returns the listening
// addresses by name ("dataplane", "admin") and the exit code channel.
func bootFromCache(t *testing.T, ctx context.Context, upstreamAddr string, args ...string) (map[string]string, <-chan int) {
	t.Helper()
	return bootSnapshot(t, ctx, 1, routeTo(upstreamAddr, "/"), args...)
}

// routeTo is a configuration of one route "r" matching prefix to one
// upstream "u" at upstreamAddr.
func routeTo(upstreamAddr, prefix string) []*meridianv1.Resource {
	return []*meridianv1.Resource{
		{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
			Metadata: &meridianv1.Metadata{Name: "u"},
			Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: upstreamAddr}}},
		}}},
		{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
			Metadata: &meridianv1.Metadata{Name: "r"},
			Spec:     &meridianv1.RouteSpec{Upstream: "u", Match: &meridianv1.RouteMatch{Paths: []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Prefix{Prefix: prefix}}}}},
		}}},
	}
}

// bootSnapshot runs the program with rs cached as the given version and no
// reachable control plane, as bootFromCache does.
func bootSnapshot(t *testing.T, ctx context.Context, version uint64, rs []*meridianv1.Resource, args ...string) (map[string]string, <-chan int) {
	t.Helper()
	dir := t.TempDir()
	if err := cache.New(dir).Save(&meridianv1.Snapshot{Version: version, Hash: config.Hash(rs), Resources: rs}); err != nil {
		t.Fatal(err)
	}
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()

	outR, outW := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{
			"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--controlplane", deadAddr, "--cache-dir", dir, "--node-id", "test", "--insecure",
		}, args...), env(nil), outW, io.Discard)
		outW.Close()
	}()
	addrs := map[string]string{}
	sc := bufio.NewScanner(outR)
	for addrs["admin"] == "" && sc.Scan() {
		if name, addr, ok := strings.Cut(sc.Text(), " listening on "); ok {
			addrs[name] = addr
		}
	}
	go io.Copy(io.Discard, outR)
	return addrs, done
}

func TestGracefulDrain(t *testing.T) {
	arrived := make(chan struct{})
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "finished")
	}))
	defer up.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs, done := bootFromCache(t, ctx, strings.TrimPrefix(up.URL, "http://"), "--drain-timeout", "30s")
	traffic, adminAddr := addrs["dataplane"], addrs["admin"]
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	if status := statusOf(t, client, "http://"+adminAddr+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz before drain = %d", status)
	}

	type result struct {
		status int
		body   string
		err    error
	}
	inFlight := make(chan result, 1)
	go func() {
		resp, err := client.Get("http://" + traffic + "/slow")
		if err != nil {
			inFlight <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		inFlight <- result{status: resp.StatusCode, body: string(body), err: err}
	}()
	<-arrived

	cancel() // what SIGTERM does

	// While the request is in flight: not ready, admin still answering,
	// and the traffic listener refuses new connections.
	waitFor(t, "/readyz to turn 503", func() bool {
		return statusOf(t, client, "http://"+adminAddr+"/readyz") == http.StatusServiceUnavailable
	})
	waitFor(t, "new traffic connections to be refused", func() bool {
		c, err := net.DialTimeout("tcp", traffic, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if status := statusOf(t, client, "http://"+adminAddr+"/healthz"); status != http.StatusOK {
		t.Errorf("/healthz during drain = %d", status)
	}
	select {
	case code := <-done:
		t.Fatalf("exited with %d while a request was in flight", code)
	default:
	}

	close(release)
	r := <-inFlight
	if r.err != nil || r.status != http.StatusOK || r.body != "finished" {
		t.Errorf("in-flight request: %d %q %v, want 200 finished", r.status, r.body, r.err)
	}
	waitExit(t, done)
}

// waitExit waits for run to return and fails unless it exited 0.
func waitExit(t *testing.T, done <-chan int) {
	t.Helper()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code = %d after shutdown", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
}

func statusOf(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waitFor polls cond; it fails the test only if cond never holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
