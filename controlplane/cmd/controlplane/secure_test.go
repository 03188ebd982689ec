package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// ctlConfig is the gatewayctl.yaml a secure control plane writes on its
// first start.
type ctlConfig struct {
	Server string `yaml:"server"`
	CA     string `yaml:"ca"`
	Token  string `yaml:"token"`
}

func readCtlConfig(t *testing.T, dataDir string) ctlConfig {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dataDir, "gatewayctl.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c ctlConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// dialTLS connects to addr trusting caPEM, presenting cert when given.
func dialTLS(t *testing.T, addr string, caPEM []byte, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA in PEM")
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// withToken adds the bearer token to ctx.
func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// enrol makes a join token with the admin client and enrols nodeID with
// it, as a data plane does, returning the client certificate.
func enrol(ctx context.Context, t *testing.T, admin meridianv1.AdminServiceClient, conn *grpc.ClientConn, adminToken, nodeID string) tls.Certificate {
	t.Helper()
	tok, err := admin.CreateJoinToken(withToken(ctx, adminToken), &meridianv1.CreateJoinTokenRequest{MaxUses: 1})
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := meridianv1.NewIdentityServiceClient(conn).Enrol(withToken(ctx, tok.GetToken()), &meridianv1.EnrolRequest{NodeId: nodeID, Csr: csr})
	if err != nil {
		t.Fatalf("Enrol: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(resp.GetCertificateChain(), pemBlock("PRIVATE KEY", keyDER))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
