// Package audit records every admin call that changes something and every
// call the control plane refuses: one JSON log line each, and a record in
// etcd (kept for a bounded time) that `gatewayctl audit` reads.
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Store keeps audit records.
type Store interface {
	AppendAudit(ctx context.Context, rec *meridianv1.AuditRecord) error
	PruneAudit(ctx context.Context, before time.Time) (int64, error)
}

// Options configure a Log.
type Options struct {
	// Retention is how long records stay in etcd. 30 days when zero.
	Retention time.Duration
	// Replica names this control plane in the records.
	Replica string
	Logger  *slog.Logger
}

// Outcomes of a recorded call.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
)

// queueLen bounds the records waiting for etcd; past it records are only
// logged (a flood of refused calls must not grow memory).
const queueLen = 1024

// writeTimeout bounds one record's write.
const writeTimeout = 5 * time.Second

// pruneEvery is how often records past the retention are deleted.
const pruneEvery = time.Hour

// Log is the audit log. Run writes its records; Record and the interceptor
// feed it.
type Log struct {
	store   Store
	opts    Options
	queue   chan *meridianv1.AuditRecord
	dropped atomic.Int64
	now     func() time.Time
}

// New returns a Log writing to store.
func New(store Store, opts Options) *Log {
	if opts.Retention <= 0 {
		opts.Retention = 30 * 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Log{store: store, opts: opts, queue: make(chan *meridianv1.AuditRecord, queueLen), now: time.Now}
}

// Record logs rec and queues it for etcd, never blocking.
func (l *Log) Record(rec *meridianv1.AuditRecord) {
	if rec.Time == nil {
		rec.Time = timestamppb.New(l.now())
	}
	rec.Controlplane = l.opts.Replica
	level := slog.LevelInfo
	if rec.GetOutcome() != OutcomeOK {
		level = slog.LevelWarn
	}
	l.opts.Logger.Log(context.Background(), level, "audit",
		"principal", rec.GetPrincipal(), "role", rec.GetRole(), "method", rec.GetMethod(), "target", rec.GetTarget(),
		"outcome", rec.GetOutcome(), "version", rec.GetVersion(), "peer", rec.GetPeerAddress(), "message", rec.GetMessage())
	select {
	case l.queue <- rec:
	default:
		l.dropped.Add(1)
	}
}

// Denied records a call the tap handle refused; it fits auth.Options.OnDenied.
func (l *Log) Denied(d auth.Denial) {
	l.Record(&meridianv1.AuditRecord{
		Principal: d.Principal, Role: roleName(d.Role), Method: d.Method,
		Outcome: OutcomeDenied, PeerAddress: d.Peer, Message: auth.Describe(d.Err),
	})
}

// Run writes queued records until ctx is done, and prunes old ones.
func (l *Log) Run(ctx context.Context) {
	ticker := time.NewTicker(pruneEvery)
	defer ticker.Stop()
	l.prune(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case rec := <-l.queue:
			l.write(ctx, rec)
		case <-ticker.C:
			l.prune(ctx)
		}
	}
}

func (l *Log) write(ctx context.Context, rec *meridianv1.AuditRecord) {
	if n := l.dropped.Swap(0); n > 0 {
		l.opts.Logger.Warn("audit records not stored in etcd: too many at once (they were logged)", "dropped", n)
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := l.store.AppendAudit(wctx, rec); err != nil && ctx.Err() == nil {
		l.opts.Logger.Warn("audit record not stored in etcd (it was logged)", "err", err, "method", rec.GetMethod())
	}
}

func (l *Log) prune(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	n, err := l.store.PruneAudit(pctx, l.now().Add(-l.opts.Retention))
	switch {
	case err != nil && ctx.Err() == nil:
		l.opts.Logger.Warn("pruning audit records", "err", err)
	case n > 0:
		l.opts.Logger.Info("pruned audit records", "deleted", n, "retention", l.opts.Retention.String())
	}
}

// UnaryInterceptor records every mutating admin call that passed the tap
// handle, with its outcome, target and resulting version.
func (l *Log) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if !audited(info.FullMethod, req) && !refused(err) {
			return resp, err
		}
		rec := l.outcome(ctx, info.FullMethod, err)
		rec.Target, rec.Version = Target(req, resp), resultVersion(resp)
		l.Record(rec)
		return resp, err
	}
}

