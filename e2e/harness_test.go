package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// bins holds the paths of the binaries TestMain built.
type bins struct {
	controlplane, dataplane, gatewayctl, echo string
}

// built is set once by TestMain before any test runs and never changed.
var built bins

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	// -short skips the e2e tests; don't pay for the build.
	if testing.Short() {
		return m.Run()
	}
	// Tests run the binaries with the race detector; benchmarks measure
	// what ships.
	race := "-race"
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		race = "-race=false"
	}
	dir, err := os.MkdirTemp("", "meridian-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	built = bins{
		controlplane: filepath.Join(dir, "controlplane"),
		dataplane:    filepath.Join(dir, "dataplane"),
		gatewayctl:   filepath.Join(dir, "gatewayctl"),
		echo:         filepath.Join(dir, "echo"),
	}
	// Built from the workspace root so go.work ties the modules together.
	cmd := exec.Command("go", "build", race, "-o", dir+"/",
		"./controlplane/cmd/controlplane", "./dataplane/cmd/dataplane", "./gatewayctl", "./e2e/cmd/echo")
	cmd.Dir = ".."
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building binaries: %v\n", err)
		return 1
	}
	return m.Run()
}

func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: runs real binaries; skipped with -short")
	}
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// proc is one running program with its combined output captured.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

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

// start runs bin with args; env entries are added to the test's environment.
// The process is stopped when the test ends.
func start(t testing.TB, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, p.out.String())
		}
	})
	return p
}

