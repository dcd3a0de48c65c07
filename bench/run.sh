#!/usr/bin/env bash
# The image service benchmark. See bench/README.md.
#   bench/run.sh                         full run: release build, 3 rounds x 10 s
#   bench/run.sh --quick --binary target/debug/image-service    CI proof (< 1 min; devstack beside it)
# Every other argument goes to bench/run.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

binary_given=0
for arg in "$@"; do
  case "$arg" in --binary|--binary=*) binary_given=1 ;; esac
done

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing wrk (Debian package)" >&2
    if ! apt-cache policy wrk 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
  else
    echo "bench: wrk is missing; install it (sudo apt-get install -y wrk)" >&2
    exit 1
  fi
fi

if [ "$binary_given" = 0 ]; then
  echo "== cargo build --release (image-service, devstack)" >&2
  cargo build --release --locked --bin image-service --bin devstack >&2
fi

exec python3 bench/run.py "$@"
