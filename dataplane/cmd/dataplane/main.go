// Command dataplane is Meridian's proxy. It serves traffic with the last
// configuration it applied (from its disk cache at boot), and keeps that
// configuration in step with the control plane.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/admin"
	"github.com/meridian-gw/meridian/dataplane/internal/cache"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	cpsync "github.com/meridian-gw/meridian/dataplane/internal/sync"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// version is the build version, set with -ldflags "-X main.version=v1.2.3".
var version = "dev"

const shutdownTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type options struct {
	listen       string
	controlplane []string
	nodeID       string
	labels       map[string]string
	cacheDir     string
	adminListen  string
	redis        string
	logLevel     slog.Level
	version      bool
}

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

// parseFlags reads flags, falling back to MERIDIAN_<FLAG_NAME> environment
// variables for flags not given on the command line.
func parseFlags(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) (*options, error) {
	hostname, _ := os.Hostname()
	fs := flag.NewFlagSet("dataplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8080", "traffic listen address")
	controlplane := fs.String("controlplane", "127.0.0.1:7400", "control-plane addresses, comma-separated, tried in order")
	nodeID := fs.String("node-id", hostname, "this data plane's id")
	labels := fs.String("labels", "", "node labels, k=v,k=v")
	cacheDir := fs.String("cache-dir", "./dataplane-cache", "directory of the last-known-good snapshot")
	adminListen := fs.String("admin-listen", "127.0.0.1:9901", "admin listen address (/healthz, /readyz, /config)")
	redis := fs.String("redis", "", "Redis address for global rate limits (accepted, not used yet)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
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

	o := &options{listen: *listen, nodeID: *nodeID, cacheDir: *cacheDir, adminListen: *adminListen, redis: *redis, version: *showVersion}
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
	var err error
	if o.labels, err = parseLabels(*labels); err != nil {
		return nil, fmt.Errorf("%w: --labels: %v", errUsage, err)
	}
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level: %q is not debug, info, warn or error", errUsage, *logLevel)
	}
	return o, nil
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
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	if o.redis != "" {
		log.Info("--redis is accepted but not used yet", "redis", o.redis)
	}

	gw := gateway.New(log)
	defer gw.Close()
	store := cache.New(o.cacheDir)
	loadCache(ctx, gw, store, log)

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		fmt.Fprintf(stderr, "dataplane: --listen: %v\n", err)
		return 1
	}
	adminLn, err := net.Listen("tcp", o.adminListen)
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "dataplane: --admin-listen: %v\n", err)
		return 1
	}

	client, err := cpsync.New(cpsync.Config{
		Addresses: o.controlplane,
		Node: &meridianv1.Node{
			Id: o.nodeID, Labels: o.labels, BuildVersion: version, ListenAddress: ln.Addr().String(),
		},
		Applier: controlPlaneApplier{gw: gw, cache: store, log: log},
		Log:     log,
	})
	if err != nil {
		ln.Close()
		adminLn.Close()
		fmt.Fprintf(stderr, "dataplane: %v\n", err)
		return 2
	}

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // h2c clients, gRPC without TLS
	errorLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	traffic := &http.Server{
		Handler:           gw.Handler(),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          errorLog,
	}
	adminSrv := &http.Server{
		Handler:           admin.Handler(gw, client),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          errorLog,
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	serveErr := make(chan error, 2)
	serve := func(srv *http.Server, l net.Listener) {
		defer wg.Done()
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
			cancel()
		}
	}
	wg.Add(3)
	go serve(traffic, ln)
	go serve(adminSrv, adminLn)
	go func() {
		defer wg.Done()
		client.Run(ctx)
	}()
	fmt.Fprintf(stdout, "dataplane listening on %s\n", ln.Addr())
	fmt.Fprintf(stdout, "admin listening on %s\n", adminLn.Addr())
	log.Info("dataplane started", "listen", ln.Addr().String(), "admin", adminLn.Addr().String(),
		"controlplane", o.controlplane, "node", o.nodeID, "version", version)

	<-ctx.Done()
	log.Info("shutting down")
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancelShutdown()
	code := 0
	for _, srv := range []*http.Server{traffic, adminSrv} {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			log.Warn("shutdown", "error", err)
			srv.Close()
		}
	}
	wg.Wait()
	close(serveErr)
	for err := range serveErr {
		log.Error("server failed", "error", err)
		code = 1
	}
	return code
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
