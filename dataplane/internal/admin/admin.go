// Package admin serves the data plane's operator endpoints: liveness,
// readiness, the applied configuration's identity, Prometheus metrics and,
// when enabled, the Go runtime's profiles.
package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
)

// ConfigSource returns the live configuration, or nil before the first
// one, and the fleet size the control plane last reported.
type ConfigSource interface {
	Current() *gateway.Config
	FleetSize() int
}

// SyncStats counts the snapshots received from control planes.
type SyncStats interface {
	Received() uint64
}

// ConfigStatus is the JSON body of GET /config.
type ConfigStatus struct {
	Version uint64 `json:"version"`
	Hash    string `json:"hash"`
	// Source is "cache" or "controlplane"; "" before any configuration.
	Source string `json:"source"`
	// AppliedAt is null before any configuration.
	AppliedAt *time.Time `json:"appliedAt"`
	// SnapshotsReceived counts snapshots received from any control plane
	// since the process started (not those loaded from the cache).
	SnapshotsReceived uint64 `json:"snapshotsReceived"`
	// FleetSize is the number of connected data planes as the control
	// plane last reported (1 until it does); global rate limits that fall
	// back to local counting enforce their limit divided by it.
	FleetSize int `json:"fleetSize"`
	// CertificateNotAfter is when the client certificate this data plane
	// holds for the control plane expires; null with --insecure or before
	// enrolment.
	CertificateNotAfter *time.Time `json:"certificateNotAfter"`
}

// Identity is the data plane's credential for the control plane.
type Identity interface {
	// NotAfter is the current certificate's expiry; zero when there is
	// none.
	NotAfter() time.Time
}

// Options are the admin endpoints that are off by default.
type Options struct {
	// Pprof mounts net/http/pprof under /debug/pprof/. Profiles expose
	// internals and cost CPU while taken, so this is opt-in, and the
	// admin listener is loopback unless the operator says otherwise.
	Pprof bool
	// Metrics serves GET /metrics (Prometheus exposition); nil: no
	// /metrics.
	Metrics http.Handler
	// Identity, when set, reports the certificate's expiry on /config.
	Identity Identity
}

// Handler returns the admin mux: /healthz, /readyz and /config,
// /metrics when o.Metrics is set and /debug/pprof/ when o.Pprof is.
func Handler(cfg ConfigSource, stats SyncStats, o Options) http.Handler {
	mux := http.NewServeMux()
	if o.Pprof {
		// pprof.Index also serves the named profiles (heap, goroutine,
		// allocs, ...) under /debug/pprof/<name>.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Current() == nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "no configuration applied"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		st := ConfigStatus{SnapshotsReceived: stats.Received(), FleetSize: cfg.FleetSize()}
		if c := cfg.Current(); c != nil {
			at := c.AppliedAt().UTC()
			st.Version, st.Hash, st.Source, st.AppliedAt = c.Version(), c.Hash(), string(c.Source()), &at
		}
		if o.Identity != nil {
			if t := o.Identity.NotAfter(); !t.IsZero() {
				t = t.UTC()
				st.CertificateNotAfter = &t
			}
		}
		writeJSON(w, http.StatusOK, st)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client may be gone
}
