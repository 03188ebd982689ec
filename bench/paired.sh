#!/usr/bin/env bash
# The cost of Meridian's observability, measured side by side: two data
# planes, one with metrics, access log and tracing off and one with all
# three on (as bench/proxies.sh's meridian-obs-off and meridian-obs-on),
# share one core and are loaded by two wrk at the same time. A noisy
# neighbour then slows both alike, so the ratio of requests each serves
# per CPU-second holds within about 1% from round to round, where
# alternating runs (bench/proxies.sh) swing by 10% or more on a shared VM.
# Sharing a core is not how a data plane runs, so read the ratio with
# bench/proxies.sh's over many short rounds (docs/benchmarks.md,
# "Observability overhead"); the two agreed within 1% on 2026-11-27.
#
# PAIR=aa runs the same configuration twice instead: the method's own
# bias, to read the obs ratio against.
#
# CPU layout as bench/proxies.sh: wrk, the upstream nginx and the OTLP
# sink on CPU_LOAD (0), both data planes on CPU_PROXY (1).
#
# Environment: ROUNDS (5), DURATION (10s), CONNECTIONS (50 per wrk),
#   PAIR (obs | aa), BUILD (1: make build first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
PAIR=${PAIR:-obs}
BUILD=${BUILD:-1}
CPU_LOAD=${CPU_LOAD:-0}
CPU_PROXY=${CPU_PROXY:-1}
# shellcheck source=bench/lib.sh
. bench/lib.sh
need nginx wrk curl taskset ss go pgrep
CLK_TCK=$(getconf CLK_TCK)

if [ "$BUILD" = 1 ]; then
	make -s build >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log" >&2; exit 1; }
fi
echo "meridian $(git describe --always --dirty 2>/dev/null || echo unknown), pair $PAIR, $ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d$DURATION on each, at once"

start_upstream
meridian_config "$TMP/meridian.yaml"
start_meridian off "$TMP/meridian.yaml" "$ROOT/bin/dataplane" MERIDIAN_METRICS=false
case $PAIR in
obs)
	start_otlp_sink
	ACCESS_LOG=$TMP/access.log
	if [ -d /dev/shm ] && [ -w /dev/shm ]; then
		ACCESS_LOG=$(mktemp /dev/shm/meridian-bench-access-XXXXXX.log)
		trap 'rm -f "$ACCESS_LOG"; cleanup' EXIT
	fi
	start_meridian on "$TMP/meridian.yaml" "$ROOT/bin/dataplane" \
		MERIDIAN_ACCESS_LOG="$ACCESS_LOG" MERIDIAN_TRACE_SAMPLE=0.01 \
		OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${PORT[otlp]}" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
	;;
aa) start_meridian on "$TMP/meridian.yaml" "$ROOT/bin/dataplane" MERIDIAN_METRICS=false ;;
*) echo "$0: PAIR: want obs or aa, not $PAIR" >&2; exit 2 ;;
esac
for t in off on; do
	wait_http "$t" "http://127.0.0.1:${PORT[$t]}$REQ_PATH"
	check_body "$t"
done

load() { taskset -c "$CPU_LOAD" wrk -t1 -c"$CONNECTIONS" -d"$1" "http://127.0.0.1:${PORT[$2]}$REQ_PATH"; }
# Warm-up. (wait names its jobs: the servers are background jobs too.)
load 2s off >/dev/null &
w1=$!
load 2s on >/dev/null &
w2=$!
wait "$w1" "$w2"

: >"$TMP/ratios"
for round in $(seq "$ROUNDS"); do
	off0=$(cpu_ticks off) on0=$(cpu_ticks on)
	load "$DURATION" off >"$TMP/off.txt" &
	w1=$!
	load "$DURATION" on >"$TMP/on.txt" &
	w2=$!
	wait "$w1" "$w2"
	off1=$(cpu_ticks off) on1=$(cpu_ticks on)
	n_off=$(awk '/requests in/ {print $1}' "$TMP/off.txt")
	n_on=$(awk '/requests in/ {print $1}' "$TMP/on.txt")
	awk -v r="$round" -v no="$n_off" -v nn="$n_on" -v co=$((off1 - off0)) -v cn=$((on1 - on0)) -v hz="$CLK_TCK" 'BEGIN {
		a = no * hz / co; b = nn * hz / cn
		printf "round %d: off %7.0f req/CPU-s   on %7.0f req/CPU-s   on/off %.3f\n", r, a, b, b / a
		print b / a >> "'"$TMP/ratios"'"
	}'
done
sort -g "$TMP/ratios" | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "median on/off (req per CPU-second): %.3f over %d rounds (min %.3f, max %.3f)\n", m, NR, v[1], v[NR]}'
if [ "$PAIR" = obs ]; then
	lines=$(wc -l <"$ACCESS_LOG")
	exports=$(grep -c 'POST /v1/traces' "$TMP/otlp/access.log" || true)
	echo "on: $lines access-log lines, $exports OTLP exports received by the sink"
	[ "$lines" -gt 1000 ] && [ "$exports" -gt 0 ] || { echo "$0: the observed data plane logged or exported nothing" >&2; exit 1; }
fi
