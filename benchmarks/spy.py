"""Profile one benchmark case on the server side with py-spy: where the worker spends its time.

Starts the peer's server (as run.py does: one gunicorn gevent worker), drives the case with
the load generator, and samples the worker process with ``py-spy record`` for a window in
the middle of the load; the worker's user/system CPU is measured over the same window (on
loopback most of a fan-out is the kernel's ``send``, which py-spy shows as the Python line
that calls it). Writes to ``benchmarks/results/profiles/``:

- ``<peer>-<case>.md``: the CPU budget per message (each sample in one category, see
  budget.py, in µs of worker CPU per reply or delivery), the top frames by own time
  (function and file:line), the same summed per function, and the top functions by
  inclusive time, with the load generator's figures;
- ``<peer>-<case>.svg``: a flame graph of the same samples (flamegraph.py);
- ``<peer>-<case>.txt``: py-spy's raw collapsed stacks (also for flamegraph.pl or speedscope);
- ``<peer>-<case>.json``: the load result, the worker's CPU over the window and what the
  report needs to be rendered again (``--from-raw``, no server).

    pip install py-spy
    python benchmarks/spy.py fanout-1000
    python benchmarks/spy.py reqrep-50 --native      # C frames too (see the caveat)
    python benchmarks/spy.py --from-raw benchmarks/results/profiles/jpulse-reqrep-50.txt

``--native`` resolves C extension frames (greenlet creation, gc, libc), but py-spy cannot
unwind every stack across a greenlet switch, so it loses part of the samples: use it to
break down a Python line, not for the shares. py-spy needs ptrace rights (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import budget  # noqa: E402
import flamegraph  # noqa: E402
import loadgen as lg  # noqa: E402
import run as runner  # noqa: E402

OUT = HERE / "results" / "profiles"
_FRAME = flamegraph.FRAME
#: The load generator's figure a case's messages are counted by, and their name.
RATES = {"reqrep": ("replies_per_s", "reply"), "fanout": ("deliveries_per_s", "delivery"),
         "burst": ("deliveries_per_s", "delivery")}


def _pyspy() -> str | None:
    """py-spy from PATH or from this interpreter's bin/ (a venv not activated)."""
    here = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(here) if here.exists() else None)


_short = flamegraph.short


def summarize(text: str, top: int) -> tuple[int, list, list, list]:
    own: collections.Counter = collections.Counter()
    own_fn: collections.Counter = collections.Counter()
    incl_fn: collections.Counter = collections.Counter()
    total = 0
    for frames, k in flamegraph.parse(text):
        total += k
        own[frames[-1]] += k
        seen = set()
        for i, f in enumerate(frames):
            m = _FRAME.match(f)
            fn = f"{m.group(1)} ({m.group(2)})" if m else f
            if i == len(frames) - 1:
                own_fn[fn] += k
            if fn not in seen:
                seen.add(fn)
                incl_fn[fn] += k
    return total, own.most_common(top), own_fn.most_common(top), incl_fn.most_common(top + 10)


def _source_line(frame: str) -> str:
    """The text of the sampled line (line numbers move as the code changes)."""
    m = _FRAME.match(frame)
    if not m:
        return ""
    path, line = m.group(2), int(m.group(3))
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    for cand in (Path(path), HERE.parent / path, HERE / "apps" / path, site / path):
        if cand.is_file():
            try:
                text = cand.read_text(errors="replace").splitlines()[line - 1].strip()
            except (OSError, IndexError):
                return ""
            return text.replace("|", "\\|").replace("`", "'")[:90]
    return ""


def _table(rows, total, head, with_source=False):
    cols = "| # | {} % | samples | frame |" + (" source line |" if with_source else "")
    out = [cols.format(head), "|---|---|---|---|" + ("---|" if with_source else "")]
    for i, (k, v) in enumerate(rows, 1):
        name = _short(k) if k else "(no Python frame: greenlet switch / hub in C)"
        row = f"| {i} | {100.0 * v / total:.1f} | {v} | `{name}` |"
        if with_source:
            src = _source_line(k)
            row += f" `{src}` |" if src else " |"
        out.append(row)
    return out


