package cmd

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// indent prefixes every line of s, for a YAML block scalar.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+prefix) + "\n"
}

// gatewayctlYAML is a config file as the control plane writes it.
func gatewayctlYAML(server string, ca *testCA, token string) string {
	return "server: " + server + "\nca: |\n" + indent(ca.PEM(), "  ") + "token: " + token + "\n"
}

func TestConfigFilePrecedence(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	tlsFake, plainFake := fullFake(), fullFake()
	tlsAddr := serveTLS(t, tlsFake, ca.serverCert(t))
	plainAddr := serve(t, plainFake)
	dead := deadAddress(t)

	dir := t.TempDir()
	caPath := ca.writePEM(t, dir)
	full := writeFile(t, dir, "gatewayctl.yaml", gatewayctlYAML(tlsAddr, ca, "cfg-token"))
	deadCfg := writeFile(t, dir, "dead.yaml", gatewayctlYAML(dead, ca, "cfg-token"))
	wrongCA := writeFile(t, dir, "wrong-ca.yaml", gatewayctlYAML(tlsAddr, other, "cfg-token"))
	caFile := writeFile(t, dir, "cafile.yaml", "server: "+tlsAddr+"\ncaFile: ca.crt\ntoken: cfg-token\n")
	plain := writeFile(t, dir, "plain.yaml", "server: "+plainAddr+"\ninsecure: true\ntoken: cfg-token\n")
	xdg := t.TempDir()
	if err := os.MkdirAll(filepath.Join(xdg, "meridian"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(xdg, "meridian"), "gatewayctl.yaml", gatewayctlYAML(tlsAddr, ca, "xdg-token"))
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".config", "meridian"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".config", "meridian"), "gatewayctl.yaml", gatewayctlYAML(tlsAddr, ca, "home-token"))

	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		fake      *fakeAdmin // which server must see the call; nil: none
		wantAuth  string
		wantCode  int
		wantError string
	}{
		{name: "config gives server, ca and token", args: []string{"--config", full}, fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "config from MERIDIAN_CONFIG", env: map[string]string{"MERIDIAN_CONFIG": full}, fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "--config wins over MERIDIAN_CONFIG", env: map[string]string{"MERIDIAN_CONFIG": deadCfg}, args: []string{"--config", full},
			fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "env token wins over config", env: map[string]string{"MERIDIAN_TOKEN": "env-token"}, args: []string{"--config", full},
			fake: tlsFake, wantAuth: "Bearer env-token"},
		{name: "flag token wins over env and config", env: map[string]string{"MERIDIAN_TOKEN": "env-token"},
			args: []string{"--config", full, "--token", "flag-token"}, fake: tlsFake, wantAuth: "Bearer flag-token"},
		{name: "flag server wins over config", args: []string{"--config", deadCfg, "--server", tlsAddr}, fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "env server wins over config", env: map[string]string{"MERIDIAN_SERVER": tlsAddr}, args: []string{"--config", deadCfg},
			fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "config server used", args: []string{"--config", deadCfg}, wantCode: 1, wantError: "cannot reach control plane at " + dead},
		{name: "--ca wins over the config's ca", args: []string{"--config", wrongCA, "--ca", caPath}, fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "MERIDIAN_CA wins over the config's ca", env: map[string]string{"MERIDIAN_CA": caPath}, args: []string{"--config", wrongCA},
			fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "caFile relative to the config file", args: []string{"--config", caFile}, fake: tlsFake, wantAuth: "Bearer cfg-token"},
		{name: "config insecure", args: []string{"--config", plain}, fake: plainFake, wantAuth: "Bearer cfg-token"},
		{name: "--insecure=false wins over config insecure", args: []string{"--config", plain, "--insecure=false"},
			wantCode: 1, wantError: "does not speak TLS"},
		{name: "--insecure wins over the config's ca", args: []string{"--config", full, "--server", plainAddr, "--insecure"},
			fake: plainFake, wantAuth: "Bearer cfg-token"},
		{name: "default config under XDG_CONFIG_HOME", env: map[string]string{"XDG_CONFIG_HOME": xdg, "HOME": home},
			fake: tlsFake, wantAuth: "Bearer xdg-token"},
		{name: "default config under HOME", env: map[string]string{"HOME": home}, fake: tlsFake, wantAuth: "Bearer home-token"},
		{name: "no default config under an empty XDG_CONFIG_HOME", env: map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "HOME": home},
			args: []string{"--server", plainAddr, "--insecure"}, fake: plainFake},
		{name: "--config '' skips the default", env: map[string]string{"XDG_CONFIG_HOME": xdg},
			args: []string{"--config", "", "--server", plainAddr, "--insecure"}, fake: plainFake},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[*fakeAdmin]int{tlsFake: len(tlsFake.recorded()), plainFake: len(plainFake.recorded())}
			res := runExact(t, tt.env, "", append(tt.args, "history")...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d; stderr: %s", res.code, tt.wantCode, res.stderr)
			}
			if !strings.Contains(res.stderr, tt.wantError) {
				t.Errorf("stderr = %q, want it to contain %q", res.stderr, tt.wantError)
			}
			for f, n := range before {
				calls := f.recorded()[n:]
				if f != tt.fake {
					if len(calls) != 0 {
						t.Errorf("the wrong server received %d calls", len(calls))
					}
					continue
				}
				if len(calls) != 1 {
					t.Fatalf("server received %d calls, want 1", len(calls))
				}
				if got := strings.Join(calls[0].auth, ","); got != tt.wantAuth {
					t.Errorf("authorization = %q, want %q", got, tt.wantAuth)
				}
			}
		})
	}
}

