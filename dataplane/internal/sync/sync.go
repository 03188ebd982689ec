// Package sync keeps a data plane's configuration in step with the control
// plane over the ConfigDiscoveryService stream: it opens the stream with the
// node's identity and the version it holds, applies every snapshot it
// receives and answers each with an ACK or a NACK. It also passes on the
// fleet size the control plane reports.
package sync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// tracerName is the instrumentation scope of the apply spans.
const tracerName = "github.com/meridian-gw/meridian/dataplane/internal/sync"

// Defaults for Config's zero values.
const (
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultKeepalive      = 10 * time.Second
	DefaultConnectTimeout = 5 * time.Second
	// MaxSnapshotBytes bounds one received snapshot message (gRPC's default
	// of 4 MiB is reached at around 10,000 routes).
	MaxSnapshotBytes = 64 << 20
)

// Applier applies snapshots. The data plane's gateway implements it.
type Applier interface {
	// Apply makes snap live, or changes nothing and returns why not.
	Apply(ctx context.Context, snap *meridianv1.Snapshot) error
	// Applied returns the version and hash currently live (0, "" if none).
	Applied() (version uint64, hash string)
}

// Config configures a Client.
type Config struct {
	// Addresses are control-plane host:port endpoints, tried in order.
	Addresses []string
	// Node identifies this data plane in the first message of each stream.
	Node    *meridianv1.Node
	Applier Applier
	Log     *slog.Logger
	// MinBackoff and MaxBackoff bound the jittered exponential wait between
	// rounds of connection attempts.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// HealthyAfter is how long a stream must stay open, without delivering
	// a snapshot, to count as healthy and reset the backoff. Default:
	// MaxBackoff.
	HealthyAfter time.Duration
	// Credentials returns the transport credentials for one control-plane
	// address. It is called for every connection to that address, so
	// credentials that change (a renewed CA bundle) apply from the next
	// one. Nil: plaintext (--insecure).
	Credentials func(addr string) credentials.TransportCredentials
	// DialOptions are appended to the defaults (Credentials, keepalive
	// pings every 10s, 5s connect timeout).
	DialOptions []grpc.DialOption
	// OnFleet, when set, receives every fleet size the control plane
	// reports: how many data planes, this one included, are connected
	// fleet-wide (at least once per stream, then on each change). It runs
	// on Run's goroutine, before the snapshot arriving in the same message
	// is applied, and must not block.
	OnFleet func(connected int)
	// TracerProvider, when set, gives every snapshot received a span
	// ("apply snapshot") covering its apply, a child of the stream's span
	// when DialOptions trace the stream. Nil: none.
	TracerProvider trace.TracerProvider
}

// Client is the ConfigDiscoveryService client. Start it with Run.
type Client struct {
	cfg       Config
	received  atomic.Uint64
	nacks     atomic.Uint64
	connected atomic.Pointer[string]
	fleet     atomic.Uint32
	// lastOpen is when a stream was last open (Unix nanoseconds): when
	// the last one closed, or when the Client was created.
	lastOpen atomic.Int64
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("no control-plane address")
	}
	if cfg.Applier == nil || cfg.Log == nil || cfg.Node == nil {
		return nil, errors.New("sync: Applier, Log and Node are required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.HealthyAfter <= 0 {
		cfg.HealthyAfter = cfg.MaxBackoff
	}
	c := &Client{cfg: cfg}
	c.lastOpen.Store(time.Now().UnixNano())
	return c, nil
}

// Received counts the snapshots received from any control plane since the
// Client was created.
func (c *Client) Received() uint64 { return c.received.Load() }

// Nacks counts the snapshots rejected since the Client was created.
func (c *Client) Nacks() uint64 { return c.nacks.Load() }

// DisconnectedFor returns how long no stream has been open: 0 while one
// is, else the time since the last one closed or, before any, since the
// Client was created. The control plane pushes every change on an open
// stream, so this is how stale the configuration may be.
func (c *Client) DisconnectedFor() time.Duration {
	if c.connected.Load() != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - c.lastOpen.Load())
}

// Fleet returns the last fleet size any control plane reported (0 before
// the first report). It is kept across reconnects: the last size is a
// better guess than none.
func (c *Client) Fleet() int { return int(c.fleet.Load()) }

// Connected returns the address of the control plane the stream is open
// to, or "" while disconnected.
func (c *Client) Connected() string {
	if p := c.connected.Load(); p != nil {
		return *p
	}
	return ""
}

// Run keeps a stream open to the first reachable control plane, in address
// order, until ctx is done. After every round of failed attempts, or after a
// stream ends, it waits a jittered, exponentially growing delay; a healthy
// stream resets the delay.
func (c *Client) Run(ctx context.Context) {
	attempt := 0
	for ctx.Err() == nil {
		for _, addr := range c.cfg.Addresses {
			healthy, err := c.session(ctx, addr)
			if ctx.Err() != nil {
				return
			}
			if healthy {
				attempt = 0
				c.cfg.Log.Warn("control-plane stream ended", "controlplane", addr, "error", err)
				break
			}
			c.cfg.Log.Warn("control plane unreachable", "controlplane", addr, "error", err)
		}
		wait := c.backoff(attempt)
		attempt++
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is "full jitter": uniform in [0, min(max, min*2^attempt)].
func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.MaxBackoff
	if attempt < 30 {
		d = min(c.cfg.MinBackoff<<attempt, c.cfg.MaxBackoff)
	}
	return rand.N(d + 1)
}

func (c *Client) dialOptions(addr string) []grpc.DialOption {
	bc := backoff.DefaultConfig
	bc.BaseDelay, bc.MaxDelay = c.cfg.MinBackoff, c.cfg.MaxBackoff
	creds := insecure.NewCredentials()
	if c.cfg.Credentials != nil {
		creds = c.cfg.Credentials(addr)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: DefaultKeepalive, Timeout: DefaultKeepalive / 2}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc, MinConnectTimeout: DefaultConnectTimeout}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxSnapshotBytes)),
		grpc.WithUserAgent("meridian-dataplane/" + c.cfg.Node.GetBuildVersion()),
	}
	return append(opts, c.cfg.DialOptions...)
}

