// Package gateway compiles configuration snapshots into immutable Configs
// and holds the live one. A snapshot is validated with the same code the
// control plane uses, then checked for what only a data plane can know
// (its environment and files), then compiled; any error leaves the live
// Config untouched.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/middleware/jwt"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/router"
	"github.com/meridian-gw/meridian/dataplane/internal/statelog"
	"github.com/meridian-gw/meridian/dataplane/internal/upstream"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// sweepInterval is how often idle rate limit keys are dropped. Sweeping
// frees memory and room under the key cap; it never changes a decision, so
// its pace only bounds how long an idle key lingers.
const sweepInterval = 5 * time.Second

// Source says where an applied snapshot came from.
type Source string

// Sources of a snapshot.
const (
	SourceCache        Source = "cache"
	SourceControlPlane Source = "controlplane"
)

// ErrHashMismatch means a snapshot's resources do not hash to its hash.
var ErrHashMismatch = errors.New("snapshot hash does not match its resources")

// Config is one compiled snapshot. It never changes after Apply publishes
// it, so requests can use it without locks.
type Config struct {
	version   uint64
	hash      string
	source    Source
	appliedAt time.Time
	table     *router.Table[*proxy.Entry]
	pools     map[string]*upstream.Pool
	// providers are the JWTProviders by name; like pools, a provider whose
	// spec did not change is carried over, keys, JWKS and token cache and
	// all.
	providers map[string]*jwt.Provider
	// limits are the RateLimits by name; a RateLimit whose spec did not
	// change is carried over, so its buckets survive the push.
	limits map[string]*rateLimit
	// breakers are the circuit breaker instances by scope key; like
	// limits, an unchanged one is carried over with its state.
	breakers map[string]*breakerInstance
	// live names the resources whose metrics this Config records.
	live metrics.Live
}

// Version returns the snapshot version.
func (c *Config) Version() uint64 { return c.version }

// Hash returns the snapshot hash.
func (c *Config) Hash() string { return c.hash }

// Source returns where the snapshot came from.
func (c *Config) Source() Source { return c.source }

// AppliedAt returns when the snapshot was applied.
func (c *Config) AppliedAt() time.Time { return c.appliedAt }

// Upstream returns the pool of the named upstream, or nil.
func (c *Config) Upstream(name string) *upstream.Pool { return c.pools[name] }

// Route returns the entry of the route r matches, or nil. Template
// parameters are recorded on r, readable with r.PathValue.
func (c *Config) Route(r *http.Request) *proxy.Entry {
	rt, params, ok := c.table.Lookup(r)
	if !ok {
		return nil
	}
	if params.Len() > 0 {
		params.Each(r.SetPathValue)
	}
	return rt
}

// Allow returns the methods a route would accept on r's host and path
// when one matches everything but the method, for a 405's Allow header;
// otherwise "".
func (c *Config) Allow(r *http.Request) string {
	return c.table.Allow(r)
}

// Options are a Gateway's process-wide collaborators.
type Options struct {
	// Logger receives configuration and rate limit events, and the
	// targets' and breakers' state changes (see statelog).
	Logger *slog.Logger
	// ClientIP resolves client_ip rate limit keys; nil trusts no proxy.
	ClientIP *clientip.Resolver
	// Redis decides global-scope RateLimits; nil (no --redis) leaves
	// every decision of theirs to their onStoreFailure policy.
	Redis GlobalStore
	// Metrics records requests, rate limit and JWT decisions of every
	// configuration; nil: none.
	Metrics *metrics.Metrics
	// NodeID names this data plane in the Via header it adds to upstream
	// requests, next to a token drawn at random per Gateway, which is how
	// it recognises its own requests coming back (proxy.NewHop).
	NodeID string
	// Listeners are the data plane's own listeners; a snapshot with an
	// upstream target at one of them is refused (SetListeners sets them
	// later).
	Listeners []Listener
	// BodyReadTimeout and SendTimeout are every route's
	// proxy.RouteConfig fields of those names (--body-read-timeout,
	// --send-timeout); 0: none.
	BodyReadTimeout, SendTimeout time.Duration
}

