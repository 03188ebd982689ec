package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Observation is the data plane's state as one scrape reads it.
type Observation struct {
	// ConfigVersion is the live configuration's version, 0 before one.
	ConfigVersion uint64
	// ConfigAppliedAt is when it was applied; zero before one.
	ConfigAppliedAt time.Time
	// Connected reports whether a control-plane stream is open.
	Connected bool
	// SyncAge is how long no control-plane stream has been open: 0 while
	// one is (the control plane pushes every change at once).
	SyncAge time.Duration
	// SnapshotsReceived and Nacks count the snapshots received from
	// control planes and those rejected.
	SnapshotsReceived, Nacks uint64

	Upstreams  []UpstreamState
	Breakers   []BreakerState
	RateLimits []RateLimitState
	// Redis is the global rate limit store's state; nil without one.
	Redis *RedisState
}

// UpstreamState is one upstream's targets by health.
type UpstreamState struct {
	Name string
	// Healthy, Unhealthy (failing active health checks) and Ejected (by
	// passive outlier detection, and not unhealthy) targets.
	Healthy, Unhealthy, Ejected int
	// ActiveChecks reports whether the upstream has active health checks;
	// ChecksPassed and ChecksFailed count their probes.
	ActiveChecks               bool
	ChecksPassed, ChecksFailed uint64
}

// Breaker positions, as breaker_state reports them: ordered by how much
// traffic the breaker stops.
const (
	BreakerClosed   = 0
	BreakerHalfOpen = 1
	BreakerOpen     = 2
)

// BreakerState is one circuit breaker instance: a CircuitBreaker applied
// to one upstream, route or target, as its scope says. Labels a scope does
// not set are "".
type BreakerState struct {
	Breaker, Upstream, Route, Target string
	// State is BreakerClosed, BreakerHalfOpen or BreakerOpen.
	State                 int
	Transitions, Rejected uint64
}

// RateLimitState is one global-scope RateLimit.
type RateLimitState struct {
	Name string
	// Fallback reports whether its onStoreFailure policy decides now.
	Fallback bool
}

// RedisState is the global rate limit store's client side.
type RedisState struct {
	// Available reports whether calls go to Redis (its breaker is closed).
	Available bool
	// ScriptCalls are calls sent; Failures those that failed or timed
	// out; FastFailures decisions refused without calling while the
	// breaker was open.
	ScriptCalls, Failures, FastFailures uint64
}

// Observer collects an Observation at each scrape. It is a
// prometheus.Collector; register it next to the Metrics.
type Observer struct {
	observe func(*Observation)

	configVersion     *prometheus.Desc
	configAppliedAt   *prometheus.Desc
	connected         *prometheus.Desc
	syncAge           *prometheus.Desc
	snapshotsReceived *prometheus.Desc
	nacks             *prometheus.Desc
	targets           *prometheus.Desc
	healthChecks      *prometheus.Desc
	breakerState      *prometheus.Desc
	breakerTrans      *prometheus.Desc
	breakerRejected   *prometheus.Desc
	limitFallback     *prometheus.Desc
	redisUp           *prometheus.Desc
	redisCalls        *prometheus.Desc
	redisFailures     *prometheus.Desc
	redisFastFailures *prometheus.Desc
}

