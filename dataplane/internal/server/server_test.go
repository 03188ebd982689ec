package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-gw/meridian/dataplane/internal/server"
	"github.com/meridian-gw/meridian/dataplane/internal/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTLSBySNIWithHTTP2(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey, _ := servertest.SelfSigned(t, dir, "a.test")
	bCert, bKey, _ := servertest.SelfSigned(t, dir, "b.test", "*.b.test")
	certs, err := server.LoadCertificates([]string{aCert, bCert}, []string{aKey, bKey})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, c := range certs {
		roots.AddCert(c.Leaf)
	}

	srv := server.New(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}), server.Config{Certificates: certs, ReadHeaderTimeout: 10 * time.Second})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	}()
	addr := ln.Addr().String()

	tests := []struct {
		name     string
		sni      string
		wantCert string
		verify   bool
	}{
		{name: "first certificate by name", sni: "a.test", wantCert: "a.test", verify: true},
		{name: "second certificate by name", sni: "b.test", wantCert: "b.test", verify: true},
		{name: "second certificate by wildcard", sni: "x.b.test", wantCert: "b.test", verify: true},
		{name: "unknown name gets the first", sni: "unknown.test", wantCert: "a.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &http.Transport{
				ForceAttemptHTTP2: true,
				TLSClientConfig:   &tls.Config{ServerName: tt.sni, RootCAs: roots, InsecureSkipVerify: !tt.verify}, //nolint:gosec // checks the served certificate itself
			}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if got := resp.TLS.PeerCertificates[0].Subject.CommonName; got != tt.wantCert {
				t.Errorf("certificate = %q, want %q", got, tt.wantCert)
			}
			if resp.ProtoMajor != 2 || string(body) != "HTTP/2.0" || resp.TLS.NegotiatedProtocol != "h2" {
				t.Errorf("protocol = %s (server saw %s, ALPN %q), want HTTP/2", resp.Proto, body, resp.TLS.NegotiatedProtocol)
			}
		})
	}
}

func TestLoadCertificatesErrors(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := servertest.SelfSigned(t, dir, "a.test")
	tests := []struct {
		name         string
		certs, keys  []string
		wantContains string
	}{
		{name: "unpaired", certs: []string{cert}, wantContains: "pairs"},
		{name: "missing file", certs: []string{filepath.Join(dir, "nope.pem")}, keys: []string{key}, wantContains: "nope.pem"},
		{name: "key of another kind", certs: []string{cert}, keys: []string{cert}, wantContains: "a.test.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := server.LoadCertificates(tt.certs, tt.keys)
			if err == nil || !strings.Contains(err.Error(), tt.wantContains) {
				t.Errorf("err = %v, want one containing %q", err, tt.wantContains)
			}
		})
	}
}

func TestReadinessWrap(t *testing.T) {
	admin := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "admin "+r.URL.Path) })
	var rd server.Readiness
	h := rd.Wrap(admin)
	tests := []struct {
		name       string
		drain      bool
		path       string
		wantStatus int
		wantBody   string
	}{
		{name: "ready before drain", path: "/readyz", wantStatus: 200, wantBody: "admin /readyz"},
		{name: "readyz during drain", drain: true, path: "/readyz", wantStatus: 503, wantBody: `{"status":"draining"}`},
		{name: "other endpoints during drain", drain: true, path: "/healthz", wantStatus: 200, wantBody: "admin /healthz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.drain {
				rd.StartDrain()
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", tt.path, nil))
			if rec.Code != tt.wantStatus || strings.TrimSpace(rec.Body.String()) != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", rec.Code, rec.Body, tt.wantStatus, tt.wantBody)
			}
		})
	}
}

func TestProtections(t *testing.T) {
	srv := server.New(http.NotFoundHandler(), server.Config{ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 1 << 10})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	defer func() {
		srv.Shutdown(context.Background())
		<-served
	}()
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 8<<10))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status = %d, want 431", resp.StatusCode)
	}
}