// Gateway holds the live Config and applies new snapshots.
type Gateway struct {
	mu       sync.Mutex // serialises Apply
	current  atomic.Pointer[Config]
	buffers  *proxy.BufferPool
	log      *slog.Logger
	errorLog *log.Logger
	states   *statelog.Logger // every pool's and breaker's observer
	now      func() time.Time
	ip       *clientip.Resolver
	redis    GlobalStore
	metrics  *metrics.Metrics
	hop      *proxy.Hop
	self     []Listener // guarded by mu
	// Client timeouts every route gets (Options).
	bodyTimeout, sendTimeout time.Duration
	// fleet is the number of connected data planes as the control plane
	// last said; global limits falling back to local counting enforce
	// their limit divided by it. 1 until told otherwise.
	fleet atomic.Int64

	// The sweeper drops idle keys from the live Config's rate limit
	// stores. Apply starts it with the first store (so a Gateway without
	// rate limits runs no goroutine) and Close stops it and waits; both
	// hold mu.
	sweepStop context.CancelFunc
	sweepDone sync.WaitGroup
	closed    bool
}

// New returns a Gateway with no configuration.
func New(opts Options) *Gateway {
	g := &Gateway{
		buffers:  proxy.NewBufferPool(),
		log:      opts.Logger,
		errorLog: slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
		states:   statelog.New(opts.Logger, statelog.Options{}),
		now:      time.Now,
		ip:       opts.ClientIP,
		redis:    opts.Redis,
		metrics:  opts.Metrics,
		hop:      proxy.NewHop(opts.NodeID),
		self:     slices.Clone(opts.Listeners),

		bodyTimeout: opts.BodyReadTimeout,
		sendTimeout: opts.SendTimeout,
	}
	g.fleet.Store(1)
	return g
}

// FleetSize returns the fleet size last set with SetFleetSize, 1 before.
func (g *Gateway) FleetSize() int { return int(g.fleet.Load()) }

// SetFleetSize records how many data planes are connected fleet-wide
// (from the control plane); values below 1 count as 1.
func (g *Gateway) SetFleetSize(n int) {
	g.fleet.Store(max(int64(n), 1))
}

// Current returns the live Config, or nil before the first Apply.
func (g *Gateway) Current() *Config { return g.current.Load() }

// Applied returns the version and hash of the live Config (0, "" if none).
func (g *Gateway) Applied() (version uint64, hash string) {
	if c := g.current.Load(); c != nil {
		return c.version, c.hash
	}
	return 0, ""
}

// Handler returns the traffic handler, which reads the live Config once per
// request.
func (g *Gateway) Handler(c proxy.HandlerConfig) *proxy.Handler {
	if c.Hop == nil {
		c.Hop = g.hop // the routes' identity: what they send is what comes back
	}
	return proxy.NewHandler(g.routes, c)
}

func (g *Gateway) routes() proxy.Routes {
	if c := g.current.Load(); c != nil {
		return c
	}
	return nil
}

// Apply validates and compiles snap and makes it live. On error nothing
// changes; the error is a config.ErrorList or *config.FieldError when a
// resource is at fault.
func (g *Gateway) Apply(ctx context.Context, snap *meridianv1.Snapshot, src Source) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	prev := g.current.Load()
	if prev != nil && prev.version == snap.GetVersion() && prev.hash == snap.GetHash() && snap.GetHash() != "" {
		return nil
	}
	next, err := g.compile(ctx, snap, prev)
	if err != nil {
		// Drop the recorders the failed compile made for what never
		// went live.
		var live metrics.Live
		if prev != nil {
			live = prev.live
		}
		g.metrics.Retain(live)
		return err
	}
	next.source = src
	next.appliedAt = g.now()
	g.current.Store(next)
	g.metrics.Retain(next.live)
	if len(next.limits) > 0 && g.sweepStop == nil && !g.closed {
		g.startSweeper()
	}
	if prev != nil {
		upstream.CloseUnused(prev.pools, next.pools)
		closeUnusedProviders(prev.providers, next.providers)
	}
	g.log.LogAttrs(ctx, slog.LevelInfo, "configuration applied",
		slog.Uint64("version", next.version), slog.String("hash", next.hash),
		slog.String("source", string(src)), slog.Int("resources", len(snap.GetResources())))
	return nil
}

// Close stops the live Config's health checkers and the rate limit
// sweeper, and releases idle upstream connections.
func (g *Gateway) Close() {
	g.mu.Lock()
	g.closed = true
	if g.sweepStop != nil {
		g.sweepStop()
		g.sweepDone.Wait()
		g.sweepStop = nil
	}
	g.mu.Unlock()
	if c := g.current.Load(); c != nil {
		upstream.CloseUnused(c.pools, nil)
		closeUnusedProviders(c.providers, nil)
	}
}

// startSweeper starts the goroutine that sweeps the live Config's rate
// limit stores every sweepInterval. Stores a push dropped are left to the
// garbage collector.
func (g *Gateway) startSweeper() {
	ctx, cancel := context.WithCancel(context.Background())
	g.sweepStop = cancel
	g.sweepDone.Add(1)
	go func() {
		defer g.sweepDone.Done()
		t := time.NewTicker(sweepInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if c := g.current.Load(); c != nil {
					now := g.now()
					for _, rl := range c.limits {
						rl.sweep(now)
					}
				}
			}
		}
	}()
}

