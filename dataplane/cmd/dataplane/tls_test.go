package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate for name and its key to dir.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	return certFile, keyFile, cert
}

// TestTLSListener runs the program with two certificates and checks that a
// client gets the one for its SNI, speaks HTTP/2 and reaches the upstream
// with X-Forwarded-Proto https.
func TestTLSListener(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
	}))
	defer up.Close()
	dir := t.TempDir()
	aCert, aKey, a := writeCert(t, dir, "a.test")
	bCert, bKey, b := writeCert(t, dir, "b.test")

	ctx, cancel := context.WithCancel(context.Background())
	addrs, done := bootFromCache(t, ctx, strings.TrimPrefix(up.URL, "http://"),
		"--tls-listen", "127.0.0.1:0", "--tls-cert", aCert+","+bCert, "--tls-key", aKey, "--tls-key", bKey)
	defer func() {
		cancel()
		<-done
	}()
	tlsAddr := addrs["dataplane TLS"]
	if tlsAddr == "" {
		t.Fatalf("no TLS listener in %v", addrs)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a)
	roots.AddCert(b)
	for _, name := range []string{"a.test", "b.test"} {
		tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{ServerName: name, RootCAs: roots}}
		resp, err := (&http.Client{Transport: tr}).Get("https://" + tlsAddr + "/")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.ProtoMajor != 2 || string(body) != "https" || resp.TLS.PeerCertificates[0].DNSNames[0] != name {
			t.Errorf("%s: %s, upstream saw proto %q, certificate %v", name, resp.Proto, body, resp.TLS.PeerCertificates[0].DNSNames)
		}
	}
}

func TestMissingCertificateExits(t *testing.T) {
	var stderr strings.Builder
	code := run(context.Background(), []string{"--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key", "--cache-dir", t.TempDir()}, env(nil), io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "/nonexistent.crt") {
		t.Errorf("code %d, stderr %q", code, stderr.String())
	}
}