async def _drive(case: str, target: lg.Target, worker_pid: int, lead: float, window: float,
                 rate: int, native: bool, raw: Path) -> dict:
    import psutil

    family, _, size = case.partition("-")
    size_n = int(size or 1000)
    duration = lead + window + 3.0
    if family == "fanout":
        coro = lg.scenario_fanout(target, size_n, duration=duration, max_broadcasts=10**6)
    elif family == "burst":
        coro = lg.scenario_burst(target, size_n, k=50, rounds=10**4, duration=duration)
    elif family == "reqrep":
        coro = lg.scenario_reqrep(target, size_n, duration=duration)
    else:
        raise SystemExit(f"unsupported case {case!r} (fanout-N, burst-N, reqrep-C)")
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(lead)
    proc = psutil.Process(worker_pid)
    c0 = proc.cpu_times()
    t0 = time.perf_counter()
    cmd = [_pyspy() or "py-spy", "record", "-f", "raw", "-o", str(raw),
           "--pid", str(worker_pid), "--duration", str(int(window)), "--rate", str(rate),
           # Stopping the process for each sample skids to its next system call: the
           # reader's recv got 34 % of a request/reply profile that way, 8 % without.
           "--nonblocking"]
    if native:
        cmd.append("--native")
    spy = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(spy.communicate(), window + 30)
    wall = time.perf_counter() - t0
    c1 = proc.cpu_times()
    res = await asyncio.wait_for(task, duration + 120)
    res["profile_window_s"] = round(wall, 2)
    res["worker_user_pct"] = round(100 * (c1.user - c0.user) / wall, 1)
    res["worker_sys_pct"] = round(100 * (c1.system - c0.system) / wall, 1)
    res["py_spy"] = out.decode(errors="replace").strip().splitlines()[-2:]
    return res


def _guess_meta(raw: Path, res: dict) -> dict:
    """case, peer, native, command and timestamp of a profile whose .json has none (written
    by spy.py before it recorded them): from the file name ``<peer>-<case>[-native]``."""
    stem, native = raw.stem, raw.stem.endswith("-native")
    peer = next((p for p in runner.PEERS if stem.startswith(p + "-")), None)
    case = (stem[len(peer) + 1:] if peer else stem).removesuffix("-native")
    peer = peer or "jpulse"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(raw.stat().st_mtime))
    return {"case": case, "peer": peer, "native": native, "command": _command(case, peer, native),
            "timestamp": when, **res}


def _command(case: str, peer: str, native: bool) -> str:
    return (f"python benchmarks/spy.py {case}" + (f" --peer {peer}" if peer != "jpulse" else "")
            + (" --native" if native else ""))


def _budget(text: str, res: dict) -> list[str]:
    """The per-message CPU budget: the shares of the samples, times the worker's CPU per
    message (its user + system CPU over the window / the case's messages per second)."""
    key, unit = RATES.get(res["case"].partition("-")[0], ("deliveries_per_s", "delivery"))
    rate = res.get(key)
    cpu = (res.get("worker_user_pct") or 0) + (res.get("worker_sys_pct") or 0)
    lines = [f"## CPU budget per {unit}", ""]
    lines += budget.table(text, cpu, rate or 0.0, unit)
    return lines + [
        "", "py-spy leaves idle samples out: the shares are of the worker's busy time. "
        f"µs per {unit} = share x the worker's user + system CPU over the window "
        f"({cpu:.1f} % of a core) / {key} over the case ({rate}). Each sample counts in the "
        "first category that names one of its frames, innermost first (benchmarks/budget.py)."]


