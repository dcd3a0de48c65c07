#!/usr/bin/env python3
"""Benchmark of the image service, Python 3.11 stdlib only.

Starts the local Clerk/Storage/BDD stand-ins (`devstack stand-ins`), a
Redis, the service and the floor service (`bench-floor`: the same upstream
calls, nothing else), the service and the floor pinned to one CPU, the rest to
the other; seeds 50 images, then drives each scenario with wrk, against the
service then against the floor, round after round, and reads their cost from
/proc. See bench/README.md for what every figure means.

    bench/run.sh                     # full run: 3 rounds x 10 s, release build
    bench/run.sh --quick --binary target/debug/image-service   # CI proof
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
MIB = 1024 * 1024
USER = "user_bench"
SEED_IMAGES = 50
CREATE_CONNECTIONS = 8
# High enough never to refuse: the rows measure what counting costs.
RATE_LIMIT = 100_000_000
REPLAY_KEY = "bench-replay-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The service's performance targets (medians) and the Node service's
# numbers, measured with the same scenarios.
TARGETS = {
    "health": {"cpu_us": 10, "p99_ms": 2, "peak_rss_mib": 12},
    "list": {"cpu_us": 40, "p99_ms": 5, "peak_rss_mib": 16},
    "get": {"cpu_us": 40, "p99_ms": 5, "peak_rss_mib": 16},
    "create": {"cpu_us": 1000, "p99_ms": 15, "peak_rss_mib": 48},
    # One upload slot per connection (MAX_UPLOADS_IN_FLIGHT=100): creates
    # stream, so memory must not grow with the image size.
    "create_big": {"cpu_us": None, "p99_ms": None, "peak_rss_mib": 64,
                   "statuses": "every answer a 201"},
}
NODE = {
    "health": {"rps": 4300, "cpu_us": 230, "p99_ms": 20, "peak_rss_mib": 170},
    "list": {"rps": 1220, "cpu_us": 830, "p99_ms": 58, "peak_rss_mib": 186},
    "get": {"rps": 1340, "cpu_us": 730, "p99_ms": 53, "peak_rss_mib": 195},
    "create": {"rps": 111, "cpu_us": 9000, "p99_ms": 116, "peak_rss_mib": 321},
}


class HarnessError(Exception):
    """The benchmark itself failed (not a slow service)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc

def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise HarnessError(f"{key} missing from /proc/{pid}/status")


def wait_idle(pids: list[int], quiet: float = 0.3, limit: float = 60.0) -> float:
    """Waits until none of `pids` used CPU for `quiet` seconds (at most
    `limit`): what a cut-off run left in flight (uploads of the warm-up, say)
    has finished. The seconds waited."""
    t0 = time.monotonic()
    last = [cpu_ticks(p) for p in pids]
    still = time.monotonic()
    while time.monotonic() - t0 < limit:
        time.sleep(0.1)
        now = [cpu_ticks(p) for p in pids]
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet:
            break
    return time.monotonic() - t0


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- images

