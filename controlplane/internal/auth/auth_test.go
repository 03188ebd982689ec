package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEveryAdminMethodHasARole(t *testing.T) {
	for _, m := range meridianv1.AdminService_ServiceDesc.Methods {
		full := "/" + meridianv1.AdminService_ServiceDesc.ServiceName + "/" + m.MethodName
		if _, ok := RequiredRole(full); !ok {
			t.Errorf("%s has no role in adminRoles: everyone is refused", full)
		}
	}
}

func writeTokens(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseTokens(t *testing.T) {
	good := TokenLine("alice", RoleViewer, "t-alice")
	tests := []struct {
		name, in, err string
	}{
		{"one", good, ""},
		{"comments and blanks", "# ops\n\n" + good, ""},
		{"sha256 prefix", strings.Replace(good, "viewer ", "viewer sha256:", 1), ""},
		{"old raw format", "alice t-alice\n", "line 1: want"},
		{"unknown role", "alice root " + strings.Fields(good)[2] + "\n", `unknown role "root"`},
		{"short hash", "alice admin abcd\n", "64 hex digits"},
		{"duplicate", good + TokenLine("bob", RoleAdmin, "t-alice"), "line 2: same token hash as line 1"},
		{"empty", "# nothing\n", "no tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseTokens(strings.NewReader(tt.in))
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("err = %v, want %q", err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "t-alice") {
				t.Fatalf("error repeats a token: %v", err)
			}
		})
	}
}

