"""Benchmark runner: flask-jpulse-ws against Flask-SocketIO and a plain flask-sock loop.

Starts each peer's app (benchmarks/apps/) as ``gunicorn -k gevent -w 1
--worker-connections 20000`` on a free loopback port, runs the scenarios against the peers
alternately (the peer order rotates every repetition), repeats three times, and writes
medians, ratios against Flask-SocketIO from the same run, and each side's CPU to
``benchmarks/results/``: a JSON file, a markdown table and PNG charts.

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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import loadgen as lg  # noqa: E402

PEERS = {
    "jpulse": {"module": "jpulse_app:app", "label": "flask-jpulse-ws"},
    "socketio": {"module": "socketio_app:app", "label": "Flask-SocketIO"},
    "flasksock": {"module": "flasksock_app:app", "label": "flask-sock loop"},
}
BASELINE = "socketio"
NOISY_PCT = 25.0  # other processes used this much CPU during a measured window


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str  # e.g. "fanout-1000"
    family: str  # idle | fanout | burst | reqrep | xworker | slow | deflate | history
    scenario: str  # loadgen scenario function
    x: int  # N or clients (for charts)
    params: dict
    peers: tuple = ("jpulse", "socketio", "flasksock")
    workers: int = 1
    redis: bool = False
    env: dict = field(default_factory=dict)
    fresh: bool = False  # needs its own freshly started server (idle: clean RSS)
    timeout: float = 300.0


def build_cases(quick: bool) -> list[Case]:
    cases: list[Case] = []
    if quick:
        idle_ns, fan_ns, burst_ns = [500], [100, 500], [500]
        d, k = 1.5, 20
    else:
        idle_ns, fan_ns, burst_ns = [1000, 5000, 10000], [100, 1000, 5000], [100, 1000, 5000]
        d, k = 10.0, 50
    for n in idle_ns:
        hold = 1.0 if quick else 10.0
        cases.append(Case(f"idle-{n}", "idle", "idle", n,
                          dict(n=n, hold=hold, cpu_window=2.0 if quick else 10.0,
                               cleanup_timeout=60.0 if quick else 180.0,
                               settle_timeout=20.0 if quick else 60.0),
                          fresh=True, timeout=120.0 if quick else 600.0))
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
    xn = 300 if quick else 1000
    cases.append(Case(f"xworker-{xn}", "xworker", "fanout", xn,
                      dict(n=xn, duration=d, probe_workers=True), peers=("jpulse", "socketio"),
                      workers=2, redis=True, fresh=True))
    sn = 300 if quick else 1000
    cases.append(Case(f"slow-{sn}", "slow", "slow", sn,
                      dict(n=sn, duration=2.0 if quick else 8.0, check_s=1.0 if quick else 3.0,
                           max_slow_s=2.0 if quick else 30.0)))
    if quick:
        for c in cases:
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
        cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
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
}
for _f in ("deflate", "history", "xworker"):
    COLUMNS[_f] = COLUMNS["fanout"] + (["deflate"] if _f == "deflate" else [])


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
    if cpu is not None and cpu >= 90.0 * case.workers:
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
    target = lg.Target(peer, "127.0.0.1", srv.port, monitor=srv.monitor)
    try:
        res = asyncio.run(_run_case_async(case, target))
    except asyncio.TimeoutError:
        res = {"error": f"case timed out after {case.timeout}s"}
    except Exception as exc:  # noqa: BLE001 - one failure must not stop the run
        res = {"error": f"{type(exc).__name__}: {exc}"}
    if srv.proc.poll() is not None:
        res.setdefault("error", f"server died: {srv.log_tail()}")
    res = _derive(case, res)
    if reuse and srv.proc.poll() is None and case.workers == 1:
        # leave the shared server empty for the next case
        d = asyncio.run(_drain(target, 30.0))
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
        base = row.get(BASELINE, {}).get(metric)
        for _peer, res in row.items():
            v = res.get(metric)
            if isinstance(base, (int, float)) and base and isinstance(v, (int, float)):
                res[f"{metric}_vs_{BASELINE}"] = round(v / base, 3)


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


def write_markdown(path: Path, meta: dict, summary: dict, cases: list[Case], peers: list[str]):
    lines = [f"# Benchmark results ({meta['mode']}, {meta['started']})", ""]
    lines.append(f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, {meta['platform']}. "
                 f"Repetitions: {meta['repetitions']} (medians shown). Peers alternate within "
                 f"each case. One gunicorn gevent worker unless stated (xworker: 2 workers + "
                 f"Redis). Ratios are against {PEERS[BASELINE]['label']} from the same run.")
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
        "xworker": "Cross-worker fan-out (2 workers, Redis)",
        "slow": "One slow consumer among N (base = everyone reads; slow = one stopped reading)",
    }
    for fam, fcases in fams.items():
        metric, better = MAIN_METRIC[fam]
        cols = COLUMNS[fam]
        lines.append(f"## {titles.get(fam, fam)}")
        lines.append("")
        ratio_col = f"{metric} vs {BASELINE}"
        lines.append("| case | peer | " + " | ".join(cols) + f" | {ratio_col} | saturated |")
        lines.append("|" + "---|" * (len(cols) + 4))
        for c in fcases:
            row = summary.get(c.name, {})
            for p in peers:
                if p not in row:
                    continue
                res = row[p]
                if res.get("errors") and not any(res.get(k) is not None for k in cols):
                    err = str(res["errors"][-1]).replace("\n", " ").replace("|", "/")[:160]
                    lines.append(f"| {c.name} | {PEERS[p]['label']} | error: {err} |"
                                 + " |" * (len(cols) + 1))
                    continue
                vals = [_fmt(res.get(k)) for k in cols]
                ratio = res.get(f"{metric}_vs_{BASELINE}")
                rtxt = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else "-"
                lines.append(f"| {c.name} | {PEERS[p]['label']} | " + " | ".join(vals)
                             + f" | {rtxt} | {res.get('saturated', '-')} |")
        lines.append("")
        lines.append(f"({metric}: {better} is better.)")
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


def write_charts(outdir: Path, prefix: str, summary: dict, cases: list[Case],
                 peers: list[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    colors = {"jpulse": "tab:blue", "socketio": "tab:orange", "flasksock": "tab:green"}

    def series(family, metric):
        out = {}
        for p in peers:
            pts = []
            for c in cases:
                if c.family != family:
                    continue
                v = summary.get(c.name, {}).get(p, {}).get(metric)
                if isinstance(v, (int, float)):
                    pts.append((c.x, v))
            if pts:
                out[p] = sorted(pts)
        return out

    charts = [
        ("fanout_throughput.png", "Fan-out deliveries/s vs N", "clients N", "deliveries/s",
         [("fanout", "deliveries_per_s", "-", "closed loop"),
          ("burst", "deliveries_per_s", "--", "burst")], False),
        ("fanout_p99.png", "Fan-out p99 latency vs N", "clients N", "p99 latency (ms)",
         [("fanout", "p99_ms", "-", "closed loop"), ("burst", "p99_ms", "--", "burst")], True),
        ("idle_memory.png", "Server memory vs idle connections", "connections",
         "RSS growth (MB)", [("idle", "_rss_growth", "-", "")], False),
    ]
    for c in cases:  # derived metric for the memory chart
        for res in summary.get(c.name, {}).values():
            if "rss_after_mb" in res and "rss_before_mb" in res:
                res["_rss_growth"] = round(res["rss_after_mb"] - res["rss_before_mb"], 1)
    for fname, title, xl, yl, specs, logy in charts:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        any_data = False
        for fam, metric, style, lab in specs:
            for p, pts in series(fam, metric).items():
                xs, ys = zip(*pts)
                label = PEERS[p]["label"] + (f" ({lab})" if lab else "")
                ax.plot(xs, ys, style, marker="o", color=colors.get(p), label=label)
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
                 "flask-jpulse-ws"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the flask-jpulse-ws benchmark suite.")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, one repetition, shared servers (< 2 minutes)")
    ap.add_argument("--only", default="",
                    help="comma-separated families or case names (idle, fanout, burst, reqrep, "
                         "deflate, history, xworker, slow, or e.g. fanout-1000)")
    ap.add_argument("--peers", default="jpulse,socketio,flasksock")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop starting new cases after this long (default 90; quick 3)")
    args = ap.parse_args(argv)

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (choose from {', '.join(PEERS)})")
    reps = args.reps or (1 if args.quick else 3)
    max_s = 60 * (args.max_minutes or (3 if args.quick else 90))
    cases = build_cases(args.quick)
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        cases = [c for c in cases if c.family in wanted or c.name in wanted]
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
        "cases": [c.name for c in cases],
    }
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
                             (COLUMNS[case.family][:3] + ["server_cpu_pct", "loadgen_cpu_pct"])}
                    line = ", ".join(f"{k}={_fmt(v)}" for k, v in brief.items() if v is not None)
                    if res.get("error"):
                        line += f"  ERROR: {str(res['error']).splitlines()[-1][:200]}"
                    print(f"[rep {rep + 1}/{reps}] {case.name:<13} {peer:<9} {line}", flush=True)
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
    data = {"meta": meta, "summary": summary, "runs": runs}
    (rundir / "results.json").write_text(json.dumps(data, indent=2))
    write_markdown(rundir / "results.md", meta, summary, cases, peers)
    charts = write_charts(rundir, "", summary, cases, peers)
    # the committed summary: latest full run (latest.*); quick runs go to quick-latest.*
    # (a full run cut short by --only, --peers, --reps or the time budget: partial-latest.*)
    complete = (not args.only and not stopped_early and reps >= 3
                and set(peers) == set(PEERS))
    prefix = "quick-latest" if args.quick else ("latest" if complete else "partial-latest")
    shutil.copy(rundir / "results.json", outroot / f"{prefix}.json")
    shutil.copy(rundir / "results.md", outroot / f"{prefix}.md")
    for ch in charts:
        shutil.copy(rundir / ch, outroot / f"{prefix}-{ch}")
    print(f"\nwrote {rundir}/ (results.json, results.md, {', '.join(charts) or 'no charts'})")
    print(f"and {outroot}/{prefix}.md / .json / -*.png; elapsed {meta['elapsed_s']} s\n")
    print((rundir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
