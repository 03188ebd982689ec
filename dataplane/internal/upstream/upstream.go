// Package upstream holds the per-upstream state the proxy sends traffic
// through: the targets with their health, the load balancer and a tuned
// http.Transport. Pools are rebuilt on every snapshot, but a pool whose
// spec did not change is reused whole, a pool whose targets changed keeps
// the health of the addresses it still has, and a transport whose
// settings did not change is shared, so connections, balancer state and
// health state survive config pushes.
//
// The proxy calls Pick for each attempt and Done when the attempt is over;
// Done feeds passive outlier ejection and least_request's in-flight counts.
// A pool with an active health check owns one goroutine, started by New and
// stopped by Close (CloseUnused closes the pools a new configuration no
// longer uses).
//
// Every change of a target's health (see Transition) is reported, once, to
// the pool's Observer.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Defaults used when the spec leaves a connection setting at zero. Go's own
// default of 2 idle connections per host is far too low for a proxy.
const (
	DefaultMaxIdleConns        = 1024
	DefaultMaxIdleConnsPerHost = 256
	DefaultIdleConnTimeout     = 90 * time.Second
	DefaultTLSHandshakeTimeout = 10 * time.Second
	DefaultConnectTimeout      = 5 * time.Second
)

// ErrNoHealthyTarget means every target of an upstream is unhealthy or
// ejected, or the upstream has none. The proxy answers 503 at once.
var ErrNoHealthyTarget = errors.New("no healthy target")

