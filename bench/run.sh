#!/usr/bin/env bash
# The image service benchmark. See bench/README.md.
#   bench/run.sh                         full run: release build, 3 rounds x 10 s
#   bench/run.sh --quick --binary target/debug/image-service    CI proof (< 2 min;
#                                        devstack and bench-floor beside it)
# Every other argument goes to bench/run.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
floor_given=0
prev=""
for arg in "$@"; do
  case "$arg" in
    --binary=*) binary="${arg#--binary=}" ;;
    --floor|--floor=*) floor_given=1 ;;
  esac
  if [ "$prev" = "--binary" ]; then binary="$arg"; fi
  prev="$arg"
done

# Debian packages the run needs: wrk (the load), redis-server (the Redis rows).
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]} (Debian packages)" >&2
    for pkg in "${need[@]}"; do
      if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        break
      fi
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  else
    echo "bench: ${need[*]} missing; install (sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

if [ -z "$binary" ]; then
  # One build each, as shipped: built together, cargo unifies their
  # dependencies' features, and the stand-ins' HTTP/2 server put ~0.6 MB of
  # h2 code into the service's binary (and more into the floor's), which a
  # `cargo build --bin image-service` (the Dockerfile's) does not have.
  for package in image-service bench-floor devstack; do
    echo "== cargo build --release -p $package" >&2
    cargo build --release --locked -p "$package" --bin "$package" >&2
  done
elif [ "$floor_given" = 0 ]; then
  # The floor is taken from beside the service's binary: when that is one of
  # this workspace's profiles, build it there (a no-op when up to date), so a
  # stale floor is never measured.
  dir=$(cd "$(dirname "$binary")" && pwd)
  target=$(pwd)/target
  case "$dir" in
    "$target"/debug) profile=dev ;;
    "$target"/*) profile=$(basename "$dir") ;;
    *) profile="" ;;
  esac
  if [ -n "$profile" ]; then
    # --workspace: the features of a `cargo build --workspace`, so its
    # compiled dependencies are reused.
    echo "== cargo build --profile $profile --workspace --bin bench-floor" >&2
    cargo build --locked --profile "$profile" --workspace --bin bench-floor >&2
  fi
fi

exec python3 bench/run.py "$@"
