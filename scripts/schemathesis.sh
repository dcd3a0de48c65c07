#!/usr/bin/env bash
# API fuzzing from outside: schemathesis, from PyPI, runs
# against the dev stack, driven by the service's own /api/openapi.json.
#
#   cargo build --workspace && scripts/schemathesis.sh
#
# Starts the dev stack (`$BIN`, the devstack binary) on free loopback ports with a throw-away data folder, mints
# a token from the local Clerk, and runs every schemathesis phase (examples,
# coverage, fuzzing, stateful) with checks: no 5xx; status code, content type,
# headers and body as documented; 405 + Allow for undocumented methods; auth
# enforced; schema-invalid input rejected. Prints the number of test cases;
# exits non-zero on any failure. Needs python3 with venv, curl, and PyPI.
#
# Environment (all optional):
#   BIN                the devstack binary (default target/debug/devstack; not built here)
#   MAX_EXAMPLES       test cases per operation and phase (default 50)
#   SEED               reproduce a run
#   CHECKS             schemathesis checks (comma list)
#   SCHEMATHESIS_VENV  reuse this venv (default: a new one in a temp folder)
#   REPORT_DIR         keep the NDJSON and JUnit reports there
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
BIN=${BIN:-target/debug/devstack}
MAX_EXAMPLES=${MAX_EXAMPLES:-50}
SEED=${SEED:-}
REPORT_DIR=${REPORT_DIR:-}
CHECKS=${CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,unsupported_method,allow_header_conformance,ignored_auth,negative_data_rejection,missing_required_header}

[ -x "$BIN" ] || { echo "schemathesis.sh: $BIN not found: run 'cargo build --workspace' first (or set BIN)" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
report_dir=${REPORT_DIR:-$work/report}
trap 'exit 130' INT TERM

# --- schemathesis in a venv of its own
venv=${SCHEMATHESIS_VENV:-$work/venv}
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv" || { echo "schemathesis.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 2; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- four free loopback ports (bound then released: a race is possible but unlikely)
read -r PORT CLERK_PORT STORAGE_PORT BDD_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
)
base="http://127.0.0.1:$PORT"

# --- the dev stack: the service and its local Clerk, Storage and BDD
echo "== starting $BIN on $base"
PORT=$PORT DEV_CLERK_PORT=$CLERK_PORT DEV_STORAGE_PORT=$STORAGE_PORT DEV_BDD_PORT=$BDD_PORT \
  DEV_DATA_DIR="$work/devstack" LOG_LEVEL=warn LOG_FORMAT=json RATE_LIMIT_PER_MINUTE=0 \
  "$BIN" >"$work/service.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  curl -fsS -o /dev/null "$base/api/health" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "the service exited:" >&2; cat "$work/service.log" >&2; exit 1; }
  sleep 0.2
done
curl -fsS -o /dev/null "$base/api/health" || { echo "the service never became healthy" >&2; cat "$work/service.log" >&2; exit 1; }

token=$(curl -fsS "http://127.0.0.1:$CLERK_PORT/dev/token?sub=user_st" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

# --- the run
echo "== schemathesis $SCHEMATHESIS_VERSION against $base/api/openapi.json (max $MAX_EXAMPLES examples per operation)"
started=$(date +%s)
status=0
"$venv/bin/schemathesis" run "$base/api/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "$CHECKS" \
  --max-examples "$MAX_EXAMPLES" \
  ${SEED:+--seed "$SEED"} \
  --workers 1 \
  --request-timeout 15 \
  --report ndjson,junit --report-dir "$report_dir" \
  --no-color \
  || status=$?
elapsed=$(( $(date +%s) - started ))

# The number of test cases, from the run's event stream.
cases=$(python3 - "$report_dir" <<'PY'
import glob, json, sys
n = 0
for path in glob.glob(sys.argv[1] + "/*.ndjson"):
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            for kind, body in event.items():
                if kind == "ScenarioFinished":
                    n += len(body.get("recorder", {}).get("cases", {}))
print(n)
PY
)
echo "schemathesis: $cases test cases in ${elapsed}s, exit status $status"
if [ "$status" -ne 0 ]; then
  echo "== service log (warnings and errors)"
  tail -n 50 "$work/service.log"
fi
exit "$status"
