#!/usr/bin/env python3
"""Benchmark of the image service, Python 3.11 stdlib only.

Starts the local Clerk/Storage/BDD stand-ins (`devstack stand-ins`) and
the service, pinned to separate CPUs, seeds 50 images, then drives each
scenario with wrk and reads the service's cost from /proc. See
bench/README.md for what every figure means.

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
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# The service's performance targets (medians) and the Node service's
# numbers, measured with the same scenarios.
TARGETS = {
    "health": {"cpu_us": 10, "p99_ms": 2, "peak_rss_mib": 12},
    "list": {"cpu_us": 40, "p99_ms": 5, "peak_rss_mib": 16},
    "get": {"cpu_us": 40, "p99_ms": 5, "peak_rss_mib": 16},
    "create": {"cpu_us": 1000, "p99_ms": 15, "peak_rss_mib": 48},
    "create_big": {"cpu_us": None, "p99_ms": None, "peak_rss_mib": 256,
                   "statuses": "every answer a 201 or a 503 with Retry-After"},
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


# ---------------------------------------------------------------- processes

def http(method: str, url: str, body: bytes | None = None,
         headers: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


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


def start_service(binary: Path, cpu: str, work: Path, port: int, urls: dict,
                  extra_env: dict) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CLERK_ISSUER": urls["clerk"],
        "SUPABASE_URL": urls["storage"],
        "SUPABASE_SERVICE_ROLE_KEY": urls["service_key"],
        "BDD_SERVICE_URL": urls["bdd"],
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
    }
    env.update(extra_env)
    logf = work / "service.log"
    with open(logf, "ab") as f:
        # cwd = the temp dir, so no stray ./.env is read.
        proc = subprocess.Popen(["taskset", "-c", cpu, str(binary)], stdout=f, stderr=f,
                                env=env, cwd=work, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"service exited ({proc.returncode}):\n{tail(logf)}")
        try:
            if http("GET", base + "/api/health", timeout=1)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    stop(proc)
    raise HarnessError(f"service did not answer /api/health in 30 s:\n{tail(logf)}")


# ---------------------------------------------------------------- wrk

@dataclass
class Scenario:
    key: str            # result key
    label: str
    target: str         # "service" or "floor"
    kind: str           # TARGETS / NODE key
    script: str
    connections: int
    url: str = ""
    env: dict = field(default_factory=dict)
    tally: bool = False
    timeout_s: int = 10
    upstream: bool = True  # needs fresh stand-ins


def run_wrk(sc: Scenario, seconds: float, work: Path, tag: str) -> tuple[dict, str]:
    env = dict(os.environ)
    env.update(sc.env)
    env["BENCH_LUA_DIR"] = str(LUA_DIR)
    env["BENCH_TALLY"] = "1" if sc.tally else "0"
    env["BENCH_RUN_TAG"] = tag
    # wrk takes whole seconds; a fractional duration is cut short with SIGINT,
    # on which wrk stops and reports as usual.
    whole = max(1, math.ceil(seconds))
    cmd = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{sc.connections}", f"-d{whole}s",
           f"--timeout={sc.timeout_s}s", "--latency", "-s", str(LUA_DIR / sc.script), sc.url]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=work)
    try:
        if whole != seconds:
            try:
                p.wait(seconds)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=whole + sc.timeout_s + 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise HarnessError(f"wrk failed ({p.returncode}) on {sc.key}: {err.strip()}\n{out}")
    m = re.search(r"^BENCH_JSON (.*)$", out, re.M)
    if not m:
        raise HarnessError(f"wrk gave no BENCH_JSON line on {sc.key}:\n{out}\n{err}")
    return json.loads(m.group(1)), out


WRK_CPU = "1"


def measure(sc: Scenario, args, stand: StandIns, svc_pid: int, seed_bdd: Path,
            work: Path, rnd: int) -> dict:
    if sc.upstream:
        stand.restart(seed_bdd)
    if args.warmup > 0:
        run_wrk(sc, args.warmup, work, f"r{rnd}w")
        time.sleep(0.2)
    measured_pids = {"service": svc_pid, "stand_ins": stand.pid}
    reset_peak(svc_pid)
    reset_peak(stand.pid)
    before = {k: cpu_ticks(p) for k, p in measured_pids.items()}
    t0 = time.monotonic()
    w, text = run_wrk(sc, args.duration, work, f"r{rnd}m")
    wall = time.monotonic() - t0
    after = {k: cpu_ticks(p) for k, p in measured_pids.items()}
    peak = {k: status_kib(p, "VmHWM") for k, p in measured_pids.items()}
    time.sleep(args.settle)
    idle = status_kib(svc_pid, "VmRSS")

    n = w["requests"]
    if n == 0:
        raise HarnessError(f"{sc.key}: zero requests completed\n{text}")
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
    if sc.tally:
        r["statuses"] = dict(sorted(w["tally"].items()))
    if sc.target == "service":
        r["cpu_us_per_req"] = (after["service"] - before["service"]) * us_per_tick / n
        r["cpu_s"] = (after["service"] - before["service"]) / CLK_TCK
        r["peak_rss_mib"] = peak["service"] / 1024
        r["idle_rss_after_mib"] = idle / 1024
    return r


# ---------------------------------------------------------------- results

NUMERIC = ["rps", "p50_ms", "p99_ms", "p999_ms", "max_ms", "non_2xx", "cpu_us_per_req",
           "peak_rss_mib", "idle_rss_after_mib", "upstream_cpu_us_per_req", "requests"]


def medians(rounds: list[dict]) -> dict:
    med = {}
    for k in NUMERIC:
        vals = [r[k] for r in rounds if k in r]
        if vals:
            med[k] = statistics.median(vals)
    if any("statuses" in r for r in rounds):
        total: dict[str, int] = {}
        for r in rounds:
            for s, c in r.get("statuses", {}).items():
                total[s] = total.get(s, 0) + c
        med["statuses_all_rounds"] = dict(sorted(total.items()))
    errs = {}
    for r in rounds:
        for k, v in r["socket_errors"].items():
            errs[k] = errs.get(k, 0) + v
    med["socket_errors_all_rounds"] = errs
    return med


def fmt(v, nd=1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(result: dict) -> str:
    sc = result["scenarios"]
    rows = [("scenario", "conn", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB",
             "idle RSS MiB", "non-2xx", "upstream CPU µs/req", "target CPU/p99/RSS")]
    for key, s in sc.items():
        m = s["median"]
        t = TARGETS.get(s["kind"], {}) if s["target"] == "service" else {}
        tgt = "" if not t else "/".join(
            "–" if t.get(x) is None else fmt(t[x]) for x in ("cpu_us", "p99_ms", "peak_rss_mib"))
        rows.append((s["label"], str(s["connections"]), fmt(m.get("rps")), fmt(m.get("p50_ms"), 2),
                     fmt(m.get("p99_ms"), 2), fmt(m.get("cpu_us_per_req")),
                     fmt(m.get("peak_rss_mib")), fmt(m.get("idle_rss_after_mib")),
                     fmt(m.get("non_2xx"), 0), fmt(m.get("upstream_cpu_us_per_req")), tgt))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for key, s in sc.items():
        st = s["median"].get("statuses_all_rounds")
        if st:
            lines.append(f"{s['label']}: statuses over all rounds {st}")
        errs = {k: v for k, v in s["median"]["socket_errors_all_rounds"].items() if v}
        if errs:
            lines.append(f"{s['label']}: wrk socket errors over all rounds {errs}")
    lines.append(f"idle RSS after start-up (median of rounds): {fmt(result['idle_rss_startup_mib'])} MiB; "
                 f"after seeding: {fmt(result['idle_rss_after_seed_mib'])} MiB")
    return "\n".join(lines)


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_chart(result: dict) -> str:
    """Three log-scale panels: CPU µs/request, p99, peak RSS, bars per scenario."""
    sc = result["scenarios"]
    groups = [("health", "health", None), ("list", "list", "list_floor"),
              ("get", "get by id", "get_floor"), ("create", "create 1 MiB", "create_floor"),
              ("create_big", "create big", None)]
    groups = [g for g in groups if g[0] in sc]
    panels = [("cpu_us_per_req", "upstream_cpu_us_per_req", "cpu_us", "cpu_us",
               "CPU µs per request (service PID)"),
              ("p99_ms", "p99_ms", "p99_ms", "p99_ms", "p99 latency, ms"),
              ("peak_rss_mib", None, "peak_rss_mib", "peak_rss_mib", "peak RSS (VmHWM), MiB")]
    pw, ph, top, left, gap = 400, 300, 95, 60, 40
    W = left + len(panels) * (pw + gap) + 20
    H = top + ph + 110
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="15" font-weight="bold">{esc(result["title"])}</text>',
           f'<text x="{left}" y="38" fill="#555">{esc(result["subtitle"])}</text>']
    # legend
    lx = left
    for color, text, shape in [("#3b6fb6", "service (median)", "bar"),
                               ("#b9c4d0", "floor: same request straight to the stand-in "
                                "(CPU: stand-ins' µs/req)", "bar"),
                               ("#d62728", "target", "line"), ("#ff7f0e", "Node service", "dot")]:
        if shape == "bar":
            out.append(f'<rect x="{lx}" y="48" width="12" height="10" fill="{color}"/>')
        elif shape == "line":
            out.append(f'<line x1="{lx}" y1="53" x2="{lx + 14}" y2="53" stroke="{color}" '
                       f'stroke-width="2" stroke-dasharray="4,2"/>')
        else:
            out.append(f'<path d="M{lx + 6},47 l5,6 l-5,6 l-5,-6 z" fill="{color}"/>')
        out.append(f'<text x="{lx + 17}" y="57">{esc(text)}</text>')
        lx += 30 + 6.4 * len(text)

    for pi, (key, floor_key, tkey, nkey, title) in enumerate(panels):
        x0 = left + pi * (pw + gap)
        vals = []
        for g, _, f in groups:
            vals.append(sc[g]["median"].get(key))
            if floor_key and f and f in sc:
                vals.append(sc[f]["median"].get(floor_key))
            vals.append(TARGETS.get(g, {}).get(tkey))
            vals.append(NODE.get(g, {}).get(nkey))
        vals = [v for v in vals if v]
        lo = 10 ** math.floor(math.log10(max(min(vals) * 0.7, 1e-3)))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.5))
        def y(v: float) -> float:
            v = max(v, lo)
            return top + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
        out.append(f'<text x="{x0}" y="{top - 6}" font-weight="bold">{esc(title)} (log scale)</text>')
        out.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        d = lo
        while d <= hi * 1.0001:
            yy = y(d)
            out.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + pw}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{x0 - 4}" y="{yy + 4:.1f}" text-anchor="end" fill="#555">{d:g}</text>')
            d *= 10
        gw = pw / len(groups)
        for gi, (g, glabel, f) in enumerate(groups):
            gx = x0 + gi * gw
            bw = gw * 0.3
            v = sc[g]["median"].get(key)
            bx = gx + gw * 0.15
            if v:
                out.append(f'<rect x="{bx:.1f}" y="{y(v):.1f}" width="{bw:.1f}" '
                           f'height="{top + ph - y(v):.1f}" fill="#3b6fb6"/>')
                out.append(f'<text x="{bx + bw / 2:.1f}" y="{y(v) - 3:.1f}" text-anchor="middle" '
                           f'font-size="10" paint-order="stroke" stroke="white" stroke-width="3">{fmt(v)}</text>')
            fv = sc[f]["median"].get(floor_key) if (floor_key and f and f in sc) else None
            if fv:
                fx = bx + bw + 2
                out.append(f'<rect x="{fx:.1f}" y="{y(fv):.1f}" width="{bw:.1f}" '
                           f'height="{top + ph - y(fv):.1f}" fill="#b9c4d0"/>')
                out.append(f'<text x="{fx + bw / 2:.1f}" y="{y(fv) - 3:.1f}" text-anchor="middle" '
                           f'font-size="10" fill="#555" paint-order="stroke" stroke="white" stroke-width="3">{fmt(fv)}</text>')
            t = TARGETS.get(g, {}).get(tkey)
            if t:
                out.append(f'<line x1="{gx + 4:.1f}" y1="{y(t):.1f}" x2="{gx + gw - 4:.1f}" '
                           f'y2="{y(t):.1f}" stroke="#d62728" stroke-width="2" stroke-dasharray="4,2"/>')
            nv = NODE.get(g, {}).get(nkey)
            if nv:
                nx, ny = gx + gw * 0.85, y(nv)
                out.append(f'<path d="M{nx:.1f},{ny - 6:.1f} l5,6 l-5,6 l-5,-6 z" fill="#ff7f0e"/>')
                out.append(f'<text x="{nx:.1f}" y="{ny - 9:.1f}" text-anchor="middle" font-size="10" '
                           f'fill="#b35900">{fmt(float(nv))}</text>')
            out.append(f'<text x="{gx + gw / 2:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                       f'{esc(glabel)}</text>')
            out.append(f'<text x="{gx + gw / 2:.1f}" y="{top + ph + 27}" text-anchor="middle" '
                       f'fill="#777" font-size="10">{sc[g]["connections"]} conn</text>')
    notes = result.get("chart_notes", [])
    for i, n in enumerate(notes):
        out.append(f'<text x="{left}" y="{top + ph + 50 + 14 * i}" fill="#555">{esc(n)}</text>')
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
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "wrk": (wrk_v.stdout + wrk_v.stderr).strip().splitlines()[0] if (wrk_v.stdout + wrk_v.stderr) else ""}


def git_info() -> dict:
    def g(*a):
        p = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None
    return {"commit": g("rev-parse", "HEAD"), "dirty": bool(g("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"))}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(REPO / "target/release/image-service"))
    ap.add_argument("--devstack", default=None,
                    help="the devstack binary (stand-ins); default: next to --binary")
    ap.add_argument("--quick", action="store_true",
                    help="CI proof: 1 round, 2 s per scenario, 0.5 s warm-up, smaller (e)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds measured per scenario and round")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up before each measurement")
    ap.add_argument("--settle", type=float, help="seconds idle before reading idle RSS")
    ap.add_argument("--big-connections", type=int, help="connections of scenario (e)")
    ap.add_argument("--big-image-bytes", type=int, help="decoded image size of scenario (e)")
    ap.add_argument("--only", help="comma list of scenario keys (debugging)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the service (e.g. LOG_LEVEL=warn)")
    ap.add_argument("--out", help="results file stem (default bench/results/latest or quick-latest)")
    ap.add_argument("--render", metavar="RESULT.json",
                    help="only redraw the chart and table of an earlier result")
    ap.add_argument("--service-cpu", default="0")
    ap.add_argument("--load-cpu", default="1", help="CPU of the stand-ins and wrk")
    a = ap.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (2.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if q else 2.0)
    a.settle = a.settle if a.settle is not None else (0.3 if q else 1.0)
    a.big_connections = a.big_connections or (20 if q else 100)
    a.big_image_bytes = a.big_image_bytes or (2 * MIB if q else 10 * MIB - 4096)
    a.out = Path(a.out) if a.out else BENCH_DIR / "results" / ("quick-latest" if q else "latest")
    return a


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
    extra_env = dict(kv.split("=", 1) for kv in args.env)

    work = Path(tempfile.mkdtemp(prefix="image-bench-"))
    stand = None
    svc = None
    started = time.monotonic()
    try:
        ports = free_ports(4)
        devstack = Path(args.devstack).resolve() if args.devstack else binary.parent / "devstack"
        if not os.access(devstack, os.X_OK):
            raise HarnessError(f"no devstack executable at {devstack}")
        stand = StandIns(devstack, args.load_cpu, work, ports[1:])
        stand.start()
        urls = stand.urls
        svc = start_service(binary, args.service_cpu, work, ports[0], urls, extra_env)
        time.sleep(args.settle)
        idle_start = status_kib(svc.pid, "VmRSS") / 1024
        base = f"http://127.0.0.1:{ports[0]}"
        log(f"stand-ins pid {stand.pid} on CPU {args.load_cpu}; service pid {svc.pid} on CPU "
            f"{args.service_cpu} at {base}; work dir {work}")

        st, body = http("GET", f"{urls['clerk']}/dev/token?sub={USER}&ttl_secs=86400")
        if st != 200:
            raise HarnessError(f"token mint failed: {st} {body[:200]!r}")
        token = json.loads(body)["token"]
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        ids = []
        seed_png = png(4096)
        for i in range(SEED_IMAGES):
            st, body = http("POST", base + "/api/images", create_body(seed_png, f"seed {i}"), auth)
            if st != 201:
                raise HarnessError(f"seeding image {i}: HTTP {st} {body[:300]!r}\n{tail(work / 'service.log')}")
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
        (work / "list_floor.paths").write_text(f"/api/images?userId={USER}&page=1&limit=10\n")
        (work / "get_floor.paths").write_text(
            "".join(f"/api/images/{i}?userId={USER}&user_id={USER}\n" for i in ids))
        img1 = png(MIB)
        (work / "create.json").write_bytes(create_body(img1))
        (work / "create.png").write_bytes(img1)
        (work / "create_big.json").write_bytes(create_body(png(args.big_image_bytes)))

        bearer = f"Bearer {token}"
        bdd, storage = urls["bdd"], urls["storage"]
        key = f"Bearer {urls['service_key']}"
        big_label = f"create {args.big_image_bytes / MIB:.1f} MiB"
        scenarios = [
            Scenario("health", "(a) health", "service", "health", "get.lua", 32, base,
                     {"BENCH_PATHS_FILE": str(work / "health.paths"), "BENCH_AUTH": ""}, upstream=False),
            Scenario("list", "(b) list", "service", "list", "get.lua", 32, base,
                     {"BENCH_PATHS_FILE": str(work / "list.paths"), "BENCH_AUTH": bearer}),
            Scenario("list_floor", "(b) list floor: BDD", "floor", "list", "get.lua", 32, bdd,
                     {"BENCH_PATHS_FILE": str(work / "list_floor.paths"), "BENCH_AUTH": ""}),
            Scenario("get", "(c) get by id", "service", "get", "get.lua", 32, base,
                     {"BENCH_PATHS_FILE": str(work / "get.paths"), "BENCH_AUTH": bearer}),
            Scenario("get_floor", "(c) get floor: BDD", "floor", "get", "get.lua", 32, bdd,
                     {"BENCH_PATHS_FILE": str(work / "get_floor.paths"), "BENCH_AUTH": ""}),
            Scenario("create", "(d) create 1 MiB", "service", "create", "post.lua", 8, base,
                     {"BENCH_PATH": "/api/images", "BENCH_BODY_FILE": str(work / "create.json"),
                      "BENCH_AUTH": bearer}, tally=True, timeout_s=30),
            Scenario("create_floor", "(d) create floor: Storage", "floor", "create", "storage.lua", 8,
                     storage, {"BENCH_PATH_PREFIX": f"/storage/v1/object/images/{USER}/",
                               "BENCH_BODY_FILE": str(work / "create.png"), "BENCH_AUTH": key},
                     tally=True, timeout_s=30),
            Scenario("create_big", f"(e) {big_label}", "service", "create_big", "post.lua",
                     args.big_connections, base,
                     {"BENCH_PATH": "/api/images", "BENCH_BODY_FILE": str(work / "create_big.json"),
                      "BENCH_AUTH": bearer}, tally=True, timeout_s=60),
        ]
        if args.only:
            keep = set(args.only.split(","))
            scenarios = [s for s in scenarios if s.key in keep]

        # Each request answers as expected before anything is measured.
        smoke = {"health": (base + "/api/health", {}, 200),
                 "list": (base + "/api/images?page=1&limit=10", {"Authorization": bearer}, 200),
                 "get": (f"{base}/api/images/{ids[0]}", {"Authorization": bearer}, 200),
                 "list_floor": (f"{bdd}/api/images?userId={USER}&page=1&limit=10", {}, 200),
                 "get_floor": (f"{bdd}/api/images/{ids[0]}?userId={USER}&user_id={USER}", {}, 200)}
        for name, (url, hdrs, want) in smoke.items():
            st, body = http("GET", url, headers=hdrs)
            if st != want:
                raise HarnessError(f"smoke {name}: {url} answered {st}, not {want}: {body[:300]!r}")

        per: dict[str, list[dict]] = {s.key: [] for s in scenarios}
        idle_rounds = [idle_start]
        for rnd in range(1, args.rounds + 1):
            if rnd > 1:
                # A fresh service each round: memory the allocator kept after
                # (e) must not count as the next round's peak for health.
                stop(svc)
                svc = start_service(binary, args.service_cpu, work, ports[0], urls, extra_env)
                time.sleep(args.settle)
                idle_rounds.append(status_kib(svc.pid, "VmRSS") / 1024)
                log(f"round {rnd}: fresh service pid {svc.pid}, idle RSS {idle_rounds[-1]:.1f} MiB")
            for sc in scenarios:
                r = measure(sc, args, stand, svc.pid, seed_bdd, work, rnd)
                if svc.poll() is not None:
                    raise HarnessError(f"service died during {sc.key}:\n{tail(work / 'service.log')}")
                per[sc.key].append(r)
                extra = ""
                if "cpu_us_per_req" in r:
                    extra = (f" cpu {r['cpu_us_per_req']:.1f} µs/req peak {r['peak_rss_mib']:.1f} MiB"
                             f" idle {r['idle_rss_after_mib']:.1f} MiB")
                st = f" statuses {r['statuses']}" if "statuses" in r else ""
                log(f"round {rnd}/{args.rounds} {sc.label:28s} {r['rps']:9.1f} req/s p50 "
                    f"{r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms non-2xx {r['non_2xx']}{extra}{st}")

        mode = "quick" if args.quick else "full"
        result = {
            "title": f"image-service benchmark ({mode}): medians of {args.rounds} round(s) × "
                     f"{args.duration:g} s",
            "subtitle": (f"service pinned to CPU {args.service_cpu}; stand-ins + wrk on CPU "
                         f"{args.load_cpu}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
                         f"commit {(git_info()['commit'] or '?')[:10]}"),
            "chart_notes": [
                "Targets (dashed red): this service's performance targets; orange diamonds: the Node service measured with the same scenarios.",
                "Floor bars: the proxied request sent straight to the stand-in it ends at (list/get: BDD, "
                "create: the 1 MiB Storage upload); in the CPU panel, the stand-ins' CPU µs per request.",
                f"(e): {args.big_connections} connections, {args.big_image_bytes:,}-byte images; target: peak RSS only, "
                "every answer a 201 or a 503 with Retry-After.",
            ],
            "mode": mode,
            "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_info(),
            # Relative to the repository when inside it: results are committed.
            "binary": str(binary.relative_to(REPO)) if binary.is_relative_to(REPO) else str(binary),
            "machine": machine(),
            "params": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                       "settle_s": args.settle, "big_connections": args.big_connections,
                       "big_image_bytes": args.big_image_bytes, "create_image_bytes": MIB,
                       "seed_images": SEED_IMAGES, "service_cpu": args.service_cpu,
                       "load_cpu": args.load_cpu, "wrk_threads": 1, "service_env_extra": extra_env,
                       "clk_tck": CLK_TCK},
            "idle_rss_startup_mib": statistics.median(idle_rounds),
            "idle_rss_startup_rounds_mib": idle_rounds,
            "idle_rss_after_seed_mib": idle_seed,
            "targets": TARGETS,
            "node_baseline": NODE,
            "scenarios": {
                s.key: {"label": s.label, "target": s.target, "kind": s.kind,
                        "connections": s.connections, "url": s.url,
                        "median": medians(per[s.key]), "rounds": per[s.key]}
                for s in scenarios},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        json_path = args.out.with_suffix(".json")
        svg_path = args.out.with_suffix(".svg")
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        svg_path.write_text(svg_chart(result))
        print(table(result))
        print(f"\nwrote {json_path} and {svg_path} in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        stop(svc)
        if stand:
            stop(stand.proc)
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