func TestTokenFileReload(t *testing.T) {
	path := writeTokens(t, TokenLine("alice", RoleViewer, "t-alice"))
	f, err := LoadTokenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := f.Authenticate("t-alice"); !ok || p != (Principal{"alice", RoleViewer}) {
		t.Fatalf("alice = %v, %v", p, ok)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.Watch(ctx, 10*time.Millisecond) })
	defer func() { cancel(); wg.Wait() }()

	if err := os.WriteFile(path, []byte(TokenLine("bob", RoleAdmin, "t-bob")), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bob's token to work", func() bool { _, ok := f.Authenticate("t-bob"); return ok })
	if _, ok := f.Authenticate("t-alice"); ok {
		t.Fatal("alice's token still works after it was removed")
	}
	// A broken edit keeps the tokens that work.
	if err := os.WriteFile(path, []byte("garbage line here\n#"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok := f.Authenticate("t-bob"); !ok {
		t.Fatal("a broken tokens file dropped the working tokens")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serveTap runs a gRPC server whose services answer Unimplemented, behind
// the authenticator's tap handle: a call that reaches a handler was let
// through.
func serveTap(t *testing.T, a *Authenticator) *grpc.ClientConn {
	t.Helper()
	return serveAdmin(t, a, meridianv1.UnimplementedAdminServiceServer{})
}

// serveAdmin is serveTap with admin as the AdminService.
func serveAdmin(t *testing.T, a *Authenticator, admin meridianv1.AdminServiceServer) *grpc.ClientConn {
	t.Helper()
	gs := grpc.NewServer(grpc.InTapHandle(a.Tap), grpc.StatsHandler(a.StatsHandler()))
	meridianv1.RegisterAdminServiceServer(gs, admin)
	meridianv1.RegisterIdentityServiceServer(gs, meridianv1.UnimplementedIdentityServiceServer{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { gs.Serve(lis) })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); gs.Stop(); wg.Wait() })
	return conn
}

// call invokes method with an empty message and the given bearer token.
func call(ctx context.Context, conn *grpc.ClientConn, method, token string) error {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
}

// TestRoleMatrix calls every AdminService method as every role: a role
// reaches the method (Unimplemented here) exactly when the method's role
// is at most its own; every refusal is reported for the audit log.
func TestRoleMatrix(t *testing.T) {
	path := writeTokens(t, TokenLine("vic", RoleViewer, "t-viewer")+TokenLine("otto", RoleOperator, "t-operator")+TokenLine("ada", RoleAdmin, "t-admin"))
	tokens, err := LoadTokenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var denials []Denial
	conn := serveTap(t, New(Options{Tokens: tokens, OnDenied: func(d Denial) { mu.Lock(); denials = append(denials, d); mu.Unlock() }}))
	callers := []struct {
		token string
		role  Role
	}{{"t-viewer", RoleViewer}, {"t-operator", RoleOperator}, {"t-admin", RoleAdmin}, {"", RoleNone}, {"t-wrong", RoleNone}}
	want := map[string]Role{
		"Get": RoleViewer, "List": RoleViewer, "Diff": RoleViewer, "History": RoleViewer, "ListDataplanes": RoleViewer, "ListAudit": RoleViewer,
		"Apply": RoleOperator, "Delete": RoleOperator, "Rollback": RoleOperator,
		"CreateJoinToken": RoleAdmin, "ListJoinTokens": RoleAdmin, "RevokeJoinToken": RoleAdmin, "RevokeDataplane": RoleAdmin,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	refused := 0
	for _, m := range meridianv1.AdminService_ServiceDesc.Methods {
		need, ok := want[m.MethodName]
		if !ok {
			t.Fatalf("the matrix misses %s", m.MethodName)
		}
		for _, c := range callers {
			t.Run(fmt.Sprintf("%s/%s", m.MethodName, c.role), func(t *testing.T) {
				err := call(ctx, conn, "/meridian.v1.AdminService/"+m.MethodName, c.token)
				wantCode := codes.Unimplemented
				switch {
				case c.role == RoleNone:
					wantCode = codes.Unauthenticated
				case c.role < need:
					wantCode = codes.PermissionDenied
				}
				if status.Code(err) != wantCode {
					t.Fatalf("%v, want %v", err, wantCode)
				}
				if wantCode != codes.Unimplemented {
					refused++
				}
			})
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(denials) != refused {
		t.Fatalf("%d denials reported, %d calls refused", len(denials), refused)
	}
	for _, d := range denials {
		if d.Peer == "" || d.Method == "" || d.Err == nil {
			t.Fatalf("denial lacks its peer, method or reason: %+v", d)
		}
	}
}

func TestInsecureLetsEverythingThrough(t *testing.T) {
	conn := serveTap(t, New(Options{Insecure: true}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range []string{meridianv1.AdminService_Apply_FullMethodName, meridianv1.AdminService_RevokeDataplane_FullMethodName, meridianv1.IdentityService_Enrol_FullMethodName} {
		if err := call(ctx, conn, m, ""); status.Code(err) != codes.Unimplemented {
			t.Fatalf("%s: %v, want it served", m, err)
		}
	}
}

type fakeJoinTokens map[string]*meridianv1.StoredJoinToken

func (f fakeJoinTokens) ListJoinTokens(context.Context) ([]*meridianv1.StoredJoinToken, error) {
	var out []*meridianv1.StoredJoinToken
	for _, t := range f {
		out = append(out, t)
	}
	return out, nil
}

func TestEnrolNeedsAGoodJoinToken(t *testing.T) {
	const pin = "0000000000000000000000000000000000000000000000000000000000000000"
	good := identity.JoinToken{ID: "abcdefgh", Secret: strings.Repeat("s", 32), Pin: pin}
	now := time.Now()
	stored := func(id string, mutate func(*meridianv1.JoinToken)) *meridianv1.StoredJoinToken {
		info := &meridianv1.JoinToken{Id: id}
		if mutate != nil {
			mutate(info)
		}
		return &meridianv1.StoredJoinToken{Info: info, SecretSha256: identity.SecretHash(good.Secret)}
	}
	store := fakeJoinTokens{
		"abcdefgh": stored("abcdefgh", nil),
		"expiredx": stored("expiredx", func(i *meridianv1.JoinToken) { i.ExpiresAt = timestamppb.New(now.Add(-time.Minute)) }),
		"usedupxx": stored("usedupxx", func(i *meridianv1.JoinToken) { i.MaxUses, i.Uses = 2, 2 }),
	}
	cache := NewJoinTokens(store, pin)
	conn := serveTap(t, New(Options{JoinTokens: cache}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	with := func(id, secret, pin string) string {
		return identity.JoinToken{ID: id, Secret: secret, Pin: pin}.String()
	}
	tests := []struct {
		name, token string
		code        codes.Code
	}{
		// Found by the store lookup: the cache has seen nothing yet.
		{"good", good.String(), codes.Unimplemented},
		{"none", "", codes.Unauthenticated},
		{"malformed", "not-a-token", codes.Unauthenticated},
		{"wrong secret", with("abcdefgh", strings.Repeat("x", 32), pin), codes.Unauthenticated},
		{"another cluster's CA", with("abcdefgh", good.Secret, strings.Repeat("1", 64)), codes.Unauthenticated},
		{"unknown", with("zzzzzzzz", good.Secret, pin), codes.Unauthenticated},
		{"expired", with("expiredx", good.Secret, pin), codes.Unauthenticated},
		{"used up", with("usedupxx", good.Secret, pin), codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := call(ctx, conn, meridianv1.IdentityService_Enrol_FullMethodName, tt.token)
			if status.Code(err) != tt.code {
				t.Fatalf("%v, want %v", err, tt.code)
			}
			if err != nil && strings.Contains(err.Error(), good.Secret) {
				t.Fatalf("error repeats the secret: %v", err)
			}
		})
	}
	// An admin token is not a join token, nor the reverse.
	if err := call(ctx, conn, meridianv1.AdminService_List_FullMethodName, good.String()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a join token on the admin API: %v", err)
	}
}

func TestDataplaneCallsNeedACertificate(t *testing.T) {
	conn := serveTap(t, New(Options{}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := call(ctx, conn, meridianv1.IdentityService_Renew_FullMethodName, "")
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("Renew without a certificate: %v", err)
	}
	if err := call(ctx, conn, "/grpc.health.v1.Health/Check", ""); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a method nobody serves: %v, want PermissionDenied", err)
	}
}

// blockingAdmin holds Apply until release is closed.
type blockingAdmin struct {
	meridianv1.UnimplementedAdminServiceServer
	entered chan struct{}
	release chan struct{}
}

func (b *blockingAdmin) Apply(ctx context.Context, _ *meridianv1.ApplyRequest) (*meridianv1.ApplyResponse, error) {
	b.entered <- struct{}{}
	<-b.release
	return &meridianv1.ApplyResponse{}, nil
}

func TestConcurrentAppliesAreBounded(t *testing.T) {
	path := writeTokens(t, TokenLine("otto", RoleOperator, "t-operator"))
	tokens, err := LoadTokenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc := &blockingAdmin{entered: make(chan struct{}, 8), release: make(chan struct{})}
	conn := serveAdmin(t, New(Options{Tokens: tokens, MaxConcurrentApplies: 2}), svc)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer t-operator"), 30*time.Second)
	defer cancel()
	admin := meridianv1.NewAdminServiceClient(conn)

	results := make(chan error, 2)
	for range 2 {
		go func() { _, err := admin.Apply(ctx, &meridianv1.ApplyRequest{}); results <- err }()
		<-svc.entered
	}
	// Both slots are taken: a third is refused before its message is read.
	if _, err := admin.Apply(ctx, &meridianv1.ApplyRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third concurrent apply: %v, want ResourceExhausted", err)
	}
	close(svc.release)
	for range 2 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	// The slots came back, also from a call whose client gave up.
	short, cancelShort := context.WithTimeout(ctx, time.Millisecond)
	defer cancelShort()
	admin.Apply(short, &meridianv1.ApplyRequest{})
	for i := range 3 {
		if _, err := admin.Apply(ctx, &meridianv1.ApplyRequest{}); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("apply %d after the others ended: %v", i, err)
		}
	}
}