// waitFor waits until the process output matches pattern.
func (p *proc) waitFor(pattern string) {
	p.t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if re.MatchString(p.out.String()) {
			return
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.err, pattern, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s did not print %q within 30s:\n%s", p.name, pattern, p.out.String())
}

// stop sends SIGTERM and waits; SIGKILL after 10s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// eventually retries check until it returns nil or 20s pass.
func eventually(t testing.TB, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: still failing after 20s: %v", what, err)
}

// ---------------------------------------------------------------- programs

type controlplane struct {
	*proc
	addr, etcd string
	env        []string
	// dataDir holds the pki/ and gatewayctl.yaml of a secure control
	// plane.
	dataDir string
	secure  bool
}

// ctlTarget is what ctl takes as its server: the gatewayctl config a
// secure control plane wrote, or the address of an --insecure one.
func (cp *controlplane) ctlTarget() string {
	if cp.secure {
		return filepath.Join(cp.dataDir, "gatewayctl.yaml")
	}
	return cp.addr
}

// startControlplane runs a control plane with its own embedded etcd in dir,
// or against etcdEndpoints when given.
func startControlplane(t testing.TB, name, dataDir, etcdEndpoints string) *controlplane {
	t.Helper()
	return startControlplaneEnv(t, name, dataDir, etcdEndpoints, nil)
}

// startControlplaneEnv is startControlplane with extra environment
// variables.
func startControlplaneEnv(t testing.TB, name, dataDir, etcdEndpoints string, env []string) *controlplane {
	t.Helper()
	return startControlplaneArgs(t, name, dataDir, etcdEndpoints, env, []string{"--insecure"})
}

// startSecureControlplane runs a control plane with its default trust:
// TLS, its own PKI and an admin token in dataDir.
func startSecureControlplane(t testing.TB, name, dataDir, etcdEndpoints string, extra ...string) *controlplane {
	t.Helper()
	cp := startControlplaneArgs(t, name, dataDir, etcdEndpoints, nil, extra)
	cp.secure = true
	return cp
}

// startControlplaneArgs is startControlplaneEnv with extra flags instead
// of --insecure.
func startControlplaneArgs(t testing.TB, name, dataDir, etcdEndpoints string, env, extra []string) *controlplane {
	t.Helper()
	cp := &controlplane{addr: freeAddr(t), env: env, dataDir: dataDir}
	args := []string{"--listen", cp.addr, "--data-dir", dataDir, "--metrics-listen", freeAddr(t), "--id", name}
	args = append(args, extra...)
	if etcdEndpoints != "" {
		args = append(args, "--etcd-endpoints", etcdEndpoints)
		cp.etcd = etcdEndpoints
	} else {
		cp.etcd = freeAddr(t)
		args = append(args, "--etcd-listen", cp.etcd, "--etcd-peer-listen", freeAddr(t))
	}
	cp.proc = start(t, name, built.controlplane, env, args...)
	cp.waitFor("controlplane listening on")
	return cp
}

// restart starts the same control plane again on the same addresses.
func (cp *controlplane) restart(t testing.TB) {
	t.Helper()
	cp.proc = start(t, cp.name, built.controlplane, cp.env, cp.cmd.Args[1:]...)
	cp.waitFor("controlplane listening on")
}

type dataplane struct {
	*proc
	id, addr, admin string
	cache           string
	env             []string
	args            []string
}

func startDataplane(t testing.TB, id, cacheDir string, env []string, controlplanes ...string) *dataplane {
	t.Helper()
	return startDataplaneArgs(t, id, cacheDir, env, controlplanes, nil)
}

// startDataplaneArgs is startDataplane with extra command-line flags. It
// talks plaintext to an --insecure control plane.
func startDataplaneArgs(t testing.TB, id, cacheDir string, env, controlplanes, extra []string) *dataplane {
	t.Helper()
	return startDataplaneCreds(t, id, cacheDir, env, controlplanes, append([]string{"--insecure"}, extra...))
}

// startDataplaneCreds is startDataplane with the control-plane credential
// flags (and any others) in extra.
func startDataplaneCreds(t testing.TB, id, cacheDir string, env, controlplanes, extra []string) *dataplane {
	t.Helper()
	dp := &dataplane{id: id, addr: freeAddr(t), admin: freeAddr(t), env: env, cache: cacheDir}
	dp.args = append([]string{"--listen", dp.addr, "--admin-listen", dp.admin, "--node-id", id,
		"--cache-dir", cacheDir, "--controlplane", strings.Join(controlplanes, ",")}, extra...)
	dp.proc = start(t, id, built.dataplane, env, dp.args...)
	dp.waitFor("dataplane listening on")
	return dp
}

func (dp *dataplane) restart(t testing.TB) {
	t.Helper()
	dp.stop()
	dp.proc = start(t, dp.id, built.dataplane, dp.env, dp.args...)
	dp.waitFor("dataplane listening on")
}

// get sends a GET through the data plane.
func (dp *dataplane) get(path string) (int, string, error) {
	resp, err := http.Get("http://" + dp.addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// appliedConfig is the data plane's /config answer.
type appliedConfig struct {
	Version           uint64 `json:"version"`
	Hash              string `json:"hash"`
	Source            string `json:"source"`
	SnapshotsReceived uint64 `json:"snapshotsReceived"`
	FleetSize         int    `json:"fleetSize"`
	// CertificateNotAfter is null with --insecure.
	CertificateNotAfter *time.Time `json:"certificateNotAfter"`
}

func (dp *dataplane) config() (appliedConfig, error) {
	var c appliedConfig
	resp, err := http.Get("http://" + dp.admin + "/config")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return c, err
	}
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("/config: %d %s", resp.StatusCode, body)
	}
	err = json.Unmarshal(body, &c)
	return c, err
}

func startEcho(t testing.TB, name string) string {
	t.Helper()
	addr := freeAddr(t)
	p := start(t, name, built.echo, nil, "--listen", addr, "--name", name)
	p.waitFor("echo listening on")
	return addr
}

// ctl runs gatewayctl against server and returns stdout, stderr and the
// exit code. server is the address of an --insecure control plane, or the
// path of a secure one's gatewayctl config (controlplane.ctlTarget).
func ctl(t testing.TB, server string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target := []string{"--server", server, "--insecure"}
	if strings.HasSuffix(server, ".yaml") {
		target = []string{"--config", server}
	}
	cmd := exec.CommandContext(ctx, built.gatewayctl, append(target, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("gatewayctl %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// mustCtl is ctl that fails the test on a non-zero exit.
func mustCtl(t testing.TB, server, stdin string, args ...string) string {
	t.Helper()
	out, errOut, code := ctl(t, server, stdin, args...)
	if code != 0 {
		t.Fatalf("gatewayctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fleet asks a control plane for the data planes it knows, by node id.
func fleet(t testing.TB, server string) (map[string]*meridianv1.DataplaneStatus, uint64) {
	t.Helper()
	out := mustCtl(t, server, "", "-o", "json", "dataplanes")
	var resp meridianv1.ListDataplanesResponse
	if err := ctlJSON(out, &resp); err != nil {
		t.Fatalf("dataplanes -o json: %v\n%s", err, out)
	}
	byID := map[string]*meridianv1.DataplaneStatus{}
	for _, d := range resp.GetDataplanes() {
		byID[d.GetNode().GetId()] = d
	}
	return byID, resp.GetCurrentVersion()
}

// ctlJSON reads gatewayctl's -o json output of an API message into m. The
// output is protojson's but for enums, lower-case words without the
// prefix ("synced" for DATAPLANE_STATE_SYNCED), and 64-bit integers, JSON
// numbers (docs/gatewayctl.md); the words are turned back into names for
// protojson, which reads the numbers as they are.
func ctlJSON(out string, m proto.Message) error {
	dec := json.NewDecoder(strings.NewReader(out))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return err
	}
	enumNames(m.ProtoReflect().Descriptor(), v)
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(data, m)
}

// enumNames rewrites, in place, the enum words of v, the JSON of a message
// of type md, as the value names protojson reads.
func enumNames(md protoreflect.MessageDescriptor, v any) {
	obj, ok := v.(map[string]any)
	if !ok || md.FullName().Parent() == "google.protobuf" {
		return
	}
	for key, val := range obj {
		fd := md.Fields().ByJSONName(key)
		if fd == nil || fd.IsMap() { // no map of the admin API holds enums or messages
			continue
		}
		one := func(val any) any {
			if ed := fd.Enum(); ed != nil {
				if w, ok := val.(string); ok {
					return strings.TrimSuffix(string(ed.Values().ByNumber(0).Name()), "UNSPECIFIED") + strings.ToUpper(w)
				}
			}
			if fd.Message() != nil {
				enumNames(fd.Message(), val)
			}
			return val
		}
		if list, ok := val.([]any); ok {
			for i := range list {
				list[i] = one(list[i])
			}
			continue
		}
		obj[key] = one(val)
	}
}

// waitSynced waits until every id is SYNCED at version (0 = the current
// version) according to server, and returns that version.
func waitSynced(t testing.TB, server string, version uint64, ids ...string) uint64 {
	t.Helper()
	var at uint64
	eventually(t, fmt.Sprintf("data planes %v SYNCED", ids), func() error {
		byID, current := fleet(t, server)
		at = version
		if at == 0 {
			at = current
		}
		for _, id := range ids {
			d := byID[id]
			if d == nil {
				return fmt.Errorf("%s unknown to %s", id, server)
			}
			if d.GetState() != meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED || d.GetAppliedVersion() != at {
				return fmt.Errorf("%s is %s at %d, want SYNCED at %d", id, d.GetState(), d.GetAppliedVersion(), at)
			}
		}
		return nil
	})
	return at
}

// versionOf extracts N from gatewayctl apply's final "version N" line.
func versionOf(t testing.TB, applyOut string) uint64 {
	t.Helper()
	m := regexp.MustCompile(`version (\d+)`).FindStringSubmatch(applyOut)
	if m == nil {
		t.Fatalf("no version in apply output:\n%s", applyOut)
	}
	var v uint64
	fmt.Sscan(m[1], &v)
	return v
}
