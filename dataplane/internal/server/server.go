// Package server builds the data plane's traffic http.Server: the
// protocols it speaks, its protections against slow or greedy clients
// (timeouts, header size, a connection cap), its TLS certificates, and
// the readiness gate that turns /readyz off while the process drains.
package server

import (
	"crypto/tls"
	"fmt"
	"log"
	"net/http"
	"sync/atomic"
	"time"
)

// Defaults for Config fields, also the dataplane flags' defaults.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultDrainTimeout      = 30 * time.Second
	// DefaultSendTimeout is the --send-timeout default, nginx's send_timeout.
	DefaultSendTimeout = 60 * time.Second
)

// Config is the traffic server's settings. Zero durations mean no limit,
// as in net/http.
type Config struct {
	// ReadHeaderTimeout bounds reading a request's headers: the defence
	// against slowloris clients.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included. It is
	// off by default because it would cut long uploads and client
	// streams (gRPC, chunked bodies) that are legitimate.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response. It is off by default because
	// it would cut server-sent events and long downloads.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds request line and headers; larger gets 431.
	MaxHeaderBytes int
	// Certificates are served on TLS listeners, chosen by SNI.
	Certificates []tls.Certificate
	// ErrorLog receives net/http's own messages (TLS handshake errors...).
	ErrorLog *log.Logger
	// Connections, when set, tracks the server's connections for its
	// cap; the listeners given to Serve and ServeTLS must be wrapped with
	// its Listener.
	Connections *ConnLimiter
}

// New returns the traffic server. On a plaintext listener (Serve) it speaks
// HTTP/1.1 and h2c with prior knowledge (gRPC without TLS); on a TLS
// listener (ServeTLS with empty file names) it negotiates h2 or HTTP/1.1
// with ALPN.
func New(h http.Handler, c Config) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		Protocols:         &protocols,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    c.MaxHeaderBytes,
		ErrorLog:          c.ErrorLog,
	}
	if c.Connections != nil {
		srv.ConnState = c.Connections.ConnState
	}
	if len(c.Certificates) > 0 {
		srv.TLSConfig = TLSConfig(c.Certificates)
	}
	return srv
}

// TLSConfig returns the server TLS configuration for certs. crypto/tls
// picks the first certificate whose names cover the client's SNI, and the
// first certificate when none does (or the client sent no SNI).
// http.Server adds the ALPN protocols (h2, http/1.1).
func TLSConfig(certs []tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: certs,
	}
}

// LoadCertificates loads certificate and key files given as pairs: the
// i-th certificate goes with the i-th key.
func LoadCertificates(certFiles, keyFiles []string) ([]tls.Certificate, error) {
	if len(certFiles) != len(keyFiles) {
		return nil, fmt.Errorf("%d certificate files but %d key files; give them in pairs", len(certFiles), len(keyFiles))
	}
	certs := make([]tls.Certificate, 0, len(certFiles))
	for i, cf := range certFiles {
		cert, err := tls.LoadX509KeyPair(cf, keyFiles[i])
		if err != nil {
			return nil, fmt.Errorf("certificate %q with key %q: %w", cf, keyFiles[i], err)
		}
		certs = append(certs, cert)
	}
	return certs, nil
}

// Readiness turns /readyz off once draining starts, so a load balancer
// stops sending new traffic while in-flight requests finish.
type Readiness struct {
	draining atomic.Bool
}

// StartDrain makes /readyz answer 503 from now on.
func (r *Readiness) StartDrain() { r.draining.Store(true) }

// Draining reports whether StartDrain was called.
func (r *Readiness) Draining() bool { return r.draining.Load() }

var bodyDraining = []byte(`{"status":"draining"}` + "\n")

// Wrap returns admin with GET /readyz answering 503 while draining; every
// other endpoint, and /readyz before draining, is admin's.
func (r *Readiness) Wrap(admin http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/readyz" && r.draining.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write(bodyDraining) //nolint:errcheck // the client may be gone
			return
		}
		admin.ServeHTTP(w, req)
	})
}
