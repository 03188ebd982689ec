package discovery_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/controlplane/internal/discovery"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/controlplane/internal/snapshot"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/config"
	"github.com/meridian-gw/meridian/proto/config/configtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is a control plane in miniature: store, config watcher and fleet
// watcher on embedded etcd, a snapshot cache, the discovery server on a
// loopback listener, and the metrics registry.
type env struct {
	reg       *prometheus.Registry
	store     *store.Store
	cache     *snapshot.Cache
	fleet     *store.FleetSize
	discovery *discovery.Server
	client    meridianv1.ConfigDiscoveryServiceClient
}

// newEnv wires the server as the control plane does, fleet size included.
func newEnv(t *testing.T) *env { return startEnv(t, true) }

// startEnv starts an env; without withFleet the server gets no fleet
// source.
func startEnv(t *testing.T, withFleet bool) *env {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	st := store.New(etcdtest.Start(t), store.Options{ReplicaID: "cp-1", Logger: log, Metrics: m})
	t.Cleanup(func() { st.Close() })
	reg.MustRegister(metrics.NewDataplaneCollector(st, 10*time.Second))
	cache := snapshot.NewCache()
	fleet := store.NewFleetSize()

	ctx, cancel := context.WithCancel(context.Background())
	var watches sync.WaitGroup
	watches.Go(func() { st.WatchFleet(ctx, fleet.Set) })
	watches.Go(func() {
		st.Watch(ctx, func(v uint64, committed time.Time, rs []*meridianv1.Resource) {
			if v == 0 {
				return
			}
			snap, err := snapshot.New(v, committed, rs)
			if err != nil {
				t.Errorf("snapshot.New: %v", err)
				return
			}
			cache.Set(snap)
		})
	})
	t.Cleanup(func() { cancel(); watches.Wait() })

	opts := discovery.Options{Logger: log, Metrics: m}
	if withFleet {
		opts.Fleet = fleet
	}
	srv := discovery.NewServer(cache, st, opts)
	gs := grpc.NewServer()
	meridianv1.RegisterConfigDiscoveryServiceServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveDone := make(chan struct{})
	go func() { defer close(serveDone); gs.Serve(lis) }()
	t.Cleanup(func() { srv.Close(); gs.GracefulStop(); <-serveDone })

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{reg: reg, store: st, cache: cache, fleet: fleet, discovery: srv, client: meridianv1.NewConfigDiscoveryServiceClient(conn)}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) apply(t *testing.T, rs ...*meridianv1.Resource) uint64 {
	t.Helper()
	v, _, err := e.store.Apply(testCtx(t), store.ApplyInput{Resources: rs})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return v
}

// open starts a stream and sends the first message.
func (e *env) open(t *testing.T, id string, version uint64, hash string) meridianv1.ConfigDiscoveryService_StreamSnapshotsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	t.Cleanup(cancel)
	stream, err := e.client.StreamSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{
		Node:    &meridianv1.Node{Id: id, BuildVersion: "test"},
		Version: version,
		Hash:    hash,
	}); err != nil {
		t.Fatal(err)
	}
	return stream
}

func next(t *testing.T, stream meridianv1.ConfigDiscoveryService_StreamSnapshotsClient) *meridianv1.StreamSnapshotsResponse {
	t.Helper()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return resp
}

// recv returns the next snapshot, skipping messages with only fleet status.
func recv(t *testing.T, stream meridianv1.ConfigDiscoveryService_StreamSnapshotsClient) *meridianv1.Snapshot {
	t.Helper()
	for {
		if snap := next(t, stream).GetSnapshot(); snap != nil {
			return snap
		}
	}
}

// recvFleet returns the next fleet size, skipping messages without one.
func recvFleet(t *testing.T, stream meridianv1.ConfigDiscoveryService_StreamSnapshotsClient) uint32 {
	t.Helper()
	for {
		if f := next(t, stream).GetFleet(); f != nil {
			return f.GetConnectedDataplanes()
		}
	}
}

// streamErr returns the error that ends the stream. Only messages with
// just fleet status may come first.
func streamErr(t *testing.T, stream meridianv1.ConfigDiscoveryService_StreamSnapshotsClient) error {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if resp.GetSnapshot() != nil {
			t.Fatalf("stream still sends snapshots: version %d", resp.GetSnapshot().GetVersion())
		}
	}
}

