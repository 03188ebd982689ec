package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/proto/identity"
)

func TestLoadCreatesThenReloads(t *testing.T) {
	now := testNow()
	dir := filepath.Join(t.TempDir(), "data", "pki")
	f, created, err := Load(dir, now)
	if err != nil || !created {
		t.Fatalf("first Load: created=%v err=%v, want created", created, err)
	}
	for _, a := range []*Authority{f.CA, f.EtcdCA} {
		c := a.Certificate()
		key, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !c.IsCA || !ok || key.Curve != elliptic.P256() || !c.NotAfter.Equal(now.AddDate(10, 0, 0)) {
			t.Errorf("%s: IsCA=%v key=%T NotAfter=%s, want an ECDSA P-256 CA for 10 years", c.Subject.CommonName, c.IsCA, c.PublicKey, c.NotAfter)
		}
	}
	if identity.Pin(f.CA.Certificate()) == identity.Pin(f.EtcdCA.Certificate()) {
		t.Fatal("cluster CA and etcd CA share a key")
	}

	again, created, err := Load(dir, now.Add(time.Hour))
	if err != nil || created {
		t.Fatalf("second Load: created=%v err=%v, want loaded", created, err)
	}
	for _, pair := range [][2]*Authority{{f.CA, again.CA}, {f.EtcdCA, again.EtcdCA}} {
		if identity.Pin(pair[0].Certificate()) != identity.Pin(pair[1].Certificate()) || !bytes.Equal(pair[0].CertPEM(), pair[1].CertPEM()) {
			t.Errorf("%s changed on reload", pair[0].Certificate().Subject.CommonName)
		}
	}
	// The reloaded key must be the CA's: what it signs verifies against the original.
	cert, _, err := again.CA.SignDataplane(newCSR(t, ecKey(t, elliptic.P256()), nil), "n1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(cert, f.CA.Pool(), now, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("certificate from reloaded CA: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		break_  func(t *testing.T, dir string)
		wantErr string // relative to dir
		missing string // a file Load must not have recreated
	}{
		{
			name:    "cluster CA key missing",
			break_:  func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ca.key")) },
			wantErr: "ca.key is missing", missing: "ca.key",
		},
		{
			name:    "cluster CA cert missing",
			break_:  func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ca.crt")) },
			wantErr: "ca.crt is missing", missing: "ca.crt",
		},
		{
			name:    "etcd CA key missing",
			break_:  func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "etcd-ca.key")) },
			wantErr: "etcd-ca.key is missing", missing: "etcd-ca.key",
		},
		{
			name: "cluster CA key belongs to the etcd CA",
			break_: func(t *testing.T, dir string) {
				copyFile(t, filepath.Join(dir, "etcd-ca.key"), filepath.Join(dir, "ca.key"))
			},
			wantErr: "ca.key does not match",
		},
		{
			name: "etcd CA key is a stranger's",
			break_: func(t *testing.T, dir string) {
				pemKey, err := encodeKey(ecKey(t, elliptic.P256()))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(dir, "etcd-ca.key"), pemKey, 0o600)
			},
			wantErr: "etcd-ca.key does not match",
		},
		{
			name:    "cluster CA cert is not PEM",
			break_:  func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("junk"), 0o644) },
			wantErr: "ca.crt: no CERTIFICATE",
		},
		{
			name:    "cluster CA key is not PEM",
			break_:  func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, "ca.key"), []byte("junk"), 0o600) },
			wantErr: "ca.key: no private key",
		},
		{
			name: "cluster CA cert is a leaf",
			break_: func(t *testing.T, dir string) {
				copyFile(t, filepath.Join(dir, "server.crt"), filepath.Join(dir, "ca.crt"))
				copyFile(t, filepath.Join(dir, "server.key"), filepath.Join(dir, "ca.key"))
			},
			wantErr: "ca.crt is not a CA",
		},
		{
			name: "etcd CA is the cluster CA",
			break_: func(t *testing.T, dir string) {
				copyFile(t, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "etcd-ca.crt"))
				copyFile(t, filepath.Join(dir, "ca.key"), filepath.Join(dir, "etcd-ca.key"))
			},
			wantErr: "etcd-ca.crt has the key of",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			f := mustLoad(t, dir, testNow())
			if _, err := f.ServerCert([]string{"localhost"}, testNow()); err != nil {
				t.Fatal(err)
			}
			tt.break_(t, dir)
			_, _, err := Load(dir, testNow())
			if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, tt.wantErr)) {
				t.Fatalf("Load error = %v, want one containing %q", err, filepath.Join(dir, tt.wantErr))
			}
			if tt.missing != "" {
				if _, err := os.Stat(filepath.Join(dir, tt.missing)); !os.IsNotExist(err) {
					t.Errorf("Load recreated %s", tt.missing)
				}
			}
		})
	}
}

