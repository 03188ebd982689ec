package auth

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// Caller is who makes a call, as the tap handle established it.
type Caller struct {
	// Principal names the caller in audit records and history: the admin
	// principal, "dataplane/<id>" or "join-token/<id>".
	Principal string
	// Role of an admin caller.
	Role Role
	// NodeID and Certificate of a data plane, from its client certificate.
	NodeID      string
	Certificate *x509.Certificate
	// JoinToken presented to Enrol.
	JoinToken identity.JoinToken
	// Insecure: the control plane runs with --insecure and checked nothing.
	Insecure bool
}

type callerKey struct{}

// NewContext returns ctx carrying c.
func NewContext(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// FromContext returns the caller of a call that passed the tap handle.
func FromContext(ctx context.Context) (*Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*Caller)
	return c, ok
}

// JoinTokenChecker says whether a join token may enrol. The control plane's
// join-token cache implements it.
type JoinTokenChecker interface {
	CheckJoinToken(ctx context.Context, tok identity.JoinToken, now time.Time) error
}

// Denial is a call the tap handle refused, for the audit log.
type Denial struct {
	Method    string
	Principal string
	Role      Role
	Peer      string
	Err       error
}

// Options configure an Authenticator.
type Options struct {
	// Insecure lets every call through as an unauthenticated caller.
	Insecure bool
	// Tokens authenticate admin callers.
	Tokens *TokenFile
	// JoinTokens check Enrol calls.
	JoinTokens JoinTokenChecker
	// OnDenied, when set, hears of every refused call. It must not block:
	// it runs on the connection's reader.
	OnDenied func(Denial)
	// MaxConcurrentApplies bounds Apply and Diff calls in progress, whose
	// messages are the large ones. 4 when zero.
	MaxConcurrentApplies int
	Now                  func() time.Time
}

// Authenticator is the control plane's gRPC tap handle.
type Authenticator struct {
	opts     Options
	inflight atomic.Int64
}

// New returns an Authenticator.
func New(opts Options) *Authenticator {
	if opts.MaxConcurrentApplies <= 0 {
		opts.MaxConcurrentApplies = 4
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Authenticator{opts: opts}
}

// Tap authenticates and authorises a call from its headers and its
// connection alone; grpc.InTapHandle installs it. A refused call is
// answered with its status before its message is read.
func (a *Authenticator) Tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	c, err := a.authenticate(ctx, info)
	if err != nil {
		a.deny(ctx, info.FullMethodName, c, err)
		return nil, err
	}
	if isLarge(info.FullMethodName) {
		if n := a.inflight.Add(1); n > int64(a.opts.MaxConcurrentApplies) {
			a.inflight.Add(-1)
			err := status.Errorf(codes.ResourceExhausted, "%d applies and diffs are in progress, the most this control plane takes at once; retry shortly", n-1)
			a.deny(ctx, info.FullMethodName, c, err)
			return nil, err
		}
		ctx = context.WithValue(ctx, slotKey{}, &slot{release: func() { a.inflight.Add(-1) }})
	}
	return NewContext(ctx, c), nil
}

func (a *Authenticator) authenticate(ctx context.Context, info *tap.Info) (*Caller, error) {
	if a.opts.Insecure {
		return &Caller{Principal: "unauthenticated", Role: RoleAdmin, Insecure: true}, nil
	}
	method := info.FullMethodName
	switch {
	case strings.HasPrefix(method, "/"+meridianv1.AdminService_ServiceDesc.ServiceName+"/"):
		return a.admin(method, info.Header)
	case method == meridianv1.IdentityService_Enrol_FullMethodName:
		return a.enrol(ctx, info.Header)
	case method == meridianv1.IdentityService_Renew_FullMethodName,
		method == meridianv1.ConfigDiscoveryService_StreamSnapshots_FullMethodName:
		return dataplane(ctx)
	}
	return nil, status.Errorf(codes.PermissionDenied, "method %s is not served", method)
}

