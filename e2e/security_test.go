package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// secureConfig routes /api/ to one echo upstream.
func secureConfig(echo string) string {
	return fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: echo}
spec:
  targets: [{address: %s}]
---
apiVersion: meridian/v1
kind: Route
metadata: {name: api}
spec:
  match: {paths: [{prefix: /api/}]}
  upstream: echo
`, echo)
}

// joinToken makes a join token through gatewayctl; the token is the first
// line of the table output.
func joinToken(t testing.TB, target string, args ...string) string {
	t.Helper()
	out := mustCtl(t, target, "", append([]string{"tokens", "create"}, args...)...)
	tok := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	if _, err := identity.ParseJoinToken(tok); err != nil {
		t.Fatalf("tokens create printed no token first:\n%s", out)
	}
	return tok
}

// enrolled starts a data plane that enrols with token.
func enrolled(t testing.TB, id, token string, cps ...string) *dataplane {
	t.Helper()
	return startDataplaneCreds(t, id, t.TempDir(), nil, cps, []string{"--join-token", token})
}

// caPool reads the cluster CA a secure control plane made.
func caPool(t testing.TB, cp *controlplane) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(cp.dataDir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

// impostor opens a discovery stream to cp presenting cert (none when nil)
// and claims to be nodeID at a version no one applied. It returns the
// stream's error.
func impostor(t *testing.T, cp *controlplane, cert *tls.Certificate, nodeID string) error {
	t.Helper()
	cfg := &tls.Config{RootCAs: caPool(t, cp), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Sent whatever CAs the server asks for: Go's client would keep
		// quiet about a certificate from another issuer.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := meridianv1.NewConfigDiscoveryServiceClient(conn).StreamSnapshots(ctx)
	if err != nil {
		return err
	}
	hello := &meridianv1.StreamSnapshotsRequest{
		Node:    &meridianv1.Node{Id: nodeID, ListenAddress: "203.0.113.9:666"},
		Version: 999999999, Hash: "forged",
		Error: &meridianv1.ConfigError{Message: "forged"},
	}
	if err := stream.Send(hello); err != nil {
		_, err = stream.Recv()
		return err
	}
	_, err = stream.Recv()
	return err
}

// forgedIdentity makes a certificate that names nodeID the way the cluster CA
// would, signed by its own key.
func forgedIdentity(t *testing.T, nodeID string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: nodeID},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{identity.URI(nodeID)},
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// identityOf loads the certificate a data plane enrolled for.
func identityOf(t *testing.T, dp *dataplane) tls.Certificate {
	t.Helper()
	dir := filepath.Join(dp.cache, "identity")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestSecureFleet: a secure control plane and two data planes enrolled by
// token serve traffic; clients without a certificate, with a self-signed
// one, or with another node's cannot open the discovery stream, change any
// data plane's status or the fleet size.
func TestSecureFleet(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo")
	cp := startSecureControlplane(t, "cp", t.TempDir(), "")
	target := cp.ctlTarget()
	mustCtl(t, target, secureConfig(echo), "apply", "-f", "-")
	token := joinToken(t, target, "--uses", "2", "--labels", "zone=a")
	dp1 := enrolled(t, "dp-1", token, cp.addr)
	dp2 := startDataplaneCreds(t, "dp-2", t.TempDir(), []string{"MERIDIAN_JOIN_TOKEN=" + token}, []string{cp.addr}, nil)
	version := waitSynced(t, target, 0, "dp-1", "dp-2")
	for _, dp := range []*dataplane{dp1, dp2} {
		eventually(t, dp.id+" serves /api/", func() error { return expectStatus(dp, "/api/x", 200) })
	}
	// A third enrolment with the two-use token is refused.
	dp3 := enrolled(t, "dp-3", token, cp.addr)
	dp3.waitFor(`used up`)

	before, _ := fleet(t, target)
	other := identityOf(t, dp2)
	self := forgedIdentity(t, "dp-1")
	attacks := []struct {
		name string
		cert *tls.Certificate
		code codes.Code
	}{
		{"no certificate", nil, codes.Unauthenticated},
		{"self-signed", &self, codes.Unavailable},
		{"another node's certificate", &other, codes.PermissionDenied},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			err := impostor(t, cp, a.cert, "dp-1")
			if status.Code(err) != a.code {
				t.Fatalf("stream as dp-1: %v, want %v", err, a.code)
			}
		})
	}
	after, _ := fleet(t, target)
	// Each refused stream is an audit record.
	eventually(t, "the refused streams in the audit log", func() error {
		out := mustCtl(t, target, "", "-o", "json", "audit")
		if n := strings.Count(out, `"method": "/meridian.v1.ConfigDiscoveryService/StreamSnapshots"`); n < 2 || !strings.Contains(out, `"outcome": "denied"`) {
			return fmt.Errorf("%d denied StreamSnapshots records:\n%s", n, out)
		}
		return nil
	})
	for _, id := range []string{"dp-1", "dp-2"} {
		b, a := before[id], after[id]
		if a.GetState() != meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED || a.GetAppliedVersion() != version ||
			a.GetPeerAddress() != b.GetPeerAddress() || a.GetNode().GetListenAddress() != b.GetNode().GetListenAddress() {
			t.Fatalf("%s changed under attack: %v -> %v", id, b, a)
		}
		if a.GetNode().GetLabels()["zone"] != "a" {
			t.Fatalf("%s lacks its join token's label: %v", id, a.GetNode().GetLabels())
		}
	}
	if _, ok := after["dp-3"]; ok {
		t.Fatal("dp-3 shows in the fleet without enrolling")
	}
	for _, dp := range []*dataplane{dp1, dp2} {
		c, err := dp.config()
		if err != nil || c.FleetSize != 2 {
			t.Fatalf("%s fleetSize = %d (%v), want 2", dp.id, c.FleetSize, err)
		}
		if c.CertificateNotAfter == nil || time.Until(*c.CertificateNotAfter) < 23*time.Hour {
			t.Fatalf("%s certificateNotAfter = %v, want about 24h from now", dp.id, c.CertificateNotAfter)
		}
	}
}

func expectStatus(dp *dataplane, path string, want int) error {
	code, body, err := dp.get(path)
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("GET %s = %d %s, want %d", path, code, body, want)
	}
	return nil
}

// TestCertificateRenewal: certificates issued for 20 s renew three times
// under steady traffic with no failed request and no reconnect.
func TestCertificateRenewal(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo")
	cp := startSecureControlplane(t, "cp", t.TempDir(), "", "--dataplane-cert-ttl", "20s")
	target := cp.ctlTarget()
	mustCtl(t, target, secureConfig(echo), "apply", "-f", "-")
	dp := enrolled(t, "dp-1", joinToken(t, target), cp.addr)
	waitSynced(t, target, 0, "dp-1")
	eventually(t, "traffic", func() error { return expectStatus(dp, "/api/x", 200) })

	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		client := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			resp, err := client.Get("http://" + dp.addr + "/api/x")
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	renewals := regexp.MustCompile(`certificate renewed`)
	deadline := time.Now().Add(90 * time.Second)
	for len(renewals.FindAllString(dp.out.String(), -1)) < 3 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if n := len(renewals.FindAllString(dp.out.String(), -1)); n < 3 {
		t.Fatalf("%d renewals in 90 s, want 3", n)
	}
	if failed.Load() != 0 || sent.Load() < 100 {
		t.Fatalf("%d of %d requests failed during renewals", failed.Load(), sent.Load())
	}
	if n := strings.Count(dp.out.String(), "connected to control plane"); n != 1 {
		t.Fatalf("the data plane connected %d times; renewal must not reconnect", n)
	}
	// The stream is still the first one, and it is still SYNCED.
	waitSynced(t, target, 0, "dp-1")
}

// TestRevocation: two replicas on one etcd (sharing the CA, as
// docs/security.md says); a data plane on each is revoked through one of
// them and cut off within a second, and refused when it reconnects.
func TestRevocation(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo")
	dirA, dirB := t.TempDir(), t.TempDir()
	cpA := startSecureControlplane(t, "cp-a", dirA, "")
	copyCA(t, dirA, dirB)
	pki := filepath.Join(dirA, "pki")
	cpB := startSecureControlplane(t, "cp-b", dirB, cpA.etcd, "--admin-tokens-file", filepath.Join(dirA, "admin-tokens"),
		"--etcd-ca", filepath.Join(pki, "etcd-ca.crt"), "--etcd-cert", filepath.Join(pki, "etcd-client.crt"), "--etcd-key", filepath.Join(pki, "etcd-client.key"))
	target := cpA.ctlTarget()
	mustCtl(t, target, secureConfig(echo), "apply", "-f", "-")
	token := joinToken(t, target, "--uses", "2")
	dpA := enrolled(t, "dp-a", token, cpA.addr)
	dpB := enrolled(t, "dp-b", token, cpB.addr)
	waitSynced(t, target, 0, "dp-a", "dp-b")

	for _, dp := range []*dataplane{dpA, dpB} {
		start := time.Now()
		mustCtl(t, target, "", "dataplanes", "revoke", dp.id)
		ended := streamEndedAt(t, dp)
		if d := ended.Sub(start); d > time.Second {
			t.Errorf("%s cut off %s after the revocation, want within 1s", dp.id, d)
		}
		dp.waitFor(`this data plane was revoked|revoked`)
	}
	// Still serving from its last configuration, but disconnected for good.
	time.Sleep(2 * time.Second)
	byID, _ := fleet(t, target)
	for _, id := range []string{"dp-a", "dp-b"} {
		if byID[id].GetConnected() {
			t.Fatalf("%s reconnected after its revocation: %v", id, byID[id])
		}
	}
	if err := expectStatus(dpA, "/api/x", 200); err != nil {
		t.Fatalf("a revoked data plane keeps serving its last configuration: %v", err)
	}
	audit := mustCtl(t, target, "", "-o", "json", "audit")
	if !strings.Contains(audit, "RevokeDataplane") || !strings.Contains(audit, "dataplane/dp-b") {
		t.Fatalf("the revocations are not in the audit log:\n%s", audit)
	}
}

// copyCA gives a second replica the first one's cluster CA.
func copyCA(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(to, "pki"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(from, "pki", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, "pki", name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// streamEndedAt waits for the data plane to log that its stream ended
// and returns the time in that log line.
func streamEndedAt(t *testing.T, dp *dataplane) time.Time {
	t.Helper()
	var at time.Time
	eventually(t, dp.id+" stream ended", func() error {
		for line := range strings.Lines(dp.out.String()) {
			if !strings.Contains(line, "control-plane stream ended") {
				continue
			}
			var rec struct {
				Time time.Time `json:"time"`
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				return err
			}
			at = rec.Time
			return nil
		}
		return fmt.Errorf("not yet")
	})
	return at
}

// TestEtcdLockedDown: the embedded etcd takes only the control plane's
// client certificate, and what is written to it behind the control
// plane's back is not published.
func TestEtcdLockedDown(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo")
	dir := t.TempDir()
	cp := startSecureControlplane(t, "cp", dir, "")
	target := cp.ctlTarget()
	mustCtl(t, target, secureConfig(echo), "apply", "-f", "-")
	dp := enrolled(t, "dp-1", joinToken(t, target), cp.addr)
	version := waitSynced(t, target, 0, "dp-1")

	pki := filepath.Join(dir, "pki")
	etcdCA, err := os.ReadFile(filepath.Join(pki, "etcd-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(etcdCA)
	clusterCert := identityOf(t, dp) // a real certificate, from the cluster CA
	clients := []struct {
		name string
		tls  *tls.Config
		ok   bool
	}{
		{"plaintext", nil, false},
		{"no certificate", &tls.Config{RootCAs: roots}, false},
		{"a data plane's certificate", &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{clusterCert}}, false},
		{"the control plane's certificate", &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{etcdClientCert(t, pki)}}, true},
	}
	var rogue *clientv3.Client
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cp.etcd}, TLS: c.tls, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err = cli.Get(ctx, "/meridian/version")
			if (err == nil) != c.ok {
				t.Fatalf("Get: %v, want ok=%v", err, c.ok)
			}
			if c.ok {
				rogue = cli
				return
			}
			cli.Close()
		})
	}
	if rogue == nil {
		t.Fatal("no client reached etcd")
	}
	defer rogue.Close()

	// With the certificate (a stolen one, say): a route to the upstream
	// and a version bump, as the attack did, with no history record.
	route := &meridianv1.StoredResource{Version: version + 1, Resource: &meridianv1.Resource{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
		Metadata: &meridianv1.Metadata{Name: "rogue"},
		Spec:     &meridianv1.RouteSpec{Match: &meridianv1.RouteMatch{Paths: []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Prefix{Prefix: "/rogue/"}}}}, Upstream: "echo"},
	}}}}
	value, err := proto.Marshal(route)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rogue.Txn(ctx).Then(
		clientv3.OpPut("/meridian/resources/Route/rogue", string(value)),
		clientv3.OpPut("/meridian/version", fmt.Sprint(version+1)),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	cp.waitFor(`not accounted for by its history`)
	time.Sleep(time.Second)
	if err := expectStatus(dp, "/rogue/x", 404); err != nil {
		t.Fatalf("a route written behind the control plane's back is served: %v", err)
	}
	if c, err := dp.config(); err != nil || c.Version != version {
		t.Fatalf("data plane at %d (%v), want still %d", c.Version, err, version)
	}
}

func etcdClientCert(t *testing.T, pki string) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "etcd-client.crt"), filepath.Join(pki, "etcd-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestUnauthenticatedFlood: 20 concurrent 15 MB Apply calls without a
// token are refused before their messages are read, so the control plane's
// memory barely moves (it grew by 1.5 GB before authentication came first).
func TestUnauthenticatedFlood(t *testing.T) {
	skipShort(t)
	cp := startSecureControlplane(t, "cp", t.TempDir(), "")
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: caPool(t, cp), ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin := meridianv1.NewAdminServiceClient(conn)
	big := &meridianv1.ApplyRequest{Message: strings.Repeat("x", 15<<20)}
	before := procStatus(t, cp, "VmRSS")
	var wg sync.WaitGroup
	var refused atomic.Int64
	for range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := admin.Apply(ctx, big); status.Code(err) == codes.Unauthenticated {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	peak := procStatus(t, cp, "VmHWM")
	if refused.Load() != 20 {
		t.Fatalf("%d of 20 calls refused as unauthenticated", refused.Load())
	}
	// The binary is built with -race, which doubles and more what memory
	// costs; a message read before the check would add 15 MB+ per call.
	t.Logf("control plane RSS %d MB before, peak %d MB", before>>10, peak>>10)
	if grown := peak - before; grown > 64<<10 {
		t.Fatalf("RSS peaked %d MB above the %d MB before the flood", grown>>10, before>>10)
	}
}

// procStatus reads a kB field of /proc/<pid>/status of cp.
func procStatus(t *testing.T, cp *controlplane, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cp.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb
		}
	}
	t.Fatalf("no %s in /proc status", field)
	return 0
}

// breakerWithBody is a CircuitBreaker whose fallback body makes the
// configuration about size bytes.
func breakerWithBody(size int) string {
	return fmt.Sprintf(`apiVersion: meridian/v1
