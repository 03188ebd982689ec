// Command dataplane is Meridian's proxy. It serves traffic with the last
// configuration it applied (from its disk cache at boot), and keeps that
// configuration in step with the control plane.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	"github.com/meridian-gw/meridian/dataplane/internal/accesslog"
	"github.com/meridian-gw/meridian/dataplane/internal/admin"
	"github.com/meridian-gw/meridian/dataplane/internal/cache"
	"github.com/meridian-gw/meridian/dataplane/internal/clientip"
	"github.com/meridian-gw/meridian/dataplane/internal/enrolment"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/dataplane/internal/metrics"
	"github.com/meridian-gw/meridian/dataplane/internal/proxy"
	"github.com/meridian-gw/meridian/dataplane/internal/ratelimit/global"
	"github.com/meridian-gw/meridian/dataplane/internal/server"
	cpsync "github.com/meridian-gw/meridian/dataplane/internal/sync"
	"github.com/meridian-gw/meridian/proto/identity"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
	"github.com/meridian-gw/meridian/proto/tracing"
)

// version is the build version, set with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// adminShutdownTimeout bounds closing the admin server after the drain.
const adminShutdownTimeout = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type options struct {
	listen       string
	tlsListen    string
	certFiles    []string
	keyFiles     []string
	trusted      []netip.Prefix
	underscores  bool          // --allow-underscore-headers
	maxHeaders   int           // --max-headers; 0: no limit
	maxConns     int           // --max-connections; 0: no cap
	sendTimeout  time.Duration // --send-timeout; 0: none
	bodyTimeout  time.Duration // --body-read-timeout; 0: none
	server       server.Config
	drainTimeout time.Duration
	controlplane []string
	joinToken    *identity.JoinToken // nil: none given
	cpFiles      *enrolment.Files    // nil: no --controlplane-ca/-cert/-key
	insecure     bool
	nodeID       string
	labels       map[string]string
	cacheDir     string
	adminListen  string
	pprof        bool
	metrics      bool
	redis        *redis.UniversalOptions // nil: no --redis
	redisTimeout time.Duration
	logLevel     slog.Level
	logFormat    string  // json | text
	accessLog    string  // off | stdout | stderr | a file path
	accessSample float64 // fraction of successful requests logged
	traceSample  float64 // ratio of new traces sampled; negative: OTEL_TRACES_SAMPLER's
	version      bool
}

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

// noCredentialsHelp follows enrolment.ErrNoCredentials on the one line
// printed when no way to reach the control plane was given.
const noCredentialsHelp = "pass --join-token (or --join-token-file, MERIDIAN_JOIN_TOKEN) from 'gatewayctl tokens create', " +
	"or --controlplane-ca/--controlplane-cert/--controlplane-key, or --insecure for a control plane started with --insecure"