// StreamInterceptor records streams their handler refused (a data plane
// whose certificate is not its node's, or was revoked).
func (l *Log) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		if refused(err) {
			l.Record(l.outcome(ss.Context(), info.FullMethod, err))
		}
		return err
	}
}

// outcome is the record of a call that ended with err.
func (l *Log) outcome(ctx context.Context, method string, err error) *meridianv1.AuditRecord {
	rec := &meridianv1.AuditRecord{Method: method, Outcome: OutcomeOK, PeerAddress: peerAddr(ctx)}
	if c, ok := auth.FromContext(ctx); ok {
		rec.Principal, rec.Role = c.Principal, roleName(c.Role)
	}
	switch {
	case refused(err):
		rec.Outcome, rec.Message = OutcomeDenied, firstLine(auth.Describe(err))
	case err != nil:
		rec.Outcome, rec.Message = strings.ToLower(status.Code(err).String()), firstLine(status.Convert(err).Message())
	}
	return rec
}

// refused reports a call its handler turned away for who made it.
func refused(err error) bool {
	c := status.Code(err)
	return c == codes.PermissionDenied || c == codes.Unauthenticated
}

// audited: mutating admin calls (a dry run changes nothing) and enrolments.
func audited(method string, req any) bool {
	if r, ok := req.(*meridianv1.ApplyRequest); ok && r.GetDryRun() {
		return false
	}
	return auth.Mutating(method) || method == meridianv1.IdentityService_Enrol_FullMethodName
}

func roleName(r auth.Role) string {
	if r == auth.RoleNone {
		return ""
	}
	return r.String()
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func firstLine(s string) string {
	first, rest, more := strings.Cut(s, "\n")
	if more {
		return fmt.Sprintf("%s (and %d more lines)", first, strings.Count(rest, "\n")+1)
	}
	return first
}

// maxTargets bounds how many resources an apply's target names.
const maxTargets = 5

// Target names what a call acted on.
func Target(req, resp any) string {
	switch r := req.(type) {
	case *meridianv1.ApplyRequest:
		return resourcesTarget(r.GetResources(), r.GetPrune())
	case *meridianv1.DeleteRequest:
		return r.GetKind() + "/" + r.GetName()
	case *meridianv1.RollbackRequest:
		if r.GetVersion() == 0 {
			return "previous version"
		}
		return fmt.Sprintf("version %d", r.GetVersion())
	case *meridianv1.RevokeDataplaneRequest:
		return "dataplane/" + r.GetId()
	case *meridianv1.RevokeJoinTokenRequest:
		return "join-token/" + r.GetId()
	case *meridianv1.CreateJoinTokenRequest:
		if t, ok := resp.(*meridianv1.CreateJoinTokenResponse); ok && t != nil {
			return "join-token/" + t.GetInfo().GetId()
		}
		return "join-token"
	case *meridianv1.EnrolRequest:
		return "dataplane/" + r.GetNodeId()
	}
	return ""
}

func resourcesTarget(rs []*meridianv1.Resource, prune bool) string {
	var names []string
	for i, r := range rs {
		if i == maxTargets {
			names = append(names, fmt.Sprintf("and %d more", len(rs)-maxTargets))
			break
		}
		names = append(names, config.Key(r))
	}
	if prune {
		names = append(names, "(prune)")
	}
	return strings.Join(names, ", ")
}

func resultVersion(resp any) uint64 {
	if v, ok := resp.(interface{ GetVersion() uint64 }); ok {
		return v.GetVersion()
	}
	return 0
}