kind: CircuitBreaker
metadata: {name: big}
spec:
  trip: {errorRate: 0.5}
  fallback: {status: 503, body: %q}
`, strings.Repeat("x", size))
}

// TestApplySizeLimit: one limit, 8 MiB, for an apply and the configuration
// it makes; applies well past the old accidental 2 MiB cap work, larger
// ones are refused by gatewayctl before sending and by the control plane
// if sent anyway, each naming the limit.
func TestApplySizeLimit(t *testing.T) {
	skipShort(t)
	cp := startSecureControlplane(t, "cp", t.TempDir(), "")
	target := cp.ctlTarget()
	out := mustCtl(t, target, breakerWithBody(3<<20), "apply", "-f", "-")
	if !strings.Contains(out, "circuitbreaker/big created") {
		t.Fatalf("a 3 MiB apply:\n%s", out)
	}
	_, errOut, code := ctl(t, target, breakerWithBody(9<<20), "apply", "-f", "-")
	if code != 1 || !strings.Contains(errOut, "at most 8 MiB") {
		t.Fatalf("gatewayctl apply of 9 MiB: exit %d\n%s", code, errOut)
	}

	// Sent anyway, with a valid token: refused by the control plane.
	cfg := readCtl(t, target)
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: caPool(t, cp), ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+cfg.Token), 30*time.Second)
	defer cancel()
	_, err = meridianv1.NewAdminServiceClient(conn).Apply(ctx, &meridianv1.ApplyRequest{Message: strings.Repeat("x", 9<<20)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("a 9 MiB Apply sent directly: %v, want ResourceExhausted naming the limit", err)
	}
}

// readCtl reads the token from a secure control plane's gatewayctl config.
func readCtl(t testing.TB, path string) struct{ Token string } {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^token: (\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("no token in %s", path)
	}
	return struct{ Token string }{string(m[1])}
}
