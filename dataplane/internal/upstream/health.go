package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Active health check defaults, used when spec.healthCheck.active is
// present but leaves a field at zero. Checking is off when the block is
// absent; `active: {}` turns it on with these values.
const (
	DefaultHealthCheckPath     = "/"
	DefaultHealthCheckInterval = config.DefaultHealthCheckInterval
	DefaultHealthCheckTimeout  = time.Second
	DefaultHealthyThreshold    = 2
	DefaultUnhealthyThreshold  = 3

	// maxProbeBody bounds how much of a probe's response is read so the
	// connection can be reused.
	maxProbeBody = 64 << 10
)

// checker probes every target of one pool each interval. It is the only
// writer of the targets' down and probed flags.
//
// A target the pool has no verdict on yet (new to the upstream) counts as
// healthy until its first probe, which alone decides its state, as
// Envoy's first check does. After that it takes unhealthyThreshold
// consecutive failed probes to mark it down and healthyThreshold
// consecutive good ones to bring it back. A probe is a GET of path on the
// pool's scheme and transport, not following redirects; it succeeds when
// the status is in expectedStatuses (200-399 when empty) within timeout.
type checker struct {
	pool      *Pool
	url       []string // per target
	interval  time.Duration
	timeout   time.Duration
	healthy   int
	unhealthy int
	expected  []uint32
	streak    []int // per target: >0 consecutive successes, <0 consecutive failures
}

func newChecker(p *Pool, s *meridianv1.ActiveHealthCheck) *checker {
	path := s.GetPath()
	if path == "" {
		path = DefaultHealthCheckPath
	}
	c := &checker{
		pool:      p,
		interval:  durationOr(s.GetInterval(), DefaultHealthCheckInterval),
		timeout:   durationOr(s.GetTimeout(), DefaultHealthCheckTimeout),
		healthy:   intOr(s.GetHealthyThreshold(), DefaultHealthyThreshold),
		unhealthy: intOr(s.GetUnhealthyThreshold(), DefaultUnhealthyThreshold),
		expected:  s.GetExpectedStatuses(),
		streak:    make([]int, len(p.targets)),
	}
	// A probe that outlives the interval would overlap the next round.
	c.timeout = min(c.timeout, c.interval)
	for _, t := range p.targets {
		c.url = append(c.url, p.scheme+"://"+t.addr+path)
	}
	return c
}

// run probes at once, then every interval, until ctx ends.
func (c *checker) run(ctx context.Context) {
	ticker := time.NewTicker(c.interval)
	defer ticker.Stop()
	results := make([]error, len(c.pool.targets))
	for {
		c.check(ctx, results)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// check probes every target concurrently, waits for all of them (so a
// slow target delays no one else's verdict) and records the results
// unless ctx ended meanwhile. results is scratch space, one per target:
// each probe's error, nil when it passed.
func (c *checker) check(ctx context.Context, results []error) {
	var wg sync.WaitGroup
	for i := range c.pool.targets {
		wg.Go(func() { results[i] = c.probe(ctx, c.url[i]) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	for i, t := range c.pool.targets {
		c.record(t, i, results[i])
	}
}

// record applies the result of target i's probe, err (nil: passed), and
// reports the target's transition if it makes one.
func (c *checker) record(t *Target, i int, err error) {
	ok := err == nil
	if ok {
		c.pool.checks.passed.Add(1)
	} else {
		c.pool.checks.failed.Add(1)
	}
	if !t.probed.Load() {
		t.probed.Store(true)
		t.down.Store(!ok)
		c.streak[i] = 0
		if !ok {
			c.pool.report(Transition{Target: t.addr, Check: ActiveCheck, From: Healthy, To: Unhealthy,
				First: true, Count: 1, Threshold: c.unhealthy, Err: err})
		}
		return
	}
	switch s := c.streak[i]; {
	case ok && s < 0, !ok && s > 0:
		c.streak[i] = 0
	}
	if ok {
		c.streak[i]++
		if t.down.Load() && c.streak[i] >= c.healthy {
			t.down.Store(false)
			c.pool.report(Transition{Target: t.addr, Check: ActiveCheck, From: Unhealthy, To: Healthy,
				Count: c.streak[i], Threshold: c.healthy})
		}
	} else {
		c.streak[i]--
		if !t.down.Load() && -c.streak[i] >= c.unhealthy {
			t.down.Store(true)
			c.pool.report(Transition{Target: t.addr, Check: ActiveCheck, From: Healthy, To: Unhealthy,
				Count: -c.streak[i], Threshold: c.unhealthy, Err: err})
		}
	}
}

// probe sends one probe and returns why it failed, or nil.
func (c *checker) probe(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "meridian-health-check")
	resp, err := c.pool.transport.RoundTrip(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no response within %s", c.timeout)
		}
		return err
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxProbeBody)
	resp.Body.Close()
	if !c.expect(resp.StatusCode) {
		return statusError(resp.StatusCode)
	}
	return nil
}

func (c *checker) expect(status int) bool {
	if len(c.expected) == 0 {
		return status >= 200 && status < 400
	}
	return slices.Contains(c.expected, uint32(status))
}
