# Shared by bench/proxies.sh and bench/profile.sh (sourced, not run): a temp
# dir, processes pinned to a CPU and stopped on exit, free loopback ports,
# the nginx upstream and a Meridian control plane + data plane pair.
#
# The caller sets ROOT (the repository), CPU_LOAD and CPU_PROXY, and has
# `set -euo pipefail`.

TMP=$(mktemp -d /tmp/meridian-bench-XXXXXX)
PIDS=()
declare -A PID_OF
declare -A PORT
# AUTH[NAME]: the Authorization header value every request to target NAME
# carries (unset: none).
declare -A AUTH
# The path wrk requests from every target. It shares /api/v1/ with the
# generated routes so the 10k-route lookup walks the crowded part of the table.
REQ_PATH=/api/v1/resource

cleanup() {
	local pid alive
	# Every process was started with setsid, so its pid is its process
	# group: TERM the group (nginx workers included), then KILL stragglers.
	for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
	for _ in $(seq 50); do
		alive=0
		for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
		[ "$alive" = 0 ] && break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# need TOOL...: fails unless every TOOL is on PATH.
need() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null ||
			{ echo "$0: $tool is not installed (apt-get install -y nginx haproxy caddy wrk linux-perf)" >&2; exit 1; }
	done
}

# start NAME CPU CMD...: runs CMD pinned to CPU in its own process group,
# output in $TMP/NAME.log.
start() {
	local name=$1 cpu=$2
	shift 2
	setsid taskset -c "$cpu" "$@" >"$TMP/$name.log" 2>&1 </dev/null &
	PIDS+=("$!")
	PID_OF[$name]=$!
}

USED_PORTS=" "
# claim_port VAR: sets VAR to a loopback port nobody listens on and that no
# earlier call handed out. (Not $(...): the record must outlive a subshell.)
claim_port() {
	local var=$1 p
	while :; do
		p=$((20000 + RANDOM % 30000))
		case $USED_PORTS in *" $p "*) continue ;; esac
		if [ -z "$(ss -Htan "sport = :$p")" ]; then
			USED_PORTS+="$p "
			printf -v "$var" '%s' "$p"
			return
		fi
	done
}

# wait_http NAME URL [STATUS]: waits up to 60s until URL answers STATUS
# (default 200); fails at once if process NAME exits.
wait_http() {
	local name=$1 url=$2 want=${3:-200} got=
	for _ in $(seq 600); do
		got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
		[ "$got" = "$want" ] && return 0
		if [ -n "${PID_OF[$name]:-}" ] && ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
			echo "$0: $name exited; log:" >&2
			tail -n 30 "$TMP/$name.log" >&2 || true
			exit 1
		fi
		sleep 0.1
	done
	echo "$0: $name: $url answered $got, not $want, after 60s; log:" >&2
	tail -n 30 "$TMP/$name.log" >&2 || true
	exit 1
}

# check_body NAME: fails unless target NAME answers REQ_PATH (with the
# AUTH[NAME] header when set) with 200 and 1 KiB.
check_body() {
	local got
	local -a hdr=()
	if [ -n "${AUTH[$1]:-}" ]; then hdr=(-H "Authorization: ${AUTH[$1]}"); fi
	got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "${hdr[@]}" "http://127.0.0.1:${PORT[$1]}$REQ_PATH" || true)
	[ "$got" = "200 1024" ] || { echo "$0: $1: answered \"$got\" (status, bytes), want \"200 1024\"" >&2; exit 1; }
}

# nginx_paths DIR: the nginx.conf lines that keep every file nginx writes in DIR.
nginx_paths() {
	cat <<EOF
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
EOF
}
nginx_temp_paths() {
	local t
	for t in client_body proxy fastcgi uwsgi scgi; do echo "    ${t}_temp_path $1;"; done
}

