package etcdclient_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-gw/meridian/controlplane/internal/etcdclient"
	"github.com/meridian-gw/meridian/proto/config"
)

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, "a")
	_, otherKey := writeSelfSigned(t, dir, "b")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	endpoints := []string{"127.0.0.1:2379"}
	tests := []struct {
		name      string
		endpoints []string
		files     etcdclient.Files
		user      string
		password  string
		wantErr   string // "" = no error
		check     func(t *testing.T, cfg clientv3.Config)
	}{
		{name: "plaintext", endpoints: endpoints, check: func(t *testing.T, cfg clientv3.Config) {
			if cfg.TLS != nil {
				t.Error("TLS set without files")
			}
		}},
		{name: "CA only verifies the server", endpoints: endpoints, files: etcdclient.Files{CA: cert}, check: func(t *testing.T, cfg clientv3.Config) {
			if cfg.TLS == nil || cfg.TLS.RootCAs == nil || len(cfg.TLS.Certificates) != 0 {
				t.Errorf("TLS = %+v, want roots and no client certificate", cfg.TLS)
			}
		}},
		{name: "client cert with system roots", endpoints: endpoints, files: etcdclient.Files{Cert: cert, Key: key}, check: func(t *testing.T, cfg clientv3.Config) {
			if cfg.TLS == nil || cfg.TLS.RootCAs != nil || len(cfg.TLS.Certificates) != 1 {
				t.Errorf("TLS = %+v, want a client certificate and system roots", cfg.TLS)
			}
		}},
		{name: "CA and client cert", endpoints: endpoints, files: etcdclient.Files{CA: cert, Cert: cert, Key: key}, check: func(t *testing.T, cfg clientv3.Config) {
			if cfg.TLS == nil || cfg.TLS.RootCAs == nil || len(cfg.TLS.Certificates) != 1 {
				t.Errorf("TLS = %+v, want roots and a client certificate", cfg.TLS)
			}
		}},
		{name: "credentials", endpoints: endpoints, user: "meridian", password: "s3cret", check: func(t *testing.T, cfg clientv3.Config) {
			if cfg.Username != "meridian" || cfg.Password != "s3cret" {
				t.Errorf("credentials = %q/%q", cfg.Username, cfg.Password)
			}
		}},
		{name: "no endpoints", wantErr: "no etcd endpoints"},
		{name: "cert without key", endpoints: endpoints, files: etcdclient.Files{Cert: cert}, wantErr: "--etcd-cert and --etcd-key"},
		{name: "key without cert", endpoints: endpoints, files: etcdclient.Files{CA: cert, Key: key}, wantErr: "--etcd-cert and --etcd-key"},
		{name: "missing CA file", endpoints: endpoints, files: etcdclient.Files{CA: filepath.Join(dir, "nope.crt")}, wantErr: "etcd CA"},
		{name: "CA file without PEM", endpoints: endpoints, files: etcdclient.Files{CA: notPEM}, wantErr: "no PEM certificates"},
		{name: "key of another cert", endpoints: endpoints, files: etcdclient.Files{Cert: cert, Key: otherKey}, wantErr: "etcd client certificate"},
		{name: "password without user", endpoints: endpoints, password: "s3cret", wantErr: "without a username"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := etcdclient.Config(tt.endpoints, tt.files, tt.user, tt.password)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Config: %v, want an error containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "PRIVATE KEY") {
					t.Fatalf("error leaks a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Config: %v", err)
			}
			sameBasics(t, cfg, tt.endpoints)
			tt.check(t, cfg)
		})
	}
}

// sameBasics checks what every configuration has whatever the files.
func sameBasics(t *testing.T, cfg clientv3.Config, endpoints []string) {
	t.Helper()
	if strings.Join(cfg.Endpoints, ",") != strings.Join(endpoints, ",") {
		t.Errorf("endpoints = %v, want %v", cfg.Endpoints, endpoints)
	}
	if cfg.DialTimeout != 5*time.Second || cfg.Logger == nil {
		t.Errorf("dial timeout %v, logger %v; want 5s and a logger", cfg.DialTimeout, cfg.Logger)
	}
	// An apply's transaction carries the changes and the whole
	// configuration again in its history record.
	if floor := 2 * config.MaxApplyBytes; cfg.MaxCallSendMsgSize <= floor || cfg.MaxCallRecvMsgSize <= floor {
		t.Errorf("message limits %d/%d, want above %d", cfg.MaxCallSendMsgSize, cfg.MaxCallRecvMsgSize, floor)
	}
	if cfg.TLS != nil && cfg.TLS.MinVersion < tls.VersionTLS12 {
		t.Errorf("TLS minimum version %x, want at least 1.2", cfg.TLS.MinVersion)
	}
}

// writeSelfSigned writes name.crt (a self-signed CA certificate usable as a
// client certificate) and name.key in dir and returns their paths.
func writeSelfSigned(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	for path, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}
