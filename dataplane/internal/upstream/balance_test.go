package upstream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// fakeClock is a controllable Pool clock.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// weightedTargets returns targets t0..tn-1 with the given weights.
func weightedTargets(ws ...uint32) []*meridianv1.Target {
	ts := make([]*meridianv1.Target, len(ws))
	for i, w := range ws {
		ts[i] = &meridianv1.Target{Address: fmt.Sprintf("10.0.0.%d:80", i), Weight: w}
	}
	return ts
}

func lbSpec(policy meridianv1.LoadBalancerPolicy, hashOn string, ts []*meridianv1.Target) *meridianv1.UpstreamSpec {
	return &meridianv1.UpstreamSpec{Targets: ts, LoadBalancer: &meridianv1.LoadBalancer{Policy: policy, HashOn: hashOn}}
}

// testPool builds a pool on clock and closes it when the test ends.
func testPool(t testing.TB, spec *meridianv1.UpstreamSpec, prev *Pool, clock *fakeClock) *Pool {
	t.Helper()
	if clock == nil {
		clock = newFakeClock()
	}
	p, err := build("u", spec, prev, Options{}, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		p.Transport().CloseIdleConnections()
	})
	return p
}

// index returns the position of t in p's targets.
func index(p *Pool, t *Target) int {
	for i, x := range p.targets {
		if x == t {
			return i
		}
	}
	return -1
}

// pickN picks n times, reporting each attempt done at once, and returns
// the sequence of target indexes.
func pickN(t testing.TB, p *Pool, r *http.Request, n int) []int {
	t.Helper()
	seq := make([]int, n)
	for k := range seq {
		tg, err := p.Pick(r)
		if err != nil {
			t.Fatalf("pick %d: %v", k, err)
		}
		seq[k] = index(p, tg)
		p.Done(tg, Outcome{Status: 200})
	}
	return seq
}

func counts(seq []int, n int) []int {
	c := make([]int, n)
	for _, i := range seq {
		c[i]++
	}
	return c
}

// checkShares fails when a target's share of seq is off its weight's share
// by more than tolerance (a fraction of all picks).
func checkShares(t *testing.T, seq []int, ws []uint32, tolerance float64) {
	t.Helper()
	var total float64
	for _, w := range ws {
		total += float64(max(w, 1))
	}
	for i, c := range counts(seq, len(ws)) {
		want := float64(max(ws[i], 1)) / total
		got := float64(c) / float64(len(seq))
		if math.Abs(got-want) > tolerance {
			t.Errorf("target %d (weight %d): share %.4f, want %.4f ± %.3f", i, ws[i], got, want, tolerance)
		}
	}
}

func TestRoundRobinDistribution(t *testing.T) {
	tests := []struct {
		weights []uint32
		// maxRun is the longest run of one target smooth WRR produces;
		// plain WRR would send each target's whole weight in a row.
		maxRun []int
	}{
		{[]uint32{1, 1, 1}, []int{1, 1, 1}},
		{[]uint32{5, 1, 1}, []int{4, 1, 1}},
		{[]uint32{3, 2}, []int{2, 1}},
		{[]uint32{10, 3, 7, 1}, []int{2, 1, 1, 1}},
		{[]uint32{0, 2}, []int{1, 2}}, // weight 0 means 1
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, "", weightedTargets(tt.weights...)), nil, nil)
			seq := pickN(t, p, nil, 10_000)
			checkShares(t, seq, tt.weights, 0.01)

			runs := make([]int, len(tt.weights))
			run := 0
			for k, i := range seq {
				if k > 0 && seq[k-1] == i {
					run++
				} else {
					run = 1
				}
				runs[i] = max(runs[i], run)
			}
			for i := range runs {
				if runs[i] > tt.maxRun[i] {
					t.Errorf("target %d ran %d times in a row, want at most %d", i, runs[i], tt.maxRun[i])
				}
			}

			// Within every window of one full cycle, each target gets its
			// weight give or take one: no bursts.
			var cycle int
			for _, w := range tt.weights {
				cycle += int(max(w, 1))
			}
			for start := 0; start+cycle <= len(seq); start++ {
				for i, c := range counts(seq[start:start+cycle], len(tt.weights)) {
					if w := int(max(tt.weights[i], 1)); c > w+1 || c < w-1 {
						t.Fatalf("window at %d: target %d got %d picks, weight %d", start, i, c, w)
					}
				}
			}
		})
	}
}

