// Package discovery serves configuration snapshots to data planes over the
// ConfigDiscoveryService stream and records what each one applied.
package discovery

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/snapshot"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// SnapshotSource hands out the latest snapshot.
type SnapshotSource interface {
	// Subscribe returns a channel holding the latest snapshot not yet
	// received (the current one right away, if any), and a cancel func.
	Subscribe() (<-chan *snapshot.Snapshot, func())
}

// FleetSource hands out the fleet size: how many data planes have a live
// stream to any control-plane replica.
type FleetSource interface {
	// Subscribe returns a channel holding the latest size not yet
	// received (the current one right away, if known), and a cancel func.
	Subscribe() (<-chan int, func())
}

// StatusRecorder stores what the fleet knows about each data plane.
// stream identifies one stream, so that a node reconnecting on a new
// stream is not overwritten by its old one.
type StatusRecorder interface {
	ConnectDataplane(ctx context.Context, stream string, st *meridianv1.DataplaneStatus) error
	UpdateDataplane(ctx context.Context, stream string, st *meridianv1.DataplaneStatus) error
	DisconnectDataplane(ctx context.Context, stream string, st *meridianv1.DataplaneStatus) error
}

// Options tune a Server.
type Options struct {
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// RefreshInterval is how often a quiet stream refreshes its data
	// plane's last-seen time (and liveness). 10s when zero.
	RefreshInterval time.Duration
	// StatusTimeout bounds each status write, so an unreachable etcd does
	// not hold up snapshots. 5s when zero.
	StatusTimeout time.Duration
	// Fleet, when set, is sent to every stream and again whenever it
	// changes, so data planes can share global rate limits while Redis is
	// down. A stream gets it once the control plane has a snapshot: with
	// that snapshot when one is due, alone when the data plane is
	// current. Nil sends no fleet status.
	Fleet FleetSource
	// Metrics records snapshot sends, NACKs and how long versions take
	// to reach data planes; nil records nothing.
	Metrics *metrics.Metrics
}

// maxNodeIDLen keeps node ids usable as etcd key parts and table cells.
const maxNodeIDLen = 253

// Server implements meridianv1.ConfigDiscoveryServiceServer.
type Server struct {
	meridianv1.UnimplementedConfigDiscoveryServiceServer

	source  SnapshotSource
	status  StatusRecorder
	fleet   FleetSource
	metrics *metrics.Metrics
	log     *slog.Logger
	refresh time.Duration
	timeout time.Duration

	closeOnce sync.Once
	done      chan struct{}
}

// NewServer returns a server streaming snapshots from source and recording
// status with recorder.
func NewServer(source SnapshotSource, recorder StatusRecorder, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = 10 * time.Second
	}
	if opts.StatusTimeout <= 0 {
		opts.StatusTimeout = 5 * time.Second
	}
	return &Server{
		source:  source,
		status:  recorder,
		fleet:   opts.Fleet,
		metrics: opts.Metrics,
		log:     opts.Logger,
		refresh: opts.RefreshInterval,
		timeout: opts.StatusTimeout,
		done:    make(chan struct{}),
	}
}

// Close ends every stream with codes.Unavailable, so data planes reconnect
// to another replica, and refuses new ones. Streams never end on their own,
// so call Close before grpc.Server.GracefulStop.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.done) })
}