// waitState polls the fleet until node id reaches want.
func (e *env) waitState(t *testing.T, id string, want meridianv1.DataplaneState) *meridianv1.DataplaneStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		dps, _, err := e.store.ListDataplanes(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dps {
			if d.GetNode().GetId() == id && d.GetState() == want {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached %v; fleet: %v", id, want, dps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSnapshotAckNackAndUpdates(t *testing.T) {
	e := newEnv(t)
	v1 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	stream := e.open(t, "dp-1", 0, "")

	// First snapshot.
	snap := recv(t, stream)
	if snap.GetVersion() != v1 || snap.GetNonce() == "" || len(snap.GetResources()) != 1 ||
		!proto.Equal(snap.GetResources()[0], configtest.Upstream("users", "127.0.0.1:9001")) ||
		snap.GetHash() != config.Hash(snap.GetResources()) {
		t.Fatalf("first snapshot = %v", snap)
	}
	e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_STALE)

	// ACK: synced.
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Version: v1, Hash: snap.GetHash(), ResponseNonce: snap.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	d := e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED)
	if d.GetAppliedHash() != snap.GetHash() || d.GetNode().GetBuildVersion() != "test" || d.GetControlplane() != "cp-1" || d.GetPeerAddress() == "" {
		t.Fatalf("status after ACK = %v", d)
	}

	// A new apply reaches the connected stream.
	v2 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9002"))
	snap2 := recv(t, stream)
	if snap2.GetVersion() != v2 || snap2.GetNonce() == snap.GetNonce() {
		t.Fatalf("second snapshot = %v", snap2)
	}

	// NACK: the data plane keeps v1 and says why.
	reason := &meridianv1.ConfigError{Kind: "Upstream", Name: "users", Field: "spec.targets[0].address", Message: "no route to host"}
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Version: v1, Hash: snap.GetHash(), ResponseNonce: snap2.GetNonce(), Error: reason}); err != nil {
		t.Fatal(err)
	}
	d = e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_NACKED)
	if d.GetAppliedVersion() != v1 || d.GetLastNack().GetVersion() != v2 || !proto.Equal(d.GetLastNack().GetError(), reason) || d.GetLastNack().GetTime() == nil {
		t.Fatalf("status after NACK = %v", d)
	}

	// A NACK answering a stale nonce moves the applied version but does
	// not count as a rejection.
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Version: v2, Hash: snap2.GetHash(), ResponseNonce: "stale", Error: &meridianv1.ConfigError{Message: "old"}}); err != nil {
		t.Fatal(err)
	}
	d = e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED)
	if d.GetLastNack().GetError().GetMessage() != "no route to host" {
		t.Fatalf("stale NACK recorded: %v", d.GetLastNack())
	}

	// Closing the stream marks the data plane disconnected.
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := streamErr(t, stream); err != io.EOF {
		t.Fatalf("after CloseSend: %v, want the stream to end cleanly", err)
	}
	e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED)
}

func TestNoResendWhenCurrent(t *testing.T) {
	e := newEnv(t)
	v1 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	// Wait until the cache serves v1, and learn its hash as a data plane
	// would have from an earlier stream.
	first := e.open(t, "dp-a", 0, "")
	snap := recv(t, first)

	stream := e.open(t, "dp-b", v1, snap.GetHash())
	e.waitState(t, "dp-b", meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED)
	// The next thing on the stream is the next version, not a resend.
	v2 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9002"))
	if got := recv(t, stream); got.GetVersion() != v2 {
		t.Fatalf("data plane holding v%d received v%d first, want v%d", v1, got.GetVersion(), v2)
	}

	// Same version with a different hash is not current: resend.
	other := e.open(t, "dp-c", v2, "not-the-hash")
	if got := recv(t, other); got.GetVersion() != v2 {
		t.Fatalf("data plane with a wrong hash got v%d, want v%d", got.GetVersion(), v2)
	}
}

func TestRejectsBadNode(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"", "a/b", "has space"} {
		stream := e.open(t, id, 0, "")
		_, err := stream.Recv()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("node id %q: %v, want InvalidArgument", id, err)
		}
	}
}

