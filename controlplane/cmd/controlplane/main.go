// Command controlplane runs a Meridian control-plane replica: it stores
// configuration in etcd (embedded unless --etcd-endpoints is set), streams
// snapshots to data planes and serves the admin API, all on one gRPC port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/meridian-gw/meridian/controlplane/internal/admin"
	"github.com/meridian-gw/meridian/controlplane/internal/discovery"
	"github.com/meridian-gw/meridian/controlplane/internal/embedetcd"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/snapshot"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// stopTimeout bounds the graceful part of shutdown.
const stopTimeout = 10 * time.Second

// fleetScrapeTimeout bounds the etcd read behind the data-plane gauge, so
// a scrape still answers while etcd is unreachable.
const fleetScrapeTimeout = 2 * time.Second

type options struct {
	listen         string
	etcdEndpoints  string
	etcdPrefix     string
	dataDir        string
	etcdListen     string
	etcdPeerListen string
	metricsListen  string
	adminTokens    string
	id             string
	logLevel       slog.Level
}

// envName is the variable that sets a flag: --etcd-endpoints reads
// MERIDIAN_ETCD_ENDPOINTS.
func envName(flagName string) string {
	return "MERIDIAN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func defaultID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "controlplane"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

// parseFlags reads flags, then fills every flag not given on the command
// line from its environment variable.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("controlplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7400", "gRPC address for the admin API and data-plane streams")
	fs.StringVar(&o.etcdEndpoints, "etcd-endpoints", "", "comma-separated etcd endpoints; empty runs an embedded etcd")
	fs.StringVar(&o.etcdPrefix, "etcd-prefix", store.DefaultPrefix, "key prefix of all control-plane data in etcd")
	fs.StringVar(&o.dataDir, "data-dir", "./data", "directory for the embedded etcd's data (<data-dir>/etcd)")
	fs.StringVar(&o.etcdListen, "etcd-listen", "127.0.0.1:2379", "client address of the embedded etcd")
	fs.StringVar(&o.etcdPeerListen, "etcd-peer-listen", "127.0.0.1:2380", "peer address of the embedded etcd")
	fs.StringVar(&o.metricsListen, "metrics-listen", "127.0.0.1:7401", "HTTP address for /healthz, /readyz and /metrics")
	fs.StringVar(&o.adminTokens, "admin-tokens-file", "", "file of \"<principal> <token>\" lines; when set, admin calls need a bearer token")
	fs.StringVar(&o.id, "id", defaultID(), "replica id shown in data-plane status")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: controlplane [flags]\n\nEvery flag can also be set with MERIDIAN_<FLAG> (for example %s); the flag wins.\n\n", envName("listen"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.listen == "" || o.metricsListen == "" {
		return nil, errors.New("--listen and --metrics-listen must not be empty")
	}
	return o, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "controlplane: %v\n", err)
		return exitUsage
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	// The sampler is OTEL_TRACES_SAMPLER's (parentbased_always_on by
	// default): admin calls are few, and the streams follow the data
	// planes' decisions.
	var traces trace.TracerProvider // nil: no tracing
	tp, err := tracing.NewProvider(ctx, "meridian-controlplane", func(k string) (string, bool) {
		v := getenv(k)
		return v, v != ""
	}, -1)
	if err != nil {
		fmt.Fprintf(stderr, "controlplane: tracing: %v\n", err)
		return exitFailure
	}
	if tp != nil {
		// Deferred: flushes the spans of the last calls on every return.
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("flushing traces failed", "err", err)
			}
		}()
		log.Info("tracing on: spans exported over OTLP")
		traces = tp
	}
	if err := serve(ctx, o, traces, log, stdout); err != nil {
		log.Error("controlplane stopped", "err", err)
		return exitFailure
	}
	return exitOK
}

