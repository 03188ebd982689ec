#!/usr/bin/env bash
# Config propagation: 100 applies to a control plane (embedded etcd) with 5
# data planes, all real processes on this machine. Reports p50/p99 of the
# time from Apply returning to every data plane serving the new version
# ("served") and to every ACK being visible in the fleet status ("acked").
# Also the data plane's snapshot compile time for 1,000 and 10,000 routes.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== propagation (5 data planes, 100 applies)"
go test -run '^$' -bench BenchmarkPropagation -benchtime 100x -count "${COUNT:-1}" ./e2e/
echo "== snapshot compile on the data plane"
go test -run '^$' -bench 'BenchmarkCompile' -benchmem -count "${COUNT:-1}" ./dataplane/internal/gateway/ ./dataplane/internal/router/
