// Package discovery serves configuration snapshots to data planes over the
// ConfigDiscoveryService stream and records what each one applied.
package discovery

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"maps"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/snapshot"
	"github.com/meridian-gw/meridian/proto/identity"
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
	// Certificates, when set, must accept a data plane's client
	// certificate before its stream opens. Nil (--insecure) checks
	// nothing: the node id is whatever the data plane says.
	Certificates CertificateChecker
}

// CertificateChecker decides whether a data plane's certificate, already
// verified against a trusted CA by TLS, may open its node's stream: it
// must be the node's current certificate and not revoked. It returns the
// labels the node's identity carries (its join token's).
type CertificateChecker interface {
	CheckDataplane(ctx context.Context, nodeID string, cert *x509.Certificate) (labels map[string]string, err error)
}

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
	certs   CertificateChecker

	closeOnce sync.Once
	done      chan struct{}

	// streams holds the open streams by node id, so a revocation can
	// close them.
	mu      sync.Mutex
	streams map[string]map[*handler]struct{}
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
		certs:   opts.Certificates,
		done:    make(chan struct{}),
		streams: map[string]map[*handler]struct{}{},
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
	if first.GetNode().GetId() == "" {
		return status.Error(codes.InvalidArgument, "the first message must carry node.id")
	}
	if err := identity.CheckNodeID(first.GetNode().GetId()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	node := proto.CloneOf(first.GetNode())
	if err := s.authorize(ctx, node); err != nil {
		return err
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
		revoked:   make(chan struct{}),
		status: &meridianv1.DataplaneStatus{
			Node:           node,
			PeerAddress:    peerAddr(ctx),
			AppliedVersion: first.GetVersion(),
			AppliedHash:    first.GetHash(),
			ConnectedAt:    timestamppb.New(now),
			LastSeen:       timestamppb.New(now),
		},
	}
	s.track(h)
	defer s.untrack(h)
	return h.run(ctx)
}

// authorize checks that the stream's certificate belongs to node, and
// gives node the labels of its identity, which win over its own.
func (s *Server) authorize(ctx context.Context, node *meridianv1.Node) error {
	c, ok := auth.FromContext(ctx)
	if s.certs == nil || ok && c.Insecure {
		return nil
	}
	if !ok || c.NodeID == "" {
		return status.Error(codes.Unauthenticated, "a data-plane client certificate is required")
	}
	if c.NodeID != node.GetId() {
		return status.Errorf(codes.PermissionDenied, "the client certificate is data plane %q's, not %q's", c.NodeID, node.GetId())
	}
	labels, err := s.certs.CheckDataplane(ctx, c.NodeID, c.Certificate)
	if err != nil {
		return status.Errorf(codes.PermissionDenied, "data plane %q: %v", c.NodeID, err)
	}
	if len(labels) > 0 && node.Labels == nil {
		node.Labels = map[string]string{}
	}
	maps.Copy(node.Labels, labels)
	return nil
}

func (s *Server) track(h *handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := h.status.GetNode().GetId()
	if s.streams[id] == nil {
		s.streams[id] = map[*handler]struct{}{}
	}
	s.streams[id][h] = struct{}{}
}

func (s *Server) untrack(h *handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := h.status.GetNode().GetId()
	delete(s.streams[id], h)
	if len(s.streams[id]) == 0 {
		delete(s.streams, id)
	}
}

// Revoke ends the streams of data plane nodeID on this replica at once;
// it fits store.WatchRevocations. The certificate checks refuse the node's
// reconnects.
func (s *Server) Revoke(nodeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for h := range s.streams[nodeID] {
		h.revokeOnce.Do(func() { close(h.revoked) })
	}
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
	// revoked is closed when the data plane is revoked.
	revoked    chan struct{}
	revokeOnce sync.Once
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
		case <-h.revoked:
			h.log.Warn("data plane revoked; stream closed")
			return status.Error(codes.PermissionDenied, "this data plane was revoked")
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
