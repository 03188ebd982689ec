#!/usr/bin/env bash
# Whole-system throughput: Meridian against nginx, HAProxy, Caddy and a bare
# httputil.ReverseProxy, all in front of the same upstream, in the same run.
#
# One upstream (nginx, 1 worker, answers every request with a 1 KiB body).
# Every proxy keeps connections to it alive and adds X-Forwarded-For. wrk
# (-t1 -c50) hits, in turn, the upstream directly, each proxy, Meridian
# with 10,000 extra routes, Meridian with its route behind JWT
# authentication (RS256: every request carries the same token, verified
# once and then served from the verified-token cache), Meridian with a
# global rate limit counted in Redis (redis-server on CPU_LOAD) that never
# limits, and Meridian with its route behind a circuit breaker that stays
# closed, retries that are never needed and a route timeout
# (meridian-resilience: the cost of the breaker's bookkeeping, the retry
# budget and the deadline on every request), and Meridian with every
# observability feature off (meridian-obs-off: no metrics, access log or
# tracing) and on (meridian-obs-on: Prometheus metrics, one JSON access-log
# line per request to a file, and 1% of traces exported over OTLP/HTTP to a
# sink, an nginx on CPU_LOAD that answers 200 to every export); ROUNDS rounds interleave the
# targets (the order rotates each round) so a noisy neighbour hurts every
# target alike. Medians over rounds are printed with the ratios the project
# tracks (docs/benchmarks.md).
#
# CPU layout (made for a 2-core machine; override with CPU_LOAD / CPU_PROXY):
#   CPU_LOAD  (default 0): wrk, the upstream nginx, the control planes (idle
#                          while measuring), redis-server
#   CPU_PROXY (default 1): the proxy under test. Every proxy gets this one
#                          core: nginx and HAProxy run one worker/thread, Go
#                          programs (Caddy, bareproxy, Meridian) derive
#                          GOMAXPROCS=1 from the affinity mask.
#
# Environment: ROUNDS (3), DURATION (10s), CONNECTIONS (50), WARMUP (2s),
#   ROUTES (10000 extra routes for the meridian-10k target), BUILD (1: run
#   `make build` first; 0 uses bin/ as it is), KEEP (1 keeps the temp dir),
#   RESULTS (a file to copy the per-round results to, tab-separated: round,
#   target, req/s, p50 ms, p99 ms, errors, req/CPU-s), TARGETS (the targets
#   to measure, space-separated, from: direct nginx haproxy caddy bareproxy
#   meridian meridian-10k meridian-jwt meridian-rl meridian-resilience
#   meridian-obs-off meridian-obs-on; default all of them;
#   ratios are printed for the pairs measured; meridian-twin, the meridian
#   target a second time, is there for PAIRED=1 TARGETS="meridian
#   meridian-twin": the method's own bias), PAIRED (1: exactly two targets,
#   measured at once instead of in turn, see below).
#
# PAIRED=1 loads the two targets at the same time, each with its own wrk,
# so they share CPU_PROXY. On a shared VM, where one round of the same
# binary varies by ±20%, the noise then hits both alike and the ratio of
# their requests per CPU-second holds within about ±1% from round to round:
# the way to see a difference of a few percent. (Sharing a core is not how
# a proxy runs; docs/benchmarks.md compares the two methods.)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-2s}
ROUTES=${ROUTES:-10000}
BUILD=${BUILD:-1}
PAIRED=${PAIRED:-0}
CPU_LOAD=${CPU_LOAD:-0}
CPU_PROXY=${CPU_PROXY:-1}
ALL_TARGETS="direct nginx haproxy caddy bareproxy meridian meridian-10k meridian-jwt meridian-rl meridian-resilience meridian-obs-off meridian-obs-on"
read -r -a TARGETS <<<"${TARGETS:-$ALL_TARGETS}"
for t in "${TARGETS[@]}"; do
	case " $ALL_TARGETS meridian-twin " in *" $t "*) ;; *) echo "$0: TARGETS: unknown target $t (known: $ALL_TARGETS meridian-twin)" >&2; exit 2 ;; esac
