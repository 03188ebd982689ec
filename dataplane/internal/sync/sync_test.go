package sync

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	stdsync "sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// cds is a tiny ConfigDiscoveryService: it reports every hello and answer
// on channels, sends every snapshot the test puts on send and every
// response it puts on sendResponse.
type cds struct {
	meridianv1.UnimplementedConfigDiscoveryServiceServer
	hellos       chan *meridianv1.StreamSnapshotsRequest
	answers      chan *meridianv1.StreamSnapshotsRequest
	send         chan *meridianv1.Snapshot
	sendResponse chan *meridianv1.StreamSnapshotsResponse
	// spans gets each stream's span context, as the server sees it.
	spans chan trace.SpanContext
}

func newCDS() *cds {
	return &cds{
		hellos:       make(chan *meridianv1.StreamSnapshotsRequest, 16),
		answers:      make(chan *meridianv1.StreamSnapshotsRequest, 16),
		send:         make(chan *meridianv1.Snapshot, 16),
		sendResponse: make(chan *meridianv1.StreamSnapshotsResponse, 16),
		spans:        make(chan trace.SpanContext, 16),
	}
}

func (s *cds) StreamSnapshots(stream grpc.BidiStreamingServer[meridianv1.StreamSnapshotsRequest, meridianv1.StreamSnapshotsResponse]) error {
	hello, err := stream.Recv()
	if err != nil {
		return err
	}
	s.hellos <- hello
	ctx := stream.Context()
	select {
	case s.spans <- trace.SpanContextFromContext(ctx):
	default:
	}
	recvErr := make(chan error, 1)
	var wg stdsync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case s.answers <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case snap := <-s.send:
			if err := stream.Send(&meridianv1.StreamSnapshotsResponse{Snapshot: snap}); err != nil {
				return err
			}
		case resp := <-s.sendResponse:
			if err := stream.Send(resp); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// serve starts s on addr ("127.0.0.1:0" for any port) and returns the
// bound address and a stop function.
func serve(t *testing.T, s *cds, addr string, opts ...grpc.ServerOption) (string, func()) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// The client pings every 10s; the server must allow it.
	opts = append(opts, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}))
	srv := grpc.NewServer(opts...)
	meridianv1.RegisterConfigDiscoveryServiceServer(srv, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	var once stdsync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

// applier is a fake Applier; a snapshot whose version is in fail is
// rejected with a field error.
type applier struct {
	mu      stdsync.Mutex
	version uint64
	hash    string
	fail    map[uint64]error
}

func (a *applier) Apply(_ context.Context, s *meridianv1.Snapshot) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.fail[s.GetVersion()]; err != nil {
		return err
	}
	a.version, a.hash = s.GetVersion(), s.GetHash()
	return nil
}

func (a *applier) Applied() (uint64, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.version, a.hash
}

func startClient(t *testing.T, a *applier, addrs ...string) *Client {
	t.Helper()
	return runClient(t, testConfig(a, addrs...))
}

func testConfig(a *applier, addrs ...string) Config {
	return Config{
		Addresses:  addrs,
		Node:       &meridianv1.Node{Id: "dp-1", Labels: map[string]string{"zone": "a"}, BuildVersion: "test", ListenAddress: ":8080"},
		Applier:    a,
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		MinBackoff: 5 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
	}
}

// runClient runs a client with cfg until the test ends.
func runClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestConnectAndAck(t *testing.T) {
	s := newCDS()
	addr, _ := serve(t, s, "127.0.0.1:0")
	c := startClient(t, &applier{version: 4, hash: "h4"}, addr)

	hello := recv(t, s.hellos, "hello")
	if hello.GetNode().GetId() != "dp-1" || hello.GetNode().GetLabels()["zone"] != "a" || hello.GetNode().GetBuildVersion() != "test" || hello.GetNode().GetListenAddress() != ":8080" {
		t.Errorf("hello node = %v", hello.GetNode())
	}
	if hello.GetVersion() != 4 || hello.GetHash() != "h4" || hello.GetResponseNonce() != "" {
		t.Errorf("hello = version %d hash %q nonce %q, want 4 h4 empty", hello.GetVersion(), hello.GetHash(), hello.GetResponseNonce())
	}

	s.send <- &meridianv1.Snapshot{Version: 5, Hash: "h5", Nonce: "n5"}
	ack := recv(t, s.answers, "ACK")
	if ack.GetVersion() != 5 || ack.GetHash() != "h5" || ack.GetResponseNonce() != "n5" || ack.GetError() != nil {
		t.Errorf("ack = %v", ack)
	}
	if c.Received() != 1 {
		t.Errorf("Received() = %d, want 1", c.Received())
	}
	if c.Connected() != addr {
		t.Errorf("Connected() = %q, want %q", c.Connected(), addr)
	}
	if d := c.DisconnectedFor(); d != 0 {
		t.Errorf("DisconnectedFor() = %v while connected, want 0", d)
	}
	if c.Nacks() != 0 {
		t.Errorf("Nacks() = %d, want 0", c.Nacks())
	}
}