// An operator may bring a CA made with openssl: SEC 1 key after an EC
// PARAMETERS block.
func TestLoadOpenSSLKey(t *testing.T) {
	dir := t.TempDir()
	f := mustLoad(t, dir, testNow())
	der, err := x509.MarshalECPrivateKey(f.CA.key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	again := mustLoad(t, dir, testNow())
	if identity.Pin(again.CA.Certificate()) != identity.Pin(f.CA.Certificate()) {
		t.Fatal("CA changed")
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "pki")
	f := mustLoad(t, dir, testNow())
	if _, err := f.ServerCert([]string{"localhost"}, testNow()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.EtcdCerts([]string{"127.0.0.1"}, testNow()); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir: %v, err %v; want 0700", st.Mode(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o644)
		if strings.HasSuffix(e.Name(), ".key") {
			want = 0o600
		}
		if info.Mode() != want {
			t.Errorf("%s: mode %v, want %v", e.Name(), info.Mode(), want)
		}
	}
	// Exactly these files: no temp file is left behind.
	wantNames := []string{"ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key", "etcd-client.crt", "etcd-client.key",
		"etcd-server.crt", "etcd-server.key", "server.crt", "server.key"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("files = %v, want %v", names, wantNames)
	}
}

func TestServerCertReuse(t *testing.T) {
	now := testNow()
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	wrongIssuer := func(ca func(*Files) *Authority, usages ...x509.ExtKeyUsage) func(t *testing.T, f *Files) {
		return func(t *testing.T, f *Files) {
			h, _ := parseHosts(hosts)
			spec := leafSpec{base: serverBase, commonName: serverName, hosts: h, usages: usages}
			if _, _, err := f.issueLeaf(ca(f), spec, now); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name    string
		change  func(t *testing.T, f *Files)
		hosts   []string
		when    func(first *x509.Certificate) time.Time // nil: now
		reissue bool
	}{
		{name: "same hosts", hosts: hosts},
		{name: "fewer hosts", hosts: []string{"localhost"}},
		{name: "other spellings", hosts: []string{"LOCALHOST", "[::1]", "127.0.0.1", ""}},
		{name: "31 days left", hosts: hosts, when: func(c *x509.Certificate) time.Time { return c.NotAfter.Add(-31 * 24 * time.Hour) }},
		{name: "29 days left", hosts: hosts, reissue: true, when: func(c *x509.Certificate) time.Time { return c.NotAfter.Add(-29 * 24 * time.Hour) }},
		{name: "expired", hosts: hosts, reissue: true, when: func(c *x509.Certificate) time.Time { return c.NotAfter.Add(time.Hour) }},
		{name: "not yet valid", hosts: hosts, reissue: true, when: func(c *x509.Certificate) time.Time { return c.NotBefore.Add(-time.Hour) }},
		{name: "new DNS name", hosts: append(slices.Clone(hosts), "cp.example.test"), reissue: true},
		{name: "new IP", hosts: append(slices.Clone(hosts), "10.0.0.7"), reissue: true},
		{name: "key missing", hosts: hosts, reissue: true,
			change: func(t *testing.T, f *Files) { os.Remove(f.path("server.key")) }},
		{name: "cert corrupt", hosts: hosts, reissue: true,
			change: func(t *testing.T, f *Files) { os.WriteFile(f.path("server.crt"), []byte("junk"), 0o644) }},
		{name: "key of another cert", hosts: hosts, reissue: true,
			change: func(t *testing.T, f *Files) { copyFile(t, f.path("ca.key"), f.path("server.key")) }},
		{name: "signed by the etcd CA", hosts: hosts, reissue: true,
			change: wrongIssuer(func(f *Files) *Authority { return f.EtcdCA }, x509.ExtKeyUsageServerAuth)},
		{name: "client usage", hosts: hosts, reissue: true,
			change: wrongIssuer(func(f *Files) *Authority { return f.CA }, x509.ExtKeyUsageClientAuth)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The CA predates the certificate, so "not yet valid" is the leaf's problem only.
			f := mustLoad(t, t.TempDir(), now.Add(-48*time.Hour))
			first, err := f.ServerCert(hosts, now)
			if err != nil {
				t.Fatal(err)
			}
			if tt.change != nil {
				tt.change(t, f)
			}
			at := now
			if tt.when != nil {
				at = tt.when(first.Leaf)
			}
			second, err := f.ServerCert(tt.hosts, at)
			if err != nil {
				t.Fatal(err)
			}
			if reissued := !second.Leaf.Equal(first.Leaf); reissued != tt.reissue {
				t.Fatalf("reissued = %v, want %v", reissued, tt.reissue)
			}
			if onDisk := readCertFile(t, f.path("server.crt")); !onDisk.Equal(second.Leaf) {
				t.Error("server.crt is not the returned certificate")
			}
			for _, h := range tt.hosts {
				if h = strings.Trim(h, "[]"); h != "" {
					if err := verify(second.Leaf, f.CA.Pool(), at, x509.ExtKeyUsageServerAuth, h); err != nil {
						t.Errorf("host %q: %v", h, err)
					}
				}
			}
		})
	}
}

func TestServerCertVerifies(t *testing.T) {
	now := testNow()
	f := mustLoad(t, t.TempDir(), now)
	hosts := []string{"localhost", "127.0.0.1", "::1", "cp.example.test", "10.1.2.3", "fd00::7"}
	tc, err := f.ServerCert(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Certificate) != 2 || !bytes.Equal(tc.Certificate[0], tc.Leaf.Raw) || !bytes.Equal(tc.Certificate[1], f.CA.Certificate().Raw) {
		t.Fatalf("chain is not [leaf, CA]: %d certificates", len(tc.Certificate))
	}
	leaf := tc.Leaf
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || !leaf.NotAfter.Equal(now.AddDate(1, 0, 0)) {
		t.Errorf("EKU %v NotAfter %s, want ServerAuth and one year", leaf.ExtKeyUsage, leaf.NotAfter)
	}
	if len(leaf.DNSNames) != 2 || len(leaf.IPAddresses) != 4 {
		t.Errorf("SANs DNS %v IP %v", leaf.DNSNames, leaf.IPAddresses)
	}
	pin := identity.Pin(f.CA.Certificate())
	for _, h := range hosts {
		if err := verify(leaf, f.CA.Pool(), now, x509.ExtKeyUsageServerAuth, h); err != nil {
			t.Errorf("verify for %s: %v", h, err)
		}
	}
	if err := verify(leaf, f.CA.Pool(), now, x509.ExtKeyUsageServerAuth, "other.example.test"); err == nil {
		t.Error("verified for a host it does not name")
	}
	if err := verify(leaf, f.EtcdCA.Pool(), now, x509.ExtKeyUsageServerAuth, "localhost"); err == nil {
		t.Error("server certificate verifies against the etcd CA")
	}
	// VerifyPinned uses the wall clock; only the pin lookup is checked here,
	// the real handshake is in TestServerCertHandshake.
	if _, err := identity.VerifyPinned(tc.Certificate, "00"+pin[2:], "localhost"); err == nil {
		t.Error("VerifyPinned accepted a wrong pin")
	}
}

// TestServerCertHandshake runs a real TLS handshake, so the key in the
// tls.Certificate is known to match, and a data plane holding only the
// pin finds the CA in the chain.
func TestServerCertHandshake(t *testing.T) {
	now := time.Now()
	f := mustLoad(t, t.TempDir(), now)
	tc, err := f.ServerCert(LocalHosts(), now)
	if err != nil {
		t.Fatal(err)
	}
	pin := identity.Pin(f.CA.Certificate())
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			clientConn, serverConn := net.Pipe()
			done := make(chan error, 1)
			go func() {
				defer serverConn.Close()
				done <- tls.Server(serverConn, &tls.Config{Certificates: []tls.Certificate{tc}}).Handshake()
			}()
			client := tls.Client(clientConn, &tls.Config{
				ServerName:         host,
				InsecureSkipVerify: true, // verified by VerifyPinned, as a joining data plane does
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					_, err := identity.VerifyPinned(raw, pin, host)
					return err
				},
			})
			err := client.Handshake()
			clientConn.Close()
			if serverErr := <-done; err != nil || serverErr != nil {
				t.Fatalf("handshake: client %v, server %v", err, serverErr)
			}
		})
	}
}