// NewObserver returns an Observer that calls observe, at every scrape, to
// fill in an empty Observation.
func NewObserver(observe func(*Observation)) *Observer {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
	}
	breakerLabels := []string{"breaker", "upstream", "route", "target"}
	return &Observer{
		observe: observe,
		configVersion: desc("config_version",
			"Version of the live configuration; 0 before one is applied."),
		configAppliedAt: desc("config_applied_timestamp_seconds",
			"When the live configuration was applied, in Unix seconds; 0 before one is."),
		connected: desc("controlplane_connected",
			"1 while a stream to a control plane is open, else 0."),
		syncAge: desc("config_sync_age_seconds",
			"Seconds since a control-plane stream was last open (the control plane pushes every change at once, so the configuration is current while one is): 0 while one is, counted from start when none has been."),
		snapshotsReceived: desc("snapshots_received_total",
			"Snapshots received from control planes."),
		nacks: desc("nacks_total",
			"Snapshots rejected (NACKed) because they did not validate or compile here."),
		targets: desc("upstream_targets",
			"Targets of an upstream by state: healthy, unhealthy (failing active health checks) or ejected (by passive outlier detection).",
			"upstream", "state"),
		healthChecks: desc("health_checks_total",
			"Active health check probes, by upstream and result: success or failure.",
			"upstream", "result"),
		breakerState: desc("breaker_state",
			"Circuit breaker state: 0 closed, 1 half-open, 2 open. Labels a breaker's scope does not use are empty.",
			breakerLabels...),
		breakerTrans: desc("breaker_transitions_total",
			"Circuit breaker state changes.", breakerLabels...),
		breakerRejected: desc("breaker_rejected_total",
			"Requests a circuit breaker refused (answered with its fallback or another target).", breakerLabels...),
		limitFallback: desc("ratelimit_store_fallback",
			"1 while a global RateLimit is decided by its onStoreFailure policy (Redis unavailable or not configured), else 0.",
			"limit"),
		redisUp: desc("ratelimit_redis_available",
			"1 while calls to Redis for global rate limits go through, 0 while its client-side breaker holds them back."),
		redisCalls: desc("ratelimit_redis_calls_total",
			"Script calls sent to Redis for global rate limits."),
		redisFailures: desc("ratelimit_redis_failures_total",
			"Script calls to Redis that failed or timed out."),
		redisFastFailures: desc("ratelimit_redis_short_circuited_total",
			"Global rate limit decisions not sent to Redis because its client-side breaker was open."),
	}
}

// Describe implements prometheus.Collector.
func (o *Observer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		o.configVersion, o.configAppliedAt, o.connected, o.syncAge, o.snapshotsReceived, o.nacks,
		o.targets, o.healthChecks, o.breakerState, o.breakerTrans, o.breakerRejected,
		o.limitFallback, o.redisUp, o.redisCalls, o.redisFailures, o.redisFastFailures,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (o *Observer) Collect(ch chan<- prometheus.Metric) {
	var s Observation
	o.observe(&s)

	gauge(ch, o.configVersion, float64(s.ConfigVersion))
	applied := 0.0
	if !s.ConfigAppliedAt.IsZero() {
		applied = float64(s.ConfigAppliedAt.UnixNano()) / 1e9
	}
	gauge(ch, o.configAppliedAt, applied)
	gauge(ch, o.connected, boolValue(s.Connected))
	gauge(ch, o.syncAge, s.SyncAge.Seconds())
	counter(ch, o.snapshotsReceived, s.SnapshotsReceived)
	counter(ch, o.nacks, s.Nacks)

	for _, u := range s.Upstreams {
		gauge(ch, o.targets, float64(u.Healthy), u.Name, "healthy")
		gauge(ch, o.targets, float64(u.Unhealthy), u.Name, "unhealthy")
		gauge(ch, o.targets, float64(u.Ejected), u.Name, "ejected")
		if u.ActiveChecks {
			counter(ch, o.healthChecks, u.ChecksPassed, u.Name, "success")
			counter(ch, o.healthChecks, u.ChecksFailed, u.Name, "failure")
		}
	}
	for _, b := range s.Breakers {
		labels := []string{b.Breaker, b.Upstream, b.Route, b.Target}
		gauge(ch, o.breakerState, float64(b.State), labels...)
		counter(ch, o.breakerTrans, b.Transitions, labels...)
		counter(ch, o.breakerRejected, b.Rejected, labels...)
	}
	for _, l := range s.RateLimits {
		gauge(ch, o.limitFallback, boolValue(l.Fallback), l.Name)
	}
	if r := s.Redis; r != nil {
		gauge(ch, o.redisUp, boolValue(r.Available))
		counter(ch, o.redisCalls, r.ScriptCalls)
		counter(ch, o.redisFailures, r.Failures)
		counter(ch, o.redisFastFailures, r.FastFailures)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NewBuildInfo returns the meridian_dataplane_build_info gauge: always 1,
// with the build version as a label.
func NewBuildInfo(version string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   namespace,
		Name:        "build_info",
		Help:        "Always 1; the version label is the data plane's build version.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	g.Set(1)
	return g
}
