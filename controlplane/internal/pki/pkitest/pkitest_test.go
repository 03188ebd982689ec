package pkitest

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/proto/identity"
)

func TestClientCert(t *testing.T) {
	f := New(t)
	tc := ClientCert(t, f.CA, "edge-7", time.Hour)
	if len(tc.Certificate) != 1 || tc.Leaf == nil || tc.PrivateKey == nil {
		t.Fatalf("tls.Certificate: %d certificates, leaf %v", len(tc.Certificate), tc.Leaf != nil)
	}
	if id, err := identity.NodeID(tc.Leaf); err != nil || id != "edge-7" {
		t.Errorf("NodeID = %q, %v", id, err)
	}
	opts := x509.VerifyOptions{Roots: f.CA.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := tc.Leaf.Verify(opts); err != nil {
		t.Errorf("verify: %v", err)
	}
	opts.Roots = f.EtcdCA.Pool()
	if _, err := tc.Leaf.Verify(opts); err == nil {
		t.Error("a dataplane certificate verifies against the etcd CA")
	}
}
