package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testDepsScript is the list of what the tests need beyond Go, relative to
// e2e/. These tests run it with a PATH made up for each case, so they never
// install anything nor depend on what this machine has.
const testDepsScript = "../tools/test-deps.sh"

// missingPackages is what the script must ask for when none of the tests'
// commands are on PATH, in the script's order.
var missingPackages = []string{"redis-server", "redis-tools", "prometheus", "gcc", "libc6-dev"}

// testDepsDir makes a directory, readable by everyone (the non-root case
// runs as nobody), holding a copy of the script, symlinks to the few basic
// tools a shell script may use, a fake apt-get that appends its arguments to
// apt-get.log in the same directory, and the given fake commands, which
// succeed and do nothing. It is the whole PATH the script gets.
func testDepsDir(t *testing.T, fakes ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meridian-testdeps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Writable by all, so that a fake apt-get run as nobody (the bug the
	// non-root test looks for) can still leave its log.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(testDepsScript)
	if err != nil {
		t.Fatal(err)
	}
	// A copy, because the clone may sit where nobody cannot read.
	if err := os.WriteFile(filepath.Join(dir, "test-deps.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"bash", "sh", "env", "id", "cat", "grep", "sed", "tr", "sort", "uniq", "dirname"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			continue // not every machine has every one; bash is checked below
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bash")); err != nil {
		t.Skip("no bash on PATH")
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("apt-get", `echo "$*" >>`+filepath.Join(dir, "apt-get.log")+"\n")
	for _, f := range fakes {
		write(f, "exit 0\n")
	}
	return dir
}

// runTestDeps runs the script in dir with only PATH=dir in its environment
// (so no CC either), as nobody when asNobody, and returns its exit code,
// stdout and stderr.
func runTestDeps(t *testing.T, dir string, asNobody bool) (int, string, string) {
	t.Helper()
	bash := filepath.Join(dir, "bash")
	args := []string{filepath.Join(dir, "test-deps.sh")}
	name := bash
	if !asNobody && os.Geteuid() != 0 {
		t.Skip("the root case needs root")
	}
	// Not root already: the non-root case needs no change of user.
	if asNobody && os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("running as root and no setpriv to become nobody")
		}
		name = setpriv
		args = append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--", bash}, args...)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + dir}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running %s: %v", testDepsScript, err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func aptLog(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "apt-get.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// TestTestDepsNonRootNamesMissing: without root the script installs
// nothing, and says in one line on stderr which packages are missing and
// how to install them, exiting 2.
func TestTestDepsNonRootNamesMissing(t *testing.T) {
	dir := testDepsDir(t)
	code, stdout, stderr := runTestDeps(t, dir, true)
	pkgs := strings.Join(missingPackages, " ")
	want := "missing test dependencies: " + pkgs + " (install with: sudo apt-get install -y " + pkgs + ")\n"
	if code != 2 || stdout != "" || stderr != want {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2, no stdout, stderr %q", code, stdout, stderr, want)
	}
	if log := aptLog(t, dir); log != nil {
		t.Fatalf("apt-get was called without root: %q", log)
	}
}

// TestTestDepsRootInstalls: as root the script updates the package lists
// and installs exactly the missing packages, then succeeds.
func TestTestDepsRootInstalls(t *testing.T) {
	// redis-cli is there; its package must not be asked for.
	dir := testDepsDir(t, "redis-cli")
	code, stdout, stderr := runTestDeps(t, dir, false)
	if code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0", code, stdout, stderr)
	}
	log := aptLog(t, dir)
	if len(log) != 2 || strings.Fields(log[0])[0] != "update" {
		t.Fatalf("apt-get calls %q; want update, then install", log)
	}
	var pkgs []string
	sawInstall, sawYes := false, false
	for _, f := range strings.Fields(log[1]) {
		switch {
		case f == "install":
			sawInstall = true
		case f == "-y":
			sawYes = true
		case !strings.HasPrefix(f, "-"):
			pkgs = append(pkgs, f)
		}
	}
	want := []string{"redis-server", "prometheus", "gcc", "libc6-dev"}
	if !sawInstall || !sawYes || strings.Join(pkgs, " ") != strings.Join(want, " ") {
		t.Fatalf("apt-get %q; want install -y %s", log[1], strings.Join(want, " "))
	}
}

// TestTestDepsAllPresentSilent: with every command there the script says
// nothing, calls no apt-get and succeeds.
func TestTestDepsAllPresentSilent(t *testing.T) {
	dir := testDepsDir(t, "redis-server", "redis-cli", "promtool", "gcc")
	code, stdout, stderr := runTestDeps(t, dir, true)
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and no output", code, stdout, stderr)
	}
	if log := aptLog(t, dir); log != nil {
		t.Fatalf("apt-get was called with nothing missing: %q", log)
	}
}
