package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/config"
	"github.com/meridian-gw/meridian/proto/config/configtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// failingStore returns err from every call.
type failingStore struct{ err error }

func (f failingStore) Apply(context.Context, store.ApplyInput) (uint64, []*meridianv1.Change, error) {
	return 0, nil, f.err
}
func (f failingStore) Get(context.Context, string, string) (*meridianv1.Resource, uint64, error) {
	return nil, 0, f.err
}
func (f failingStore) List(context.Context, string) ([]*meridianv1.Resource, uint64, error) {
	return nil, 0, f.err
}
func (f failingStore) Delete(context.Context, string, string, string, string, uint64) (uint64, error) {
	return 0, f.err
}
func (f failingStore) History(context.Context, int) ([]*meridianv1.HistoryEntry, error) {
	return nil, f.err
}
func (f failingStore) Rollback(context.Context, uint64, string, string) (uint64, uint64, []*meridianv1.Change, error) {
	return 0, 0, nil, f.err
}
func (f failingStore) ListDataplanes(context.Context) ([]*meridianv1.DataplaneStatus, uint64, error) {
	return nil, 0, f.err
}
func (f failingStore) CreateJoinToken(context.Context, *meridianv1.StoredJoinToken) error {
	return f.err
}
func (f failingStore) ListJoinTokens(context.Context) ([]*meridianv1.StoredJoinToken, error) {
	return nil, f.err
}
func (f failingStore) DeleteJoinToken(context.Context, string) error { return f.err }
func (f failingStore) RevokeDataplane(context.Context, string, string, time.Time, time.Duration) error {
	return f.err
}
func (f failingStore) ListAudit(context.Context, time.Time, int) ([]*meridianv1.AuditRecord, error) {
	return nil, f.err
}

// calls invokes every admin method once with a well-formed request.
func calls(s *Server) map[string]func(context.Context) error {
	apply := []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}
	return map[string]func(context.Context) error{
		"Apply": func(ctx context.Context) error {
			_, err := s.Apply(ctx, &meridianv1.ApplyRequest{Resources: apply})
			return err
		},
		"Diff": func(ctx context.Context) error {
			_, err := s.Diff(ctx, &meridianv1.DiffRequest{Resources: apply})
			return err
		},
		"Get": func(ctx context.Context) error {
			_, err := s.Get(ctx, &meridianv1.GetRequest{Kind: "upstream", Name: "a"})
			return err
		},
		"List": func(ctx context.Context) error {
			_, err := s.List(ctx, &meridianv1.ListRequest{})
			return err
		},
		"Delete": func(ctx context.Context) error {
			_, err := s.Delete(ctx, &meridianv1.DeleteRequest{Kind: "Upstream", Name: "a"})
			return err
		},
		"History": func(ctx context.Context) error {
			_, err := s.History(ctx, &meridianv1.HistoryRequest{})
			return err
		},
		"Rollback": func(ctx context.Context) error {
			_, err := s.Rollback(ctx, &meridianv1.RollbackRequest{})
			return err
		},
		"ListDataplanes": func(ctx context.Context) error {
			_, err := s.ListDataplanes(ctx, &meridianv1.ListDataplanesRequest{})
			return err
		},
	}
}

func TestErrorCodes(t *testing.T) {
	problems := config.ErrorList{
		{Kind: "Route", Name: "r", Path: "spec.upstream", Msg: `Upstream "x" does not exist`},
		{Kind: "Upstream", Name: "u", Path: "spec.targets", Msg: "at least one target is required"},
	}
	tests := []struct {
		name    string
		err     error
		code    codes.Code
		message string // exact message, when set
	}{
		{"validation", fmt.Errorf("%w: %w", store.ErrInvalid, problems), codes.InvalidArgument,
			"Route \"r\": spec.upstream: Upstream \"x\" does not exist\nUpstream \"u\": spec.targets: at least one target is required"},
		{"invalid request", fmt.Errorf("%w: unknown kind", store.ErrInvalid), codes.InvalidArgument, ""},
		{"conflict", fmt.Errorf("%w: Route changed", store.ErrConflict), codes.Aborted, ""},
		{"contention", store.ErrContention, codes.Aborted, ""},
		{"not found", fmt.Errorf("%w: version 9", store.ErrNotFound), codes.NotFound, ""},
		{"too large", store.ErrTooLarge, codes.FailedPrecondition, ""},
		{"etcd down", fmt.Errorf("%w: connection refused", store.ErrUnavailable), codes.Unavailable, ""},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, ""},
		{"canceled", context.Canceled, codes.Canceled, ""},
		{"other", errors.New("boom"), codes.Internal, ""},
	}
	for _, tt := range tests {
		for method, call := range calls(NewServer(failingStore{tt.err}, Options{Logger: slog.New(slog.DiscardHandler)})) {
			t.Run(tt.name+"/"+method, func(t *testing.T) {
				st := status.Convert(call(context.Background()))
				if st.Code() != tt.code {
					t.Fatalf("code = %v (%s), want %v", st.Code(), st.Message(), tt.code)
				}
				if tt.message != "" && st.Message() != tt.message {
					t.Fatalf("message = %q, want %q", st.Message(), tt.message)
				}
			})
		}
	}
}

