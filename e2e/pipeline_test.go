package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// baseConfig is an upstream over the given echo targets and one route.
func baseConfig(targets ...string) string {
	var ts []string
	for _, t := range targets {
		ts = append(ts, fmt.Sprintf("{address: %q}", t))
	}
	return fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: echo}
spec:
  targets: [%s]
---
apiVersion: meridian/v1
kind: Route
metadata: {name: api}
spec:
  match: {paths: [{prefix: /api/}]}
  upstream: echo
  rewrite: {stripPrefix: /api}
  headers: {request: {set: {X-Gateway: meridian}}}
`, strings.Join(ts, ", "))
}

const extraRoute = `---
apiVersion: meridian/v1
kind: Route
metadata: {name: extra}
spec:
  match: {paths: [{exact: /extra}]}
  upstream: echo
`

// jwtProvider needs E2E_JWT_SECRET in the data plane's environment.
const jwtProvider = `---
apiVersion: meridian/v1
kind: JWTProvider
metadata: {name: sso}
spec:
  algorithms: [HS256]
  keys: [{kid: k1, secretEnv: E2E_JWT_SECRET}]
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPipeline drives the whole pipeline through the real binaries:
// apply → etcd → snapshot → two data planes → traffic; then a rejected
// config, a NACK, and a rollback.
func TestConfigPipeline(t *testing.T) {
	skipShort(t)
	echo1, echo2 := startEcho(t, "echo-1"), startEcho(t, "echo-2")
	cp := startControlplane(t, "cp", t.TempDir(), "")
	// Only dp-1 has the JWT secret, so only dp-2 will reject the JWT config.
	dp1 := startDataplane(t, "dp-1", t.TempDir(), []string{"E2E_JWT_SECRET=s3cret-value-long-enough-for-hs256-keys"}, cp.addr)
	dp2 := startDataplane(t, "dp-2", t.TempDir(), nil, cp.addr)

	// 1. Apply; both data planes serve it and report SYNCED.
	good := writeFile(t, "gateway.yaml", baseConfig(echo1, echo2))
	v1 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", good, "-m", "first"))
	waitSynced(t, cp.addr, v1, "dp-1", "dp-2")
	for _, dp := range []*dataplane{dp1, dp2} {
		seen := map[string]bool{}
		for range 4 {
			code, body, err := dp.get("/api/hello")
			if err != nil || code != 200 {
				t.Fatalf("%s: GET /api/hello = %d %v %s", dp.id, code, err, body)
			}
			if !strings.Contains(body, `"path":"/hello"`) || !strings.Contains(body, `"X-Gateway":["meridian"]`) {
				t.Fatalf("%s: upstream did not see the rewritten request: %s", dp.id, body)
			}
			seen[strings.Split(strings.SplitN(body, `"upstream":"`, 2)[1], `"`)[0]] = true
		}
		if !seen["echo-1"] || !seen["echo-2"] {
			t.Errorf("%s: round robin did not reach both targets: %v", dp.id, seen)
		}
	}
	table := mustCtl(t, cp.addr, "", "dataplanes")
	if strings.Count(table, "SYNCED") != 2 {
		t.Errorf("dataplanes table does not show two SYNCED rows:\n%s", table)
	}

	// 2. An invalid config is rejected by apply with file:line:field and
	// changes nothing.
	badYAML := baseConfig(echo1) + extraRoute + "  timeout: 5 seconds\n"
	bad := writeFile(t, "bad.yaml", badYAML)
	out, errOut, code := ctl(t, cp.addr, "", "apply", "-f", bad)
	if code != 1 {
		t.Fatalf("apply of an invalid config: exit %d, want 1\n%s%s", code, out, errOut)
	}
	line := strings.Count(badYAML, "\n") // the timeout is the last line
	wantErr := fmt.Sprintf(`%s:%d: Route "extra": spec.timeout: invalid duration "5 seconds"`, bad, line)
	if !strings.Contains(errOut, wantErr) {
		t.Errorf("error does not name file:line and field\n got: %s\nwant: %s", errOut, wantErr)
	}
	// The server re-validates too: a dangling reference sent as-is.
	dangling := writeFile(t, "dangling.yaml", strings.Replace(baseConfig(echo1), "upstream: echo", "upstream: nope", 1))
	_, errOut, code = ctl(t, cp.addr, "", "apply", "-f", dangling)
	if code != 1 || !strings.Contains(errOut, `Route "api": spec.upstream: Upstream "nope" does not exist`) {
		t.Errorf("dangling reference: exit %d, stderr %s", code, errOut)
	}
	if _, current := fleet(t, cp.addr); current != v1 {
		t.Fatalf("a rejected apply changed the version: %d → %d", v1, current)
	}

	// 3. A config dp-2 cannot compile (its environment lacks the JWT
	// secret): dp-1 applies it, dp-2 NACKs with the reason and keeps
	// serving the previous version.
	withJWT := writeFile(t, "jwt.yaml", baseConfig(echo1, echo2)+extraRoute+jwtProvider)
	v2 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", withJWT, "-m", "add jwt"))
	waitSynced(t, cp.addr, v2, "dp-1")
	eventually(t, "dp-2 NACKED", func() error {
		byID, _ := fleet(t, cp.addr)
		d := byID["dp-2"]
		if d.GetState() != meridianv1.DataplaneState_DATAPLANE_STATE_NACKED {
			return fmt.Errorf("dp-2 is %s", d.GetState())
		}
		if d.GetAppliedVersion() != v1 || d.GetLastNack().GetVersion() != v2 {
			return fmt.Errorf("dp-2 applied %d, nacked %d; want %d and %d", d.GetAppliedVersion(), d.GetLastNack().GetVersion(), v1, v2)
		}
		return nil
	})
	table = mustCtl(t, cp.addr, "", "dataplanes")
	if !strings.Contains(table, "NACKED") || !strings.Contains(table, `JWTProvider "sso": spec.keys[0].secretEnv`) || !strings.Contains(table, "E2E_JWT_SECRET") {
		t.Errorf("dataplanes table does not show the NACK reason:\n%s", table)
	}
	if strings.Contains(table, "s3cret-value-long-enough-for-hs256-keys") || strings.Contains(cp.out.String(), "s3cret-value-long-enough-for-hs256-keys") {
		t.Error("the secret value leaked into output")
	}
	if code, _, _ := dp1.get("/extra"); code != 200 {
		t.Errorf("dp-1 (applied v%d) GET /extra = %d, want 200", v2, code)
	}
	if code, _, _ := dp2.get("/extra"); code != 404 {
		t.Errorf("dp-2 (kept v%d) GET /extra = %d, want 404", v1, code)
	}
	if code, _, _ := dp2.get("/api/still-up"); code != 200 {
		t.Errorf("dp-2 stopped serving its previous version: %d", code)
	}

	// 4. Rollback to v1 restores it everywhere, as a new version.
	out = mustCtl(t, cp.addr, "", "rollback", fmt.Sprint(v1), "-m", "undo jwt")
	v3 := versionOf(t, out)
	if v3 <= v2 {
		t.Fatalf("rollback made version %d, want a new one after %d:\n%s", v3, v2, out)
	}
	waitSynced(t, cp.addr, v3, "dp-1", "dp-2")
	for _, dp := range []*dataplane{dp1, dp2} {
		if code, _, _ := dp.get("/extra"); code != 404 {
			t.Errorf("%s after rollback: GET /extra = %d, want 404", dp.id, code)
		}
		cfg, err := dp.config()
		if err != nil || cfg.Version != v3 {
			t.Errorf("%s /config = %+v, %v; want version %d", dp.id, cfg, err, v3)
		}
	}
	got := mustCtl(t, cp.addr, "", "-o", "yaml", "get")
	if strings.Contains(got, "JWTProvider") || !strings.Contains(got, "name: api") {
		t.Errorf("stored config after rollback:\n%s", got)
	}
	hist := mustCtl(t, cp.addr, "", "history")
	for _, msg := range []string{"first", "add jwt", "undo jwt"} {
		if !strings.Contains(hist, msg) {
			t.Errorf("history lacks %q:\n%s", msg, hist)
		}
	}
}