# start_upstream: nginx, one worker on CPU_LOAD, 1 KiB body for every path.
# Sets PORT[direct].
start_upstream() {
	local dir=$TMP/upstream body
	body=$(head -c 1024 /dev/zero | tr '\0' 'x')
	claim_port 'PORT[direct]'
	mkdir -p "$dir"
	cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
$(nginx_paths "$dir")
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$dir")
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:${PORT[direct]};
        default_type text/plain;
        location / { return 200 "$body"; }
    }
}
EOF
	start direct "$CPU_LOAD" nginx -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir"
	wait_http direct "http://127.0.0.1:${PORT[direct]}$REQ_PATH"
	check_body direct
}

# start_otlp_sink: nginx on CPU_LOAD answering 200 with an empty body (a
# valid empty OTLP/HTTP export response) to every request, each logged in
# $TMP/otlp/access.log. Sets PORT[otlp].
start_otlp_sink() {
	local dir=$TMP/otlp
	claim_port 'PORT[otlp]'
	mkdir -p "$dir"
	cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
$(nginx_paths "$dir")
events { worker_connections 1024; }
http {
    access_log $dir/access.log;
$(nginx_temp_paths "$dir")
    client_max_body_size 0;
    server {
        listen 127.0.0.1:${PORT[otlp]};
        location / { return 200; }
    }
}
EOF
	start otlp "$CPU_LOAD" nginx -e "$dir/error.log" -c "$dir/nginx.conf" -p "$dir"
	wait_http otlp "http://127.0.0.1:${PORT[otlp]}/v1/traces"
}

# meridian_config FILE: one upstream (the nginx upstream) and one route,
# prefix /, no plugins.
meridian_config() {
	cat >"$1" <<EOF
apiVersion: meridian/v1
kind: Upstream
metadata: {name: bench}
spec:
  targets: [{address: 127.0.0.1:${PORT[direct]}}]
---
apiVersion: meridian/v1
kind: Route
metadata: {name: bench}
spec:
  match:
    paths: [{prefix: /}]
  upstream: bench
EOF
}

# meridian_config_ratelimit FILE: the one-route config of meridian_config
# with a global (Redis) token-bucket RateLimit on the route, keyed on the
# client address, whose limit is never reached: every request costs a
# decision (one hot key, so concurrent ones are coalesced into one script
# call) but none is rejected.
meridian_config_ratelimit() {
	meridian_config "$1"
	cat >>"$1" <<EOF
  rateLimits: [bench]
---
apiVersion: meridian/v1
kind: RateLimit
metadata: {name: bench}
spec:
  scope: global
  algorithm: token_bucket
  limit: 1000000000
  period: 1s
  key: [client_ip]
EOF
}

# meridian_config_resilience FILE: the one-route config of meridian_config
# with a CircuitBreaker on the route (closed throughout: a healthy nginx
# never reaches a 50% error rate, a 1s p99 or 50 failures in a row), so
# every request is admitted by the breaker and its outcome recorded, plus
# retries (never needed, so only the budget is counted) and a route
# timeout (a deadline on every request).
meridian_config_resilience() {
	meridian_config "$1"
	cat >>"$1" <<EOF
  timeout: 5s
  retry: {attempts: 2, on: [connect_failure, "503"], backoff: {base: 10ms, max: 100ms}, budgetPercent: 20}
  circuitBreaker: bench
---
apiVersion: meridian/v1
kind: CircuitBreaker
metadata: {name: bench}
spec:
  window: 10s
  bucket: 100ms
  minRequests: 20
  trip:
    errorRate: 0.5
    latency: {quantile: 0.99, threshold: 1s}
    consecutiveFailures: 50
  open: {duration: 5s}
  halfOpen: {probes: 1, successes: 3}
  scope: route
  fallback: {status: 503, body: '{"error":"upstream unavailable"}', headers: {Content-Type: application/json}}
EOF
}

# meridian_config_routes FILE N: the same plus N routes to a decoy upstream
# (a closed port): a third each exact, prefix and two-parameter template,
# most of them under /api/v1/ like the request path.
meridian_config_routes() {
	local decoy
	claim_port decoy
	meridian_config "$1"
	{
		cat <<EOF
---
apiVersion: meridian/v1
kind: Upstream
metadata: {name: decoy}
spec:
  targets: [{address: 127.0.0.1:$decoy}]
EOF
		awk -v n="$2" 'BEGIN {
			for (i = 0; i < n; i++) {
				if (i % 3 == 0)      p = "{exact: /api/v1/items-" i "}"
				else if (i % 3 == 1) p = "{prefix: /svc-" i "/}"
				else                 p = "{template: \"/api/v1/users-" i "/{id}/orders/{orderId}\"}"
				printf "---\napiVersion: meridian/v1\nkind: Route\nmetadata: {name: r%05d}\nspec:\n  match:\n    paths: [%s]\n  upstream: decoy\n", i, p
			}
		}'
	} >>"$1"
}

