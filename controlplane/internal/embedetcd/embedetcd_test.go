package embedetcd_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/meridian-gw/meridian/controlplane/internal/embedetcd"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdclient"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/proto/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartServesClients(t *testing.T) {
	c := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get = %v, want v", resp.Kvs)
	}
}

func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	cfg := embedetcd.Config{Dir: dir, ClientAddr: etcdtest.FreeAddr(t), PeerAddr: etcdtest.FreeAddr(t)}
	ctx := context.Background()
	for i, want := range []string{"", "v"} {
		srv, err := embedetcd.Start(ctx, cfg)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
		if err != nil {
			srv.Close()
			t.Fatalf("client: %v", err)
		}
		resp, err := c.Get(ctx, "k")
		if err == nil && want == "" {
			_, err = c.Put(ctx, "k", "v")
		}
		c.Close()
		srv.Close()
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Fatalf("run %d: k = %q, want %q", i, got, want)
		}
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	files := writeTestPKI(t).server
	tests := []struct {
		name string
		cfg  embedetcd.Config
		want string
	}{
		{"no dir", embedetcd.Config{ClientAddr: "127.0.0.1:1", PeerAddr: "127.0.0.1:2"}, "empty data directory"},
		{"port zero", embedetcd.Config{ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:2"}, "port 0"},
		{"no port", embedetcd.Config{ClientAddr: "127.0.0.1:1", PeerAddr: "localhost"}, "missing port"},
		{"https without TLS", embedetcd.Config{ClientAddr: "https://127.0.0.1:1", PeerAddr: "127.0.0.1:2"}, "scheme must be http"},
		{"http with TLS", embedetcd.Config{ClientAddr: "http://127.0.0.1:1", PeerAddr: "127.0.0.1:2", TLS: files}, "scheme must be https"},
		{"TLS without key", embedetcd.Config{ClientAddr: "127.0.0.1:1", PeerAddr: "127.0.0.1:2", TLS: &embedetcd.TLSFiles{CAFile: files.CAFile, CertFile: files.CertFile}}, "a CA, a certificate and a key"},
		{"any client address", embedetcd.Config{ClientAddr: "0.0.0.0:1", PeerAddr: "127.0.0.1:2"}, "loopback only"},
		{"remote peer address", embedetcd.Config{ClientAddr: "127.0.0.1:1", PeerAddr: "https://192.0.2.7:2", TLS: files}, "loopback only"},
		{"any IPv6 address", embedetcd.Config{ClientAddr: "[::]:1", PeerAddr: "127.0.0.1:2"}, "loopback only"},
		{"host name", embedetcd.Config{ClientAddr: "etcd.example.com:1", PeerAddr: "127.0.0.1:2"}, "loopback only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name != "no dir" {
				tt.cfg.Dir = t.TempDir()
			}
			srv, err := embedetcd.Start(context.Background(), tt.cfg)
			if err == nil {
				srv.Close()
				t.Fatal("Start succeeded, want error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestTLSRequiresTrustedClientCert serves etcd over TLS and dials it with
// every kind of client: only one with a certificate from etcd's CA that
// also verifies etcd's certificate gets in.
func TestTLSRequiresTrustedClientCert(t *testing.T) {
	pki := writeTestPKI(t)
	srv, _ := startTLS(t, pki.server)
	tests := []struct {
		name      string
		endpoints []string
		files     etcdclient.Files
		ok        bool
	}{
		{"trusted client cert", srv.Endpoints(), etcdclient.Files{CA: pki.server.CAFile, Cert: pki.client.cert, Key: pki.client.key}, true},
		{"https URL endpoint", []string{"https://" + srv.Endpoints()[0]}, etcdclient.Files{CA: pki.server.CAFile, Cert: pki.client.cert, Key: pki.client.key}, true},
		{"no client cert", srv.Endpoints(), etcdclient.Files{CA: pki.server.CAFile}, false},
		{"plaintext", srv.Endpoints(), etcdclient.Files{}, false},
		{"plaintext http URL", []string{"http://" + srv.Endpoints()[0]}, etcdclient.Files{}, false},
		{"client cert from another CA", srv.Endpoints(), etcdclient.Files{CA: pki.server.CAFile, Cert: pki.stranger.cert, Key: pki.stranger.key}, false},
		// The client verifies etcd too: system roots do not know its CA.
		{"server not verified", srv.Endpoints(), etcdclient.Files{Cert: pki.client.cert, Key: pki.client.key}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := etcdclient.Config(tt.endpoints, tt.files, "", "")
			if err != nil {
				t.Fatal(err)
			}
			cfg.DialTimeout = 2 * time.Second
			err = putGet(cfg, "k-"+tt.name, "v", 2*time.Second)
			if tt.ok && err != nil {
				t.Fatalf("put/get: %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("put/get succeeded, want it refused")
			}
		})
	}
}

// TestTLSHandshakeRejectsUntrustedClients shows why the refused clients
// above fail: etcd's client and peer listeners themselves reject a client
// without a certificate or with one from another CA.
func TestTLSHandshakeRejectsUntrustedClients(t *testing.T) {
	pki := writeTestPKI(t)
	_, cfg := startTLS(t, pki.server)
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(pki.server.CAFile)
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("read CA: %v", err)
	}
	tests := []struct {
		name   string
		addr   string
		client *certFiles
		want   string // "" = accepted
	}{
		{"client listener trusted", cfg.ClientAddr, &pki.client, ""},
		{"client listener no certificate", cfg.ClientAddr, nil, "certificate required"},
		{"client listener another CA", cfg.ClientAddr, &pki.stranger, "unknown certificate authority"},
		{"peer listener trusted", cfg.PeerAddr, &pki.client, ""},
		{"peer listener no certificate", cfg.PeerAddr, nil, "certificate required"},
		{"peer listener another CA", cfg.PeerAddr, &pki.stranger, "unknown certificate authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
			if tt.client != nil {
				cert, err := tls.LoadX509KeyPair(tt.client.cert, tt.client.key)
				if err != nil {
					t.Fatal(err)
				}
				// Sent even when the server's list of acceptable CAs
				// does not name its issuer, so the server must judge it.
				tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			}
			err := handshake(tt.addr, tc)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("handshake: %v, want accepted", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("handshake: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// handshake dials addr with tc and reads: with TLS 1.3 the server's
// verdict on the client certificate arrives after the client's side of
// the handshake. An accepted connection just has nothing to read.
func handshake(addr string, tc *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, tc)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

// TestLargeApplyFits writes a value larger than config.MaxApplyBytes in one
// request: both the server's request limit and the client's message
// limits must allow an apply's whole transaction.
func TestLargeApplyFits(t *testing.T) {
	srv := etcdtest.StartServer(t)
	cfg, err := etcdclient.Config(srv.Endpoints(), etcdclient.Files{}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	value := string(bytes.Repeat([]byte("x"), config.MaxApplyBytes+1<<20))
	if err := putGet(cfg, "big", value, 30*time.Second); err != nil {
		t.Fatalf("put/get of %d bytes: %v", len(value), err)
	}
}

// putGet writes key and reads it back through a new client from cfg
// within timeout.
func putGet(cfg clientv3.Config, key, value string, timeout time.Duration) error {
	c, err := clientv3.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := c.Put(ctx, key, value); err != nil {
		return err
	}
	resp, err := c.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != value {
		return errors.New("read back a different value")
	}
	return nil
}

// startTLS runs etcd over TLS on free loopback ports until the test ends.
// It returns the server and the config it runs with.
func startTLS(t *testing.T, files *embedetcd.TLSFiles) (*embedetcd.Server, embedetcd.Config) {
	t.Helper()
	var lastErr error
	// A free port can be taken between probing and etcd binding it; retry.
	for range 5 {
		cfg := embedetcd.Config{
			Dir:        t.TempDir(),
			ClientAddr: etcdtest.FreeAddr(t),
			PeerAddr:   etcdtest.FreeAddr(t),
			TLS:        files,
		}
		srv, err := embedetcd.Start(context.Background(), cfg)
		if err == nil {
			t.Cleanup(srv.Close)
			return srv, cfg
		}
		lastErr = err
	}
	t.Fatalf("start embedded etcd with TLS: %v", lastErr)
	return nil, embedetcd.Config{}
}

// testPKI is etcd's CA and certificates, as files.
type testPKI struct {
	// server: etcd's CA and member certificate.
	server *embedetcd.TLSFiles
	// client is signed by etcd's CA; stranger by another CA.
	client, stranger certFiles
}

type certFiles struct{ cert, key string }

func writeTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, other := newTestCA(t, "etcd CA"), newTestCA(t, "other CA")
	caFile := filepath.Join(dir, "ca.crt")
	writePEM(t, caFile, "CERTIFICATE", ca.cert.Raw)
	server := ca.issue(t, dir, "server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcd"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
	})
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "meridian-controlplane"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return testPKI{
		server:   &embedetcd.TLSFiles{CAFile: caFile, CertFile: server.cert, KeyFile: server.key},
		client:   ca.issue(t, dir, "client", client),
		stranger: other.issue(t, dir, "stranger", client),
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// issue signs tmpl (subject, usages and names) and writes name.crt and
// name.key in dir.
func (ca *testCA) issue(t *testing.T, dir, name string, tmpl *x509.Certificate) certFiles {
	t.Helper()
	key := newKey(t)
	leaf := *tmpl
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	leaf.SerialNumber = serial
	leaf.NotBefore, leaf.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	leaf.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, &leaf, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	files := certFiles{cert: filepath.Join(dir, name+".crt"), key: filepath.Join(dir, name+".key")}
	writePEM(t, files.cert, "CERTIFICATE", der)
	writePEM(t, files.key, "PRIVATE KEY", keyDER)
	return files
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