func TestConfigFileErrors(t *testing.T) {
	const secret = "S3CRET-abc123"
	ca := newTestCA(t)
	dir := t.TempDir()
	caPath := ca.writePEM(t, dir)
	notPEM := writeFile(t, dir, "not.pem", "just text\n")
	tests := []struct {
		name    string
		content string // written as gatewayctl.yaml; "" with args: no file
		args    []string
		want    string // stderr must contain it, with FILE standing for the file's path
	}{
		{name: "unknown field with its line", content: "server: 127.0.0.1:7400\ntoken: " + secret + "\ntokn: x\n",
			want: `FILE:3: unknown field "tokn" (want server, ca, caFile, token or insecure)`},
		{name: "wrong type, value not repeated", content: "server: 127.0.0.1:7400\ninsecure: " + secret + "\n",
			want: "FILE:2: cannot unmarshal !!str into bool"},
		{name: "broken yaml", content: "token: " + secret + "\nserver: [\n", want: "FILE:2: did not find expected node content"},
		{name: "not a mapping", content: "- server\n", want: "FILE:1: cannot unmarshal !!seq into cmd.fileConfig"},
		{name: "two documents", content: "token: " + secret + "\n---\nserver: x\n", want: "config file FILE: want one YAML document, found more"},
		{name: "ca and caFile", content: "ca: x\ncaFile: ca.crt\n", want: "config file FILE: set ca or caFile, not both"},
		{name: "ca holds no certificate", content: "ca: nothing\ntoken: " + secret + "\n", want: "the ca of the config file holds no PEM certificate"},
		{name: "caFile missing", content: "caFile: missing.crt\n", want: "caFile of the config file: open " + filepath.Join(dir, "missing.crt") + ": no such file"},
		{name: "missing config file", args: []string{"--config", filepath.Join(dir, "nope.yaml")},
			want: "config file: open " + filepath.Join(dir, "nope.yaml") + ": no such file or directory"},
		{name: "config file is a directory", args: []string{"--config", dir}, want: "config file: read " + dir},
		{name: "--ca missing", args: []string{"--ca", filepath.Join(dir, "nope.crt")}, want: "--ca: open " + filepath.Join(dir, "nope.crt")},
		{name: "--ca not PEM", args: []string{"--ca", notPEM}, want: notPEM + " holds no PEM certificate"},
		{name: "--ca with --insecure", args: []string{"--ca", caPath, "--insecure"}, want: "--ca verifies TLS, but --insecure"},
		{name: "--ca with insecure: true", content: "insecure: true\n", args: []string{"--ca", caPath}, want: "--ca verifies TLS, but --insecure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			path := ""
			if tt.content != "" {
				path = writeFile(t, dir, "gatewayctl.yaml", tt.content)
				args = append([]string{"--config", path}, args...)
			}
			fake := newFakeAdmin()
			addr := serve(t, fake)
			res := runExact(t, nil, "", append(args, "--server", addr, "history")...)
			if res.code != ExitUsage {
				t.Fatalf("exit code = %d, want %d; stderr: %s", res.code, ExitUsage, res.stderr)
			}
			want := strings.ReplaceAll(tt.want, "FILE", path)
			if !strings.HasPrefix(res.stderr, "error: ") || !strings.Contains(res.stderr, want) || strings.Count(res.stderr, "\n") != 1 {
				t.Errorf("stderr = %q, want one error line containing %q", res.stderr, want)
			}
			if strings.Contains(res.stderr, secret) {
				t.Errorf("stderr repeats a secret from the config file: %q", res.stderr)
			}
			if n := len(fake.recorded()); n != 0 {
				t.Errorf("the server received %d calls", n)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	fake := fullFake()
	tlsAddr := serveTLS(t, fake, ca.serverCert(t))
	_, port, _ := net.SplitHostPort(tlsAddr)
	plainAddr := serve(t, fullFake())
	otherNames := serveTLS(t, fullFake(), ca.serverCertFor(t, []string{"cp.example.com"}, nil))
	_, otherPort, _ := net.SplitHostPort(otherNames)
	oldTLS := serveTLSConfig(t, fullFake(), &tls.Config{
		Certificates: []tls.Certificate{ca.serverCert(t)},
		MinVersion:   tls.VersionTLS10,
		MaxVersion:   tls.VersionTLS11,
	})
	dir := t.TempDir()
	caPath := ca.writePEM(t, dir)
	otherPath := other.writePEM(t, t.TempDir())
	bundle := writeFile(t, dir, "bundle.pem", other.PEM()+ca.PEM())

	untrusted := func(addr string) string {
		return "error: the control plane at " + addr + " presented a certificate gatewayctl does not trust: " +
			"pass --config <data-dir>/gatewayctl.yaml (the control plane writes it on first start) or --ca FILE\n"
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string // the whole of stderr
	}{
		{name: "--ca", args: []string{"--server", tlsAddr, "--ca", caPath}},
		{name: "--ca bundle", args: []string{"--server", tlsAddr, "--ca", bundle}},
		{name: "host name", args: []string{"--server", "localhost:" + port, "--ca", caPath}},
		{name: "system roots do not know the CA", args: []string{"--server", tlsAddr}, wantCode: 1, want: untrusted(tlsAddr)},
		{name: "wrong CA", args: []string{"--server", tlsAddr, "--ca", otherPath}, wantCode: 1, want: untrusted(tlsAddr)},
		{name: "certificate for other names", args: []string{"--server", "localhost:" + otherPort, "--ca", caPath}, wantCode: 1,
			want: "error: the control plane at localhost:" + otherPort + " presented a certificate for other names " +
				"(x509: certificate is valid for cp.example.com, not localhost): connect by one of its names, or add this one to its --tls-san\n"},
		{name: "certificate without the IP", args: []string{"--server", otherNames, "--ca", caPath}, wantCode: 1,
			want: "error: the control plane at " + otherNames + " presented a certificate for other names " +
				"(x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs): connect by one of its names, or add this one to its --tls-san\n"},
		{name: "TLS against plaintext", args: []string{"--server", plainAddr, "--ca", caPath}, wantCode: 1,
			want: "error: the control plane at " + plainAddr + " does not speak TLS (started with --insecure?): pass --insecure\n"},
		{name: "TLS against plaintext, system roots", args: []string{"--server", plainAddr}, wantCode: 1,
			want: "error: the control plane at " + plainAddr + " does not speak TLS (started with --insecure?): pass --insecure\n"},
		{name: "--insecure against TLS", args: []string{"--server", tlsAddr, "--insecure"}, wantCode: 1,
			want: "error: the control plane at " + tlsAddr + " requires TLS: drop --insecure and pass --config or --ca\n"},
		{name: "server below TLS 1.2", args: []string{"--server", oldTLS, "--ca", caPath}, wantCode: 1,
			want: "error: the TLS handshake with the control plane at " + oldTLS + " failed: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runExact(t, map[string]string{"MERIDIAN_TOKEN": "tls-token"}, "", append(tt.args, "history")...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d; stderr: %s", res.code, tt.wantCode, res.stderr)
			}
			if tt.wantCode == 0 && res.stderr != "" {
				t.Errorf("stderr = %q, want nothing", res.stderr)
			}
			if !strings.HasPrefix(res.stderr, tt.want) || strings.Count(res.stderr, "\n") > 1 {
				t.Errorf("stderr = %q, want one line starting %q", res.stderr, tt.want)
			}
		})
	}
	for _, c := range fake.recorded() {
		if len(c.auth) != 1 || c.auth[0] != "Bearer tls-token" {
			t.Errorf("%s over TLS carried authorization %q", c.method, c.auth)
		}
	}
}