func TestValidationErrorDetails(t *testing.T) {
	problems := config.ErrorList{{Kind: "Route", Name: "r", Path: "spec.upstream", Msg: "missing"}}
	s := NewServer(failingStore{fmt.Errorf("%w: %w", store.ErrInvalid, problems)}, Options{})
	_, err := s.Apply(context.Background(), &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	var got []*meridianv1.ConfigError
	for _, d := range status.Convert(err).Details() {
		if ce, ok := d.(*meridianv1.ConfigError); ok {
			got = append(got, ce)
		}
	}
	if len(got) != 1 || got[0].GetKind() != "Route" || got[0].GetField() != "spec.upstream" || got[0].GetMessage() != "missing" {
		t.Fatalf("details = %v", got)
	}
}

// TestBadRequests are refused before the store is asked.
func TestBadRequests(t *testing.T) {
	s := NewServer(failingStore{errors.New("store must not be called")}, Options{})
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
	}{
		{"get bad kind", func() error { _, err := s.Get(ctx, &meridianv1.GetRequest{Kind: "gizmo", Name: "a"}); return err }},
		{"get no name", func() error { _, err := s.Get(ctx, &meridianv1.GetRequest{Kind: "route"}); return err }},
		{"list bad kind", func() error { _, err := s.List(ctx, &meridianv1.ListRequest{Kind: "gizmos"}); return err }},
		{"delete bad kind", func() error {
			_, err := s.Delete(ctx, &meridianv1.DeleteRequest{Kind: "", Name: "a"})
			return err
		}},
		{"delete no name", func() error { _, err := s.Delete(ctx, &meridianv1.DeleteRequest{Kind: "route"}); return err }},
		{"empty apply", func() error { _, err := s.Apply(ctx, &meridianv1.ApplyRequest{}); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := status.Code(tt.call()); code != codes.InvalidArgument {
				t.Fatalf("code = %v, want InvalidArgument", code)
			}
		})
	}
}

// serve runs the admin API backed by a real store on embedded etcd.
func serve(t *testing.T) meridianv1.AdminServiceClient {
	t.Helper()
	st := store.New(etcdtest.Start(t), store.Options{ReplicaID: "cp", Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { st.Close() })
	gs := grpc.NewServer()
	meridianv1.RegisterAdminServiceServer(gs, NewServer(st, Options{Logger: slog.New(slog.DiscardHandler)}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return meridianv1.NewAdminServiceClient(conn)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAdminOverStore(t *testing.T) {
	client := serve(t)
	ctx := testCtx(t)

	// Dry run: summary, nothing written.
	dry, err := client.Apply(ctx, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Upstream("u", "127.0.0.1:1")}, DryRun: true})
	if err != nil || !dry.GetDryRun() || dry.GetVersion() != 1 || len(dry.GetChanges()) != 1 { // the version it would create
		t.Fatalf("dry run = %v, %v", dry, err)
	}
	if list, err := client.List(ctx, &meridianv1.ListRequest{}); err != nil || len(list.GetResources()) != 0 {
		t.Fatalf("after dry run List = %v, %v", list, err)
	}

	// Server-side validation, whatever the client did.
	_, err = client.Apply(ctx, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Route("r", "missing", "/"), configtest.Upstream("", "nope")}})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || strings.Count(st.Message(), "\n") < 1 || !strings.Contains(st.Message(), `"missing" does not exist`) {
		t.Fatalf("invalid apply: %v", err)
	}

	applied, err := client.Apply(ctx, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Upstream("u", "127.0.0.1:1"), configtest.Route("r", "u", "/")}})
	if err != nil || applied.GetVersion() != 1 {
		t.Fatalf("Apply = %v, %v", applied, err)
	}
	for _, c := range applied.GetChanges() {
		if c.GetDiff() != "" {
			t.Errorf("Apply returned a diff for %s", c.GetName())
		}
	}
	diff, err := client.Diff(ctx, &meridianv1.DiffRequest{Resources: []*meridianv1.Resource{configtest.Upstream("u", "127.0.0.1:2")}})
	if err != nil || len(diff.GetChanges()) != 1 || !strings.Contains(diff.GetChanges()[0].GetDiff(), "+") {
		t.Fatalf("Diff = %v, %v", diff, err)
	}
	if got, err := client.Get(ctx, &meridianv1.GetRequest{Kind: "routes", Name: "r"}); err != nil || got.GetVersion() != 1 {
		t.Fatalf("Get = %v, %v", got, err)
	}
	if _, err := client.Delete(ctx, &meridianv1.DeleteRequest{Kind: "upstream", Name: "u"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("deleting a referenced upstream: %v, want InvalidArgument", err)
	}
	if _, err := client.Apply(ctx, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Upstream("u", "127.0.0.1:3")}, ExpectedVersion: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Apply(ctx, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{configtest.Upstream("u", "127.0.0.1:4")}, ExpectedVersion: 1}); status.Code(err) != codes.Aborted {
		t.Fatalf("stale expected version: %v, want Aborted", err)
	}
	rb, err := client.Rollback(ctx, &meridianv1.RollbackRequest{})
	if err != nil || rb.GetVersion() != 3 || rb.GetRestoredVersion() != 1 {
		t.Fatalf("Rollback = %v, %v", rb, err)
	}
	if _, err := client.Rollback(ctx, &meridianv1.RollbackRequest{Version: 42}); status.Code(err) != codes.NotFound {
		t.Fatalf("Rollback(42): %v, want NotFound", err)
	}
	hist, err := client.History(ctx, &meridianv1.HistoryRequest{})
	if err != nil || len(hist.GetEntries()) != 3 || hist.GetEntries()[0].GetAuthor() != "unknown" {
		t.Fatalf("History = %v, %v", hist, err)
	}
	dps, err := client.ListDataplanes(ctx, &meridianv1.ListDataplanesRequest{})
	if err != nil || dps.GetCurrentVersion() != 3 || len(dps.GetDataplanes()) != 0 {
		t.Fatalf("ListDataplanes = %v, %v", dps, err)
	}
}
