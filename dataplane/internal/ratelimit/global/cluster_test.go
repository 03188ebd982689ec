package global

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterBusOffset is the distance Redis Cluster puts between a node's client
// port and its cluster bus port.
const clusterBusOffset = 10000

// TestRedisCluster runs every algorithm against a 3-master Redis Cluster with
// composite keys spread over all slots: the sliding window's two keys must
// share a slot (no CROSSSLOT), and each key must still admit exactly its
// limit.
func TestRedisCluster(t *testing.T) {
	nodes := startCluster(t, 3)
	addrs := make([]string, len(nodes))
	for i, s := range nodes {
		addrs[i] = s.addr
	}
	c := NewClient(&redis.UniversalOptions{Addrs: addrs})
	t.Cleanup(func() { _ = c.Close() })
	if _, ok := c.(*redis.ClusterClient); !ok {
		t.Fatalf("NewClient with %d addresses returned %T, want *redis.ClusterClient", len(addrs), c)
	}
	ctx := context.Background()
	// A day-long period keeps token refill and window movement out of the
	// test; only the fixed window's midnight edge needs avoiding.
	const period = 24 * time.Hour
	avoidWindowEdge(t, c, period)

	l := New(c, quietOptions())
	keys := compositeKeys(24)
	// Queue mode: an interval of 8h and a MaxWait of 9h queue one request.
	const maxWait = 9 * time.Hour
	tests := []struct {
		name  string
		limit Limit
		// queued is how many requests past the limit are allowed with a Wait.
		queued int64
		// redisKeys is how many Redis keys one decision key creates.
		redisKeys int
	}{
		{"token bucket", Limit{Name: "tenant:gold:tb", Algorithm: tokenBucket, Limit: 3, Period: period}, 0, 1},
		{"gcra", Limit{Name: "tenant:gold:gcra", Algorithm: gcra, Limit: 3, Period: period, Burst: 3}, 0, 1},
		{"sliding window", Limit{Name: "tenant:gold:sw", Algorithm: slidingWindow, Limit: 3, Period: period}, 0, 2},
		{"fixed window", Limit{Name: "per-consumer", Algorithm: fixedWindow, Limit: 3, Period: period}, 0, 1},
		{"token bucket queue", Limit{Name: "tenant:gold:tbq", Algorithm: tokenBucket, Limit: 3, Period: period, MaxWait: maxWait}, 1, 1},
		{"gcra queue", Limit{Name: "tenant:gold:gcraq", Algorithm: gcra, Limit: 3, Period: period, Burst: 3, MaxWait: maxWait}, 1, 1},
		{"token bucket batch", Limit{Name: "tenant:gold:tbb", Algorithm: tokenBucket, Limit: 3, Period: period, Batch: 2}, 0, 1},
		{"sliding window batch", Limit{Name: "tenant:gold:swb", Algorithm: slidingWindow, Limit: 3, Period: period, Batch: 2}, 0, 2},
	}
	var wantKeys int64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, key := range keys {
				for i := range tt.limit.Limit {
					if d := clusterAllow(t, l, tt.limit, key); !d.Allowed || d.Wait != 0 {
						t.Fatalf("key %q request %d: got %+v, want allowed", key, i, d)
					}
				}
				for i := range tt.queued {
					if d := clusterAllow(t, l, tt.limit, key); !d.Allowed || d.Wait <= 0 || d.Wait > maxWait {
						t.Fatalf("key %q queued request %d: got %+v, want allowed with Wait in (0, %s]", key, i, d, maxWait)
					}
				}
				for i := range 2 {
					if d := clusterAllow(t, l, tt.limit, key); d.Allowed || d.RetryAfter <= 0 {
						t.Fatalf("key %q request %d over the limit: got %+v, want denied with RetryAfter > 0", key, i, d)
					}
				}
			}
		})
		wantKeys += int64(tt.redisKeys * len(keys))
	}

	// Every key of one decision is in one slot, and the hash tags really
	// differ between decisions.
	slots := make(map[int64]bool)
	for _, key := range keys {
		rkey := RedisKey(Limit{Name: "tenant:gold:sw", Algorithm: slidingWindow}, key)
		slot, err := c.ClusterKeySlot(ctx, rkey).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %q: %v", rkey, err)
		}
		seqSlot, err := c.ClusterKeySlot(ctx, rkey+":seq").Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %q: %v", rkey+":seq", err)
		}
		if slot != seqSlot {
			t.Errorf("sliding window keys of %q are in slots %d and %d, want one slot", key, slot, seqSlot)
		}
		slots[slot] = true
	}
	if len(slots) < len(keys)/2 {
		t.Errorf("%d keys landed in only %d slots; hash tags are not spreading them", len(keys), len(slots))
	}

	// The keys are spread over the masters, and none went missing.
	var total int64
	var used int
	for _, s := range nodes {
		n := dbSize(t, s.addr)
		t.Logf("node %s holds %d keys", s.addr, n)
		total += n
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("keys landed on %d of %d nodes, want at least 2", used, len(nodes))
	}
	if total != wantKeys {
		t.Errorf("cluster holds %d keys, want %d", total, wantKeys)
	}
	if st := l.Stats(); st.Failures != 0 || st.FastFailures != 0 {
		t.Errorf("stats %+v, want no failures", st)
	}
}