func TestRoundRobinSkipsUnavailable(t *testing.T) {
	for _, ws := range [][]uint32{{1, 1, 1, 1}, {5, 1, 1, 3}} {
		t.Run(fmt.Sprint(ws), func(t *testing.T) {
			p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN, "", weightedTargets(ws...)), nil, nil)
			p.targets[1].down.Store(true)
			seq := pickN(t, p, nil, 10_000)
			c := counts(seq, len(ws))
			if c[1] != 0 {
				t.Errorf("unhealthy target got %d picks", c[1])
			}
			// The others keep their relative shares.
			rest := []uint32{ws[0], 0, ws[2], ws[3]}
			var total float64
			for _, w := range rest {
				total += float64(w)
			}
			for i, w := range rest {
				if w == 0 {
					continue
				}
				if got, want := float64(c[i])/10_000, float64(w)/total; math.Abs(got-want) > 0.01 {
					t.Errorf("target %d: share %.4f, want %.4f", i, got, want)
				}
			}
		})
	}
}

func TestNoHealthyTarget(t *testing.T) {
	policies := []meridianv1.LoadBalancerPolicy{
		meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_UNSPECIFIED,
		meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_ROUND_ROBIN,
		meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST,
		meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_RANDOM,
		meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH,
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-User", "alice")
	for _, policy := range policies {
		for _, ws := range [][]uint32{nil, {1}, {1, 1, 1}, {3, 1, 2}} {
			t.Run(fmt.Sprint(policy, ws), func(t *testing.T) {
				p := testPool(t, lbSpec(policy, "header:X-User", weightedTargets(ws...)), nil, nil)
				for _, tg := range p.targets {
					tg.down.Store(true)
				}
				for _, r := range []*http.Request{nil, req} {
					tg, err := p.Pick(r)
					if !errors.Is(err, ErrNoHealthyTarget) || tg != nil {
						t.Fatalf("Pick = %v, %v; want ErrNoHealthyTarget", tg, err)
					}
				}
				if _, ok := p.Next(); ok {
					t.Error("Next returned a target")
				}
				if len(ws) == 0 {
					return
				}
				// One target back: every policy finds it.
				last := p.targets[len(ws)-1]
				last.down.Store(false)
				for _, r := range []*http.Request{nil, req} {
					for range 20 {
						tg, err := p.Pick(r)
						if err != nil || tg != last {
							t.Fatalf("Pick = %v, %v; want %s", tg, err, last.Address())
						}
						p.Done(tg, Outcome{Status: 200})
					}
				}
			})
		}
	}
}

func TestRandomDistribution(t *testing.T) {
	for _, ws := range [][]uint32{{1, 1, 1}, {5, 1, 1}, {10, 3, 7, 1}} {
		t.Run(fmt.Sprint(ws), func(t *testing.T) {
			p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_RANDOM, "", weightedTargets(ws...)), nil, nil)
			// 100,000 draws: one standard deviation of a share is under
			// 0.16%, so 1.5% is far outside chance.
			checkShares(t, pickN(t, p, nil, 100_000), ws, 0.015)
		})
	}
}

func TestLeastRequest(t *testing.T) {
	t.Run("prefers the less loaded", func(t *testing.T) {
		p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, "", weightedTargets(1, 1, 1)), nil, nil)
		p.targets[0].inflight.Store(10)
		p.targets[1].inflight.Store(5)
		c := counts(pickN(t, p, nil, 3_000), 3)
		// Two distinct draws: the busiest target never wins, the middle one
		// only against the busiest (1/3 of pairs).
		if c[0] != 0 {
			t.Errorf("busiest target got %d picks", c[0])
		}
		if c[2] < 1_800 || c[1] > 1_200 {
			t.Errorf("picks = %v, want the idle target to get about 2/3", c)
		}
	})
	t.Run("counts its own in-flight requests", func(t *testing.T) {
		p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, "", weightedTargets(1, 1)), nil, nil)
		// Hold every pick open: with two targets, P2C always compares both,
		// so in-flight counts never differ by more than one.
		var held []*Target
		for range 100 {
			tg, err := p.Pick(nil)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, tg)
			if d := p.targets[0].inflight.Load() - p.targets[1].inflight.Load(); d > 1 || d < -1 {
				t.Fatalf("in flight %d vs %d", p.targets[0].inflight.Load(), p.targets[1].inflight.Load())
			}
		}
		for _, tg := range held {
			p.Done(tg, Outcome{Status: 200})
		}
		for i, tg := range p.targets {
			if n := tg.inflight.Load(); n != 0 {
				t.Errorf("target %d: %d in flight after Done", i, n)
			}
		}
	})
	t.Run("idle follows weights", func(t *testing.T) {
		ws := []uint32{3, 1}
		p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, "", weightedTargets(ws...)), nil, nil)
		checkShares(t, pickN(t, p, nil, 100_000), ws, 0.015)
	})
	t.Run("load per weight", func(t *testing.T) {
		p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_LEAST_REQUEST, "", weightedTargets(4, 1)), nil, nil)
		// 6 in flight on weight 4 is less loaded than 2 on weight 1.
		p.targets[0].inflight.Store(6)
		p.targets[1].inflight.Store(2)
		c := counts(pickN(t, p, nil, 1_000), 2)
		// Only a draw of the light target twice (1/25) picks it.
		if c[1] > 150 {
			t.Errorf("picks = %v, want the heavy target nearly always", c)
		}
	})
}

