// Package etcdclient builds the control plane's etcd client configuration:
// TLS from PEM files, credentials, and message limits large enough for the
// biggest apply.
package etcdclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/meridian-gw/meridian/proto/config"
)

// MaxMsgSize is the largest message the client sends or receives: an
// apply's transaction holds the changed resources and a history record
// with the whole configuration, each up to config.MaxApplyBytes, plus keys
// and framing. The client's 2 MiB default would cap applies far below
// config.MaxApplyBytes.
const MaxMsgSize = 2*config.MaxApplyBytes + 1<<20

// Files are PEM files for TLS to etcd. Any may be empty: CA alone verifies
// the server, Cert and Key (both or neither) add a client certificate,
// and none at all dials plaintext (or, for https:// endpoints, TLS
// verified by the system roots).
type Files struct {
	// CA verifies etcd's certificate; empty uses the system roots.
	CA string
	// Cert and Key are the client certificate and its key.
	Cert, Key string
}

// Config returns a client configuration for endpoints. username, when
// set, authenticates with password too.
func Config(endpoints []string, files Files, username, password string) (clientv3.Config, error) {
	if len(endpoints) == 0 {
		return clientv3.Config{}, errors.New("no etcd endpoints")
	}
	if username == "" && password != "" {
		return clientv3.Config{}, errors.New("etcd password given without a username")
	}
	tc, err := tlsConfig(files)
	if err != nil {
		return clientv3.Config{}, err
	}
	return clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		// The store reports what matters; the client's own retries are noise.
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: MaxMsgSize,
		MaxCallRecvMsgSize: MaxMsgSize,
		TLS:                tc,
		Username:           username,
		Password:           password,
	}, nil
}

// tlsConfig returns the TLS configuration files ask for; nil when they
// are all empty.
func tlsConfig(files Files) (*tls.Config, error) {
	if files == (Files{}) {
		return nil, nil
	}
	if (files.Cert == "") != (files.Key == "") {
		return nil, errors.New("an etcd client certificate needs both --etcd-cert and --etcd-key")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if files.CA != "" {
		pool, err := loadCAs(files.CA)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if files.Cert != "" {
		cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// loadCAs reads a PEM bundle of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("etcd CA %s: no PEM certificates", path)
	}
	return pool, nil
}
