// Package enrolment gives a data plane the credentials it talks to the
// control plane with. It enrols once with a join token (over TLS verified
// against the CA the token pins), keeps the identity it gets in
// <cache-dir>/identity/, renews the certificate at 2/3 of its lifetime,
// and hands the gRPC client a TLS configuration that always presents the
// current certificate. Operators with their own PKI give certificate files
// instead, which are reloaded when they change; --insecure gives none.
package enrolment

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meridian-gw/meridian/proto/identity"
)

// Defaults for Config's zero values.
const (
	DefaultRetryMin     = time.Second
	DefaultRefusedRetry = 30 * time.Second
	DefaultReloadEvery  = 10 * time.Second
	DefaultCallTimeout  = 10 * time.Second
	// maxEnrolBackoff bounds the wait between enrolment attempts while no
	// control plane answers.
	maxEnrolBackoff = 30 * time.Second
)

// ErrNoCredentials means no way to authenticate to the control plane was
// configured: no usable stored identity, no join token, no certificate
// files and not insecure.
var ErrNoCredentials = errors.New("no control-plane credentials")

// Files are certificate files from the operator's own PKI, used as they
// are (never renewed; reloaded when they change on disk).
type Files struct {
	// CA is the PEM bundle that verifies the control plane.
	CA string
	// Cert is the PEM client certificate chain, leaf first; its URI SAN
	// must name the node (identity.URI).
	Cert string
	// Key is the PEM private key of Cert.
	Key string
}

// Config configures a Manager. Exactly one source is used, in this order:
// Insecure, Files, the identity stored in Dir, Token.
type Config struct {
	// Dir keeps the enrolled identity: <cache-dir>/identity.
	Dir string
	// NodeID is --node-id; the certificate must name it.
	NodeID string
	// Addresses are the control planes, tried in order.
	Addresses []string
	// Token enrols when Dir holds no usable identity. Nil: none.
	Token *identity.JoinToken
	// Files, when set, are used instead of enrolment.
	Files *Files
	// Insecure talks plaintext, without credentials.
	Insecure bool
	Log      *slog.Logger

	// RetryMin is the first wait after a failed enrolment or renewal.
	RetryMin time.Duration
	// RefusedRetry is the wait after the control plane refused an
	// enrolment for a reason that needs an operator (bad token, wrong pin).
	RefusedRetry time.Duration
	// ReloadEvery is how often Files are checked for changes.
	ReloadEvery time.Duration
	// CallTimeout bounds each Enrol or Renew call.
	CallTimeout time.Duration
}

// Manager holds the data plane's current control-plane credentials and
// keeps them valid while Run runs.
type Manager struct {
	cfg       Config
	cur       atomic.Pointer[state]
	ready     chan struct{}
	readyOnce sync.Once
	// filesStamp is Files' stamp from before they were loaded, so a
	// change made while loading is not missed.
	filesStamp string
}

// New picks the credential source cfg describes and loads what is already
// on disk. The error wraps ErrNoCredentials when there is nothing to use,
// with the reason a stored identity was not usable.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil || len(cfg.Addresses) == 0 {
		return nil, errors.New("enrolment: Log and Addresses are required")
	}
	setDefaults(&cfg)
	m := &Manager{cfg: cfg, ready: make(chan struct{})}
	switch {
	case cfg.Insecure:
		cfg.Log.Warn("control-plane connection is plaintext and unauthenticated (--insecure)")
		m.markReady()
		return m, nil
	case cfg.Files != nil:
		m.filesStamp = stamp(*cfg.Files)
		st, err := loadFiles(*cfg.Files, cfg.NodeID)
		if err != nil {
			return nil, err
		}
		if !time.Now().Before(st.leaf().NotAfter) {
			cfg.Log.Warn("control-plane certificate has expired; waiting for the files to be replaced", "cert", cfg.Files.Cert, "notAfter", st.leaf().NotAfter.UTC())
		}
		m.set(st)
		return m, nil
	}
	return m, m.useStored()
}

