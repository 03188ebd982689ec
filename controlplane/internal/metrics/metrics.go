// Package metrics defines the control plane's Prometheus metrics. main owns
// the registry; the other packages record through a *Metrics, and a nil
// *Metrics records nothing, so code and tests that do not care pass nil.
package metrics

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

// namespace prefixes every metric name.
const namespace = "meridian_controlplane"

// Metrics records what the control plane does. Its methods are safe for
// concurrent use and do nothing on a nil *Metrics.
type Metrics struct {
	snapshotVersion prometheus.Gauge
	snapshotBuild   prometheus.Histogram
	snapshotPush    prometheus.Histogram
	nacks           *prometheus.CounterVec
	propagation     prometheus.Histogram
	etcdDuration    *prometheus.HistogramVec
	etcdErrors      *prometheus.CounterVec
	adminRequests   *prometheus.CounterVec
}

// New creates the metrics and registers them with reg. It panics if any
// is already registered there, as prometheus.MustRegister does: that is a
// programming error.
func New(reg prometheus.Registerer) *Metrics {
	// Buckets, in seconds. Snapshot builds and sends take from
	// microseconds (a few resources) to seconds (many megabytes, a slow
	// data plane).
	snapshotBuckets := []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// etcd answers in about a millisecond when healthy; seconds mean
	// trouble (leader election, slow disk).
	etcdBuckets := []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// Propagation is watch delay, snapshot build and send, and the data
	// plane's compile: a millisecond to a minute.
	propagationBuckets := []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
	m := &Metrics{
		snapshotVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "snapshot_version",
			Help:      "Configuration version of the snapshot this replica serves; 0 before the first.",
		}),
		snapshotBuild: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "snapshot_build_duration_seconds",
			Help:      "Time to build a snapshot from a new configuration version read from etcd.",
			Buckets:   snapshotBuckets,
		}),
		snapshotPush: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "snapshot_push_duration_seconds",
			Help:      "Time to hand one snapshot to a data plane's stream, including waiting for gRPC flow control.",
			Buckets:   snapshotBuckets,
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "nacks_total",
			Help:      "Snapshots data planes rejected, by the kind of resource the error names (none: no resource; other: not a known kind).",
		}, []string{"kind"}),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "config_propagation_seconds",
			Help: "Time from a configuration version's commit (its history record) to a data plane's ACK of it, " +
				"once per data plane and version, for versions committed while the data plane was connected to this replica.",
			Buckets: propagationBuckets,
		}),
		etcdDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "etcd_request_duration_seconds",
			Help:      "Latency of the store's etcd requests, by operation; requests the caller cancelled are left out.",
			Buckets:   etcdBuckets,
		}, []string{"operation"}),
		etcdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "etcd_request_errors_total",
			Help:      "The store's etcd requests that failed or timed out, by operation.",
		}, []string{"operation"}),
		adminRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "admin_requests_total",
			Help:      "Admin API calls, by method and gRPC status code.",
		}, []string{"method", "code"}),
	}
	reg.MustRegister(m.snapshotVersion, m.snapshotBuild, m.snapshotPush, m.nacks, m.propagation,
		m.etcdDuration, m.etcdErrors, m.adminRequests)
	return m
}

// SetSnapshotVersion records the version of the snapshot now served.
func (m *Metrics) SetSnapshotVersion(version uint64) {
	if m == nil {
		return
	}
	m.snapshotVersion.Set(float64(version))
}

// ObserveSnapshotBuild records how long building one snapshot took.
func (m *Metrics) ObserveSnapshotBuild(d time.Duration) {
	if m == nil {
		return
	}
	m.snapshotBuild.Observe(d.Seconds())
}

// ObserveSnapshotPush records how long sending one snapshot on a stream
// took.
func (m *Metrics) ObserveSnapshotPush(d time.Duration) {
	if m == nil {
		return
	}
	m.snapshotPush.Observe(d.Seconds())
}

// CountNack counts one rejected snapshot. kind is the resource kind the
// data plane's error names, as it sent it; it is mapped onto the known
// kinds so that a data plane cannot grow the label set.
func (m *Metrics) CountNack(kind string) {
	if m == nil {
		return
	}
	m.nacks.WithLabelValues(nackKind(kind)).Inc()
}

func nackKind(kind string) string {
	if kind == "" {
		return "none"
	}
	k, err := config.ParseKind(kind)
	if err != nil {
		return "other"
	}
	return k
}

// ObservePropagation records the time from a version's commit to a data
// plane's ACK of it. Clock skew between replicas can make d negative; it
// counts as 0.
func (m *Metrics) ObservePropagation(d time.Duration) {
	if m == nil {
		return
	}
	m.propagation.Observe(max(d, 0).Seconds())
}

// ObserveEtcdRequest records one etcd request of the store. operation is
// one of a fixed set of names the store uses. A request cancelled by its
// caller says nothing about etcd and is not recorded.
func (m *Metrics) ObserveEtcdRequest(operation string, d time.Duration, err error) {
	if m == nil || errors.Is(err, context.Canceled) {
		return
	}
	m.etcdDuration.WithLabelValues(operation).Observe(d.Seconds())
	if err != nil {
		m.etcdErrors.WithLabelValues(operation).Inc()
	}
}

// UnaryServerInterceptor counts admin calls by method and status code.
// The gRPC server only runs interceptors for registered methods, so the
// method label stays bounded. Calls refused before they reach it (by the
// authentication tap handle) are counted with CountRefused.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if m != nil && strings.HasPrefix(info.FullMethod, adminPrefix()) {
			m.adminRequests.WithLabelValues(strings.TrimPrefix(info.FullMethod, adminPrefix()), status.Code(err).String()).Inc()
		}
		return resp, err
	}
}

// adminPrefix starts the full name of every AdminService method.
func adminPrefix() string { return "/" + meridianv1.AdminService_ServiceDesc.ServiceName + "/" }

// CountRefused counts an admin call refused before it was served. Only the
// AdminService's own methods are counted: a refused call may name any
// method, and the label must stay bounded.
func (m *Metrics) CountRefused(fullMethod string, err error) {
	if m == nil || !strings.HasPrefix(fullMethod, adminPrefix()) {
		return
	}
	method := strings.TrimPrefix(fullMethod, adminPrefix())
	for _, known := range meridianv1.AdminService_ServiceDesc.Methods {
		if known.MethodName == method {
			m.adminRequests.WithLabelValues(method, status.Code(err).String()).Inc()
			return
		}
	}
}
