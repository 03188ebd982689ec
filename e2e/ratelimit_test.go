package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The global rate limit tests run three data planes against one Redis with
// one limit of rlLimit requests per second keyed on the route, and offer
// three times that, split unevenly across the data planes so that no node's
// share happens to equal its traffic.
const (
	rlLimit = 200
	// rlWindow is the accounting window: the limit's period.
	rlWindow = time.Second
)

// rlRates are the paced request rates sent to dp-1, dp-2 and dp-3: 60/30/10
// percent of 3 × rlLimit.
func rlRates() []int { return []int{360, 180, 60} }

// TestGlobalRateLimitAccuracy: three data planes sharing a 200/s limit
// through Redis admit 200 ± 3% in every one-second window under 3× overload,
// whichever node the traffic arrives at.
func TestGlobalRateLimitAccuracy(t *testing.T) {
	skipShort(t)
	rd := startRedis(t, freeAddr(t))
	f := startRLFleet(t, rd)
	f.apply(t,
		rlRoute("sw", "  algorithm: sliding_window\n"),
		// GCRA's default burst of 1 cannot admit a steady 200/s from
		// jittery arrivals: an admission is only possible once now has
		// reached the theoretical arrival time (TAT), and the TAT then
		// restarts from that arrival, so every gap between the TAT and
		// the next decided arrival is lost (part of the 1.7 ms
		// inter-arrival time, the round trip to Redis once a cached
		// denial expires, any scheduling pause, per 5 ms slot: this
		// setup measured 146..159 admitted per second with burst 1).
		// With burst b ≥ 2 the TAT runs
		// ahead of now under overload and each admission advances it by
		// exactly period/limit, whatever the arrival jitter, so exactly
		// 200/s pass; a pause in arrivals of up to (b−1) × 5 ms is made
		// up by back-to-back admissions when requests resume. b = 20
		// absorbs 95 ms pauses (likely under -race on a loaded 2-core
		// machine); its cost is b−1 extra admissions when the load
		// starts, the documented burst, which is why the first window is
		// not judged.
		rlRoute("gcra", "  algorithm: gcra\n  burst: 20\n"),
	)
	for _, tc := range []struct{ name, route string }{{"sliding_window", "sw"}, {"gcra", "gcra"}} {
		t.Run(tc.name, func(t *testing.T) {
			load := f.run(t, "/"+tc.route+"/x", 10*time.Second, anyPhase, nil)
			load.checkOffered(t)
			load.checkResponses(t)
			ws := load.perWindow(0)
			logWindows(t, ws)
			logShiftedWindows(t, load)
			ks := span(1, len(ws))
			if tc.route == "gcra" {
				ks = load.withoutStalls(t, ks, gcraStall)
			}
			judge(t, "200/s ± 3%", ws, ks, tolLo(rlLimit, 0.03), tolHi(rlLimit, 0.03), 6, 6)
		})
	}
}

// gcraStall is the longest pause in arrivals the GCRA route's burst of 20
// makes up without going over the rate: (burst − 1) × period / limit. After
// a longer pause GCRA admits up to burst − 1 more at once, as it promises,
// so that window says nothing about the gateway.
const gcraStall = 19 * time.Second / rlLimit

// withoutStalls returns ks without the windows in which a pause of at
// least gap in the whole fleet's arrivals ended (the sender, not the
// gateway, stalled), and logs the windows left out.
func (r *loadResult) withoutStalls(t *testing.T, ks []int, gap time.Duration) []int {
	t.Helper()
	sent := make([]time.Duration, len(r.shots))
	for i, s := range r.shots {
		sent[i] = s.sent
	}
	slices.Sort(sent)
	stalled := map[int]bool{}
	for i := 1; i < len(sent); i++ {
		if sent[i]-sent[i-1] >= gap {
			stalled[int(sent[i]/rlWindow)] = true
		}
	}
	kept := slices.DeleteFunc(slices.Clone(ks), func(k int) bool { return stalled[k] })
	if len(kept) < len(ks) {
		t.Logf("not judged, the sender paused %s or more in them (burst banked): windows %v", gap, slices.Sorted(maps.Keys(stalled)))
	}
	return kept
}

