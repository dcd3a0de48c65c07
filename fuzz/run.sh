#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and prints its executions.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 10 s, all targets)
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# nightly-only flags (-Z...). No sanitizer by default (the crate forbids
# unsafe code, so AddressSanitizer adds little but build time); set
# FUZZ_SANITIZER=address to use it. Each target starts from its committed
# seeds (corpus/<target>/seed-*) and grows a throw-away copy, so the repo's
# corpus never changes. A crash stops the script with a non-zero exit; its
# input is in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-10}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
# FUZZ_DEV=1 builds unoptimised: a much shorter build for CI's short runs.
profile=()
if [ "${FUZZ_DEV:-0}" = 1 ]; then profile=(--dev); fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz has no --locked and cargo no config key for it, so resolve the
# fuzz workspace with the lock enforced first: a stale fuzz/Cargo.lock (the
# service's dependencies changed) fails here instead of being rewritten by
# the build. Refresh it with: cargo metadata --manifest-path fuzz/Cargo.toml
echo "== fuzz/Cargo.lock is current (cargo metadata --locked)"
cargo metadata --locked --format-version 1 --manifest-path Cargo.toml >/dev/null

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== cargo fuzz build (sanitizer: $sanitizer)"
cargo fuzz build "${profile[@]}" -s "$sanitizer"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=()
status=0
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if cargo fuzz run "${profile[@]}" -s "$sanitizer" "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    tail -n 40 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  units=$(find "$work/$target" -type f | wc -l)
  summary+=("$(printf '%-16s %-6s %12s executions  %5s new corpus units' "$target" "$result" "${execs:-?}" "$units")")
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