// parseFlags reads flags, falling back to MERIDIAN_<FLAG_NAME> environment
// variables for flags not given on the command line.
func parseFlags(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) (*options, error) {
	hostname, _ := os.Hostname()
	fs := flag.NewFlagSet("dataplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8080", "traffic listen address (HTTP/1.1 and h2c)")
	tlsListen := fs.String("tls-listen", ":8443", "TLS traffic listen address (HTTP/2 and HTTP/1.1), used when --tls-cert is set")
	var certFiles, keyFiles []string
	fs.Func("tls-cert", "TLS certificate file (PEM); repeat or comma-separate, paired in order with --tls-key; chosen by SNI, the first is the default", func(v string) error {
		certFiles = appendList(certFiles, v)
		return nil
	})
	fs.Func("tls-key", "TLS private key file (PEM) for the --tls-cert at the same position", func(v string) error {
		keyFiles = appendList(keyFiles, v)
		return nil
	})
	trusted := fs.String("trusted-proxies", "", "comma-separated CIDRs or IPs whose X-Forwarded-*, Forwarded and client-IP headers (X-Real-IP, True-Client-IP, ...) are trusted (default none: dropped)")
	underscores := fs.Bool("allow-underscore-headers", false, "forward client request headers whose names contain an underscore (X_User_ID); by default they are dropped, as nginx's underscores_in_headers off, since CGI-style upstreams read them as X-User-ID")
	readHeaderTimeout := fs.Duration("read-header-timeout", server.DefaultReadHeaderTimeout, "time to read a request's headers")
	readTimeout := fs.Duration("read-timeout", 0, "time to read a whole request, body included; 0 = none, so long uploads and client streams work")
	writeTimeout := fs.Duration("write-timeout", 0, "time to write a response; 0 = none, so server-sent events and long downloads work")
	idleTimeout := fs.Duration("idle-timeout", server.DefaultIdleTimeout, "keep-alive connections idle this long are closed")
	maxHeaderBytes := fs.Int("max-header-bytes", server.DefaultMaxHeaderBytes, "largest request line and headers accepted, in bytes")
	maxHeaders := fs.Int("max-headers", proxy.DefaultMaxHeaders, "most request header fields accepted, each value line counted (Host not); more get 431, as Envoy's max_headers_count; 0 = no limit")
	maxConns := fs.Int("max-connections", server.DefaultMaxConnections, "most client connections open at once on the traffic listeners (plain and TLS together); at the cap a new connection closes the longest-idle keep-alive one, as nginx does, and is refused only when none is idle; 0 = no cap")
	sendTimeout := fs.Duration("send-timeout", server.DefaultSendTimeout, "longest wait for one write of a response to a client that does not read (between two successful writes, as nginx's send_timeout); the client's connection is closed and its upstream connection freed; 0 = none")
	bodyTimeout := fs.Duration("body-read-timeout", proxy.DefaultBodyReadTimeout, "longest wait between two reads of a request body (nginx's client_body_timeout); the client gets 408 and its upstream connection is freed; gRPC streams are not bounded; 0 = none")
	drainTimeout := fs.Duration("drain-timeout", server.DefaultDrainTimeout, "on SIGTERM, time in-flight requests get to finish")
	controlplane := fs.String("controlplane", "127.0.0.1:7400", "control-plane addresses, comma-separated, tried in order")
	joinToken := fs.String("join-token", "", "join token from 'gatewayctl tokens create', used to enrol when <cache-dir>/identity holds no usable certificate; prefer --join-token-file or MERIDIAN_JOIN_TOKEN, which process listings do not show")
	joinTokenFile := fs.String("join-token-file", "", "file holding the join token (instead of --join-token)")
	cpCA := fs.String("controlplane-ca", "", "own PKI: CA bundle (PEM) that verifies the control plane; with --controlplane-cert and --controlplane-key instead of enrolment; the files are reloaded when they change")
	cpCert := fs.String("controlplane-cert", "", "own PKI: client certificate chain (PEM) whose URI SAN is spiffe://meridian/dataplane/<node-id>")
	cpKey := fs.String("controlplane-key", "", "own PKI: private key (PEM) of --controlplane-cert")
	insecure := fs.Bool("insecure", false, "plaintext to the control plane, without credentials; only for a control plane started with --insecure")
	nodeID := fs.String("node-id", hostname, "this data plane's id")
	labels := fs.String("labels", "", "node labels, k=v,k=v")
	cacheDir := fs.String("cache-dir", "./dataplane-cache", "directory of the last-known-good snapshot")
	adminListen := fs.String("admin-listen", "127.0.0.1:9901", "admin listen address (/healthz, /readyz, /config, /metrics)")
	metricsOn := fs.Bool("metrics", true, "count requests and serve Prometheus metrics on the admin listener's /metrics; false turns both off")
	pprofOn := fs.Bool("pprof", false, "serve Go runtime profiles (net/http/pprof) under /debug/pprof/ on the admin listener")
	redisAddrs := fs.String("redis", "", "Redis for global rate limits: host:port; several comma-separated are Cluster seeds, or Sentinels with --redis-master-name (default none: global limits apply onStoreFailure)")
	redisMaster := fs.String("redis-master-name", "", "Sentinel master name; --redis then lists Sentinel addresses")
	redisCluster := fs.Bool("redis-cluster", false, "treat a single --redis address as a Redis Cluster seed")
	redisUser := fs.String("redis-username", "", "Redis ACL user name; the password is read from the MERIDIAN_REDIS_PASSWORD environment variable (and MERIDIAN_REDIS_SENTINEL_PASSWORD for Sentinels), never a flag")
	redisDB := fs.Int("redis-db", 0, "Redis database number (standalone and Sentinel)")
	redisTLS := fs.Bool("redis-tls", false, "connect to Redis over TLS, verified against the system roots")
	redisTimeout := fs.Duration("redis-timeout", global.DefaultTimeout, "bound on each rate limit decision sent to Redis; past it the limit's onStoreFailure policy applies")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "process log format on stderr: json or text")
	accessLog := fs.String("access-log", "stdout", "where one JSON line per request goes: stdout, stderr, a file path (appended to), or off")
	accessSample := fs.Float64("access-log-sample", 1, "fraction (0 to 1) of successful requests (status below 400) logged; failed ones always are")
	traceSample := fs.Float64("trace-sample", -1, "fraction (0 to 1) of new traces sampled, parent-based (a client's sampled flag is followed); negative: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG decide (default parentbased_always_on). Tracing is on only when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: dataplane [flags]\n\nEvery flag can also be set with MERIDIAN_<NAME> (e.g. MERIDIAN_CACHE_DIR); a flag wins.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "version" {
			return // an action, not a setting
		}
		env := "MERIDIAN_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookupEnv(env); ok && !set[f.Name] && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%w: %s: %v", errUsage, env, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}

	o := &options{
		listen: *listen, tlsListen: *tlsListen, certFiles: certFiles, keyFiles: keyFiles, underscores: *underscores,
		nodeID: *nodeID, cacheDir: *cacheDir, adminListen: *adminListen, pprof: *pprofOn, metrics: *metricsOn, version: *showVersion,
		redisTimeout: *redisTimeout,
		drainTimeout: *drainTimeout,
		logFormat:    *logFormat, accessLog: *accessLog, accessSample: *accessSample,
		traceSample: *traceSample,
		maxHeaders:  *maxHeaders, maxConns: *maxConns,
		sendTimeout: *sendTimeout, bodyTimeout: *bodyTimeout,
		server: server.Config{
			ReadHeaderTimeout: *readHeaderTimeout, ReadTimeout: *readTimeout, WriteTimeout: *writeTimeout,
			IdleTimeout: *idleTimeout, MaxHeaderBytes: *maxHeaderBytes,
		},
	}
	if len(certFiles) != len(keyFiles) {
		return nil, fmt.Errorf("%w: --tls-cert and --tls-key: %d certificates but %d keys; give them in pairs", errUsage, len(certFiles), len(keyFiles))
	}
	for name, d := range map[string]time.Duration{"read-header-timeout": *readHeaderTimeout, "read-timeout": *readTimeout, "write-timeout": *writeTimeout, "idle-timeout": *idleTimeout, "drain-timeout": *drainTimeout, "send-timeout": *sendTimeout, "body-read-timeout": *bodyTimeout} {
		if d < 0 {
			return nil, fmt.Errorf("%w: --%s: must not be negative", errUsage, name)
		}
	}
	if *maxHeaderBytes <= 0 {
		return nil, fmt.Errorf("%w: --max-header-bytes: must be positive", errUsage)
	}
	for name, n := range map[string]int{"max-headers": *maxHeaders, "max-connections": *maxConns} {
		if n < 0 {
			return nil, fmt.Errorf("%w: --%s: must not be negative (0 = no limit)", errUsage, name)
		}
	}
	var err error
	if o.trusted, err = parsePrefixes(*trusted); err != nil {
		return nil, fmt.Errorf("%w: --trusted-proxies: %v", errUsage, err)
	}
	for _, a := range strings.Split(*controlplane, ",") {
		if a = strings.TrimSpace(a); a != "" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("%w: --controlplane: %q is not host:port", errUsage, a)
			}
			o.controlplane = append(o.controlplane, a)
		}
	}
	if len(o.controlplane) == 0 {
		return nil, fmt.Errorf("%w: --controlplane: at least one address is required", errUsage)
	}
	if o.nodeID == "" {
		return nil, fmt.Errorf("%w: --node-id is required (the hostname is unknown)", errUsage)
	}
	if err := credentialFlags(o, *joinToken, *joinTokenFile, *cpCA, *cpCert, *cpKey, *insecure); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if o.labels, err = parseLabels(*labels); err != nil {
		return nil, fmt.Errorf("%w: --labels: %v", errUsage, err)
	}
	if o.redis, err = redisOptions(*redisAddrs, *redisMaster, *redisCluster, *redisUser, *redisDB, *redisTLS, lookupEnv); err != nil {
		return nil, fmt.Errorf("%w: --redis: %v", errUsage, err)
	}
	if *redisTimeout <= 0 {
		return nil, fmt.Errorf("%w: --redis-timeout: must be positive", errUsage)
	}
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level: %q is not debug, info, warn or error", errUsage, *logLevel)
	}
	if o.logFormat != "json" && o.logFormat != "text" {
		return nil, fmt.Errorf("%w: --log-format: %q is not json or text", errUsage, o.logFormat)
	}
	if o.accessLog == "" {
		return nil, fmt.Errorf("%w: --access-log: give off, stdout, stderr or a file path", errUsage)
	}
	// The negated form also refuses NaN.
	if o.traceSample > 1 || o.traceSample != o.traceSample {
		return nil, fmt.Errorf("%w: --trace-sample: %v is more than 1", errUsage, o.traceSample)
	}
	if !(o.accessSample >= 0 && o.accessSample <= 1) {
		return nil, fmt.Errorf("%w: --access-log-sample: %v is not between 0 and 1", errUsage, o.accessSample)
	}
	return o, nil
}

