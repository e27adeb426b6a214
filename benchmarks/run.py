"""Benchmark runner: flask-jpulse-ws against Flask-SocketIO, a plain flask-sock loop and an
asyncio + picows reference.

Starts each peer's app (benchmarks/apps/) as ``gunicorn -k <worker> -w 1
--worker-connections 20000`` on a free loopback port (ours on its own worker class, the
others on ``-k gevent``, see PEERS; the picows app as a plain asyncio process), runs the
scenarios against the peers alternately (the peer order rotates every repetition),
repeats, and writes medians, ratios against Flask-SocketIO and against picows from the
same run, the targets of issue 6, and each side's CPU to ``benchmarks/results/``:
a JSON file, a markdown table and PNG charts.

    python benchmarks/run.py                 # everything, 3 repetitions (~30-40 min)
    python benchmarks/run.py --quick         # small sizes, 1 repetition (< 2 min)
    python benchmarks/run.py --only fanout --peers jpulse,socketio

Every wait has a timeout; every subprocess (gunicorn, redis-server) is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import loadgen as lg  # noqa: E402

#: Each WSGI peer runs on the gunicorn worker its documentation recommends: ours on its
#: own (docs/scaling.md: gunicorn's gevent worker, accepting in batches), the others on
#: ``-k gevent``. ``BENCH_WORKER_CLASS`` runs every WSGI peer on one class instead, for an
#: A/B by hand (e.g. Flask-SocketIO on ours: ``flask_jpulse_ws.worker.GeventWorker``).
OUR_WORKER = "flask_jpulse_ws.worker.GeventWorker"


def worker_class(peer: str) -> str:
    """The ``gunicorn -k`` class a WSGI peer runs on (``BENCH_WORKER_CLASS`` overrides)."""
    return os.environ.get("BENCH_WORKER_CLASS") or PEERS[peer]["worker"]


PEERS = {
    "jpulse": {"module": "jpulse_app:app", "label": "flask-jpulse-ws", "worker": OUR_WORKER},
    "socketio": {"module": "socketio_app:app", "label": "Flask-SocketIO", "worker": "gevent"},
    "flasksock": {"module": "flasksock_app:app", "label": "flask-sock loop", "worker": "gevent"},
    # asyncio, not WSGI: started as a plain script (see Server), one process only
    "picows": {"script": "picows_app.py", "label": "asyncio + picows"},
}
BASELINE = "socketio"
REFERENCE = "picows"  # the second ratio column: against the asyncio + picows reference
NOISY_PCT = 25.0  # other processes used this much CPU during a measured window


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str  # e.g. "fanout-1000"
    family: str  # idle | fanout | burst | reqrep | xworker | slow | deflate | history | storm
    scenario: str  # loadgen scenario function
    x: int  # N or clients (for charts)
    params: dict
    peers: tuple = ("jpulse", "socketio", "flasksock", "picows")
    workers: int = 1
    redis: bool = False
    env: dict = field(default_factory=dict)
    fresh: bool = False  # needs its own freshly started server (idle: clean RSS)
    timeout: float = 300.0


#: Seconds between protocol pings in the idle cases, for every peer that has pings.
IDLE_PING_INTERVAL = "5"


def build_cases(quick: bool, idle_ping: str = IDLE_PING_INTERVAL,
                idle_window: Optional[float] = None) -> list[Case]:
    cases: list[Case] = []
    if quick:
        idle_ns, fan_ns, burst_ns = [500], [100, 500], [500]
        d, k = 1.5, 20
    else:
        idle_ns, fan_ns, burst_ns = [1000, 5000, 10000], [100, 1000, 5000], [100, 1000, 5000]
        d, k = 10.0, 50
    for n in idle_ns:
        hold = 1.0 if quick else 6.0
        cases.append(Case(f"idle-{n}", "idle", "idle", n,
                          dict(n=n, hold=hold,
                               cpu_window=idle_window or (2.0 if quick else 6.0),
                               cleanup_timeout=60.0 if quick else 180.0,
                               settle_timeout=20.0 if quick else 60.0),
                          fresh=True, timeout=120.0 if quick else 600.0,
                          # Pings every 5 s (the default is 30 s) so that the hold and
                          # CPU windows include the health scheduler at work.
                          env={"BENCH_PING_INTERVAL": idle_ping}))
    for n in fan_ns:
        cases.append(Case(f"fanout-{n}", "fanout", "fanout", n,
                          dict(n=n, duration=d, max_broadcasts=20000)))
    for n in burst_ns:
        cases.append(Case(f"burst-{n}", "burst", "burst", n,
                          dict(n=n, k=k, rounds=2 if quick else 3, duration=d * 2)))
    for c in (1, 50):
        cases.append(Case(f"reqrep-{c}", "reqrep", "reqrep", c,
                          dict(clients=c, duration=d if not quick else 1.5,
                               warmup=0.5 if quick else 1.0)))
    n = 500 if quick else 1000
    cases.append(Case(f"deflate-{n}", "deflate", "fanout", n,
                      dict(n=n, duration=d, deflate=True)))
    cases.append(Case(f"history-{n}", "history", "fanout", n,
                      dict(n=n, duration=d), peers=("jpulse",),
                      env={"BENCH_HISTORY_SIZE": "1000"}, fresh=True))
    # cross-worker fan-out: N clients over W gunicorn workers sharing one Redis
    for xn, w in ([(300, 2)] if quick else [(1000, 2), (1000, 4), (5000, 2), (5000, 4)]):
        cases.append(Case(f"xworker-{xn}-w{w}", "xworker", "fanout", xn,
                          dict(n=xn, duration=d, probe_workers=True, workers=w),
                          peers=("jpulse", "socketio"), workers=w, redis=True, fresh=True))
    sn = 300 if quick else 1000
    cases.append(Case(f"slow-{sn}", "slow", "slow", sn,
                      dict(n=sn, duration=2.0 if quick else 8.0, check_s=1.0 if quick else 3.0,
                           max_slow_s=2.0 if quick else 30.0)))
    # reconnect storm: N sockets over W workers + Redis dropped at once, every client back
    # on its own with the browser client's backoff (picows: one process without Redis, and
    # no cross-process fan-out to check the reconnected sockets with: not run)
    stn, stw = (1000, 2) if quick else (10000, 4)
    cases.append(Case(f"storm-{stn}-w{stw}", "storm", "storm", stn,
                      dict(n=stn, workers=stw, concurrency=250,
                           deadline=60.0 if quick else 120.0),
                      peers=("jpulse", "socketio"), workers=stw, redis=True, fresh=True,
                      # the scenario bounds itself well inside this (open, count, deadline,
                      # probes); the case timeout only guards against a hang
                      timeout=300.0 if quick else 600.0))
    if quick:
        for c in cases:
            if c.family != "storm":
                c.timeout = min(c.timeout, 60.0)
            if c.scenario in ("fanout", "slow"):
                c.params.setdefault("per_timeout", 5.0)
    return cases


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def _kill_all():
    for p in list(_children):
        try:
            _stop_proc(p)
        except Exception as exc:  # noqa: BLE001 - keep killing the others
            print(f"could not stop pid {p.pid}: {exc}", file=sys.stderr)


def _stop_proc(p: subprocess.Popen, grace: float = 5.0):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
    try:
        _children.remove(p)
    except ValueError:  # already removed (re-entered from the signal handler)
        pass


def _on_signal(signum, frame):
    print(f"signal {signum}: stopping servers", file=sys.stderr, flush=True)
    _kill_all()
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, logdir: Path):
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.port = free_port()
        self.log = open(logdir / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _children.append(self.proc)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        _stop_proc(self.proc)
        self.log.close()


class Server:
    """A gunicorn gevent server for one peer."""

    def __init__(self, peer: str, workers: int, env: dict, logdir: Path, tag: str):
        self.peer = peer
        self.workers = workers
        self.port = free_port()
        self.logpath = logdir / f"{peer}-{tag}-{self.port}.log"
        self.log = open(self.logpath, "wb")
        full_env = dict(os.environ)
        full_env.update(env)
        extra = [full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(APPS)] + extra)
        if "script" in PEERS[peer]:  # asyncio peer: one process, no gunicorn
            if workers != 1:
                raise RuntimeError(f"{peer} runs as one process only")
            cmd = [sys.executable, str(APPS / PEERS[peer]["script"]), "--host", "127.0.0.1",
                   "--port", str(self.port)]
        else:
            cmd = [sys.executable, "-m", "gunicorn", "-k", worker_class(peer), "-w", str(workers),
                   "--worker-connections", "20000", "-b", f"127.0.0.1:{self.port}",
                   "--chdir", str(APPS), "--timeout", "600", "--graceful-timeout", "2",
                   "--log-level", "warning", PEERS[peer]["module"]]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)
        _children.append(self.proc)
        self.monitor = lg.PidMonitor(self.proc.pid)

    def wait_ready(self, timeout: float = 30.0):
        t0 = time.monotonic()
        pids = set()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer} server exited ({self.proc.returncode}): "
                                   f"{self.log_tail()}")
            try:
                data = asyncio.run(lg.http_get_json("127.0.0.1", self.port, "/count", 2.0))
                pids.add(data.get("pid"))
                if len(pids) >= self.workers or time.monotonic() - t0 > 10:
                    time.sleep(0.3)
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.peer} server not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            self.log.flush()
            lines = self.logpath.read_text(errors="replace").strip().splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self):
        _stop_proc(self.proc)
        self.log.close()


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------

MAIN_METRIC = {
    "idle": ("kb_per_conn", "lower"),
    "fanout": ("deliveries_per_s", "higher"),
    "burst": ("deliveries_per_s", "higher"),
    "deflate": ("deliveries_per_s", "higher"),
    "history": ("deliveries_per_s", "higher"),
    "xworker": ("deliveries_per_s", "higher"),
    "reqrep": ("replies_per_s", "higher"),
    "slow": ("slow_p99_ms", "lower"),
    "storm": ("p99_ms", "lower"),
}

COLUMNS = {
    "idle": ["connects_per_s", "kb_per_conn", "idle_server_cpu_pct", "cleanup_s", "cpu_settle_s",
             "cleanup_cpu_s", "connect_server_cpu_pct", "connect_loadgen_cpu_pct",
             "other_cpu_pct"],
    "fanout": ["deliveries_per_s", "p50_ms", "p99_ms", "server_us_per_delivery",
               "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct"],
    "burst": ["deliveries_per_s", "p50_ms", "p99_ms", "server_us_per_delivery",
              "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct"],
    "reqrep": ["replies_per_s", "p50_ms", "p99_ms", "server_us_per_reply", "server_cpu_pct",
               "loadgen_cpu_pct", "other_cpu_pct"],
    "slow": ["base_p50_ms", "base_p99_ms", "slow_p50_ms", "slow_p99_ms", "slow_deliveries_per_s",
             "slow_client_close_code", "slow_client_bad_frames", "server_rss_growth_mb",
             "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct"],
    "storm": ["all_back_s", "back", "p50_ms", "p99_ms", "failed_attempts", "alive",
              "server_cpu_pct", "loadgen_cpu_pct", "loadgen_max_lag_ms", "other_cpu_pct"],
}
for _f in ("deflate", "history", "xworker"):
    COLUMNS[_f] = COLUMNS["fanout"] + {"deflate": ["deflate"], "xworker": ["alive"]}.get(_f, [])
#: What the progress line prints per family (default: the first three columns).
BRIEF = {"storm": ["all_back_s", "back", "p50_ms", "p99_ms", "failed_attempts", "alive"]}
#: Also kept as their minimum over repetitions (``<key>_min``): a target that needs every
#: connection alive must not pass on the median of a repetition that lost some.
MIN_KEYS = ("alive", "back")


def _derive(case: Case, res: dict) -> dict:
    """Server CPU cost per delivery/reply: comparable even when the load generator is the
    side that saturated (on 2 cores it often is)."""
    cpu = res.get("server_cpu_pct")
    if cpu is not None:
        if res.get("deliveries_per_s"):
            res["server_us_per_delivery"] = round(cpu / 100.0 / res["deliveries_per_s"] * 1e6, 2)
        if res.get("replies_per_s"):
            res["server_us_per_reply"] = round(cpu / 100.0 / res["replies_per_s"] * 1e6, 2)
    lcpu = res.get("loadgen_cpu_pct")
    bound = []
    if cpu is not None and cpu >= 90.0 * min(case.workers, os.cpu_count() or case.workers):
        bound.append("server")
    if lcpu is not None and lcpu >= 90.0:
        bound.append("loadgen")
    other = res.get("other_cpu_pct")
    if other is not None and other >= NOISY_PCT:
        bound.append(f"noisy({other:.0f}%)")
    res["saturated"] = "+".join(bound) or "-"
    return res


async def _run_case_async(case: Case, target: lg.Target) -> dict:
    fn = lg.SCENARIOS[case.scenario]
    return await asyncio.wait_for(fn(target, **case.params), case.timeout)


async def _drain(target: lg.Target, timeout: float):
    return await lg.drain_server(target, timeout)


#: Families whose load generator client is the hand-rolled one for every peer, whatever
#: ``--client`` says. A storm measures handshakes, and picows' client costs the one load
#: generator process more per handshake than the hand-rolled one: 10,000 reconnects over 4
#: workers had it at 75 % CPU with 1.6 s of loop lag and our server at 82 %, against 40 %,
#: 0.26 s and 149 % with the hand-rolled client (the latencies were the load generator's).
#: The same client on both sides also makes the two peers' rows comparable.
RAW_CLIENT_FAMILIES = ("storm",)


def client_for(case: Case, requested: str) -> str:
    return "raw" if case.family in RAW_CLIENT_FAMILIES else requested


def run_case(case: Case, peer: str, servers: dict, args, logdir: Path, redis: Redis | None,
             tag: str) -> dict:
    key = (peer, case.workers, case.redis, tuple(sorted(case.env.items())))
    env = dict(case.env)
    env.setdefault("BENCH_PING_INTERVAL", "120")
    if case.redis:
        if redis is None:
            return {"error": "redis-server not available"}
        env["BENCH_REDIS_URL"] = redis.url
        env["JPULSE_WS_REDIS_URL"] = redis.url
    reuse = args.quick and not case.fresh
    srv = servers.get(key) if reuse else None
    if srv is not None and srv.proc.poll() is not None:
        srv = None
    if srv is None:
        srv = Server(peer, case.workers, env, logdir, tag)
        try:
            srv.wait_ready()
        except RuntimeError as exc:
            srv.stop()
            return {"error": str(exc)}
        if reuse:
            old = servers.pop(key, None)
            if old is not None:
                old.stop()
            servers[key] = srv
    target = lg.Target(peer, "127.0.0.1", srv.port, monitor=srv.monitor,
                       client=client_for(case, args.client))
    try:
        coro = _run_case_async(case, target)
        res = asyncio.run(coro) if args.loop == "asyncio" else lg.run(coro)
    except asyncio.TimeoutError:
        res = {"error": f"case timed out after {case.timeout}s"}
    except Exception as exc:  # noqa: BLE001 - one failure must not stop the run
        res = {"error": f"{type(exc).__name__}: {exc}"}
    if srv.proc.poll() is not None:
        res.setdefault("error", f"server died: {srv.log_tail()}")
    res = _derive(case, res)
    if reuse and srv.proc.poll() is None and case.workers == 1:
        # leave the shared server empty for the next case
        d = lg.run(_drain(target, 30.0))
        if not d["drained"]:
            res["warning"] = f"server kept {d['left']} connections after the case"
    if not reuse:
        srv.stop()
    return res


def median_summary(runs: list[dict]) -> dict:
    out: dict[str, dict[str, dict]] = {}
    grouped: dict[tuple, list[dict]] = {}
    for r in runs:
        grouped.setdefault((r["case"], r["peer"]), []).append(r["result"])
    for (case, peer), results in grouped.items():
        merged: dict[str, Any] = {"reps": len(results)}
        keys = []
        for res in results:
            for k in res:
                if k not in keys:
                    keys.append(k)
        for k in keys:
            vals = [res[k] for res in results if k in res and res[k] is not None]
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if nums and len(nums) == len(vals):
                merged[k] = round(statistics.median(nums), 3)
                if k in MIN_KEYS:
                    merged[f"{k}_min"] = min(nums)
            elif vals:
                merged[k] = vals[-1]
        errs = [res["error"] for res in results if res.get("error")]
        if errs:
            merged["errors"] = errs
        out.setdefault(case, {})[peer] = merged
    return out


def add_ratios(summary: dict, cases: list[Case]):
    for case in cases:
        if case.name not in summary:
            continue
        metric, _ = MAIN_METRIC[case.family]
        row = summary[case.name]
        for ref in (BASELINE, REFERENCE):
            base = row.get(ref, {}).get(metric)
            for _peer, res in row.items():
                v = res.get(metric)
                if isinstance(base, (int, float)) and base and isinstance(v, (int, float)):
                    res[f"{metric}_vs_{ref}"] = round(v / base, 3)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


# The targets of issue 6, checked against each run: (name, case, metric, how, threshold[,
# requires]).
#   how = "vs:<peer>"  ours / that peer's figure from the same run, at least threshold
#         "p99vs:<peer>" ours / that peer's p99, at most threshold
#         "max" / "min"  our absolute figure at most / at least threshold
#         "of:<case>"    ours / our own figure in that case, at least threshold
#   requires = ((key, of_key), ...): also our key >= our of_key (e.g. alive >= n), in
#         every repetition (the ``<key>_min`` kept by median_summary); missed otherwise
TARGETS = [
    ("fan-out N=1,000 closed loop >= 3x Flask-SocketIO", "fanout-1000", "deliveries_per_s",
     "vs:socketio", 3.0),
    ("fan-out N=1,000 closed loop >= 0.8x asyncio + picows", "fanout-1000", "deliveries_per_s",
     "vs:picows", 0.8),
    ("burst N=1,000 >= 1.5x Flask-SocketIO", "burst-1000", "deliveries_per_s", "vs:socketio",
     1.5),
    ("p99 at N=5,000 closed loop <= 0.15x Flask-SocketIO", "fanout-5000", "p99_ms",
     "p99vs:socketio", 0.15),
    ("request/reply 50 clients >= 5x Flask-SocketIO", "reqrep-50", "replies_per_s",
     "vs:socketio", 5.0),
    ("idle memory <= 30 KB/connection at 10,000 connections", "idle-10000", "kb_per_conn",
     "max", 30.0),
    ("idle CPU < 5% of a core at 10,000 connections", "idle-10000", "idle_server_cpu_pct",
     "max", 5.0),
    ("cleanup of 10,000 vanished clients < 3 s", "idle-10000", "cleanup_s", "max", 3.0),
    ("cross-worker (2 workers, Redis) N=1,000 >= 3x Flask-SocketIO, every connection alive",
     "xworker-1000-w2", "deliveries_per_s", "vs:socketio", 3.0, (("alive", "n"),)),
    ("reconnect storm 10,000 sockets (4 workers, Redis): all back and alive, handshake p99 "
     "<= 0.5x Flask-SocketIO", "storm-10000-w4", "p99_ms", "p99vs:socketio", 0.5,
     (("back", "n"), ("alive", "n"))),
    ("permessage-deflate offered: fan-out within 2x of uncompressed (>= 0.5x)", "deflate-1000",
     "deliveries_per_s", "of:fanout-1000", 0.5),
]


#: Cases renamed since older results.json files were written (for --render).
LEGACY_CASES = {"xworker-1000-w2": "xworker-1000"}


def check_targets(summary: dict, ours: str = "jpulse") -> list[dict]:
    """Each target: our value, the reference, the ratio, met or not (None: no data)."""
    out = []
    for name, case, metric, how, thr, *extra in TARGETS:
        if case not in summary and LEGACY_CASES.get(case) in summary:
            case = LEGACY_CASES[case]
        mine = summary.get(case, {}).get(ours, {}).get(metric)
        row = {"target": name, "case": case, "metric": metric, "value": mine,
               "threshold": thr, "met": None}
        ref = None
        if how.startswith(("vs:", "p99vs:")):
            ref = summary.get(case, {}).get(how.split(":", 1)[1], {}).get(metric)
        elif how.startswith("of:"):
            ref = summary.get(how[3:], {}).get(ours, {}).get(metric)
        if isinstance(mine, (int, float)):
            if how in ("max", "min"):
                row["met"] = mine <= thr if how == "max" else mine >= thr
                if how == "max" and metric == "idle_server_cpu_pct":
                    row["met"] = mine < thr
                elif how == "max" and metric == "cleanup_s":
                    row["met"] = mine < thr
            elif isinstance(ref, (int, float)) and ref:
                ratio = mine / ref
                row["reference"] = ref
                row["ratio"] = round(ratio, 3)
                row["met"] = ratio <= thr if how.startswith("p99vs:") else ratio >= thr
        res = summary.get(case, {}).get(ours, {})
        unmet = []
        for key, of_key in (extra[0] if extra else ()):
            have = res.get(f"{key}_min", res.get(key))
            need = res.get(of_key)
            if isinstance(have, (int, float)) and isinstance(need, (int, float)):
                if have < need:
                    unmet.append(f"{key} {_fmt(have)} of {_fmt(need)}")
            elif res:
                unmet.append(f"{key}: no data")
        if unmet:
            row["unmet"] = "; ".join(unmet)
            if res and not all(u.endswith("no data") for u in unmet):
                row["met"] = False
            elif row["met"]:
                row["met"] = None  # the ratio holds but the requirement was not measured
        out.append(row)
    return out


def targets_markdown(rows: list[dict]) -> list[str]:
    lines = ["## Targets (issue 6)", "",
             "| target | ours | reference | ratio | threshold | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "met", False: "**missed**", None: "no data"}[r["met"]]
        if r.get("unmet"):
            met += f" ({r['unmet']})"
        ratio = f"{r['ratio']:.3f}x" if "ratio" in r else "-"
        lines.append(f"| {r['target']} | {_fmt(r['value'])} | {_fmt(r.get('reference'))} | "
                     f"{ratio} | {r['threshold']} | {met} |")
    lines.append("")
    return lines


def history_cost(summary: dict, ours: str = "jpulse") -> dict | None:
    on = summary.get("history-1000", {}).get(ours, {})
    off = summary.get("fanout-1000", {}).get(ours, {})
    if not on.get("deliveries_per_s") or not off.get("deliveries_per_s"):
        return None
    out = {"off_deliveries_per_s": off["deliveries_per_s"],
           "on_deliveries_per_s": on["deliveries_per_s"],
           "throughput_ratio": round(on["deliveries_per_s"] / off["deliveries_per_s"], 3)}
    for k in ("p99_ms", "server_us_per_delivery"):
        if on.get(k) is not None and off.get(k) is not None:
            out[f"off_{k}"], out[f"on_{k}"] = off[k], on[k]
    return out


def write_markdown(path: Path, meta: dict, summary: dict, cases: list[Case], peers: list[str]):
    lines = [f"# Benchmark results ({meta['mode']}, {meta['started']})", ""]
    lines.append(f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, {meta['platform']}. "
                 f"Repetitions: {meta['repetitions']} (medians shown). Peers alternate within "
                 f"each case. One gunicorn gevent worker unless stated (xworker-N-wK and "
                 f"storm-N-wK: K workers sharing one Redis). Ratios are against "
                 f"{PEERS[BASELINE]['label']} and against {PEERS[REFERENCE]['label']} from the "
                 f"same run.")
    if meta.get("worker_class"):
        shown = ", ".join(f"{PEERS[p]['label']}: `-k {k}`" for p, k in meta["worker_class"].items())
        lines.append("")
        lines.append(f"gunicorn worker class per peer (each as its documentation recommends): "
                     f"{shown}.")
    idle = meta.get("idle") or {"ping_interval_s": float(IDLE_PING_INTERVAL),
                                "cpu_window_s": 2.0 if meta["mode"] == "quick" else 6.0}
    if any(c.family == "idle" for c in cases):
        lines.append("")
        lines.append(f"Idle cases: protocol pings every {idle['ping_interval_s']:g} s for every "
                     f"peer that has them (the health scheduler at work; flask-jpulse-ws' "
                     f"default is 30 s); idle CPU measured over {idle['cpu_window_s']:g} s.")
    lg_meta = meta.get("loadgen")
    if lg_meta:
        lines.append("")
        clients = ", ".join(f"{PEERS[p]['label']}: {c}" for p, c in lg_meta["client"].items())
        lines.append(f"Load generator: one process, event loop {lg_meta['loop']}; WebSocket "
                     f"client per peer: {clients} (picows = its C client with "
                     f"permessage-deflate inflating added; raw = the hand-rolled one; the slow "
                     f"client is always raw for its socket options"
                     + (f", and every client of the {', '.join(lg_meta['raw_client_families'])} "
                        f"cases, where picows' handshake would make the load generator the "
                        f"limit" if lg_meta.get("raw_client_families") else "") + ").")
    lines.append("")
    lines.append("`server_cpu_pct`/`loadgen_cpu_pct`: CPU of the server process tree / of the "
                 "load generator over the measured window (100 = one core). `saturated` says "
                 "which side was at >= 90%. `server_us_per_delivery` is server CPU time per "
                 "delivered message: comparable even when the load generator saturated. "
                 "`other_cpu_pct` is the CPU used by everything else on the machine during "
                 "the window: at >= 25% the row is marked `noisy` (another process competed "
                 "for the 2 cores; rerun on a quiet machine).")
    lines.append("")
    fams: dict[str, list[Case]] = {}
    for c in cases:
        fams.setdefault(c.family, []).append(c)
    titles = {
        "idle": "Idle connections (RSS per connection, connect rate, cleanup after all "
                "clients vanish)",
        "fanout": "Fan-out, closed loop (one broadcast at a time to N clients)",
        "burst": "Fan-out, burst (K broadcasts back to back to N clients)",
        "reqrep": "Request/reply (C clients, each in a closed loop)",
        "deflate": "Fan-out with permessage-deflate offered (as browsers do)",
        "history": "Fan-out, ours with missed-message history on",
        "xworker": "Cross-worker fan-out (xworker-N-wK: K workers, one Redis)",
        "slow": "One slow consumer among N (base = everyone reads; slow = one stopped reading)",
    }
    for fam, fcases in fams.items():
        if fam == "storm":
            lines += storm_markdown(fcases, summary, peers)
            continue
        metric, better = MAIN_METRIC[fam]
        cols = COLUMNS[fam]
        lines.append(f"## {titles.get(fam, fam)}")
        lines.append("")
        ratio_col = f"{metric} vs {BASELINE}"
        ref_col = f"vs {REFERENCE}"
        lines.append("| case | peer | " + " | ".join(cols) + f" | {ratio_col} | {ref_col} "
                     "| saturated |")
        lines.append("|" + "---|" * (len(cols) + 5))
        for c in fcases:
            row = summary.get(c.name, {})
            for p in peers:
                if p not in row:
                    continue
                res = row[p]
                if res.get("errors") and not any(res.get(k) is not None for k in cols):
                    err = str(res["errors"][-1]).replace("\n", " ").replace("|", "/")[:160]
                    lines.append(f"| {c.name} | {PEERS[p]['label']} | error: {err} |"
                                 + " |" * (len(cols) + 2))
                    continue
                vals = [_fmt(res.get(k)) for k in cols]
                ratio = res.get(f"{metric}_vs_{BASELINE}")
                rtxt = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else "-"
                ref = res.get(f"{metric}_vs_{REFERENCE}")
                ftxt = f"{ref:.2f}x" if isinstance(ref, (int, float)) else "-"
                lines.append(f"| {c.name} | {PEERS[p]['label']} | " + " | ".join(vals)
                             + f" | {rtxt} | {ftxt} | {res.get('saturated', '-')} |")
        lines.append("")
        lines.append(f"({metric}: {better} is better.)")
        lines.append("")
    if "jpulse" in peers:
        lines += targets_markdown(check_targets(summary))
        hc = history_cost(summary)
        if hc:
            lines.append(f"History on (history_size=1000) vs off, N=1,000 closed loop: "
                         f"{_fmt(hc['on_deliveries_per_s'])} vs {_fmt(hc['off_deliveries_per_s'])}"
                         f" deliveries/s ({hc['throughput_ratio']:.2f}x); server CPU per delivery "
                         f"{_fmt(hc.get('on_server_us_per_delivery'))} vs "
                         f"{_fmt(hc.get('off_server_us_per_delivery'))} us.")
            lines.append("")
    errors = [(c, p, e) for c, row in summary.items() for p, r in row.items()
              for e in r.get("errors", [])]
    if errors:
        lines.append("## Errors")
        lines.append("")
        for c, p, e in errors:
            lines.append(f"- {c} / {p}: {str(e).strip().splitlines()[-1][:300] if e else e}")
        lines.append("")
    path.write_text("\n".join(lines))


#: The storm table: (label, key) rows, peers side by side.
STORM_ROWS = [
    ("all N back after (s, from the drop)", "all_back_s"),
    ("back when the storm phase ended (all back or the deadline)", "back"),
    ("back, worst repetition", "back_min"),
    ("first attempt / first back after (s)", ("first_try_s", "first_back_s")),
    ("reconnect handshake p50 (ms)", "p50_ms"),
    ("reconnect handshake p99 (ms)", "p99_ms"),
    ("reconnect handshake max (ms)", "max_ms"),
    ("of which until the 101: p50 (ms)", "upgrade_p50_ms"),
    ("of which until the 101: p99 (ms)", "upgrade_p99_ms"),
    ("handshakes in flight at the peak", "peak_in_flight"),
    ("handshake attempts", "reconnect_attempts"),
    ("failed attempts", "failed_attempts"),
    ("failed attempts by kind", "failures_by_kind"),
    ("clients that needed more than one attempt", "clients_retried"),
    ("gave up / stopped by a close code", ("gave_up", "stopped_by_close_code")),
    ("closed again after reconnecting (by code)", "closed_after_welcome"),
    ("alive at the end (got a broadcast)", "alive"),
    ("alive at the end, worst repetition", "alive_min"),
    ("server count at the end", "server_count_end"),
    ("initial connect: connected / seconds", ("connected", "connect_s")),
    ("server CPU, first attempt to all back (%)", "server_cpu_pct"),
    ("load generator CPU (%) / its max loop lag (ms)", ("loadgen_cpu_pct", "loadgen_max_lag_ms")),
    ("other processes' CPU (%)", "other_cpu_pct"),
    ("saturated", "saturated"),
]


def _cell(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "none"
    return _fmt(v).replace("|", "/")


def storm_markdown(cases: list[Case], summary: dict, peers: list[str]) -> list[str]:
    """Reconnect storms: one table per case, the peers side by side, and the handshake p99
    ratio (ours / Flask-SocketIO) against its target."""
    lines = ["## Reconnect storm (all sockets dropped at once, every client back on its "
             "own with jpulse-ws.js' backoff)", ""]
    ours = "jpulse"
    for c in cases:
        row = summary.get(c.name, {})
        shown = [p for p in peers if p in row]
        if not shown:
            continue
        both = ours in row and BASELINE in row
        head = [PEERS[p]["label"] for p in shown] + ([f"ours / {PEERS[BASELINE]['label']}"]
                                                      if both else [])
        lines.append(f"### {c.name}: N = {c.x:,}, {c.workers} workers, one Redis, deadline "
                     f"{c.params.get('deadline', 0):g} s")
        lines.append("")
        lines.append("| | " + " | ".join(head) + " |")
        lines.append("|---|" + "---|" * len(head))
        if any(row[p].get("errors") for p in shown):
            cells = []
            for p in shown:
                errs = row[p].get("errors") or []
                last = str(errs[-1]).replace("\n", " ").replace("|", "/")[:160] if errs else ""
                cells.append(f"{len(errs)} of {row[p].get('reps', '?')} repetitions: {last}"
                             if errs else "-")
            lines.append("| errors | " + " | ".join(cells) + (" | |" if both else " |"))
        for label, key in STORM_ROWS:
            keys = key if isinstance(key, tuple) else (key,)
            cells = []
            for p in shown:
                vals = [row[p].get(k) for k in keys]
                if key == "all_back_s" and vals[0] is None and row[p].get("back") is not None:
                    cells.append("**not all back**")
                    continue
                cells.append(" / ".join(_cell(v) for v in vals))
            if all(x in ("-", "- / -") for x in cells):
                continue
            ratio = ""
            if both and isinstance(key, str) and key.endswith("_ms"):
                a, b = row[ours].get(key), row[BASELINE].get(key)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                    ratio = f"{a / b:.2f}x"
            lines.append(f"| {label} | " + " | ".join(cells)
                         + (f" | {ratio} |" if both else " |"))
        if both:
            a, b = row[ours].get("p99_ms"), row[BASELINE].get("p99_ms")
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                r = a / b
                verdict = "met" if r <= 0.5 else "**missed**"
                rtxt = f"{r:.2f}x (target <= 0.5: {verdict})"
            else:
                rtxt = "no data"
            lines.append(f"| **handshake p99, ours / {PEERS[BASELINE]['label']}** | "
                         + " | ".join("" for _ in shown) + f" | {rtxt} |")
        lines.append("")
        for p in shown:
            if row[p].get("warning"):
                lines.append(f"- {PEERS[p]['label']}: {row[p]['warning']}")
        if any(row[p].get("warning") for p in shown):
            lines.append("")
    lines.append("Handshake latency: from the TCP connect to the application-level welcome "
                 "(ours: the `connected` frame; Flask-SocketIO: the `40` connect ack), of the "
                 "successful reconnects only (\"until the 101\": the HTTP upgrade answer; the "
                 "rest is the welcome); failed attempts are counted by kind "
                 "(`http_<status>`, `timeout`, `reset`, `refused`, `closed_<code>` before the "
                 "welcome, ...). `alive` = open connections that received one broadcast sent "
                 "after the storm. CPU figures cover the reconnect window (first attempt to all "
                 "back or the deadline); a load generator loop lag of hundreds of ms means the "
                 "one client process could not keep up and its queueing is in the latencies.")
    lines.append("")
    return lines


def write_charts(outdir: Path, prefix: str, summary: dict, cases: list[Case],
                 peers: list[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    colors = {"jpulse": "tab:blue", "socketio": "tab:orange", "flasksock": "tab:green",
              "picows": "tab:purple"}

    def series(family, metric):
        """{(peer, workers): [(x, value), ...]}: one line per peer and worker count, so that
        several cases of a family at the same x (xworker-1000-w2, -w4) do not mix."""
        out: dict[tuple, list] = {}
        for p in peers:
            for c in cases:
                if c.family != family:
                    continue
                v = summary.get(c.name, {}).get(p, {}).get(metric)
                if isinstance(v, (int, float)):
                    out.setdefault((p, c.workers), []).append((c.x, v))
        return {k: sorted(pts) for k, pts in out.items()}

    charts = [
        ("fanout_throughput.png", "Fan-out deliveries/s vs N", "clients N", "deliveries/s",
         [("fanout", "deliveries_per_s", "-", "closed loop"),
          ("burst", "deliveries_per_s", "--", "burst")], False),
        ("fanout_p99.png", "Fan-out p99 latency vs N", "clients N", "p99 latency (ms)",
         [("fanout", "p99_ms", "-", "closed loop"), ("burst", "p99_ms", "--", "burst")], True),
        ("idle_memory.png", "Server memory vs idle connections", "connections",
         "RSS growth (MB)", [("idle", "_rss_growth", "-", "")], False),
        ("xworker_throughput.png", "Cross-worker fan-out deliveries/s vs N (Redis)",
         "clients N", "deliveries/s", [("xworker", "deliveries_per_s", "-", "")], False),
    ]
    for c in cases:  # derived metric for the memory chart
        for res in summary.get(c.name, {}).values():
            if "rss_after_mb" in res and "rss_before_mb" in res:
                res["_rss_growth"] = round(res["rss_after_mb"] - res["rss_before_mb"], 1)
    for fname, title, xl, yl, specs, logy in charts:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        any_data = False
        for fam, metric, style, lab in specs:
            lines_ = series(fam, metric)
            several = len({w for _, w in lines_}) > 1
            wstyles = {}
            for (p, w), pts in lines_.items():
                xs, ys = zip(*pts)
                tags = [lab] if lab else []
                if several or w > 1:
                    tags.append(f"{w} workers")
                label = PEERS[p]["label"] + (f" ({', '.join(tags)})" if tags else "")
                ls = style if not several else wstyles.setdefault(
                    w, ["-", "--", ":", "-."][len(wstyles) % 4])
                ax.plot(xs, ys, ls, marker="o", color=colors.get(p), label=label)
                any_data = True
        if not any_data:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = outdir / f"{prefix}{fname}"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path.name)
    for c in cases:
        for res in summary.get(c.name, {}).values():
            res.pop("_rss_growth", None)
    return written


def _versions() -> dict:
    out = {}
    from importlib import metadata

    for name in ("flask", "gevent", "gunicorn", "flask-socketio", "python-socketio",
                 "python-engineio", "flask-sock", "simple-websocket", "orjson",
                 "picows", "uvloop", "flask-jpulse-ws"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _source_state() -> dict:
    """The commit measured and whether the package had uncommitted changes (read-only git)."""
    out = {}
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True, timeout=10
                                       ).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "flask_jpulse_ws"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        out["package_dirty"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the flask-jpulse-ws benchmark suite.")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, one repetition, shared servers (< 2 minutes)")
    ap.add_argument("--only", default="",
                    help="comma-separated families, case names or case-name prefixes (idle, "
                         "fanout, burst, reqrep, deflate, history, xworker, slow, storm, or e.g. "
                         "fanout-1000, xworker-1000 = xworker-1000-w2 and -w4, "
                         "xworker-5000-w4)")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--client", choices=("auto", "raw"), default="auto",
                    help="load generator client: auto = picows' C client for every peer but "
                         "socketio (and for deflate), raw = the hand-rolled one everywhere")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="load generator event loop (default uvloop when installed)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop starting new cases after this long (default 90; quick 3)")
    ap.add_argument("--idle-ping", default=IDLE_PING_INTERVAL, metavar="SECONDS",
                    help=f"ping interval of the idle cases (default {IDLE_PING_INTERVAL})")
    ap.add_argument("--idle-window", type=float, default=None, metavar="SECONDS",
                    help="idle CPU measuring window (default 6; quick 2)")
    ap.add_argument("--name", default=None,
                    help="publish the summary as NAME.md/.json/-*.png in --out instead of "
                         "latest / partial-latest / quick-latest")
    ap.add_argument("--render", metavar="RUNDIR",
                    help="only re-render results.md, the charts and the *latest* copies from "
                         "RUNDIR/results.json (no measurement)")
    args = ap.parse_args(argv)
    if args.render:
        return render(Path(args.render), Path(args.out))

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (choose from {', '.join(PEERS)})")
    reps = args.reps or (1 if args.quick else 3)
    max_s = 60 * (args.max_minutes or (3 if args.quick else 90))
    cases = build_cases(args.quick, args.idle_ping, args.idle_window)
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        cases = [c for c in cases if c.family in wanted or c.name in wanted
                 or any(c.name.startswith(w + "-") for w in wanted)]
        if not cases:
            ap.error(f"--only {args.only!r} matches no case")
    cases = [c for c in cases if any(p in peers for p in c.peers)]

    lg.raise_nofile()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(_kill_all)

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "quick" if args.quick else "full"
    outroot = Path(args.out)
    rundir = outroot / "runs" / f"{stamp}-{mode}"
    logdir = rundir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)

    meta = {
        "mode": mode,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "repetitions": reps,
        "peers": peers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": _versions(),
        "worker_class": {p: worker_class(p) for p in peers if "worker" in PEERS[p]},
        "source": _source_state(),
        "loadgen": {"loop": args.loop if lg.uvloop is not None else "asyncio",
                    "client": {p: ("picows" if args.client == "auto" and p in lg.PICOWS_DIALECTS
                                   else "raw") for p in peers},
                    "raw_client_families": list(RAW_CLIENT_FAMILIES)},
        "cases": [c.name for c in cases],
        "idle": {"ping_interval_s": float(args.idle_ping),
                 "cpu_window_s": args.idle_window or (2.0 if args.quick else 6.0)},
    }
    if args.name:
        meta["name"] = args.name
    t_start = time.monotonic()
    redis = None
    if any(c.redis for c in cases):
        try:
            redis = Redis(logdir)
        except RuntimeError as exc:
            print(f"warning: {exc}; cross-worker cases will report an error", file=sys.stderr)
    runs: list[dict] = []
    servers: dict = {}
    unavailable: dict[str, str] = {}
    stopped_early = False
    try:
        for rep in range(reps):
            order = peers[rep % len(peers):] + peers[:rep % len(peers)]
            for case in cases:
                for peer in order:
                    if peer not in case.peers:
                        continue
                    if time.monotonic() - t_start > max_s:
                        stopped_early = True
                        break
                    if peer in unavailable:
                        res = {"error": f"peer unavailable: {unavailable[peer]}"}
                    else:
                        t0 = time.monotonic()
                        res = run_case(case, peer, servers, args, logdir, redis,
                                       f"{case.name}-r{rep}")
                        res["wall_s"] = round(time.monotonic() - t0, 1)
                        err = res.get("error", "")
                        if "server exited" in err or "not ready" in err:
                            unavailable[peer] = err.splitlines()[-1][:300]
                    runs.append({"rep": rep, "case": case.name, "family": case.family,
                                 "peer": peer, "result": res})
                    brief = {k: res.get(k) for k in
                             (BRIEF.get(case.family, COLUMNS[case.family][:3])
                              + ["server_cpu_pct", "loadgen_cpu_pct"])}
                    line = ", ".join(f"{k}={_fmt(v)}" for k, v in brief.items() if v is not None)
                    if res.get("failures_by_kind"):
                        line += f", failures={_cell(res['failures_by_kind'])}"
                    if res.get("warning"):
                        line += f"  WARNING: {res['warning']}"
                    if res.get("error"):
                        line += f"  ERROR: {str(res['error']).splitlines()[-1][:200]}"
                    print(f"[rep {rep + 1}/{reps}] {case.name:<16} {peer:<9} {line}", flush=True)
                if stopped_early:
                    break
            if stopped_early:
                print("time budget reached: stopping early", flush=True)
                break
    finally:
        for s in list(servers.values()):
            s.stop()
        if redis is not None:
            redis.stop()
        _kill_all()

    summary = median_summary(runs)
    add_ratios(summary, cases)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["stopped_early"] = stopped_early
    meta["only"] = args.only
    data = {"meta": meta, "summary": summary, "runs": runs}
    if "jpulse" in peers:
        data["targets"] = check_targets(summary)
        data["history_cost"] = history_cost(summary)
    (rundir / "results.json").write_text(json.dumps(data, indent=2))
    return publish(rundir, outroot, data, cases, peers)


def publish(rundir: Path, outroot: Path, data: dict, cases: list[Case], peers: list[str]) -> int:
    meta, summary = data["meta"], data["summary"]
    write_markdown(rundir / "results.md", meta, summary, cases, peers)
    charts = write_charts(rundir, "", summary, cases, peers)
    # the committed summary: latest full run (latest.*); quick runs go to quick-latest.*
    # (a full run cut short by --only, --peers, --reps or the time budget: partial-latest.*)
    # (2 repetitions count as complete: with 4 peers, 3 do not fit a ~35-minute budget)
    complete = (not meta.get("only") and not meta.get("stopped_early")
                and meta["repetitions"] >= 2 and set(peers) == set(PEERS)
                and meta["cases"] == [c.name for c in build_cases(False)])
    quick = meta["mode"] == "quick"
    prefix = meta.get("name") or (
        "quick-latest" if quick else ("latest" if complete else "partial-latest"))
    shutil.copy(rundir / "results.json", outroot / f"{prefix}.json")
    shutil.copy(rundir / "results.md", outroot / f"{prefix}.md")
    for ch in charts:
        shutil.copy(rundir / ch, outroot / f"{prefix}-{ch}")
    print(f"\nwrote {rundir}/ (results.json, results.md, {', '.join(charts) or 'no charts'})")
    print(f"and {outroot}/{prefix}.md / .json / -*.png; elapsed {meta['elapsed_s']} s\n")
    print((rundir / "results.md").read_text())
    return 0


def _legacy_case(name: str, family: str) -> Case:
    """A case of an older run that the current build_cases no longer has (e.g. the
    2-worker ``xworker-1000`` before the worker count joined the name), for --render."""
    m = re.search(r"-(\d+)", name)
    w = re.search(r"-w(\d+)$", name)
    workers = int(w.group(1)) if w else (2 if family == "xworker" else 1)
    return Case(name, family, family if family in lg.SCENARIOS else "fanout",
                int(m.group(1)) if m else 0, {}, workers=workers)


def render(rundir: Path, outroot: Path) -> int:
    """Re-render a finished run (results.json) with the current report code."""
    data = json.loads((rundir / "results.json").read_text())
    meta = data["meta"]
    known = {c.name: c for c in build_cases(meta["mode"] == "quick")}
    families = {r["case"]: r["family"] for r in data["runs"]}
    cases = [known.get(n) or _legacy_case(n, families[n]) for n in meta["cases"]
             if n in known or n in families]
    peers = meta["peers"]
    data["summary"] = median_summary(data["runs"])
    add_ratios(data["summary"], cases)
    if "jpulse" in peers:
        data["targets"] = check_targets(data["summary"])
        data["history_cost"] = history_cost(data["summary"])
    (rundir / "results.json").write_text(json.dumps(data, indent=2))
    return publish(rundir, outroot, data, cases, peers)


if __name__ == "__main__":
    sys.exit(main())
