package enrolment

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/pki/pkitest"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// fakeStore records what it was asked and answers err.
type fakeStore struct {
	err       error
	enrolled  *meridianv1.Identity
	secret    string
	presented string
}

func (f *fakeStore) EnrolIdentity(_ context.Context, _, secret string, id *meridianv1.Identity, _ time.Time) (*meridianv1.StoredJoinToken, error) {
	f.enrolled, f.secret = id, secret
	return &meridianv1.StoredJoinToken{}, f.err
}

func (f *fakeStore) RenewIdentity(_ context.Context, _, presented, _ string, _ time.Time) (*meridianv1.Identity, error) {
	f.presented = presented
	return &meridianv1.Identity{}, f.err
}

func csr(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func leafOf(t *testing.T, chain []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(chain)
	if block == nil {
		t.Fatal("no PEM in the chain")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestEnrol(t *testing.T) {
	files := pkitest.New(t)
	tokenCtx := auth.NewContext(context.Background(), &auth.Caller{JoinToken: identity.JoinToken{ID: "abcdefgh", Secret: "s3cret"}})
	tests := []struct {
		name     string
		ctx      context.Context
		node     string
		csr      []byte
		storeErr error
		code     codes.Code
	}{
		{"enrolled", tokenCtx, "dp-1", csr(t), nil, codes.OK},
		{"no join token", context.Background(), "dp-1", csr(t), nil, codes.Unauthenticated},
		{"bad node id", tokenCtx, "dp/1", csr(t), nil, codes.InvalidArgument},
		{"garbage csr", tokenCtx, "dp-1", []byte("nope"), nil, codes.InvalidArgument},
		{"token refused", tokenCtx, "dp-1", csr(t), fmt.Errorf("%w: join token abcdefgh expired", store.ErrDenied), codes.PermissionDenied},
		{"node connected elsewhere", tokenCtx, "dp-1", csr(t), fmt.Errorf("%w: data plane dp-1 is connected", store.ErrConflict), codes.AlreadyExists},
		{"etcd down", tokenCtx, "dp-1", csr(t), store.ErrUnavailable, codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &fakeStore{err: tt.storeErr}
			s := NewServer(st, files.CA, Options{CertTTL: time.Hour, CABundle: files.CA.CertPEM()})
			resp, err := s.Enrol(tt.ctx, &meridianv1.EnrolRequest{NodeId: tt.node, Csr: tt.csr})
			if status.Code(err) != tt.code {
				t.Fatalf("Enrol: %v, want %v", err, tt.code)
			}
			if err != nil {
				return
			}
			leaf := leafOf(t, resp.GetCertificateChain())
			if id, err := identity.NodeID(leaf); err != nil || id != "dp-1" {
				t.Fatalf("certificate identity %q, %v", id, err)
			}
			if st.secret != "s3cret" || st.enrolled.GetSerial() != leaf.SerialNumber.String() || string(resp.GetCaBundle()) != string(files.CA.CertPEM()) {
				t.Fatalf("store got %v (secret %q); CA bundle %q", st.enrolled, st.secret, resp.GetCaBundle())
			}
		})
	}
}

func TestRenewKeepsTheCallersIdentity(t *testing.T) {
	files := pkitest.New(t)
	current := leafOf(t, mustSign(t, files.CA, "dp-1"))
	ctx := auth.NewContext(context.Background(), &auth.Caller{NodeID: "dp-1", Certificate: current})
	st := &fakeStore{}
	s := NewServer(st, files.CA, Options{CertTTL: time.Hour})
	resp, err := s.Renew(ctx, &meridianv1.RenewRequest{Csr: csr(t)})
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := identity.NodeID(leafOf(t, resp.GetCertificateChain())); id != "dp-1" || st.presented != current.SerialNumber.String() {
		t.Fatalf("renewed for %q presenting %q", id, st.presented)
	}
	if _, err := s.Renew(context.Background(), &meridianv1.RenewRequest{Csr: csr(t)}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Renew without a certificate: %v", err)
	}
	st.err = fmt.Errorf("%w: revoked", store.ErrDenied)
	if _, err := s.Renew(ctx, &meridianv1.RenewRequest{Csr: csr(t)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Renew of a revoked node: %v", err)
	}
}

func mustSign(t *testing.T, ca Signer, node string) []byte {
	t.Helper()
	_, chain, err := ca.SignDataplane(csr(t), node, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return chain
}