// session runs one stream to addr until it breaks or ctx is done. healthy
// reports whether the stream delivered a snapshot or stayed up long enough
// to count as a working connection.
func (c *Client) session(ctx context.Context, addr string) (healthy bool, err error) {
	conn, err := grpc.NewClient(addr, c.dialOptions(addr)...)
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	stream, err := meridianv1.NewConfigDiscoveryServiceClient(conn).StreamSnapshots(ctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	opened := time.Now()
	defer func() {
		if time.Since(opened) >= c.cfg.HealthyAfter {
			healthy = true
		}
	}()

	version, hash := c.cfg.Applier.Applied()
	hello := &meridianv1.StreamSnapshotsRequest{Node: c.cfg.Node, Version: version, Hash: hash}
	// Connected before the hello goes: once the control plane has it,
	// this data plane reports the stream open.
	c.connected.Store(&addr)
	if err := stream.Send(hello); err != nil {
		c.connected.Store(nil)
		return false, fmt.Errorf("send hello: %w", recvErr(stream, err))
	}
	defer func() {
		c.lastOpen.Store(time.Now().UnixNano())
		c.connected.Store(nil)
	}()
	c.cfg.Log.Info("connected to control plane", "controlplane", addr, "version", version)

	for {
		resp, err := stream.Recv()
		if err != nil {
			return healthy, fmt.Errorf("receive: %w", err)
		}
		// Fleet first, so a snapshot in the same message is applied
		// knowing the current fleet size.
		if fleet := resp.GetFleet(); fleet != nil {
			c.setFleet(fleet.GetConnectedDataplanes())
		}
		snap := resp.GetSnapshot()
		if snap == nil {
			// Fleet status alone is not answered.
			continue
		}
		healthy = true
		c.received.Add(1)
		if err := stream.Send(c.answer(stream.Context(), snap)); err != nil {
			return true, fmt.Errorf("send answer: %w", recvErr(stream, err))
		}
	}
}

func (c *Client) setFleet(connected uint32) {
	c.fleet.Store(connected)
	if c.cfg.OnFleet != nil {
		c.cfg.OnFleet(int(connected))
	}
}

// recvErr returns the stream's real status when Send failed with io.EOF,
// which is how gRPC reports a stream the server already ended.
func recvErr(stream grpc.BidiStreamingClient[meridianv1.StreamSnapshotsRequest, meridianv1.StreamSnapshotsResponse], sendErr error) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

// answer applies snap and builds the ACK or NACK.
func (c *Client) answer(ctx context.Context, snap *meridianv1.Snapshot) *meridianv1.StreamSnapshotsRequest {
	var span trace.Span
	if tp := c.cfg.TracerProvider; tp != nil {
		ctx, span = tp.Tracer(tracerName).Start(ctx, "apply snapshot", trace.WithAttributes(
			attribute.Int64("meridian.snapshot.version", int64(snap.GetVersion())),
			attribute.String("meridian.snapshot.hash", snap.GetHash())))
		defer span.End()
	}
	err := c.cfg.Applier.Apply(ctx, snap)
	if err == nil {
		c.cfg.Log.Info("snapshot acknowledged", "version", snap.GetVersion(), "hash", snap.GetHash())
		return &meridianv1.StreamSnapshotsRequest{Version: snap.GetVersion(), Hash: snap.GetHash(), ResponseNonce: snap.GetNonce()}
	}
	c.nacks.Add(1)
	version, hash := c.cfg.Applier.Applied()
	cerr := ConfigError(err)
	if span != nil {
		span.SetAttributes(attribute.Int64("meridian.snapshot.kept_version", int64(version)))
		span.SetStatus(codes.Error, cerr.GetMessage())
	}
	c.cfg.Log.Warn("snapshot rejected", "version", snap.GetVersion(), "kept", version,
		"kind", cerr.GetKind(), "name", cerr.GetName(), "field", cerr.GetField(), "error", cerr.GetMessage())
	return &meridianv1.StreamSnapshotsRequest{Version: version, Hash: hash, ResponseNonce: snap.GetNonce(), Error: cerr}
}

// ConfigError converts an apply error for a NACK: the first field error of a
// config.ErrorList, a *config.FieldError, or just the message.
func ConfigError(err error) *meridianv1.ConfigError {
	var list config.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		return list[0].Proto()
	}
	var fe *config.FieldError
	if errors.As(err, &fe) {
		return fe.Proto()
	}
	return &meridianv1.ConfigError{Message: err.Error()}
}
