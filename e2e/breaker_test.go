package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The breaker and retry tests run one control plane and one data plane in
// front of an upstream served by the test itself, so that the test decides
// what it answers and counts exactly what reaches it.

const (
	// brkOpen is the breaker's open duration. The test holds traffic on
	// the open breaker for brkOpenTraffic, so the difference is the slack
	// a stalled machine has before a half-open probe could slip in.
	brkOpen        = 2 * time.Second
	brkOpenTraffic = 500 * time.Millisecond
	// brkFallbackBody is the fallback's body, as the YAML sets it.
	brkFallbackBody = `{"error":"upstream unavailable"}`
)

// brkConfig is TestBreakerOpensServesFallbackAndRecovers' configuration:
// route /guarded/ to the flaky upstream behind a breaker that trips at a
// 50% error rate over 20 or more requests, stays open brkOpen (no jitter)
// and closes after 3 successful probes sent one at a time.
const brkConfig = `---
apiVersion: meridian/v1
kind: CircuitBreaker
metadata: {name: flaky-breaker}
spec:
  window: 10s
  bucket: 100ms
  minRequests: 20
  trip: {errorRate: 0.5}
  open: {duration: 2s, jitter: 0}
  halfOpen: {probes: 1, successes: 3}
  scope: upstream
  fallback:
    status: 503
    body: '{"error":"upstream unavailable"}'
    headers: {Content-Type: application/json}
---
apiVersion: meridian/v1
kind: Route
metadata: {name: guarded}
spec:
  match: {paths: [{prefix: /guarded/}]}
  upstream: flaky
  timeout: 5s
  circuitBreaker: flaky-breaker
`

// retryConfig is TestRetriesBoundedDuringOutage's configuration: route
// /retried/ retries connect failures and 503s up to 3 times within a 20%
// budget, with no breaker, so that the budget alone bounds the load.
const retryConfig = `---
apiVersion: meridian/v1
kind: Route
metadata: {name: retried}
spec:
  match: {paths: [{prefix: /retried/}]}
  upstream: flaky
  timeout: 5s
  retry:
    attempts: 3
    on: [connect_failure, "503"]
    backoff: {base: 5ms, max: 50ms}
    budgetPercent: 20
`

// TestBreakerOpensServesFallbackAndRecovers: healthy traffic passes; when
// the upstream fails the breaker opens and answers the fallback with
// X-Meridian-Breaker: open while nothing reaches the upstream; once the
// upstream heals and the open time is over, probes close the breaker and
// traffic flows again.
func TestBreakerOpensServesFallbackAndRecovers(t *testing.T) {
	skipShort(t)
	up := startFlaky(t)
	dp, client := startFlakyFleet(t, up, brkConfig)
	url := "http://" + dp.addr + "/guarded/x"

	// 1. Healthy: every request passes, once.
	const healthy = 40
	for i := range healthy {
		r := mustGet(t, client, url)
		if r.status != http.StatusOK || r.body != flakyOK || r.breaker != "" {
			t.Fatalf("healthy request %d: %s, want 200 %q without X-Meridian-Breaker", i, r, flakyOK)
		}
	}
	if n := up.requests.Load(); n != healthy {
		t.Fatalf("upstream received %d requests for %d healthy ones", n, healthy)
	}

	// 2. The upstream fails every request; the breaker trips. tripAfter is
	// when the last request that reached the upstream was sent: the trip
	// happened after it, so the open time ends after tripAfter + brkOpen.
	up.status.Store(http.StatusInternalServerError)
	var tripAfter time.Time
	failed := 0
	for {
		sent := time.Now()
		r := mustGet(t, client, url)
		if r.breaker != "" {
			checkFallback(t, "first rejected request", r, "open")
			break
		}
		if r.status != http.StatusInternalServerError || r.body != flakyFailing {
			t.Fatalf("request %d to the failing upstream: %s, want its 500 %q", failed, r, flakyFailing)
		}
		tripAfter = sent
		failed++
		if failed == 300 {
			t.Fatalf("the breaker did not open after %d failures in a row (after %d successes)", failed, healthy)
		}
	}
	t.Logf("the breaker opened after %d failed requests (window: %d successes before them)", failed, healthy)

	// 3. Open: every request gets the fallback and none reaches the
	// upstream.
	before := up.requests.Load()
	openStart := time.Now()
	rejected := 0
	for time.Since(openStart) < brkOpenTraffic {
		r := mustGet(t, client, url)
		checkFallback(t, fmt.Sprintf("request %d on the open breaker", rejected), r, "open")
		rejected++
		time.Sleep(5 * time.Millisecond)
	}
	if since := time.Since(tripAfter); since >= brkOpen {
		t.Fatalf("the open-breaker traffic ended %v after the trip, past the open time (%v): the machine is too slow for this test", since, brkOpen)
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("the upstream received %d requests while the breaker was open (%d rejected by the breaker over %v)", n, rejected, brkOpenTraffic)
	}
	t.Logf("open: %d requests over %v answered with the fallback; upstream requests %d -> %d", rejected, brkOpenTraffic, before, up.requests.Load())

	// 4. The upstream heals. After the open time, probes go through and
	// close the breaker: wait for 20 passing requests in a row.
	up.status.Store(0)
	var firstPass time.Duration
	passed, run, open, halfOpen := 0, 0, 0, 0
	deadline := time.Now().Add(brkOpen + 15*time.Second)
	for run < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("the breaker did not close within %v of the upstream healing: %d passed (last run %d), %d open, %d half-open answers",
				brkOpen+15*time.Second, passed, run, open, halfOpen)
		}
		r := mustGet(t, client, url)
		switch {
		case r.breaker == "open":
			checkFallback(t, "request while open", r, "open")
			open++
			run = 0
		case r.breaker == "half-open":
			checkFallback(t, "request while half-open", r, "half-open")
			halfOpen++
			run = 0
		case r.status == http.StatusOK && r.body == flakyOK && r.breaker == "":
			if passed == 0 {
				firstPass = time.Since(tripAfter)
			}
			passed++
			run++
		default:
			t.Fatalf("request after the upstream healed: %s, want the fallback or 200 %q", r, flakyOK)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("recovery: first request through %v after the trip; %d passed, %d open and %d half-open answers before the breaker closed",
		firstPass.Round(time.Millisecond), passed, open, halfOpen)
	// Sequential requests: every one that reached the upstream since the
	// trip was answered 200, so none went through while the breaker was
	// open, and the first went through no earlier than the open time.
	if n := up.requests.Load() - before; n != int64(passed) {
		t.Errorf("after the trip the upstream received %d requests but the client got %d answers from it", n, passed)
	}
	if firstPass < brkOpen {
		t.Errorf("a request reached the upstream %v after the trip, before the open time (%v) was over", firstPass, brkOpen)
	}
}