def png(size: int) -> bytes:
    """`size` bytes starting with a real PNG (1x1), padded with incompressible bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    head = (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", (1).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00")
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))
    if size < len(head):
        raise ValueError("image too small")
    return head + random.Random(size).randbytes(size - len(head))


def create_body(image: bytes, prompt: str = "benchmark image") -> bytes:
    return json.dumps({
        "prompt": prompt,
        "imageData": base64.b64encode(image).decode(),
        "metadata": {"source": "bench"},
    }).encode()


TAIL_CHUNK = 64 * 1024
TAIL_PACE_S = 0.005


def create_tail_ms(base: str, body: bytes, bearer: str) -> tuple[int, float]:
    """One create sent at a network's pace (64 KiB every 5 ms, so the server
    reads each piece as it arrives): its status, and the milliseconds from the
    last body byte sent to the first byte of the answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall((f"POST /api/images HTTP/1.1\r\nHost: {host}\r\nAuthorization: {bearer}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode())
        for at in range(0, len(body), TAIL_CHUNK):
            time.sleep(TAIL_PACE_S)
            s.sendall(body[at:at + TAIL_CHUNK])
        sent = time.perf_counter()
        first = s.recv(64)
        tail = (time.perf_counter() - sent) * 1000
        answer = first
        while chunk := s.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, tail


# ---------------------------------------------------------------- processes

def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, bytes, dict]:
    """Status, body and headers (lower-case names) of one request."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def stop(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class StandIns:
    binary: Path
    cpu: str
    work: Path
    ports: list[int]
    proc: subprocess.Popen | None = None
    urls: dict = field(default_factory=dict)
    starts: int = 0

    @property
    def data(self) -> Path:
        return self.work / "data"

    def start(self) -> None:
        self.starts += 1
        out = self.work / f"stand-ins.{self.starts}.out"
        err = self.work / "stand-ins.err"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DEV_CLERK_PORT": str(self.ports[0]),
            "DEV_STORAGE_PORT": str(self.ports[1]),
            "DEV_BDD_PORT": str(self.ports[2]),
            "DEV_DATA_DIR": str(self.data),
            "RUST_LOG": "warn",
        }
        with open(out, "wb") as o, open(err, "ab") as e:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cpu, str(self.binary), "stand-ins"],
                stdout=o, stderr=e, env=env, cwd=self.work, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"stand-ins exited ({self.proc.returncode}):\n{tail(err)}")
            lines = dict(l.split("=", 1) for l in out.read_text().splitlines() if "=" in l)
            if "data_dir" in lines:
                self.urls = lines
                return
            time.sleep(0.05)
        raise HarnessError(f"stand-ins did not print their addresses in 30 s:\n{tail(err)}")

    def restart(self, seed_bdd: Path | None) -> None:
        """Fresh stand-ins on the same ports and key: Storage emptied, BDD back to the seed."""
        stop(self.proc)
        shutil.rmtree(self.data / "storage", ignore_errors=True)
        if seed_bdd is not None:
            shutil.copyfile(seed_bdd, self.data / "bdd.json")
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # taskset execs the binary: same PID


@dataclass
class Redis:
    """A throw-away redis-server: no persistence, loopback only, a free port."""
    cpu: str
    work: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise HarnessError("redis-server not found (apt-get install -y redis-server, "
                               "or use bench/run.sh)")
        log_path = self.work / "redis.log"
        cmd = ["taskset", "-c", self.cpu, binary, "--port", str(self.port),
               "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", str(self.work), "--logfile", str(log_path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.work, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"redis-server exited ({self.proc.returncode}):\n{tail(log_path)}")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise HarnessError(f"redis-server did not answer PING in 10 s:\n{tail(log_path)}")

    def command(self, *words: str) -> bytes:
        """One command, its first answer line (enough for PING and FLUSHALL)."""
        req = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(req.encode())
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        return buf.strip()

    def flush(self) -> None:
        if self.command("FLUSHALL") != b"+OK":
            raise HarnessError("redis FLUSHALL failed")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Server:
    """The service or the floor: one process on CPU `cpu`, restarted at will."""
    name: str
    binary: Path
    cpu: str
    work: Path
    port: int
    proc: subprocess.Popen | None = None
    config: str | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, env: dict, config: str | None = None) -> None:
        stop(self.proc)
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOST": "127.0.0.1",
                "PORT": str(self.port)}
        full.update(env)
        with open(self.log_path, "ab") as f:
            # cwd = the temp dir, so no stray ./.env is read.
            self.proc = subprocess.Popen(["taskset", "-c", self.cpu, str(self.binary)],
                                         stdout=f, stderr=f, env=full, cwd=self.work,
                                         start_new_session=True)
        self.config = config
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited ({self.proc.returncode}):\n"
                                   f"{tail(self.log_path)}")
            try:
                if http("GET", self.base + "/api/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        stop(self.proc)
        raise HarnessError(f"{self.name} did not answer /api/health in 30 s:\n{tail(self.log_path)}")

    def check_alive(self, during: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError(f"{self.name} died during {during}:\n{tail(self.log_path)}")


# ---------------------------------------------------------------- scenarios

@dataclass
class Scenario:
    """One request mix, run against the service, then the floor, each round."""
    key: str
    label: str            # table row
    short: str            # chart group
    script: str
    connections: int
    env: dict             # for the wrk script
    kind: str | None = None       # TARGETS / NODE key
    config: str = "base"          # the service's configuration (configs())
    standin: str | None = None    # the stand-in floor it is shown beside
    tally: bool = False
    timeout_s: int = 10
    upstream: bool = True         # needs fresh stand-ins
    prime_replay: bool = False    # one create with REPLAY_KEY before the service's run
    seconds: float | None = None  # measured seconds, when not --duration
    aftermath: bool = False       # leaves the machine disturbed: absorbed before the next run


@dataclass
class StandinFloor:
    """The request the service ends with, sent straight to the stand-in."""
    key: str
    label: str
    script: str
    connections: int
    url: str
    env: dict
    tally: bool = False
    timeout_s: int = 10


def configs(args, redis_url: str) -> dict[str, dict]:
    """The service's environment per configuration, on top of the common one."""
    base = {"MAX_UPLOADS_PER_USER": str(CREATE_CONNECTIONS)}
    rate = {"RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT)}
    return {
        "base": base,
        "rate_limit": {**base, **rate},
        "redis_rate_limit": {**base, **rate, "REDIS_URL": redis_url},
        "redis": {**base, "REDIS_URL": redis_url},
        "big": {"MAX_UPLOADS_IN_FLIGHT": str(args.big_connections),
                "MAX_UPLOADS_PER_USER": str(args.big_connections)},
    }


# ---------------------------------------------------------------- wrk

WRK_CPU = "1"


def run_wrk(script: str, connections: int, url: str, env_extra: dict, tally: bool,
            timeout_s: int, seconds: float, work: Path, tag: str, what: str) -> tuple[dict, str]:
    env = dict(os.environ)
    env.update(env_extra)
    env["BENCH_LUA_DIR"] = str(LUA_DIR)
    env["BENCH_TALLY"] = "1" if tally else "0"
    env["BENCH_RUN_TAG"] = tag
    # wrk takes whole seconds; a fractional duration is cut short with SIGINT,
    # on which wrk stops and reports as usual.
    whole = max(1, math.ceil(seconds))
    cmd = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{whole}s",
           f"--timeout={timeout_s}s", "--latency", "-s", str(LUA_DIR / script), url]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=work)
    try:
        if whole != seconds:
            try:
                p.wait(seconds)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=whole + timeout_s + 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise HarnessError(f"wrk failed ({p.returncode}) on {what}: {err.strip()}\n{out}")
    m = re.search(r"^BENCH_JSON (.*)$", out, re.M)
    if not m:
        raise HarnessError(f"wrk gave no BENCH_JSON line on {what}:\n{out}\n{err}")
    return json.loads(m.group(1)), out


@dataclass
class Ctx:
    """What every measurement needs."""
    args: argparse.Namespace
    work: Path
    stand: StandIns
    seed_bdd: Path
    redis: Redis | None


def absorb_aftermath(ctx: Ctx, url: str, bearer: str, rnd: int) -> None:
    """Unrecorded list load on fresh stand-ins after the flood. Whichever
    server ran the first upstream scenario after the flood (gigabytes written,
    then deleted) had its p99 doubled, service or floor alike, however long
    the machine idled first (20 s tried), while 12 s of load before it
    cleared it: the disturbance is absorbed by load, so it gets load here."""
    ctx.stand.restart(ctx.seed_bdd)
    os.sync()
    run_wrk("get.lua", 32, url, list_env(ctx.work, bearer), False, 10, 1.0 if ctx.args.quick else 10.0, ctx.work,
            f"r{rnd}s-aftermath", "aftermath")