// credentialFlags checks that at most one way to authenticate to the
// control plane was given and fills it into o. Whether there is one at all
// depends on the stored identity, which enrolment.New decides.
func credentialFlags(o *options, token, tokenFile, ca, cert, key string, insecure bool) error {
	var err error
	if o.joinToken, err = joinTokenFlags(token, tokenFile); err != nil {
		return err
	}
	switch {
	case ca != "" && cert != "" && key != "":
		o.cpFiles = &enrolment.Files{CA: ca, Cert: cert, Key: key}
	case ca != "" || cert != "" || key != "":
		return errors.New("--controlplane-ca, --controlplane-cert and --controlplane-key go together; give all three")
	}
	o.insecure = insecure
	modes := 0
	for _, given := range []bool{o.joinToken != nil, o.cpFiles != nil, insecure} {
		if given {
			modes++
		}
	}
	if modes > 1 {
		return errors.New("--join-token, --controlplane-ca/--controlplane-cert/--controlplane-key and --insecure exclude each other; choose one")
	}
	return nil
}

// joinTokenFlags reads the join token from --join-token or the file of
// --join-token-file (nil when neither is given). Errors never repeat it.
func joinTokenFlags(token, file string) (*identity.JoinToken, error) {
	if token != "" && file != "" {
		return nil, errors.New("--join-token and --join-token-file exclude each other; give one")
	}
	source := "--join-token"
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--join-token-file: %w", err)
		}
		token, source = string(data), "--join-token-file "+file
		if strings.TrimSpace(token) == "" {
			return nil, fmt.Errorf("%s: the file is empty", source)
		}
	}
	if token == "" {
		return nil, nil
	}
	t, err := identity.ParseJoinToken(token)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return &t, nil
}