func TestFleet(t *testing.T) {
	s := newCDS()
	addr, _ := serve(t, s, "127.0.0.1:0")
	fleet := make(chan int, 16)
	cfg := testConfig(&applier{}, addr)
	cfg.OnFleet = func(connected int) { fleet <- connected }
	c := runClient(t, cfg)
	recv(t, s.hellos, "hello")
	if c.Fleet() != 0 {
		t.Errorf("Fleet() before any report = %d, want 0", c.Fleet())
	}

	// Fleet status alone is passed on, not applied and not answered.
	s.sendResponse <- &meridianv1.StreamSnapshotsResponse{Fleet: &meridianv1.FleetStatus{ConnectedDataplanes: 3}}
	if n := recv(t, fleet, "fleet size 3"); n != 3 {
		t.Fatalf("OnFleet(%d), want 3", n)
	}
	if c.Fleet() != 3 || c.Received() != 0 {
		t.Errorf("after fleet status: Fleet() = %d, Received() = %d, want 3, 0", c.Fleet(), c.Received())
	}

	// A snapshot with fleet status: both. Answers arrive in order, so the
	// first one answering this snapshot shows the fleet status had none.
	s.sendResponse <- &meridianv1.StreamSnapshotsResponse{
		Snapshot: &meridianv1.Snapshot{Version: 5, Hash: "h5", Nonce: "n5"},
		Fleet:    &meridianv1.FleetStatus{ConnectedDataplanes: 4},
	}
	if n := recv(t, fleet, "fleet size 4"); n != 4 {
		t.Fatalf("OnFleet(%d), want 4", n)
	}
	ack := recv(t, s.answers, "ACK")
	if ack.GetVersion() != 5 || ack.GetResponseNonce() != "n5" || ack.GetError() != nil {
		t.Fatalf("first answer = %v, want the ACK of version 5", ack)
	}
	if c.Fleet() != 4 || c.Received() != 1 {
		t.Errorf("after snapshot: Fleet() = %d, Received() = %d, want 4, 1", c.Fleet(), c.Received())
	}

	// A snapshot alone leaves the fleet size as it was.
	s.send <- &meridianv1.Snapshot{Version: 6, Hash: "h6", Nonce: "n6"}
	recv(t, s.answers, "ACK of version 6")
	select {
	case n := <-fleet:
		t.Errorf("snapshot without fleet status called OnFleet(%d)", n)
	default:
	}
	if c.Fleet() != 4 {
		t.Errorf("Fleet() = %d after a snapshot alone, want 4", c.Fleet())
	}
}