def measure(ctx: Ctx, what: str, script: str, connections: int, url: str, env: dict,
            tally: bool, timeout_s: int, upstream: bool, pid: int | None, rnd: int,
            uses_redis: bool = False, before_run=None, seconds: float | None = None) -> dict:
    """One warm-up and one measured wrk run; `pid` is the process under test
    (None for a stand-in floor)."""
    args = ctx.args
    if upstream:
        ctx.stand.restart(ctx.seed_bdd)
    if uses_redis and ctx.redis:
        ctx.redis.flush()
    if before_run:
        before_run()
    pids = {"stand_ins": ctx.stand.pid}
    if pid is not None:
        pids["target"] = pid
    if uses_redis and ctx.redis:
        pids["redis"] = ctx.redis.pid
    if args.warmup > 0:
        run_wrk(script, connections, url, env, tally, timeout_s, args.warmup, ctx.work,
                f"r{rnd}w-{what}", what)
        # The warm-up is cut off: requests still in flight in the server (and
        # the upload slots they hold) must be done before the measured run.
        wait_idle(list(pids.values()))
    # What earlier runs wrote (the flood's gigabyte in Storage, a health
    # run's log lines) is written back now rather than during this run.
    os.sync()
    for p in pids.values():
        reset_peak(p)
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    t0 = time.monotonic()
    w, text = run_wrk(script, connections, url, env, tally, timeout_s, seconds or args.duration,
                      ctx.work, f"r{rnd}m-{what}", what)
    wall = time.monotonic() - t0
    after = {k: cpu_ticks(p) for k, p in pids.items()}
    peak = status_kib(pid, "VmHWM") if pid is not None else None
    wait_idle(list(pids.values()))
    time.sleep(args.settle)

    n = w["requests"]
    if n == 0:
        raise HarnessError(f"{what}: zero requests completed\n{text}")
    us_per_tick = 1e6 / CLK_TCK
    lat = w["latency_us"]
    r = {
        "requests": n,
        "rps": n / (w["duration_us"] / 1e6),
        "p50_ms": lat["p50"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "max_ms": lat["max"] / 1000,
        "non_2xx": w["errors"]["status"],
        "socket_errors": {k: v for k, v in w["errors"].items() if k != "status"},
        "upstream_cpu_us_per_req": (after["stand_ins"] - before["stand_ins"]) * us_per_tick / n,
        "wall_s": wall,
    }
    if "redis" in pids:
        r["redis_cpu_us_per_req"] = (after["redis"] - before["redis"]) * us_per_tick / n
    if tally:
        r["statuses"] = dict(sorted(w["tally"].items()))
    if pid is not None:
        r["cpu_us_per_req"] = (after["target"] - before["target"]) * us_per_tick / n
        r["cpu_s"] = (after["target"] - before["target"]) / CLK_TCK
        r["peak_rss_mib"] = peak / 1024
        r["idle_rss_after_mib"] = status_kib(pid, "VmRSS") / 1024
    return r


def progress(rnd: int, rounds: int, label: str, r: dict) -> None:
    extra = ""
    if "cpu_us_per_req" in r:
        extra = f" cpu {r['cpu_us_per_req']:.1f} µs/req peak {r['peak_rss_mib']:.1f} MiB"
    if "redis_cpu_us_per_req" in r:
        extra += f" redis {r['redis_cpu_us_per_req']:.1f} µs/req"
    st = f" statuses {r['statuses']}" if "statuses" in r else ""
    log(f"round {rnd}/{rounds} {label:44s} {r['rps']:9.1f} req/s p50 {r['p50_ms']:.2f} ms "
        f"p99 {r['p99_ms']:.2f} ms non-2xx {r['non_2xx']}{extra}{st}")


# ---------------------------------------------------------------- results

NUMERIC = ["rps", "p50_ms", "p99_ms", "p999_ms", "max_ms", "non_2xx", "cpu_us_per_req",
           "peak_rss_mib", "idle_rss_after_mib", "upstream_cpu_us_per_req",
           "redis_cpu_us_per_req", "requests"]


def median_of(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def medians(rounds: list[dict]) -> dict:
    med = {}
    for k in NUMERIC:
        v = median_of([r.get(k) for r in rounds])
        if v is not None:
            med[k] = v
    if any("statuses" in r for r in rounds):
        total: dict[str, int] = {}
        for r in rounds:
            for s, c in r.get("statuses", {}).items():
                total[s] = total.get(s, 0) + c
        med["statuses_all_rounds"] = dict(sorted(total.items()))
    errs: dict[str, int] = {}
    for r in rounds:
        for k, v in r["socket_errors"].items():
            errs[k] = errs.get(k, 0) + v
    med["socket_errors_all_rounds"] = errs
    return med


def ratio(a, b):
    return a / b if a is not None and b else None


def diff(a, b):
    return a - b if a is not None and b is not None else None


def vs_floor(svc_rounds: list[dict], floor_rounds: list[dict]) -> dict:
    """Service against floor, round by round (the two ran back to back), then
    the median over rounds."""
    per = [{"cpu_ratio": ratio(s.get("cpu_us_per_req"), f.get("cpu_us_per_req")),
            "p99_ratio": ratio(s["p99_ms"], f["p99_ms"]),
            "peak_rss_diff_mib": diff(s.get("peak_rss_mib"), f.get("peak_rss_mib"))}
           for s, f in zip(svc_rounds, floor_rounds)]
    out = {k: median_of([p[k] for p in per]) for k in ("cpu_ratio", "p99_ratio",
                                                       "peak_rss_diff_mib")}
    out["rounds"] = per
    return out


# What a feature adds: (label, row, the row it is compared with).
ADDS = [
    ("Idempotency-Key, in process", "create_keyed", "create"),
    ("Idempotency-Key, Redis", "create_keyed_redis", "create"),
    ("  of which Redis over in process", "create_keyed_redis", "create_keyed"),
    ("a replay instead of a create, in process", "replay", "create"),
    ("a replay instead of a create, Redis", "replay_redis", "create"),
    ("rate limit, in process", "list_rl", "list"),
    ("rate limit, Redis", "list_rl_redis", "list"),
    ("  of which Redis over in process", "list_rl_redis", "list_rl"),
]


def adds(scenarios: dict) -> list[dict]:
    """Service CPU µs/req and p99 of a row minus those of the row it adds to,
    round by round (same round: similar machine load), median over rounds."""
    out = []
    for label, row, over in ADDS:
        if row not in scenarios or over not in scenarios:
            continue
        a, b = scenarios[row]["service"]["rounds"], scenarios[over]["service"]["rounds"]
        cpu = [diff(x.get("cpu_us_per_req"), y.get("cpu_us_per_req")) for x, y in zip(a, b)]
        p99 = [diff(x["p99_ms"], y["p99_ms"]) for x, y in zip(a, b)]
        out.append({"label": label, "row": row, "over": over,
                    "cpu_us": median_of(cpu), "p99_ms": median_of(p99),
                    "cpu_us_rounds": cpu, "p99_ms_rounds": p99})
    return out


def fmt(v, nd=1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def fmt_ratio(v) -> str:
    return "–" if v is None else f"×{v:.2f}" if v < 10 else f"×{v:.1f}"


def fmt_signed(v, nd=1) -> str:
    return "–" if v is None else f"{v:+.{nd}f}"


def render_rows(rows: list[tuple]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


# Rows in the table and groups in the chart: related rows side by side (the
# runs themselves go in build_plan's order, grouped by configuration).
DISPLAY = ["health", "list", "list_rl", "list_rl_redis", "get", "create", "create_keyed",
           "create_keyed_redis", "replay", "replay_redis", "create_big"]


def ordered(scenarios: dict) -> dict:
    keys = [k for k in DISPLAY if k in scenarios] + [k for k in scenarios if k not in DISPLAY]
    return {k: scenarios[k] for k in keys}


def table(result: dict) -> str:
    sc = ordered(result["scenarios"])
    stf = result["standin_floors"]
    out = ["service / floor (medians over rounds; × = median of the per-round ratios; "
           "Δ = service − floor)"]
    rows = [("scenario", "conn", "CPU µs svc", "floor", "CPU ×", "p99 ms svc", "floor",
             "p99 ×", "RSS MiB svc", "floor", "RSS Δ", "stand-in p99", "stand-in CPU",
             "req/s svc", "floor", "non-2xx svc/floor", "target CPU/p99/RSS")]
    for key, s in sc.items():
        m, f, v = s["service"]["median"], s["floor"]["median"], s["vs_floor"]
        st = stf.get(s["standin"] or "", {}).get("median", {})
        t = TARGETS.get(s["kind"] or "", {})
        tgt = "" if not t else "/".join(
            "–" if t.get(x) is None else fmt(t[x]) for x in ("cpu_us", "p99_ms", "peak_rss_mib"))
        rows.append((s["label"], str(s["connections"]),
                     fmt(m.get("cpu_us_per_req")), fmt(f.get("cpu_us_per_req")),
                     fmt_ratio(v["cpu_ratio"]),
                     fmt(m.get("p99_ms"), 2), fmt(f.get("p99_ms"), 2), fmt_ratio(v["p99_ratio"]),
                     fmt(m.get("peak_rss_mib")), fmt(f.get("peak_rss_mib")),
                     fmt_signed(v["peak_rss_diff_mib"]),
                     fmt(st.get("p99_ms"), 2), fmt(st.get("upstream_cpu_us_per_req")),
                     fmt(m.get("rps")), fmt(f.get("rps")),
                     f"{fmt(m.get('non_2xx'), 0)}/{fmt(f.get('non_2xx'), 0)}", tgt))
    out += render_rows(rows)

    out += ["", "every run (medians over rounds): the service, the floor, the stand-in floors"]
    rows = [("run", "conn", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB",
             "idle RSS MiB", "non-2xx", "upstream CPU µs/req", "redis CPU µs/req")]

    def run_row(label, conn, m):
        return (label, str(conn), fmt(m.get("rps")), fmt(m.get("p50_ms"), 2),
                fmt(m.get("p99_ms"), 2), fmt(m.get("cpu_us_per_req")),
                fmt(m.get("peak_rss_mib")), fmt(m.get("idle_rss_after_mib")),
                fmt(m.get("non_2xx"), 0), fmt(m.get("upstream_cpu_us_per_req")),
                fmt(m.get("redis_cpu_us_per_req")))
    shown = set()
    for key, s in sc.items():
        rows.append(run_row(s["label"] + " · service", s["connections"], s["service"]["median"]))
        rows.append(run_row(s["label"] + " · floor", s["connections"], s["floor"]["median"]))
        k = s["standin"]
        if k and k in stf and k not in shown:
            shown.add(k)
            rows.append(run_row(stf[k]["label"], stf[k]["connections"], stf[k]["median"]))
    out += render_rows(rows)

    if result.get("adds"):
        out += ["", "what each adds to the service (median over rounds of the per-round "
                "difference)"]
        rows = [("feature", "row", "over", "CPU µs/req", "p99 ms")]
        for a in result["adds"]:
            rows.append((a["label"], a["row"], a["over"], fmt_signed(a["cpu_us"]),
                         fmt_signed(a["p99_ms"], 2)))
        out += render_rows(rows)

    out.append("")
    for key, s in sc.items():
        for who in ("service", "floor"):
            med = s[who]["median"]
            st = med.get("statuses_all_rounds")
            if st:
                ok = st.get("201", 0) + st.get("201-replayed", 0)
                out.append(f"{s['label']} · {who}: statuses over all rounds {st} "
                           f"(201: {ok}, other: {sum(st.values()) - ok})")
            errs = {k: v for k, v in med["socket_errors_all_rounds"].items() if v}
            if errs:
                out.append(f"{s['label']} · {who}: wrk socket errors over all rounds {errs}")
    for key, s in stf.items():
        st = s["median"].get("statuses_all_rounds")
        if st:
            out.append(f"{s['label']}: statuses over all rounds {st}")
    idle = result["idle_rss_startup_mib"]
    out.append(f"idle RSS after start-up (median of rounds): service {fmt(idle['service'])} MiB, "
               f"floor {fmt(idle['floor'])} MiB; service after seeding: "
               f"{fmt(result['idle_rss_after_seed_mib'])} MiB")
    if result.get("create_tail_ms"):
        out.append(tail_line(result["create_tail_ms"]))
    out.append("service configurations: " + "; ".join(
        f"{k}: {' '.join(f'{a}={b}' for a, b in v.items()) or '(defaults)'}"
        for k, v in result["configs"].items()))
    return "\n".join(out)


def tail_line(t: dict) -> str:
    """The create's tail, service against floor, in one sentence."""
    svc, flo = t["service"]["median"], t["floor"]["median"]
    return (f"create 1 MiB sent at 64 KiB per 5 ms, last body byte to answer (median of "
            f"{len(t['service']['runs'])}): service {fmt(svc, 2)} ms, floor {fmt(flo, 2)} ms "
            f"(× {fmt(ratio(svc, flo), 2)})")


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


SVC_COLOR, FLOOR_COLOR, STANDIN_COLOR = "#3b6fb6", "#59a14f", "#b9c4d0"


def svg_chart(result: dict) -> str:
    """Three log-scale panels, one above the other (CPU µs/request, p99, peak
    RSS); per scenario three bars: the service, the floor service, the stand-in."""
    sc = ordered(result["scenarios"])
    stf = result["standin_floors"]
    groups = list(sc)
    # (metric, stand-in metric, TARGETS key, NODE key, title, vs_floor key, how shown)
    panels = [("cpu_us_per_req", "upstream_cpu_us_per_req", "cpu_us", "cpu_us",
               "CPU µs per request of the process under test (stand-in: the stand-ins' own)",
               "cpu_ratio", "ratio"),
              ("p99_ms", "p99_ms", "p99_ms", "p99_ms", "p99 latency, ms", "p99_ratio", "ratio"),
              ("peak_rss_mib", None, "peak_rss_mib", "peak_rss_mib",
               "peak RSS (VmHWM), MiB (no stand-in bar)", "peak_rss_diff_mib", "diff")]
    gw = 108
    left, top0, ph, pgap = 60, 100, 230, 95
    pw = gw * len(groups)
    W = left + pw + 30
    notes = result.get("chart_notes", [])
    H = top0 + len(panels) * (ph + pgap) + 14 * len(notes) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="15" font-weight="bold">{esc(result["title"])}</text>',
           f'<text x="{left}" y="38" fill="#555">{esc(result["subtitle"])}</text>']
    lx = left
    for color, text, shape in [(SVC_COLOR, "image-service", "bar"),
                               (FLOOR_COLOR, "floor service (bench-floor: same upstream calls, "
                                "no checks)", "bar"),
                               (STANDIN_COLOR, "stand-in floor: the upstream request alone", "bar"),
                               ("#d62728", "target", "line"), ("#ff7f0e", "Node service", "dot")]:
        if shape == "bar":
            out.append(f'<rect x="{lx}" y="52" width="12" height="10" fill="{color}"/>')
        elif shape == "line":
            out.append(f'<line x1="{lx}" y1="57" x2="{lx + 14}" y2="57" stroke="{color}" '
                       f'stroke-width="2" stroke-dasharray="4,2"/>')
        else:
            out.append(f'<path d="M{lx + 6},51 l5,6 l-5,6 l-5,-6 z" fill="{color}"/>')
        out.append(f'<text x="{lx + 17}" y="61">{esc(text)}</text>')
        lx += 30 + 6.2 * len(text)
    out.append(f'<text x="{left}" y="80" fill="#555">Under each group: service ÷ floor '
               f'(median of the per-round ratios; for RSS: service − floor, MiB).</text>')

    for pi, (key, st_key, tkey, nkey, title, vkey, how) in enumerate(panels):
        top = top0 + pi * (ph + pgap) + 20
        vals = []
        for g in groups:
            s = sc[g]
            vals += [s["service"]["median"].get(key), s["floor"]["median"].get(key)]
            if st_key and s["standin"] in stf:
                vals.append(stf[s["standin"]]["median"].get(st_key))
            if s["kind"]:
                vals.append(TARGETS.get(s["kind"], {}).get(tkey))
                vals.append(NODE.get(s["kind"], {}).get(nkey))
        vals = [v for v in vals if v]
        if not vals:
            vals = [1.0]
        lo = 10 ** math.floor(math.log10(max(min(vals) * 0.7, 1e-3)))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.5))
        if hi <= lo:
            hi = lo * 10

        def y(v: float) -> float:
            v = max(v, lo)
            return top + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
        out.append(f'<text x="{left}" y="{top - 6}" font-weight="bold">{esc(title)} (log scale)</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        d = lo
        while d <= hi * 1.0001:
            yy = y(d)
            out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
            tick = f"{d:,.0f}" if d >= 1 else f"{d:g}"
            out.append(f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end" fill="#555">{tick}</text>')
            d *= 10
        for gi, g in enumerate(groups):
            s = sc[g]
            gx = left + gi * gw
            bw = gw * 0.22
            bars = [(s["service"]["median"].get(key), SVC_COLOR, "#000"),
                    (s["floor"]["median"].get(key), FLOOR_COLOR, "#2d5a27")]
            if st_key:
                sv = stf[s["standin"]]["median"].get(st_key) if s["standin"] in stf else None
                bars.append((sv, STANDIN_COLOR, "#555"))
            prev_ly = None
            for bi, (v, color, tcolor) in enumerate(bars):
                bx = gx + gw * 0.1 + bi * (bw + 2)
                if not v:
                    continue
                out.append(f'<rect x="{bx:.1f}" y="{y(v):.1f}" width="{bw:.1f}" '
                           f'height="{top + ph - y(v):.1f}" fill="{color}"/>')
                # Values wider than their bar: lift a label that would touch
                # its left neighbour's.
                ly = y(v) - 3
                if prev_ly is not None and abs(ly - prev_ly) < 10:
                    ly = prev_ly - 10
                prev_ly = ly
                out.append(f'<text x="{bx + bw / 2:.1f}" y="{ly:.1f}" '
                           f'text-anchor="middle" font-size="9" fill="{tcolor}" paint-order="stroke" '
                           f'stroke="white" stroke-width="3">{fmt(v)}</text>')
            t = TARGETS.get(s["kind"] or "", {}).get(tkey)
            if t:
                out.append(f'<line x1="{gx + 4:.1f}" y1="{y(t):.1f}" x2="{gx + gw - 4:.1f}" '
                           f'y2="{y(t):.1f}" stroke="#d62728" stroke-width="2" stroke-dasharray="4,2"/>')
            nv = NODE.get(s["kind"] or "", {}).get(nkey)
            if nv:
                nx, ny = gx + gw * 0.9, y(nv)
                out.append(f'<path d="M{nx:.1f},{ny - 6:.1f} l5,6 l-5,6 l-5,-6 z" fill="#ff7f0e"/>')
                out.append(f'<text x="{nx:.1f}" y="{ny - 9:.1f}" text-anchor="middle" font-size="9" '
                           f'fill="#b35900">{fmt(float(nv))}</text>')
            rv = s["vs_floor"].get(vkey)
            rtext = fmt_ratio(rv) if how == "ratio" else (
                "–" if rv is None else f"{rv:+.1f} MiB")
            out.append(f'<text x="{gx + gw / 2:.1f}" y="{top + ph + 13}" text-anchor="middle" '
                       f'font-weight="bold">{esc(rtext)}</text>')
            out.append(f'<text x="{gx + gw / 2:.1f}" y="{top + ph + 27}" text-anchor="middle">'
                       f'{esc(s["short"])}</text>')
            out.append(f'<text x="{gx + gw / 2:.1f}" y="{top + ph + 40}" text-anchor="middle" '
                       f'fill="#777" font-size="10">{s["connections"]} conn</text>')
    ny0 = top0 + len(panels) * (ph + pgap)
    for i, n in enumerate(notes):
        out.append(f'<text x="{left}" y="{ny0 + 14 * i}" fill="#555">{esc(n)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main

def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    redis_v = ""
    if shutil.which("redis-server"):
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                                 text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "wrk": (wrk_v.stdout + wrk_v.stderr).strip().splitlines()[0] if (wrk_v.stdout + wrk_v.stderr) else "",
            "redis": redis_v}


def git_info() -> dict:
    def g(*a):
        p = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None
    return {"commit": g("rev-parse", "HEAD"),
            "dirty": bool(g("status", "--porcelain", "--", "src", "bench/floor", "Cargo.toml",
                            "Cargo.lock"))}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(REPO / "target/release/image-service"))
    ap.add_argument("--devstack", default=None,
                    help="the devstack binary (stand-ins); default: next to --binary")
    ap.add_argument("--floor", default=None,
                    help="the bench-floor binary (floor service); default: next to --binary")
    ap.add_argument("--quick", action="store_true",
                    help="CI proof: 1 round, 1.5 s per run, 0.3 s warm-up, smaller (e)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds measured per run and round")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up before each measurement")
    ap.add_argument("--settle", type=float, help="seconds idle before reading idle RSS")
    ap.add_argument("--big-connections", type=int, help="connections of scenario (e)")
    ap.add_argument("--big-image-bytes", type=int, help="decoded image size of scenario (e)")
    ap.add_argument("--big-duration", type=float,
                    help="seconds measured for scenario (e) (default: --duration; quick: 4)")
    ap.add_argument("--only", help="comma list of scenario keys (debugging); stand-in floors "
                    "by their key (list_standin, get_standin, create_standin)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the service, every configuration "
                         "(e.g. LOG_LEVEL=warn)")
    ap.add_argument("--out", help="results file stem (default bench/results/latest or quick-latest)")
    ap.add_argument("--render", metavar="RESULT.json",
                    help="only redraw the chart and table of an earlier result")
    ap.add_argument("--service-cpu", default="0", help="CPU of the service and the floor")
    ap.add_argument("--load-cpu", default="1", help="CPU of the stand-ins, Redis and wrk")
    a = ap.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (1.5 if q else 10.0)
    # (e)'s requests all finish at about the same time (one CPU shared
    # fairly): a quick window shorter than that would count none.
    a.big_duration = a.big_duration or (max(a.duration, 4.0) if q else a.duration)
    a.warmup = a.warmup if a.warmup is not None else (0.3 if q else 2.0)
    a.settle = a.settle if a.settle is not None else (0.2 if q else 1.0)
    # Quick: small enough that a debug build on a loaded machine answers some
    # within the window (a debug streaming decoder takes ~75 ms per MiB).
    a.big_connections = a.big_connections or (10 if q else 100)
    a.big_image_bytes = a.big_image_bytes or (MIB if q else 10 * MIB - 4096)
    a.out = Path(a.out) if a.out else BENCH_DIR / "results" / ("quick-latest" if q else "latest")
    return a


def list_env(work: Path, bearer: str) -> dict:
    """The wrk environment of a list run."""
    return {"BENCH_PATHS_FILE": str(work / "list.paths"), "BENCH_AUTH": bearer}


def build_plan(args, work: Path, urls: dict, bearer: str) -> list:
    """The runs of one round, in order: each Scenario against the service then
    the floor, the stand-in floors after the row they belong to; grouped by
    service configuration, so each is started once a round."""
    bdd, storage = urls["bdd"], urls["storage"]
    key = f"Bearer {urls['service_key']}"
    create = {"BENCH_PATH": "/api/images", "BENCH_BODY_FILE": str(work / "create.json"),
              "BENCH_AUTH": bearer}
    lst = list_env(work, bearer)
    big_label = f"{args.big_image_bytes / MIB:.1f} MiB"
    C = CREATE_CONNECTIONS
    return [
        Scenario("health", "(a) health", "health", "get.lua", 32,
                 {"BENCH_PATHS_FILE": str(work / "health.paths"), "BENCH_AUTH": ""},
                 kind="health", upstream=False),
        Scenario("list", "(b) list", "list", "get.lua", 32, lst, kind="list",
                 standin="list_standin"),
        StandinFloor("list_standin", "(b) stand-in floor: BDD list", "get.lua", 32, bdd,
                     {"BENCH_PATHS_FILE": str(work / "list_standin.paths"), "BENCH_AUTH": ""}),
        Scenario("get", "(c) get by id", "get by id", "get.lua", 32,
                 {"BENCH_PATHS_FILE": str(work / "get.paths"), "BENCH_AUTH": bearer},
                 kind="get", standin="get_standin"),
        StandinFloor("get_standin", "(c) stand-in floor: BDD get", "get.lua", 32, bdd,
                     {"BENCH_PATHS_FILE": str(work / "get_standin.paths"), "BENCH_AUTH": ""}),
        Scenario("create", "(d) create 1 MiB", "create", "post.lua", C, create, kind="create",
                 standin="create_standin", tally=True, timeout_s=30),
        StandinFloor("create_standin", "(d) stand-in floor: Storage upload", "storage.lua", C,
                     storage, {"BENCH_PATH_PREFIX": f"/storage/v1/object/images/{USER}/",
                               "BENCH_BODY_FILE": str(work / "create.png"), "BENCH_AUTH": key},
                     tally=True, timeout_s=30),
        Scenario("create_keyed", "(d) create + Idempotency-Key", "create +key",
                 "post_keyed.lua", C, create, standin="create_standin", tally=True, timeout_s=30),
        Scenario("replay", "(d) replay: same key and body", "replay", "post.lua", C,
                 {**create, "BENCH_IDEMPOTENCY_KEY": REPLAY_KEY}, standin="create_standin",
                 tally=True, timeout_s=30, prime_replay=True),
        Scenario("list_rl", "(b) list + rate limit, in process", "list +RL", "get.lua", 32, lst,
                 config="rate_limit", standin="list_standin"),
        Scenario("list_rl_redis", "(b) list + rate limit, Redis", "list +RL Redis", "get.lua",
                 32, lst, config="redis_rate_limit", standin="list_standin"),
        Scenario("create_keyed_redis", "(d) create + Idempotency-Key, Redis",
                 "create +key Redis", "post_keyed.lua", C, create, config="redis",
                 standin="create_standin", tally=True, timeout_s=30),
        Scenario("replay_redis", "(d) replay, Redis", "replay Redis", "post.lua", C,
                 {**create, "BENCH_IDEMPOTENCY_KEY": REPLAY_KEY}, config="redis",
                 standin="create_standin", tally=True, timeout_s=30, prime_replay=True),
        Scenario("create_big", f"(e) create {big_label} ×{args.big_connections}",
                 "create big", "post.lua", args.big_connections,
                 {"BENCH_PATH": "/api/images", "BENCH_BODY_FILE": str(work / "create_big.json"),
                  "BENCH_AUTH": bearer}, kind="create_big", config="big", tally=True,
                 timeout_s=60, seconds=args.big_duration, aftermath=True),
    ]


def main(argv) -> int:
    global WRK_CPU
    args = parse_args(argv)
    WRK_CPU = args.load_cpu
    if args.render:
        src = Path(args.render)
        result = json.loads(src.read_text())
        src.with_suffix(".svg").write_text(svg_chart(result))
        print(table(result))
        return 0
    if not shutil.which("wrk"):
        raise HarnessError("wrk not found (apt-get install -y wrk, or use bench/run.sh)")
    if not shutil.which("taskset"):
        raise HarnessError("taskset not found (util-linux)")
    binary = Path(args.binary).resolve()
    if not os.access(binary, os.X_OK):
        raise HarnessError(f"no executable at {binary}")
    devstack = Path(args.devstack).resolve() if args.devstack else binary.parent / "devstack"
    if not os.access(devstack, os.X_OK):
        raise HarnessError(f"no devstack executable at {devstack}")
    floor_bin = Path(args.floor).resolve() if args.floor else binary.parent / "bench-floor"
    if not os.access(floor_bin, os.X_OK):
        raise HarnessError(f"no bench-floor executable at {floor_bin} "
                           "(cargo build -p bench-floor, or --floor PATH)")
    extra_env = dict(kv.split("=", 1) for kv in args.env)

    work = Path(tempfile.mkdtemp(prefix="image-bench-"))
    stand = redis = svc = floor = None
    started = time.monotonic()
    try:
        ports = free_ports(6)
        stand = StandIns(devstack, args.load_cpu, work, ports[2:5])
        stand.start()
        urls = stand.urls
        common = {
            "CLERK_ISSUER": urls["clerk"],
            "SUPABASE_URL": urls["storage"],
            "SUPABASE_SERVICE_ROLE_KEY": urls["service_key"],
            "BDD_SERVICE_URL": urls["bdd"],
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
        }
        svc = Server("service", binary, args.service_cpu, work, ports[0])
        floor = Server("floor", floor_bin, args.service_cpu, work, ports[1])
        floor_env = {**common, "FLOOR_USER": USER}

        st, body, _ = http("GET", f"{urls['clerk']}/dev/token?sub={USER}&ttl_secs=86400")
        if st != 200:
            raise HarnessError(f"token mint failed: {st} {body[:200]!r}")
        bearer = f"Bearer {json.loads(body)['token']}"
        auth = {"Authorization": bearer, "Content-Type": "application/json"}

        plan = build_plan(args, work, urls, bearer)
        if args.only:
            keep = set(args.only.split(","))
            unknown = keep - {p.key for p in plan}
            if unknown:
                raise HarnessError(f"--only: no scenario {', '.join(sorted(unknown))}")
            plan = [p for p in plan if p.key in keep]
        scen = [p for p in plan if isinstance(p, Scenario)]
        needs_redis = any("REDIS_URL" in configs(args, "x")[s.config] for s in scen)
        if needs_redis:
            redis = Redis(args.load_cpu, work, ports[5])
            redis.start()
        cfgs = configs(args, redis.url if redis else "")
        cfg_env = {k: {**common, **v, **extra_env} for k, v in cfgs.items()}

        svc.start(cfg_env["base"], "base")
        floor.start(floor_env)
        time.sleep(args.settle)
        log(f"stand-ins pid {stand.pid}{f', redis pid {redis.pid}' if redis else ''} on CPU "
            f"{args.load_cpu}; service pid {svc.pid} at {svc.base}, floor pid {floor.pid} at "
            f"{floor.base}, both on CPU {args.service_cpu}; work dir {work}")

        ids = []
        seed_png = png(4096)
        for i in range(SEED_IMAGES):
            st, body, _ = http("POST", svc.base + "/api/images", create_body(seed_png, f"seed {i}"),
                               auth)
            if st != 201:
                raise HarnessError(f"seeding image {i}: HTTP {st} {body[:300]!r}\n"
                                   f"{tail(svc.log_path)}")
            ids.append(json.loads(body)["data"]["image_id"])
        seed_bdd = work / "bdd.seed.json"
        shutil.copyfile(stand.data / "bdd.json", seed_bdd)
        time.sleep(args.settle)
        idle_seed = status_kib(svc.pid, "VmRSS") / 1024
        log(f"seeded {len(ids)} images")

        # Files the Lua scripts read.
        (work / "health.paths").write_text("/api/health\n")
        (work / "list.paths").write_text("/api/images?page=1&limit=10\n")
        (work / "get.paths").write_text("".join(f"/api/images/{i}\n" for i in ids))
        (work / "list_standin.paths").write_text(f"/api/images?userId={USER}&page=1&limit=10\n")
        (work / "get_standin.paths").write_text(
            "".join(f"/api/images/{i}?userId={USER}&user_id={USER}\n" for i in ids))
        img1 = png(MIB)
        create_json = create_body(img1)
        (work / "create.json").write_bytes(create_json)
        (work / "create.png").write_bytes(img1)
        (work / "create_big.json").write_bytes(create_body(png(args.big_image_bytes)))

        # Each request answers as expected before anything is measured: on
        # the service and on the floor alike (the floor's create included).
        bdd = urls["bdd"]
        smoke = [("service health", svc.base + "/api/health", {}),
                 ("service list", svc.base + "/api/images?page=1&limit=10", {"Authorization": bearer}),
                 ("service get", f"{svc.base}/api/images/{ids[0]}", {"Authorization": bearer}),
                 ("floor health", floor.base + "/api/health", {}),
                 ("floor list", floor.base + "/api/images?page=1&limit=10", {}),
                 ("floor get", f"{floor.base}/api/images/{ids[0]}", {}),
                 ("BDD list", f"{bdd}/api/images?userId={USER}&page=1&limit=10", {}),
                 ("BDD get", f"{bdd}/api/images/{ids[0]}?userId={USER}&user_id={USER}", {})]
        for name, url, hdrs in smoke:
            st, body, _ = http("GET", url, headers=hdrs)
            if st != 200:
                raise HarnessError(f"smoke {name}: {url} answered {st}, not 200: {body[:300]!r}")
        st, body, _ = http("POST", floor.base + "/api/images", create_json, auth)
        if st != 201 or json.loads(body)["data"]["user_id"] != USER:
            raise HarnessError(f"smoke floor create: {st} {body[:300]!r}\n{tail(floor.log_path)}")

        def prime_replay() -> None:
            """The first create with REPLAY_KEY, then one retry that must replay."""
            hdrs = {**auth, "Idempotency-Key": REPLAY_KEY}
            st, body, _ = http("POST", svc.base + "/api/images", create_json, hdrs, timeout=30)
            if st != 201:
                raise HarnessError(f"replay: the first keyed create answered {st}: {body[:300]!r}")
            st, body, h = http("POST", svc.base + "/api/images", create_json, hdrs, timeout=30)
            if st != 201 or h.get("idempotent-replayed") != "true":
                raise HarnessError(f"replay: the retry answered {st} without "
                                   f"Idempotent-Replayed: true: {body[:300]!r}")

        ctx = Ctx(args, work, stand, seed_bdd, redis)
        per_svc: dict[str, list[dict]] = {s.key: [] for s in scen}
        per_floor: dict[str, list[dict]] = {s.key: [] for s in scen}
        per_standin: dict[str, list[dict]] = {p.key: [] for p in plan
                                              if isinstance(p, StandinFloor)}
        idle = {"service": [], "floor": []}
        for rnd in range(1, args.rounds + 1):
            # Fresh processes each round: memory the allocator kept after (e)
            # must not count as the next round's peak for health.
            floor.start(floor_env)
            time.sleep(args.settle)
            idle["floor"].append(status_kib(floor.pid, "VmRSS") / 1024)
            svc.config = None
            for item in plan:
                if isinstance(item, StandinFloor):
                    r = measure(ctx, item.key, item.script, item.connections, item.url, item.env,
                                item.tally, item.timeout_s, True, None, rnd)
                    per_standin[item.key].append(r)
                    progress(rnd, args.rounds, item.label, r)
                    continue
                sc = item
                if svc.config != sc.config:
                    svc.start(cfg_env[sc.config], sc.config)
                    time.sleep(args.settle)
                    if sc.config == "base":
                        idle["service"].append(status_kib(svc.pid, "VmRSS") / 1024)
                uses_redis = "REDIS_URL" in cfgs[sc.config]
                for who, server, per in (("service", svc, per_svc), ("floor", floor, per_floor)):
                    r = measure(ctx, f"{sc.key}-{who}", sc.script, sc.connections, server.base,
                                sc.env, sc.tally, sc.timeout_s, sc.upstream, server.pid, rnd,
                                uses_redis=uses_redis and who == "service",
                                before_run=prime_replay if sc.prime_replay and who == "service"
                                else None, seconds=sc.seconds)
                    server.check_alive(f"{sc.key}")
                    per[sc.key].append(r)
                    progress(rnd, args.rounds, f"{sc.label} · {who}", r)
                if sc.aftermath:
                    absorb_aftermath(ctx, floor.base, bearer, rnd)

        # The create's tail: from the last body byte to the answer, the
        # service (which uploads while the body arrives) against the floor
        # (which reads the whole body first), one create each in turn.
        tails = {"service": [], "floor": []}
        if "create" in per_svc:
            ctx.stand.restart(seed_bdd)
            svc.start(cfg_env["base"], "base")
            floor.start(floor_env)
            time.sleep(args.settle)
            own_cpus = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {int(args.load_cpu)})
            try:
                for _ in range(5 if args.quick else 21):
                    for who, server in (("service", svc), ("floor", floor)):
                        st, ms = create_tail_ms(server.base, create_json, bearer)
                        if st != 201:
                            raise HarnessError(f"create tail: the {who} answered {st}\n"
                                               f"{tail(server.log_path)}")
                        tails[who].append(ms)
            finally:
                os.sched_setaffinity(0, own_cpus)
            log(f"create 1 MiB, sent at 64 KiB per 5 ms: last body byte to answer, median "
                f"service {median_of(tails['service']):.2f} ms, floor "
                f"{median_of(tails['floor']):.2f} ms")

        mode = "quick" if args.quick else "full"
        standin_of = {p.key: p for p in plan if isinstance(p, StandinFloor)}
        result = {
            "title": f"image-service vs floor service vs stand-in ({mode}): medians of "
                     f"{args.rounds} round(s) × {args.duration:g} s",
            "subtitle": (f"service and floor pinned to CPU {args.service_cpu}, in turn; stand-ins + "
                         f"Redis + wrk on CPU {args.load_cpu}; "
                         f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
                         f"commit {(git_info()['commit'] or '?')[:10]}"),
            "chart_notes": [
                "Targets (dashed red): this service's performance targets; orange diamonds: the "
                "Node service measured with the same scenarios.",
                "Floor service: bench/floor, hyper + pooled client, the same Storage and BDD calls, "
                "no token check, no validation, no logs, no limits, no keys (a replay is a create "
                "for it).",
                "Stand-in floor: the request the service ends with, sent straight to the stand-in "
                "(list/get: BDD; creates: the 1 MiB Storage upload); CPU panel: the stand-ins' "
                "CPU µs per request.",
                f"Rate limit rows: RATE_LIMIT_PER_MINUTE={RATE_LIMIT} (never refuses); Redis rows: "
                "REDIS_URL to a local redis-server, persistence off, on the load CPU.",
                f"(e): {args.big_connections} connections, {args.big_image_bytes:,}-byte images, "
                f"MAX_UPLOADS_IN_FLIGHT = MAX_UPLOADS_PER_USER = {args.big_connections}; "
                f"other creates: MAX_UPLOADS_PER_USER = {CREATE_CONNECTIONS}.",
            ],
            "mode": mode,
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_info(),
            # Relative to the repository when inside it: results are committed.
            "binary": str(binary.relative_to(REPO)) if binary.is_relative_to(REPO) else str(binary),
            "floor_binary": (str(floor_bin.relative_to(REPO)) if floor_bin.is_relative_to(REPO)
                             else str(floor_bin)),
            "machine": machine(),
            "params": {"rounds": args.rounds, "duration_s": args.duration,
                       "big_duration_s": args.big_duration, "warmup_s": args.warmup,
                       "settle_s": args.settle, "big_connections": args.big_connections,
                       "big_image_bytes": args.big_image_bytes, "create_image_bytes": MIB,
                       "create_connections": CREATE_CONNECTIONS, "seed_images": SEED_IMAGES,
                       "service_cpu": args.service_cpu, "load_cpu": args.load_cpu,
                       "wrk_threads": 1, "service_env_extra": extra_env, "clk_tck": CLK_TCK,
                       "rate_limit_per_minute": RATE_LIMIT},
            "configs": {k: {a: ("redis://127.0.0.1:PORT" if a == "REDIS_URL" else b)
                            for a, b in v.items()} for k, v in cfgs.items()},
            "idle_rss_startup_mib": {k: median_of(v) for k, v in idle.items()},
            "idle_rss_startup_rounds_mib": idle,
            "idle_rss_after_seed_mib": idle_seed,
            "create_tail_ms": {k: {"median": median_of(v), "runs": v}
                               for k, v in tails.items()} if tails["service"] else None,
            "targets": TARGETS,
            "node_baseline": NODE,
            "scenarios": {
                s.key: {"label": s.label, "short": s.short, "kind": s.kind,
                        "connections": s.connections, "config": s.config,
                        "standin": s.standin if s.standin in standin_of else None,
                        "service": {"median": medians(per_svc[s.key]), "rounds": per_svc[s.key]},
                        "floor": {"median": medians(per_floor[s.key]),
                                  "rounds": per_floor[s.key]},
                        "vs_floor": vs_floor(per_svc[s.key], per_floor[s.key])}
                for s in scen},
            "standin_floors": {
                k: {"label": p.label, "connections": p.connections, "url": p.url,
                    "median": medians(per_standin[k]), "rounds": per_standin[k]}
                for k, p in standin_of.items()},
        }
        result["adds"] = adds(result["scenarios"])
        if result["create_tail_ms"]:
            result["chart_notes"].append(tail_line(result["create_tail_ms"]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        json_path = args.out.with_suffix(".json")
        svg_path = args.out.with_suffix(".svg")
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        svg_path.write_text(svg_chart(result))
        print(table(result))
        print(f"\nwrote {json_path} and {svg_path} in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        for p in (svc, floor):
            if p:
                stop(p.proc)
        if stand:
            stop(stand.proc)
        if redis:
            stop(redis.proc)
        shutil.rmtree(work, ignore_errors=True)


def _on_term(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_term)
    # Also when started in the background, where SIGINT comes in ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main(sys.argv[1:]))
    except HarnessError as e:
        log(f"bench: FAILED: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("bench: interrupted; processes stopped, temp dir removed")
        sys.exit(130)