// closeUnusedProviders closes the providers of old that current does not
// carry over. Requests still running on old keep verifying with the keys
// their provider holds; only its JWKS refresher stops.
func closeUnusedProviders(old, current map[string]*jwt.Provider) {
	for name, p := range old {
		if current[name] != p {
			p.Close()
		}
	}
}

// chain wraps a route's proxy handler in its middleware, outermost first:
// authentication, rate limits (after authentication, so consumer and
// claim: keys see the verified identity), then the request context the
// load balancer reads.
func (g *Gateway) chain(route string, spec *meridianv1.RouteSpec, h http.Handler, providers map[string]*jwt.Provider, limits map[string]*rateLimit) (http.Handler, error) {
	h, err := g.rateLimits(route, spec, h, limits)
	if err != nil {
		return nil, err
	}
	auth := spec.GetAuth()
	if auth.GetJwt() == "" {
		return h, nil
	}
	p := providers[auth.GetJwt()]
	if p == nil {
		// Validate checks references; a provider that failed to build
		// is reported on its own resource.
		return nil, &config.FieldError{Kind: config.KindRoute, Name: route, Path: "spec.auth.jwt", Msg: fmt.Sprintf("JWTProvider %q is not available", auth.GetJwt())}
	}
	return jwt.New(p, auth, afterAuth(h))
}

// afterAuth hands the verified claims to the upstream package, so
// consistent hashing on claim:<name> can read them, and the identity to
// the access log, so answers given after authentication (a rate limit's
// 429) name the consumer.
func afterAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := jwt.ClaimsFrom(r.Context()); ok {
			r = r.WithContext(upstream.WithClaims(r.Context(), c))
			proxy.Authenticated(w, r)
		}
		next.ServeHTTP(w, r)
	})
}

