package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics/metricstest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *metrics.Metrics
	m.SetSnapshotVersion(3)
	m.ObserveSnapshotBuild(time.Millisecond)
	m.ObserveSnapshotPush(time.Millisecond)
	m.CountNack("Route")
	m.ObservePropagation(time.Second)
	m.ObserveEtcdRequest("commit", time.Millisecond, errors.New("down"))
	resp, err := m.UnaryServerInterceptor()(context.Background(), "req", &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
		func(context.Context, any) (any, error) { return "resp", nil })
	if resp != "resp" || err != nil {
		t.Fatalf("interceptor = %v, %v; want the handler's answer", resp, err)
	}
}

func TestAdminInterceptor(t *testing.T) {
	reg := prometheus.NewRegistry()
	intercept := metrics.New(reg).UnaryServerInterceptor()
	calls := []struct {
		method string
		err    error
	}{
		{"/meridian.v1.AdminService/Apply", nil},
		{"/meridian.v1.AdminService/Apply", nil},
		{"/meridian.v1.AdminService/Apply", status.Error(codes.InvalidArgument, "bad")},
		{"/meridian.v1.AdminService/List", status.Error(codes.Unauthenticated, "no token")},
		{"/meridian.v1.AdminService/List", errors.New("not a status")},
		{"/other.Service/Call", nil},
	}
	for _, c := range calls {
		resp, err := intercept(context.Background(), "req", &grpc.UnaryServerInfo{FullMethod: c.method},
			func(context.Context, any) (any, error) { return "resp", c.err })
		if resp != "resp" || !errors.Is(err, c.err) {
			t.Fatalf("%s: interceptor = %v, %v; want the handler's answer", c.method, resp, err)
		}
	}
	want := `
# HELP meridian_controlplane_admin_requests_total Admin API calls, by method and gRPC status code.
# TYPE meridian_controlplane_admin_requests_total counter
meridian_controlplane_admin_requests_total{code="InvalidArgument",method="Apply"} 1
meridian_controlplane_admin_requests_total{code="OK",method="Apply"} 2
meridian_controlplane_admin_requests_total{code="Unauthenticated",method="List"} 1
meridian_controlplane_admin_requests_total{code="Unknown",method="List"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meridian_controlplane_admin_requests_total"); err != nil {
		t.Fatal(err)
	}
}

// TestCountRefused: calls refused before any handler count under their
// method, but only the AdminService's real methods, so a caller naming
// arbitrary methods cannot grow the label set.
func TestCountRefused(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	denied := status.Error(codes.PermissionDenied, "role viewer")
	m.CountRefused("/meridian.v1.AdminService/Apply", denied)
	m.CountRefused("/meridian.v1.AdminService/Apply", denied)
	m.CountRefused("/meridian.v1.AdminService/NoSuchMethod", denied)
	m.CountRefused("/meridian.v1.IdentityService/Enrol", denied)
	m.CountRefused("/x/y", denied)
	want := `
# HELP meridian_controlplane_admin_requests_total Admin API calls, by method and gRPC status code.
# TYPE meridian_controlplane_admin_requests_total counter
meridian_controlplane_admin_requests_total{code="PermissionDenied",method="Apply"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meridian_controlplane_admin_requests_total"); err != nil {
		t.Fatal(err)
	}
}

func TestNackKinds(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	// A data plane's error text must not grow the label set: kinds are
	// spelled the canonical way, anything else is "other".
	for _, kind := range []string{"Upstream", "upstream", "Routes", "", "Gadget", "../etc"} {
		m.CountNack(kind)
	}
	tests := []struct {
		kind string
		want float64
	}{
		{"Upstream", 2},
		{"Route", 1},
		{"none", 1},
		{"other", 2},
	}
	for _, tt := range tests {
		if got := metricstest.Value(t, reg, "meridian_controlplane_nacks_total", "kind", tt.kind); got != tt.want {
			t.Errorf("nacks{kind=%q} = %v, want %v", tt.kind, got, tt.want)
		}
	}
	if n := testutil.CollectAndCount(reg, "meridian_controlplane_nacks_total"); n != len(tests) {
		t.Errorf("%d nack series, want %d", n, len(tests))
	}
}

