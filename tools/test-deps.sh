#!/usr/bin/env bash
# What the tests need beyond Go, in one place. `make test`, `make test-short`
# and .ci/run run this first.
#
#   nothing missing: prints nothing, exits 0 (no apt-get, no network)
#   missing, root:   apt-get update && apt-get install -y the missing packages
#   missing, other:  one line on stderr naming the packages and the command
#                    that installs them, exit 2
#
# Each line of DEPS is "command debian-package...": the command the tests
# run, and the Debian packages that provide it. With --ci (.ci/run) it also
# checks what CI runs around the tests.
set -euo pipefail

# CC may carry flags ("gcc -m64"); the compiler is its first word.
read -r cc _ <<<"${CC:-gcc}"

DEPS=(
  # The rate-limit tests (dataplane and e2e) start real Redis servers.
  "redis-server redis-server"
  # The Redis Cluster tests join their nodes with redis-cli.
  "redis-cli redis-tools"
  # Checks /metrics of both programs and deploy/prometheus/*.yml.
  "promtool prometheus"
  # go test -race needs cgo, and cgo needs a C compiler (Go's default is gcc;
  # a set CC is checked instead) and the C library's headers, which gcc only
  # recommends, so they are named too.
  "$cc gcc libc6-dev"
)
if [ "${1:-}" = --ci ]; then
  DEPS+=(
    # .ci/run runs make; check-generated asks git whether proto/ changed.
    "make make"
    "git git"
  )
fi

missing=()
for dep in "${DEPS[@]}"; do
  read -r cmd pkgs <<<"$dep"
  if ! command -v "$cmd" >/dev/null 2>&1; then
    for pkg in $pkgs; do
      # No duplicates, should two commands share a package.
      [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    done
  fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$EUID" -ne 0 ]; then
  echo "missing test dependencies: ${missing[*]} (install with: sudo apt-get install -y ${missing[*]})" >&2
  exit 2
fi

echo "installing test dependencies: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