// compile builds a Config from snap, reusing prev's upstream pools and
// transports where their specs did not change. It has no side effects on
// prev; when it fails, the pools it started are closed again.
func (g *Gateway) compile(ctx context.Context, snap *meridianv1.Snapshot, prev *Config) (_ *Config, err error) {
	rs := snap.GetResources()
	if h := snap.GetHash(); h != "" && h != config.Hash(rs) {
		return nil, fmt.Errorf("version %d: %w", snap.GetVersion(), ErrHashMismatch)
	}
	if err := config.Validate(rs); err != nil {
		return nil, err
	}
	if err := checkSecrets(rs, os.LookupEnv, os.ReadFile); err != nil {
		return nil, err
	}
	if err := checkSelfTargets(rs, g.self, thisHost()); err != nil {
		return nil, err
	}

	c := &Config{version: snap.GetVersion(), hash: snap.GetHash(), pools: map[string]*upstream.Pool{}, providers: map[string]*jwt.Provider{}}
	var live map[string]*upstream.Pool
	var liveProviders map[string]*jwt.Provider
	if prev != nil {
		live, liveProviders = prev.pools, prev.providers
	}
	defer func() {
		if err != nil {
			// New pools run health checkers and new providers refresh
			// their JWKS; reused ones stay live.
			upstream.CloseUnused(c.pools, live)
			closeUnusedProviders(c.providers, liveProviders)
		}
	}()
	var liveLimits map[string]*rateLimit
	if prev != nil {
		liveLimits = prev.limits
	}
	limits, errs := g.compileRateLimits(rs, liveLimits)
	c.limits = limits
	var liveBreakers map[string]*breakerInstance
	if prev != nil {
		liveBreakers = prev.breakers
	}
	breakers, routeBrk, brkErrs := compileBreakers(rs, liveBreakers, g.states)
	c.breakers = breakers
	errs = append(errs, brkErrs...)
	for _, r := range rs {
		jp := r.GetJwtProvider()
		if jp == nil {
			continue
		}
		name := jp.GetMetadata().GetName()
		if old := liveProviders[name]; old != nil && old.Matches(name, jp.GetSpec()) {
			c.providers[name] = old
			continue
		}
		p, err := jwt.NewProvider(ctx, name, jp.GetSpec(), jwt.Options{Logger: g.log, Metrics: g.metrics.JWT(name)})
		if err != nil {
			errs = append(errs, &config.FieldError{Kind: config.KindJWTProvider, Name: name, Path: "spec",
				Msg: strings.TrimPrefix(err.Error(), fmt.Sprintf("JWTProvider %q: ", name))})
			continue
		}
		c.providers[name] = p
	}
	for _, r := range rs {
		u := r.GetUpstream()
		if u == nil {
			continue
		}
		name := u.GetMetadata().GetName()
		p, err := upstream.NewWithOptions(name, u.GetSpec(), live[name], upstream.Options{Observer: g.states})
		if err != nil {
			errs = appendErr(errs, err)
			continue
		}
		c.pools[name] = p
	}

	c.live = metrics.Live{Routes: map[string]string{}}
	for name := range c.limits {
		c.live.RateLimits = append(c.live.RateLimits, name)
	}
	for name := range c.providers {
		c.live.JWTProviders = append(c.live.JWTProviders, name)
	}
	var entries []router.Entry[*proxy.Entry]
	for _, r := range rs {
		rt := r.GetRoute()
		if rt == nil {
			continue
		}
		name := rt.GetMetadata().GetName()
		upName := rt.GetSpec().GetUpstream()
		c.live.Routes[name] = upName
		pool := c.pools[upName]
		if pool == nil {
			// Validate checks references; this is a guard, not a path.
			errs = append(errs, &config.FieldError{Kind: config.KindRoute, Name: name, Path: "spec.upstream", Msg: fmt.Sprintf("upstream %q not found", rt.GetSpec().GetUpstream())})
			continue
		}
		rb := routeBrk[name]
		h, err := proxy.NewRoute(proxy.RouteConfig{
			Name: name, Spec: rt.GetSpec(), Pool: pool,
			Buffers: g.buffers, Log: g.log, ErrorLog: g.errorLog,
			Breaker: rb.shared, TargetBreaker: rb.targetBreaker(), Fallback: rb.fallback,
			Metrics: g.metrics.Route(name, upName), Hop: g.hop,
			BodyReadTimeout: g.bodyTimeout, SendTimeout: g.sendTimeout,
		})
		if err != nil {
			errs = appendErr(errs, err)
			continue
		}
		chain, err := g.chain(name, rt.GetSpec(), h, c.providers, c.limits)
		if err != nil {
			errs = appendErr(errs, err)
			continue
		}
		entries = append(entries, router.Entry[*proxy.Entry]{
			Name: name, Priority: rt.GetSpec().GetPriority(), Match: rt.GetSpec().GetMatch(), Value: proxy.NewEntry(h, chain),
		})
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	table, err := router.New(entries)
	if err != nil {
		return nil, err
	}
	c.table = table
	return c, nil
}

func appendErr(list config.ErrorList, err error) config.ErrorList {
	var fe *config.FieldError
	var el config.ErrorList
	switch {
	case errors.As(err, &el):
		return append(list, el...)
	case errors.As(err, &fe):
		return append(list, fe)
	default:
		return append(list, &config.FieldError{Msg: err.Error()})
	}
}

// checkSecrets verifies that every secret a JWTProvider references exists
// on this data plane. Messages name the variable or file, never a value.
func checkSecrets(rs []*meridianv1.Resource, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) error {
	var errs config.ErrorList
	for _, r := range rs {
		p := r.GetJwtProvider()
		if p == nil {
			continue
		}
		name := p.GetMetadata().GetName()
		for i, k := range p.GetSpec().GetKeys() {
			if env := k.GetSecretEnv(); env != "" {
				v, ok := lookupEnv(env)
				var msg string
				switch {
				case !ok:
					msg = fmt.Sprintf("environment variable %q is not set on this data plane", env)
				case v == "":
					msg = fmt.Sprintf("environment variable %q is empty on this data plane", env)
				}
				if msg != "" {
					errs = append(errs, &config.FieldError{Kind: config.KindJWTProvider, Name: name, Path: fmt.Sprintf("spec.keys[%d].secretEnv", i), Msg: msg})
				}
			}
			if file := k.GetSecretFile(); file != "" {
				data, err := readFile(file)
				var msg string
				switch {
				case err != nil:
					msg = fmt.Sprintf("file %q is not readable on this data plane: %v", file, pathErrReason(err))
				case len(data) == 0:
					msg = fmt.Sprintf("file %q is empty on this data plane", file)
				}
				clear(data)
				if msg != "" {
					errs = append(errs, &config.FieldError{Kind: config.KindJWTProvider, Name: name, Path: fmt.Sprintf("spec.keys[%d].secretFile", i), Msg: msg})
				}
			}
		}
	}
	return errs.Err()
}

// pathErrReason strips the path and operation from an *fs.PathError, so the
// message says "permission denied" rather than repeating the file name.
func pathErrReason(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
