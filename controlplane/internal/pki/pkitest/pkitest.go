// Package pkitest gives other packages' tests a throwaway control-plane
// PKI and data-plane client certificates signed by it.
package pkitest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/controlplane/internal/pki"
)

// New returns a fresh Files in t.TempDir() (Load with time.Now()).
func New(t testing.TB) *pki.Files {
	t.Helper()
	f, _, err := pki.Load(t.TempDir(), time.Now())
	if err != nil {
		t.Fatalf("pki.Load: %v", err)
	}
	return f
}

// ClientCert signs a dataplane client certificate for nodeID with a fresh
// key and returns it as tls.Certificate (chain: leaf).
func ClientCert(t testing.TB, ca *pki.Authority, nodeID string, ttl time.Duration) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	cert, _, err := ca.SignDataplane(csr, nodeID, ttl, time.Now())
	if err != nil {
		t.Fatalf("sign client certificate for %q: %v", nodeID, err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}
