package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"testing"
	"time"
)

// testNow is a fixed instant, whole seconds, as certificates store time.
func testNow() time.Time { return time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC) }

func mustLoad(t *testing.T, dir string, now time.Time) *Files {
	t.Helper()
	f, _, err := Load(dir, now)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return f
}

func newCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

func ecKey(t *testing.T, curve elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func edKey(t *testing.T) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t *testing.T, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verify checks cert against pool at now for one usage and, if host is
// set, that host.
func verify(cert *x509.Certificate, pool *x509.CertPool, now time.Time, usage x509.ExtKeyUsage, host string) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, DNSName: host, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCert(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
