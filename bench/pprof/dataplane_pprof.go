//go:build benchpprof

// This file is not part of any module: bench/profile.sh compiles it into a
// throwaway data plane binary with `go build -tags benchpprof -overlay`, as
// if it sat in dataplane/cmd/dataplane, so the shipped binary never carries
// a profiling endpoint while the benchmark can profile the real program
// under real load.

package main

import (
	"net/http"
	"net/http/pprof"
	"os"
	"time"
)

// init is the only hook an overlay has into a main package it must not
// edit. The server lives as long as the process; the benchmark kills both.
func init() {
	addr := os.Getenv("BENCH_PPROF_LISTEN")
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.ListenAndServe() //nolint:errcheck // a failure shows as a missing profile
}