// TestGlobalRateLimitLocalBatch measures localBatch: 20 against exact
// counting on the same fleet: per-window overshoot (bounded by what the
// data planes can hold, nodes × (batch − 1)) and Redis script calls per
// request.
func TestGlobalRateLimitLocalBatch(t *testing.T) {
	skipShort(t)
	const batch = 20
	rd := startRedis(t, freeAddr(t))
	f := startRLFleet(t, rd)
	f.apply(t,
		rlRoute("exact", "  algorithm: sliding_window\n"),
		rlRoute("batched", fmt.Sprintf("  algorithm: sliding_window\n  localBatch: %d\n", batch)),
	)

	measure := func(t *testing.T, path string, d time.Duration) (*loadResult, float64) {
		before := scriptCalls(t, rd.addr)
		load := f.run(t, path, d, anyPhase, nil)
		calls := scriptCalls(t, rd.addr) - before
		perReq := float64(calls) / float64(len(load.shots))
		t.Logf("%s: %d script calls (EVALSHA+EVAL) for %d requests = %.4f per request", path, calls, len(load.shots), perReq)
		load.checkOffered(t)
		load.checkResponses(t)
		return load, perReq
	}

	exact, exactPerReq := measure(t, "/exact/x", 4*time.Second)
	logWindows(t, exact.perWindow(0))

	load, batchPerReq := measure(t, "/batched/x", 10*time.Second)
	ws := load.perWindow(0)
	logWindows(t, ws)
	logShiftedWindows(t, load)
	// A data plane holds at most batch−1 tokens it took from Redis and has
	// not spent yet, so a window can admit at most that many per node more
	// than Redis granted in it (tokens taken before it), and at most that
	// many fewer (tokens taken in it, spent after it).
	bound := len(f.dps) * (batch - 1)
	judge(t, "localBatch overshoot bound", ws, span(1, len(ws)), rlLimit-bound, rlLimit+bound, 20, 6)
	over, under, sum := 0, 0, 0
	for _, w := range ws[1:] {
		sum += w.sent
		over, under = max(over, w.sent-rlLimit), min(under, w.sent-rlLimit)
	}
	t.Logf("localBatch %d: windows 1..%d admitted mean %.1f, max overshoot %+d, max undershoot %+d (by send time; bound ±%d = nodes × (localBatch−1)); script calls per request %.4f batched vs %.4f exact (%.1f× fewer)",
		batch, len(ws)-1, float64(sum)/float64(len(ws)-1), over, under, bound, batchPerReq, exactPerReq, exactPerReq/max(batchPerReq, 1e-9))
	if batchPerReq*2 > exactPerReq {
		t.Errorf("localBatch %d makes %.4f script calls per request, want well below (under half) exact counting's %.4f", batch, batchPerReq, exactPerReq)
	}
}

