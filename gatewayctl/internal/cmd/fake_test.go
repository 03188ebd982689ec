package cmd

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// fakeAdmin is an AdminService that records every call and answers with
// canned responses or errors, keyed by method name ("Apply", "List", ...).
type fakeAdmin struct {
	meridianv1.UnimplementedAdminServiceServer

	mu        sync.Mutex
	responses map[string]proto.Message
	errs      map[string]error
	calls     []fakeCall
}

// fakeCall is one recorded call.
type fakeCall struct {
	method string
	// auth holds the authorization metadata values, usually one.
	auth []string
	req  proto.Message
}

func newFakeAdmin() *fakeAdmin {
	return &fakeAdmin{responses: map[string]proto.Message{}, errs: map[string]error{}}
}

func (f *fakeAdmin) respond(method string, resp proto.Message) *fakeAdmin {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.responses[method] = resp
	return f
}

func (f *fakeAdmin) fail(method string, err error) *fakeAdmin {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
	return f
}

func (f *fakeAdmin) recorded() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

// answer records the call and returns the canned reply for method.
func answer[T proto.Message](ctx context.Context, f *fakeAdmin, method string, req proto.Message) (T, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{method: method, auth: md.Get("authorization"), req: proto.Clone(req)})
	var zero T
	if err := f.errs[method]; err != nil {
		return zero, err
	}
	resp, ok := f.responses[method].(T)
	if !ok {
		return zero, status.Errorf(codes.Unimplemented, "fake has no %s response", method)
	}
	return resp, nil
}

func (f *fakeAdmin) Apply(ctx context.Context, r *meridianv1.ApplyRequest) (*meridianv1.ApplyResponse, error) {
	return answer[*meridianv1.ApplyResponse](ctx, f, "Apply", r)
}

func (f *fakeAdmin) Diff(ctx context.Context, r *meridianv1.DiffRequest) (*meridianv1.DiffResponse, error) {
	return answer[*meridianv1.DiffResponse](ctx, f, "Diff", r)
}

func (f *fakeAdmin) Get(ctx context.Context, r *meridianv1.GetRequest) (*meridianv1.GetResponse, error) {
	return answer[*meridianv1.GetResponse](ctx, f, "Get", r)
}

func (f *fakeAdmin) List(ctx context.Context, r *meridianv1.ListRequest) (*meridianv1.ListResponse, error) {
	return answer[*meridianv1.ListResponse](ctx, f, "List", r)
}

func (f *fakeAdmin) Delete(ctx context.Context, r *meridianv1.DeleteRequest) (*meridianv1.DeleteResponse, error) {
	return answer[*meridianv1.DeleteResponse](ctx, f, "Delete", r)
}

func (f *fakeAdmin) History(ctx context.Context, r *meridianv1.HistoryRequest) (*meridianv1.HistoryResponse, error) {
	return answer[*meridianv1.HistoryResponse](ctx, f, "History", r)
}

func (f *fakeAdmin) Rollback(ctx context.Context, r *meridianv1.RollbackRequest) (*meridianv1.RollbackResponse, error) {
	return answer[*meridianv1.RollbackResponse](ctx, f, "Rollback", r)
}

func (f *fakeAdmin) ListDataplanes(ctx context.Context, r *meridianv1.ListDataplanesRequest) (*meridianv1.ListDataplanesResponse, error) {
	return answer[*meridianv1.ListDataplanesResponse](ctx, f, "ListDataplanes", r)
}

// serve starts f on a loopback listener and returns its address. The
// server stops, and its goroutine has exited, when the test ends.
func serve(t *testing.T, f *fakeAdmin) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	meridianv1.RegisterAdminServiceServer(s, f)
	done := make(chan error, 1)
	go func() { done <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return lis.Addr().String()
}

// deadAddress is a loopback address nothing listens on.
func deadAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// result is what one gatewayctl run produced.
type result struct {
	stdout string
	stderr string
	code   int
}

// testNow is the clock every run sees.
func testNow() time.Time { return time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC) }

// run executes gatewayctl the way main does, with env as the whole
// environment and stdin as standard input.
func run(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &Options{
		In:  strings.NewReader(stdin),
		Out: &out,
		Err: &errOut,
		LookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
		Hostname: func() (string, error) { return "build-host", nil },
		Now:      testNow,
	}
	code := Run(context.Background(), args, o)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}
