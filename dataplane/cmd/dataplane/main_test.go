package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-gw/meridian/dataplane/internal/cache"
	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, o *options)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, o *options) {
			if o.listen != ":8080" || o.adminListen != "127.0.0.1:9901" || o.cacheDir != "./dataplane-cache" ||
				len(o.controlplane) != 1 || o.controlplane[0] != "127.0.0.1:7400" || o.nodeID == "" {
				t.Errorf("defaults = %+v", o)
			}
		}},
		{name: "flags", args: []string{"--controlplane", "a:7400, b:7400", "--labels", "zone=a,tier=edge", "--node-id", "n1", "--log-level", "debug"},
			check: func(t *testing.T, o *options) {
				if strings.Join(o.controlplane, "|") != "a:7400|b:7400" || o.nodeID != "n1" ||
					!maps.Equal(o.labels, map[string]string{"zone": "a", "tier": "edge"}) || o.logLevel.String() != "DEBUG" {
					t.Errorf("options = %+v", o)
				}
			}},
		{name: "env fallback", env: map[string]string{"MERIDIAN_CACHE_DIR": "/var/cache/dp", "MERIDIAN_ADMIN_LISTEN": "127.0.0.1:1", "MERIDIAN_NODE_ID": "from-env"},
			check: func(t *testing.T, o *options) {
				if o.cacheDir != "/var/cache/dp" || o.adminListen != "127.0.0.1:1" || o.nodeID != "from-env" {
					t.Errorf("options = %+v", o)
				}
			}},
		{name: "flag wins over env", args: []string{"--node-id", "flag"}, env: map[string]string{"MERIDIAN_NODE_ID": "env"},
			check: func(t *testing.T, o *options) {
				if o.nodeID != "flag" {
					t.Errorf("node id = %q", o.nodeID)
				}
			}},
		{name: "limits by default", check: func(t *testing.T, o *options) {
			if o.maxHeaders != 100 || o.maxConns != 10000 {
				t.Errorf("max headers %d, max connections %d; want 100 and 10000", o.maxHeaders, o.maxConns)
			}
		}},
		{name: "limits from env", env: map[string]string{"MERIDIAN_MAX_HEADERS": "50", "MERIDIAN_MAX_CONNECTIONS": "0"}, check: func(t *testing.T, o *options) {
			if o.maxHeaders != 50 || o.maxConns != 0 {
				t.Errorf("max headers %d, max connections %d; want 50 and 0", o.maxHeaders, o.maxConns)
			}
		}},
		{name: "negative max headers", args: []string{"--max-headers", "-1"}, wantErr: "--max-headers"},
		{name: "negative max connections", args: []string{"--max-connections", "-5"}, wantErr: "--max-connections"},
		{name: "metrics on by default", check: func(t *testing.T, o *options) {
			if !o.metrics {
				t.Error("metrics off by default")
			}
		}},
		{name: "metrics off from env", env: map[string]string{"MERIDIAN_METRICS": "false"}, check: func(t *testing.T, o *options) {
			if o.metrics {
				t.Error("MERIDIAN_METRICS=false not applied")
			}
		}},
		{name: "pprof off by default", check: func(t *testing.T, o *options) {
			if o.pprof {
				t.Error("pprof on by default")
			}
		}},
		{name: "pprof flag", args: []string{"--pprof"}, check: func(t *testing.T, o *options) {
			if !o.pprof {
				t.Error("--pprof not applied")
			}
		}},
		{name: "pprof from env", env: map[string]string{"MERIDIAN_PPROF": "true"}, check: func(t *testing.T, o *options) {
			if !o.pprof {
				t.Error("MERIDIAN_PPROF not applied")
			}
		}},
		{name: "underscore headers dropped by default", check: func(t *testing.T, o *options) {
			if o.underscores {
				t.Error("--allow-underscore-headers on by default")
			}
		}},
		{name: "underscore headers flag", args: []string{"--allow-underscore-headers"}, check: func(t *testing.T, o *options) {
			if !o.underscores {
				t.Error("--allow-underscore-headers not applied")
			}
		}},
		{name: "underscore headers from env", env: map[string]string{"MERIDIAN_ALLOW_UNDERSCORE_HEADERS": "true"}, check: func(t *testing.T, o *options) {
			if !o.underscores {
				t.Error("MERIDIAN_ALLOW_UNDERSCORE_HEADERS not applied")
			}
		}},
		{name: "bad underscore headers env", env: map[string]string{"MERIDIAN_ALLOW_UNDERSCORE_HEADERS": "maybe"}, wantErr: "MERIDIAN_ALLOW_UNDERSCORE_HEADERS"},
		{name: "MERIDIAN_VERSION is not a flag", env: map[string]string{"MERIDIAN_VERSION": "1.0"}, check: func(t *testing.T, o *options) {
			if o.version {
				t.Error("version set from env")
			}
		}},
		{name: "server and tls flags", args: []string{
			"--tls-cert", "a.pem,b.pem", "--tls-key", "a-key.pem", "--tls-key", "b-key.pem", "--tls-listen", "127.0.0.1:9443",
			"--trusted-proxies", "10.0.0.0/8, 192.168.1.1,2001:db8::/32", "--read-header-timeout", "3s", "--read-timeout", "1m",
			"--write-timeout", "2m", "--idle-timeout", "30s", "--max-header-bytes", "4096", "--drain-timeout", "5s",
		}, check: func(t *testing.T, o *options) {
			if strings.Join(o.certFiles, "|") != "a.pem|b.pem" || strings.Join(o.keyFiles, "|") != "a-key.pem|b-key.pem" || o.tlsListen != "127.0.0.1:9443" {
				t.Errorf("tls = %v %v %q", o.certFiles, o.keyFiles, o.tlsListen)
			}
			if fmt.Sprint(o.trusted) != "[10.0.0.0/8 192.168.1.1/32 2001:db8::/32]" {
				t.Errorf("trusted = %v", o.trusted)
			}
			s := o.server
			if s.ReadHeaderTimeout != 3*time.Second || s.ReadTimeout != time.Minute || s.WriteTimeout != 2*time.Minute ||
				s.IdleTimeout != 30*time.Second || s.MaxHeaderBytes != 4096 || o.drainTimeout != 5*time.Second {
				t.Errorf("server = %+v drain %v", s, o.drainTimeout)
			}
		}},
		{name: "server defaults", check: func(t *testing.T, o *options) {
			s := o.server
			if s.ReadHeaderTimeout != 10*time.Second || s.ReadTimeout != 0 || s.WriteTimeout != 0 || s.IdleTimeout != 120*time.Second ||
				s.MaxHeaderBytes != 65536 || o.drainTimeout != 30*time.Second || len(o.trusted) != 0 || len(o.certFiles) != 0 {
				t.Errorf("defaults = %+v drain %v trusted %v", s, o.drainTimeout, o.trusted)
			}
		}},
		{name: "tls from env", env: map[string]string{"MERIDIAN_TLS_CERT": "a.pem,b.pem", "MERIDIAN_TLS_KEY": "ak.pem,bk.pem", "MERIDIAN_DRAIN_TIMEOUT": "1s"},
			check: func(t *testing.T, o *options) {
				if len(o.certFiles) != 2 || len(o.keyFiles) != 2 || o.drainTimeout != time.Second {
					t.Errorf("options = %v %v %v", o.certFiles, o.keyFiles, o.drainTimeout)
				}
			}},
		{name: "no redis by default", check: func(t *testing.T, o *options) {
			if o.redis != nil || o.redisTimeout != 50*time.Millisecond {
				t.Errorf("redis = %+v, timeout %v", o.redis, o.redisTimeout)
			}
		}},
		{name: "redis standalone, password from env only", args: []string{"--redis", "127.0.0.1:6379", "--redis-username", "gw", "--redis-db", "2", "--redis-timeout", "20ms"},
			env: map[string]string{"MERIDIAN_REDIS_PASSWORD": "s3cret"},
			check: func(t *testing.T, o *options) {
				r := o.redis
				if r == nil || strings.Join(r.Addrs, "|") != "127.0.0.1:6379" || r.Username != "gw" || r.Password != "s3cret" ||
					r.DB != 2 || r.MasterName != "" || r.IsClusterMode || r.TLSConfig != nil || o.redisTimeout != 20*time.Millisecond {
					t.Errorf("redis = %+v, timeout %v", r, o.redisTimeout)
				}
			}},
		{name: "redis sentinel", args: []string{"--redis", "s1:26379,s2:26379", "--redis-master-name", "mymaster", "--redis-tls"},
			env: map[string]string{"MERIDIAN_REDIS_SENTINEL_PASSWORD": "sp"},
			check: func(t *testing.T, o *options) {
				r := o.redis
				if r == nil || len(r.Addrs) != 2 || r.MasterName != "mymaster" || r.SentinelPassword != "sp" || r.TLSConfig == nil {
					t.Errorf("redis = %+v", r)
				}
			}},
		{name: "redis cluster seed from env", env: map[string]string{"MERIDIAN_REDIS": "c1:7000", "MERIDIAN_REDIS_CLUSTER": "true"},
			check: func(t *testing.T, o *options) {
				if r := o.redis; r == nil || !r.IsClusterMode || r.Addrs[0] != "c1:7000" {
					t.Errorf("redis = %+v", r)
				}
			}},
		{name: "bad redis address", args: []string{"--redis", "nohostport"}, wantErr: "--redis"},
		{name: "sentinel and cluster", args: []string{"--redis", "a:1", "--redis-master-name", "m", "--redis-cluster"}, wantErr: "exclude each other"},
		{name: "master name without redis", args: []string{"--redis-master-name", "m"}, wantErr: "need --redis"},
		{name: "db on cluster", args: []string{"--redis", "a:1,b:1", "--redis-db", "1"}, wantErr: "--redis-db"},
		{name: "bad redis timeout", args: []string{"--redis", "a:1", "--redis-timeout", "0s"}, wantErr: "--redis-timeout"},
		{name: "unpaired tls", args: []string{"--tls-cert", "a.pem,b.pem", "--tls-key", "a-key.pem"}, wantErr: "pairs"},
		{name: "bad trusted proxy", args: []string{"--trusted-proxies", "10.0.0.0/8,nope"}, wantErr: "--trusted-proxies"},
		{name: "negative timeout", args: []string{"--idle-timeout", "-1s"}, wantErr: "--idle-timeout"},
		{name: "bad max header bytes", args: []string{"--max-header-bytes", "0"}, wantErr: "--max-header-bytes"},
		{name: "bad labels", args: []string{"--labels", "novalue"}, wantErr: "--labels"},
		{name: "bad controlplane", args: []string{"--controlplane", "nohostport"}, wantErr: "--controlplane"},
		{name: "empty controlplane", args: []string{"--controlplane", ","}, wantErr: "--controlplane"},
		{name: "bad log level", env: map[string]string{"MERIDIAN_LOG_LEVEL": "loud"}, wantErr: "--log-level"},
		{name: "log defaults", check: func(t *testing.T, o *options) {
			if o.logFormat != "json" || o.accessLog != "stdout" || o.accessSample != 1 {
				t.Errorf("log-format %q, access-log %q, sample %v", o.logFormat, o.accessLog, o.accessSample)
			}
		}},
		{name: "log flags", args: []string{"--log-format", "text", "--access-log", "/var/log/meridian/access.log", "--access-log-sample", "0.25"},
			check: func(t *testing.T, o *options) {
				if o.logFormat != "text" || o.accessLog != "/var/log/meridian/access.log" || o.accessSample != 0.25 {
					t.Errorf("log-format %q, access-log %q, sample %v", o.logFormat, o.accessLog, o.accessSample)
				}
			}},
		{name: "log flags from env", env: map[string]string{"MERIDIAN_LOG_FORMAT": "text", "MERIDIAN_ACCESS_LOG": "off", "MERIDIAN_ACCESS_LOG_SAMPLE": "0"},
			check: func(t *testing.T, o *options) {
				if o.logFormat != "text" || o.accessLog != "off" || o.accessSample != 0 {
					t.Errorf("log-format %q, access-log %q, sample %v", o.logFormat, o.accessLog, o.accessSample)
				}
			}},
		{name: "bad log format", args: []string{"--log-format", "xml"}, wantErr: "--log-format"},
		{name: "empty access log", args: []string{"--access-log", ""}, wantErr: "--access-log"},
		{name: "sample above 1", args: []string{"--access-log-sample", "1.5"}, wantErr: "--access-log-sample"},
		{name: "negative sample", env: map[string]string{"MERIDIAN_ACCESS_LOG_SAMPLE": "-0.1"}, wantErr: "--access-log-sample"},
		{name: "NaN sample", args: []string{"--access-log-sample", "NaN"}, wantErr: "--access-log-sample"},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: "not defined"},
		{name: "positional", args: []string{"extra"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want usage error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

// testToken is well formed; no control plane knows it.
var testToken = "abcdefgh." + strings.Repeat("s", 32) + "." + strings.Repeat("0", 64)

func TestCredentialFlags(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := writeFile(tokenFile, []byte(testToken+"\n")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, o *options)
		wantErr string
	}{
		{name: "none given", check: func(t *testing.T, o *options) {
			if o.joinToken != nil || o.cpFiles != nil || o.insecure {
				t.Errorf("credentials = %v %v %v", o.joinToken, o.cpFiles, o.insecure)
			}
		}},
		{name: "token flag", args: []string{"--join-token", testToken}, check: func(t *testing.T, o *options) {
			if o.joinToken == nil || o.joinToken.String() != testToken {
				t.Errorf("token = %v", o.joinToken)
			}
		}},
		{name: "token from env", env: map[string]string{"MERIDIAN_JOIN_TOKEN": testToken}, check: func(t *testing.T, o *options) {
			if o.joinToken == nil || o.joinToken.ID != "abcdefgh" {
				t.Errorf("token = %v", o.joinToken)
			}
		}},
		{name: "token file", args: []string{"--join-token-file", tokenFile}, check: func(t *testing.T, o *options) {
			if o.joinToken == nil || o.joinToken.String() != testToken {
				t.Errorf("token = %v", o.joinToken)
			}
		}},
		{name: "own PKI", args: []string{"--controlplane-ca", "ca.pem", "--controlplane-cert", "c.pem", "--controlplane-key", "k.pem"},
			check: func(t *testing.T, o *options) {
				if f := o.cpFiles; f == nil || f.CA != "ca.pem" || f.Cert != "c.pem" || f.Key != "k.pem" {
					t.Errorf("files = %+v", f)
				}
			}},
		{name: "insecure from env", env: map[string]string{"MERIDIAN_INSECURE": "true"}, check: func(t *testing.T, o *options) {
			if !o.insecure {
				t.Error("MERIDIAN_INSECURE not applied")
			}
		}},
		{name: "both token flags", args: []string{"--join-token", testToken, "--join-token-file", tokenFile}, wantErr: "--join-token and --join-token-file exclude each other"},
		{name: "token flag and token file from env", args: []string{"--join-token-file", tokenFile}, env: map[string]string{"MERIDIAN_JOIN_TOKEN": testToken}, wantErr: "exclude each other"},
		{name: "malformed token", args: []string{"--join-token", "secret-ish-value"}, wantErr: "--join-token: malformed join token"},
		{name: "malformed token file", args: []string{"--join-token-file", "main.go"}, wantErr: "--join-token-file main.go: malformed join token"},
		{name: "missing token file", args: []string{"--join-token-file", "/nonexistent/token"}, wantErr: "--join-token-file: open /nonexistent/token"},
		{name: "partial own PKI", args: []string{"--controlplane-cert", "c.pem", "--controlplane-key", "k.pem"}, wantErr: "give all three"},
		{name: "token and insecure", args: []string{"--join-token", testToken, "--insecure"}, wantErr: "exclude each other"},
		{name: "own PKI and token", args: []string{"--controlplane-ca", "a", "--controlplane-cert", "b", "--controlplane-key", "c", "--join-token-file", tokenFile}, wantErr: "exclude each other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want usage error containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret-ish") || strings.Contains(err.Error(), strings.Repeat("s", 32)) {
					t.Errorf("error repeats the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

// TestNoCredentials: with nothing to authenticate with the program says,
// on one line, which flags would do.
func TestNoCredentials(t *testing.T) {
	var stderr strings.Builder
	code := run(context.Background(), []string{"--cache-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, env(nil), io.Discard, &stderr)
	out := stderr.String()
	if code != 2 || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "dataplane: no control-plane credentials: pass --join-token") {
		t.Fatalf("exit %d, stderr %q", code, out)
	}
	for _, flag := range []string{"--join-token-file", "MERIDIAN_JOIN_TOKEN", "--controlplane-ca/--controlplane-cert/--controlplane-key", "--insecure"} {
		if !strings.Contains(out, flag) {
			t.Errorf("stderr does not name %s: %q", flag, out)
		}
	}
}

// TestEnrolmentDoesNotBlockTraffic: with a join token and no control
// plane, the program still serves, and never logs the token.
func TestEnrolmentDoesNotBlockTraffic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--controlplane", "127.0.0.1:1",
			"--cache-dir", t.TempDir(), "--node-id", "n1"}, env(map[string]string{"MERIDIAN_JOIN_TOKEN": testToken}), &out, &logs)
	}()
	deadline := time.Now().Add(30 * time.Second)
	booted := func() bool {
		return strings.Contains(logs.String(), "no control plane answered") && strings.Contains(out.String(), "admin listening on")
	}
	for !booted() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	waitExit(t, done)
	if !booted() {
		t.Errorf("output %q, log:\n%s", out.String(), logs.String())
	}
	if strings.Contains(logs.String(), strings.Repeat("s", 32)) {
		t.Errorf("log shows the token:\n%s", logs.String())
	}
}

func TestUsageExitCode(t *testing.T) {
	var stderr strings.Builder
	if code := run(context.Background(), []string{"--labels", "x"}, env(nil), io.Discard, &stderr); code != 2 {
		t.Errorf("exit code = %d, want 2", code)
	}
	if !strings.HasPrefix(stderr.String(), "dataplane: --labels") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

// TestBootFromCache starts the real program with no control plane
// reachable and a cached snapshot: it must serve that snapshot.
func TestBootFromCache(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("from upstream " + r.URL.Path))
	}))
	defer up.Close()

	dir := t.TempDir()
	rs := []*meridianv1.Resource{
		{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
			Metadata: &meridianv1.Metadata{Name: "u"},
			Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: strings.TrimPrefix(up.URL, "http://")}}},
		}}},
		{Kind: &meridianv1.Resource_Route{Route: &meridianv1.Route{
			Metadata: &meridianv1.Metadata{Name: "r"},
			Spec:     &meridianv1.RouteSpec{Upstream: "u", Match: &meridianv1.RouteMatch{Paths: []*meridianv1.PathMatch{{Kind: &meridianv1.PathMatch_Prefix{Prefix: "/"}}}}},
		}}},
	}
	if err := cache.New(dir).Save(&meridianv1.Snapshot{Version: 12, Hash: config.Hash(rs), Resources: rs}); err != nil {
		t.Fatal(err)
	}
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{
			"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--controlplane", deadAddr, "--cache-dir", dir, "--node-id", "test", "--insecure",
		}, env(nil), outW, io.Discard)
		outW.Close()
	}()

	addrs := map[string]string{}
	sc := bufio.NewScanner(outR)
	for len(addrs) < 2 && sc.Scan() {
		name, addr, ok := strings.Cut(sc.Text(), " listening on ")
		if !ok {
			t.Fatalf("unexpected output %q", sc.Text())
		}
		addrs[name] = addr
	}
	go io.Copy(io.Discard, outR)

	resp, err := http.Get("http://" + addrs["dataplane"] + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "from upstream /hello" {
		t.Errorf("traffic = %d %q", resp.StatusCode, body)
	}

	// Clients may speak h2c (prior knowledge) too.
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	h2cTransport := &http.Transport{Protocols: &h2c}
	defer h2cTransport.CloseIdleConnections()
	resp, err = (&http.Client{Transport: h2cTransport}).Get("http://" + addrs["dataplane"] + "/h2")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Errorf("h2c request: %s %d", resp.Proto, resp.StatusCode)
	}

	resp, err = http.Get("http://" + addrs["admin"] + "/config")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st["version"] != 12.0 || st["source"] != "cache" || st["snapshotsReceived"] != 0.0 {
		t.Errorf("/config = %v", st)
	}

	// Profiles are opt-in (--pprof).
	resp, err = http.Get("http://" + addrs["admin"] + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without --pprof = %d, want 404", resp.StatusCode)
	}

	cancel()
	waitExit(t, done)
	http.DefaultClient.CloseIdleConnections()
}

