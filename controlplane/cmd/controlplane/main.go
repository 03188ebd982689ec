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
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/meridian-gw/meridian/controlplane/internal/admin"
	"github.com/meridian-gw/meridian/controlplane/internal/discovery"
	"github.com/meridian-gw/meridian/controlplane/internal/embedetcd"
	"github.com/meridian-gw/meridian/controlplane/internal/enrolment"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdclient"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/security"
	"github.com/meridian-gw/meridian/controlplane/internal/snapshot"
	"github.com/meridian-gw/meridian/controlplane/internal/store"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

// version is the build version, set with -ldflags "-X main.version=v1.2.3"
// (make stamps git describe).
var version = "dev"

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

	insecure           bool
	tlsCert, tlsKey    string
	clientCA           string
	tlsSANs            string
	certTTL            time.Duration
	dataplaneRetention time.Duration
	auditRetention     time.Duration
	etcdCA, etcdCert   string
	etcdKey            string
	etcdUsername       string
	etcdPassword       string

	// version: print the version and exit.
	version bool
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
	fs.StringVar(&o.adminTokens, "admin-tokens-file", "", "file of \"<principal> <role> <sha256 of token>\" lines, reloaded when it changes; default <data-dir>/admin-tokens, created with an admin token on first start")
	fs.BoolVar(&o.insecure, "insecure", false, "plaintext gRPC and no authentication at all, on a loopback --listen only: for tests and local demos")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate chain (PEM) to present instead of the one made from <data-dir>/pki; its last certificate is what join tokens pin")
	fs.StringVar(&o.tlsKey, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.StringVar(&o.clientCA, "client-ca", "", "extra CA certificates (PEM) trusted for data-plane client certificates (bring your own PKI)")
	fs.StringVar(&o.tlsSANs, "tls-san", "", "comma-separated extra DNS names or IPs for the generated server certificate")
	fs.DurationVar(&o.certTTL, "dataplane-cert-ttl", 24*time.Hour, "lifetime of the data-plane certificates this control plane signs; data planes renew at 2/3 of it")
	fs.DurationVar(&o.dataplaneRetention, "dataplane-retention", 24*time.Hour, "status of data planes disconnected longer than this is deleted; 0 keeps it forever")
	fs.DurationVar(&o.auditRetention, "audit-retention", 30*24*time.Hour, "how long audit records stay in etcd")
	fs.StringVar(&o.etcdCA, "etcd-ca", "", "CA (PEM) that verifies an external etcd's server certificate")
	fs.StringVar(&o.etcdCert, "etcd-cert", "", "client certificate (PEM) for an external etcd")
	fs.StringVar(&o.etcdKey, "etcd-key", "", "client key (PEM) for an external etcd")
	fs.StringVar(&o.etcdUsername, "etcd-username", "", "etcd user for an external etcd; the password is read from MERIDIAN_ETCD_PASSWORD")
	fs.StringVar(&o.id, "id", defaultID(), "replica id shown in data-plane status")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "debug, info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
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
	if o.version {
		return o, nil // nothing else matters
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		// --version is an action, not a setting: MERIDIAN_VERSION is not read.
		if given[f.Name] || f.Name == "version" {
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
	o.etcdPassword = getenv("MERIDIAN_ETCD_PASSWORD")
	if o.certTTL < 10*time.Second {
		return nil, fmt.Errorf("--dataplane-cert-ttl %s: at least 10s", o.certTTL)
	}
	if o.insecure && (o.tlsCert != "" || o.tlsKey != "" || o.clientCA != "" || o.adminTokens != "") {
		return nil, errors.New("--insecure turns TLS and authentication off: it cannot be combined with --tls-cert, --tls-key, --client-ca or --admin-tokens-file")
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
	if o.version {
		fmt.Fprintln(stdout, version)
		return exitOK
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

	sec, err := security.LoadPKI(o.securityConfig(log))
	if err != nil {
		return err
	}
	client, etcdErr, closeEtcd, err := connectEtcd(ctx, o, sec, log)
	if err != nil {
		return err
	}
	defer closeEtcd()

	st := store.New(client, store.Options{Prefix: o.etcdPrefix, ReplicaID: o.id, Logger: log, Metrics: m})
	defer st.Close()
	if !sec.Insecure() {
		if err := publishCA(ctx, st, sec); err != nil {
			return err
		}
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer lis.Close()
	secured, err := sec.Start(st, m, lis.Addr().String())
	if err != nil {
		return err
	}
	reg.MustRegister(metrics.NewDataplaneCollector(st, fleetScrapeTimeout))

	cache := snapshot.NewCache()
	fleet := store.NewFleetSize()
	var synced atomic.Bool
	discOpts := discovery.Options{Logger: log, Fleet: fleet, Metrics: m}
	if c := secured.Certificates(); c != nil {
		discOpts.Certificates = c
	}
	disc := discovery.NewServer(cache, st, discOpts)

	watchCtx, stopWatch := context.WithCancel(context.Background())
	var watches sync.WaitGroup
	watches.Go(func() { st.WatchFleet(watchCtx, fleet.Set) })
	watches.Go(func() { st.Watch(watchCtx, publishSnapshots(cache, &synced, m, log)) })
	watches.Go(func() { secured.Run(watchCtx, disc.Revoke) })
	defer func() { stopWatch(); watches.Wait() }()

	gs := grpc.NewServer(grpcOptions(m, secured, traces)...)
	meridianv1.RegisterAdminServiceServer(gs, admin.NewServer(st, admin.Options{Logger: log, Pin: sec.Pin(), CertTTL: o.certTTL}))
	meridianv1.RegisterConfigDiscoveryServiceServer(gs, disc)
	if !sec.Insecure() {
		meridianv1.RegisterIdentityServiceServer(gs, enrolment.NewServer(st, sec.Files().CA, enrolment.Options{CertTTL: o.certTTL, CABundle: sec.CABundle(), Logger: log}))
	}

	mlis, err := net.Listen("tcp", o.metricsListen)
	if err != nil {
		return fmt.Errorf("metrics listen: %w", err)
	}
	hs := &http.Server{Handler: httpHandler(&synced, reg, log), ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stdout, "controlplane listening on %s\n", lis.Addr())
	log.Info("controlplane listening", "addr", lis.Addr().String(), "metrics", mlis.Addr().String(), "id", o.id,
		"tls", !sec.Insecure(), "auth", !sec.Insecure())
	return runServers(ctx, gs, lis, hs, mlis, disc, etcdErr, log)
}

// runServers serves gRPC on lis and HTTP on mlis until ctx is done or one
// of them (or the embedded etcd) fails, then stops them in order.
func runServers(ctx context.Context, gs *grpc.Server, lis net.Listener, hs *http.Server, mlis net.Listener, disc *discovery.Server, etcdErr <-chan error, log *slog.Logger) error {
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
	stopGRPC(gs)
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	hs.Shutdown(sctx)
	wg.Wait()
	return runErr
}

func (o *options) securityConfig(log *slog.Logger) security.Config {
	var sans []string
	for san := range strings.SplitSeq(o.tlsSANs, ",") {
		if san = strings.TrimSpace(san); san != "" {
			sans = append(sans, san)
		}
	}
	return security.Config{
		DataDir: o.dataDir, Listen: o.listen, Insecure: o.insecure,
		TLSCert: o.tlsCert, TLSKey: o.tlsKey, ClientCA: o.clientCA, SANs: sans,
		TokensFile: o.adminTokens, CertTTL: o.certTTL,
		AuditRetention: o.auditRetention, DataplaneRetention: o.dataplaneRetention,
		ReplicaID: o.id, Logger: log,
	}
}

// connectEtcd starts the embedded etcd (with client certificates unless
// --insecure) or points at --etcd-endpoints, and returns a client, the
// embedded member's fatal errors (nil channel for an external cluster) and
// a func that closes both.
func connectEtcd(ctx context.Context, o *options, sec *security.Security, log *slog.Logger) (*clientv3.Client, <-chan error, func(), error) {
	var endpoints []string
	for e := range strings.SplitSeq(o.etcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			endpoints = append(endpoints, e)
		}
	}
	files := etcdclient.Files{CA: o.etcdCA, Cert: o.etcdCert, Key: o.etcdKey}
	var etcdErr <-chan error
	closeEmbedded := func() {}
	if len(endpoints) == 0 {
		cfg := embedetcd.Config{Dir: filepath.Join(o.dataDir, "etcd"), ClientAddr: o.etcdListen, PeerAddr: o.etcdPeerListen}
		if !sec.Insecure() {
			certs, err := sec.Files().EtcdCerts(security.EtcdHosts(o.etcdListen, o.etcdPeerListen), time.Now())
			if err != nil {
				return nil, nil, nil, err
			}
			cfg.TLS = &embedetcd.TLSFiles{CAFile: certs.CAFile, CertFile: certs.ServerCertFile, KeyFile: certs.ServerKeyFile}
			files = etcdclient.Files{CA: certs.CAFile, Cert: certs.ClientCertFile, Key: certs.ClientKeyFile}
		}
		srv, err := embedetcd.Start(ctx, cfg)
		if err != nil {
			return nil, nil, nil, err
		}
		endpoints, etcdErr, closeEmbedded = srv.Endpoints(), srv.Err(), srv.Close
		log.Info("embedded etcd started", "dir", cfg.Dir, "client", o.etcdListen, "peer", o.etcdPeerListen, "tls", cfg.TLS != nil)
	} else if files.CA == "" && files.Cert == "" && o.etcdUsername == "" {
		log.Warn("external etcd without TLS or credentials: anyone who reaches it can change the configuration; pass --etcd-ca, --etcd-cert and --etcd-key")
	}
	cfg, err := etcdclient.Config(endpoints, files, o.etcdUsername, o.etcdPassword)
	if err != nil {
		closeEmbedded()
		return nil, nil, nil, err
	}
	client, err := clientv3.New(cfg)
	if err != nil {
		closeEmbedded()
		return nil, nil, nil, fmt.Errorf("etcd client: %w", err)
	}
	return client, etcdErr, func() { client.Close(); closeEmbedded() }, nil
}

// publishCA records the cluster CA in etcd, or refuses to run next to
// replicas with another CA (their data planes would not trust this one).
func publishCA(ctx context.Context, st *store.Store, sec *security.Security) error {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := st.PublishCA(pctx, sec.Files().CA.Certificate().Raw); err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	return nil
}

// publishSnapshots turns each configuration version the store publishes
// into the snapshot data planes receive.
func publishSnapshots(cache *snapshot.Cache, synced *atomic.Bool, m *metrics.Metrics, log *slog.Logger) store.PublishFunc {
	return func(version uint64, committed time.Time, resources []*meridianv1.Resource) {
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
	}
}

// maxRecvBytes is config.MaxApplyBytes plus room for the request's other
// fields; the store rejects a configuration past the limit by name.
const maxRecvBytes = config.MaxApplyBytes + 64<<10

func grpcOptions(m *metrics.Metrics, secured *security.Running, traces trace.TracerProvider) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		// Data planes ping every 10s to detect dead connections.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(maxRecvBytes),
		// Interceptors run in the order given, over all ChainUnaryInterceptor
		// options: metrics first, so calls that fail count.
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
	}
	opts = append(opts, secured.ServerOptions()...)
	if traces != nil {
		opts = append(opts, grpc.StatsHandler(tracing.ServerHandler(traces)))
	}
	return opts
}

// stopGRPC waits for admin calls to finish, up to stopTimeout.
func stopGRPC(gs *grpc.Server) {
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		gs.Stop()
		<-stopped
	}
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
