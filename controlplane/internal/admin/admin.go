// Package admin implements the operators' AdminService on top of the
// configuration store.
package admin

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Store is what the admin API needs from the configuration store.
type Store interface {
	Apply(ctx context.Context, in store.ApplyInput) (uint64, []*meridianv1.Change, error)
	Get(ctx context.Context, kind, name string) (*meridianv1.Resource, uint64, error)
	List(ctx context.Context, kind string) ([]*meridianv1.Resource, uint64, error)
	Delete(ctx context.Context, kind, name, message, author string, expectedVersion uint64) (uint64, error)
	History(ctx context.Context, limit int) ([]*meridianv1.HistoryEntry, error)
	Rollback(ctx context.Context, target uint64, message, author string) (uint64, uint64, []*meridianv1.Change, error)
	ListDataplanes(ctx context.Context) ([]*meridianv1.DataplaneStatus, uint64, error)
	SecurityStore
}

// Server implements meridianv1.AdminServiceServer.
type Server struct {
	meridianv1.UnimplementedAdminServiceServer

	store Store
	opts  Options
	log   *slog.Logger
}

// Options configure a Server.
type Options struct {
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Pin is the CA pin join tokens carry (identity.Pin of the CA the
	// control plane presents). Empty: join tokens cannot be made
	// (--insecure).
	Pin string
	// DefaultTokenTTL applies when a join token is made without a ttl.
	// One hour when zero.
	DefaultTokenTTL time.Duration
	// CertTTL is the lifetime of data-plane certificates: a revocation is
	// kept that long, until every certificate it refuses has expired.
	CertTTL time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// NewServer returns the admin API over st.
func NewServer(st Store, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DefaultTokenTTL <= 0 {
		opts.DefaultTokenTTL = time.Hour
	}
	if opts.CertTTL <= 0 {
		opts.CertTTL = 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Server{store: st, opts: opts, log: opts.Logger}
}

// author is who a change is recorded as: the authenticated principal. Only
// an --insecure control plane, which authenticates nobody, records what the
// client claims, marked as such.
func author(ctx context.Context, claimed string) string {
	c, ok := auth.FromContext(ctx)
	switch {
	case !ok:
		return "unknown"
	case c.Insecure:
		return cmp.Or(claimed, "unknown") + " (unauthenticated)"
	}
	return c.Principal
}

// Apply validates (the store always validates the whole resulting
// configuration, whatever the client checked) and stores resources.
// Changes come without diffs; Diff has them.
func (s *Server) Apply(ctx context.Context, req *meridianv1.ApplyRequest) (*meridianv1.ApplyResponse, error) {
	if len(req.GetResources()) == 0 && !req.GetPrune() {
		return nil, status.Error(codes.InvalidArgument, "no resources to apply")
	}
	who := author(ctx, req.GetAuthor())
	version, changes, err := s.store.Apply(ctx, store.ApplyInput{
		Resources:       req.GetResources(),
		Prune:           req.GetPrune(),
		Message:         req.GetMessage(),
		Author:          who,
		ExpectedVersion: req.GetExpectedVersion(),
		DryRun:          req.GetDryRun(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	for _, c := range changes {
		c.Diff = ""
	}
	switch {
	case req.GetDryRun() && countChanged(changes) > 0:
		version++ // the version the change would get, applied now
	case !req.GetDryRun():
		s.log.Info("configuration applied", "version", version, "author", who, "changes", countChanged(changes))
	}
	return &meridianv1.ApplyResponse{Version: version, Changes: changes, DryRun: req.GetDryRun()}, nil
}

// Diff reports what Apply would change, with unified diffs.
func (s *Server) Diff(ctx context.Context, req *meridianv1.DiffRequest) (*meridianv1.DiffResponse, error) {
	version, changes, err := s.store.Apply(ctx, store.ApplyInput{
		Resources: req.GetResources(),
		Prune:     req.GetPrune(),
		DryRun:    true,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &meridianv1.DiffResponse{Version: version, Changes: changes}, nil
}

// Get returns one resource.
func (s *Server) Get(ctx context.Context, req *meridianv1.GetRequest) (*meridianv1.GetResponse, error) {
	kind, err := parseKind(req.GetKind())
	if err != nil {
		return nil, err
	}
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	r, version, err := s.store.Get(ctx, kind, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &meridianv1.GetResponse{Resource: r, Version: version}, nil
}

// List returns every resource, or those of one kind.
func (s *Server) List(ctx context.Context, req *meridianv1.ListRequest) (*meridianv1.ListResponse, error) {
	kind := ""
	if req.GetKind() != "" {
		var err error
		if kind, err = parseKind(req.GetKind()); err != nil {
			return nil, err
		}
	}
	rs, version, err := s.store.List(ctx, kind)
	if err != nil {
		return nil, toStatus(err)
	}
	return &meridianv1.ListResponse{Resources: rs, Version: version}, nil
}

// Delete removes one resource as a new version.
func (s *Server) Delete(ctx context.Context, req *meridianv1.DeleteRequest) (*meridianv1.DeleteResponse, error) {
	kind, err := parseKind(req.GetKind())
	if err != nil {
		return nil, err
	}
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	who := author(ctx, req.GetAuthor())
	version, err := s.store.Delete(ctx, kind, req.GetName(), req.GetMessage(), who, req.GetExpectedVersion())
	if err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("resource deleted", "version", version, "author", who, "kind", kind, "name", req.GetName())
	return &meridianv1.DeleteResponse{Version: version}, nil
}

// History lists recorded versions, newest first.
func (s *Server) History(ctx context.Context, req *meridianv1.HistoryRequest) (*meridianv1.HistoryResponse, error) {
	entries, err := s.store.History(ctx, int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &meridianv1.HistoryResponse{Entries: entries}, nil
}

// Rollback restores an earlier version as a new one.
func (s *Server) Rollback(ctx context.Context, req *meridianv1.RollbackRequest) (*meridianv1.RollbackResponse, error) {
	who := author(ctx, req.GetAuthor())
	version, restored, changes, err := s.store.Rollback(ctx, req.GetVersion(), req.GetMessage(), who)
	if err != nil {
		return nil, toStatus(err)
	}
	for _, c := range changes {
		c.Diff = ""
	}
	s.log.Info("configuration rolled back", "version", version, "restored", restored, "author", who)
	return &meridianv1.RollbackResponse{Version: version, RestoredVersion: restored, Changes: changes}, nil
}

// ListDataplanes reports the whole fleet, whichever replica serves it.
func (s *Server) ListDataplanes(ctx context.Context, _ *meridianv1.ListDataplanesRequest) (*meridianv1.ListDataplanesResponse, error) {
	dps, current, err := s.store.ListDataplanes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &meridianv1.ListDataplanesResponse{Dataplanes: dps, CurrentVersion: current}, nil
}

func parseKind(kind string) (string, error) {
	k, err := config.ParseKind(kind)
	if err != nil {
		return "", status.Error(codes.InvalidArgument, err.Error())
	}
	return k, nil
}

func countChanged(cs []*meridianv1.Change) int {
	n := 0
	for _, c := range cs {
		if c.GetAction() != meridianv1.ChangeAction_CHANGE_ACTION_UNCHANGED {
			n++
		}
	}
	return n
}

// maxErrorDetails bounds the ConfigError details of one status, which
// travel in a trailer; gatewayctl shows config.MaxReported of them.
const maxErrorDetails = 1000

// toStatus maps store errors to gRPC codes. Configuration problems keep
// the ErrorList text (one problem per line) as the message and carry each
// problem as a meridianv1.ConfigError detail.
func toStatus(err error) error {
	var list config.ErrorList
	switch {
	case errors.As(err, &list):
		st := status.New(codes.InvalidArgument, list.Error())
		details := make([]protoadapt.MessageV1, 0, min(len(list), maxErrorDetails))
		for _, fe := range list[:min(len(list), maxErrorDetails)] {
			details = append(details, protoadapt.MessageV1Of(fe.Proto()))
		}
		if withDetails, derr := st.WithDetails(details...); derr == nil {
			st = withDetails
		}
		return st.Err()
	case errors.Is(err, store.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrContention):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, store.ErrDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrTooLarge):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, store.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}