// StreamSnapshots serves one data plane.
func (s *Server) StreamSnapshots(stream meridianv1.ConfigDiscoveryService_StreamSnapshotsServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	if err := checkNodeID(first.GetNode().GetId()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	select {
	case <-s.done:
		return status.Error(codes.Unavailable, "control plane shutting down")
	default:
	}

	now := time.Now()
	h := &handler{
		server:    s,
		stream:    stream,
		id:        rand.Text(),
		log:       s.log.With("node", first.GetNode().GetId(), "peer", peerAddr(ctx)),
		connected: now,
		held:      held{first.GetVersion(), first.GetHash()},
		status: &meridianv1.DataplaneStatus{
			Node:           proto.CloneOf(first.GetNode()),
			PeerAddress:    peerAddr(ctx),
			AppliedVersion: first.GetVersion(),
			AppliedHash:    first.GetHash(),
			ConnectedAt:    timestamppb.New(now),
			LastSeen:       timestamppb.New(now),
		},
	}
	return h.run(ctx)
}

func checkNodeID(id string) error {
	switch {
	case id == "":
		return errors.New("the first message must carry node.id")
	case len(id) > maxNodeIDLen:
		return errors.New("node.id is longer than 253 bytes")
	case strings.ContainsFunc(id, func(r rune) bool { return r == '/' || unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return errors.New("node.id must not contain '/', spaces or control characters")
	}
	return nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// held is what a data plane says it has applied.
type held struct {
	version uint64
	hash    string
}

// handler is the state of one stream. Only its run goroutine touches it.
type handler struct {
	server *Server
	stream meridianv1.ConfigDiscoveryService_StreamSnapshotsServer
	id     string
	log    *slog.Logger
	status *meridianv1.DataplaneStatus
	// connected is when the stream opened.
	connected time.Time

	held held
	// The snapshot last sent, its nonce and its commit time; answers to
	// other nonces are stale.
	sentVersion   uint64
	sentNonce     string
	sentCommitted time.Time
	// ackedVersion is the newest sent version the data plane ACKed, so a
	// repeated ACK is measured once.
	ackedVersion uint64
	// The latest fleet size and the one last sent; 0 is unknown / none.
	fleet     int
	sentFleet int
	// sawSnapshot: the cache has offered this stream a snapshot. Until
	// then the fleet size waits, so that a data plane due a snapshot gets
	// it first.
	sawSnapshot bool
}

func (h *handler) run(ctx context.Context) error {
	s := h.server
	h.record(ctx, s.status.ConnectDataplane)
	h.log.Info("data plane connected", "version", h.held.version)
	defer func() {
		h.status.LastSeen = timestamppb.Now()
		// The stream's context is done by now; the write must still happen.
		h.record(context.WithoutCancel(ctx), s.status.DisconnectDataplane)
		h.log.Info("data plane disconnected", "version", h.held.version)
	}()

	updates, cancel := s.source.Subscribe()
	defer cancel()
	var fleet <-chan int // nil without a fleet source: never ready
	if s.fleet != nil {
		var cancelFleet func()
		fleet, cancelFleet = s.fleet.Subscribe()
		defer cancelFleet()
	}

	// The receiver goroutine ends when the stream does, which happens
	// right after this handler returns; done keeps it from blocking on a
	// send nobody will take.
	reqs := make(chan *meridianv1.StreamSnapshotsRequest)
	recvErr := make(chan error, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			req, err := h.stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-done:
				return
			}
		}
	}()

	// What both sources hold right away goes out in one first message.
	var snap *snapshot.Snapshot
	select {
	case snap = <-updates:
	default:
	}
	select {
	case n := <-fleet:
		h.setFleet(n)
	default:
	}
	if err := h.send(snap); err != nil {
		return err
	}

	ticker := time.NewTicker(s.refresh)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return status.Error(codes.Unavailable, "control plane shutting down")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case snap := <-updates:
			if err := h.send(snap); err != nil {
				return err
			}
		case n := <-fleet:
			h.setFleet(n)
			if err := h.send(nil); err != nil {
				return err
			}
		case req := <-reqs:
			h.answer(ctx, req)
		case <-ticker.C:
			h.status.LastSeen = timestamppb.Now()
			h.record(ctx, s.status.UpdateDataplane)
		}
	}
}

// setFleet records the fleet size. This stream's own data plane is
// connected even when the count read from etcd does not show it yet, so
// the size is at least 1.
func (h *handler) setFleet(n int) {
	h.fleet = max(n, 1)
}