done
if [ "$PAIRED" = 1 ] && [ ${#TARGETS[@]} != 2 ]; then
	echo "$0: PAIRED=1 measures two targets at once; TARGETS has ${#TARGETS[@]}" >&2
	exit 2
fi
# wanted TARGET: whether TARGET is measured in this run.
wanted() { case " ${TARGETS[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh
need nginx wrk curl taskset ss go pgrep
if wanted haproxy; then need haproxy; fi
if wanted caddy; then need caddy; fi
if wanted meridian-jwt; then need openssl; fi
if wanted meridian-rl; then need redis-server redis-cli; fi
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------------ versions
echo "== versions"
nginx -v 2>&1
if wanted haproxy; then haproxy -v | sed -n 1p; fi
if wanted meridian-rl; then redis-server --version; fi
if wanted caddy; then echo "caddy $(caddy version)"; fi
go version
{ wrk -v 2>&1 || true; } | sed -n 1p
echo "kernel $(uname -r), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "layout: wrk + upstream on CPU $CPU_LOAD, proxy under test on CPU $CPU_PROXY"
echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency http://127.0.0.1:PORT$REQ_PATH, $ROUNDS rounds"
echo "targets: ${TARGETS[*]}"

# --------------------------------------------------------------------- build
if [ "$BUILD" = 1 ]; then
	echo "== make build"
	make -s build >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log" >&2; exit 1; }
fi
go build -o "$TMP/bareproxy" ./e2e/cmd/bareproxy
if wanted meridian-jwt; then go build -o "$TMP/minttoken" ./e2e/cmd/minttoken; fi
echo "meridian $(git describe --always --dirty 2>/dev/null || echo unknown), bin/dataplane built $(date -r bin/dataplane '+%F %T')"

# ------------------------------------------------------------------- targets
start_upstream

if wanted nginx; then
claim_port 'PORT[nginx]'
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
$(nginx_paths "$TMP/nginx")
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$TMP/nginx")
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream backend {
        server 127.0.0.1:${PORT[direct]};
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
start nginx "$CPU_PROXY" nginx -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx"
fi

if wanted haproxy; then
claim_port 'PORT[haproxy]'
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
frontend bench
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend upstream
backend upstream
    server up1 127.0.0.1:${PORT[direct]} maxconn 1024
EOF
start haproxy "$CPU_PROXY" haproxy -db -f "$TMP/haproxy.cfg"
fi

if wanted caddy; then
claim_port 'PORT[caddy]'
mkdir -p "$TMP/caddy"
# Caddy's idle-pool defaults are raised to Meridian's (1024 / 256 per host).
cat >"$TMP/caddy/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
http://127.0.0.1:${PORT[caddy]} {
    reverse_proxy 127.0.0.1:${PORT[direct]} {
        transport http {
            keepalive 90s
            keepalive_idle_conns 1024
            keepalive_idle_conns_per_host 256
        }
    }
}
EOF
start caddy "$CPU_PROXY" env HOME="$TMP/caddy" XDG_DATA_HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" \
	caddy run --config "$TMP/caddy/Caddyfile" --adapter caddyfile
fi

if wanted bareproxy; then
	claim_port 'PORT[bareproxy]'
	start bareproxy "$CPU_PROXY" "$TMP/bareproxy" --listen "127.0.0.1:${PORT[bareproxy]}" \
		--upstream "http://127.0.0.1:${PORT[direct]}"
fi

meridian_config "$TMP/meridian.yaml"
for t in meridian meridian-twin; do
	if wanted $t; then start_meridian $t "$TMP/meridian.yaml" "$ROOT/bin/dataplane"; fi
done
if wanted meridian-10k; then
	meridian_config_routes "$TMP/meridian-10k.yaml" "$ROUTES"
	start_meridian meridian-10k "$TMP/meridian-10k.yaml" "$ROOT/bin/dataplane"
fi
if wanted meridian-jwt; then
	# One RSA-2048 key pair and one RS256 token valid for a day: wrk sends
	# the same token on every request, so after the first verification the
	# data plane answers from its verified-token cache.
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/jwt-key.pem" 2>/dev/null
	openssl pkey -in "$TMP/jwt-key.pem" -pubout -out "$TMP/jwt-pub.pem"
	AUTH[meridian-jwt]="Bearer $("$TMP/minttoken" --key "$TMP/jwt-key.pem" --kid bench-1 --sub bench --iss bench --aud bench --ttl 24h)"
	meridian_config_jwt "$TMP/meridian-jwt.yaml" "$TMP/jwt-pub.pem"
	start_meridian meridian-jwt "$TMP/meridian-jwt.yaml" "$ROOT/bin/dataplane"
fi
if wanted meridian-rl; then
	claim_port redis
	start redis "$CPU_LOAD" redis-server --port "$redis" --bind 127.0.0.1 --save "" --appendonly no
	meridian_config_ratelimit "$TMP/meridian-rl.yaml"
	start_meridian meridian-rl "$TMP/meridian-rl.yaml" "$ROOT/bin/dataplane" MERIDIAN_REDIS="127.0.0.1:$redis"
fi
if wanted meridian-resilience; then
	meridian_config_resilience "$TMP/meridian-resilience.yaml"
	start_meridian meridian-resilience "$TMP/meridian-resilience.yaml" "$ROOT/bin/dataplane"
fi
if wanted meridian-obs-off; then
	start_meridian meridian-obs-off "$TMP/meridian.yaml" "$ROOT/bin/dataplane" MERIDIAN_METRICS=false
fi
if wanted meridian-obs-on; then
	# The access log goes to a file in memory (/dev/shm when there is one):
	# the data plane's work per line is the same as on disk, and the
	# VM's block-device writeback, which is not, stays out of the ratio.
	ACCESS_LOG=$TMP/meridian-obs-on-access.log
	if [ -d /dev/shm ] && [ -w /dev/shm ]; then
		ACCESS_LOG=$(mktemp /dev/shm/meridian-bench-access-XXXXXX.log)
		trap 'rm -f "$ACCESS_LOG"; cleanup' EXIT
	fi
	start_otlp_sink
	start_meridian meridian-obs-on "$TMP/meridian.yaml" "$ROOT/bin/dataplane" \
		MERIDIAN_ACCESS_LOG="$ACCESS_LOG" MERIDIAN_TRACE_SAMPLE=0.01 \
		OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${PORT[otlp]}" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
fi

for t in "${TARGETS[@]}"; do
	# A target that wants a token must refuse a request without one.
	wait_http "$t" "http://127.0.0.1:${PORT[$t]}$REQ_PATH" "$([ -n "${AUTH[$t]:-}" ] && echo 401 || echo 200)"
	check_body "$t"
done
if wanted meridian-rl; then
	# Proof the limit is live and counted in Redis: the policy header is
	# sent, and the script ran.
	hdrs=$(curl -s -D - -o /dev/null "http://127.0.0.1:${PORT[meridian-rl]}$REQ_PATH")
	grep -qi '^RateLimit-Policy: "bench"' <<<"$hdrs" ||
		{ echo "$0: meridian-rl answers without its RateLimit-Policy header" >&2; exit 1; }
	[ "$(redis-cli -p "$redis" info commandstats | grep -c 'cmdstat_eval')" -gt 0 ] ||
		{ echo "$0: meridian-rl made no Redis script call" >&2; exit 1; }
fi
if wanted meridian-resilience; then
	# check_body above proved the route answers 200 with the body, which
	# the data plane only does once it has applied the whole snapshot,
	# breaker included; a closed breaker adds no X-Meridian-Breaker header.
	hdrs=$(curl -s -D - -o /dev/null "http://127.0.0.1:${PORT[meridian-resilience]}$REQ_PATH")
	if grep -qi '^X-Meridian-Breaker:' <<<"$hdrs"; then
		echo "$0: meridian-resilience answers with an X-Meridian-Breaker header: its breaker is not closed" >&2
		exit 1
	fi
fi
if wanted meridian-obs-off; then
	got=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[meridian-obs-off-admin]}/metrics" || true)
	[ "$got" = 404 ] || { echo "$0: meridian-obs-off answers /metrics with $got, want 404 (metrics off)" >&2; exit 1; }
fi
if wanted meridian-obs-on; then
	# Into a variable first: grep -q would stop reading early and fail
	# curl, and so the pipeline, with SIGPIPE.
	exposition=$(curl -s "http://127.0.0.1:${PORT[meridian-obs-on-admin]}/metrics")
	grep -q '^meridian_dataplane_requests_total{' <<<"$exposition" ||
		{ echo "$0: meridian-obs-on counts no requests on /metrics" >&2; exit 1; }
fi
if wanted meridian-10k; then
	# Proof the extra routes are live: a generated route answers from the decoy.
	wait_http meridian-10k "http://127.0.0.1:${PORT[meridian-10k]}/svc-1/x" 502
fi

# ------------------------------------------------------------------- measure
# load TARGET WRK_ARGS...: wrk on CPU_LOAD against TARGET, with its
# Authorization header when it needs one.
load() {
	local t=$1
	shift
	local -a hdr=()
	if [ -n "${AUTH[$t]:-}" ]; then hdr=(-H "Authorization: ${AUTH[$t]}"); fi
	taskset -c "$CPU_LOAD" wrk -t1 -c"$CONNECTIONS" "$@" "${hdr[@]}" "http://127.0.0.1:${PORT[$t]}$REQ_PATH"
}

# measure ROUND TARGET: one wrk run, one line appended to $TMP/results.tsv:
# round, target, req/s, p50 ms, p99 ms, errors, requests per CPU-second of
# the process under test (what it would serve with a whole core to itself;
# unlike req/s it does not drop when a neighbour takes part of the core).
measure() {
	local round=$1 t=$2 out rps p50 p99 errors before after reqs per_cpu
	out="$TMP/wrk-$t-$round.txt"
	before=$(cpu_ticks "$t")
	load "$t" -d"$DURATION" --latency >"$out"
	after=$(cpu_ticks "$t")
	rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
	reqs=$(awk '/requests in/ {print $1}' "$out")
	per_cpu=$(awk -v r="$reqs" -v d="$((after - before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.0f", (d > 0 ? r * hz / d : 0)}')
	p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
	p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
	errors=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$rps" "$p50" "$p99" "$errors" "$per_cpu" >>"$TMP/results.tsv"
	printf '  %-19s %9.0f req/s  %9.0f req/CPU-s  (CPU %3.0f%%)  p50 %7.3f ms  p99 %7.3f ms%s\n' \
		"$t" "$rps" "$per_cpu" "$(awk -v r="$rps" -v p="$per_cpu" 'BEGIN {print (p > 0 ? 100 * r / p : 0)}')" "$p50" "$p99" \
		"$([ "$errors" = 0 ] || echo "   ERRORS: $errors")"
}

echo "== warm-up ($WARMUP each)"
for t in "${TARGETS[@]}"; do
	load "$t" -d"$WARMUP" >/dev/null
done

: >"$TMP/results.tsv"
n=${#TARGETS[@]}
for round in $(seq "$ROUNDS"); do
	echo "== round $round/$ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
	if [ "$PAIRED" = 1 ]; then
		# Both at once; wait names its jobs, as the servers are
		# background jobs too.
		measure "$round" "${TARGETS[0]}" >"$TMP/paired-0.txt" &
		m0=$!
		measure "$round" "${TARGETS[1]}" >"$TMP/paired-1.txt" &
		m1=$!
		wait "$m0" "$m1"
		cat "$TMP/paired-0.txt" "$TMP/paired-1.txt"
		continue
	fi
	for i in $(seq 0 $((n - 1))); do
		measure "$round" "${TARGETS[$(((i + round - 1) % n))]}"
	done
done

# median TARGET COLUMN: the median of a results.tsv column (3 rps, 4 p50, 5 p99).
median() {
	awk -F'\t' -v t="$1" -v c="$2" '$2 == t {print $c}' "$TMP/results.tsv" | sort -g |
		awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

declare -A RPS PER_CPU
echo
echo "== medians over $ROUNDS rounds (wrk -t1 -c$CONNECTIONS -d$DURATION, 1 KiB body)"
echo "req/CPU-s: requests per CPU-second used by the target's own processes (direct: the upstream nginx)"
printf '| %-19s | %9s | %9s | %8s | %8s | %6s |\n' target "req/s" "req/CPU-s" "p50 ms" "p99 ms" errors
printf '|%s|%s|%s|%s|%s|%s|\n' "---------------------" "----------:" "----------:" "---------:" "---------:" "-------:"
for t in "${TARGETS[@]}"; do
	RPS[$t]=$(median "$t" 3)
	PER_CPU[$t]=$(median "$t" 7)
	errs=$(awk -F'\t' -v t="$t" '$2 == t {n += $6} END {print n + 0}' "$TMP/results.tsv")
	printf '| %-19s | %9.0f | %9.0f | %8.3f | %8.3f | %6s |\n' "$t" "${RPS[$t]}" "${PER_CPU[$t]}" \
		"$(median "$t" 4)" "$(median "$t" 5)" "$errs"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
# verdict RATIO MIN: met / not met.
verdict() { awk -v r="$1" -v m="$2" 'BEGIN {print ((r >= m) ? "met" : "NOT met")}'; }
# report LABEL A B [MIN]: the ratio A/B of both medians, with a verdict
# against MIN when given.
report() {
	local r1 r2
	wanted "$2" && wanted "$3" || return 0
	r1=$(ratio "${RPS[$2]}" "${RPS[$3]}")
	r2=$(ratio "${PER_CPU[$2]}" "${PER_CPU[$3]}")
	if [ -n "${4:-}" ]; then
		printf '%-40s %5s (%s)   %5s (%s)\n' "$1" "$r1" "$(verdict "$r1" "$4")" "$r2" "$(verdict "$r2" "$4")"
	else
		printf '%-40s %5s         %5s\n' "$1" "$r1" "$r2"
	fi
}
echo
echo "== ratios of medians                       req/s         req/CPU-s"
report "Meridian / bare ReverseProxy >=1" meridian bareproxy 1.00
report "Meridian / Caddy >=1.4" meridian caddy 1.40
report "Meridian / nginx" meridian nginx
report "Meridian / HAProxy" meridian haproxy
report "Meridian $ROUTES routes / 1 >=0.97" meridian-10k meridian 0.97
report "Meridian JWT RS256 / no auth >=0.9" meridian-jwt meridian 0.90
report "Meridian global rate limit / none >=0.8" meridian-rl meridian 0.80
report "Meridian breaker+retry / none >=0.95" meridian-resilience meridian 0.95
report "Meridian observability on / off >=0.9" meridian-obs-on meridian-obs-off 0.90
report "Meridian / itself (the method's bias)" meridian-twin meridian
if [ "$PAIRED" = 1 ]; then
	# Round by round: the ratio PAIRED=1 is for.
	echo
	echo "== ${TARGETS[1]} / ${TARGETS[0]}, req/CPU-s, round by round"
	awk -F'\t' -v a="${TARGETS[1]}" -v b="${TARGETS[0]}" '$2 == a {x[$1] = $7} $2 == b {y[$1] = $7}
		END {for (r in x) if (y[r] > 0) print x[r] / y[r]}' "$TMP/results.tsv" | sort -g |
		awk '{v[NR] = $1; printf "%.3f ", $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "\nmedian %.3f (min %.3f, max %.3f) over %d rounds\n", m, v[1], v[NR], NR}'
fi
if wanted meridian-obs-on; then
	# Proof the observed target did its work: an access-log line per
	# request and spans delivered to the sink.
	lines=$(wc -l <"$ACCESS_LOG")
	exports=$(grep -c 'POST /v1/traces' "$TMP/otlp/access.log" || true)
	echo "meridian-obs-on: $lines access-log lines, $exports OTLP exports received by the sink"
	[ "$lines" -gt 1000 ] || { echo "$0: meridian-obs-on wrote $lines access-log lines" >&2; exit 1; }
	[ "$exports" -gt 0 ] || { echo "$0: meridian-obs-on exported no spans to the sink" >&2; exit 1; }
fi
if [ -n "${RESULTS:-}" ]; then cp "$TMP/results.tsv" "$RESULTS"; fi