func TestNack(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want *meridianv1.ConfigError
	}{
		{"error list", config.ErrorList{
			{Kind: "JWTProvider", Name: "sso", Path: "spec.keys[0].secretEnv", Msg: `environment variable "X" is not set on this data plane`},
			{Kind: "Route", Name: "r", Path: "spec.upstream", Msg: "second"},
		}, &meridianv1.ConfigError{Kind: "JWTProvider", Name: "sso", Field: "spec.keys[0].secretEnv", Message: `environment variable "X" is not set on this data plane`}},
		{"wrapped field error", errors.Join(errors.New("compile"), &config.FieldError{Kind: "Route", Name: "r", Path: "spec.match", Msg: "bad"}),
			&meridianv1.ConfigError{Kind: "Route", Name: "r", Field: "spec.match", Message: "bad"}},
		{"plain error", errors.New("boom"), &meridianv1.ConfigError{Message: "boom"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newCDS()
			addr, _ := serve(t, s, "127.0.0.1:0")
			c := startClient(t, &applier{version: 1, hash: "h1", fail: map[uint64]error{2: tt.err}}, addr)
			recv(t, s.hellos, "hello")
			s.send <- &meridianv1.Snapshot{Version: 2, Hash: "h2", Nonce: "n2"}
			nack := recv(t, s.answers, "NACK")
			if c.Nacks() != 1 || c.Received() != 1 {
				t.Errorf("Nacks() = %d, Received() = %d, want 1, 1", c.Nacks(), c.Received())
			}
			if nack.GetVersion() != 1 || nack.GetHash() != "h1" || nack.GetResponseNonce() != "n2" {
				t.Errorf("nack = version %d hash %q nonce %q, want 1 h1 n2", nack.GetVersion(), nack.GetHash(), nack.GetResponseNonce())
			}
			got := nack.GetError()
			if got.GetKind() != tt.want.GetKind() || got.GetName() != tt.want.GetName() || got.GetField() != tt.want.GetField() || got.GetMessage() != tt.want.GetMessage() {
				t.Errorf("error = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTracedApply: with tracing on both ends, the stream's trace context
// reaches the control plane and every snapshot's apply is a span of that
// trace, a NACK's marked as an error.
func TestTracedApply(t *testing.T) {
	serverSpans, clientSpans := tracetest.NewInMemoryExporter(), tracetest.NewInMemoryExporter()
	serverTP := sdktrace.NewTracerProvider(sdktrace.WithSyncer(serverSpans))
	clientTP := sdktrace.NewTracerProvider(sdktrace.WithSyncer(clientSpans))
	defer serverTP.Shutdown(context.Background())
	defer clientTP.Shutdown(context.Background())

	s := newCDS()
	addr, _ := serve(t, s, "127.0.0.1:0", grpc.StatsHandler(tracing.ServerHandler(serverTP)))
	cfg := testConfig(&applier{fail: map[uint64]error{3: errors.New("boom")}}, addr)
	cfg.TracerProvider = clientTP
	cfg.DialOptions = []grpc.DialOption{grpc.WithStatsHandler(tracing.ClientHandler(clientTP))}
	runClient(t, cfg)
	recv(t, s.hellos, "hello")
	stream := recv(t, s.spans, "the stream's span context")
	if !stream.IsValid() {
		t.Fatalf("the server's stream span context %v is not a trace", stream)
	}
	s.send <- &meridianv1.Snapshot{Version: 2, Hash: "h2"}
	recv(t, s.answers, "ACK")
	s.send <- &meridianv1.Snapshot{Version: 3, Hash: "h3"}
	recv(t, s.answers, "NACK")

	var applies []tracetest.SpanStub
	for _, sp := range clientSpans.GetSpans() {
		if sp.Name == "apply snapshot" {
			applies = append(applies, sp)
		}
	}
	if len(applies) != 2 {
		t.Fatalf("%d apply spans, want 2: %v", len(applies), clientSpans.GetSpans())
	}
	for i, want := range []struct {
		version int64
		code    codes.Code
	}{{2, codes.Unset}, {3, codes.Error}} {
		sp := applies[i]
		if sp.SpanContext.TraceID() != stream.TraceID() {
			t.Errorf("apply %d: trace %s, want the stream's %s", i, sp.SpanContext.TraceID(), stream.TraceID())
		}
		if !sp.Parent.IsValid() {
			t.Errorf("apply %d has no parent; want the stream's client span", i)
		}
		var version int64
		for _, kv := range sp.Attributes {
			if kv.Key == "meridian.snapshot.version" {
				version = kv.Value.AsInt64()
			}
		}
		if version != want.version || sp.Status.Code != want.code {
			t.Errorf("apply %d: version %d status %v, want %d %v", i, version, sp.Status.Code, want.version, want.code)
		}
	}
}

func TestReconnectAfterRestart(t *testing.T) {
	s := newCDS()
	addr, stop := serve(t, s, "127.0.0.1:0")
	a := &applier{}
	c := startClient(t, a, addr)
	if h := recv(t, s.hellos, "first hello"); h.GetVersion() != 0 {
		t.Fatalf("first hello version = %d", h.GetVersion())
	}
	s.send <- &meridianv1.Snapshot{Version: 3, Hash: "h3", Nonce: "n3"}
	recv(t, s.answers, "ACK")

	stop()
	s2 := newCDS()
	serve(t, s2, addr)
	h := recv(t, s2.hellos, "hello after restart")
	if h.GetVersion() != 3 || h.GetHash() != "h3" {
		t.Errorf("hello after restart = version %d hash %q, want 3 h3", h.GetVersion(), h.GetHash())
	}
	if c.Received() != 1 {
		t.Errorf("Received() = %d, want 1", c.Received())
	}
}

func TestFallThroughToSecondAddress(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	s := newCDS()
	addr, _ := serve(t, s, "127.0.0.1:0")
	c := startClient(t, &applier{}, deadAddr, addr)
	recv(t, s.hellos, "hello on the second address")
	if c.Connected() != addr {
		t.Errorf("Connected() = %q, want %q", c.Connected(), addr)
	}
	if d := c.DisconnectedFor(); d != 0 {
		t.Errorf("DisconnectedFor() = %v while connected, want 0", d)
	}
	if c.Nacks() != 0 {
		t.Errorf("Nacks() = %d, want 0", c.Nacks())
	}
}

func TestPrefersFirstAddress(t *testing.T) {
	first, second := newCDS(), newCDS()
	addr1, _ := serve(t, first, "127.0.0.1:0")
	addr2, _ := serve(t, second, "127.0.0.1:0")
	startClient(t, &applier{}, addr1, addr2)
	recv(t, first.hellos, "hello on the first address")
	select {
	case <-second.hellos:
		t.Error("second address contacted while the first is up")
	default:
	}
}

func TestBackoff(t *testing.T) {
	c, err := New(Config{Addresses: []string{"x"}, Node: &meridianv1.Node{}, Applier: &applier{}, Log: slog.Default(),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for attempt, ceiling := range map[int]time.Duration{0: 100 * time.Millisecond, 3: 800 * time.Millisecond, 10: 5 * time.Second, 100: 5 * time.Second} {
		for range 100 {
			if d := c.backoff(attempt); d < 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want within [0, %v]", attempt, d, ceiling)
			}
		}
	}
}

func TestNewRejectsNoAddress(t *testing.T) {
	if _, err := New(Config{Node: &meridianv1.Node{}, Applier: &applier{}, Log: slog.Default()}); err == nil {
		t.Error("New without addresses succeeded")
	}
}