// Pool is one upstream: its targets, balancer and transport. A Pool's
// targets never change; a new spec makes a new Pool.
type Pool struct {
	name      string
	spec      *meridianv1.UpstreamSpec
	scheme    string // URL scheme: http or https (h2c is http over an h2c transport)
	transport *http.Transport
	targets   []*Target
	addrs     []string
	picker    picker
	noTarget  error // prebuilt so that Pick never allocates
	passive   passiveConfig
	now       func() int64 // Unix nanoseconds; replaced in tests
	observer  Observer     // nil: none
	closed    atomic.Bool  // a closed pool reports nothing: its successor does

	ejectMu sync.Mutex // serialises ejections so maxEjectionPercent holds

	// checks counts active health check probes. A pool built to replace
	// one of the same name shares its predecessor's, so the counts grow
	// for as long as the upstream exists.
	checks *checkCounts

	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Target is one address of an upstream with its health and load. Pick
// returns it; the proxy hands it back to Done.
type Target struct {
	pool   *Pool
	addr   string
	weight int64

	inflight atomic.Int64 // attempts between Pick and Done
	down     atomic.Bool  // active health check verdict
	probed   atomic.Bool  // the active check has judged this target at least once

	// Passive outlier ejection. Pick reads ejectedUntil lock-free; eject
	// changes it under the pool's ejectMu. Atomics let a successor pool
	// copy the state while this pool still serves.
	failures     atomic.Int64 // consecutive failed attempts
	ejectedUntil atomic.Int64 // Unix nanoseconds; 0 = not ejected
	ejections    atomic.Int64 // how many recent ejections; multiplies ejectionTime
	lastEjectEnd atomic.Int64 // when the last ejection ends or ended (Unix nanoseconds)
	ejectedFor   atomic.Int64 // how long the last ejection lasts or lasted (nanoseconds)
}

// Address returns the target's host:port.
func (t *Target) Address() string { return t.addr }

// available reports whether Pick may choose t. The clock is read only
// while t is ejected, so the healthy path costs two atomic loads.
func (t *Target) available(now func() int64) bool {
	if t.down.Load() {
		return false
	}
	until := t.ejectedUntil.Load()
	if until == 0 {
		return true
	}
	if now() < until {
		return false
	}
	t.endEjection(until)
	return true
}

// endEjection puts t, whose ejection until until is over, back in rotation
// and reports its return. Whoever first notices that the time is up (a
// Pick, Status, the next ejection) does it, so the return is reported
// once, when it is noticed.
func (t *Target) endEjection(until int64) {
	if t.ejectedUntil.CompareAndSwap(until, 0) {
		t.pool.report(Transition{Target: t.addr, Check: PassiveCheck, From: Ejected, To: Healthy,
			Ejection: time.Duration(t.ejectedFor.Load())})
	}
}

// Outcome is how one attempt at a target ended, as the proxy saw it.
type Outcome struct {
	// Err is set when no response arrived: connect failure, reset, timeout.
	// context.Canceled (the client went away) says nothing about the target
	// and is ignored by outlier ejection.
	Err error
	// Status is the upstream's response status, 0 when there was none.
	Status int
	// Latency is the time from sending the request to the response header.
	Latency time.Duration
}

// Failed reports whether the attempt counts against the target for
// passive outlier ejection: an error other than the client's cancellation,
// or a 5xx status.
func (o Outcome) Failed() bool {
	return (o.Err != nil && !errors.Is(o.Err, context.Canceled)) || o.Status >= 500
}

// neutral reports whether the attempt says nothing about the target.
func (o Outcome) neutral() bool {
	return o.Status == 0 && (o.Err == nil || errors.Is(o.Err, context.Canceled))
}

// Options are a pool's collaborators. The zero value has none.
type Options struct {
	// Observer is told of the targets' health transitions; nil: no one.
	// A pool New returns unchanged (prev) keeps prev's.
	Observer Observer
}

// New is NewWithOptions with no Options.
func New(name string, spec *meridianv1.UpstreamSpec, prev *Pool) (*Pool, error) {
	return NewWithOptions(name, spec, prev, Options{})
}

// NewWithOptions builds the pool for an upstream. prev is the pool of the
// same name in the configuration being replaced, or nil:
//   - when its spec is equal (proto.Equal), prev itself is returned, with
//     its balancer, health state and health-check goroutine;
//   - otherwise the new pool starts with prev's health state for every
//     address it keeps, and shares prev's transport when the scheme, TLS,
//     connection pool and timeouts are unchanged.
//
// The new pool's health checker, if any, runs until Close. Errors are
// *config.FieldError.
func NewWithOptions(name string, spec *meridianv1.UpstreamSpec, prev *Pool, opts Options) (*Pool, error) {
	return build(name, spec, prev, opts, func() int64 { return time.Now().UnixNano() })
}

func build(name string, spec *meridianv1.UpstreamSpec, prev *Pool, opts Options, now func() int64) (*Pool, error) {
	if prev != nil && proto.Equal(prev.spec, spec) {
		return prev, nil
	}
	p := &Pool{
		name:     name,
		spec:     spec,
		scheme:   "http",
		noTarget: fmt.Errorf("upstream %q: %w", name, ErrNoHealthyTarget),
		passive:  newPassiveConfig(spec.GetHealthCheck().GetPassive()),
		now:      now,
		observer: opts.Observer,
	}
	if spec.GetScheme() == meridianv1.Scheme_SCHEME_HTTPS {
		p.scheme = "https"
	}
	p.checks = new(checkCounts)
	if prev != nil {
		p.checks = prev.checks
	}
	if prev != nil && sameTransport(prev.spec, spec) {
		p.transport = prev.transport
	} else {
		t, err := newTransport(spec)
		if err != nil {
			return nil, &config.FieldError{Kind: config.KindUpstream, Name: name, Path: "spec.tls.caPEM", Msg: err.Error()}
		}
		p.transport = t
	}

	active := spec.GetHealthCheck().GetActive()
	var old map[string]*Target
	if prev != nil {
		old = make(map[string]*Target, len(prev.targets))
		for _, t := range prev.targets {
			old[t.addr] = t
		}
	}
	for _, ts := range spec.GetTargets() {
		t := &Target{pool: p, addr: ts.GetAddress(), weight: max(int64(ts.GetWeight()), 1)}
		if o := old[t.addr]; o != nil {
			t.inherit(o, active != nil, p.passive.enabled)
		}
		p.targets = append(p.targets, t)
		p.addrs = append(p.addrs, t.addr)
	}

	picker, err := newPicker(spec.GetLoadBalancer(), p.targets)
	if err != nil {
		return nil, &config.FieldError{Kind: config.KindUpstream, Name: name, Path: "spec.loadBalancer.hashOn", Msg: err.Error()}
	}
	p.picker = picker

	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	if active != nil && len(p.targets) > 0 {
		c := newChecker(p, active)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			c.run(ctx)
		}()
	}
	return p, nil
}