// send sends what the data plane lacks, in one message: snap (nil for
// none) unless the data plane has it or already got it, and the fleet size
// if it changed since it was last sent and the stream has been offered a
// snapshot.
func (h *handler) send(snap *snapshot.Snapshot) error {
	resp := &meridianv1.StreamSnapshotsResponse{}
	var nonce string
	if snap != nil {
		h.sawSnapshot = true
		if snap.Version() > h.sentVersion && (snap.Version() != h.held.version || snap.Hash() != h.held.hash) {
			nonce = rand.Text()
			resp.Snapshot = snap.Message(nonce)
		}
	}
	if h.sawSnapshot && h.fleet != 0 && h.fleet != h.sentFleet {
		resp.Fleet = &meridianv1.FleetStatus{ConnectedDataplanes: uint32(min(h.fleet, math.MaxUint32))}
	}
	if resp.Snapshot == nil && resp.Fleet == nil {
		return nil
	}
	start := time.Now()
	if err := h.stream.Send(resp); err != nil {
		return err
	}
	if resp.Snapshot != nil {
		h.server.metrics.ObserveSnapshotPush(time.Since(start))
		h.event("snapshot sent", attribute.Int64("meridian.snapshot.version", int64(snap.Version())),
			attribute.String("meridian.snapshot.hash", snap.Hash()))
		h.sentVersion, h.sentNonce, h.sentCommitted = snap.Version(), nonce, snap.Committed()
	}
	if resp.Fleet != nil {
		h.sentFleet = h.fleet
	}
	return nil
}

// answer records an ACK or NACK.
func (h *handler) answer(ctx context.Context, req *meridianv1.StreamSnapshotsRequest) {
	now := time.Now()
	h.held = held{req.GetVersion(), req.GetHash()}
	h.status.AppliedVersion, h.status.AppliedHash = req.GetVersion(), req.GetHash()
	h.status.LastSeen = timestamppb.New(now)
	answersSent := req.GetResponseNonce() != "" && req.GetResponseNonce() == h.sentNonce
	if answersSent && req.GetError() == nil && req.GetVersion() == h.sentVersion {
		h.acked(now)
		h.event("snapshot acknowledged", attribute.Int64("meridian.snapshot.version", int64(req.GetVersion())))
	}
	if answersSent && req.GetError() != nil {
		h.event("snapshot rejected", attribute.Int64("meridian.snapshot.version", int64(h.sentVersion)),
			attribute.Int64("meridian.snapshot.kept_version", int64(req.GetVersion())),
			attribute.String("meridian.nack.message", req.GetError().GetMessage()))
		h.server.metrics.CountNack(req.GetError().GetKind())
		h.status.LastNack = &meridianv1.Nack{Version: h.sentVersion, Error: req.GetError(), Time: timestamppb.New(now)}
		h.log.Warn("data plane rejected snapshot", "rejected_version", h.sentVersion, "kept_version", req.GetVersion(),
			"kind", req.GetError().GetKind(), "name", req.GetError().GetName(), "field", req.GetError().GetField(), "error", req.GetError().GetMessage())
	}
	h.record(ctx, h.server.status.UpdateDataplane)
}

// event adds an event to the stream's span, when the stream is traced:
// the snapshots sent and their answers show on the stream's one span.
func (h *handler) event(name string, attrs ...attribute.KeyValue) {
	if span := trace.SpanFromContext(h.stream.Context()); span.IsRecording() {
		span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// acked measures how long the version just ACKed took to get from its
// commit to this data plane, once per version. Versions committed before
// the stream opened are left out: the data plane was catching up (booting,
// reconnecting), and its delay says nothing about how fast changes spread.
func (h *handler) acked(now time.Time) {
	if h.sentVersion <= h.ackedVersion {
		return
	}
	h.ackedVersion = h.sentVersion
	if h.sentCommitted.IsZero() || h.sentCommitted.Before(h.connected) {
		return
	}
	h.server.metrics.ObservePropagation(now.Sub(h.sentCommitted))
}

func (h *handler) record(ctx context.Context, write func(context.Context, string, *meridianv1.DataplaneStatus) error) {
	ctx, cancel := context.WithTimeout(ctx, h.server.timeout)
	defer cancel()
	if err := write(ctx, h.id, h.status); err != nil {
		h.log.Warn("record data-plane status", "err", err)
	}
}
