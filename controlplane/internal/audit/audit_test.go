package audit

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/proto/config/configtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type memStore struct {
	mu      sync.Mutex
	records []*meridianv1.AuditRecord
	pruned  []time.Time
}

func (m *memStore) AppendAudit(_ context.Context, rec *meridianv1.AuditRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.records = append(m.records, rec)
	return nil
}

func (m *memStore) PruneAudit(_ context.Context, before time.Time) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pruned = append(m.pruned, before)
	return 0, nil
}

func (m *memStore) snapshot() []*meridianv1.AuditRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*meridianv1.AuditRecord(nil), m.records...)
}

// run starts l.Run and returns a func that stops it.
func run(l *Log) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	return func() { cancel(); wg.Wait() }
}

func waitRecords(t *testing.T, st *memStore, n int) []*meridianv1.AuditRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(st.snapshot()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d records stored, want %d", len(st.snapshot()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return st.snapshot()
}

func TestInterceptorRecordsMutatingCalls(t *testing.T) {
	st := &memStore{}
	var logs bytes.Buffer
	l := New(st, Options{Replica: "cp-1", Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Retention: time.Hour})
	stop := run(l)
	defer stop()
	intercept := l.UnaryInterceptor()
	ctx := auth.NewContext(context.Background(), &auth.Caller{Principal: "alice", Role: auth.RoleOperator})
	apply := &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Upstream("users", "127.0.0.1:1")}}
	calls := []struct {
		method string
		req    any
		resp   any
		err    error
	}{
		{meridianv1.AdminService_Apply_FullMethodName, apply, &meridianv1.ApplyResponse{Version: 7}, nil},
		{meridianv1.AdminService_Apply_FullMethodName, &meridianv1.ApplyRequest{DryRun: true}, &meridianv1.ApplyResponse{}, nil},
		{meridianv1.AdminService_Get_FullMethodName, &meridianv1.GetRequest{}, &meridianv1.GetResponse{}, nil},
		{meridianv1.AdminService_Delete_FullMethodName, &meridianv1.DeleteRequest{Kind: "Route", Name: "r"}, (*meridianv1.DeleteResponse)(nil), status.Error(codes.InvalidArgument, "still used\nby x")},
		{meridianv1.AdminService_RevokeDataplane_FullMethodName, &meridianv1.RevokeDataplaneRequest{Id: "dp-1"}, &meridianv1.RevokeDataplaneResponse{}, nil},
	}
	for _, c := range calls {
		intercept(ctx, c.req, &grpc.UnaryServerInfo{FullMethod: c.method}, func(context.Context, any) (any, error) { return c.resp, c.err })
	}
	recs := waitRecords(t, st, 3)
	want := []struct{ method, target, outcome string }{
		{meridianv1.AdminService_Apply_FullMethodName, "Upstream/users", OutcomeOK},
		{meridianv1.AdminService_Delete_FullMethodName, "Route/r", "invalidargument"},
		{meridianv1.AdminService_RevokeDataplane_FullMethodName, "dataplane/dp-1", OutcomeOK},
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d (a dry run and a read are not audited): %v", len(recs), len(want), recs)
	}
	for i, w := range want {
		r := recs[i]
		if r.GetMethod() != w.method || r.GetTarget() != w.target || r.GetOutcome() != w.outcome ||
			r.GetPrincipal() != "alice" || r.GetRole() != "operator" || r.GetControlplane() != "cp-1" || r.GetTime() == nil {
			t.Errorf("record %d = %v, want %+v by alice", i, r, w)
		}
	}
	if recs[0].GetVersion() != 7 || !strings.Contains(recs[1].GetMessage(), "still used (and 1 more lines)") {
		t.Errorf("version or message: %v, %v", recs[0], recs[1])
	}
	if got := strings.Count(logs.String(), `"msg":"audit"`); got != 3 {
		t.Errorf("%d audit log lines, want 3:\n%s", got, logs.String())
	}
}

func TestDeniedCallsAreRecorded(t *testing.T) {
	st := &memStore{}
	l := New(st, Options{Logger: slog.New(slog.DiscardHandler)})
	stop := run(l)
	defer stop()
	l.Denied(auth.Denial{Method: meridianv1.AdminService_Apply_FullMethodName, Principal: "vic", Role: auth.RoleViewer, Peer: "127.0.0.1:5", Err: status.Error(codes.PermissionDenied, "needs operator")})
	l.Denied(auth.Denial{Method: meridianv1.AdminService_List_FullMethodName, Peer: "127.0.0.1:6", Err: errors.New("invalid token")})
	recs := waitRecords(t, st, 2)
	if r := recs[0]; r.GetOutcome() != OutcomeDenied || r.GetPrincipal() != "vic" || r.GetRole() != "viewer" || r.GetPeerAddress() != "127.0.0.1:5" || !strings.Contains(r.GetMessage(), "needs operator") {
		t.Errorf("denied record = %v", r)
	}
	if r := recs[1]; r.GetPrincipal() != "" || r.GetRole() != "" || r.GetOutcome() != OutcomeDenied {
		t.Errorf("unauthenticated record = %v", r)
	}
}

// A flood of records never blocks the caller; what does not fit is only
// logged.
func TestRecordNeverBlocks(t *testing.T) {
	st := &memStore{}
	l := New(st, Options{Logger: slog.New(slog.DiscardHandler)})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 * queueLen {
			l.Denied(auth.Denial{Method: "/x", Err: errors.New("no")})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Record blocked with nobody writing")
	}
	if l.dropped.Load() != 2*queueLen {
		t.Fatalf("%d dropped, want %d", l.dropped.Load(), 2*queueLen)
	}
	stop := run(l)
	waitRecords(t, st, queueLen)
	stop()
	if len(st.pruned) == 0 {
		t.Fatal("Run never pruned")
	}
}

// fakeStream is a server stream with a context.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }

// Calls their handlers refuse are denials, whatever the method.
func TestRefusedInHandlersAreRecorded(t *testing.T) {
	st := &memStore{}
	l := New(st, Options{Logger: slog.New(slog.DiscardHandler)})
	stop := run(l)
	defer stop()
	ctx := auth.NewContext(context.Background(), &auth.Caller{Principal: "dataplane/dp-2", NodeID: "dp-2"})
	stream := l.StreamInterceptor()
	for _, err := range []error{
		status.Error(codes.PermissionDenied, `the client certificate is data plane "dp-2"'s, not "dp-1"'s`),
		status.Error(codes.Unavailable, "control plane shutting down"),
		nil,
	} {
		stream(nil, fakeStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: meridianv1.ConfigDiscoveryService_StreamSnapshots_FullMethodName},
			func(any, grpc.ServerStream) error { return err })
	}
	l.UnaryInterceptor()(ctx, &meridianv1.RenewRequest{}, &grpc.UnaryServerInfo{FullMethod: meridianv1.IdentityService_Renew_FullMethodName},
		func(context.Context, any) (any, error) { return nil, status.Error(codes.PermissionDenied, "revoked") })
	waitRecords(t, st, 2)
	time.Sleep(50 * time.Millisecond)
	recs := st.snapshot()
	if len(recs) != 2 {
		t.Fatalf("%d records, want the 2 refusals only: %v", len(recs), recs)
	}
	for _, r := range recs {
		if r.GetOutcome() != OutcomeDenied || r.GetPrincipal() != "dataplane/dp-2" || r.GetMessage() == "" {
			t.Errorf("record = %v, want a denial by dataplane/dp-2 with its reason", r)
		}
	}
}
