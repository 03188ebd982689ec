package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// loopForwarder is a TCP forwarder to target, standing in for a load
// balancer in front of the data plane: a route to it is a loop that no
// apply-time check can see. It counts the connections it accepted.
func loopForwarder(t *testing.T, target string) (string, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close() // the data plane keeps idle ones for 90 s
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns[in] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, in)
					mu.Unlock()
					in.Close()
				}()
				out, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { io.Copy(out, in); out.Close() }()
				io.Copy(in, out)
			}()
		}
	}()
	return l.Addr().String(), &accepted
}

// openFDs counts the file descriptors of dp's process.
func openFDs(t *testing.T, dp *dataplane) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", dp.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("counting the data plane's file descriptors: %v", err)
	}
	return len(entries)
}

func loopConfig(upstream, target string) string {
	return fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: %s}
spec:
  targets: [{address: %q}]
---
apiVersion: meridian/v1
kind: Route
metadata: {name: loop}
spec:
  match: {paths: [{prefix: /loop/}]}
  upstream: %s
`, upstream, target, upstream)
}

// TestLoopAndSelfTargets: a route that leads back to the data plane
// (through a forwarder, as through a load balancer) is answered 508 at
// the second hop, without piling up connections; an upstream target at
// the data plane's own admin or traffic listener is NACKed with the field
// named, and the data plane keeps its configuration.
func TestLoopAndSelfTargets(t *testing.T) {
	skipShort(t)
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc to count file descriptors")
	}
	cp := startControlplane(t, "cp", t.TempDir(), "")
	dp := startDataplane(t, "dp-loop", t.TempDir(), nil, cp.addr)
	lb, accepted := loopForwarder(t, dp.addr)

	v1 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "loop.yaml", loopConfig("lb", lb)), "-m", "loop"))
	waitSynced(t, cp.addr, v1, "dp-loop")
	before := openFDs(t, dp)

	// 50 requests, 5 at a time. Without loop detection each would recurse
	// until file descriptors ran out; a client timeout keeps a failure
	// from hanging the test.
	client := &http.Client{Timeout: 10 * time.Second}
	const requests, workers = 50, 5
	var wg sync.WaitGroup
	errs := make(chan error, requests)
	var next atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= requests {
				resp, err := client.Get("http://" + dp.addr + "/loop/x")
				if err != nil {
					errs <- err
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusLoopDetected || !strings.Contains(string(body), `"loop detected"`) {
					errs <- fmt.Errorf("GET /loop/x = %d %s, want 508 loop detected", resp.StatusCode, body)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	after := openFDs(t, dp)
	t.Logf("data plane fds: %d before, %d after %d looping requests; the forwarder accepted %d connections", before, after, requests, accepted.Load())
	if after >= 200 {
		t.Errorf("the data plane has %d open file descriptors after %d looping requests, want < 200", after, requests)
	}
	if n := accepted.Load(); n > workers*2 {
		t.Errorf("the loop opened %d connections for %d requests %d at a time: it went round more than once", n, requests, workers)
	}
	// One loop_detected answer per request: the second hop's, which the
	// first relayed. The access log goes out buffered.
	eventually(t, "access log lines", func() error {
		if n := strings.Count(dp.out.String(), `"error":"loop_detected"`); n != requests {
			return fmt.Errorf("%d loop_detected access log lines, want %d", n, requests)
		}
		return nil
	})

	// Targets at the data plane's own listeners: NACKed, naming the field.
	// apply merges by name, so the second replaces the first's upstream.
	for i, self := range []struct{ upstream, target, listener string }{
		{"self", dp.admin, "admin"},
		{"self", dp.addr, "traffic"},
	} {
		v := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, fmt.Sprintf("self%d.yaml", i), loopConfig(self.upstream, self.target))))
		wantMsg := fmt.Sprintf("%q is this data plane's own %s listener (%s)", self.target, self.listener, self.target)
		eventually(t, "dp-loop NACKED", func() error {
			byID, _ := fleet(t, cp.addr)
			d := byID["dp-loop"]
			nack := d.GetLastNack()
			if d.GetState() != meridianv1.DataplaneState_DATAPLANE_STATE_NACKED || nack.GetVersion() != v {
				return fmt.Errorf("dp-loop is %s, last NACK of version %d; want NACKED, %d", d.GetState(), nack.GetVersion(), v)
			}
			if e := nack.GetError(); e.GetKind() != "Upstream" || e.GetName() != self.upstream || e.GetField() != "spec.targets[0].address" || e.GetMessage() != wantMsg {
				return fmt.Errorf("NACK error %v, want Upstream %q spec.targets[0].address: %s", e, self.upstream, wantMsg)
			}
			if d.GetAppliedVersion() != v1 {
				return fmt.Errorf("dp-loop applied %d, want %d kept", d.GetAppliedVersion(), v1)
			}
			return nil
		})
		table := mustCtl(t, cp.addr, "", "dataplanes")
		if want := fmt.Sprintf(`Upstream %q: spec.targets[0].address`, self.upstream); !strings.Contains(table, "NACKED") || !strings.Contains(table, want) {
			t.Errorf("dataplanes table does not show NACKED with %s:\n%s", want, table)
		}
	}
	// The admin API stayed off the traffic port, and v1 is still served.
	if code, body, err := dp.get("/config"); err != nil || code != 404 {
		t.Errorf("GET /config on the traffic port = %d %s %v, want 404", code, body, err)
	}
	if code, _, err := dp.get("/loop/again"); err != nil || code != http.StatusLoopDetected {
		t.Errorf("GET /loop/again = %d %v, want v1's 508", code, err)
	}
}
