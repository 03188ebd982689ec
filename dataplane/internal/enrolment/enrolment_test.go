package enrolment

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitTimeout is generous: the test machine is slow and shared.
const waitTimeout = 30 * time.Second

// testCA is a cluster CA made for one test.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pemCert(der)}
}

// sign issues a certificate for pub from tmpl's fields.
func (ca *testCA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	var err error
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128)); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return pemCert(der), nil
}

// client issues a data-plane client certificate as the control plane does.
func (ca *testCA) client(pub crypto.PublicKey, nodeID string, notBefore, notAfter time.Time) ([]byte, error) {
	return ca.sign(&x509.Certificate{
		NotBefore: notBefore, NotAfter: notAfter, URIs: []*url.URL{identity.URI(nodeID)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, pub)
}

// identityFiles is a whole client identity from ca, as PEM.
func (ca *testCA) identityFiles(t *testing.T, nodeID string, notBefore, notAfter time.Time) material {
	key := newKey(t)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	chain, err := ca.client(key.Public(), nodeID, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return material{key: keyPEM, chain: chain, ca: ca.pem}
}

// fakeCP is an IdentityService that signs requests with short lifetimes
// and records what it was sent.
type fakeCP struct {
	meridianv1.UnimplementedIdentityServiceServer
	ca       *testCA
	token    string
	lifetime time.Duration

	mu          sync.Mutex
	auth        []string // authorization headers of Enrol calls
	enrols      []string // node ids enrolled
	renewNodes  []string // node ids of verified Renew callers
	failRenews  int      // Renew calls still to answer Unavailable
	renewFailed int
}

func (f *fakeCP) Enrol(ctx context.Context, req *meridianv1.EnrolRequest) (*meridianv1.EnrolResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.auth = append(f.auth, md.Get("authorization")...)
	f.mu.Unlock()
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+f.token {
		return nil, status.Error(codes.Unauthenticated, "join token unknown")
	}
	chain, notAfter, err := f.issue(req.GetCsr(), req.GetNodeId())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.enrols = append(f.enrols, req.GetNodeId())
	f.mu.Unlock()
	return &meridianv1.EnrolResponse{CertificateChain: chain, CaBundle: f.ca.pem, NotAfter: timestamppb.New(notAfter)}, nil
}

func (f *fakeCP) Renew(ctx context.Context, req *meridianv1.RenewRequest) (*meridianv1.RenewResponse, error) {
	p, _ := peer.FromContext(ctx)
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	nodeID, err := identity.NodeID(info.State.VerifiedChains[0][0])
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	f.mu.Lock()
	fail := f.failRenews > 0
	if fail {
		f.failRenews--
		f.renewFailed++
	}
	f.mu.Unlock()
	if fail {
		return nil, status.Error(codes.Unavailable, "try again")
	}
	chain, notAfter, err := f.issue(req.GetCsr(), nodeID)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.renewNodes = append(f.renewNodes, nodeID)
	f.mu.Unlock()
	return &meridianv1.RenewResponse{CertificateChain: chain, CaBundle: f.ca.pem, NotAfter: timestamppb.New(notAfter)}, nil
}

func (f *fakeCP) issue(der []byte, nodeID string) ([]byte, time.Time, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil || csr.CheckSignature() != nil {
		return nil, time.Time{}, status.Error(codes.InvalidArgument, "bad certificate request")
	}
	now := time.Now()
	chain, err := f.ca.client(csr.PublicKey, nodeID, now, now.Add(f.lifetime))
	if err != nil {
		return nil, time.Time{}, status.Error(codes.Internal, err.Error())
	}
	return chain, now.Add(f.lifetime), nil
}

func (f *fakeCP) seen() (auth, enrols, renews []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...), append([]string(nil), f.enrols...), append([]string(nil), f.renewNodes...)
}

// serverTLS is the control plane's side: [server cert, CA] as its chain,
// client certificates verified when given.
func serverTLS(t *testing.T, ca *testCA) *tls.Config {
	key := newKey(t)
	leaf, err := ca.sign(&x509.Certificate{
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(leaf)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{block.Bytes, ca.cert.Raw}, PrivateKey: key}},
		ClientCAs:    pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12,
	}
}

// serve runs f on ln (a fresh loopback listener when nil) until the test
// ends, and returns its address.
func serve(t *testing.T, f *fakeCP, ln net.Listener) string {
	t.Helper()
	if ln == nil {
		ln = listen(t)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS(t, f.ca))))
	meridianv1.RegisterIdentityServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ln.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func deadAddr(t *testing.T) string {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func newToken(pinned *testCA) identity.JoinToken {
	return identity.JoinToken{ID: "abcdefgh", Secret: strings.Repeat("s", identity.TokenSecretLen), Pin: identity.Pin(pinned.cert)}
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testConfig fills in what every test needs; the log must never show a
// token's secret.
func testConfig(t *testing.T, cfg Config) (Config, *logBuffer) {
	logs := &logBuffer{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "identity")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "n1"
	}
	cfg.RetryMin, cfg.RefusedRetry, cfg.ReloadEvery, cfg.CallTimeout = 50*time.Millisecond, 100*time.Millisecond, 50*time.Millisecond, 2*time.Second
	t.Cleanup(func() {
		if cfg.Token != nil && strings.Contains(logs.String(), cfg.Token.Secret) {
			t.Errorf("log shows the token's secret:\n%s", logs)
		}
	})
	return cfg, logs
}

// start runs m until the test ends, and checks Run returns.
func start(t *testing.T, m *Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(waitTimeout):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitReady(t *testing.T, m *Manager, logs *logBuffer) {
	t.Helper()
	select {
	case <-m.Ready():
	case <-time.After(waitTimeout):
		t.Fatalf("no credentials after %v; log:\n%s", waitTimeout, logs)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// current is the certificate the next handshake presents.
func current(t *testing.T, m *Manager, addr string) *x509.Certificate {
	t.Helper()
	return presented(t, m.TLSConfig(addr))
}

// presented is the certificate a handshake with c presents now.
func presented(t *testing.T, c *tls.Config) *x509.Certificate {
	t.Helper()
	cert, err := c.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || len(cert.Certificate) == 0 {
		t.Fatalf("GetClientCertificate = %v, %v", cert, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// renewDirect calls Renew with m's TLS configuration, which proves it
// verifies the control plane and presents a certificate it accepts.
func renewDirect(t *testing.T, m *Manager, addr string) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(m.TransportCredentials(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	csr, _, err := newRequest("n1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err = meridianv1.NewIdentityServiceClient(conn).Renew(ctx, &meridianv1.RenewRequest{Csr: csr})
	return err
}

func TestEnrol(t *testing.T) {
	ca := newCA(t)
	tok := newToken(ca)
	f := &fakeCP{ca: ca, token: tok.String(), lifetime: time.Hour}
	addr := serve(t, f, nil)
	// The first address is down: the next one is tried.
	cfg, logs := testConfig(t, Config{Addresses: []string{deadAddr(t), addr}, Token: &tok})
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Ready():
		t.Fatal("ready before enrolment")
	default:
	}
	start(t, m)
	waitReady(t, m, logs)

	auth, enrols, _ := f.seen()
	if len(auth) != 1 || auth[0] != "Bearer "+tok.String() || len(enrols) != 1 || enrols[0] != "n1" {
		t.Errorf("control plane saw authorization %d, enrolments %v", len(auth), enrols)
	}
	if m.NodeID() != "n1" || time.Until(m.NotAfter()) < 50*time.Minute {
		t.Errorf("NodeID %q, NotAfter %v", m.NodeID(), m.NotAfter())
	}
	fi, err := os.Stat(filepath.Join(cfg.Dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v", fi, err)
	}
	stored, err := loadDir(cfg.Dir)
	if err != nil || stored.leaf().SerialNumber.Cmp(current(t, m, addr).SerialNumber) != 0 {
		t.Errorf("stored identity %v differs from the current one", err)
	}
	if err := renewDirect(t, m, addr); err != nil {
		t.Errorf("mTLS call with TLSConfig: %v", err)
	}
	if strings.Contains(logs.String(), tok.Secret) || !strings.Contains(logs.String(), "enrolled with the control plane") {
		t.Errorf("log:\n%s", logs)
	}
}

func TestEnrolRefused(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	tests := []struct {
		name     string
		token    identity.JoinToken
		wantLog  string
		wantAuth bool // whether the control plane may see the token
	}{
		// The pin check runs in the handshake, before any header is sent.
		{name: "wrong pin", token: newToken(other), wantLog: "does not include the CA the join token pins", wantAuth: false},
		{name: "unknown token", token: identity.JoinToken{ID: "zzzzzzzz", Secret: strings.Repeat("x", identity.TokenSecretLen), Pin: identity.Pin(ca.cert)},
			wantLog: "join token unknown", wantAuth: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeCP{ca: ca, token: newToken(ca).String(), lifetime: time.Hour}
			addr := serve(t, f, nil)
			cfg, logs := testConfig(t, Config{Addresses: []string{addr}, Token: &tt.token})
			m, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			stop := start(t, m)
			// Refused twice: it keeps trying, and said so loudly first.
			waitFor(t, "a second refusal", func() bool { return strings.Contains(logs.String(), "enrolment still refused") })
			stop()
			out := logs.String()
			if !strings.Contains(out, "ENROLMENT REFUSED") || !strings.Contains(out, tt.wantLog) || !strings.Contains(out, "level=ERROR") {
				t.Errorf("log lacks %q:\n%s", tt.wantLog, out)
			}
			auth, enrols, _ := f.seen()
			if (len(auth) > 0) != tt.wantAuth || len(enrols) != 0 {
				t.Errorf("control plane saw %d authorization headers, enrolled %v", len(auth), enrols)
			}
			select {
			case <-m.Ready():
				t.Error("ready without a certificate")
			default:
			}
		})
	}
}

func TestEnrolWaitsForControlPlane(t *testing.T) {
	ca := newCA(t)
	tok := newToken(ca)
	f := &fakeCP{ca: ca, token: tok.String(), lifetime: time.Hour}
	// Connections queue on a listener nobody accepts from yet.
	ln := listen(t)
	defer ln.Close()
	cfg, logs := testConfig(t, Config{Addresses: []string{ln.Addr().String()}, Token: &tok})
	cfg.CallTimeout = 300 * time.Millisecond
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start(t, m)
	waitFor(t, "a failed attempt", func() bool { return strings.Contains(logs.String(), "no control plane answered") })
	serve(t, f, ln)
	waitReady(t, m, logs)
	if strings.Contains(logs.String(), "REFUSED") {
		t.Errorf("an unreachable control plane was reported as a refusal:\n%s", logs)
	}
}

func TestRenewal(t *testing.T) {
	tests := []struct {
		name       string
		failRenews int
	}{
		{name: "at two thirds"},
		{name: "after failures", failRenews: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newCA(t)
			tok := newToken(ca)
			f := &fakeCP{ca: ca, token: tok.String(), lifetime: 4 * time.Second, failRenews: tt.failRenews}
			addr := serve(t, f, nil)
			cfg, logs := testConfig(t, Config{Addresses: []string{addr}, Token: &tok})
			m, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			start(t, m)
			waitReady(t, m, logs)
			issued := time.Now()
			// The configuration a long-lived connection was dialed with
			// presents the renewed certificate on its next handshake.
			conf := m.TLSConfig(addr)
			first := presented(t, conf).SerialNumber

			waitFor(t, "a renewed certificate", func() bool { return presented(t, conf).SerialNumber.Cmp(first) != 0 })
			// Certificate times are whole seconds, so 2/3 of 4s is at
			// least 1.6s after issue; only a lower bound is safe here.
			if d := time.Since(issued); d < time.Second {
				t.Errorf("renewed %v after enrolment, before 2/3 of a 4s lifetime", d)
			}
			_, enrols, renews := f.seen()
			if len(enrols) != 1 || len(renews) == 0 || renews[0] != "n1" {
				t.Errorf("enrolments %v, renewals %v", enrols, renews)
			}
			f.mu.Lock()
			failed := f.renewFailed
			f.mu.Unlock()
			if failed != tt.failRenews {
				t.Errorf("%d renewals failed, want %d", failed, tt.failRenews)
			}
			stored, err := loadDir(cfg.Dir)
			if err != nil || stored.leaf().SerialNumber.Cmp(first) == 0 {
				t.Errorf("stored identity not replaced: %v", err)
			}
			if !strings.Contains(logs.String(), "client certificate renewed") {
				t.Errorf("renewal not logged:\n%s", logs)
			}
		})
	}
}

func TestStoredIdentity(t *testing.T) {
	ca := newCA(t)
	tok := newToken(ca)
	now := time.Now()
	valid := ca.identityFiles(t, "n1", now.Add(-time.Minute), now.Add(time.Hour))
	tests := []struct {
		name      string
		stored    *material
		token     *identity.JoinToken
		wantErr   string // "" = New succeeds
		wantReady bool   // credentials at once, no enrolment needed
		wantLog   string
	}{
		{name: "valid", stored: &valid, wantReady: true},
		{name: "valid, token not needed", stored: &valid, token: &tok, wantReady: true, wantLog: "join token not needed"},
		{name: "none", wantErr: "no control-plane credentials"},
		{name: "none, token", token: &tok},
		{name: "expired", stored: ptr(ca.identityFiles(t, "n1", now.Add(-2*time.Hour), now.Add(-time.Hour))), wantErr: "expired"},
		{name: "expired, token", stored: ptr(ca.identityFiles(t, "n1", now.Add(-2*time.Hour), now.Add(-time.Hour))), token: &tok, wantLog: "ignoring stored identity"},
		{name: "other node", stored: ptr(ca.identityFiles(t, "other", now, now.Add(time.Hour))), wantErr: `for node "other"`},
		{name: "other node, token", stored: ptr(ca.identityFiles(t, "other", now, now.Add(time.Hour))), token: &tok, wantLog: `for node \"other\"`},
		{name: "corrupt", stored: &material{key: []byte("junk"), chain: valid.chain, ca: valid.ca}, wantErr: "certificate and key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, logs := testConfig(t, Config{Addresses: []string{"127.0.0.1:1"}, Token: tt.token})
			if tt.stored != nil {
				if err := saveDir(cfg.Dir, *tt.stored); err != nil {
					t.Fatal(err)
				}
			}
			m, err := New(cfg)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %v, want one line with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ready := false
			select {
			case <-m.Ready():
				ready = true
			default:
			}
			if ready != tt.wantReady || !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("ready %v, want %v; log:\n%s", ready, tt.wantReady, logs)
			}
			if tt.wantReady && m.NodeID() != "n1" {
				t.Errorf("NodeID = %q", m.NodeID())
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestRestart: what one run enrolled, the next uses without the token;
// started as another node it enrols again.
func TestRestart(t *testing.T) {
	ca := newCA(t)
	tok := newToken(ca)
	f := &fakeCP{ca: ca, token: tok.String(), lifetime: time.Hour}
	addr := serve(t, f, nil)
	cfg, logs := testConfig(t, Config{Addresses: []string{addr}, Token: &tok})
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, first)
	waitReady(t, first, logs)
	stop()
	serial := current(t, first, addr).SerialNumber

	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, again, logs)
	if got := current(t, again, addr).SerialNumber; got.Cmp(serial) != 0 {
		t.Errorf("restart serial %x, want the stored %x", got, serial)
	}
	stop = start(t, again)
	if err := renewDirect(t, again, addr); err != nil {
		t.Errorf("stored identity does not authenticate: %v", err)
	}
	stop()

	cfg.NodeID = "n2"
	renamed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start(t, renamed)
	waitReady(t, renamed, logs)
	if _, enrols, _ := f.seen(); strings.Join(enrols, ",") != "n1,n2" || renamed.NodeID() != "n2" {
		t.Errorf("enrolments %v, node %q", enrols, renamed.NodeID())
	}
}

func TestFiles(t *testing.T) {
	ca := newCA(t)
	f := &fakeCP{ca: ca, lifetime: time.Hour}
	addr := serve(t, f, nil)
	dir := t.TempDir()
	files := Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	write := func(mat material, at time.Time) {
		t.Helper()
		for path, data := range map[string][]byte{files.CA: mat.ca, files.Cert: mat.chain, files.Key: mat.key} {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			// Some file systems keep whole-second times.
			if err := os.Chtimes(path, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	now := time.Now()
	write(ca.identityFiles(t, "n1", now, now.Add(time.Hour)), now.Add(-time.Hour))

	if _, err := New(mustConfig(t, Config{Addresses: []string{addr}, Files: &files, NodeID: "n2"})); err == nil || !strings.Contains(err.Error(), `not --node-id "n2"`) {
		t.Errorf("certificate for another node: err = %v", err)
	}
	cfg, logs := testConfig(t, Config{Addresses: []string{addr}, Files: &files})
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, m, logs)
	if err := renewDirect(t, m, addr); err != nil {
		t.Errorf("mTLS call with the files: %v", err)
	}
	conf := m.TLSConfig(addr)
	first := presented(t, conf).SerialNumber
	start(t, m)

	write(ca.identityFiles(t, "n1", now, now.Add(2*time.Hour)), now)
	waitFor(t, "the new files", func() bool { return presented(t, conf).SerialNumber.Cmp(first) != 0 })
	second := current(t, m, addr).SerialNumber

	bad := ca.identityFiles(t, "n1", now, now.Add(time.Hour))
	bad.key = ca.identityFiles(t, "n1", now, now.Add(time.Hour)).key // another certificate's key
	write(bad, now.Add(time.Hour))
	waitFor(t, "the bad files to be refused", func() bool { return strings.Contains(logs.String(), "cannot be used") })
	if current(t, m, addr).SerialNumber.Cmp(second) != 0 {
		t.Error("unusable files replaced the working certificate")
	}
	if _, enrols, renews := f.seen(); len(enrols) != 0 || len(renews) != 1 { // renewDirect's
		t.Errorf("own PKI mode called the control plane: enrolments %v, renewals %v", enrols, renews)
	}
	if _, err := os.Stat(cfg.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("own PKI mode wrote %s: %v", cfg.Dir, err)
	}
}

func mustConfig(t *testing.T, cfg Config) Config {
	cfg, _ = testConfig(t, cfg)
	return cfg
}

func TestInsecure(t *testing.T) {
	cfg, logs := testConfig(t, Config{Addresses: []string{"127.0.0.1:1"}, Insecure: true})
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, m, logs)
	start(t, m)()
	if p := m.TransportCredentials("127.0.0.1:1").Info().SecurityProtocol; p != "insecure" || !m.NotAfter().IsZero() {
		t.Errorf("security %q, NotAfter %v", p, m.NotAfter())
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "--insecure") {
		t.Errorf("no warning:\n%s", logs)
	}
}

func TestTLSConfig(t *testing.T) {
	ca := newCA(t)
	cfg, logs := testConfig(t, Config{Addresses: []string{"127.0.0.1:1"}})
	if err := saveDir(cfg.Dir, ca.identityFiles(t, "n1", time.Now(), time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, m, logs)
	for addr, host := range map[string]string{"cp.example:7400": "cp.example", "[::1]:7400": "::1", "10.0.0.1:7400": "10.0.0.1"} {
		c := m.TLSConfig(addr)
		if c.ServerName != host || c.InsecureSkipVerify || c.MinVersion != tls.VersionTLS12 || c.RootCAs == nil || c.GetClientCertificate == nil {
			t.Errorf("TLSConfig(%q): ServerName %q, skip %v, min %x", addr, c.ServerName, c.InsecureSkipVerify, c.MinVersion)
		}
	}
}

func TestBackoff(t *testing.T) {
	for attempt := range 40 {
		d := backoff(time.Second, 10*time.Second, attempt)
		if d < time.Second || d > 10*time.Second {
			t.Errorf("backoff(1s, 10s, %d) = %v", attempt, d)
		}
	}
	if got := renewAt(time.Unix(60, 0), time.Unix(300, 0), time.Unix(120, 0)); !got.Equal(time.Unix(240, 0)) {
		t.Fatalf("renewAt from when it was obtained = %v, want 240s", got.Unix())
	}
	if got := renewAt(time.Unix(0, 0), time.Unix(300, 0), time.Time{}); !got.Equal(time.Unix(200, 0)) {
		t.Errorf("renewAt = %v, want 2/3 of the way", got)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
