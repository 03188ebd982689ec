#!/usr/bin/env bash
# Runs a whole Meridian on this machine, in the foreground: a control plane
# with embedded etcd, one data plane, and two demo echo upstreams. On the
# first start (an empty store) it applies examples/quickstart.yaml; after
# that it keeps what is stored, so edits made with gatewayctl survive a
# restart. It prints what to try next. Ctrl-C stops it all.
#
# Ports: control plane 7400 (gRPC), 7401 (health); etcd 2379/2380;
# data plane 8080 (traffic), 9901 (admin); echo upstreams 9001, 9002.
# State lives in .run/ (delete it to start from scratch, quickstart included).
#
# Extra flags, split on spaces (no quoting), are added after the script's own,
# so they win where a flag is given twice:
#   DP_FLAGS   for the data plane:    make run DP_FLAGS="--redis 127.0.0.1:6379"
#   CP_FLAGS   for the control plane: make run CP_FLAGS="--audit-retention 1h"
# The programs inherit this script's environment, so secrets a configuration
# reads from it reach the data plane (JWT_SECRET=... make run), as do the
# data plane's MERIDIAN_<FLAG> variables (MERIDIAN_LOG_LEVEL=debug make run).
# make passes both command-line variables and the environment on to here.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=bin
RUN=.run
mkdir -p "$RUN"
read -r -a dp_flags <<<"${DP_FLAGS:-}"
read -r -a cp_flags <<<"${CP_FLAGS:-}"

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
  exit 0
}
trap stop_all INT TERM EXIT

# wait_for LOGFILE PATTERN: until a process logs that it is ready.
wait_for() {
  for _ in $(seq 1 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2'; see $1" >&2
  cat "$1" >&2
  return 1
}

"$BIN/echo" --listen 127.0.0.1:9001 --name echo-1 >"$RUN/echo-1.log" 2>&1 & pids+=($!)
"$BIN/echo" --listen 127.0.0.1:9002 --name echo-2 >"$RUN/echo-2.log" 2>&1 & pids+=($!)
# Secure by default, as in production: the control plane makes its CA, an
# admin token and a gatewayctl config in its data dir on first start; the
# data plane enrols with a one-use join token (and keeps its certificate in
# its cache dir, so a second run needs none).
"$BIN/controlplane" --listen 127.0.0.1:7400 --data-dir "$RUN/controlplane" "${cp_flags[@]}" \
  >"$RUN/controlplane.log" 2>&1 & pids+=($!)
wait_for "$RUN/controlplane.log" "controlplane listening"
export MERIDIAN_CONFIG="$PWD/$RUN/controlplane/gatewayctl.yaml"
token=$("$BIN/gatewayctl" tokens create --uses 1 --ttl 10m | head -n 1)
MERIDIAN_JOIN_TOKEN="$token" "$BIN/dataplane" --listen 127.0.0.1:8080 --controlplane 127.0.0.1:7400 --node-id local-1 \
  --cache-dir "$RUN/dataplane-cache" --admin-listen 127.0.0.1:9901 "${dp_flags[@]}" \
  >"$RUN/dataplane.log" 2>&1 & pids+=($!)
wait_for "$RUN/dataplane.log" "dataplane listening"

# The quickstart only goes into an empty store: re-applying it on every
# start would undo the user's edits. Empty means no version in the history
# (so deleting every resource is an edit that is kept too). This reads the
# table, which has a header line and one row per version, rather than -o
# json, whose shape may change; a store that cannot be read stops the script.
history=$("$BIN/gatewayctl" -o table history --limit 1)
if [ "$(wc -l <<<"$history")" -le 1 ]; then
  "$BIN/gatewayctl" apply -f examples/quickstart.yaml -m "quickstart"
  echo "applied examples/quickstart.yaml to the empty store"
else
  echo "kept the stored configuration (bin/gatewayctl history; delete $RUN/ to start again from the quickstart)"
fi
for _ in $(seq 1 50); do
  curl -fs localhost:9901/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

Meridian is running (logs in $RUN/). gatewayctl finds the control plane, its CA
and the admin token through MERIDIAN_CONFIG; in another shell, first run:

  export MERIDIAN_CONFIG=$MERIDIAN_CONFIG

Then try:

  curl -s localhost:8080/api/hello          # proxied to an echo upstream as /hello
  curl -s localhost:9901/config             # the data plane's applied version and hash
  bin/gatewayctl get                        # what the control plane stores
  bin/gatewayctl dataplanes                 # the fleet: SYNCED at the current version
  bin/gatewayctl history                    # every version, for rollback
  bin/gatewayctl audit                      # who changed what, and what was refused
  bin/gatewayctl diff -f examples/quickstart.yaml

Press Ctrl-C to stop everything.
MSG

# Returns when any process exits (or on Ctrl-C, through the trap).
wait -n "${pids[@]}" || true
echo "a process exited unexpectedly; see $RUN/*.log" >&2
exit 1