func TestConsistentHashStable(t *testing.T) {
	p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "header:x-user", weightedTargets(1, 1, 1, 1, 1)), nil, nil)
	again := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "header:X-User", weightedTargets(1, 1, 1, 1, 1)), nil, nil)
	seen := make([]int, 5)
	for k := range 1_000 {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("X-User", fmt.Sprint("user-", k))
		first := pickN(t, p, r, 1)[0]
		for _, i := range pickN(t, p, r, 5) {
			if i != first {
				t.Fatalf("key %d went to %d then %d", k, first, i)
			}
		}
		// A separately built ring (another data plane) agrees.
		if i := pickN(t, again, r, 1)[0]; i != first {
			t.Fatalf("key %d: %d on one pool, %d on another", k, first, i)
		}
		seen[first]++
	}
	for i, n := range seen {
		if n < 100 || n > 300 {
			t.Errorf("target %d got %d of 1000 keys, want about 200", i, n)
		}
	}
}

// hashAssignment maps keys to target addresses.
func hashAssignment(t *testing.T, ts []*meridianv1.Target, keys int) []string {
	p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "header:X-Key", ts), nil, nil)
	out := make([]string, keys)
	r := httptest.NewRequest("GET", "/", nil)
	for k := range out {
		r.Header.Set("X-Key", fmt.Sprint("key-", k))
		tg, err := p.Pick(r)
		if err != nil {
			t.Fatal(err)
		}
		p.Done(tg, Outcome{})
		out[k] = tg.Address()
	}
	return out
}

func moved(a, b []string) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestConsistentHashMinimalDisruption(t *testing.T) {
	const n, keys = 10, 10_000
	base := weightedTargets(make([]uint32, n)...)
	before := hashAssignment(t, base, keys)

	for removed := range n {
		ts := append(append([]*meridianv1.Target{}, base[:removed]...), base[removed+1:]...)
		after := hashAssignment(t, ts, keys)
		if m := moved(before, after); float64(m) > 1.5*keys/n {
			t.Errorf("removing target %d of %d moved %d of %d keys, want ≤ %.0f", removed, n, m, keys, 1.5*keys/n)
		}
		// Only the removed target's keys move.
		for k := range before {
			if before[k] != after[k] && before[k] != base[removed].GetAddress() {
				t.Fatalf("key %d moved from %s, which was not removed", k, before[k])
			}
		}
	}

	added := append(append([]*meridianv1.Target{}, base...), &meridianv1.Target{Address: "10.0.1.1:80"})
	after := hashAssignment(t, added, keys)
	if m := moved(before, after); float64(m) > 1.5*keys/(n+1) {
		t.Errorf("adding an eleventh target moved %d of %d keys, want ≤ %.0f", m, keys, 1.5*keys/(n+1))
	}
	for k := range before {
		if before[k] != after[k] && after[k] != "10.0.1.1:80" {
			t.Fatalf("key %d moved to %s, not to the new target", k, after[k])
		}
	}
}

