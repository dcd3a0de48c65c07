#!/usr/bin/env bash
# Proves, without a Docker engine, that the Dockerfile's build stage copies
# everything `cargo build` reads.
#
#   scripts/docker-context-check.sh
#
# Reads the COPY lines of the stage named `build`, copies exactly those paths
# from the repo into an empty temporary folder (as Docker would into WORKDIR,
# minus what .dockerignore drops), and builds the service and the dev stack
# there with the lock enforced. A member manifest, an embedded file or a
# crate the Dockerfile forgets makes this build fail, as `docker build` would.
#
# Debug build: what is checked is the file set, not the optimiser. Compiled
# dependencies are reused from the repo's target/ (CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

die() { echo "docker-context-check: $*" >&2; exit 1; }

# Instructions of the Dockerfile, one per line: continuations joined, comments dropped.
instructions() {
  awk '
    /^[[:space:]]*#/ { next }
    { sub(/\r$/, "") }
    /\\$/ { line = line substr($0, 1, length($0) - 1) " "; next }
    { print line $0; line = "" }
  ' Dockerfile
}

stage=""
workdir="/"
sources_dests=()
while read -r keyword rest; do
  case "${keyword^^}" in
    FROM)
      # `FROM image AS name`: the stage's name is the last word.
      read -ra words <<<"$rest"
      stage=""
      if [ "${#words[@]}" -ge 3 ] && [ "${words[-2],,}" = as ]; then stage=${words[-1]}; fi
      ;;
    WORKDIR)
      [ "$stage" = build ] && workdir=$rest
      ;;
    COPY | ADD)
      read -ra words <<<"$rest"
      from=""
      args=()
      for w in "${words[@]}"; do
        case "$w" in
          --from=*) from=${w#--from=} ;;
          --*) ;; # --chown, --chmod, --link: no bearing on which files are read
          *) args+=("$w") ;;
        esac
      done
      [ -n "$from" ] && continue
      [ "${keyword^^}" = ADD ] && die "ADD from the context: use COPY (this check only replays COPY)"
      [ "$stage" = build ] || die "stage '${stage:-unnamed}' copies from the build context ($rest); only the build stage may, so that this check covers every file the image reads"
      [ "${#args[@]}" -ge 2 ] || die "cannot read: COPY $rest"
      dest=${args[-1]}
      for src in "${args[@]:0:${#args[@]}-1}"; do
        sources_dests+=("$src" "$dest" "$(( ${#args[@]} - 1 ))")
      done
      ;;
  esac
done < <(instructions)

[ "${#sources_dests[@]}" -gt 0 ] || die "no COPY line in a stage named 'build'"

# Top-level names .dockerignore keeps out of the context (its entries here are
# plain names; a pattern with wildcards is refused rather than half-understood).
ignored=()
if [ -f .dockerignore ]; then
  while read -r pattern; do
    [ -z "$pattern" ] || [ "${pattern:0:1}" = "#" ] && continue
    case "$pattern" in *[*?![]*) die ".dockerignore pattern '$pattern': wildcards are not replayed by this check" ;; esac
    ignored+=("${pattern%/}")
  done < .dockerignore
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# Maps a destination (absolute, or relative to WORKDIR) into the temporary folder.
in_context() {
  local dest=$1
  case "$dest" in
    /*) ;;
    *) dest="${workdir%/}/$dest" ;;
  esac
  case "$dest" in
    "${workdir%/}" | "${workdir%/}"/*) printf '%s%s' "$context" "${dest#"${workdir%/}"}" ;;
    *) die "COPY destination $dest is outside WORKDIR $workdir: the build would not read it" ;;
  esac
}

echo "== the build stage's COPY lines, replayed into $context"
for ((i = 0; i < ${#sources_dests[@]}; i += 3)); do
  src=${sources_dests[i]}
  dest=${sources_dests[i + 1]}
  count=${sources_dests[i + 2]}
  src=${src#./}
  for name in "${ignored[@]}"; do
    if [ "$src" = "$name" ] || [ "${src#"$name"/}" != "$src" ]; then
      die "COPY $src: .dockerignore drops it from the context"
    fi
  done
  [ -e "$repo/$src" ] || die "COPY $src: no such path in the repo"
  target=$(in_context "$dest")
  # Docker's rules: several sources, or a destination ending in /, mean "into
  # this folder"; a folder source copies its contents.
  if [ "$count" -gt 1 ] || [ "${dest: -1}" = / ]; then
    mkdir -p "$target"
    if [ -d "$repo/$src" ]; then cp -a "$repo/$src/." "$target/"; else cp -a "$repo/$src" "$target/"; fi
  else
    mkdir -p "$(dirname "$target")"
    if [ -d "$repo/$src" ]; then mkdir -p "$target" && cp -a "$repo/$src/." "$target/"; else cp -a "$repo/$src" "$target"; fi
  fi
  echo "   $src -> $dest"
done

echo "== cargo build --locked --workspace --bin image-service --bin devstack (in the copy)"
(cd "$context" && CARGO_TARGET_DIR="$repo/target" cargo build --locked --workspace --bin image-service --bin devstack)
echo "docker-context-check: the build stage copies everything the build reads"