// appendList appends the comma-separated items of v to list.
func appendList(list []string, v string) []string {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			list = append(list, item)
		}
	}
	return list
}

// parsePrefixes parses comma-separated CIDRs; a bare IP is a one-address

// redisOptions builds the go-redis universal client options for the
// --redis flags: one address is standalone (or a Cluster seed with
// cluster), several are Cluster seeds, and a master name makes them
// Sentinels. Passwords come from the environment so they never show in
// process listings or logs. It returns nil when addrs is empty.
func redisOptions(addrs, master string, cluster bool, user string, db int, useTLS bool, lookupEnv func(string) (string, bool)) (*redis.UniversalOptions, error) {
	var list []string
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%q is not host:port", a)
		}
		list = append(list, a)
	}
	if len(list) == 0 {
		if master != "" || cluster {
			return nil, errors.New("--redis-master-name and --redis-cluster need --redis addresses")
		}
		return nil, nil
	}
	if master != "" && cluster {
		return nil, errors.New("--redis-master-name (Sentinel) and --redis-cluster exclude each other")
	}
	if db < 0 {
		return nil, errors.New("--redis-db must not be negative")
	}
	if db != 0 && (cluster || len(list) > 1 && master == "") {
		return nil, errors.New("--redis-db is not supported by Redis Cluster")
	}
	o := &redis.UniversalOptions{
		Addrs: list, MasterName: master, IsClusterMode: cluster,
		Username: user, DB: db,
	}
	o.Password, _ = lookupEnv("MERIDIAN_REDIS_PASSWORD")
	o.SentinelPassword, _ = lookupEnv("MERIDIAN_REDIS_SENTINEL_PASSWORD")
	if useTLS {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o, nil
}

