// Package metrics defines the data plane's Prometheus metrics. main owns
// the registry and passes a *Metrics to the packages that record.
//
// Per-request metrics cost no label lookup and no allocation: the
// gateway resolves one recorder per route (Route), RateLimit (RateLimit)
// and JWTProvider (JWT) when it compiles a configuration, and a request
// only adds to that recorder's atomic counters and histograms. Recorders
// are kept by name across configuration pushes, so their counters only
// grow; Retain drops those of resources a configuration no longer has,
// and their series disappear from the next scrape.
//
// State that already lives elsewhere (circuit breakers, target health,
// the control-plane stream) is read at scrape time by an Observer.
//
// A nil *Metrics hands out nil recorders, and a nil recorder records
// nothing, so code and tests that do not care pass nil.
package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// namespace prefixes every metric name.
const namespace = "meridian_dataplane"

// NoRoute is the route and upstream label value of requests no route
// served: no route matched (404), none for the method (405), no
// configuration yet (503) or an unusable path (400). Resource names
// cannot contain parentheses, so it never names a real route.
const NoRoute = "(none)"

// durationBuckets are the request duration and upstream latency buckets,
// in seconds: from half a millisecond (a cached upstream on the same
// host) to 30 s (a slow upload or report).
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Metrics holds the recorders of the live resources and collects them.
// It is a prometheus.Collector; New registers it.
type Metrics struct {
	mu        sync.Mutex // guards the maps; never taken on the request path
	routes    map[routeKey]*Route
	limits    map[string]*RateLimit
	providers map[string]*JWT
	unrouted  *Route
	conns     *Connections

	duration *prometheus.HistogramVec // route, upstream
	latency  *prometheus.HistogramVec // route, upstream

	requests        *prometheus.Desc
	inFlight        *prometheus.Desc
	bytesIn         *prometheus.Desc
	bytesOut        *prometheus.Desc
	attempts        *prometheus.Desc
	retries         *prometheus.Desc
	budgetExhausted *prometheus.Desc
	limitDecisions  *prometheus.Desc
	storeFailures   *prometheus.Desc
	storeSwitches   *prometheus.Desc
	jwtRequests     *prometheus.Desc
	connsOpen       *prometheus.Desc
	connsRejected   *prometheus.Desc
	malformed       *prometheus.Desc
}

type routeKey struct{ route, upstream string }

// New creates the metrics and registers them with reg. It panics if they
// are already registered there, as prometheus.MustRegister does: that is
// a programming error.
func New(reg prometheus.Registerer) *Metrics {
	routeLabels := []string{"route", "upstream"}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
	}
	m := &Metrics{
		routes:    map[routeKey]*Route{},
		limits:    map[string]*RateLimit{},
		providers: map[string]*JWT{},
		conns:     &Connections{},
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "request_duration_seconds",
			Help:      "Time from matching a route to the end of the response, middleware and retries included. Upgraded connections (WebSocket) are not observed.",
			Buckets:   durationBuckets,
		}, routeLabels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "upstream_latency_seconds",
			Help:      "Time from sending an attempt to an upstream target to its response header; attempts that got no response are not observed.",
			Buckets:   durationBuckets,
		}, routeLabels),
		requests: desc("requests_total",
			"Requests answered, by route, its upstream, method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or other) and status class (1xx: upgraded). Requests no route served have route and upstream \"(none)\".",
			"route", "upstream", "method", "status_class"),
		inFlight: desc("requests_in_flight",
			"Requests being served, by route.", routeLabels...),
		bytesIn: desc("request_body_bytes_total",
			"Request body bytes read from clients, by route.", routeLabels...),
		bytesOut: desc("response_body_bytes_total",
			"Response body bytes written to clients, by route.", routeLabels...),
		attempts: desc("upstream_attempts_total",
			"Attempts sent to upstream targets, retries included, by outcome: the response's status class, or connect_failure, reset, timeout, canceled (the client left), protocol_error, or the client's faults, which say nothing about the upstream: body_too_large (the client's body passed the route's limit), bad_request_body (it was malformed) and request_body_timeout (it stopped arriving).",
			"route", "upstream", "outcome"),
		retries: desc("retries_total",
			"Retries made, by route.", routeLabels...),
		budgetExhausted: desc("retry_budget_exhausted_total",
			"Retries a route's policy wanted but its retry budget refused.", routeLabels...),
		limitDecisions: desc("ratelimit_decisions_total",
			"Rate limit decisions, by RateLimit and outcome: allowed, queued (allowed after a wait), rejected (429) or shadow_rejected (over the limit in shadow mode, let through).",
			"limit", "outcome"),
		storeFailures: desc("ratelimit_store_failure_decisions_total",
			"Decisions of global RateLimits taken without Redis, by RateLimit and the onStoreFailure policy that decided: local, allow or deny.",
			"limit", "policy"),
		storeSwitches: desc("ratelimit_store_switches_total",
			"Switches of a global RateLimit between counting in Redis and its onStoreFailure policy, both ways.",
			"limit"),
		jwtRequests: desc("jwt_requests_total",
			"Requests a JWTProvider judged, by reason: ok, or why it rejected them (missing, multiple, malformed, too_large, bad_algorithm, unknown_key, bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience, invalid_claim, insufficient_scope).",
			"provider", "reason"),
		connsOpen: desc("connections_open",
			"Client connections open on the traffic listeners. Upgraded connections (WebSocket) leave the count once their handshake is answered."),
		connsRejected: desc("connections_rejected_total",
			"Client connections closed because --max-connections was reached, by reason: idle_reclaimed (the longest-idle keep-alive connection, closed to admit a new one) or at_capacity (a new connection, closed at once because none was idle).",
			"reason"),
		malformed: desc("malformed_requests_total",
			"Requests answered 400 and their connection closed by the plaintext traffic listener before any route saw them, for framing that could smuggle a request past another HTTP parser, by reason: content_length_with_transfer_encoding, obs_fold, bare_lf, bad_transfer_encoding, bad_content_length, bad_chunk or bad_header.",
			"reason"),
	}
	m.unrouted = m.newRoute(NoRoute, NoRoute)
	reg.MustRegister(m)
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.duration.Describe(ch)
	m.latency.Describe(ch)
	for _, d := range []*prometheus.Desc{
		m.requests, m.inFlight, m.bytesIn, m.bytesOut, m.attempts, m.retries, m.budgetExhausted,
		m.limitDecisions, m.storeFailures, m.storeSwitches, m.jwtRequests,
		m.connsOpen, m.connsRejected, m.malformed,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Counters with an outcome,
// reason or status label appear once they are non-zero, as a CounterVec's
// children do.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.duration.Collect(ch)
	m.latency.Collect(ch)
	m.mu.Lock()
	routes := make([]*Route, 0, len(m.routes)+1)
	routes = append(routes, m.unrouted)
	for _, r := range m.routes {
		routes = append(routes, r)
	}
	limits := make([]*RateLimit, 0, len(m.limits))
	for _, l := range m.limits {
		limits = append(limits, l)
	}
	providers := make([]*JWT, 0, len(m.providers))
	for _, p := range m.providers {
		providers = append(providers, p)
	}
	m.mu.Unlock()

	for _, r := range routes {
		r.collect(m, ch)
	}
	for _, l := range limits {
		l.collect(m, ch)
	}
	for _, p := range providers {
		p.collect(m, ch)
	}
	m.conns.collect(m, ch)
}

