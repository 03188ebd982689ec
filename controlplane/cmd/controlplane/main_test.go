package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr bool
		check   func(*options) bool
	}{
		{name: "defaults", check: func(o *options) bool {
			return o.listen == "127.0.0.1:7400" && o.metricsListen == "127.0.0.1:7401" && o.dataDir == "./data" &&
				o.etcdListen == "127.0.0.1:2379" && o.etcdPeerListen == "127.0.0.1:2380" && o.etcdEndpoints == "" &&
				o.id != "" && o.logLevel == slog.LevelInfo
		}},
		{name: "env fills", env: map[string]string{"MERIDIAN_LISTEN": "127.0.0.1:9", "MERIDIAN_ETCD_ENDPOINTS": "a:1,b:2", "MERIDIAN_LOG_LEVEL": "debug"},
			check: func(o *options) bool {
				return o.listen == "127.0.0.1:9" && o.etcdEndpoints == "a:1,b:2" && o.logLevel == slog.LevelDebug
			}},
		{name: "flag wins over env", args: []string{"--listen", "127.0.0.1:8"}, env: map[string]string{"MERIDIAN_LISTEN": "127.0.0.1:9"},
			check: func(o *options) bool { return o.listen == "127.0.0.1:8" }},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: true},
		{name: "bad env log level", env: map[string]string{"MERIDIAN_LOG_LEVEL": "loud"}, wantErr: true},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: true},
		{name: "stray argument", args: []string{"serve"}, wantErr: true},
		{name: "empty listen", args: []string{"--listen", ""}, wantErr: true},
		{name: "secure by default", check: func(o *options) bool { return !o.insecure && o.certTTL == 24*time.Hour }},
		{name: "insecure from env", env: map[string]string{"MERIDIAN_INSECURE": "true"}, check: func(o *options) bool { return o.insecure }},
		{name: "insecure with a certificate", args: []string{"--insecure", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, wantErr: true},
		{name: "insecure with tokens", args: []string{"--insecure", "--admin-tokens-file", "t"}, wantErr: true},
		{name: "certificates too short", args: []string{"--dataplane-cert-ttl", "5s"}, wantErr: true},
		{name: "etcd password from env only", env: map[string]string{"MERIDIAN_ETCD_PASSWORD": "pw"}, check: func(o *options) bool { return o.etcdPassword == "pw" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr {
				if err == nil {
					t.Fatal("parseFlags succeeded, want error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(o) {
				t.Fatalf("options = %+v", o)
			}
		})
	}
}

func TestUsageExitCode(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--bogus"}, func(string) string { return "" }, io.Discard, &stderr); code != exitUsage {
		t.Fatalf("exit code %d, want %d", code, exitUsage)
	}
	if !strings.Contains(stderr.String(), "bogus") {
		t.Fatalf("stderr does not name the bad flag: %s", stderr.String())
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and a polling reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// program is a control plane started with run.
type program struct {
	addr           string
	stdout, stderr *syncBuffer
	cancel         context.CancelFunc
	exit           chan int
	stopOnce       sync.Once
	code           int
}

// startProgram runs the control plane with args and env until it listens.
// It is stopped when the test ends, if not before.
func startProgram(t *testing.T, args []string, env map[string]string) *program {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &program{stdout: &syncBuffer{}, stderr: &syncBuffer{}, cancel: cancel, exit: make(chan int, 1)}
	go func() { p.exit <- run(ctx, args, func(k string) string { return env[k] }, p.stdout, p.stderr) }()
	t.Cleanup(func() { p.stop() })

	re := regexp.MustCompile(`controlplane listening on (\S+)\n`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m := re.FindStringSubmatch(p.stdout.String()); m != nil {
			p.addr = m[1]
			return p
		}
		select {
		case code := <-p.exit:
			p.exit <- code
			t.Fatalf("exited %d before listening: %s", code, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("never listened; stderr: %s", p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop cancels the program and returns its exit code.
func (p *program) stop() int {
	p.cancel()
	p.stopOnce.Do(func() { p.code = <-p.exit })
	return p.code
}

func TestRunServesAndStops(t *testing.T) {
	dir := t.TempDir()
	metrics := etcdtest.FreeAddr(t)
	args := []string{
		"--listen", "127.0.0.1:0",
		"--metrics-listen", metrics,
		"--data-dir", dir,
		"--etcd-listen", etcdtest.FreeAddr(t),
		"--etcd-peer-listen", etcdtest.FreeAddr(t),
		"--id", "cp-test",
	}
	p := startProgram(t, args, nil)
	ctlCfg := readCtlConfig(t, dir)
	if ctlCfg.Server != p.addr || ctlCfg.Token == "" {
		t.Fatalf("gatewayctl.yaml: server %q (listening on %s), token set: %v", ctlCfg.Server, p.addr, ctlCfg.Token != "")
	}
	tokens, err := os.ReadFile(filepath.Join(dir, "admin-tokens"))
	if err != nil || strings.Contains(string(tokens), ctlCfg.Token) || !strings.Contains(string(tokens), "admin admin ") {
		t.Fatalf("admin-tokens must hold the admin token's hash only: %v\n%s", err, tokens)
	}

	conn := dialTLS(t, p.addr, []byte(ctlCfg.CA), nil)
	client := meridianv1.NewAdminServiceClient(conn)
	callCtx, callCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer callCancel()
	if _, err := client.List(callCtx, &meridianv1.ListRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("List without token: %v, want Unauthenticated", err)
	}
	authed := withToken(callCtx, ctlCfg.Token)
	up := &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: "u"},
		Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: "127.0.0.1:1"}}},
	}}}
	resp, err := client.Apply(authed, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{up}, Author: "claimed"})
	if err != nil || resp.GetVersion() != 1 {
		t.Fatalf("Apply = %v, %v", resp, err)
	}
	hist, err := client.History(authed, &meridianv1.HistoryRequest{Limit: 1})
	if err != nil || hist.GetEntries()[0].GetAuthor() != "admin" {
		t.Fatalf("history author = %v, %v; want the principal admin", hist, err)
	}

	// Without a certificate the discovery stream is refused.
	anon, err := meridianv1.NewConfigDiscoveryServiceClient(conn).StreamSnapshots(callCtx)
	if err == nil {
		_, err = anon.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("stream without a certificate: %v, want Unauthenticated", err)
	}

	// A data plane enrolled with a join token gets the applied version.
	cert := enrol(callCtx, t, client, conn, ctlCfg.Token, "dp")
	dpConn := dialTLS(t, p.addr, []byte(ctlCfg.CA), &cert)
	stream, err := meridianv1.NewConfigDiscoveryServiceClient(dpConn).StreamSnapshots(callCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Node: &meridianv1.Node{Id: "dp"}}); err != nil {
		t.Fatal(err)
	}
	snap, err := stream.Recv()
	if err != nil || snap.GetSnapshot().GetVersion() != 1 {
		t.Fatalf("snapshot = %v, %v", snap, err)
	}

	for _, path := range []string{"/healthz", "/readyz"} {
		r, err := http.Get("http://" + metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("%s = %d", path, r.StatusCode)
		}
	}

	p.cancel()
	// Shutdown ends the data-plane stream so the data plane can move on.
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream after shutdown: %v, want Unavailable", err)
	}
	if code := p.stop(); code != exitOK {
		t.Fatalf("exit code %d; stderr: %s", code, p.stderr.String())
	}
	if strings.Contains(p.stderr.String(), ctlCfg.Token) {
		t.Fatal("the admin token reached the logs")
	}
	if !strings.Contains(p.stderr.String(), `"msg":"controlplane listening"`) {
		t.Fatalf("no JSON log line: %s", p.stderr.String())
	}
}
