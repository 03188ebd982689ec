package jwt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultJWKSRefreshInterval is how often a JWKS is refetched when the
	// spec does not say.
	DefaultJWKSRefreshInterval = 5 * time.Minute
	// jwksMinGap spaces fetches: a flood of tokens with unknown kids costs
	// at most one fetch per gap.
	jwksMinGap = 10 * time.Second
	// jwksRetry is the background retry delay after a failed fetch, so a
	// provider that starts while its issuer is down recovers before the
	// next full interval.
	jwksRetry        = 30 * time.Second
	jwksFetchTimeout = 10 * time.Second
	maxJWKSBytes     = 1 << 20
)

// jwksSource keeps the key set of one JWKS URI fresh. All fetches run on
// its one goroutine; requests only ask for a fetch and wait for it.
type jwksSource struct {
	uri      string
	logURI   string // uri without a password
	client   *http.Client
	interval time.Duration
	now      func() time.Time
	log      *slog.Logger

	keys atomic.Pointer[keySet]

	mu sync.Mutex
	// inflight is closed when the fetch in progress or asked for ends; nil
	// when none is.
	inflight  chan struct{}
	lastFetch time.Time

	kick chan struct{} // size 1: a pending on-demand fetch
	// ctx is canceled by close; it also aborts the fetch in progress.
	ctx    context.Context
	cancel context.CancelFunc
	exited chan struct{}
}

func newJWKSSource(uri string, client *http.Client, interval time.Duration, now func() time.Time, log *slog.Logger) *jwksSource {
	s := &jwksSource{
		uri:      uri,
		logURI:   redactURI(uri),
		client:   client,
		interval: interval,
		now:      now,
		log:      log,
		kick:     make(chan struct{}, 1),
		exited:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.keys.Store(newKeySet(nil))
	// The first fetch counts as in flight from the start, so requests that
	// arrive before it ends wait for it instead of failing on an empty set.
	s.inflight = make(chan struct{})
	s.lastFetch = now()
	go s.run()
	return s
}

// current returns the last fetched key set (empty before the first
// successful fetch).
func (s *jwksSource) current() *keySet { return s.keys.Load() }

// refresh asks for a fetch, unless one ran less than jwksMinGap ago, and
// waits for the fetch in flight, if any, or for ctx. It returns the key set
// it ends up with; a failed fetch leaves the cached set in place.
func (s *jwksSource) refresh(ctx context.Context) *keySet {
	s.mu.Lock()
	if s.inflight == nil {
		if s.now().Sub(s.lastFetch) < jwksMinGap {
			s.mu.Unlock()
			return s.current()
		}
		s.inflight = make(chan struct{})
		s.lastFetch = s.now()
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	done := s.inflight
	s.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	return s.current()
}

// close stops the goroutine and waits for it. The cached keys stay usable.
func (s *jwksSource) close() {
	s.cancel()
	<-s.exited
}

func (s *jwksSource) run() {
	defer close(s.exited)
	ctx := s.ctx
	timer := time.NewTimer(0) // the first fetch runs at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.kick:
			timer.Stop()
		}
		s.mu.Lock()
		if s.inflight == nil {
			s.inflight = make(chan struct{})
		}
		s.lastFetch = s.now()
		s.mu.Unlock()

		err := s.fetch(ctx)

		s.mu.Lock()
		close(s.inflight)
		s.inflight = nil
		// A kick sent while this fetch was in flight was answered by it.
		select {
		case <-s.kick:
		default:
		}
		s.mu.Unlock()

		next := s.interval
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("JWKS fetch failed; keeping the cached key set", "uri", s.logURI, "error", err)
			next = min(next, jwksRetry)
		}
		timer.Reset(next)
	}
}

func (s *jwksSource) fetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.uri, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return err
	}
	if len(body) > maxJWKSBytes {
		return errors.New("JWKS larger than 1 MiB")
	}
	keys, skipped, err := parseJWKS(body)
	for _, msg := range skipped {
		s.log.Warn("JWKS key skipped", "uri", s.logURI, "reason", msg)
	}
	if err != nil {
		return err
	}
	s.keys.Store(newKeySet(keys))
	s.log.Debug("JWKS refreshed", "uri", s.logURI, "keys", len(keys))
	return nil
}

func redactURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return "(unparsable URI)"
	}
	return u.Redacted()
}
