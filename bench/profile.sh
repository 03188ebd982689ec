#!/usr/bin/env bash
# Where the time goes: CPU profiles of the real data plane (one route, no
# plugins; then with ROUTES extra routes) and of the bare
# httputil.ReverseProxy under the same wrk load as bench/proxies.sh, plus
# the in-process handler benchmark.
#
# The data plane is the shipped binary (make build, from the working tree)
# run with --pprof (MERIDIAN_PPROF=true), which serves /debug/pprof/ on its
# loopback admin listener.
#
# Environment: SECONDS_PROFILED (15), ROUTES (10000; 0 skips that profile), CONNECTIONS (50), NODES (20 rows per
#   top listing), CPU_LOAD (0) / CPU_PROXY (1) as in bench/proxies.sh,
#   OUT (directory to keep the .pprof files and binaries in; default: a
#   temp dir removed on exit), HANDLER_BENCH (1: also profile
#   BenchmarkProxy in dataplane/internal/proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PROFILED=${SECONDS_PROFILED:-15}
CONNECTIONS=${CONNECTIONS:-50}
NODES=${NODES:-20}
CPU_LOAD=${CPU_LOAD:-0}
CPU_PROXY=${CPU_PROXY:-1}
HANDLER_BENCH=${HANDLER_BENCH:-1}
ROUTES=${ROUTES:-10000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
need nginx wrk curl taskset ss go
OUT=${OUT:-$TMP/out}
mkdir -p "$OUT"

echo "== build (working tree $(git describe --always --dirty 2>/dev/null || echo unknown))"
make -s build >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log" >&2; exit 1; }
cp bin/dataplane "$OUT/dataplane" # kept with the profiles, for pprof's symbols
go build -o "$OUT/bareproxy" ./e2e/cmd/bareproxy

start_upstream
meridian_config "$TMP/meridian.yaml"
start_meridian meridian "$TMP/meridian.yaml" "$OUT/dataplane" MERIDIAN_PPROF=true
meridian_pprof=${PORT[meridian-admin]}
if [ "$ROUTES" -gt 0 ]; then
	meridian_config_routes "$TMP/meridian-10k.yaml" "$ROUTES"
	start_meridian meridian-10k "$TMP/meridian-10k.yaml" "$OUT/dataplane" MERIDIAN_PPROF=true
	meridian_10k_pprof=${PORT[meridian-10k-admin]}
	wait_http meridian-10k "http://127.0.0.1:${PORT[meridian-10k]}/svc-1/x" 502
fi
claim_port 'PORT[bareproxy]'
claim_port bare_pprof
start bareproxy "$CPU_PROXY" "$OUT/bareproxy" --listen "127.0.0.1:${PORT[bareproxy]}" \
	--upstream "http://127.0.0.1:${PORT[direct]}" --pprof-listen "127.0.0.1:$bare_pprof"
for t in meridian bareproxy; do
	wait_http "$t" "http://127.0.0.1:${PORT[$t]}$REQ_PATH"
	check_body "$t"
done

# profile TARGET PPROF_PORT: a CPU profile taken while wrk loads TARGET.
profile() {
	local t=$1 pport=$2
	taskset -c "$CPU_LOAD" wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:${PORT[$t]}$REQ_PATH" >/dev/null
	taskset -c "$CPU_LOAD" wrk -t1 -c"$CONNECTIONS" -d"$((SECONDS_PROFILED + 2))s" "http://127.0.0.1:${PORT[$t]}$REQ_PATH" >"$TMP/wrk-$t.txt" &
	local wrk=$!
	sleep 1
	curl -sf -o "$OUT/$t.pprof" "http://127.0.0.1:$pport/debug/pprof/profile?seconds=$SECONDS_PROFILED"
	wait "$wrk"
	echo
	echo "== $t under wrk -t1 -c$CONNECTIONS: $(awk '/^Requests\/sec:/ {print $2}' "$TMP/wrk-$t.txt") req/s," \
		"RSS $(awk '/^VmRSS/ {print $2 " " $3}' "/proc/${PID_OF[$t]}/status"); CPU profile, flat"
	go tool pprof -top -nodecount="$NODES" "$OUT/$t.pprof" 2>/dev/null | sed -n '/^Showing\|flat%/,$p'
	echo
	echo "== $t: cumulative"
	go tool pprof -top -cum -nodecount="$NODES" "$OUT/$t.pprof" 2>/dev/null | sed -n '/flat%/,$p'
}
profile meridian "$meridian_pprof"
profile bareproxy "$bare_pprof"
if [ "$ROUTES" -gt 0 ]; then
	profile meridian-10k "$meridian_10k_pprof"
	echo
	echo "== meridian-10k minus meridian (normalised to the same total)"
	go tool pprof -top -normalize -diff_base="$OUT/meridian.pprof" -nodecount="$NODES" "$OUT/meridian-10k.pprof" 2>/dev/null |
		sed -n '/flat%/,$p'
fi
echo
echo "== meridian minus bareproxy (normalised to the same total)"
go tool pprof -top -normalize -diff_base="$OUT/bareproxy.pprof" -nodecount="$NODES" "$OUT/meridian.pprof" 2>/dev/null |
	sed -n '/flat%/,$p'

if [ "$HANDLER_BENCH" = 1 ]; then
	# Serial requests through the handler with an in-process upstream: no
	# client-side server cost, one request at a time.
	echo
	echo "== go test -bench 'BenchmarkProxy\$|BenchmarkBareReverseProxy\$' -benchmem ./dataplane/internal/proxy/"
	(cd dataplane/internal/proxy && go test -run '^$' -bench 'BenchmarkProxy$|BenchmarkBareReverseProxy$' -benchmem -count 1 .) |
		grep -E '^Benchmark|FAIL' || true
	echo
	echo "== BenchmarkProxy: CPU profile, flat"
	(cd dataplane/internal/proxy && go test -run '^$' -bench 'BenchmarkProxy$' -count 1 \
		-cpuprofile "$OUT/handler.pprof" -o "$OUT/proxy.test" . >/dev/null) || echo "(BenchmarkProxy failed)"
	if [ -s "$OUT/handler.pprof" ]; then
		go tool pprof -top -nodecount="$NODES" "$OUT/proxy.test" "$OUT/handler.pprof" 2>/dev/null | sed -n '/flat%/,$p'
	fi
fi
[ "$OUT" = "$TMP/out" ] || echo "profiles and binaries kept in $OUT"