// prefix.
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range appendList(nil, s) {
		if p, err := netip.ParsePrefix(item); err == nil {
			out = append(out, p.Masked())
			continue
		}
		ip, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR or IP address", item)
		}
		ip = ip.Unmap()
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out, nil
}

func parseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return labels, nil
}

// controlPlaneApplier applies snapshots from the control plane and, once
// one is live, makes it the last known good on disk.
type controlPlaneApplier struct {
	gw    *gateway.Gateway
	cache *cache.Store
	log   *slog.Logger
}

func (a controlPlaneApplier) Apply(ctx context.Context, snap *meridianv1.Snapshot) error {
	if err := a.gw.Apply(ctx, snap, gateway.SourceControlPlane); err != nil {
		return err
	}
	if err := a.cache.Save(snap); err != nil {
		// Serving the new config matters more than caching it.
		a.log.Warn("snapshot cache not written", "error", err)
	}
	return nil
}

func (a controlPlaneApplier) Applied() (uint64, string) { return a.gw.Applied() }

func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	o, err := parseFlags(args, lookupEnv, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "dataplane: %s\n", strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
		return 2
	case o.version:
		fmt.Fprintln(stdout, version)
		return 0
	}
	logOpts := &slog.HandlerOptions{Level: o.logLevel}
	var log *slog.Logger
	if o.logFormat == "text" {
		log = slog.New(slog.NewTextHandler(stderr, logOpts))
	} else {
		log = slog.New(slog.NewJSONHandler(stderr, logOpts))
	}
	access, closeAccess, err := openAccessLog(o.accessLog, o.accessSample, stdout, stderr, log)
	if err != nil {
		fmt.Fprintf(stderr, "dataplane: --access-log: %v\n", err)
		return 1
	}
	// Deferred for the early returns; the normal path closes it once the
	// servers stopped, so the last requests' lines are written.
	defer closeAccess()

	tp, err := tracing.NewProvider(ctx, "meridian-dataplane", lookupEnv, o.traceSample)
	if err != nil {
		fmt.Fprintf(stderr, "dataplane: tracing: %v\n", err)
		return 1
	}
	if tp != nil {
		// Deferred: flushes the spans of the last requests, after the
		// drain, on every return.
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), adminShutdownTimeout)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("flushing traces failed", "error", err)
			}
		}()
		log.Info("tracing on: spans exported over OTLP")
	}

	certs, err := server.LoadCertificates(o.certFiles, o.keyFiles)
	if err != nil {
		fmt.Fprintf(stderr, "dataplane: --tls-cert: %v\n", err)
		return 1
	}
	creds, err := enrolment.New(enrolment.Config{
		Dir: filepath.Join(o.cacheDir, "identity"), NodeID: o.nodeID, Addresses: o.controlplane,
		Token: o.joinToken, Files: o.cpFiles, Insecure: o.insecure, Log: log,
	})
	switch {
	case errors.Is(err, enrolment.ErrNoCredentials):
		fmt.Fprintf(stderr, "dataplane: %v: %s\n", err, noCredentialsHelp)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "dataplane: %v\n", err)
		return 1
	}

	// The registry is this process's alone: nothing registers with
	// Prometheus's global default. With --metrics=false there is none and
	// m is nil, which every recorder takes as "count nothing".
	var reg *prometheus.Registry
	var m *metrics.Metrics
	if o.metrics {
		reg = prometheus.NewRegistry()
		reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			metrics.NewBuildInfo(version),
		)
		m = metrics.New(reg)
	}

	ip := clientip.New(o.trusted)
	gwOpts := gateway.Options{Logger: log, ClientIP: ip, Metrics: m, NodeID: o.nodeID,
		BodyReadTimeout: o.bodyTimeout, SendTimeout: o.sendTimeout}
	if o.redis != nil {
		// go-redis prints each failed dial on its own; the limiter logs
		// every switch already, so these go to debug, as JSON.
		redis.SetLogger(redisLogger{log})
		rc := global.NewClient(o.redis)
		defer rc.Close()
		// The client connects lazily; a Redis that is down at boot only
		// means onStoreFailure until it comes up.
		gwOpts.Redis = global.New(rc, global.Options{Timeout: o.redisTimeout, Logger: log})
		log.Info("global rate limits counted in Redis", "redis", o.redis.Addrs, "sentinel_master", o.redis.MasterName)
	}
	gw := gateway.New(gwOpts)
	defer gw.Close()
	store := cache.New(o.cacheDir)

	var listeners []net.Listener
	closeListeners := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	listen := func(flagName, addr string) net.Listener {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			closeListeners()
			fmt.Fprintf(stderr, "dataplane: --%s: %v\n", flagName, err)
			return nil
		}
		listeners = append(listeners, l)
		return l
	}
	ln := listen("listen", o.listen)
	if ln == nil {
		return 1
	}
	var tlsLn net.Listener
	if len(certs) > 0 {
		if tlsLn = listen("tls-listen", o.tlsListen); tlsLn == nil {
			return 1
		}
	}
	adminLn := listen("admin-listen", o.adminListen)
	if adminLn == nil {
		return 1
	}
	// Known only now, and before any snapshot is applied (the cache
	// included): no upstream target may be one of them.
	self := []gateway.Listener{{Name: "traffic", Addr: ln.Addr().String()}, {Name: "admin", Addr: adminLn.Addr().String()}}
	if tlsLn != nil {
		self = append(self, gateway.Listener{Name: "TLS traffic", Addr: tlsLn.Addr().String()})
	}
	gw.SetListeners(self)
	loadCache(ctx, gw, store, log)

	syncConfig := cpsync.Config{
		Addresses: o.controlplane,
		Node: &meridianv1.Node{
			Id: o.nodeID, Labels: o.labels, BuildVersion: version, ListenAddress: ln.Addr().String(),
		},
		Applier:     controlPlaneApplier{gw: gw, cache: store, log: log},
		OnFleet:     gw.SetFleetSize,
		Log:         log,
		Credentials: creds.TransportCredentials,
	}
	if tp != nil {
		syncConfig.TracerProvider = tp
		syncConfig.DialOptions = []grpc.DialOption{grpc.WithStatsHandler(tracing.ClientHandler(tp))}
	}
	client, err := cpsync.New(syncConfig)
	if err != nil {
		closeListeners()
		fmt.Fprintf(stderr, "dataplane: %v\n", err)
		return 2
	}

	errorLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	adminOpts := admin.Options{Pprof: o.pprof, Identity: creds}
	if reg != nil {
		reg.MustRegister(metrics.NewObserver(func(obs *metrics.Observation) {
			gw.Observe(obs)
			obs.Connected = client.Connected() != ""
			obs.SyncAge = client.DisconnectedFor()
			obs.SnapshotsReceived, obs.Nacks = client.Received(), client.Nacks()
		}))
		adminOpts.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: errorLog, ErrorHandling: promhttp.ContinueOnError})
	}
	srvConfig := o.server
	srvConfig.Certificates = certs
	srvConfig.ErrorLog = errorLog
	// One cap for both traffic listeners; each is wrapped before Serve.
	conns := server.NewConnLimiter(server.ConnLimits{Max: o.maxConns, Logger: log, Metrics: m})
	srvConfig.Connections = conns
	handlerConfig := proxy.HandlerConfig{ClientIP: ip, AllowUnderscoreHeaders: o.underscores, MaxHeaders: o.maxHeaders, Metrics: m, AccessLog: access, TracerProvider: tp}
	traffic := server.New(gw.Handler(handlerConfig), srvConfig)
	var readiness server.Readiness
	adminSrv := &http.Server{
		Handler:           readiness.Wrap(admin.Handler(gw, client, adminOpts)),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          errorLog,
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	serveErr := make(chan error, 3)
	serve := func(l net.Listener, serveFn func(net.Listener) error) {
		defer wg.Done()
		if err := serveFn(l); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
			cancel()
		}
	}
	wg.Add(4)
	// The framing check reads plaintext, so only the plain listener has
	// it; both bound writes to clients that stop reading.
	guard := server.GuardConfig{Framing: true, SendTimeout: o.sendTimeout, Reject: m.Connections().Malformed}
	go serve(conns.Listener(server.GuardListener(ln, guard)), traffic.Serve)
	go serve(adminLn, adminSrv.Serve)
	// Enrolment may wait for a control plane; traffic is served from the
	// cache meanwhile, and the stream opens once there are credentials.
	go func() {
		defer wg.Done()
		creds.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		select {
		case <-creds.Ready():
			client.Run(ctx)
		case <-ctx.Done():
		}
	}()
	fmt.Fprintf(stdout, "dataplane listening on %s\n", ln.Addr())
	attrs := []any{"listen", ln.Addr().String(), "admin", adminLn.Addr().String(),
		"controlplane", o.controlplane, "node", o.nodeID, "version", version,
		"accessLog", o.accessLog, "accessLogSample", o.accessSample}
	if tlsLn != nil {
		wg.Add(1)
		guard.Framing = false
		go serve(conns.Listener(server.GuardListener(tlsLn, guard)), func(l net.Listener) error { return traffic.ServeTLS(l, "", "") })
		fmt.Fprintf(stdout, "dataplane TLS listening on %s\n", tlsLn.Addr())
		attrs = append(attrs, "tlsListen", tlsLn.Addr().String(), "certificates", len(certs))
	}
	fmt.Fprintf(stdout, "admin listening on %s\n", adminLn.Addr())
	log.Info("dataplane started", attrs...)

	<-ctx.Done()
	// Drain: /readyz turns 503 at once so load balancers stop sending;
	// Shutdown closes the traffic listeners (new connections are refused)
	// and idle connections, then waits for in-flight requests up to
	// --drain-timeout. Hijacked connections (WebSockets) are not waited
	// for. The admin server keeps answering until the drain is over.
	readiness.StartDrain()
	log.Info("draining", "timeout", o.drainTimeout.String())
	code := 0
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), o.drainTimeout)
	defer cancelDrain()
	if err := traffic.Shutdown(drainCtx); err != nil {
		log.Warn("drain timed out; closing remaining connections", "error", err)
		traffic.Close()
	}
	adminCtx, cancelAdmin := context.WithTimeout(context.Background(), adminShutdownTimeout)
	defer cancelAdmin()
	if err := adminSrv.Shutdown(adminCtx); err != nil {
		adminSrv.Close()
	}
	wg.Wait()
	close(serveErr)
	for err := range serveErr {
		log.Error("server failed", "error", err)
		code = 1
	}
	closeAccess()
	log.Info("stopped")
	return code
}