// TestGlobalRateLimitRedisFailure: when Redis dies under load, every data
// plane falls back to its share of the limit (limit / fleet size) at once,
// without 5xx and without waiting on the dead store; when Redis comes back
// on the same address, global counting resumes by itself.
func TestGlobalRateLimitRedisFailure(t *testing.T) {
	skipShort(t)
	rd := startRedis(t, freeAddr(t))
	f := startRLFleet(t, rd)
	f.apply(t, rlRoute("guarded", "  algorithm: sliding_window\n"))
	// The fallback enforces limit / fleet size; without the fleet size the
	// nodes would each allow the whole limit.
	for _, dp := range f.dps {
		eventually(t, dp.id+" fleet size 3", func() error {
			n, err := fleetSizeOf(dp)
			if err != nil {
				return err
			}
			if n != len(f.dps) {
				return fmt.Errorf("fleetSize %d, want %d", n, len(f.dps))
			}
			return nil
		})
	}
	share := (rlLimit + len(f.dps) - 1) / len(f.dps)

	const (
		loadFor = 11 * time.Second
		// The kill lands after window 2's admissions (the sliding log
		// admits each window's 200 in its first third under 3×
		// overload), so windows 3..6 are the outage and window 2 the
		// switch.
		killAt    = 2950 * time.Millisecond
		restartAt = 7 * time.Second
		// The local share is counted in windows aligned to the Unix
		// epoch (the two-window sliding estimate). Starting the load at
		// .750 into a second puts a local window edge 300ms after the
		// kill: the nodes spend their fresh share at once, bunched at the
		// end of that local window, and the estimate, which assumes a
		// previous window's requests were spread evenly, lets most of a
		// share more through before test window 3 ends. That is the worst
		// phase for the first outage window, fixed so the test does not
		// depend on when it runs.
		phase = 750 * time.Millisecond
	)
	var killed, restarted, readyAt time.Duration
	var callsAtRestart int64
	load := f.run(t, "/guarded/x", loadFor, phase, func(start time.Time) {
		time.Sleep(time.Until(start.Add(killAt)))
		rd.kill()
		killed = time.Since(start)
		time.Sleep(time.Until(start.Add(restartAt)))
		restarted = time.Since(start)
		rd.restart(t)
		readyAt = time.Since(start)
		callsAtRestart = scriptCalls(t, rd.addr)
	})
	callsAfter := scriptCalls(t, rd.addr) - callsAtRestart
	t.Logf("redis killed at %v, restarted at %v (ready at %v); the new redis ran %d script calls from then to the end of the load",
		killed.Round(time.Millisecond), restarted.Round(time.Millisecond), readyAt.Round(time.Millisecond), callsAfter)
	load.checkOffered(t)
	load.checkResponses(t)
	ws := load.perWindow(0)
	logWindows(t, ws)

	// Latency during the outage: a request must not wait on the dead
	// store beyond the Redis timeout (50ms). 1s is the assertion; the
	// numbers are logged against the healthy phase's.
	var healthy, outage, afterKill, back []time.Duration
	for _, s := range load.shots {
		switch {
		case s.sent < killed:
			healthy = append(healthy, s.latency)
		case s.sent < restarted:
			outage = append(outage, s.latency)
			// The first second holds the failing calls that open the
			// breaker and its first probe.
			if s.sent < killed+time.Second {
				afterKill = append(afterKill, s.latency)
			}
		default:
			back = append(back, s.latency)
		}
	}
	t.Logf("latency before the kill: %s", latencySummary(healthy))
	t.Logf("latency during the outage: %s; in its first second: %s", latencySummary(outage), latencySummary(afterKill))
	t.Logf("latency after the restart: %s", latencySummary(back))
	// Where the slow ones fall: around the kill (failing calls opening
	// the breaker) or at each breaker probe (one per cool-down).
	slow := map[time.Duration]int{}
	for _, s := range load.shots {
		if s.sent >= killed && s.sent < restarted && s.latency > 60*time.Millisecond {
			slow[s.sent.Truncate(100*time.Millisecond)]++
		}
	}
	var at []string
	for _, k := range slices.Sorted(maps.Keys(slow)) {
		at = append(at, fmt.Sprintf("%.1fs:%d", k.Seconds(), slow[k]))
	}
	t.Logf("outage requests slower than 60ms, by send time (100ms buckets): %s", strings.Join(at, " "))
	if len(outage) == 0 {
		t.Fatal("no request was sent during the outage")
	}
	if m := slices.Max(outage); m >= time.Second {
		t.Errorf("a request during the outage took %v; a dead Redis must cost at most the Redis timeout (50ms), asserted < 1s", m)
	}

	// Outage windows: entirely between the kill and the restart; each
	// node counts its share locally.
	var outageWindows []int
	for k := range ws {
		if time.Duration(k)*rlWindow >= killed && time.Duration(k+1)*rlWindow <= restarted {
			outageWindows = append(outageWindows, k)
		}
	}
	if len(outageWindows) < 3 {
		t.Fatalf("only %d whole windows fell inside the outage (killed %v, restarted %v); the machine is too slow for this test", len(outageWindows), killed, restarted)
	}
	t.Logf("outage windows %v (each node's share %d)", outageWindows, share)
	judge(t, "during the outage, at most 1.2 × the limit", ws, outageWindows, 0, rlLimit*12/10, 20, len(outageWindows)-1)

	// Recovery: global counting must resume by itself within a few
	// seconds. Counting locally, dp-1 cannot admit more than its share
	// (about 67) per window; counting globally it takes its 60% of the
	// traffic's share of the limit (about 120), so dp-1's count tells the
	// two modes apart where the total (194 vs 200) cannot.
	if callsAfter == 0 {
		t.Errorf("the restarted redis received no script calls: global counting did not resume")
	}
	isGlobal := func(w window) bool {
		return w.lo >= tolLo(rlLimit, 0.10) && w.hi <= tolHi(rlLimit, 0.10) && w.perNode[0] > share*12/10
	}
	first := int(restarted/rlWindow) + 1
	recovered := -1
	for k := first; k < len(ws); k++ {
		switch {
		case isGlobal(ws[k]):
			if recovered < 0 {
				recovered = k
			}
		case ws[k].hi-ws[k].lo > 20 && ws[k].perNode[0] > share*12/10:
			// A harness stall blurs the window; dp-1 above its share
			// still shows global counting.
			t.Logf("window %d: not judged, harness stall (admitted %d..%d)", k, ws[k].lo, ws[k].hi)
		default:
			recovered = -1
		}
	}
	resumeBy := first + 1 // within ~2s of the restart
	switch {
	case recovered < 0:
		t.Errorf("global counting did not resume after redis came back: no run of windows to the end with %d ± 10%% admitted and dp-1 above its local share", rlLimit)
	case recovered > resumeBy:
		t.Errorf("global counting resumed only from window %d, want by window %d (within ~2s of the restart at %v)", recovered, resumeBy, restarted)
	default:
		t.Logf("global counting resumed from window %d on (redis restarted at %v)", recovered, restarted.Round(time.Millisecond))
	}
	for _, dp := range f.dps {
		out := dp.out.String()
		if !strings.Contains(out, "global rate limit store unavailable") || !strings.Contains(out, "counting through Redis again") {
			t.Errorf("%s did not log both switches (to onStoreFailure and back)", dp.id)
		}
	}
}

