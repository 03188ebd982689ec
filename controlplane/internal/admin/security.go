package admin

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// SecurityStore is what the security RPCs need from the store.
type SecurityStore interface {
	CreateJoinToken(ctx context.Context, tok *meridianv1.StoredJoinToken) error
	ListJoinTokens(ctx context.Context) ([]*meridianv1.StoredJoinToken, error)
	DeleteJoinToken(ctx context.Context, id string) error
	RevokeDataplane(ctx context.Context, nodeID, by string, now time.Time, ttl time.Duration) error
	ListAudit(ctx context.Context, since time.Time, limit int) ([]*meridianv1.AuditRecord, error)
}

// maxTokenTTL keeps join tokens short-lived: they are bearer secrets.
const maxTokenTTL = 30 * 24 * time.Hour

// maxLabels bounds the labels a join token gives its data planes.
const maxLabels = 64

// CreateJoinToken makes a join token. Its secret is returned once; the
// store keeps only its hash.
func (s *Server) CreateJoinToken(ctx context.Context, req *meridianv1.CreateJoinTokenRequest) (*meridianv1.CreateJoinTokenResponse, error) {
	if s.opts.Pin == "" {
		return nil, status.Error(codes.FailedPrecondition, "this control plane runs with --insecure: data planes connect without enrolment")
	}
	ttl := s.opts.DefaultTokenTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	if err := checkTokenRequest(ttl, req.GetLabels()); err != nil {
		return nil, err
	}
	tok := identity.JoinToken{ID: randomText(identity.TokenIDLen), Secret: randomText(identity.TokenSecretLen), Pin: s.opts.Pin}
	now := s.opts.Now()
	info := &meridianv1.JoinToken{
		Id: tok.ID, CreatedAt: timestamppb.New(now), CreatedBy: author(ctx, ""),
		ExpiresAt: timestamppb.New(now.Add(ttl)), MaxUses: req.GetMaxUses(), Labels: req.GetLabels(),
	}
	if err := s.store.CreateJoinToken(ctx, &meridianv1.StoredJoinToken{Info: info, SecretSha256: identity.SecretHash(tok.Secret)}); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("join token created", "id", tok.ID, "by", info.GetCreatedBy(), "expires", info.GetExpiresAt().AsTime(), "max_uses", info.GetMaxUses())
	return &meridianv1.CreateJoinTokenResponse{Token: tok.String(), Info: info}, nil
}

func checkTokenRequest(ttl time.Duration, labels map[string]string) error {
	if ttl <= 0 || ttl > maxTokenTTL {
		return status.Errorf(codes.InvalidArgument, "ttl %s: must be more than 0 and at most %s", ttl, maxTokenTTL)
	}
	if len(labels) > maxLabels {
		return status.Errorf(codes.InvalidArgument, "%d labels: at most %d", len(labels), maxLabels)
	}
	for k := range labels {
		if k == "" || strings.ContainsFunc(k, func(r rune) bool { return r < ' ' || r == 0x7f || r == '=' || r == ',' }) {
			return status.Errorf(codes.InvalidArgument, "label key %q: must be non-empty, without '=', ',' or control characters", k)
		}
	}
	return nil
}

// randomText is n lower-case base32 characters from the system's CSPRNG.
func randomText(n int) string {
	b := make([]byte, (n*5+7)/8)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))[:n]
}

// ListJoinTokens lists the tokens, never their secrets.
func (s *Server) ListJoinTokens(ctx context.Context, _ *meridianv1.ListJoinTokensRequest) (*meridianv1.ListJoinTokensResponse, error) {
	stored, err := s.store.ListJoinTokens(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := make([]*meridianv1.JoinToken, len(stored))
	for i, t := range stored {
		out[i] = t.GetInfo()
	}
	return &meridianv1.ListJoinTokensResponse{Tokens: out}, nil
}

// RevokeJoinToken deletes a join token.
func (s *Server) RevokeJoinToken(ctx context.Context, req *meridianv1.RevokeJoinTokenRequest) (*meridianv1.RevokeJoinTokenResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id is required")
	}
	if err := s.store.DeleteJoinToken(ctx, req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("join token revoked", "id", req.GetId(), "by", author(ctx, ""))
	return &meridianv1.RevokeJoinTokenResponse{}, nil
}

// RevokeDataplane cuts a data plane off: every replica closes its streams,
// and its certificates are refused from now on.
func (s *Server) RevokeDataplane(ctx context.Context, req *meridianv1.RevokeDataplaneRequest) (*meridianv1.RevokeDataplaneResponse, error) {
	if err := identity.CheckNodeID(req.GetId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := s.opts.Now()
	// Kept a minute past the longest certificate, for clock skew.
	ttl := s.opts.CertTTL + time.Minute
	if err := s.store.RevokeDataplane(ctx, req.GetId(), author(ctx, ""), now, ttl); err != nil {
		return nil, toStatus(err)
	}
	s.log.Warn("data plane revoked", "node", req.GetId(), "by", author(ctx, ""))
	return &meridianv1.RevokeDataplaneResponse{RefusedUntil: timestamppb.New(now.Add(ttl))}, nil
}

// ListAudit returns audit records, oldest first.
func (s *Server) ListAudit(ctx context.Context, req *meridianv1.ListAuditRequest) (*meridianv1.ListAuditResponse, error) {
	var since time.Time
	if req.GetSince() != nil {
		if err := req.GetSince().CheckValid(); err != nil {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("since: %v", err))
		}
		since = req.GetSince().AsTime()
	}
	recs, err := s.store.ListAudit(ctx, since, int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &meridianv1.ListAuditResponse{Records: recs}, nil
}
