// Package security wires the control plane's trust together: its PKI, the
// TLS its gRPC listener serves, the admin tokens and the gatewayctl config
// written on first start, the tap handle that authenticates every call, the
// audit log, and the background work that keeps them current (token-file
// reloads, the join-token cache, revocations, pruning).
package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meridian-gw/meridian/controlplane/internal/audit"
	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/pki"
	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Config is what the control plane's flags say about trust.
type Config struct {
	DataDir string
	// Listen is the gRPC address; its host goes into the server
	// certificate and the gatewayctl config.
	Listen   string
	Insecure bool
	// TLSCert and TLSKey replace the server certificate; ClientCA adds CAs
	// trusted for data-plane client certificates.
	TLSCert, TLSKey, ClientCA string
	// SANs are extra names for the generated server certificate.
	SANs []string
	// TokensFile is the admin tokens file; <data-dir>/admin-tokens when
	// empty.
	TokensFile string
	// CertTTL is the lifetime of data-plane certificates.
	CertTTL time.Duration
	// AuditRetention and DataplaneRetention bound what etcd keeps.
	AuditRetention, DataplaneRetention time.Duration
	ReplicaID                          string
	Logger                             *slog.Logger
}

// Security is the control plane's trust, ready to serve.
type Security struct {
	cfg   Config
	files *pki.Files // nil when insecure
	// serverCert is what the listener presents: [leaf, ..., pinned CA].
	serverCert tls.Certificate
	clientCAs  *x509.CertPool
	pin        string
	caBundle   []byte
	tokens     *auth.TokenFile
}

// LoadPKI creates or loads the PKI (nothing when insecure) and the server
// certificate. It comes before etcd, whose certificates it also holds.
func LoadPKI(cfg Config) (*Security, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Security{cfg: cfg}
	if cfg.Insecure {
		return s, checkInsecure(cfg)
	}
	files, created, err := pki.Load(filepath.Join(cfg.DataDir, "pki"), time.Now())
	if err != nil {
		return nil, err
	}
	if created {
		cfg.Logger.Info("created the cluster CA", "dir", files.Dir, "pin", identity.Pin(files.CA.Certificate()))
	}
	s.files = files
	if err := s.loadServerCert(); err != nil {
		return nil, err
	}
	return s, nil
}

// checkInsecure refuses --insecure on an address other machines reach.
func checkInsecure(cfg Config) error {
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", cfg.Listen, err)
	}
	if !isLoopback(host) {
		return fmt.Errorf("--insecure serves without TLS or authentication, so it only listens on loopback; --listen %s is not", cfg.Listen)
	}
	cfg.Logger.Warn("INSECURE: --insecure is set: no TLS, no authentication; anyone who reaches " + cfg.Listen + " can read and change the configuration and impersonate data planes. For tests and local demos only.")
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Security) loadServerCert() error {
	var err error
	if s.cfg.TLSCert != "" || s.cfg.TLSKey != "" {
		if s.cfg.TLSCert == "" || s.cfg.TLSKey == "" {
			return errors.New("--tls-cert and --tls-key go together")
		}
		s.serverCert, err = tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
	} else if s.serverCert, err = s.files.ServerCert(s.serverHosts(), time.Now()); err != nil {
		return err
	}
	// The last certificate of the chain is the one join tokens pin: the
	// cluster CA, or the top of a chain brought with --tls-cert.
	last, err := x509.ParseCertificate(s.serverCert.Certificate[len(s.serverCert.Certificate)-1])
	if err != nil {
		return fmt.Errorf("server certificate chain: %w", err)
	}
	s.pin = identity.Pin(last)
	s.caBundle = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: last.Raw})
	s.clientCAs = s.files.CA.Pool()
	if s.cfg.ClientCA != "" {
		data, err := os.ReadFile(s.cfg.ClientCA)
		if err != nil {
			return fmt.Errorf("--client-ca: %w", err)
		}
		if !s.clientCAs.AppendCertsFromPEM(data) {
			return fmt.Errorf("--client-ca %s: no PEM certificate in it", s.cfg.ClientCA)
		}
	}
	return nil
}

func (s *Security) serverHosts() []string {
	hosts := pki.LocalHosts()
	if host, _, err := net.SplitHostPort(s.cfg.Listen); err == nil && host != "" && host != "0.0.0.0" && host != "::" {
		hosts = append(hosts, host)
	}
	return append(hosts, s.cfg.SANs...)
}

// Insecure reports --insecure.
func (s *Security) Insecure() bool { return s.cfg.Insecure }

// Pin is the CA pin join tokens carry; "" when insecure.
func (s *Security) Pin() string { return s.pin }

// CABundle is PEM of the CA that verifies this control plane.
func (s *Security) CABundle() []byte { return s.caBundle }

// Files is the PKI; nil when insecure.
func (s *Security) Files() *pki.Files { return s.files }