// openAccessLog returns the access logger for --access-log dest (nil for
// off) and a function that flushes and closes it, safe to call twice.
// Lines are buffered by an accesslog.Writer, so no request waits on the
// output; a file is opened for appending, which log rotation by copy and
// truncate (logrotate's copytruncate) works with.
func openAccessLog(dest string, sample float64, stdout, stderr io.Writer, log *slog.Logger) (*accesslog.Logger, func(), error) {
	var out io.Writer
	var file *os.File
	switch dest {
	case "off":
		return nil, func() {}, nil
	case "stdout":
		out = stdout
	case "stderr":
		out = stderr
	default:
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, err
		}
		out, file = f, f
	}
	w := accesslog.NewWriter(out, accesslog.WriterOptions{
		OnError: func(err error) { log.Warn("access log", "error", err) },
	})
	var once sync.Once
	closeFn := func() {
		once.Do(func() {
			w.Close()
			if file != nil {
				if err := file.Close(); err != nil {
					log.Warn("access log", "error", err)
				}
			}
		})
	}
	return accesslog.New(w, sample), closeFn, nil
}

// loadCache applies the last known good snapshot, if there is a usable one.
// A corrupt or unappliable cache is reported and ignored: the control plane
// will provide a configuration.
func loadCache(ctx context.Context, gw *gateway.Gateway, store *cache.Store, log *slog.Logger) {
	snap, err := store.Load()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Info("no cached snapshot", "path", store.Path())
		return
	case err != nil:
		log.Warn("ignoring cached snapshot", "error", err)
		return
	}
	if err := gw.Apply(ctx, snap, gateway.SourceCache); err != nil {
		log.Warn("ignoring cached snapshot", "version", snap.GetVersion(), "error", err)
	}
}

// redisLogger sends go-redis's internal messages to the process log at
// debug level.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis client", "message", fmt.Sprintf(format, v...))
}
