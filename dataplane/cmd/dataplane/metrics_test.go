package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
)

// TestMetricsEndpoint runs the program, sends traffic through it, scrapes
// /metrics on the admin listener and has promtool check the exposition.
// promtool comes with Debian's prometheus package; without it the test
// fails, as CI must run it.
func TestMetricsEndpoint(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is required (apt-get install prometheus): %v", err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer up.Close()

	// Boot from a cached snapshot; no control plane answers.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs, done := bootSnapshot(t, ctx, 3, routeTo(up.Listener.Addr().String(), "/api"))
	if len(addrs) < 2 {
		t.Fatalf("the program did not report its listeners: %v", addrs)
	}

	get := func(url string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	for _, path := range []string{"/api/a", "/api/b", "/elsewhere"} {
		get("http://" + addrs["dataplane"] + path)
	}
	status, body := get("http://" + addrs["admin"] + "/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d %s", status, body)
	}
	text := "\n" + string(body)
	for _, want := range []string{
		`meridian_dataplane_requests_total{method="GET",route="r",status_class="2xx",upstream="u"} 2`,
		`meridian_dataplane_requests_total{method="GET",route="(none)",status_class="4xx",upstream="(none)"} 1`,
		`meridian_dataplane_request_duration_seconds_count{route="r",upstream="u"} 2`,
		`meridian_dataplane_config_version 3`,
		`meridian_dataplane_controlplane_connected 0`,
		`meridian_dataplane_build_info{version="dev"} 1`,
		`meridian_dataplane_upstream_targets{state="healthy",upstream="u"} 1`,
	} {
		if !strings.Contains(text, "\n"+want+"\n") {
			t.Errorf("/metrics lacks the line %s", want)
		}
	}
	for _, family := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(text, "\n"+family+" ") {
			t.Errorf("/metrics lacks %s", family)
		}
	}

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	cancel()
	waitExit(t, done)
	http.DefaultClient.CloseIdleConnections()
}

// TestMetricsOff: with --metrics=false traffic flows and the admin
// listener has no /metrics.
func TestMetricsOff(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer up.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs, done := bootSnapshot(t, ctx, 3, routeTo(up.Listener.Addr().String(), "/api"), "--metrics=false")
	if got := statusOf(t, http.DefaultClient, "http://"+addrs["dataplane"]+"/api/a"); got != http.StatusOK {
		t.Errorf("GET /api/a = %d, want 200", got)
	}
	if got := statusOf(t, http.DefaultClient, "http://"+addrs["admin"]+"/metrics"); got != http.StatusNotFound {
		t.Errorf("GET /metrics = %d, want 404 with --metrics=false", got)
	}
	cancel()
	waitExit(t, done)
	http.DefaultClient.CloseIdleConnections()
}