func TestConsistentHashSkipsUnavailable(t *testing.T) {
	p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "header:X-Key", weightedTargets(1, 1, 1, 1)), nil, nil)
	r := httptest.NewRequest("GET", "/", nil)
	before := make([]int, 2_000)
	for k := range before {
		r.Header.Set("X-Key", fmt.Sprint(k))
		before[k] = pickN(t, p, r, 1)[0]
	}
	p.targets[2].down.Store(true)
	for k := range before {
		r.Header.Set("X-Key", fmt.Sprint(k))
		got := pickN(t, p, r, 1)[0]
		switch {
		case got == 2:
			t.Fatalf("key %d went to the unhealthy target", k)
		case before[k] != 2 && got != before[k]:
			t.Fatalf("key %d moved from healthy target %d to %d", k, before[k], got)
		}
	}
	p.targets[2].down.Store(false)
	for k := range before {
		r.Header.Set("X-Key", fmt.Sprint(k))
		if got := pickN(t, p, r, 1)[0]; got != before[k] {
			t.Fatalf("key %d did not return to target %d once healthy (got %d)", k, before[k], got)
		}
	}
}

type claimMap map[string]string

func (c claimMap) Claim(name string) (string, bool) {
	v, ok := c[name]
	return v, ok
}

func TestHashKeys(t *testing.T) {
	tests := []struct {
		hashOn string
		setup  func(r *http.Request) *http.Request
		want   string // "" = no key
	}{
		{"header:X-User", func(r *http.Request) *http.Request { r.Header.Set("X-User", "alice"); return r }, "alice"},
		{"header:x-user", func(r *http.Request) *http.Request { r.Header.Set("X-User", "alice"); return r }, "alice"},
		{"header:X-User", func(r *http.Request) *http.Request { return r }, ""},
		{"cookie:session", func(r *http.Request) *http.Request {
			r.Header.Add("Cookie", "a=1; session=s3cr3t; b=2")
			return r
		}, "s3cr3t"},
		{"cookie:session", func(r *http.Request) *http.Request {
			r.Header.Add("Cookie", "a=1")
			r.Header.Add("Cookie", `session="quoted"`)
			return r
		}, "quoted"},
		{"cookie:session", func(r *http.Request) *http.Request { r.Header.Add("Cookie", "sessionx=1; xsession=2"); return r }, ""},
		{"client_ip", func(r *http.Request) *http.Request { r.RemoteAddr = "192.0.2.7:5555"; return r }, "192.0.2.7"},
		{"client_ip", func(r *http.Request) *http.Request { r.RemoteAddr = "[2001:db8::1]:5555"; return r }, "2001:db8::1"},
		{"client_ip", func(r *http.Request) *http.Request {
			r.RemoteAddr = "10.0.0.1:5555"
			return r.WithContext(WithClientIP(r.Context(), "198.51.100.9"))
		}, "198.51.100.9"},
		{"claim:sub", func(r *http.Request) *http.Request {
			return r.WithContext(WithClaims(r.Context(), claimMap{"sub": "user-42"}))
		}, "user-42"},
		{"claim:sub", func(r *http.Request) *http.Request { return r }, ""},
		{"claim:sub", func(r *http.Request) *http.Request {
			return r.WithContext(WithClaims(r.Context(), claimMap{"aud": "x"}))
		}, ""},
		{"param:id", func(r *http.Request) *http.Request { r.SetPathValue("id", "7"); return r }, "7"},
		{"param:id", func(r *http.Request) *http.Request { return r }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.hashOn+"="+tt.want, func(t *testing.T) {
			k, err := parseHashKey(tt.hashOn)
			if err != nil {
				t.Fatal(err)
			}
			r := tt.setup(httptest.NewRequest("GET", "/", nil))
			if got := k.value(r); got != tt.want {
				t.Errorf("key = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBadHashOn(t *testing.T) {
	for _, hashOn := range []string{"", "header:", "query:x", "client-ip"} {
		_, err := New("u", lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, hashOn, weightedTargets(1)), nil)
		if err == nil {
			t.Errorf("hashOn %q accepted", hashOn)
		}
	}
}

func TestConsistentHashWithoutKeyRoundRobins(t *testing.T) {
	p := testPool(t, lbSpec(meridianv1.LoadBalancerPolicy_LOAD_BALANCER_POLICY_CONSISTENT_HASH, "claim:sub", weightedTargets(1, 1, 1)), nil, nil)
	r := httptest.NewRequest("GET", "/", nil)
	checkShares(t, pickN(t, p, r, 3_000), []uint32{1, 1, 1}, 0.01)
	r = r.WithContext(WithClaims(context.Background(), claimMap{"sub": "bob"}))
	if c := counts(pickN(t, p, r, 100), 3); c[0] != 100 && c[1] != 100 && c[2] != 100 {
		t.Errorf("a keyed request spread over targets: %v", c)
	}
}