// inherit copies the health state of the same address in the previous
// pool, keeping only what this pool still checks for.
func (t *Target) inherit(o *Target, active, passive bool) {
	if active {
		t.down.Store(o.down.Load())
		t.probed.Store(o.probed.Load())
	}
	if passive {
		t.failures.Store(o.failures.Load())
		t.ejectedUntil.Store(o.ejectedUntil.Load())
		t.ejections.Store(o.ejections.Load())
		t.lastEjectEnd.Store(o.lastEjectEnd.Load())
		t.ejectedFor.Store(o.ejectedFor.Load())
	}
}

// Name returns the upstream's name.
func (p *Pool) Name() string { return p.name }

// Scheme returns the URL scheme to send requests with: "http" or "https".
func (p *Pool) Scheme() string { return p.scheme }

// Transport returns the pool's transport.
func (p *Pool) Transport() *http.Transport { return p.transport }

// Targets returns the target addresses. The caller must not modify them.
func (p *Pool) Targets() []string { return p.addrs }

// Pick chooses the target for one attempt of r, following the upstream's
// load-balancing policy and skipping unhealthy and ejected targets. r may
// be nil (hash policies then fall back to round robin). It never blocks;
// when no target is available the error wraps ErrNoHealthyTarget. Every
// successful Pick must be followed by exactly one Done.
func (p *Pool) Pick(r *http.Request) (*Target, error) {
	t := p.picker.pick(r, p.now)
	if t == nil {
		return nil, p.noTarget
	}
	t.inflight.Add(1)
	return t, nil
}

// Done reports how the attempt at t, which Pick returned, ended.
func (p *Pool) Done(t *Target, o Outcome) {
	t.inflight.Add(-1)
	if !p.passive.enabled || o.neutral() {
		return
	}
	if !o.Failed() {
		if t.failures.Load() != 0 {
			t.failures.Store(0)
		}
		return
	}
	if until := t.ejectedUntil.Load(); until != 0 && p.now() < until {
		return // in flight when t was ejected; its count starts afresh
	}
	if n := t.failures.Add(1); n >= p.passive.consecutiveFailures {
		p.eject(t, n, o)
	}
}

// Next picks a target for a request and returns its address. ok is false
// when no target is available.
//
// Deprecated: use Pick and Done, which feed health and least_request.
func (p *Pool) Next() (addr string, ok bool) {
	t, err := p.Pick(nil)
	if err != nil {
		return "", false
	}
	t.inflight.Add(-1)
	return t.addr, true
}

// checkCounts counts active health check probes by result.
type checkCounts struct {
	passed, failed atomic.Uint64
}

// ActiveHealthCheck reports whether the upstream has active health
// checks.
func (p *Pool) ActiveHealthCheck() bool {
	return p.spec.GetHealthCheck().GetActive() != nil
}

// HealthChecks returns how many active health check probes passed and
// failed, over the life of the upstream (pools rebuilt for a changed spec
// included).
func (p *Pool) HealthChecks() (passed, failed uint64) {
	return p.checks.passed.Load(), p.checks.failed.Load()
}

// TargetStatus is a point-in-time view of one target, for admin endpoints
// and metrics.
type TargetStatus struct {
	Address  string
	Weight   int64
	Healthy  bool // the active health check's verdict (true without one)
	Ejected  bool // ejected by passive outlier detection
	InFlight int64
}

