package e2e

import (
	"strings"
	"testing"
)

// TestStaticStability: with the control plane gone, a restarted data plane
// serves from its on-disk cache; when the control plane returns, the data
// plane reconnects and is SYNCED without the snapshot being sent again.
func TestStaticStability(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo-1")
	cpDir := t.TempDir()
	cp := startControlplane(t, "cp", cpDir, "")
	dp := startDataplane(t, "dp-1", t.TempDir(), nil, cp.addr)
	v := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "g.yaml", baseConfig(echo))))
	waitSynced(t, cp.addr, v, "dp-1")

	cp.stop()
	dp.restart(t)
	code, body, err := dp.get("/api/cached")
	if err != nil || code != 200 || !strings.Contains(body, `"path":"/cached"`) {
		t.Fatalf("data plane restarted without a control plane: GET = %d %v %s", code, err, body)
	}
	cfg, err := dp.config()
	if err != nil || cfg.Version != v || cfg.Source != "cache" {
		t.Fatalf("/config = %+v, %v; want version %d from cache", cfg, err, v)
	}

	cp.restart(t)
	waitSynced(t, cp.addr, v, "dp-1")
	cfg, err = dp.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SnapshotsReceived != 0 || cfg.Source != "cache" {
		t.Errorf("after reconnecting at the current version the snapshot was resent: %+v", cfg)
	}
	// And it still follows changes.
	v2 := versionOf(t, mustCtl(t, cp.addr, "", "apply", "-f", writeFile(t, "g2.yaml", baseConfig(echo)+extraRoute)))
	waitSynced(t, cp.addr, v2, "dp-1")
	if code, _, _ := dp.get("/extra"); code != 200 {
		t.Errorf("GET /extra after a new apply = %d", code)
	}
}

// TestTwoReplicas: two control planes on one etcd; data planes on either
// receive a change applied through the other, and each replica reports the
// whole fleet.
func TestTwoReplicas(t *testing.T) {
	skipShort(t)
	echo := startEcho(t, "echo-1")
	cpA := startControlplane(t, "cp-a", t.TempDir(), "")
	cpB := startControlplane(t, "cp-b", t.TempDir(), cpA.etcd)
	dpA := startDataplane(t, "dp-a", t.TempDir(), nil, cpA.addr)
	dpB := startDataplane(t, "dp-b", t.TempDir(), nil, cpB.addr)

	v := versionOf(t, mustCtl(t, cpB.addr, "", "apply", "-f", writeFile(t, "g.yaml", baseConfig(echo)), "-m", "via b"))
	waitSynced(t, cpA.addr, v, "dp-a", "dp-b")
	waitSynced(t, cpB.addr, v, "dp-a", "dp-b")
	for _, dp := range []*dataplane{dpA, dpB} {
		if code, body, err := dp.get("/api/x"); err != nil || code != 200 {
			t.Errorf("%s: %d %v %s", dp.id, code, err, body)
		}
	}
	v2 := versionOf(t, mustCtl(t, cpA.addr, "", "apply", "-f", writeFile(t, "g2.yaml", baseConfig(echo)+extraRoute), "-m", "via a"))
	if v2 <= v {
		t.Fatalf("versions are not monotonic across replicas: %d then %d", v, v2)
	}
	waitSynced(t, cpB.addr, v2, "dp-a", "dp-b")
	for _, dp := range []*dataplane{dpA, dpB} {
		if code, _, _ := dp.get("/extra"); code != 200 {
			t.Errorf("%s: GET /extra = %d, want 200", dp.id, code)
		}
	}
	hist := mustCtl(t, cpA.addr, "", "history")
	if !strings.Contains(hist, "via a") || !strings.Contains(hist, "via b") {
		t.Errorf("history on replica A lacks an apply:\n%s", hist)
	}
}
