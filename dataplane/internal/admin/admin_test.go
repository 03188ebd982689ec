package admin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meridian-gw/meridian/dataplane/internal/gateway"
	"github.com/meridian-gw/meridian/proto/config"
	meridianv1 "github.com/meridian-gw/meridian/proto/meridian/v1"
)

type counter uint64

func (c counter) Received() uint64 { return uint64(c) }

func TestAdmin(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer g.Close()
	h := Handler(g, counter(2), Options{})

	do := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}

	if code, _ := do("/healthz"); code != 200 {
		t.Errorf("/healthz = %d before config", code)
	}
	if code, _ := do("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d before config, want 503", code)
	}
	_, body := do("/config")
	var empty map[string]any
	if err := json.Unmarshal([]byte(body), &empty); err != nil {
		t.Fatal(err)
	}
	if empty["version"] != 0.0 || empty["appliedAt"] != nil || empty["snapshotsReceived"] != 2.0 || empty["source"] != "" || empty["fleetSize"] != 1.0 ||
		empty["certificateNotAfter"] != nil {
		t.Errorf("/config before apply = %s", body)
	}

	rs := []*meridianv1.Resource{{Kind: &meridianv1.Resource_Upstream{Upstream: &meridianv1.Upstream{
		Metadata: &meridianv1.Metadata{Name: "u"},
		Spec:     &meridianv1.UpstreamSpec{Targets: []*meridianv1.Target{{Address: "127.0.0.1:1"}}},
	}}}}
	snap := &meridianv1.Snapshot{Version: 9, Hash: config.Hash(rs), Resources: rs}
	if err := g.Apply(context.Background(), snap, gateway.SourceCache); err != nil {
		t.Fatal(err)
	}
	g.SetFleetSize(3)
	if code, _ := do("/readyz"); code != 200 {
		t.Errorf("/readyz = %d after config, want 200", code)
	}
	_, body = do("/config")
	var st ConfigStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Version != 9 || st.Hash != snap.GetHash() || st.Source != "cache" || st.AppliedAt == nil || st.SnapshotsReceived != 2 || st.FleetSize != 3 {
		t.Errorf("/config = %s", body)
	}
}

func TestPprof(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer g.Close()
	tests := []struct {
		name string
		opts Options
		path string
		want int
	}{
		{name: "index when enabled", opts: Options{Pprof: true}, path: "/debug/pprof/", want: http.StatusOK},
		{name: "named profile when enabled", opts: Options{Pprof: true}, path: "/debug/pprof/goroutine?debug=1", want: http.StatusOK},
		{name: "cmdline when enabled", opts: Options{Pprof: true}, path: "/debug/pprof/cmdline", want: http.StatusOK},
		{name: "index when disabled", path: "/debug/pprof/", want: http.StatusNotFound},
		{name: "profile when disabled", path: "/debug/pprof/profile", want: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(g, counter(0), tt.opts).ServeHTTP(rec, httptest.NewRequest("GET", tt.path, nil))
			if rec.Code != tt.want {
				t.Errorf("GET %s = %d, want %d", tt.path, rec.Code, tt.want)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer g.Close()
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "# metrics\n") })
	tests := []struct {
		name   string
		opts   Options
		method string
		want   int
	}{
		{name: "served when set", opts: Options{Metrics: metrics}, method: "GET", want: http.StatusOK},
		{name: "GET only", opts: Options{Metrics: metrics}, method: "POST", want: http.StatusMethodNotAllowed},
		{name: "absent when not set", method: "GET", want: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(g, counter(0), tt.opts).ServeHTTP(rec, httptest.NewRequest(tt.method, "/metrics", nil))
			if rec.Code != tt.want {
				t.Errorf("%s /metrics = %d, want %d", tt.method, rec.Code, tt.want)
			}
			if tt.want == http.StatusOK && rec.Body.String() != "# metrics\n" {
				t.Errorf("body = %q, want the metrics handler's", rec.Body.String())
			}
		})
	}
}

type expiry time.Time

func (e expiry) NotAfter() time.Time { return time.Time(e) }

func TestConfigShowsTheCertificateExpiry(t *testing.T) {
	g := gateway.New(gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer g.Close()
	notAfter := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		name string
		id   Identity
		want *time.Time
	}{
		{"enrolled", expiry(notAfter), &notAfter},
		{"not yet enrolled", expiry(time.Time{}), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(g, counter(0), Options{Identity: tt.id}).ServeHTTP(rec, httptest.NewRequest("GET", "/config", nil))
			var st ConfigStatus
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
				t.Fatal(err)
			}
			if (st.CertificateNotAfter == nil) != (tt.want == nil) || tt.want != nil && !st.CertificateNotAfter.Equal(*tt.want) {
				t.Fatalf("certificateNotAfter = %v, want %v", st.CertificateNotAfter, tt.want)
			}
		})
	}
}
