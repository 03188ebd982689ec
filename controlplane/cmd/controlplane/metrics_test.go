package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/controlplane/internal/auth"
	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics/metricstest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// scrape GETs the program's /metrics.
func scrape(t *testing.T, addr string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics = %d: %s", resp.StatusCode, body)
	}
	return body
}

// scraper is a Gatherer that scrapes the running program over HTTP, so the
// testutil and metricstest helpers read what Prometheus would.
func scraper(t *testing.T, addr string) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		parser := expfmt.NewTextParser(model.UTF8Validation)
		byName, err := parser.TextToMetricFamilies(bytes.NewReader(scrape(t, addr)))
		if err != nil {
			return nil, fmt.Errorf("parse /metrics: %w", err)
		}
		// Sorted by name, as a registry gathers them.
		out := make([]*dto.MetricFamily, 0, len(byName))
		for _, name := range slices.Sorted(maps.Keys(byName)) {
			out = append(out, byName[name])
		}
		return out, nil
	})
}

func upstreamAt(addr string) *meridianv1.Resource {
	return &meridianv1.Resource{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: "users"},
		Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: addr}}},
	}}}
}

// TestMetrics drives the running program through admin calls and a data
// plane that ACKs and NACKs, and checks that /metrics moved by exactly that
// much and passes `promtool check metrics`.
func TestMetrics(t *testing.T) {
	// promtool comes with the Debian package prometheus; CI installs it.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is needed to lint /metrics (apt-get install prometheus): %v", err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(auth.TokenLine("alice", auth.RoleAdmin, "sekrit-a")), 0o600); err != nil {
		t.Fatal(err)
	}
	metricsAddr := etcdtest.FreeAddr(t)
	p := startProgram(t, []string{
		"--listen", "127.0.0.1:0",
		"--metrics-listen", metricsAddr,
		"--data-dir", dir,
		"--etcd-listen", etcdtest.FreeAddr(t),
		"--etcd-peer-listen", etcdtest.FreeAddr(t),
		"--admin-tokens-file", tokens,
		"--id", "cp-metrics",
	}, nil)
	reg := scraper(t, metricsAddr)

	caPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	conn := dialTLS(t, p.addr, caPEM, nil)
	admin := meridianv1.NewAdminServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	authed := withToken(ctx, "sekrit-a")
	apply := func(addr string) {
		t.Helper()
		if _, err := admin.Apply(authed, &meridianv1.ApplyRequest{Resources: []*meridianv1.Resource{upstreamAt(addr)}}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}

	// Admin calls: one rejected by authentication, one invalid.
	if _, err := admin.List(ctx, &meridianv1.ListRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("List without token: %v, want Unauthenticated", err)
	}
	if _, err := admin.Get(authed, &meridianv1.GetRequest{Kind: "Upstream"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Get without name: %v, want InvalidArgument", err)
	}

	// v1 is committed before the data plane connects, so its ACK is
	// catching up, not propagation; v2's ACK is; v3 is rejected.
	apply("127.0.0.1:1")
	cert := enrol(ctx, t, admin, conn, "sekrit-a", "dp-1")
	stream, err := meridianv1.NewConfigDiscoveryServiceClient(dialTLS(t, p.addr, caPEM, &cert)).StreamSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recvSnap := func() *meridianv1.Snapshot {
		t.Helper()
		for {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if snap := resp.GetSnapshot(); snap != nil {
				return snap
			}
		}
	}
	answer := func(kept, snap *meridianv1.Snapshot, nack *meridianv1.ConfigError) {
		t.Helper()
		err := stream.Send(&meridianv1.StreamSnapshotsRequest{Version: kept.GetVersion(), Hash: kept.GetHash(), ResponseNonce: snap.GetNonce(), Error: nack})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Send(&meridianv1.StreamSnapshotsRequest{Node: &meridianv1.Node{Id: "dp-1"}}); err != nil {
		t.Fatal(err)
	}
	v1 := recvSnap()
	answer(v1, v1, nil)
	apply("127.0.0.1:2")
	v2 := recvSnap()
	answer(v2, v2, nil)
	apply("127.0.0.1:3")
	v3 := recvSnap()
	answer(v2, v3, &meridianv1.ConfigError{Kind: "Upstream", Name: "users", Message: "no route to host"})

	// The NACK is counted before the status that shows it is written.
	deadline := time.Now().Add(20 * time.Second)
	for metricstest.Value(t, reg, "meridian_controlplane_dataplanes", "state", "NACKED") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the data plane never showed as NACKED:\n%s", scrape(t, metricsAddr))
		}
		time.Sleep(20 * time.Millisecond)
	}

	want := `
# HELP meridian_controlplane_admin_requests_total Admin API calls, by method and gRPC status code.
# TYPE meridian_controlplane_admin_requests_total counter
meridian_controlplane_admin_requests_total{code="OK",method="Apply"} 3
meridian_controlplane_admin_requests_total{code="OK",method="CreateJoinToken"} 1
meridian_controlplane_admin_requests_total{code="InvalidArgument",method="Get"} 1
meridian_controlplane_admin_requests_total{code="Unauthenticated",method="List"} 1
# HELP meridian_controlplane_nacks_total Snapshots data planes rejected, by the kind of resource the error names (none: no resource; other: not a known kind).
# TYPE meridian_controlplane_nacks_total counter
meridian_controlplane_nacks_total{kind="Upstream"} 1
# HELP meridian_controlplane_snapshot_version Configuration version of the snapshot this replica serves; 0 before the first.
# TYPE meridian_controlplane_snapshot_version gauge
meridian_controlplane_snapshot_version 3
# HELP meridian_controlplane_dataplanes Data planes the fleet has seen, by state as ` + "`gatewayctl dataplanes`" + ` shows it; every replica reports the whole fleet.
# TYPE meridian_controlplane_dataplanes gauge
meridian_controlplane_dataplanes{state="DISCONNECTED"} 0
meridian_controlplane_dataplanes{state="NACKED"} 1
meridian_controlplane_dataplanes{state="STALE"} 0
meridian_controlplane_dataplanes{state="SYNCED"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"meridian_controlplane_admin_requests_total", "meridian_controlplane_nacks_total",
		"meridian_controlplane_snapshot_version", "meridian_controlplane_dataplanes"); err != nil {
		t.Fatal(err)
	}
	// Histograms: how many samples each holds.
	counts := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"meridian_controlplane_config_propagation_seconds", nil, 1},
		{"meridian_controlplane_snapshot_build_duration_seconds", nil, 3},
		{"meridian_controlplane_snapshot_push_duration_seconds", nil, 3},
		{"meridian_controlplane_etcd_request_duration_seconds", []string{"operation", "commit"}, 3},
	}
	for _, c := range counts {
		if got := metricstest.Value(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v has %v samples, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The Go runtime and process collectors are there too.
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if metricstest.Value(t, reg, name) <= 0 {
			t.Errorf("%s missing or zero", name)
		}
	}

	// What Prometheus scrapes passes its own linter.
	body := scrape(t, metricsAddr)
	lint := exec.Command(promtool, "check", "metrics")
	lint.Stdin = bytes.NewReader(body)
	if out, err := lint.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}

	if code := p.stop(); code != exitOK {
		t.Fatalf("exit code %d; stderr: %s", code, p.stderr.String())
	}
}