func (a *Authenticator) admin(method string, md metadata.MD) (*Caller, error) {
	token, err := bearer(md)
	if err != nil {
		return nil, err
	}
	if a.opts.Tokens == nil {
		return nil, status.Error(codes.Unauthenticated, "this control plane has no admin tokens")
	}
	p, ok := a.opts.Tokens.Authenticate(token)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "invalid token")
	}
	c := &Caller{Principal: p.Name, Role: p.Role}
	need, known := RequiredRole(method)
	if !known {
		return c, status.Errorf(codes.PermissionDenied, "method %s is not served", method)
	}
	if p.Role < need {
		return c, status.Errorf(codes.PermissionDenied, "%s (role %s) may not call %s: it needs role %s", p.Name, p.Role, shortMethod(method), need)
	}
	return c, nil
}

func (a *Authenticator) enrol(ctx context.Context, md metadata.MD) (*Caller, error) {
	raw, err := bearer(md)
	if err != nil {
		return nil, err
	}
	tok, err := identity.ParseJoinToken(raw)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	c := &Caller{Principal: "join-token/" + tok.ID, JoinToken: tok}
	if a.opts.JoinTokens == nil {
		return c, status.Error(codes.Unauthenticated, "enrolment by join token is off")
	}
	if err := a.opts.JoinTokens.CheckJoinToken(ctx, tok, a.opts.Now()); err != nil {
		return c, status.Error(codes.Unauthenticated, err.Error())
	}
	return c, nil
}

// dataplane identifies a data plane by its verified client certificate.
func dataplane(ctx context.Context) (*Caller, error) {
	p, _ := peer.FromContext(ctx)
	var chains [][]*x509.Certificate
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			chains = ti.State.VerifiedChains
		}
	}
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, status.Error(codes.Unauthenticated, "a data-plane client certificate is required: start the data plane with --join-token (from 'gatewayctl tokens create') or --controlplane-cert/--controlplane-key")
	}
	leaf := chains[0][0]
	id, err := identity.NodeID(leaf)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return &Caller{Principal: "dataplane/" + id, NodeID: id, Certificate: leaf}, nil
}

// bearer reads "authorization: Bearer <token>".
func bearer(md metadata.MD) (string, error) {
	values := md.Get("authorization")
	if len(values) == 0 {
		return "", status.Error(codes.Unauthenticated, "missing bearer token (authorization: Bearer <token>)")
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return "", status.Error(codes.Unauthenticated, "authorization must be \"Bearer <token>\"")
	}
	return strings.TrimSpace(token), nil
}

func (a *Authenticator) deny(ctx context.Context, method string, c *Caller, err error) {
	if a.opts.OnDenied == nil {
		return
	}
	d := Denial{Method: method, Peer: peerAddr(ctx), Err: err}
	if c != nil {
		d.Principal, d.Role = c.Principal, c.Role
	}
	a.opts.OnDenied(d)
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// isLarge reports the methods whose request carries a configuration.
func isLarge(method string) bool {
	return method == meridianv1.AdminService_Apply_FullMethodName || method == meridianv1.AdminService_Diff_FullMethodName
}

func shortMethod(method string) string {
	return method[strings.LastIndexByte(method, '/')+1:]
}

// slot is one of the MaxConcurrentApplies places, given back when the call
// ends, however it ends.
type slot struct {
	once    sync.Once
	release func()
}

type slotKey struct{}

// StatsHandler gives back the apply slot a call took in the tap handle when
// the call ends: gRPC reports the end of every call that passed the tap,
// including calls whose message was never read.
func (a *Authenticator) StatsHandler() stats.Handler { return slotReleaser{} }

type slotReleaser struct{}

func (slotReleaser) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (slotReleaser) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, end := s.(*stats.End); !end {
		return
	}
	if sl, ok := ctx.Value(slotKey{}).(*slot); ok {
		sl.once.Do(sl.release)
	}
}
func (slotReleaser) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (slotReleaser) HandleConn(context.Context, stats.ConnStats)                       {}

// Describe is a short text for a denial's error, without its gRPC framing.
func Describe(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}