func TestObservations(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.SetSnapshotVersion(7)
	m.ObserveSnapshotBuild(time.Millisecond)
	m.ObserveSnapshotPush(time.Millisecond)
	m.ObserveSnapshotPush(time.Millisecond)
	// A negative propagation (clock skew between replicas) counts as 0.
	m.ObservePropagation(-time.Second)
	m.ObserveEtcdRequest("commit", time.Millisecond, nil)
	m.ObserveEtcdRequest("commit", time.Millisecond, errors.New("etcd down"))
	m.ObserveEtcdRequest("commit", time.Millisecond, context.DeadlineExceeded)
	// Cancelled by the caller: not about etcd, not recorded.
	m.ObserveEtcdRequest("commit", time.Millisecond, context.Canceled)

	tests := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"meridian_controlplane_snapshot_version", nil, 7},
		{"meridian_controlplane_snapshot_build_duration_seconds", nil, 1},
		{"meridian_controlplane_snapshot_push_duration_seconds", nil, 2},
		{"meridian_controlplane_config_propagation_seconds", nil, 1},
		{"meridian_controlplane_etcd_request_duration_seconds", []string{"operation", "commit"}, 3},
		{"meridian_controlplane_etcd_request_errors_total", []string{"operation", "commit"}, 2},
	}
	for _, tt := range tests {
		if got := metricstest.Value(t, reg, tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	want := `
# HELP meridian_controlplane_config_propagation_seconds Time from a configuration version's commit (its history record) to a data plane's ACK of it, once per data plane and version, for versions committed while the data plane was connected to this replica.
# TYPE meridian_controlplane_config_propagation_seconds histogram
meridian_controlplane_config_propagation_seconds_bucket{le="0.001"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.0025"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.005"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.01"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.025"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.05"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.1"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.25"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="0.5"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="1"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="2.5"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="5"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="10"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="30"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="60"} 1
meridian_controlplane_config_propagation_seconds_bucket{le="+Inf"} 1
meridian_controlplane_config_propagation_seconds_sum 0
meridian_controlplane_config_propagation_seconds_count 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meridian_controlplane_config_propagation_seconds"); err != nil {
		t.Fatal(err)
	}
}

// lister is a fleet as the store would report it.
type lister struct {
	dps []*meridianv1.DataplaneStatus
	err error
}

func (l lister) ListDataplanes(context.Context) ([]*meridianv1.DataplaneStatus, uint64, error) {
	return l.dps, 1, l.err
}

func dp(state meridianv1.DataplaneState) *meridianv1.DataplaneStatus {
	return &meridianv1.DataplaneStatus{State: state}
}

func TestDataplaneCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewDataplaneCollector(lister{dps: []*meridianv1.DataplaneStatus{
		dp(meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED),
		dp(meridianv1.DataplaneState_DATAPLANE_STATE_SYNCED),
		dp(meridianv1.DataplaneState_DATAPLANE_STATE_NACKED),
		dp(meridianv1.DataplaneState_DATAPLANE_STATE_DISCONNECTED),
	}}, time.Second))
	// Every state is reported, zeros included.
	want := `
# HELP meridian_controlplane_dataplanes Data planes the fleet has seen, by state as ` + "`gatewayctl dataplanes`" + ` shows it; every replica reports the whole fleet.
# TYPE meridian_controlplane_dataplanes gauge
meridian_controlplane_dataplanes{state="DISCONNECTED"} 1
meridian_controlplane_dataplanes{state="NACKED"} 1
meridian_controlplane_dataplanes{state="STALE"} 0
meridian_controlplane_dataplanes{state="SYNCED"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meridian_controlplane_dataplanes"); err != nil {
		t.Fatal(err)
	}
}

func TestDataplaneCollectorStoreDown(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.SetSnapshotVersion(4)
	reg.MustRegister(metrics.NewDataplaneCollector(lister{err: errors.New("etcd unreachable")}, time.Second))
	// The fleet gauge fails alone, with the reason; the rest still
	// gathers (promhttp serves it with ContinueOnError).
	families, err := reg.Gather()
	if err == nil || !strings.Contains(err.Error(), "etcd unreachable") {
		t.Fatalf("Gather error = %v, want the store's error", err)
	}
	gathered := map[string]bool{}
	for _, f := range families {
		gathered[f.GetName()] = true
	}
	if gathered["meridian_controlplane_dataplanes"] || !gathered["meridian_controlplane_snapshot_version"] {
		t.Fatalf("gathered %v, want snapshot_version and no dataplanes", gathered)
	}
}
