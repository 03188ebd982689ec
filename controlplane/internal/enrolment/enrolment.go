// Package enrolment serves IdentityService: it signs a data plane's first
// client certificate in exchange for a join token, and renews it for the
// holder of the current one.
package enrolment

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Store records identities.
type Store interface {
	EnrolIdentity(ctx context.Context, tokenID, secret string, id *meridianv1.Identity, now time.Time) (*meridianv1.StoredJoinToken, error)
	RenewIdentity(ctx context.Context, nodeID, presented, serial string, notAfter time.Time) (*meridianv1.Identity, error)
}

// Signer signs data-plane certificates; the cluster CA implements it.
type Signer interface {
	SignDataplane(csrDER []byte, nodeID string, ttl time.Duration, now time.Time) (*x509.Certificate, []byte, error)
}

// Options configure a Server.
type Options struct {
	// CertTTL is the lifetime of the certificates signed. 24h when zero.
	CertTTL time.Duration
	// CABundle is PEM of what verifies the control plane from now on.
	CABundle []byte
	Logger   *slog.Logger
	Now      func() time.Time
}

// Server implements meridianv1.IdentityServiceServer.
type Server struct {
	meridianv1.UnimplementedIdentityServiceServer

	store  Store
	signer Signer
	opts   Options
}

// NewServer returns the identity service.
func NewServer(st Store, signer Signer, opts Options) *Server {
	if opts.CertTTL <= 0 {
		opts.CertTTL = 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Server{store: st, signer: signer, opts: opts}
}

// maxCSRBytes bounds a certificate request; real ones are under 1 KiB.
const maxCSRBytes = 16 << 10

// Enrol signs a certificate for a new data plane holding a join token.
func (s *Server) Enrol(ctx context.Context, req *meridianv1.EnrolRequest) (*meridianv1.EnrolResponse, error) {
	c, ok := auth.FromContext(ctx)
	if !ok || c.JoinToken.ID == "" {
		return nil, status.Error(codes.Unauthenticated, "a join token is required")
	}
	if err := identity.CheckNodeID(req.GetNodeId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := s.opts.Now()
	cert, chain, err := s.sign(req.GetCsr(), req.GetNodeId(), now)
	if err != nil {
		return nil, err
	}
	id := &meridianv1.Identity{
		NodeId: req.GetNodeId(), Serial: cert.SerialNumber.String(),
		NotAfter: timestamppb.New(cert.NotAfter), EnrolledAt: timestamppb.New(now),
	}
	if _, err := s.store.EnrolIdentity(ctx, c.JoinToken.ID, c.JoinToken.Secret, id, now); err != nil {
		return nil, toStatus(err)
	}
	s.opts.Logger.Info("data plane enrolled", "node", req.GetNodeId(), "token", c.JoinToken.ID, "not_after", cert.NotAfter)
	return &meridianv1.EnrolResponse{CertificateChain: chain, CaBundle: s.opts.CABundle, NotAfter: timestamppb.New(cert.NotAfter)}, nil
}

// Renew signs a fresh certificate for the caller's own node id.
func (s *Server) Renew(ctx context.Context, req *meridianv1.RenewRequest) (*meridianv1.RenewResponse, error) {
	c, ok := auth.FromContext(ctx)
	if !ok || c.NodeID == "" {
		return nil, status.Error(codes.Unauthenticated, "a data-plane client certificate is required")
	}
	now := s.opts.Now()
	cert, chain, err := s.sign(req.GetCsr(), c.NodeID, now)
	if err != nil {
		return nil, err
	}
	if _, err := s.store.RenewIdentity(ctx, c.NodeID, c.Certificate.SerialNumber.String(), cert.SerialNumber.String(), cert.NotAfter); err != nil {
		return nil, toStatus(err)
	}
	s.opts.Logger.Info("data-plane certificate renewed", "node", c.NodeID, "not_after", cert.NotAfter)
	return &meridianv1.RenewResponse{CertificateChain: chain, CaBundle: s.opts.CABundle, NotAfter: timestamppb.New(cert.NotAfter)}, nil
}

func (s *Server) sign(csr []byte, nodeID string, now time.Time) (*x509.Certificate, []byte, error) {
	if len(csr) == 0 || len(csr) > maxCSRBytes {
		return nil, nil, status.Errorf(codes.InvalidArgument, "csr: want a DER certificate request of at most %d bytes", maxCSRBytes)
	}
	cert, chain, err := s.signer.SignDataplane(csr, nodeID, s.opts.CertTTL, now)
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	return cert, chain, nil
}

func toStatus(err error) error {
	switch {
	case errors.Is(err, store.ErrDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}