// TestRetriesBoundedDuringOutage: with retry attempts 3 and a 20% budget,
// a healthy upstream gets exactly the offered requests, and during a full
// outage (503 to everything) the upstream sees at most 1.2 × the offered
// requests rather than up to 4 ×.
func TestRetriesBoundedDuringOutage(t *testing.T) {
	skipShort(t)
	up := startFlaky(t)
	dp, client := startFlakyFleet(t, up, retryConfig)
	url := "http://" + dp.addr + "/retried/x"
	const (
		rate    = 400 // requests per second
		workers = 16
		healthy = 200 // 0.5s: no retry wanted; gives the budget a base
		outage  = 2000
		// The outage load starts at .500 into a Unix second, so that runs
		// put the budget's 100 ms slot edges at the same places.
		phase = 500 * time.Millisecond
	)

	healthyRes := offer(client, url, healthy, rate, workers, time.Now().Add(10*time.Millisecond))
	healthySeen := up.requests.Load()
	t.Logf("healthy: offered %d, statuses %v, errors %d; upstream received %d", healthy, healthyRes.statuses, healthyRes.errors, healthySeen)
	if healthyRes.statuses[http.StatusOK] != healthy {
		t.Fatalf("healthy phase: %d of %d requests answered 200 (statuses %v, errors %d, first error %v)",
			healthyRes.statuses[http.StatusOK], healthy, healthyRes.statuses, healthyRes.errors, healthyRes.firstErr)
	}
	if healthySeen != healthy {
		t.Errorf("healthy phase with attempts 3: the upstream received %d requests for %d offered, want exactly %d", healthySeen, healthy, healthy)
	}

	up.status.Store(http.StatusServiceUnavailable)
	start := time.Now().Add(50 * time.Millisecond)
	into := time.Duration(start.UnixNano() % int64(time.Second))
	start = start.Add((phase - into + time.Second) % time.Second)
	// The first second of the outage is sampled apart: retries the
	// healthy phase paid for are spent there.
	var firstSecond int64
	var sampler sync.WaitGroup
	sampler.Go(func() {
		time.Sleep(time.Until(start.Add(time.Second)))
		firstSecond = up.requests.Load() - healthySeen
	})
	outageRes := offer(client, url, outage, rate, workers, start)
	sampler.Wait()
	total := up.requests.Load()
	outageSeen := total - healthySeen
	offered := int64(healthy + outage)
	t.Logf("outage: offered %d over %v at %d/s from %d workers, statuses %v, errors %d",
		outage, outageRes.took.Round(time.Millisecond), rate, workers, outageRes.statuses, outageRes.errors)
	t.Logf("outage: upstream received %d = %.4f × the %d offered (bound 1.2 ×; without a budget up to 4 ×); in its first second %d for %d offered (%.3f ×)",
		outageSeen, float64(outageSeen)/outage, outage, firstSecond, rate, float64(firstSecond)/rate)
	t.Logf("whole run (healthy + outage): offered %d, upstream received %d = %.4f × offered",
		offered, total, float64(total)/float64(offered))
	if outageRes.statuses[http.StatusServiceUnavailable] != outage {
		t.Errorf("outage: %d of %d requests answered the upstream's 503 (statuses %v, errors %d, first error %v)",
			outageRes.statuses[http.StatusServiceUnavailable], outage, outageRes.statuses, outageRes.errors, outageRes.firstErr)
	}
	if outageSeen <= outage {
		t.Errorf("outage: the upstream received %d requests for %d offered: no retry was made", outageSeen, outage)
	}
	// The bound, 1.2 × on the outage's own requests, with the
	// slack the budget's rolling window leaves at its edges: it is judged
	// over the last second in 100 ms slots, so up to one slot of requests
	// from before the outage (20% of rate/10) can pay for retries in it,
	// and the floor lets 3 retries through in any second. At 400/s that is
	// 11 requests, 0.55% of the outage.
	slack := int64(rate/10*20/100 + 3)
	if outageSeen*10 > outage*12+slack*10 {
		t.Errorf("outage: the upstream received %d requests for %d offered (%.4f ×), more than 1.2 × + %d", outageSeen, outage, float64(outageSeen)/outage, slack)
	}
	if total*10 > offered*12+slack*10 {
		t.Errorf("whole run: the upstream received %d requests for %d offered (%.4f ×), more than 1.2 × + %d", total, offered, float64(total)/float64(offered), slack)
	}
}

