package store

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-gw/meridian/controlplane/internal/etcdtest"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics"
	"github.com/meridian-gw/meridian/controlplane/internal/metrics/metricstest"
	"github.com/meridian-gw/meridian/proto/config/configtest"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

func TestEtcdRequestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(etcdtest.Start(t), Options{ReplicaID: "cp-test", Metrics: metrics.New(reg)})
	t.Cleanup(func() { s.Close() })

	// An apply reads the configuration once and commits once.
	mustApply(t, s, ApplyInput{Resources: []*meridianv1.Resource{configtest.Upstream("a", "127.0.0.1:1")}})
	if _, err := s.Current(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// A request that runs out of time is an error; one its caller
	// cancelled says nothing about etcd and is left out.
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelExpired()
	if _, err := s.Current(expired); err == nil {
		t.Fatal("Current with an expired deadline succeeded")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Current(cancelled); err == nil {
		t.Fatal("Current with a cancelled context succeeded")
	}

	const duration = "meridian_controlplane_etcd_request_duration_seconds"
	const errs = "meridian_controlplane_etcd_request_errors_total"
	tests := []struct {
		name, op string
		want     float64
	}{
		{duration, opReadConfig, 1},
		{duration, opCommit, 1},
		{duration, opReadVersion, 2},
		{duration, opReadRecord, 0},
		{errs, opReadVersion, 1},
		{errs, opCommit, 0},
	}
	for _, tt := range tests {
		if got := metricstest.Value(t, reg, tt.name, "operation", tt.op); got != tt.want {
			t.Errorf("%s{operation=%q} = %v, want %v", tt.name, tt.op, got, tt.want)
		}
	}
}