// Status returns the state of every target, in spec order. A target whose
// ejection time is up is put back in rotation (and its return reported)
// here, as Pick would.
func (p *Pool) Status() []TargetStatus {
	now := p.now()
	out := make([]TargetStatus, len(p.targets))
	for i, t := range p.targets {
		ejected := false
		if until := t.ejectedUntil.Load(); until != 0 {
			if ejected = now < until; !ejected {
				t.endEjection(until)
			}
		}
		out[i] = TargetStatus{
			Address:  t.addr,
			Weight:   t.weight,
			Healthy:  !t.down.Load(),
			Ejected:  ejected,
			InFlight: t.inflight.Load(),
		}
	}
	return out
}

// Close stops the pool's health checker and waits for it to exit. It does
// not close the transport, which a newer pool may share; CloseUnused does.
// Pick and Done keep working on a closed pool, for requests still in
// flight. Close is idempotent.
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.stop()
		p.wg.Wait()
	})
}

// CloseUnused closes every pool of old that is not in current and the idle
// connections of every transport used in old and not in current. Call it
// after current has replaced old, so requests still running on old finish;
// their connections close when they return. To discard a configuration
// that failed to build, call CloseUnused(built, live).
func CloseUnused(old, current map[string]*Pool) {
	pools := make(map[*Pool]bool, len(current))
	inUse := make(map[*http.Transport]bool, len(current))
	for _, p := range current {
		pools[p] = true
		inUse[p.transport] = true
	}
	for _, p := range old {
		if pools[p] {
			continue
		}
		pools[p] = true // close once
		p.Close()
		if !inUse[p.transport] {
			inUse[p.transport] = true
			p.transport.CloseIdleConnections()
		}
	}
}

// sameTransport reports whether the transport-relevant parts of two specs
// are equal.
func sameTransport(a, b *meridianv1.UpstreamSpec) bool {
	return a.GetScheme() == b.GetScheme() &&
		proto.Equal(a.GetConnectionPool(), b.GetConnectionPool()) &&
		proto.Equal(a.GetTimeouts(), b.GetTimeouts()) &&
		proto.Equal(a.GetTls(), b.GetTls())
}

func durationOr(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil || d.AsDuration() <= 0 {
		return def
	}
	return d.AsDuration()
}

func intOr(v uint32, def int) int {
	if v == 0 {
		return def
	}
	return int(v)
}

func newTransport(spec *meridianv1.UpstreamSpec) (*http.Transport, error) {
	cp := spec.GetConnectionPool()
	dialer := &net.Dialer{
		Timeout:   durationOr(spec.GetTimeouts().GetConnect(), DefaultConnectTimeout),
		KeepAlive: 30 * time.Second,
	}
	t := &http.Transport{
		// Never use the environment's HTTP proxy for upstream traffic.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		MaxIdleConns:          intOr(cp.GetMaxIdleConns(), DefaultMaxIdleConns),
		MaxIdleConnsPerHost:   intOr(cp.GetMaxIdleConnsPerHost(), DefaultMaxIdleConnsPerHost),
		IdleConnTimeout:       durationOr(cp.GetIdleConnTimeout(), DefaultIdleConnTimeout),
		TLSHandshakeTimeout:   durationOr(cp.GetTlsHandshakeTimeout(), DefaultTLSHandshakeTimeout),
		ExpectContinueTimeout: time.Second,
	}
	if connDeadlines(spec) {
		// Plain HTTP/1.1 connections can bound the wait for a response
		// themselves (see AwaitResponse).
		t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &awaitConn{Conn: c}, nil
		}
	}
	switch spec.GetScheme() {
	case meridianv1.Scheme_SCHEME_H2C:
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		t.Protocols = &protos
	case meridianv1.Scheme_SCHEME_HTTPS:
		t.ForceAttemptHTTP2 = true
		tc := &tls.Config{
			MinVersion:         tls.VersionTLS12,
			ServerName:         spec.GetTls().GetServerName(),
			InsecureSkipVerify: spec.GetTls().GetInsecureSkipVerify(), //nolint:gosec // operator's explicit choice
		}
		if pem := spec.GetTls().GetCaPem(); pem != "" {
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM([]byte(pem)) {
				return nil, fmt.Errorf("no PEM certificate found")
			}
			tc.RootCAs = roots
		}
		t.TLSClientConfig = tc
	}
	return t, nil
}