func TestCorruptCacheIgnored(t *testing.T) {
	dir := t.TempDir()
	if err := cache.New(dir).Save(&meridianv1.Snapshot{Version: 1}); err != nil {
		t.Fatal(err)
	}
	// Damage the file: boot must still reach the "listening" lines.
	path := filepath.Join(dir, cache.FileName)
	if err := writeFile(path, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--controlplane", "127.0.0.1:1", "--cache-dir", dir, "--insecure"}, env(nil), &out, io.Discard)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "admin listening on") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 || !strings.Contains(out.String(), "dataplane listening on") {
		t.Errorf("code %d, output %q", code, out.String())
	}
}

func writeFile(path string, data []byte) error { return os.WriteFile(path, data, 0o600) }

// syncBuffer is a strings.Builder safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestControlPlaneApplierWritesCache(t *testing.T) {
	store := cache.New(t.TempDir())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	gw := gateway.New(gateway.Options{Logger: log})
	defer gw.Close()
	a := controlPlaneApplier{gw: gw, cache: store, log: log}

	rs := []*meridianv1.Resource{{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: "u"},
		Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: "127.0.0.1:1"}}},
	}}}}
	good := &meridianv1.Snapshot{Version: 4, Hash: config.Hash(rs), Resources: rs}
	if err := a.Apply(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	if v, h := a.Applied(); v != 4 || h != good.GetHash() {
		t.Errorf("Applied() = %d %q", v, h)
	}
	if gw.Current().Source() != gateway.SourceControlPlane {
		t.Errorf("source = %q", gw.Current().Source())
	}

	bad := &meridianv1.Snapshot{Version: 5, Hash: "nope", Resources: rs}
	if err := a.Apply(context.Background(), bad); err == nil {
		t.Fatal("bad snapshot applied")
	}
	cached, err := store.Load()
	if err != nil || cached.GetVersion() != 4 {
		t.Fatalf("cache = %v, %v; want version 4", cached, err)
	}
}