// ---------------------------------------------------------------- fleet

// rlFleet is a control plane, three data planes using one Redis, and an
// echo upstream.
type rlFleet struct {
	cp   *controlplane
	dps  []*dataplane
	echo string
	// clients are keep-alive clients, one per data plane, shared by
	// warm-up and load so the load runs on warm connections.
	clients []*http.Client
}

func startRLFleet(t *testing.T, rd *redisServer) *rlFleet {
	t.Helper()
	f := &rlFleet{echo: startEcho(t, "echo-rl")}
	f.cp = startControlplane(t, "cp", t.TempDir(), "")
	for i := range rlRates() {
		dp := startDataplaneArgs(t, fmt.Sprintf("dp-%d", i+1), t.TempDir(), nil, []string{f.cp.addr}, []string{"--redis", rd.addr})
		f.dps = append(f.dps, dp)
		tr := &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute, DisableCompression: true}
		t.Cleanup(tr.CloseIdleConnections)
		f.clients = append(f.clients, &http.Client{Transport: tr, Timeout: 10 * time.Second})
	}
	return f
}

// rlRoute is a global RateLimit named name (rlLimit per second on the route,
// falling back to the local share) and a Route /name/ using it; spec holds
// more spec lines.
func rlRoute(name, spec string) string {
	return fmt.Sprintf(`---
apiVersion: meridian/v1
kind: RateLimit
metadata: {name: %[1]s}
spec:
  scope: global
  limit: %[2]d
  period: 1s
  key: [route]
  onStoreFailure: local
%[3]s---
apiVersion: meridian/v1
kind: Route
metadata: {name: %[1]s}
spec:
  match: {paths: [{prefix: /%[1]s/}]}
  upstream: echo
  rateLimits: [%[1]s]
`, name, rlLimit, spec)
}

