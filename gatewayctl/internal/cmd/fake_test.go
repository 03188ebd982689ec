package cmd

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
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// fakeAdmin is an AdminService that records every call and answers with
// canned responses or errors, keyed by method name ("Apply", "List", ...).
type fakeAdmin struct {
	meridianv1.UnimplementedAdminServiceServer

	mu        sync.Mutex
	responses map[string]proto.Message
	errs      map[string]error
	calls     []fakeCall
}

// fakeCall is one recorded call.
type fakeCall struct {
	method string
	// auth holds the authorization metadata values, usually one.
	auth []string
	req  proto.Message
}

func newFakeAdmin() *fakeAdmin {
	return &fakeAdmin{responses: map[string]proto.Message{}, errs: map[string]error{}}
}

func (f *fakeAdmin) respond(method string, resp proto.Message) *fakeAdmin {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.responses[method] = resp
	return f
}

func (f *fakeAdmin) fail(method string, err error) *fakeAdmin {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
	return f
}

func (f *fakeAdmin) recorded() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

// answer records the call and returns the canned reply for method.
func answer[T proto.Message](ctx context.Context, f *fakeAdmin, method string, req proto.Message) (T, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{method: method, auth: md.Get("authorization"), req: proto.Clone(req)})
	var zero T
	if err := f.errs[method]; err != nil {
		return zero, err
	}
	resp, ok := f.responses[method].(T)
	if !ok {
		return zero, status.Errorf(codes.Unimplemented, "fake has no %s response", method)
	}
	return resp, nil
}

func (f *fakeAdmin) Apply(ctx context.Context, r *meridianv1.ApplyRequest) (*meridianv1.ApplyResponse, error) {
	return answer[*meridianv1.ApplyResponse](ctx, f, "Apply", r)
}

func (f *fakeAdmin) Diff(ctx context.Context, r *meridianv1.DiffRequest) (*meridianv1.DiffResponse, error) {
	return answer[*meridianv1.DiffResponse](ctx, f, "Diff", r)
}

func (f *fakeAdmin) Get(ctx context.Context, r *meridianv1.GetRequest) (*meridianv1.GetResponse, error) {
	return answer[*meridianv1.GetResponse](ctx, f, "Get", r)
}

func (f *fakeAdmin) List(ctx context.Context, r *meridianv1.ListRequest) (*meridianv1.ListResponse, error) {
	return answer[*meridianv1.ListResponse](ctx, f, "List", r)
}

func (f *fakeAdmin) Delete(ctx context.Context, r *meridianv1.DeleteRequest) (*meridianv1.DeleteResponse, error) {
	return answer[*meridianv1.DeleteResponse](ctx, f, "Delete", r)
}

func (f *fakeAdmin) History(ctx context.Context, r *meridianv1.HistoryRequest) (*meridianv1.HistoryResponse, error) {
	return answer[*meridianv1.HistoryResponse](ctx, f, "History", r)
}

func (f *fakeAdmin) Rollback(ctx context.Context, r *meridianv1.RollbackRequest) (*meridianv1.RollbackResponse, error) {
	return answer[*meridianv1.RollbackResponse](ctx, f, "Rollback", r)
}

func (f *fakeAdmin) ListDataplanes(ctx context.Context, r *meridianv1.ListDataplanesRequest) (*meridianv1.ListDataplanesResponse, error) {
	return answer[*meridianv1.ListDataplanesResponse](ctx, f, "ListDataplanes", r)
}

func (f *fakeAdmin) RevokeDataplane(ctx context.Context, r *meridianv1.RevokeDataplaneRequest) (*meridianv1.RevokeDataplaneResponse, error) {
	return answer[*meridianv1.RevokeDataplaneResponse](ctx, f, "RevokeDataplane", r)
}

func (f *fakeAdmin) CreateJoinToken(ctx context.Context, r *meridianv1.CreateJoinTokenRequest) (*meridianv1.CreateJoinTokenResponse, error) {
	return answer[*meridianv1.CreateJoinTokenResponse](ctx, f, "CreateJoinToken", r)
}

