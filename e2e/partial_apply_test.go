package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// TestPartialApply is the kubectl habit: one file at a time. A file that
// names an Upstream only the control plane stores can be diffed, dry-run
// and applied; a Route naming an Upstream that exists nowhere is refused
// with the place it was looked for; diff of a partial file shows only its
// own resources.
func TestPartialApply(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo-1")
	cp := startControlplane(t, "cp", t.TempDir(), "")
	dp := startDataplane(t, "dp-1", t.TempDir(), nil, cp.addr)
	upstream := writeFile(t, "upstream.yaml", fmt.Sprintf("apiVersion: meridian/v1\nkind: Upstream\nmetadata: {name: demo}\nspec:\n  targets: [{address: %q}]\n", echo))
	route := writeFile(t, "route.yaml", "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: x}\nspec:\n  match: {paths: [{prefix: /x}]}\n  upstream: demo\n")
	v1 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", upstream))

	out, errOut, code := ctl(t, cp.addr, "", "diff", "-f", route)
	if code != 1 || !strings.Contains(out, "kind: Route") || strings.Contains(out, "kind: Upstream") || errOut != "" {
		t.Errorf("diff of a route-only file: exit %d, want 1 and the route's diff alone\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	out = mustCtl(t, cp.addr, "", "apply", "--dry-run", "-f", route)
	if want := fmt.Sprintf("route/x created\nversion %d (dry run)\n", v1+1); out != want {
		t.Errorf("apply --dry-run printed\n%s\nwant\n%s", out, want)
	}
	v2 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", route))
	if v2 != v1+1 {
		t.Fatalf("apply of the route made version %d, want %d", v2, v1+1)
	}
	waitSynced(t, cp.addr, v2, "dp-1")
	if code, body, err := dp.get("/x/hello"); err != nil || code != 200 || !strings.Contains(body, `"upstream":"echo-1"`) {
		t.Errorf("GET /x/hello = %d %v %s", code, err, body)
	}
	if out, _, code := ctl(t, cp.addr, "", "diff", "-f", route); code != 0 || out != "" {
		t.Errorf("diff after apply: exit %d, stdout %q; want 0 and nothing", code, out)
	}

	missing := writeFile(t, "missing.yaml", "apiVersion: meridian/v1\nkind: Route\nmetadata: {name: y}\nspec:\n  match: {paths: [{prefix: /y}]}\n  upstream: nope\n")
	want := fmt.Sprintf("error: %s:6: Route \"y\": spec.upstream: Upstream \"nope\" does not exist in this apply or the stored configuration (version %d)\n", missing, v2)
	for _, verb := range []string{"apply", "diff"} {
		if _, errOut, code := ctl(t, cp.addr, "", verb, "-f", missing); code != 1 || errOut != want {
			t.Errorf("%s of a route naming a missing upstream: exit %d, stderr:\n%s\nwant exit 1 and:\n%s", verb, code, errOut, want)
		}
	}
	// With --prune the files are the whole configuration, so gatewayctl
	// itself finds the upstream missing.
	_, errOut, code = ctl(t, cp.addr, "", "apply", "--prune", "-f", route)
	if code != 1 || !strings.Contains(errOut, `Upstream "demo" does not exist in the files (with --prune they are the whole configuration)`) {
		t.Errorf("apply --prune of the route alone: exit %d, stderr: %s", code, errOut)
	}
	if _, current := fleet(t, cp.addr); current != v2 {
		t.Errorf("refused applies moved the version from %d to %d", v2, current)
	}
}
