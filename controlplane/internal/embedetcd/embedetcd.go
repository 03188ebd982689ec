// Package embedetcd runs a single-member etcd inside the control-plane
// process, so one machine needs no separate etcd to get started.
package embedetcd

import (
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
)

// Config says where the embedded etcd keeps its data and listens.
type Config struct {
	// Dir holds etcd's data (the control plane passes <data-dir>/etcd).
	Dir string
	// ClientAddr is host:port (or an http URL) for etcd clients.
	// Port 0 is not supported by etcd: pick a real port.
	ClientAddr string
	// PeerAddr is host:port (or an http URL) for raft peer traffic.
	PeerAddr string
	// StartTimeout bounds how long Start waits for the member to serve.
	// Zero means one minute.
	StartTimeout time.Duration
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
	clientURL, err := parseURL(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client address: %w", err)
	}
	peerURL, err := parseURL(cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd peer address: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = "meridian"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	ec.InitialCluster = ec.Name + "=" + peerURL.String()
	// etcd's own logs are noise for a gateway operator; errors still go to
	// a file next to the data so they can be found when something breaks.
	ec.LogLevel = "error"
	ec.LogOutputs = []string{filepath.Join(cfg.Dir, "etcd.log")}
	// One apply writes every changed resource, the version and a history
	// record in a single transaction; the defaults (128 operations,
	// 1.5 MiB) would cap a configuration at about a hundred resources.
	ec.MaxTxnOps = 16384
	ec.MaxRequestBytes = 16 << 20
	// Status updates and applies create revisions continuously; history
	// lives in its own keys, so old revisions are only a cost.
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "1h"

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	timeout := cfg.StartTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after %s", timeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{etcd: e, endpoints: []string{clientURL.Host}}, nil
}

// Endpoints returns the client endpoints (host:port) to dial.
func (s *Server) Endpoints() []string { return s.endpoints }

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops etcd and waits for it to exit. Closing twice is harmless.
func (s *Server) Close() { s.closeOnce.Do(s.etcd.Close) }

func parseURL(addr string) (*url.URL, error) {
	if addr == "" {
		return nil, errors.New("empty address")
	}
	raw := addr
	if !strings.Contains(addr, "://") {
		raw = "http://" + addr
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%q: only http is supported for the embedded etcd", addr)
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
	return &url.URL{Scheme: "http", Host: u.Host}, nil
}