func TestCloseEndsStreams(t *testing.T) {
	e := newEnv(t)
	e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	stream := e.open(t, "dp-1", 0, "")
	recv(t, stream)
	e.discovery.Close()
	if err := streamErr(t, stream); status.Code(err) != codes.Unavailable {
		t.Fatalf("after Close: %v, want Unavailable", err)
	}
	// New streams are refused too.
	again := e.open(t, "dp-2", 0, "")
	if _, err := again.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("new stream after Close: %v, want Unavailable", err)
	}
}

// waitFleetKnown waits until the fleet watcher has published a size.
func (e *env) waitFleetKnown(t *testing.T) {
	t.Helper()
	sizes, cancel := e.fleet.Subscribe()
	defer cancel()
	select {
	case <-sizes:
	case <-time.After(20 * time.Second):
		t.Fatal("fleet size never known")
	}
}

func TestFleetSizeReachesStreams(t *testing.T) {
	e := newEnv(t)
	v1 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	// The snapshot comes first, the fleet size with it or right after. The
	// size counts the data plane itself even before etcd does.
	dp1 := e.open(t, "dp-1", 0, "")
	resp := next(t, dp1)
	if resp.GetSnapshot().GetVersion() != v1 {
		t.Fatalf("first message = %v, want snapshot v%d", resp, v1)
	}
	if resp.GetFleet() == nil {
		resp = next(t, dp1)
	}
	if resp.GetFleet().GetConnectedDataplanes() != 1 {
		t.Fatalf("dp-1 got %v, want fleet 1", resp)
	}

	// A second data plane connecting reaches the first.
	dp2 := e.open(t, "dp-2", 0, "")
	if resp := next(t, dp1); resp.GetSnapshot() != nil || resp.GetFleet().GetConnectedDataplanes() != 2 {
		t.Fatalf("after dp-2 connected dp-1 got %v, want only fleet 2", resp)
	}
	// dp-2 may first hear of a fleet of 1, before etcd shows dp-1 and
	// itself.
	for n := recvFleet(t, dp2); n != 2; n = recvFleet(t, dp2) {
		if n != 1 {
			t.Fatalf("dp-2 got fleet %d, want 1 then 2", n)
		}
	}

	// A snapshot while the size stays the same does not repeat it.
	v2 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9002"))
	if resp := next(t, dp1); resp.GetSnapshot().GetVersion() != v2 || resp.GetFleet() != nil {
		t.Fatalf("after apply dp-1 got %v, want only snapshot v%d", resp, v2)
	}

	// The fleet shrinks when a data plane leaves.
	if err := dp2.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if resp := next(t, dp1); resp.GetSnapshot() != nil || resp.GetFleet().GetConnectedDataplanes() != 1 {
		t.Fatalf("after dp-2 left dp-1 got %v, want only fleet 1", resp)
	}
}

func TestFleetWaitsForFirstSnapshot(t *testing.T) {
	e := newEnv(t)
	// The size is known, but there is no configuration to send yet.
	e.waitFleetKnown(t)
	stream := e.open(t, "dp-1", 0, "")
	e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED)

	v1 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	resp := next(t, stream)
	snap := resp.GetSnapshot()
	if snap.GetVersion() != v1 || resp.GetFleet().GetConnectedDataplanes() != 1 {
		t.Fatalf("first message = %v, want snapshot v%d with fleet 1", resp, v1)
	}
	// It is answered like any snapshot.
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Version: v1, Hash: snap.GetHash(), ResponseNonce: snap.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED)
}

func TestFleetAloneWhenCurrent(t *testing.T) {
	e := newEnv(t)
	e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	snap := recv(t, e.open(t, "dp-a", 0, ""))

	// A data plane holding the current version is due no snapshot; it
	// gets the fleet size alone.
	stream := e.open(t, "dp-b", snap.GetVersion(), snap.GetHash())
	if resp := next(t, stream); resp.GetSnapshot() != nil || resp.GetFleet().GetConnectedDataplanes() == 0 {
		t.Fatalf("first message = %v, want only fleet", resp)
	}
}

