package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// deployDir holds the Prometheus and Grafana assets, relative to e2e/.
const deployDir = "../deploy"

// TestPrometheusAssetsValid: the scrape configuration and the alerting
// rules it loads pass promtool.
func TestPrometheusAssetsValid(t *testing.T) {
	promtool := mustPromtool(t)
	out, err := exec.Command(promtool, "check", "config", deployDir+"/prometheus/prometheus.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	out, err = exec.Command(promtool, "check", "rules", deployDir+"/prometheus/alerts.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestDeployAssetsMatchMetrics: every metric the Grafana dashboard and the
// alerting rules query exists in the real /metrics output of a control
// plane and a data plane that have served traffic of every kind the
// dashboard shows.
func TestDeployAssetsMatchMetrics(t *testing.T) {
	skipShort(t)
	queried := map[string][]string{} // metric -> where it is queried
	for _, q := range dashboardQueries(t) {
		for _, m := range metricNames(q) {
			queried[m] = append(queried[m], "dashboard")
		}
	}
	alerts, err := os.ReadFile(deployDir + "/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metricNames(string(alerts)) {
		queried[m] = append(queried[m], "alerts.yml")
	}
	if len(queried) < 20 {
		t.Fatalf("only %d metrics found in the dashboard and rules: the parsing is broken", len(queried))
	}

	exposed := fleetMetrics(t)
	var missing []string
	for m, where := range queried {
		if !exposed[m] {
			missing = append(missing, fmt.Sprintf("%s (%s)", m, strings.Join(slices.Compact(where), ", ")))
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("queried but not exposed by the programs:\n  %s", strings.Join(missing, "\n  "))
	}
}

// dashboardQueries returns the PromQL of every panel and template
// variable of the Grafana dashboard, which must be valid JSON.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(deployDir + "/grafana/meridian.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	var qs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has a target without a query", p.Title)
			}
			qs = append(qs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		qs = append(qs, v.Definition)
	}
	return qs
}

var metricName = regexp.MustCompile(`\bmeridian_[a-z0-9_]+`)

// metricNames returns the Meridian metric names a query or file mentions.
func metricNames(s string) []string {
	names := metricName.FindAllString(s, -1)
	slices.Sort(names)
	return slices.Compact(names)
}

// fleetMetrics runs a control plane and a data plane, drives traffic that
// moves every kind of metric (routes, a retry policy, a JWT route, a local
// and a global rate limit, a circuit breaker, active health checks, a
// NACK), and returns the metric names both expose.
func fleetMetrics(t *testing.T) map[string]bool {
	t.Helper()
	dir := t.TempDir()
	cp := startControlplane(t, "cp", dir+"/cp", "")
	dp := startDataplane(t, "dp-1", dir+"/dp", nil, cp.addr)
	echo := startEcho(t, "echo")

	config := fmt.Sprintf(`apiVersion: meridian/v1
kind: Upstream
metadata: {name: echo}
spec:
  targets: [{address: %s}]
  healthCheck: {active: {path: /, interval: 100ms}}
---
apiVersion: meridian/v1
kind: Route
metadata: {name: api}
spec:
  match: {paths: [{prefix: /api}]}
  upstream: echo
  retry: {attempts: 1}
  rateLimits: [tight, fleet]
  circuitBreaker: guard
---
apiVersion: meridian/v1
kind: RateLimit
metadata: {name: tight}
spec: {limit: 2, period: 1h, key: [route]}
---
apiVersion: meridian/v1
kind: RateLimit
metadata: {name: fleet}
spec: {scope: global, limit: 1000, period: 1s, key: [route]}
---
apiVersion: meridian/v1
kind: CircuitBreaker
metadata: {name: guard}
spec: {trip: {consecutiveFailures: 50}}
`, echo)
	base := writeFile(t, "base.yaml", config)
	v1 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", base))
	waitSynced(t, cp.addr, v1, "dp-1")

	// A JWTProvider the data plane cannot build (no secret in its
	// environment) is NACKed; then one it can build, on a second route.
	nacked := writeFile(t, "nacked.yaml", config+jwtProvider)
	v2 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", nacked))
	eventually(t, "dp-1 NACKs", func() error {
		if byID, _ := fleet(t, cp.addr); byID["dp-1"].GetLastNack().GetVersion() != v2 {
			return fmt.Errorf("no NACK of version %d yet", v2)
		}
		return nil
	})
	withAuth := writeFile(t, "auth.yaml", config+`---
apiVersion: meridian/v1
kind: JWTProvider
metadata: {name: sso}
spec:
  algorithms: [RS256]
  jwksURI: http://127.0.0.1:1/jwks.json
---
apiVersion: meridian/v1
kind: Route
metadata: {name: private}
spec:
  match: {paths: [{prefix: /private}]}
  upstream: echo
  auth: {jwt: sso}
`)
	v3 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", withAuth))
	waitSynced(t, cp.addr, v3, "dp-1")

	for _, path := range []string{"/api/a", "/api/b", "/api/c", "/private", "/nowhere"} {
		if _, _, err := dp.get(path); err != nil {
			t.Fatal(err)
		}
	}
	// Active health checks run every 100ms; wait for one to be counted.
	dpAddr := "http://" + dp.admin + "/metrics"
	eventually(t, "a health check counted", func() error {
		if !exposedNames(t, dpAddr)["meridian_dataplane_health_checks_total"] {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	names := exposedNames(t, dpAddr)
	for n := range exposedNames(t, "http://"+metricsAddr(t, cp)+"/metrics") {
		names[n] = true
	}
	return names
}

// metricsAddr returns the --metrics-listen address a control plane was
// started with.
func metricsAddr(t *testing.T, cp *controlplane) string {
	t.Helper()
	args := cp.cmd.Args
	for i, a := range args {
		if a == "--metrics-listen" && i+1 < len(args) {
			return args[i+1]
		}
	}
	t.Fatal("control plane started without --metrics-listen")
	return ""
}

// exposedNames scrapes url and returns the metric names of its samples,
// histogram series (_bucket, _sum, _count) included as they appear.
func exposedNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// mustPromtool returns promtool's path; a missing promtool fails the test
// (.ci/run installs Debian's prometheus package).
func mustPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed (apt-get install prometheus)")
	}
	return p
}
