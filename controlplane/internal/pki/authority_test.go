package pki

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/proto/identity"
)

// checkDataplaneCert asserts everything the contract says about a
// data-plane client certificate.
func checkDataplaneCert(t *testing.T, ca *Authority, key crypto.Signer, cert *x509.Certificate, certPEM []byte, nodeID string, now time.Time, ttl time.Duration) {
	t.Helper()
	if id, err := identity.NodeID(cert); err != nil || id != nodeID {
		t.Errorf("NodeID = %q, %v; want %q", id, err, nodeID)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != identity.URI(nodeID).String() {
		t.Errorf("URIs = %v, want only %s", cert.URIs, identity.URI(nodeID))
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("extra SANs: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if len(cert.Subject.Names) != 0 || cert.Subject.CommonName != "" {
		t.Errorf("subject = %q, want empty", cert.Subject)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(cert.UnknownExtKeyUsage) != 0 || cert.IsCA {
		t.Errorf("EKU %v unknown %v IsCA %v, want ClientAuth only", cert.ExtKeyUsage, cert.UnknownExtKeyUsage, cert.IsCA)
	}
	if !cert.NotBefore.Equal(now.Add(-time.Minute)) || !cert.NotAfter.Equal(now.Add(ttl)) {
		t.Errorf("valid %s to %s, want %s to %s", cert.NotBefore, cert.NotAfter, now.Add(-time.Minute), now.Add(ttl))
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v", cert.SerialNumber)
	}
	if !keyMatches(key, cert) {
		t.Error("certificate is not for the CSR's key")
	}
	if err := verify(cert, ca.Pool(), now, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("verify as client: %v", err)
	}
	if err := verify(cert, ca.Pool(), now, x509.ExtKeyUsageServerAuth, ""); err == nil {
		t.Error("verifies as a server certificate")
	}
	block, rest := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" || !bytes.Equal(block.Bytes, cert.Raw) || len(bytes.TrimSpace(rest)) != 0 {
		t.Error("PEM is not exactly the certificate")
	}
}

func TestSignDataplaneKeys(t *testing.T) {
	now := testNow()
	f := mustLoad(t, t.TempDir(), now)
	tests := []struct {
		name    string
		key     func(t *testing.T) crypto.Signer
		wantErr string
	}{
		{name: "ECDSA P-256", key: func(t *testing.T) crypto.Signer { return ecKey(t, elliptic.P256()) }},
		{name: "ECDSA P-384", key: func(t *testing.T) crypto.Signer { return ecKey(t, elliptic.P384()) }},
		{name: "Ed25519", key: edKey},
		{name: "RSA 2048", key: func(t *testing.T) crypto.Signer { return rsaKey(t, 2048) }},
		{name: "RSA 1536", key: func(t *testing.T) crypto.Signer { return rsaKey(t, 1536) }, wantErr: "RSA key has 1536 bits"},
		{name: "ECDSA P-521", key: func(t *testing.T) crypto.Signer { return ecKey(t, elliptic.P521()) }, wantErr: "curve P-521"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key(t)
			cert, certPEM, err := f.CA.SignDataplane(newCSR(t, key, nil), "edge-1", 24*time.Hour, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkDataplaneCert(t, f.CA, key, cert, certPEM, "edge-1", now, 24*time.Hour)
		})
	}
}

// The CSR asks for another identity, a CA bit and server use; none of it
// may reach the certificate.
func TestSignDataplaneIgnoresCSRIdentity(t *testing.T) {
	now := testNow()
	f := mustLoad(t, t.TempDir(), now)
	caConstraint, err := asn1.Marshal(struct{ IsCA bool }{true})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := url.Parse(identity.SPIFFEPrefix + "someone-else")
	key := ecKey(t, elliptic.P256())
	csr := newCSR(t, key, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		DNSNames:       []string{"cp.example.test"},
		IPAddresses:    []net.IP{net.ParseIP("10.0.0.1")},
		EmailAddresses: []string{"root@example.test"},
		URIs:           []*url.URL{other},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caConstraint},
		},
	})
	cert, certPEM, err := f.CA.SignDataplane(csr, "edge-2", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	checkDataplaneCert(t, f.CA, key, cert, certPEM, "edge-2", now, time.Hour)
}

func TestSignDataplaneRejects(t *testing.T) {
	now := testNow()
	f := mustLoad(t, t.TempDir(), now)
	good := newCSR(t, edKey(t), nil)
	// An Ed25519 signature is the CSR's last 64 bytes; flip a bit of it.
	badSig := slices.Clone(good)
	badSig[len(badSig)-1] ^= 1
	tests := []struct {
		name    string
		csr     []byte
		nodeID  string
		ttl     time.Duration
		at      time.Time
		wantErr string
	}{
		{name: "bad signature", csr: badSig, wantErr: "CSR signature"},
		{name: "not DER", csr: []byte("junk"), wantErr: "parse CSR"},
		{name: "PEM instead of DER", csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good}), wantErr: "parse CSR"},
		{name: "empty node id", csr: good, nodeID: "-", wantErr: "node id is empty"},
		{name: "slash in node id", csr: good, nodeID: "a/b", wantErr: "must not contain"},
		{name: "non-ASCII node id", csr: good, nodeID: "nöde", wantErr: "round-trip"},
		{name: "zero ttl", csr: good, ttl: -1, wantErr: "not positive"},
		{name: "expired CA", csr: good, at: f.CA.Certificate().NotAfter, wantErr: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodeID, ttl, at := "edge-1", time.Hour, now
			if tt.nodeID == "-" {
				nodeID = ""
			} else if tt.nodeID != "" {
				nodeID = tt.nodeID
			}
			if tt.ttl < 0 {
				ttl = 0
			}
			if !tt.at.IsZero() {
				at = tt.at
			}
			_, _, err := f.CA.SignDataplane(tt.csr, nodeID, ttl, at)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	// The good CSR itself is fine: the failures above are the changes'.
	if _, _, err := f.CA.SignDataplane(good, "edge-1", time.Hour, now); err != nil {
		t.Fatal(err)
	}
}

func TestSignDataplaneSerialsDiffer(t *testing.T) {
	f := mustLoad(t, t.TempDir(), testNow())
	csr := newCSR(t, edKey(t), nil)
	a, _, errA := f.CA.SignDataplane(csr, "n", time.Hour, testNow())
	b, _, errB := f.CA.SignDataplane(csr, "n", time.Hour, testNow())
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if a.SerialNumber.Cmp(b.SerialNumber) == 0 {
		t.Fatal("two certificates share a serial")
	}
}
