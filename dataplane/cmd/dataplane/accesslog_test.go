package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAccessLogFile runs the program with --access-log FILE: each request
// is a JSON line in the file once the program has stopped (the buffer is
// flushed on shutdown), the query string left out.
func TestAccessLogFile(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer up.Close()
	path := filepath.Join(t.TempDir(), "access.log")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs, done := bootFromCache(t, ctx, strings.TrimPrefix(up.URL, "http://"), "--access-log", path)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, target := range []string{"/a?token=s3cret", "/b"} {
		if status := statusOf(t, client, "http://"+addrs["dataplane"]+target); status != http.StatusOK {
			t.Fatalf("GET %s = %d", target, status)
		}
	}
	cancel()
	waitExit(t, done)

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), data)
	}
	paths := map[string]bool{}
	for _, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if rec["msg"] != "access" || rec["route"] != "r" || rec["status"] != 200.0 {
			t.Errorf("line = %s", line)
		}
		paths[rec["path"].(string)] = true
		if strings.Contains(line, "s3cret") {
			t.Errorf("query string logged: %s", line)
		}
	}
	if !paths["/a"] || !paths["/b"] {
		t.Errorf("paths = %v", paths)
	}
}

func TestAccessLogUnwritable(t *testing.T) {
	var stderr strings.Builder
	dir := t.TempDir()
	code := run(context.Background(), []string{"--access-log", filepath.Join(dir, "missing", "access.log"), "--cache-dir", dir}, env(nil), &strings.Builder{}, &stderr)
	if code != 1 || !strings.HasPrefix(stderr.String(), "dataplane: --access-log: ") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
