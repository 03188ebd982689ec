package upstream

import (
	"context"
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
	results := make([]bool, len(c.pool.targets))
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
// unless ctx ended meanwhile. results is scratch space, one per target.
func (c *checker) check(ctx context.Context, results []bool) {
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

func (c *checker) record(t *Target, i int, ok bool) {
	if ok {
		c.pool.checks.passed.Add(1)
	} else {
		c.pool.checks.failed.Add(1)
	}
	if !t.probed.Load() {
		t.probed.Store(true)
		t.down.Store(!ok)
		c.streak[i] = 0
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
		}
	} else {
		c.streak[i]--
		if !t.down.Load() && -c.streak[i] >= c.unhealthy {
			t.down.Store(true)
		}
	}
}

func (c *checker) probe(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "meridian-health-check")
	resp, err := c.pool.transport.RoundTrip(req)
	if err != nil {
		return false
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxProbeBody)
	resp.Body.Close()
	return c.expect(resp.StatusCode)
}

func (c *checker) expect(status int) bool {
	if len(c.expected) == 0 {
		return status >= 200 && status < 400
	}
	return slices.Contains(c.expected, uint32(status))
}