func TestServerCertBadHosts(t *testing.T) {
	f := mustLoad(t, t.TempDir(), testNow())
	for _, hosts := range [][]string{nil, {"", " "}, {"localhost:7400"}, {"bad host"}} {
		if _, err := f.ServerCert(hosts, testNow()); err == nil {
			t.Errorf("ServerCert(%q) succeeded", hosts)
		}
	}
}

func TestEtcdCerts(t *testing.T) {
	now := testNow()
	dir := t.TempDir()
	f := mustLoad(t, dir, now)
	hosts := []string{"127.0.0.1", "localhost", "::1", "etcd.example.test"}
	files, err := f.EtcdCerts(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	want := EtcdFiles{CAFile: filepath.Join(dir, "etcd-ca.crt"),
		ServerCertFile: filepath.Join(dir, "etcd-server.crt"), ServerKeyFile: filepath.Join(dir, "etcd-server.key"),
		ClientCertFile: filepath.Join(dir, "etcd-client.crt"), ClientKeyFile: filepath.Join(dir, "etcd-client.key")}
	if files != want {
		t.Fatalf("files = %+v, want %+v", files, want)
	}
	if caPEM, _ := os.ReadFile(files.CAFile); !bytes.Equal(caPEM, f.EtcdCA.CertPEM()) {
		t.Error("CAFile is not the etcd CA")
	}
	server, client := loadPair(t, files.ServerCertFile, files.ServerKeyFile), loadPair(t, files.ClientCertFile, files.ClientKeyFile)
	if !slices.Equal(server.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("server EKU %v", server.ExtKeyUsage)
	}
	for _, h := range hosts {
		if err := verify(server, f.EtcdCA.Pool(), now, x509.ExtKeyUsageServerAuth, h); err != nil {
			t.Errorf("etcd server for %s: %v", h, err)
		}
	}
	if err := verify(server, f.EtcdCA.Pool(), now, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("etcd server as peer client: %v", err)
	}
	if client.Subject.CommonName != "meridian-controlplane" || !slices.Equal(client.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("client CN %q EKU %v", client.Subject.CommonName, client.ExtKeyUsage)
	}

	// Same hosts: nothing reissued. A new host: only the server certificate.
	if _, err := f.EtcdCerts(hosts, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !readCertFile(t, files.ServerCertFile).Equal(server) || !readCertFile(t, files.ClientCertFile).Equal(client) {
		t.Error("certificates reissued without reason")
	}
	if _, err := f.EtcdCerts(append(hosts, "10.9.9.9"), now); err != nil {
		t.Fatal(err)
	}
	if readCertFile(t, files.ServerCertFile).Equal(server) || !readCertFile(t, files.ClientCertFile).Equal(client) {
		t.Error("want only the server certificate reissued for a new host")
	}
}

// loadPair loads a pair as etcd would and returns the leaf.
func loadPair(t *testing.T, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	tc, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return tc.Leaf
}

// TestCASeparation: the etcd CA and the cluster CA never vouch for each
// other's certificates.
func TestCASeparation(t *testing.T) {
	now := testNow()
	f := mustLoad(t, t.TempDir(), now)
	files, err := f.EtcdCerts([]string{"127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	dataplane, _, err := f.CA.SignDataplane(newCSR(t, ecKey(t, elliptic.P256()), nil), "n1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	etcdClient := readCertFile(t, files.ClientCertFile)
	etcdServer := readCertFile(t, files.ServerCertFile)
	tests := []struct {
		name   string
		cert   *x509.Certificate
		pool   *x509.CertPool
		wantOK bool
	}{
		{"dataplane cert, cluster CA", dataplane, f.CA.Pool(), true},
		{"dataplane cert, etcd CA", dataplane, f.EtcdCA.Pool(), false},
		{"etcd client cert, etcd CA", etcdClient, f.EtcdCA.Pool(), true},
		{"etcd client cert, cluster CA", etcdClient, f.CA.Pool(), false},
		{"etcd server cert as client, cluster CA", etcdServer, f.CA.Pool(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verify(tt.cert, tt.pool, now, x509.ExtKeyUsageClientAuth, "")
			if (err == nil) != tt.wantOK {
				t.Fatalf("verify: %v, want ok=%v", err, tt.wantOK)
			}
		})
	}
}

// A certificate never outlives its CA, and an expired CA signs nothing.
func TestIssueCappedAtCA(t *testing.T) {
	now := testNow()
	f := mustLoad(t, t.TempDir(), now.AddDate(-10, 0, 1)) // CA expires in a day
	caEnd := f.CA.Certificate().NotAfter
	tc, err := f.ServerCert([]string{"localhost"}, now)
	if err != nil {
		t.Fatal(err)
	}
	dp, _, err := f.CA.SignDataplane(newCSR(t, ecKey(t, elliptic.P256()), nil), "n1", 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if !tc.Leaf.NotAfter.Equal(caEnd) || !dp.NotAfter.Equal(caEnd) {
		t.Errorf("NotAfter server %s dataplane %s, want the CA's %s", tc.Leaf.NotAfter, dp.NotAfter, caEnd)
	}
	if _, err := f.ServerCert([]string{"localhost"}, caEnd.Add(time.Second)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ServerCert with an expired CA: %v", err)
	}
}