// Route returns the recorder of a route sending to upstream: the same one
// for as long as the pair stays in the configuration. Nil on a nil
// Metrics.
func (m *Metrics) Route(route, upstream string) *Route {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := routeKey{route, upstream}
	r := m.routes[k]
	if r == nil {
		r = m.newRoute(route, upstream)
		m.routes[k] = r
	}
	return r
}

// Unrouted returns the recorder of requests no route served. Nil on a
// nil Metrics.
func (m *Metrics) Unrouted() *Route {
	if m == nil {
		return nil
	}
	return m.unrouted
}

// RateLimit returns the recorder of the RateLimit name. Nil on a nil
// Metrics.
func (m *Metrics) RateLimit(name string) *RateLimit {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.limits[name]
	if l == nil {
		l = &RateLimit{name: name}
		m.limits[name] = l
	}
	return l
}

// JWT returns the recorder of the JWTProvider name. Nil on a nil Metrics.
func (m *Metrics) JWT(name string) *JWT {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.providers[name]
	if p == nil {
		p = &JWT{provider: name}
		m.providers[name] = p
	}
	return p
}

// Live names the resources of the live configuration.
type Live struct {
	// Routes maps each route to its upstream.
	Routes       map[string]string
	RateLimits   []string
	JWTProviders []string
}

// Retain drops the recorders of every route, RateLimit and JWTProvider
// live does not name, so their series leave the scrape. A request still
// running on an older configuration may record into a dropped recorder;
// that is lost, as the resource is gone. Call it after every Apply, with
// the configuration that is live afterwards.
func (m *Metrics) Retain(live Live) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.routes {
		if up, ok := live.Routes[k.route]; !ok || up != k.upstream {
			delete(m.routes, k)
			m.duration.DeleteLabelValues(k.route, k.upstream)
			m.latency.DeleteLabelValues(k.route, k.upstream)
		}
	}
	retainNames(m.limits, live.RateLimits)
	retainNames(m.providers, live.JWTProviders)
}

func retainNames[T any](m map[string]T, names []string) {
	keep := make(map[string]bool, len(names))
	for _, n := range names {
		keep[n] = true
	}
	for n := range m {
		if !keep[n] {
			delete(m, n)
		}
	}
}

func (m *Metrics) newRoute(route, upstream string) *Route {
	r := &Route{
		route:    route,
		upstream: upstream,
		duration: m.duration.WithLabelValues(route, upstream),
	}
	if route != NoRoute {
		// Requests no route served never reach an upstream.
		r.latency = m.latency.WithLabelValues(route, upstream)
	}
	return r
}

// counter sends a counter sample.
func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

// gauge sends a gauge sample.
func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}