func (f *fakeAdmin) ListJoinTokens(ctx context.Context, r *meridianv1.ListJoinTokensRequest) (*meridianv1.ListJoinTokensResponse, error) {
	return answer[*meridianv1.ListJoinTokensResponse](ctx, f, "ListJoinTokens", r)
}

func (f *fakeAdmin) RevokeJoinToken(ctx context.Context, r *meridianv1.RevokeJoinTokenRequest) (*meridianv1.RevokeJoinTokenResponse, error) {
	return answer[*meridianv1.RevokeJoinTokenResponse](ctx, f, "RevokeJoinToken", r)
}

func (f *fakeAdmin) ListAudit(ctx context.Context, r *meridianv1.ListAuditRequest) (*meridianv1.ListAuditResponse, error) {
	return answer[*meridianv1.ListAuditResponse](ctx, f, "ListAudit", r)
}

// serve starts f in plaintext on a loopback listener and returns its
// address. The server stops, and its goroutine has exited, when the test
// ends.
func serve(t *testing.T, f *fakeAdmin) string {
	t.Helper()
	return serveWith(t, f)
}

// serveTLS is serve over TLS with cert as the server's certificate.
func serveTLS(t *testing.T, f *fakeAdmin, cert tls.Certificate) string {
	t.Helper()
	return serveTLSConfig(t, f, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
}

// serveTLSConfig is serve over TLS configured by cfg.
func serveTLSConfig(t *testing.T, f *fakeAdmin, cfg *tls.Config) string {
	t.Helper()
	return serveWith(t, f, grpc.Creds(credentials.NewTLS(cfg)))
}

func serveWith(t *testing.T, f *fakeAdmin, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The same receive limit as the control plane, so the size-limit test
	// proves an apply just under config.MaxApplyBytes gets through.
	opts = append(opts, grpc.MaxRecvMsgSize(maxSendMsgSize))
	s := grpc.NewServer(opts...)
	meridianv1.RegisterAdminServiceServer(s, f)
	done := make(chan error, 1)
	go func() { done <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return lis.Addr().String()
}

// deadAddress is a loopback address nothing listens on.
func deadAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// result is what one gatewayctl run produced.
type result struct {
	stdout string
	stderr string
	code   int
}

// testNow is the clock every run sees.
func testNow() time.Time { return time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC) }

// testVersion is the version every run was stamped with, as make stamps
// git describe.
const testVersion = "v0.9.0-12-g3f2c1ab"

// run executes gatewayctl against a plaintext fake (see serve), as against
// a control plane started with --insecure: it is runExact with
// MERIDIAN_INSECURE=true added, unless env has that key.
func run(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	withInsecure := map[string]string{"MERIDIAN_INSECURE": "true"}
	for k, v := range env {
		withInsecure[k] = v
	}
	return runExact(t, withInsecure, stdin, args...)
}

// runExact executes gatewayctl the way main does, with env as the whole
// environment and stdin as standard input.
func runExact(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &Options{
		In:  strings.NewReader(stdin),
		Out: &out,
		Err: &errOut,
		LookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
		Hostname: func() (string, error) { return "build-host", nil },
		Now:      testNow,
		Version:  testVersion,
	}
	code := Run(context.Background(), args, o)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gatewayctl test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
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

// PEM is the CA's certificate as PEM text.
func (ca *testCA) PEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))
}

// writePEM writes the CA's certificate to a file in dir and returns its path.
func (ca *testCA) writePEM(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(path, []byte(ca.PEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serverCert issues a server certificate for 127.0.0.1 and localhost.
func (ca *testCA) serverCert(t *testing.T) tls.Certificate {
	t.Helper()
	return ca.serverCertFor(t, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
}

// serverCertFor issues a server certificate for these names, presented
// with the CA as its chain, as the control plane does.
func (ca *testCA) serverCertFor(t *testing.T, dnsNames []string, ips []net.IP) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// writeFile writes content to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