func serve(ctx context.Context, o *options, traces trace.TracerProvider, log *slog.Logger, stdout io.Writer) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)

	var auth *admin.TokenAuth
	if o.adminTokens != "" {
		var err error
		if auth, err = admin.LoadTokens(o.adminTokens); err != nil {
			return err
		}
	}

	var etcdErr <-chan error
	var endpoints []string
	for e := range strings.SplitSeq(o.etcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			endpoints = append(endpoints, e)
		}
	}
	if len(endpoints) == 0 {
		dir := filepath.Join(o.dataDir, "etcd")
		srv, err := embedetcd.Start(ctx, embedetcd.Config{Dir: dir, ClientAddr: o.etcdListen, PeerAddr: o.etcdPeerListen})
		if err != nil {
			return err
		}
		defer srv.Close()
		endpoints, etcdErr = srv.Endpoints(), srv.Err()
		log.Info("embedded etcd started", "dir", dir, "client", o.etcdListen, "peer", o.etcdPeerListen)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		// The store reports what matters; the client's own retries are noise.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer client.Close()

	st := store.New(client, store.Options{Prefix: o.etcdPrefix, ReplicaID: o.id, Logger: log, Metrics: m})
	defer st.Close()
	reg.MustRegister(metrics.NewDataplaneCollector(st, fleetScrapeTimeout))

	cache := snapshot.NewCache()
	fleet := store.NewFleetSize()
	var synced atomic.Bool
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watches sync.WaitGroup
	watches.Go(func() { st.WatchFleet(watchCtx, fleet.Set) })
	watches.Go(func() {
		st.Watch(watchCtx, func(version uint64, committed time.Time, resources []*meridianv1.Resource) {
			synced.Store(true)
			// A relist publishes the version already served again.
			if cur := cache.Current(); version == 0 || (cur != nil && version <= cur.Version()) {
				return
			}
			start := time.Now()
			snap, err := snapshot.New(version, committed, resources)
			if err != nil {
				log.Error("stored configuration is inconsistent; not serving it", "version", version, "err", err)
				return
			}
			m.ObserveSnapshotBuild(time.Since(start))
			if cache.Set(snap) {
				m.SetSnapshotVersion(version)
				log.Info("serving configuration", "version", version, "hash", snap.Hash(), "resources", len(resources))
			}
		})
	})
	defer func() { stopWatch(); watches.Wait() }()

	disc := discovery.NewServer(cache, st, discovery.Options{Logger: log, Fleet: fleet, Metrics: m})
	grpcOpts := []grpc.ServerOption{
		// Data planes ping every 10s to detect dead connections.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Large configurations travel in one Apply or one snapshot.
		grpc.MaxRecvMsgSize(16 << 20),
		// Interceptors run in the order given, over all ChainUnaryInterceptor
		// options: metrics first, so calls that authentication rejects count.
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
	}
	if auth != nil {
		grpcOpts = append(grpcOpts, grpc.ChainUnaryInterceptor(auth.UnaryInterceptor()), grpc.ChainStreamInterceptor(auth.StreamInterceptor()))
	}
	if traces != nil {
		grpcOpts = append(grpcOpts, grpc.StatsHandler(tracing.ServerHandler(traces)))
	}
	gs := grpc.NewServer(grpcOpts...)
	meridianv1.RegisterAdminServiceServer(gs, admin.NewServer(st, log))
	meridianv1.RegisterConfigDiscoveryServiceServer(gs, disc)

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mlis, err := net.Listen("tcp", o.metricsListen)
	if err != nil {
		lis.Close()
		return fmt.Errorf("metrics listen: %w", err)
	}
	hs := &http.Server{Handler: httpHandler(&synced, reg, log), ReadHeaderTimeout: 5 * time.Second}

	var wg sync.WaitGroup
	serveErr := make(chan error, 2)
	wg.Go(func() {
		if err := gs.Serve(lis); err != nil {
			serveErr <- fmt.Errorf("grpc: %w", err)
		}
	})
	wg.Go(func() {
		if err := hs.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- fmt.Errorf("metrics listener: %w", err)
		}
	})
	fmt.Fprintf(stdout, "controlplane listening on %s\n", lis.Addr())
	log.Info("controlplane listening", "addr", lis.Addr().String(), "metrics", mlis.Addr().String(), "id", o.id, "auth", auth != nil)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-serveErr:
	case err := <-etcdErr:
		runErr = fmt.Errorf("embedded etcd: %w", err)
	}

	// Streams never finish by themselves: end them first so data planes
	// move to another replica and GracefulStop only waits for admin calls.
	disc.Close()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(stopTimeout)
	select {
	case <-stopped:
	case <-timer.C:
		gs.Stop()
		<-stopped
	}
	timer.Stop()
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	hs.Shutdown(sctx)
	wg.Wait()
	return runErr
}

// httpHandler serves /healthz (the process is up), /readyz (the
// configuration has been read from etcd at least once) and /metrics.
func httpHandler(synced *atomic.Bool, gatherer prometheus.Gatherer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	// A metric that fails to collect (the fleet gauge while etcd is down)
	// is logged and left out; the rest of the scrape still answers.
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !synced.Load() {
			http.Error(w, "configuration not loaded from etcd yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}