// apply applies the echo upstream and routes and waits for every data plane.
func (f *rlFleet) apply(t *testing.T, routes ...string) {
	t.Helper()
	cfg := fmt.Sprintf("apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: echo}\nspec:\n  targets: [{address: %q}]\n", f.echo)
	cfg += strings.Join(routes, "")
	v := versionOf(t, mustCtl(t, f.cp.addr, "", "apply", "-f", writeFile(t, "rl.yaml", cfg)))
	var ids []string
	for _, dp := range f.dps {
		ids = append(ids, dp.id)
	}
	waitSynced(t, f.cp.addr, v, ids...)
}

// anyPhase starts a load as soon as it is ready.
const anyPhase = -1

// run warms up every data plane's connections on path, lets the limit's
// state expire, then offers rlRates() to the data planes for d, starting at
// phase into a Unix second (anyPhase: at once). during, when set, runs on
// the test's goroutine with the load's start time while the load runs; run
// returns when both are done.
func (f *rlFleet) run(t *testing.T, path string, d, phase time.Duration, during func(start time.Time)) *loadResult {
	t.Helper()
	// Warm-up: open keep-alive connections (more than the load needs at
	// a few ms latency) and the data planes' Redis connections, and load
	// the scripts. Its requests count against the limit, so the load
	// starts only once they have left the window.
	var wg sync.WaitGroup
	errs := make(chan error, 64*len(f.dps))
	for i, dp := range f.dps {
		for range 24 {
			wg.Go(func() {
				code, err := getStatus(f.clients[i], "http://"+dp.addr+path)
				if err == nil && code != http.StatusOK && code != http.StatusTooManyRequests {
					err = fmt.Errorf("%s: status %d", dp.id, code)
				}
				if err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("warm-up: %v", err)
	}
	time.Sleep(rlWindow + 300*time.Millisecond)

	start := time.Now().Add(20 * time.Millisecond)
	if phase >= 0 {
		into := time.Duration(start.UnixNano() % int64(time.Second))
		start = start.Add((phase - into + time.Second) % time.Second)
	}
	var load *loadResult
	var running sync.WaitGroup
	running.Go(func() { load = paceLoad(f, path, start, d) })
	// If during fails the test, the load still ends by itself after d;
	// the programs it talks to are stopped only after that.
	t.Cleanup(running.Wait)
	if during != nil {
		during(start)
	}
	running.Wait()
	return load
}

func getStatus(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// ---------------------------------------------------------------- load

// shot is one request of a paced load. Times are offsets from the load's
// start.
type shot struct {
	node    int
	due     time.Duration // when the pacer scheduled it
	sent    time.Duration // when it was handed to the client
	latency time.Duration // until its body was read
	status  int
	err     error
	// missing names a rate limit header a 429 lacked.
	missing string
}

// loadResult is what paceLoad saw.
type loadResult struct {
	dur   time.Duration
	rates []int
	shots []shot
}

// paceLoad is an open-loop load: per data plane, a pacer issues request k
// at start + k/rate, each from its own goroutine, whatever the earlier ones
// are doing; a pacer that falls behind sends what is due at once (so the
// count is exact and the lag is visible in sent − due).
func paceLoad(f *rlFleet, path string, start time.Time, d time.Duration) *loadResult {
	res := &loadResult{dur: d, rates: rlRates()}
	var mu sync.Mutex
	var pacers sync.WaitGroup
	for i, rate := range res.rates {
		client, url := f.clients[i], "http://"+f.dps[i].addr+path
		n := int(int64(rate) * int64(d) / int64(time.Second))
		pacers.Go(func() {
			var reqs sync.WaitGroup
			for k := range n {
				due := time.Duration(int64(k) * int64(time.Second) / int64(rate))
				time.Sleep(time.Until(start.Add(due)))
				reqs.Go(func() {
					s := fire(client, url, start)
					s.node, s.due = i, due
					mu.Lock()
					res.shots = append(res.shots, s)
					mu.Unlock()
				})
			}
			reqs.Wait()
		})
	}
	pacers.Wait()
	return res
}

func fire(c *http.Client, url string, start time.Time) shot {
	s := shot{sent: time.Since(start)}
	resp, err := c.Get(url)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		s.status = resp.StatusCode
		if resp.StatusCode == http.StatusTooManyRequests {
			for _, h := range []string{"Retry-After", "RateLimit", "RateLimit-Policy"} {
				if resp.Header.Get(h) == "" {
					s.missing = h
				}
			}
		}
	}
	s.latency, s.err = time.Since(start)-s.sent, err
	return s
}

// window is one accounting window's counts.
//
// Which clock decides the window: Redis decides each request at arrival by
// its own clock, which the test cannot read per request. What the test
// knows for certain is that an admitted request was decided after it was
// sent and before its response was read. So rather than pick one client
// timestamp and misattribute requests whenever a process stalls (on a
// shared 2-core machine a stall of a few hundred ms happens: requests sent
// before a window edge then reach Redis after it), each window gets a
// bracket: lo counts the admitted requests sent and completed inside it
// (certainly decided inside it), hi those whose [sent, completed] interval
// meets it (possibly decided inside it). The true count lies in [lo, hi].
// Without stalls the bracket is a few requests wide; a wide one marks a
// window the harness cannot measure, not a limiter error. Windows are
// aligned to the load's start.
type window struct {
	offered int   // requests sent in it
	sent    int   // admitted requests sent in it (the point estimate)
	lo, hi  int   // bracket of admitted requests decided in it
	perNode []int // admitted requests sent in it, by data plane
}

func (r *loadResult) windows() int { return int(r.dur / rlWindow) }

// perWindow counts the load in windows starting shift after the load's
// start.
func (r *loadResult) perWindow(shift time.Duration) []window {
	ws := make([]window, r.windows())
	for i := range ws {
		ws[i].perNode = make([]int, len(r.rates))
	}
	index := func(d time.Duration) int {
		d -= shift
		if d < 0 {
			return -1
		}
		return int(d / rlWindow)
	}
	for _, s := range r.shots {
		from, to := index(s.sent), index(s.sent+s.latency)
		if from >= 0 && from < len(ws) {
			ws[from].offered++
		}
		if s.status != http.StatusOK {
			continue
		}
		if from >= 0 && from < len(ws) {
			ws[from].sent++
			ws[from].perNode[s.node]++
			if from == to {
				ws[from].lo++
			}
		}
		for k := max(from, 0); k <= min(to, len(ws)-1); k++ {
			ws[k].hi++
		}
	}
	return ws
}

// span returns the window indexes from..to−1.
func span(from, to int) []int {
	var ks []int
	for k := from; k < to; k++ {
		ks = append(ks, k)
	}
	return ks
}

// judge checks that the admitted count of each window in ks lies in
// [lo, hi]; what names the requirement in messages. A window whose bracket lies wholly outside fails; one whose
// bracket is at most maxWidth wide (the harness measured it) must lie
// wholly inside; a wider one is not judged, but at least minJudged windows
// must be, or the test fails because the machine could not measure.
func judge(t *testing.T, what string, ws []window, ks []int, lo, hi, maxWidth, minJudged int) {
	t.Helper()
	judged := 0
	var blurred []string
	for _, k := range ks {
		w := ws[k]
		switch {
		case w.hi < lo || w.lo > hi:
			judged++ // proven out of bounds, however wide
			t.Errorf("%s: window %d admitted %d..%d (%d by send time), want %d..%d", what, k, w.lo, w.hi, w.sent, lo, hi)
		case w.hi-w.lo > maxWidth:
			blurred = append(blurred, fmt.Sprintf("%d (%d..%d)", k, w.lo, w.hi))
		case w.lo < lo || w.hi > hi:
			judged++
			t.Errorf("%s: window %d admitted %d..%d (%d by send time), want %d..%d", what, k, w.lo, w.hi, w.sent, lo, hi)
		default:
			judged++
		}
	}
	if len(blurred) > 0 {
		t.Logf("%s: not judged, a stall in the harness made the measurement wider than %d requests: windows %s", what, maxWidth, strings.Join(blurred, ", "))
	}
	if judged < minJudged {
		t.Errorf("%s: only %d of %d windows could be measured to within %d requests (the others: %s); the machine is too loaded to check %d..%d",
			what, judged, len(ks), maxWidth, strings.Join(blurred, ", "), lo, hi)
	}
}

// checkOffered fails the test when the machine did not offer the load: the
// whole run must reach 95% of the target rate by actual send time, and
// every window 85% of it.
func (r *loadResult) checkOffered(t *testing.T) {
	t.Helper()
	target := 0
	for _, rate := range r.rates {
		target += rate
	}
	var lastSent time.Duration
	lags := make([]time.Duration, 0, len(r.shots))
	for _, s := range r.shots {
		lastSent = max(lastSent, s.sent)
		lags = append(lags, s.sent-s.due)
	}
	// n requests over [0, lastSent] are n−1 intervals; a schedule kept to
	// the dot gives exactly the target rate.
	achieved := float64(len(r.shots)-1) / lastSent.Seconds()
	t.Logf("offered %d requests in %v: %.1f req/s achieved (target %d); sender lag (sent − scheduled) %s",
		len(r.shots), lastSent.Round(time.Millisecond), achieved, target, percentiles(lags))
	if achieved < 0.95*float64(target) {
		t.Fatalf("the machine could not offer the load: %.1f req/s achieved, want at least 95%% of %d; the accuracy numbers would be meaningless", achieved, target)
	}
	for k, w := range r.perWindow(0) {
		if w.offered < target*85/100 {
			t.Fatalf("the machine could not offer the load: window %d had %d requests sent, want at least 85%% of %d", k, w.offered, target)
		}
	}
}

// checkResponses fails on transport errors, 5xx and anything but 200 and
// 429, and on a 429 without the rate limit headers.
func (r *loadResult) checkResponses(t *testing.T) {
	t.Helper()
	codes := map[int]int{}
	var errs []error
	var lat []time.Duration
	missing := 0
	for _, s := range r.shots {
		lat = append(lat, s.latency)
		if s.err != nil {
			errs = append(errs, s.err)
			continue
		}
		codes[s.status]++
		if s.missing != "" {
			missing++
		}
	}
	t.Logf("responses %v, transport errors %d; latency %s", codes, len(errs), latencySummary(lat))
	if len(errs) > 0 {
		t.Errorf("%d requests failed, e.g. %v", len(errs), errs[0])
	}
	for code, n := range codes {
		if code != http.StatusOK && code != http.StatusTooManyRequests {
			t.Errorf("%d responses with status %d, want only 200 and 429 (no 5xx)", n, code)
		}
	}
	if codes[http.StatusTooManyRequests] == 0 {
		t.Errorf("no request was rejected under 3× overload")
	}
	if missing > 0 {
		t.Errorf("%d responses 429 lack Retry-After, RateLimit or RateLimit-Policy", missing)
	}
}

func logWindows(t *testing.T, ws []window) {
	t.Helper()
	var b strings.Builder
	for k, w := range ws {
		fmt.Fprintf(&b, "\n  window %2d: offered %3d  admitted %3d (decided in it: %3d..%3d)  by node %v", k, w.offered, w.sent, w.lo, w.hi, w.perNode)
	}
	t.Logf("per 1s window from the load's start (admitted by send time, bracket, by node):%s", b.String())
}

// logShiftedWindows reports, for information, the admitted counts over
// windows shifted from the load's start in 100ms steps: a limiter accurate
// only on the test's own grid would show here.
func logShiftedWindows(t *testing.T, r *loadResult) {
	t.Helper()
	var b strings.Builder
	for shift := 100 * time.Millisecond; shift < rlWindow; shift += 100 * time.Millisecond {
		ws := r.perWindow(shift)
		// Windows 1..n−2 lie wholly inside the load after shifting.
		loMin, hiMax := rlLimit*10, 0
		for _, w := range ws[1 : len(ws)-1] {
			loMin, hiMax = min(loMin, w.lo), max(hiMax, w.hi)
		}
		fmt.Fprintf(&b, " +%v:%d..%d", shift, loMin, hiMax)
	}
	t.Logf("admitted per window shifted from the load's start (lowest lo..highest hi):%s", b.String())
}

func tolLo(want int, frac float64) int { return int(float64(want)*(1-frac) + 0.999) }
func tolHi(want int, frac float64) int { return int(float64(want) * (1 + frac)) }

// percentiles formats p50, p99 and max of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "(none)"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return fmt.Sprintf("p50 %v p99 %v max %v", at(0.50).Round(10*time.Microsecond), at(0.99).Round(10*time.Microsecond), s[len(s)-1].Round(10*time.Microsecond))
}

func latencySummary(ds []time.Duration) string {
	return fmt.Sprintf("n=%d %s", len(ds), percentiles(ds))
}

// fleetSizeOf reads the fleet size the control plane reported to dp.
func fleetSizeOf(dp *dataplane) (int, error) {
	resp, err := http.Get("http://" + dp.admin + "/config")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var c struct {
		FleetSize *int `json:"fleetSize"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return 0, fmt.Errorf("/config: %w", err)
	}
	if c.FleetSize == nil {
		return 0, errors.New("/config has no fleetSize")
	}
	return *c.FleetSize, nil
}

// ---------------------------------------------------------------- redis

// redisServer is a real redis-server on a fixed address, without
// persistence, that a test can kill and start again on the same port.
type redisServer struct {
	*proc
	addr string
	bin  string
	args []string
}

// startRedis runs redis-server on addr. A missing redis-server fails the
// test: the global rate limit claims cannot be checked without one.
func startRedis(t *testing.T, addr string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is required for global rate limit tests (Debian package redis-server): %v", err)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &redisServer{addr: addr, bin: bin, args: []string{
		"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir(),
	}}
	r.restart(t)
	return r
}

// restart starts redis-server (again) on the same address and waits until
// it serves.
func (r *redisServer) restart(t testing.TB) {
	t.Helper()
	r.proc = start(t, "redis-server "+r.addr, r.bin, nil, r.args...)
	r.waitFor("Ready to accept connections")
	if _, err := redisDo(r.addr, "PING"); err != nil {
		t.Fatalf("redis-server %s: %v", r.addr, err)
	}
}

// kill stops redis-server with SIGKILL, as a crash would, and waits for it.
func (r *redisServer) kill() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// scriptCalls returns how many EVALSHA and EVAL calls the Redis at addr has
// run since it started.
func scriptCalls(t *testing.T, addr string) int64 {
	t.Helper()
	reply, err := redisDo(addr, "INFO", "commandstats")
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	info, _ := reply.(string)
	var total int64
	for line := range strings.SplitSeq(info, "\n") {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		for field := range strings.SplitSeq(stats, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("INFO commandstats %s: %v", line, err)
				}
				total += n
			}
		}
	}
	return total
}

// redisDo sends one command to the Redis at addr on a new connection and
// returns the reply: a string (simple or bulk), an int64, nil, or []any.
// The e2e module does not depend on a Redis client, and RESP is small.
func redisDo(addr string, args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	return readRESP(bufio.NewReader(conn))
}

func readRESP(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readRESP(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected RESP reply %q", line)
}
