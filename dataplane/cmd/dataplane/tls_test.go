package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meridian-gw/meridian/dataplane/internal/server/servertest"
)

// TestTLSListener runs the program with two certificates and checks that a
// client gets the one for its SNI, speaks HTTP/2 and reaches the upstream
// with X-Forwarded-Proto https.
func TestTLSListener(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
	}))
	defer up.Close()
	dir := t.TempDir()
	aCert, aKey, a := servertest.SelfSigned(t, dir, "a.test")
	bCert, bKey, b := servertest.SelfSigned(t, dir, "b.test")

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
