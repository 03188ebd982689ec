package security

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/pki/pkitest"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestInsecureOnlyOnLoopback(t *testing.T) {
	tests := []struct {
		listen string
		ok     bool
	}{
		{"127.0.0.1:7400", true},
		{"[::1]:7400", true},
		{"localhost:7400", true},
		{"0.0.0.0:7400", false},
		{":7400", false},
		{"10.1.2.3:7400", false},
	}
	for _, tt := range tests {
		t.Run(tt.listen, func(t *testing.T) {
			_, err := LoadPKI(Config{DataDir: t.TempDir(), Listen: tt.listen, Insecure: true, Logger: quiet()})
			if (err == nil) != tt.ok {
				t.Fatalf("LoadPKI(--insecure --listen %s) = %v, want ok=%v", tt.listen, err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "loopback") {
				t.Fatalf("error does not say why: %v", err)
			}
		})
	}
}

func TestFirstStartWritesTokenAndGatewayctlConfig(t *testing.T) {
	dir := t.TempDir()
	sec, err := LoadPKI(Config{DataDir: dir, Listen: "127.0.0.1:7400", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := sec.adminTokens("0.0.0.0:7400")
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := os.ReadFile(filepath.Join(dir, "gatewayctl.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	token := ""
	for line := range strings.Lines(string(ctl)) {
		if v, ok := strings.CutPrefix(line, "token: "); ok {
			token = strings.TrimSpace(v)
		}
	}
	if p, ok := tokens.Authenticate(token); !ok || p.Role != auth.RoleAdmin || p.Name != "admin" {
		t.Fatalf("the written token authenticates as %v, %v", p, ok)
	}
	if !strings.Contains(string(ctl), "server: 127.0.0.1:7400\n") || !strings.Contains(string(ctl), "  -----BEGIN CERTIFICATE-----") {
		t.Fatalf("gatewayctl.yaml lacks the dialable address or the CA:\n%s", ctl)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "admin-tokens"))
	if err != nil || strings.Contains(string(raw), token) {
		t.Fatalf("the tokens file holds the raw token (%v)", err)
	}
	for _, name := range []string{"admin-tokens", "gatewayctl.yaml"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", name, err, st.Mode().Perm())
		}
	}
	// A second start keeps both files.
	if _, err := sec.adminTokens("127.0.0.1:7400"); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(dir, "gatewayctl.yaml"))
	if string(again) != string(ctl) {
		t.Fatal("a second start rewrote gatewayctl.yaml")
	}
}

func TestPinIsTheServedCA(t *testing.T) {
	sec, err := LoadPKI(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:7400", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Pin() != identity.Pin(sec.Files().CA.Certificate()) || string(sec.CABundle()) != string(sec.Files().CA.CertPEM()) {
		t.Fatal("join tokens must pin the cluster CA the server presents")
	}
	leaf, err := x509.ParseCertificate(sec.serverCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.VerifyPinned(sec.serverCert.Certificate, sec.Pin(), "127.0.0.1"); err != nil {
		t.Fatalf("server chain does not verify against its own pin: %v (leaf %v)", err, leaf.IPAddresses)
	}
}

// certStore answers CheckCertificate and Revocation.
type certStore struct {
	Store
	identity   *meridianv1.Identity
	revocation *meridianv1.Revocation
}

func (c certStore) CheckCertificate(_ context.Context, _, serial string) (*meridianv1.Identity, error) {
	if c.identity == nil || c.identity.GetSerial() != serial {
		return nil, store.ErrDenied
	}
	return c.identity, nil
}

func (c certStore) Revocation(context.Context, string) (*meridianv1.Revocation, error) {
	return c.revocation, nil
}

func TestCertificateChecker(t *testing.T) {
	cluster, byo := pkitest.New(t), pkitest.New(t)
	ours := pkitest.ClientCert(t, cluster.CA, "dp-1", time.Hour).Leaf
	theirs := pkitest.ClientCert(t, byo.CA, "dp-1", time.Hour).Leaf
	current := &meridianv1.Identity{Serial: ours.SerialNumber.String(), Labels: map[string]string{"zone": "a"}}
	revokedNow := &meridianv1.Revocation{RevokedAt: timestamppb.Now()}
	revokedLongAgo := &meridianv1.Revocation{RevokedAt: timestamppb.New(time.Now().Add(-time.Hour))}
	tests := []struct {
		name  string
		st    certStore
		cert  *x509.Certificate
		ok    bool
		label string
	}{
		{"current certificate", certStore{identity: current}, ours, true, "a"},
		{"superseded or revoked", certStore{identity: &meridianv1.Identity{Serial: "1"}}, ours, false, ""},
		{"own PKI", certStore{}, theirs, true, ""},
		{"own PKI, revoked after it was issued", certStore{revocation: revokedNow}, theirs, false, ""},
		{"own PKI, issued after the revocation", certStore{revocation: revokedLongAgo}, theirs, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &CertificateChecker{store: tt.st, ca: cluster.CA.Certificate()}
			labels, err := c.CheckDataplane(context.Background(), "dp-1", tt.cert)
			if (err == nil) != tt.ok || labels["zone"] != tt.label {
				t.Fatalf("CheckDataplane = %v, %v; want ok=%v, zone %q", labels, err, tt.ok, tt.label)
			}
		})
	}
}
