// Package admin serves the data plane's operator endpoints: liveness,
// readiness and the applied configuration's identity.
package admin

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
)

// ConfigSource returns the live configuration, or nil before the first one.
type ConfigSource interface {
	Current() *gateway.Config
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
}

// Handler returns the admin mux: /healthz, /readyz and /config.
func Handler(cfg ConfigSource, stats SyncStats) http.Handler {
	mux := http.NewServeMux()
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
		st := ConfigStatus{SnapshotsReceived: stats.Received()}
		if c := cfg.Current(); c != nil {
			at := c.AppliedAt().UTC()
			st.Version, st.Hash, st.Source, st.AppliedAt = c.Version(), c.Hash(), string(c.Source()), &at
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