# meridian_config_jwt FILE PUBLIC_KEY_PEM_FILE: the one-route config of
# meridian_config with the route behind `auth: {jwt: bench}`, a
# JWTProvider that accepts RS256 tokens from issuer bench with audience
# bench, signed by the key in PUBLIC_KEY_PEM_FILE (inline, kid bench-1).
meridian_config_jwt() {
	meridian_config "$1"
	{
		cat <<EOF
  auth: {jwt: bench}
---
apiVersion: meridian/v1
kind: JWTProvider
metadata: {name: bench}
spec:
  issuer: bench
  audiences: [bench]
  algorithms: [RS256]
  keys:
    - kid: bench-1
      publicKeyPEM: |
EOF
		sed 's/^/        /' "$2"
	} >>"$1"
}

# start_meridian NAME CONFIG DATAPLANE [ENV=VALUE...]: a control plane
# (embedded etcd, on CPU_LOAD) with CONFIG applied by gatewayctl, and the
# DATAPLANE binary on CPU_PROXY with ENV added. Sets PORT[NAME] and
# PORT[NAME-admin] (its admin listener); does not wait for the data plane
# to serve.
start_meridian() {
	local name=$1 config=$2 dataplane=$3 cp etcd peer metrics
	shift 3
	claim_port cp
	claim_port etcd
	claim_port peer
	claim_port metrics
	claim_port "PORT[$name-admin]"
	claim_port "PORT[$name]"
	mkdir -p "$TMP/$name/data" "$TMP/$name/cache"
	start "$name-cp" "$CPU_LOAD" "$ROOT/bin/controlplane" --listen "127.0.0.1:$cp" --data-dir "$TMP/$name/data" \
		--etcd-listen "127.0.0.1:$etcd" --etcd-peer-listen "127.0.0.1:$peer" \
		--metrics-listen "127.0.0.1:$metrics" --log-level warn --insecure
	wait_http "$name-cp" "http://127.0.0.1:$metrics/readyz"
	"$ROOT/bin/gatewayctl" --server "127.0.0.1:$cp" --insecure --timeout 300s apply -f "$config" -m bench >"$TMP/$name-apply.log" 2>&1 ||
		{ echo "$0: gatewayctl apply ($name) failed:" >&2; tail -n 20 "$TMP/$name-apply.log" >&2; exit 1; }
	# Access logs off, as for every other proxy in the comparison (the
	# MERIDIAN_ACCESS_LOG variable, so ENV can turn them on).
	start "$name" "$CPU_PROXY" env MERIDIAN_ACCESS_LOG=off "$@" "$dataplane" --listen "127.0.0.1:${PORT[$name]}" \
		--controlplane "127.0.0.1:$cp" --node-id "bench-$name" --cache-dir "$TMP/$name/cache" \
		--admin-listen "127.0.0.1:${PORT[$name-admin]}" --log-level warn --insecure
}

# cpu_ticks NAME: CPU time (user + system, in clock ticks) used so far by
# every live process of NAME's process group (nginx's master and worker).
cpu_ticks() {
	local pid total=0 rest
	for pid in $(pgrep -g "${PID_OF[$1]}"); do
		# Fields after the ")" that closes the command name: utime and
		# stime are the 12th and 13th.
		rest=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		rest=${rest##*) }
		set -- $rest
		total=$((total + ${12} + ${13}))
	done
	echo "$total"
}

# to_ms VALUE: a wrk latency (123.45us, 1.20ms, 1.01s) in milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
		else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
		else { sub(/s$/, "", v); printf "%.3f", v * 1000 }
	}'
}