def report(raw: Path, res: dict, top: int) -> str:
    """Write ``<stem>.md`` and ``<stem>.svg`` next to the raw stacks; returns the markdown.

    :param res: the load result with the profile's metadata (what spy.py writes to
        ``<stem>.json``).
    """
    text = raw.read_text(errors="replace")
    total, own, own_fn, incl = summarize(text, top)
    brief = {k: res.get(k) for k in ("deliveries_per_s", "replies_per_s", "p50_ms", "p99_ms",
                                     "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct",
                                     "worker_user_pct", "worker_sys_pct") if k in res}
    label = runner.PEERS.get(res["peer"], {}).get("label", res["peer"])
    title = f"py-spy profile: {label}, {res['case']}" + (" (--native)" if res["native"] else "")
    window, hz = res.get("window_s") or res.get("profile_window_s"), res.get("sample_rate_hz")
    how = (f"{window:.0f} s" if window else "a window") + (f" at {hz} Hz" if hz else "")
    pid = res.get("worker_pid")
    lines = [f"# {title}", "",
             f"`{res['command']}`; {res['timestamp']}, {how} on the worker"
             + (f" (pid {pid})" if pid else "") + f", {total} samples (idle samples excluded). "
             f"Flame graph: [{raw.stem}.svg]({raw.stem}.svg).", "",
             "Load over the whole case: " + ", ".join(f"{k}={v}" for k, v in brief.items()),
             ""]
    lines += _budget(text, res)
    lines += ["", "Own time = samples whose innermost frame is this one. A C call (a socket "
              "`send`, greenlet creation) counts on the Python line that makes it.", "",
              f"## Top {top} frames by own time", ""]
    lines += _table(own, total, "own", with_source=True)
    lines += ["", f"## Top {top} functions by own time (lines summed)", ""]
    lines += _table(own_fn, total, "own")
    lines += ["", f"## Top {top + 10} functions by inclusive time", ""]
    lines += _table(incl, total, "incl")
    md = "\n".join(lines) + "\n"
    raw.with_suffix(".md").write_text(md)
    sub = f"{res['command']}; {res['timestamp']}; {total} samples; " + ", ".join(
        f"{k}={v}" for k, v in brief.items())
    raw.with_suffix(".svg").write_text(flamegraph.render(text, title, sub))
    return md


def from_raw(raw: Path, top: int) -> str:
    """Re-render the report of an existing profile: ``<stem>.txt`` and ``<stem>.json``."""
    meta = raw.with_suffix(".json")
    if not raw.is_file() or not meta.is_file():
        raise SystemExit(f"--from-raw needs {raw} and {meta}")
    res = json.loads(meta.read_text())
    if "case" not in res:
        res = _guess_meta(raw, res)
    return report(raw, res, top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", nargs="?", help="fanout-1000, reqrep-50, burst-1000, ...")
    ap.add_argument("--peer", default="jpulse", choices=[p for p in runner.PEERS])
    ap.add_argument("--window", type=float, default=10.0, help="seconds sampled")
    ap.add_argument("--lead", type=float, default=4.0, help="seconds of load before sampling")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--native", action="store_true", help="C frames too (loses samples)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--from-raw", metavar="PATH",
                    help="no server: re-render <stem>.md and .svg from <stem>.txt and .json")
    args = ap.parse_args(argv)
    if args.from_raw:
        print(from_raw(Path(args.from_raw), args.top))
        return 0
    if not args.case:
        ap.error("a case, or --from-raw PATH")
    if not _pyspy():
        raise SystemExit("py-spy not found: pip install py-spy")
    lg.raise_nofile()
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.peer}-{args.case}" + ("-native" if args.native else "")
    raw = outdir / f"{stem}.txt"
    logdir = outdir / "logs"
    logdir.mkdir(exist_ok=True)
    srv = runner.Server(args.peer, 1, {"BENCH_PING_INTERVAL": "120"}, logdir, args.case)
    try:
        srv.wait_ready()
        kids = srv.monitor.procs()[1:]
        worker = kids[0].pid if kids else srv.proc.pid  # picows: no master
        target = lg.Target(args.peer, "127.0.0.1", srv.port, monitor=srv.monitor)
        res = lg.run(_drive(args.case, target, worker, args.lead, args.window, args.rate,
                            args.native, raw))
    finally:
        srv.stop()
    key, unit = RATES.get(args.case.partition("-")[0], ("deliveries_per_s", "delivery"))
    # Everything --from-raw needs to render the report again without the server.
    res.update(case=args.case, peer=args.peer, native=args.native,
               command=_command(args.case, args.peer, args.native),
               timestamp=time.strftime("%Y-%m-%d %H:%M"), worker_pid=worker,
               window_s=args.window, sample_rate_hz=args.rate,
               messages_per_s=res.get(key), message_unit=unit)
    (outdir / f"{stem}.json").write_text(json.dumps(res, indent=2))
    print(report(raw, res, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