func setDefaults(cfg *Config) {
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RefusedRetry <= 0 {
		cfg.RefusedRetry = DefaultRefusedRetry
	}
	if cfg.ReloadEvery <= 0 {
		cfg.ReloadEvery = DefaultReloadEvery
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
}

// useStored adopts the identity in Dir when it is usable, and otherwise
// falls back to the join token.
func (m *Manager) useStored() error {
	st, err := loadDir(m.cfg.Dir)
	if err == nil {
		err = usable(st, m.cfg.NodeID, time.Now())
	}
	switch {
	case err == nil:
		m.set(st)
		if m.cfg.Token != nil {
			m.cfg.Log.Info("join token not needed: using the stored identity", "dir", m.cfg.Dir, "node", st.nodeID)
		}
		return nil
	case m.cfg.Token == nil && errors.Is(err, fs.ErrNotExist):
		return ErrNoCredentials
	case m.cfg.Token == nil:
		return fmt.Errorf("%w: stored identity in %s: %v", ErrNoCredentials, m.cfg.Dir, err)
	}
	if err := identity.CheckNodeID(m.cfg.NodeID); err != nil {
		return fmt.Errorf("enrolment: %w", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		m.cfg.Log.Warn("ignoring stored identity; enrolling with the join token", "dir", m.cfg.Dir, "reason", err)
	}
	return nil
}

// usable says why a stored identity cannot be used now.
func usable(st *state, nodeID string, now time.Time) error {
	if st.nodeID != nodeID {
		return fmt.Errorf("certificate is for node %q, not %q", st.nodeID, nodeID)
	}
	if !now.Before(st.leaf().NotAfter) {
		return fmt.Errorf("certificate expired at %s", st.leaf().NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Run keeps the credentials valid until ctx is done: it enrols first when
// needed, then renews the certificate (or reloads Files) as it ages.
func (m *Manager) Run(ctx context.Context) {
	switch {
	case m.cfg.Insecure:
		return
	case m.cfg.Files != nil:
		m.reloadLoop(ctx)
		return
	}
	for ctx.Err() == nil {
		if st := m.cur.Load(); st == nil || !time.Now().Before(st.leaf().NotAfter) {
			if m.cfg.Token == nil {
				m.cfg.Log.Error("client certificate expired and there is no join token to enrol again; restart with --join-token from 'gatewayctl tokens create'")
				<-ctx.Done()
				return
			}
			if !m.enrol(ctx) {
				return
			}
		}
		m.renewLoop(ctx)
	}
}

// Ready is closed once there are credentials to dial with.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// NotAfter returns when the current client certificate expires (zero
// when there is none, or with --insecure).
func (m *Manager) NotAfter() time.Time {
	if st := m.cur.Load(); st != nil {
		return st.leaf().NotAfter
	}
	return time.Time{}
}

// NodeID returns the node id the current certificate names ("" when there
// is none, or with --insecure).
func (m *Manager) NodeID() string {
	if st := m.cur.Load(); st != nil {
		return st.nodeID
	}
	return ""
}

// TransportCredentials returns the gRPC credentials for dialing addr:
// TLS from TLSConfig, or plaintext with --insecure.
func (m *Manager) TransportCredentials(addr string) credentials.TransportCredentials {
	if m.cfg.Insecure {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(m.TLSConfig(addr))
}

// TLSConfig returns the client TLS configuration for addr: the server must
// present a certificate for addr's host from the current CA bundle, and
// every handshake presents the certificate current at that moment, so a
// renewal applies to the next connection without touching open ones.
func (m *Manager) TLSConfig(addr string) *tls.Config {
	roots := x509.NewCertPool() // trusts nothing until there is an identity
	if st := m.cur.Load(); st != nil {
		roots = st.roots
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: hostOf(addr),
		RootCAs:    roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if st := m.cur.Load(); st != nil {
				return &st.cert, nil
			}
			return &tls.Certificate{}, nil
		},
	}
}

// set makes st the current identity.
func (m *Manager) set(st *state) {
	m.cur.Store(st)
	m.markReady()
}

func (m *Manager) markReady() { m.readyOnce.Do(func() { close(m.ready) }) }

func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// sleep waits d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