// ---------------------------------------------------------------- upstream

// The flaky upstream's answers.
const (
	flakyOK      = "ok\n"
	flakyFailing = "failing\n"
)

// flaky is an HTTP upstream run by the test: it answers 200 flakyOK, or
// status with flakyFailing while status is not 0, and counts every request
// it receives.
type flaky struct {
	addr     string
	status   atomic.Int64 // 0: healthy
	requests atomic.Int64
}

func startFlaky(t *testing.T) *flaky {
	t.Helper()
	f := &flaky{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		io.Copy(io.Discard, r.Body) //nolint:errcheck // the body is not used
		if s := f.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			io.WriteString(w, flakyFailing) //nolint:errcheck // the data plane may be gone
			return
		}
		io.WriteString(w, flakyOK) //nolint:errcheck // the data plane may be gone
	}))
	t.Cleanup(srv.Close)
	f.addr = srv.Listener.Addr().String()
	return f
}

// startFlakyFleet runs a control plane and a data plane, applies an
// Upstream "flaky" pointing at up plus cfg, and waits until the data plane
// has it. The client keeps connections alive.
func startFlakyFleet(t *testing.T, up *flaky, cfg string) (*dataplane, *http.Client) {
	t.Helper()
	cp := startControlplane(t, "cp", t.TempDir(), "")
	dp := startDataplane(t, "dp-1", t.TempDir(), nil, cp.addr)
	full := fmt.Sprintf("apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: flaky}\nspec:\n  targets: [{address: %q}]\n", up.addr) + cfg
	v := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "flaky.yaml", full)))
	waitSynced(t, cp.addr, v, dp.id)
	tr := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return dp, &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// ---------------------------------------------------------------- client

// reply is what the client saw of one response.
type reply struct {
	status      int
	body        string
	breaker     string // X-Meridian-Breaker
	contentType string
}

func (r reply) String() string {
	return fmt.Sprintf("%d %q (X-Meridian-Breaker %q, Content-Type %q)", r.status, r.body, r.breaker, r.contentType)
}

func getReply(c *http.Client, url string) (reply, error) {
	resp, err := c.Get(url)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return reply{
		status:      resp.StatusCode,
		body:        string(body),
		breaker:     resp.Header.Get("X-Meridian-Breaker"),
		contentType: resp.Header.Get("Content-Type"),
	}, err
}

func mustGet(t *testing.T, c *http.Client, url string) reply {
	t.Helper()
	r, err := getReply(c, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

// checkFallback fails the test unless r is the configured fallback with
// X-Meridian-Breaker: state.
func checkFallback(t *testing.T, what string, r reply, state string) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable || r.body != brkFallbackBody || r.contentType != "application/json" || r.breaker != state {
		t.Fatalf("%s: %s, want the fallback: 503 %q, Content-Type application/json, X-Meridian-Breaker %q", what, r, brkFallbackBody, state)
	}
}

// offerResult counts the answers to a paced load.
type offerResult struct {
	statuses map[int]int
	errors   int
	firstErr error
	took     time.Duration
}

// offer sends n GETs to url at rate per second in total from workers
// goroutines, from start on. Worker w sends requests w, w+workers, ...
// each when it is due (request k at k/rate after start), or at once when
// it is behind, so exactly n are offered.
func offer(c *http.Client, url string, n, rate, workers int, start time.Time) offerResult {
	res := offerResult{statuses: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			statuses := map[int]int{}
			errs := 0
			var firstErr error
			for k := w; k < n; k += workers {
				time.Sleep(time.Until(start.Add(time.Duration(int64(k) * int64(time.Second) / int64(rate)))))
				code, err := getStatus(c, url)
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				statuses[code]++
			}
			mu.Lock()
			defer mu.Unlock()
			for code, k := range statuses {
				res.statuses[code] += k
			}
			res.errors += errs
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
		})
	}
	wg.Wait()
	res.took = time.Since(start)
	return res
}