// compositeKeys returns n distinct decision keys shaped like the gateway's
// composite keys: parts joined by NUL, with colons, braces and values long
// enough to be hashed.
func compositeKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		switch i % 4 {
		case 0:
			keys[i] = fmt.Sprintf("10.0.%d.%d\x00header:x-tenant=acme", i/256, i%256)
		case 1:
			keys[i] = fmt.Sprintf("consumer:user-%d\x00claim:org=o%d", i, i%7)
		case 2:
			keys[i] = fmt.Sprintf("{route-%d}\x00client_ip:192.0.2.%d", i, i)
		default:
			keys[i] = fmt.Sprintf("%s\x00header:x-long=%d", strings.Repeat("v", maxTagKeyLen), i)
		}
	}
	return keys
}

// clusterAllow is mustAllow with a specific message for a CROSSSLOT error,
// the failure this test exists to catch.
func clusterAllow(t *testing.T, l *Limiter, limit Limit, key string) Decision {
	t.Helper()
	d, err := l.Allow(context.Background(), limit, key)
	if err != nil {
		if strings.Contains(err.Error(), "CROSSSLOT") {
			t.Fatalf("Allow(%s, %q) touched keys in several slots: %v", limit.Name, key, err)
		}
		t.Fatalf("Allow(%s, %q): %v", limit.Name, key, err)
	}
	return d
}

// avoidWindowEdge sleeps past the next fixed-window boundary (by the Redis
// clock) when it is less than a minute away, so the test stays in one window.
func avoidWindowEdge(t *testing.T, c redis.UniversalClient, period time.Duration) {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	into := time.Duration(now.UnixMicro()%period.Microseconds()) * time.Microsecond
	if left := period - into; left < time.Minute {
		time.Sleep(left + 100*time.Millisecond)
	}
}

func dbSize(t *testing.T, addr string) int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	n, err := c.DBSize(context.Background()).Result()
	if err != nil {
		t.Fatalf("DBSIZE on %s: %v", addr, err)
	}
	return n
}

// startCluster starts n cluster-enabled redis-servers on loopback, joins them
// with redis-cli into a cluster of n masters, waits until every node reports
// cluster_state:ok, and kills them all when the test ends.
func startCluster(t *testing.T, n int) []*redisServer {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found (%v): install redis-server (Debian: apt-get install redis-server, which ships redis-cli); this test needs a real Redis Cluster", bin, err)
		}
	}
	dir := t.TempDir()
	nodes := make([]*redisServer, n)
	for i := range nodes {
		nodes[i] = startClusterNode(t, dir)
	}

	args := []string{"--cluster", "create"}
	for _, s := range nodes {
		args = append(args, s.addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	waitClusterOK(t, nodes, 20*time.Second)
	return nodes
}

// startClusterNode starts one cluster-enabled redis-server whose client and
// bus ports are both free, retrying a few times in case another process takes
// a port in between.
func startClusterNode(t *testing.T, dir string) *redisServer {
	t.Helper()
	var lastErr error
	for range 3 {
		port, err := freeClusterPort()
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		s := &redisServer{t: t, port: port, dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
		if lastErr = s.startClusterNode(); lastErr == nil {
			t.Cleanup(s.stop)
			return s
		}
	}
	t.Fatalf("start cluster redis-server: %v", lastErr)
	return nil
}

// freeClusterPort returns a free loopback port whose cluster bus port
// (port+10000) is valid and free too.
func freeClusterPort() (int, error) {
	for range 50 {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if port+clusterBusOffset > 65535 {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+clusterBusOffset)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return port, nil
	}
	return 0, errors.New("no free pair of client and cluster bus ports")
}

// startClusterNode runs a cluster-enabled redis-server on s.port and waits
// until it answers PING.
func (s *redisServer) startClusterNode() error {
	p := strconv.Itoa(s.port)
	return s.start("--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(s.dir, "nodes-"+p+".conf"))
}

// waitClusterOK polls CLUSTER INFO on every node until all report
// cluster_state:ok, failing the test after timeout.
func waitClusterOK(t *testing.T, nodes []*redisServer, timeout time.Duration) {
	t.Helper()
	clients := make([]*redis.Client, len(nodes))
	for i, s := range nodes {
		clients[i] = redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1})
		defer clients[i].Close()
	}
	deadline := time.Now().Add(timeout)
	for {
		var notOK []string
		for i, c := range clients {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			info, err := c.ClusterInfo(ctx).Result()
			cancel()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				notOK = append(notOK, nodes[i].addr)
			}
		}
		if len(notOK) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not ok after %s on %s", timeout, strings.Join(notOK, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