func TestNoFleetWithoutSource(t *testing.T) {
	e := startEnv(t, false)
	v1 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	dp1 := e.open(t, "dp-1", 0, "")
	if resp := next(t, dp1); resp.GetSnapshot().GetVersion() != v1 || resp.GetFleet() != nil {
		t.Fatalf("first message = %v, want only snapshot v%d", resp, v1)
	}
	// The fleet grows, but the next message is the next snapshot alone.
	e.open(t, "dp-2", 0, "")
	e.waitState(t, "dp-2", meridianv1.DataplaneState_DATAPLANE_STATE_STALE)
	v2 := e.apply(t, configtest.Upstream("users", "127.0.0.1:9002"))
	if resp := next(t, dp1); resp.GetSnapshot().GetVersion() != v2 || resp.GetFleet() != nil {
		t.Fatalf("second message = %v, want only snapshot v%d", resp, v2)
	}
}

// ack answers snap as applied.
func ack(t *testing.T, stream meridianv1.ConfigDiscoveryService_StreamSnapshotsClient, snap *meridianv1.Snapshot) {
	t.Helper()
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Version: snap.GetVersion(), Hash: snap.GetHash(), ResponseNonce: snap.GetNonce()}); err != nil {
		t.Fatal(err)
	}
}

// nack answers snap as rejected over a resource of kind, keeping kept.
func nack(t *testing.T, stream meridianv1.ConfigDiscoveryService_StreamSnapshotsClient, kept, snap *meridianv1.Snapshot, kind string) {
	t.Helper()
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{
		Version:       kept.GetVersion(),
		Hash:          kept.GetHash(),
		ResponseNonce: snap.GetNonce(),
		Error:         &meridianv1.ConfigError{Kind: kind, Name: "users", Message: "rejected"},
	}); err != nil {
		t.Fatal(err)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	// v1 is committed before the data planes connect: their ACKs of it
	// are catching up, not propagation.
	e.apply(t, configtest.Upstream("users", "127.0.0.1:9001"))
	dp1, dp2 := e.open(t, "dp-1", 0, ""), e.open(t, "dp-2", 0, "")
	v1a, v1b := recv(t, dp1), recv(t, dp2)
	ack(t, dp1, v1a)
	ack(t, dp2, v1b)

	// v2 reaches both while connected; dp-1 repeats its ACK, which counts
	// once.
	e.apply(t, configtest.Upstream("users", "127.0.0.1:9002"))
	v2a, v2b := recv(t, dp1), recv(t, dp2)
	ack(t, dp1, v2a)
	ack(t, dp1, v2a)
	ack(t, dp2, v2b)

	// Both reject v3: one names a known kind, the other something no
	// kind is called. A NACK answering a stale nonce is no rejection.
	e.apply(t, configtest.Upstream("users", "127.0.0.1:9003"))
	v3a, v3b := recv(t, dp1), recv(t, dp2)
	nack(t, dp1, v2a, v2a, "Upstream")
	nack(t, dp1, v2a, v3a, "Upstream")
	nack(t, dp2, v2b, v3b, "Gadget")
	// Status is written after the answer is measured, and each stream
	// handles its messages in order: once both show NACKED, every answer
	// above has been counted.
	e.waitState(t, "dp-1", meridianv1.DataplaneState_DATAPLANE_STATE_NACKED)
	e.waitState(t, "dp-2", meridianv1.DataplaneState_DATAPLANE_STATE_NACKED)

	tests := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"meridian_controlplane_config_propagation_seconds", nil, 2},
		{"meridian_controlplane_snapshot_push_duration_seconds", nil, 6},
		{"meridian_controlplane_nacks_total", []string{"kind", "Upstream"}, 1},
		{"meridian_controlplane_nacks_total", []string{"kind", "other"}, 1},
		{"meridian_controlplane_dataplanes", []string{"state", "NACKED"}, 2},
		{"meridian_controlplane_dataplanes", []string{"state", "SYNCED"}, 0},
		{"meridian_controlplane_etcd_request_duration_seconds", []string{"operation", "commit"}, 3},
	}
	for _, tt := range tests {
		if got := metricstest.Value(t, e.reg, tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}

	if err := dp2.CloseSend(); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "dp-2", meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED)
	if got := metricstest.Value(t, e.reg, "meridian_controlplane_dataplanes", "state", "DISCONNECTED"); got != 1 {
		t.Errorf("disconnected data planes = %v, want 1", got)
	}
}
