// Package embedetcd runs a single-member etcd inside the control-plane
// process, so one machine needs no separate etcd to get started.
package embedetcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/meridian-gw/meridian/proto/config"
)

// MaxRequestBytes is the largest request the embedded etcd accepts: an
// apply's transaction holds the changed resources and a history record
// with the whole configuration, each up to config.MaxApplyBytes, plus
// keys and framing.
const MaxRequestBytes = 2*config.MaxApplyBytes + 1<<20

// errNotLoopback is why a non-loopback listen address is refused.
var errNotLoopback = errors.New("embedded etcd listens on loopback only; run an external etcd cluster for remote access")

// Config says where the embedded etcd keeps its data and listens.
type Config struct {
	// Dir holds etcd's data (the control plane passes <data-dir>/etcd).
	Dir string
	// ClientAddr is host:port (or an http, with TLS https, URL) for etcd
	// clients. Port 0 is not supported by etcd: pick a real port.
	ClientAddr string
	// PeerAddr is host:port (or a URL, as ClientAddr) for raft peer
	// traffic.
	PeerAddr string
	// TLS, when set, serves both listeners over TLS and requires client
	// certificates signed by its CA. Nil serves plaintext.
	TLS *TLSFiles
	// AllowNonLoopback permits listen addresses that are not loopback.
	// Without it Start refuses them: a single embedded member is not
	// meant to be reached from other machines.
	AllowNonLoopback bool
	// StartTimeout bounds how long Start waits for the member to serve.
	// Zero means one minute.
	StartTimeout time.Duration
}

// TLSFiles are the PEM files the embedded etcd serves TLS with.
type TLSFiles struct {
	// CAFile verifies client (and peer) certificates.
	CAFile string
	// CertFile and KeyFile are the member's certificate, with both the
	// ServerAuth and ClientAuth usages: it serves the client and the peer
	// listener, and etcd presents it when it dials itself.
	CertFile, KeyFile string
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	closeOnce sync.Once
}

// Start starts etcd and waits until it serves clients.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded etcd: empty data directory")
	}
	if err := checkTLS(cfg.TLS); err != nil {
		return nil, err
	}
	clientURL, err := listenURL(cfg, cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client address: %w", err)
	}
	peerURL, err := listenURL(cfg, cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd peer address: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	e, err := embed.StartEtcd(etcdConfig(cfg, clientURL, peerURL))
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	if err := waitReady(ctx, e, cmp.Or(cfg.StartTimeout, time.Minute)); err != nil {
		e.Close()
		return nil, err
	}
	return &Server{etcd: e, endpoints: []string{clientURL.Host}}, nil
}

// etcdConfig is the member's configuration: one member named meridian,
// listening and advertising on the given URLs.
func etcdConfig(cfg Config, clientURL, peerURL *url.URL) *embed.Config {
	ec := embed.NewConfig()
	ec.Name = "meridian"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	ec.InitialCluster = ec.Name + "=" + peerURL.String()
	if t := cfg.TLS; t != nil {
		ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = t.CertFile, t.KeyFile
		ec.ClientTLSInfo.TrustedCAFile, ec.ClientTLSInfo.ClientCertAuth = t.CAFile, true
		ec.PeerTLSInfo.CertFile, ec.PeerTLSInfo.KeyFile = t.CertFile, t.KeyFile
		ec.PeerTLSInfo.TrustedCAFile, ec.PeerTLSInfo.ClientCertAuth = t.CAFile, true
	}
	// etcd's own logs are noise for a gateway operator; errors still go to
	// a file next to the data so they can be found when something breaks.
	ec.LogLevel = "error"
	ec.LogOutputs = []string{filepath.Join(cfg.Dir, "etcd.log")}
	// One apply writes every changed resource, the version and a history
	// record in a single transaction; the defaults (128 operations,
	// 1.5 MiB) would cap a configuration at about a hundred resources.
	ec.MaxTxnOps = 16384
	ec.MaxRequestBytes = MaxRequestBytes
	// Status updates and applies create revisions continuously; history
	// lives in its own keys, so old revisions are only a cost.
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "1h"
	return ec
}

// waitReady waits until e serves clients, fails, timeout passes or ctx is
// done.
func waitReady(ctx context.Context, e *embed.Etcd, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("embedded etcd: %w", err)
	case <-timer.C:
		return fmt.Errorf("embedded etcd not ready after %s", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Endpoints returns the client endpoints (host:port) to dial.
func (s *Server) Endpoints() []string { return s.endpoints }

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops etcd and waits for it to exit. Closing twice is harmless.
func (s *Server) Close() { s.closeOnce.Do(s.etcd.Close) }

// checkTLS reports a TLS configuration with a file missing, so the error
// names it rather than etcd's.
func checkTLS(t *TLSFiles) error {
	if t == nil {
		return nil
	}
	if t.CAFile == "" || t.CertFile == "" || t.KeyFile == "" {
		return errors.New("embedded etcd TLS needs a CA, a certificate and a key file")
	}
	return nil
}

// listenURL parses addr as a listen URL for cfg: https with TLS, http
// without, on a loopback host unless cfg allows others.
func listenURL(cfg Config, addr string) (*url.URL, error) {
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
	}
	u, err := parseURL(addr, scheme)
	if err != nil {
		return nil, err
	}
	if !cfg.AllowNonLoopback && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("%q: %w", addr, errNotLoopback)
	}
	return u, nil
}

// parseURL parses host:port or a URL whose scheme must be scheme.
func parseURL(addr, scheme string) (*url.URL, error) {
	if addr == "" {
		return nil, errors.New("empty address")
	}
	raw := addr
	if !strings.Contains(addr, "://") {
		raw = scheme + "://" + addr
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != scheme {
		// The scheme follows from whether TLS files are configured.
		return nil, fmt.Errorf("%q: scheme must be %s", addr, scheme)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", addr, err)
	}
	if port == "0" {
		return nil, fmt.Errorf("%q: port 0 is not supported, pick a port", addr)
	}
	if host == "" {
		return nil, fmt.Errorf("%q: missing host", addr)
	}
	return &url.URL{Scheme: scheme, Host: u.Host}, nil
}

// isLoopback reports whether host names only this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
