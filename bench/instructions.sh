#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind, for the service
# and the floor: health, list and get by id. See bench/README.md.
#   bench/instructions.sh                          release builds, 6 s per count
#   bench/instructions.sh --binary B --floor F     given binaries
#   bench/instructions.sh --seconds N              longer counts
# Unlike CPU time, which moves ±15 % between runs on a shared VM, the count
# repeats within about 0.5 %, so a change of a few percent shows. It leaves
# out the kernel (half or more of a request's CPU on loopback) and says
# nothing about cache misses: bench/run.sh stays the measure of speed.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="" floor="" seconds=6
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --floor) floor="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "instructions: unknown argument $1 (see the script's header)" >&2; exit 2 ;;
  esac
done

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]} (Debian packages)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }
  else
    echo "instructions: ${need[*]} missing; install (sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

target="${CARGO_TARGET_DIR:-target}"
build() { cargo build --release --locked -q -p "$1" --bin "$1" >&2; }
[ -n "$binary" ] || { build image-service; binary="$target/release/image-service"; }
[ -n "$floor" ] || { build bench-floor; floor="$target/release/bench-floor"; }
build devstack
devstack="$target/release/devstack"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 300); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "instructions: $1 never answered" >&2; exit 1; }

clerk_port=$(free_port) storage_port=$(free_port) bdd_port=$(free_port)
DEV_DATA_DIR="$work/data" DEV_CLERK_PORT=$clerk_port DEV_STORAGE_PORT=$storage_port \
  DEV_BDD_PORT=$bdd_port taskset -c 1 "$devstack" stand-ins > "$work/stand-ins.out" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$clerk_port/.well-known/jwks.json"
key=$(sed -n 's/^service_key=//p' "$work/stand-ins.out")
user=user_bench
token=$(curl -fs "http://127.0.0.1:$clerk_port/dev/token?sub=$user&ttl_secs=3600" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# The benchmark's environment (bench/run.py), logs to a file.
run_env=(env -i PATH="$PATH" HOST=127.0.0.1 CLERK_ISSUER="http://127.0.0.1:$clerk_port"
  SUPABASE_URL="http://127.0.0.1:$storage_port" SUPABASE_SERVICE_ROLE_KEY="$key"
  BDD_SERVICE_URL="http://127.0.0.1:$bdd_port" LOG_FORMAT=json LOG_LEVEL=info
  FLOOR_USER=$user)

# 50 images, created through the service as bench/run.py seeds them (the
# list reads 10 of their records, the get one).
port=$(free_port)
"${run_env[@]}" PORT=$port "$binary" > "$work/seed.log" 2>&1 &
seeder=$!
wait_for "http://127.0.0.1:$port/api/health"
python3 - "$port" "$token" <<'PY'
import base64, json, struct, sys, urllib.request, zlib
port, token = sys.argv[1], sys.argv[2]
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
raw = b"".join(b"\x00" + bytes(64 * 3) for _ in range(64))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
for i in range(50):
    body = json.dumps({"imageData": base64.b64encode(png).decode(), "prompt": f"seed {i}"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/images", body,
                                     {"Authorization": "Bearer " + token,
                                      "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 201, answer.status
PY
kill $seeder; wait $seeder 2>/dev/null || true
id=$(curl -fs "http://127.0.0.1:$bdd_port/api/images?userId=$user&page=1&limit=1" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["images"][0]["id"])')

# valgrind names its control pipe after USER and HOST as the target saw them.
control() { env -i PATH="$PATH" HOST=127.0.0.1 callgrind_control --vgdb-prefix="$work/vgdb" "$@" > /dev/null 2>&1; }

# Instructions per request of `bin` on `path`: counted after a 3 s warm-up.
count() {
  local bin=$1 path=$2 auth=() port out
  [ "$3" = auth ] && auth=(-H "Authorization: Bearer $token")
  port=$(free_port)
  out="$work/callgrind.$port"
  "${run_env[@]}" PORT=$port taskset -c 0 valgrind --tool=callgrind --vgdb-prefix="$work/vgdb" \
    --callgrind-out-file="$out" "$bin" > "$work/run.$port.log" 2>&1 &
  local vg=$!
  wait_for "http://127.0.0.1:$port/api/health"
  taskset -c 1 wrk -t1 -c8 -d3s "${auth[@]}" "http://127.0.0.1:$port$path" > /dev/null
  control -z $vg
  local n
  n=$(taskset -c 1 wrk -t1 -c8 -d"${seconds}s" "${auth[@]}" "http://127.0.0.1:$port$path" |
    awk '/requests in/ {print $1}')
  control --dump $vg
  kill $vg; wait $vg 2>/dev/null || true
  python3 - "$out.1" "$n" <<'PY'
import sys
ir = next(int(l.split()[1]) for l in open(sys.argv[1]) if l.startswith(("summary:", "totals:")))
print(f"{ir / int(sys.argv[2]):,.0f}")
PY
}

set -f # the paths hold '?'
printf '%-14s %16s %16s %8s\n' scenario "service Ir/req" "floor Ir/req" "×"
for scenario in "health /api/health -" "list /api/images?page=1&limit=10 auth" "get /api/images/$id auth"; do
  set -- $scenario
  s=$(count "$binary" "$2" "$3")
  f=$(count "$floor" "$2" "$3")
  python3 -c "import sys; s,f=(int(x.replace(',','')) for x in sys.argv[2:4]); print(f'{sys.argv[1]:<14} {s:>16,} {f:>16,} {s/f:>8.2f}')" "$1" "$s" "$f"
done