// EtcdHosts are the names the embedded etcd's certificate covers.
func EtcdHosts(addrs ...string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	for _, a := range addrs {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// Credentials are the gRPC listener's transport credentials: TLS that asks
// for (and verifies, when given) a client certificate, or plaintext.
func (s *Security) Credentials() credentials.TransportCredentials {
	if s.cfg.Insecure {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{s.serverCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    s.clientCAs,
	})
}

// Store is what the running security needs from the configuration store.
type Store interface {
	auth.JoinTokenLister
	audit.Store
	WatchJoinTokens(ctx context.Context, publish func(map[string]*meridianv1.StoredJoinToken)) error
	WatchRevocations(ctx context.Context, revoked func(nodeID string)) error
	PruneDataplanes(ctx context.Context, before time.Time) ([]string, error)
	CheckCertificate(ctx context.Context, nodeID, serial string) (*meridianv1.Identity, error)
	Revocation(ctx context.Context, nodeID string) (*meridianv1.Revocation, error)
}

// Running is the security of a serving control plane.
type Running struct {
	sec        *Security
	store      Store
	authn      *auth.Authenticator
	audit      *audit.Log
	joinTokens *auth.JoinTokens
}

// Start loads the admin tokens (writing the first ones and the gatewayctl
// config, which names addr, on a first secure start) and builds the
// authenticator and the audit log over st.
func (s *Security) Start(st Store, m *metrics.Metrics, addr string) (*Running, error) {
	r := &Running{sec: s, store: st}
	r.audit = audit.New(st, audit.Options{Retention: s.cfg.AuditRetention, Replica: s.cfg.ReplicaID, Logger: s.cfg.Logger})
	denied := func(d auth.Denial) {
		m.CountRefused(d.Method, d.Err)
		r.audit.Denied(d)
	}
	opts := auth.Options{Insecure: s.cfg.Insecure, OnDenied: denied}
	if !s.cfg.Insecure {
		tokens, err := s.adminTokens(addr)
		if err != nil {
			return nil, err
		}
		s.tokens = tokens
		r.joinTokens = auth.NewJoinTokens(st, s.pin)
		opts.Tokens, opts.JoinTokens = tokens, r.joinTokens
	}
	r.authn = auth.New(opts)
	return r, nil
}

// ServerOptions authenticate every call before its message is read, give
// apply slots back, and audit mutating and refused calls.
func (r *Running) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(r.sec.Credentials()),
		grpc.InTapHandle(r.authn.Tap),
		grpc.StatsHandler(r.authn.StatsHandler()),
		grpc.ChainUnaryInterceptor(r.audit.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(r.audit.StreamInterceptor()),
	}
}

// Certificates checks data-plane certificates for the discovery stream;
// nil when insecure.
func (r *Running) Certificates() *CertificateChecker {
	if r.sec.cfg.Insecure {
		return nil
	}
	return &CertificateChecker{store: r.store, ca: r.sec.files.CA.Certificate()}
}

// Run keeps the security state current until ctx is done: the tokens file,
// the join-token cache, revocations (revoked is called for each), the audit
// log and the pruning of long-gone data planes.
func (r *Running) Run(ctx context.Context, revoked func(nodeID string)) {
	var wg sync.WaitGroup
	wg.Go(func() { r.audit.Run(ctx) })
	wg.Go(func() { r.pruneDataplanes(ctx) })
	if !r.sec.cfg.Insecure {
		wg.Go(func() { r.sec.tokens.Watch(ctx, tokenReload) })
		wg.Go(func() { r.store.WatchJoinTokens(ctx, r.joinTokens.Set) })
		wg.Go(func() { r.store.WatchRevocations(ctx, revoked) })
	}
	wg.Wait()
}

// tokenReload is how often the tokens file is checked for changes.
const tokenReload = time.Second

func (r *Running) pruneDataplanes(ctx context.Context) {
	retention := r.sec.cfg.DataplaneRetention
	if retention <= 0 {
		return
	}
	t := time.NewTicker(min(retention/10, 10*time.Minute))
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ids, err := r.store.PruneDataplanes(pctx, time.Now().Add(-retention))
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			r.sec.cfg.Logger.Warn("pruning data-plane status", "err", err)
		case len(ids) > 0:
			r.sec.cfg.Logger.Info("pruned the status of data planes gone longer than --dataplane-retention", "nodes", ids, "retention", retention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CertificateChecker implements discovery.CertificateChecker.
type CertificateChecker struct {
	store Store
	ca    *x509.Certificate
}

// CheckDataplane accepts a certificate the cluster CA issued only while it
// is the node's current one (so revoked or superseded certificates are
// refused); one from a --client-ca, which the control plane does not
// track, unless it was issued before the node's revocation.
func (c *CertificateChecker) CheckDataplane(ctx context.Context, nodeID string, cert *x509.Certificate) (map[string]string, error) {
	if cert.CheckSignatureFrom(c.ca) != nil {
		rev, err := c.store.Revocation(ctx, nodeID)
		if err != nil {
			return nil, err
		}
		if rev != nil && cert.NotBefore.Before(rev.GetRevokedAt().AsTime()) {
			return nil, fmt.Errorf("revoked at %s; this certificate was issued before", rev.GetRevokedAt().AsTime().UTC().Format(time.RFC3339))
		}
		return nil, nil
	}
	id, err := c.store.CheckCertificate(ctx, nodeID, cert.SerialNumber.String())
	if err != nil {
		return nil, err
	}
	return id.GetLabels(), nil
}