// messageFor returns an apply message that makes `gatewayctl apply -f
// testdata/valid.yaml -m MESSAGE` (author unknown@build-host) exactly size
// bytes on the wire.
func messageFor(t *testing.T, size int) string {
	t.Helper()
	req := &meridianv1.ApplyRequest{Resources: validResources(t), Author: "unknown@build-host"}
	base := proto.Size(req)
	for n := size - base - 8; n <= size-base; n++ {
		req.Message = strings.Repeat("m", n)
		if proto.Size(req) == size {
			return req.Message
		}
	}
	t.Fatalf("no message makes the apply %d bytes", size)
	return ""
}

func TestApplySizeLimit(t *testing.T) {
	tests := []struct {
		name     string
		args     func(t *testing.T) []string
		fail     error // the server's answer to Apply, if not success
		wantCode int
		want     string // stderr
		wantCall string // method the server must receive, "" for none
		wantSize int    // its encoded size, when checked
	}{
		{
			name: "apply past the limit",
			args: func(*testing.T) []string {
				return []string{"apply", "-f", "testdata/valid.yaml", "-m", strings.Repeat("m", 9<<20)}
			},
			wantCode: 1,
			want:     "error: the apply is 9.1 MiB; one apply may be at most 8 MiB (config.MaxApplyBytes): split the files into several applies\n",
		},
		{
			name: "apply one byte past the limit",
			args: func(t *testing.T) []string {
				return []string{"apply", "-f", "testdata/valid.yaml", "-m", messageFor(t, config.MaxApplyBytes+1)}
			},
			wantCode: 1,
			want:     "error: the apply is 8.1 MiB; one apply may be at most 8 MiB (config.MaxApplyBytes): split the files into several applies\n",
		},
		{
			name: "apply of exactly the limit goes out",
			args: func(t *testing.T) []string {
				return []string{"apply", "-f", "testdata/valid.yaml", "-m", messageFor(t, config.MaxApplyBytes)}
			},
			wantCall: "Apply",
			wantSize: config.MaxApplyBytes,
		},
		{
			name: "diff past the limit",
			args: func(t *testing.T) []string {
				// Resources alone past the limit: one big label.
				return []string{"diff", "-f", writeFile(t, t.TempDir(), "big.yaml", fmt.Sprintf(
					"apiVersion: meridian/v1\nkind: Upstream\nmetadata:\n  name: users\n  labels: {blob: %s}\nspec:\n  targets: [{address: 127.0.0.1:9001}]\n",
					strings.Repeat("x", config.MaxApplyBytes)))}
			},
			wantCode: 1,
			want:     "error: the diff request is 8.1 MiB; one apply may be at most 8 MiB (config.MaxApplyBytes): split the files into several applies\n",
		},
		{
			name:     "the server's refusal names its limit",
			args:     func(*testing.T) []string { return []string{"apply", "-f", "testdata/valid.yaml"} },
			fail:     status.Error(codes.ResourceExhausted, "the configuration would be 9.2 MiB; at most 8 MiB (config.MaxApplyBytes)"),
			wantCode: 1,
			want:     "error: the control plane refused the request: the configuration would be 9.2 MiB; at most 8 MiB (config.MaxApplyBytes)\n",
			wantCall: "Apply",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeAdmin().respond("Apply", &meridianv1.ApplyResponse{Version: 2}).fail("Apply", tt.fail)
			addr := serve(t, fake)
			res := run(t, nil, "", append([]string{"--server", addr}, tt.args(t)...)...)
			if res.code != tt.wantCode || res.stderr != tt.want {
				t.Errorf("exit code %d, stderr %q; want %d, %q", res.code, res.stderr, tt.wantCode, tt.want)
			}
			calls := fake.recorded()
			switch {
			case tt.wantCall == "" && len(calls) != 0:
				t.Errorf("the server received %d calls; an oversized request must not be sent", len(calls))
			case tt.wantCall != "" && (len(calls) != 1 || calls[0].method != tt.wantCall):
				t.Errorf("calls = %d, want one %s", len(calls), tt.wantCall)
			case tt.wantSize != 0 && proto.Size(calls[0].req) != tt.wantSize:
				t.Errorf("the server received %d bytes, want %d", proto.Size(calls[0].req), tt.wantSize)
			}
		})
	}
}
