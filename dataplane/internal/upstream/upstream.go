// Package upstream holds the per-upstream state the proxy sends traffic
// through: the targets, the balancer and a tuned http.Transport. Pools are
// rebuilt on every snapshot, but a pool whose spec did not change is reused
// whole, and a transport whose settings did not change is shared, so
// connections and balancer state survive config pushes.
package upstream

import (
	"crypto/tls"
	"crypto/x509"
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

// Pool is one upstream: its targets, balancer and transport. A Pool's
// targets never change; a new spec makes a new Pool.
type Pool struct {
	name      string
	spec      *meridianv1.UpstreamSpec
	scheme    string // URL scheme: http or https (h2c is http over an h2c transport)
	transport *http.Transport
	targets   []string
	balancer  balancer
}

// New builds the pool for an upstream. prev is the pool of the same name in
// the configuration being replaced, or nil: when its spec is equal, prev
// itself is returned; when only the targets or balancing changed, the new
// pool shares prev's transport. Errors are *config.FieldError.
func New(name string, spec *meridianv1.UpstreamSpec, prev *Pool) (*Pool, error) {
	if prev != nil && proto.Equal(prev.spec, spec) {
		return prev, nil
	}
	p := &Pool{name: name, spec: spec, scheme: "http"}
	if spec.GetScheme() == meridianv1.Scheme_SCHEME_HTTPS {
		p.scheme = "https"
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
	weights := make([]int64, len(spec.GetTargets()))
	for i, t := range spec.GetTargets() {
		p.targets = append(p.targets, t.GetAddress())
		weights[i] = max(int64(t.GetWeight()), 1)
	}
	p.balancer = newBalancer(weights)
	return p, nil
}

// Name returns the upstream's name.
func (p *Pool) Name() string { return p.name }

// Scheme returns the URL scheme to send requests with: "http" or "https".
func (p *Pool) Scheme() string { return p.scheme }

// Transport returns the pool's transport.
func (p *Pool) Transport() *http.Transport { return p.transport }

// Targets returns the target addresses. The caller must not modify them.
func (p *Pool) Targets() []string { return p.targets }

// Next picks the target for a request. ok is false when the upstream has no
// targets.
func (p *Pool) Next() (addr string, ok bool) {
	if len(p.targets) == 0 {
		return "", false
	}
	return p.targets[p.balancer.next()], true
}

// CloseUnused closes the idle connections of every transport used in old
// and not in current. Call it after current has replaced old, so requests
// still running on old finish; their connections close when they return.
func CloseUnused(old, current map[string]*Pool) {
	inUse := make(map[*http.Transport]bool, len(current))
	for _, p := range current {
		inUse[p.transport] = true
	}
	for _, p := range old {
		if !inUse[p.transport] {
			inUse[p.transport] = true // close once
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

// balancer picks target indexes.
type balancer interface {
	next() int
}

func newBalancer(weights []int64) balancer {
	for _, w := range weights[min(1, len(weights)):] {
		if w != weights[0] {
			return &smoothWeighted{weights: weights, current: make([]int64, len(weights))}
		}
	}
	return &roundRobin{n: uint64(len(weights))}
}

// roundRobin is the lock-free case of equal weights.
type roundRobin struct {
	n       uint64
	counter atomic.Uint64
}

func (r *roundRobin) next() int {
	if r.n <= 1 {
		return 0
	}
	return int((r.counter.Add(1) - 1) % r.n)
}

// smoothWeighted is nginx's smooth weighted round robin: weights 5,1,1 give
// a a b a c a a rather than a a a a a b c.
type smoothWeighted struct {
	mu      sync.Mutex
	weights []int64
	current []int64
}

func (s *smoothWeighted) next() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var total int64
	best := 0
	for i, w := range s.weights {
		s.current[i] += w
		total += w
		if s.current[i] > s.current[best] {
			best = i
		}
	}
	s.current[best] -= total
	return best
}
