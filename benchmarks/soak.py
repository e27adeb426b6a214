"""Soak and churn: memory over time under connection churn and steady broadcasts.

One ``gunicorn -k gevent`` worker serves ``tests/apps/core_app.py`` with the Redis relay on
(a private ``redis-server`` on a free port). For ``--minutes`` minutes:

- ``--steady`` clients stay connected on ``/api/1/ws/echo`` and check every broadcast by
  sequence number (a gap or a missing tail is a lost message);
- the test process broadcasts a numbered ``tick`` to that namespace ``--hz`` times a second
  (``POST /_test/broadcast``; only broadcasts answered 200 count as sent);
- churn clients connect and disconnect at ``--rate`` a minute: half on the same namespace
  (they send one request, check its reply and that the ticks they saw have no gap), half in
  their own dynamic room ``/api/1/ws/open-rooms/churn-N`` (a namespace created and removed
  per client); a third of them vanish without a close frame (TCP close only);
- the worker's RSS (psutil) and live connection count are sampled every ``--sample``
  seconds.

Memory baseline = the median RSS over the first samples after a warm-up (the first 20 % of
the churn, at most 60 s), when every per-connection structure has already been created
and freed many times. End = the median of the last samples of a cool-down after the churn
stops (the dynamic rooms' grace period has passed). A leak shows as end > baseline and as
a positive slope over the churn; both are reported.

Run::

    python benchmarks/soak.py --minutes 20          # ~21 minutes
    python benchmarks/soak.py --minutes 2 --out /tmp/soak

Writes ``soak-latest.json`` and ``soak-latest.png`` (RSS over time) under ``--out``
(default ``benchmarks/results``). ``tests/integration/test_soak.py`` runs the 2-minute
version through :func:`run_soak`.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from servers import GunicornServer, RedisServer, wait_for  # noqa: E402

from flask_jpulse_ws.testing import ConnectionClosedError, WSTestClient  # noqa: E402

ECHO = "/api/1/ws/echo"
ROOMS = "/api/1/ws/open-rooms/churn-{}"
RESULTS = ROOT / "benchmarks" / "results"

#: Server settings: short pings so the ping/pong path runs thousands of times, and a short
#: dynamic-namespace grace so the churn rooms are removed during the run, not after it.
SERVER_SETTINGS = {
    "JPULSE_WS_PING_INTERVAL": 5,
    "JPULSE_WS_PONG_TIMEOUT": 5,
    "JPULSE_WS_DYNAMIC_GRACE": 2,
    "JPULSE_WS_MAX_CONNECTIONS_PER_IP": 100000,
    "JPULSE_WS_HANDSHAKE_RATE": 0,  # the churn comes from one address
    "JPULSE_WS_MAX_NAMESPACES": 100000,
    "JPULSE_WS_RATE_MAX_MESSAGES": 100000,
}


def _post(base: str, path: str, body: Any, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _get(base: str, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(base + path, timeout=timeout) as resp:
        return json.loads(resp.read())


class SteadyClient(threading.Thread):
    """Stays connected for the whole run; checks every tick by sequence number."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.ws = WSTestClient(url, timeout=10)
        self.ws.receive(type="connected")
        self.stop_event = stop
        self.seen: set = set()
        self.gaps = 0
        self.last = -1
        self.closed: Optional[str] = None

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                msg = self.ws.receive(type="tick", timeout=1.0)
            except TimeoutError:
                continue
            except (ConnectionClosedError, OSError) as exc:
                self.closed = repr(exc)
                return
            seq = msg["data"]["data"]["seq"]
            if seq != self.last + 1:
                self.gaps += 1
            self.last = seq
            self.seen.add(seq)
        self.ws.close()


class Churn:
    """Counters of the churn clients, shared by the pool's threads."""

    def __init__(self, base_url: str, hold: tuple) -> None:
        self.base_url = base_url
        self.hold = hold
        self.lock = threading.Lock()
        self.done = 0
        self.failed: List[str] = []
        self.gaps = 0
        self.ticks = 0
        self.replies = 0

    def one(self, i: int) -> None:
        in_room = i % 2 == 1
        path = ROOMS.format(i) if in_room else ECHO
        gaps = ticks = replies = 0
        try:
            ws = WSTestClient(self.base_url + path, timeout=10)
            try:
                ws.receive(type="connected")
                if not in_room:
                    reply = ws.request({"type": "echo", "data": i}, timeout=10)
                    if reply.get("data", {}).get("data") != i:
                        raise AssertionError(f"bad echo {reply!r}")
                    replies = 1
                deadline = time.monotonic() + random.uniform(*self.hold)
                last = None
                while time.monotonic() < deadline:
                    try:
                        msg = ws.receive(type=None if in_room else "tick",
                                         timeout=max(0.01, deadline - time.monotonic()))
                    except TimeoutError:
                        break
                    if in_room:
                        continue
                    seq = msg["data"]["data"]["seq"]
                    if last is not None and seq != last + 1:
                        gaps += 1
                    last = seq
                    ticks += 1
            finally:
                if i % 3 == 0:  # vanish: no close frame, the server sees EOF
                    ws.sock.shutdown(socket.SHUT_RDWR)
                    ws.sock.close()
                else:
                    ws.close()
        except Exception as exc:  # noqa: BLE001 - counted and reported
            with self.lock:
                self.failed.append(f"{i}: {exc!r}")
            return
        with self.lock:
            self.done += 1
            self.gaps += gaps
            self.ticks += ticks
            self.replies += replies


def _median(values: List[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _slope_mb_per_min(samples: List[Dict[str, Any]]) -> float:
    """Least-squares slope of RSS (MB) against time (minutes)."""
    if len(samples) < 3:
        return 0.0
    xs = [s["t"] / 60 for s in samples]
    ys = [s["rss_mb"] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def run_soak(minutes: float = 20.0, rate: int = 1000, steady: int = 50, hz: float = 10.0,
             sample: float = 5.0, cooldown: float = 30.0, redis: bool = True,
             out: Optional[Path] = RESULTS, hold: tuple = (0.3, 2.0),
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the soak; return (and write under ``out``, unless None) the results dict."""
    duration = minutes * 60
    warmup = min(60.0, 0.2 * duration)
    redis_srv = RedisServer().start() if redis else None
    settings = dict(SERVER_SETTINGS)
    if redis_srv is not None:
        settings["JPULSE_WS_REDIS_URL"] = redis_srv.url
    srv = GunicornServer(settings=settings).start()
    stop_steady = threading.Event()
    stop_sampling = threading.Event()
    samples: List[Dict[str, Any]] = []
    steady_clients: List[SteadyClient] = []
    try:
        pids = wait_for(srv.worker_pids, message="the worker")
        worker = psutil.Process(pids[0])
        t0 = time.monotonic()

        def take_sample(phase: str) -> None:
            try:
                stats = _get(srv.base, "/_test/stats")
                conns = sum(ns.get("clientCount", 0) for ns in stats.get("namespaces", []))
                namespaces = len(stats.get("namespaces", []))
                rooms = sum(1 for ns in stats.get("namespaces", [])
                            if "/churn-" in ns.get("path", ""))
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                conns = namespaces = rooms = -1
            mem = worker.memory_info()
            samples.append({"t": round(time.monotonic() - t0, 2), "phase": phase,
                            "rss_mb": round(mem.rss / 2**20, 2), "connections": conns,
                            "namespaces": namespaces, "churn_rooms": rooms,
                            "fds": worker.num_fds()})

        phase = ["start"]

        def sampler() -> None:
            while not stop_sampling.wait(sample):
                take_sample(phase[0])

        take_sample("start")
        threading.Thread(target=sampler, daemon=True).start()
        steady_clients = [SteadyClient(srv.ws_url(ECHO), stop_steady) for _ in range(steady)]
        for c in steady_clients:
            c.start()

        sent = [0]
        broadcast_errors: List[str] = []
        stop_broadcast = threading.Event()

        def broadcaster() -> None:
            period = 1.0 / hz
            nxt = time.monotonic()
            while not stop_broadcast.is_set():
                try:
                    _post(srv.base, "/_test/broadcast",
                          {"path": ECHO, "data": {"type": "tick", "data": {"seq": sent[0]}}})
                    sent[0] += 1
                except Exception as exc:  # noqa: BLE001 - an unsent tick is not lost
                    broadcast_errors.append(repr(exc))
                    if len(broadcast_errors) > 100:
                        return
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))

        bthread = threading.Thread(target=broadcaster, daemon=True)
        bthread.start()

        churn = Churn(f"ws://127.0.0.1:{srv.port}", hold)
        total = int(rate * minutes)
        interval = 60.0 / rate
        phase[0] = "warmup"
        start = time.monotonic()
        last_log = start
        with ThreadPoolExecutor(max_workers=96) as pool:
            for i in range(total):
                at = start + i * interval
                now = time.monotonic()
                if at > now:
                    time.sleep(at - now)
                if now - start >= warmup:
                    phase[0] = "churn"
                pool.submit(churn.one, i)
                if now - last_log >= 60:
                    last_log = now
                    s = samples[-1] if samples else {}
                    log(f"[soak] {(now - start) / 60:5.1f} min: {i} churned, "
                        f"{len(churn.failed)} failed, rss {s.get('rss_mb')} MB, "
                        f"{s.get('connections')} connections")
        churn_seconds = time.monotonic() - start
        stop_broadcast.set()
        bthread.join(10)
        phase[0] = "cooldown"
        final = sent[0] - 1
        wait_for(lambda: all(c.last >= final or c.closed for c in steady_clients),
                 timeout=15, message="the last tick at every steady client") \
            if final >= 0 else None
        cool_end = time.monotonic() + cooldown
        while time.monotonic() < cool_end:
            time.sleep(0.5)
        stop_sampling.set()
        take_sample("cooldown")
        stop_steady.set()
        for c in steady_clients:
            c.join(5)

        expected = set(range(sent[0]))
        lost = sum(len(expected - c.seen) for c in steady_clients)
        dropped_steady = [c.closed for c in steady_clients if c.closed]
        after_warmup = [s for s in samples if s["phase"] == "churn"]
        baseline = _median([s["rss_mb"] for s in after_warmup[:3]])
        cool = [s for s in samples if s["phase"] == "cooldown"]
        end = _median([s["rss_mb"] for s in cool[-3:]])
        result: Dict[str, Any] = {
            "config": {"minutes": minutes, "rate_per_min": rate, "steady": steady, "hz": hz,
                       "sample_s": sample, "cooldown_s": cooldown, "warmup_s": warmup,
                       "redis": redis, "hold_s": list(hold), "settings": settings},
            "churn_seconds": round(churn_seconds, 1),
            "churn_connects": churn.done + len(churn.failed),
            "churn_completed": churn.done,
            "churn_failed": len(churn.failed),
            "churn_failures": churn.failed[:20],
            "churn_gaps": churn.gaps,
            "churn_ticks_seen": churn.ticks,
            "churn_echo_replies": churn.replies,
            "broadcasts_sent": sent[0],
            "broadcast_errors": broadcast_errors[:20],
            "steady_clients": steady,
            "steady_disconnected": dropped_steady,
            "steady_gaps": sum(c.gaps for c in steady_clients),
            "lost_messages": lost,
            "rss_start_mb": samples[0]["rss_mb"],
            "rss_baseline_mb": baseline,
            "rss_peak_mb": max(s["rss_mb"] for s in samples),
            "rss_end_mb": end,
            "rss_end_minus_baseline_mb": round(end - baseline, 2),
            "rss_slope_mb_per_min": round(_slope_mb_per_min(after_warmup), 4),
            "connections_end": cool[-1]["connections"] if cool else None,
            "namespaces_end": cool[-1]["namespaces"] if cool else None,
            "churn_rooms_end": cool[-1]["churn_rooms"] if cool else None,
            "fds_baseline": after_warmup[0]["fds"] if after_warmup else None,
            "fds_end": cool[-1]["fds"] if cool else None,
            "worker_alive": worker.is_running(),
            "samples": samples,
        }
        if out is not None:
            write(result, Path(out))
        return result
    finally:
        stop_steady.set()
        stop_sampling.set()
        for c in steady_clients:
            c.ws.close()
        srv.stop()
        if redis_srv is not None:
            redis_srv.stop()


def write(result: Dict[str, Any], out: Path) -> None:
    """``soak-latest.json`` and, with matplotlib installed, ``soak-latest.png``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak-latest.json").write_text(json.dumps(result, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the CI version does not need the picture
        return
    samples = result["samples"]
    ts = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(ts, [s["rss_mb"] for s in samples], color="tab:blue", label="worker RSS (MB)")
    ax.axhline(result["rss_baseline_mb"], color="tab:green", ls="--",
               label=f"baseline {result['rss_baseline_mb']:.1f} MB")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    lo = min(s["rss_mb"] for s in samples)
    ax.set_ylim(max(0, lo - 10), result["rss_peak_mb"] + 10)
    for phase, colour in (("warmup", "0.9"), ("cooldown", "0.8")):
        pts = [s["t"] / 60 for s in samples if s["phase"] == phase]
        if pts:
            ax.axvspan(min(pts), max(pts), color=colour, zorder=0)
    ax2 = ax.twinx()
    ax2.plot(ts, [s["connections"] for s in samples], color="tab:orange", alpha=0.6,
             label="live connections")
    ax2.set_ylabel("connections")
    cfg = result["config"]
    ax.set_title(f"Soak: {cfg['rate_per_min']} connects/min for {cfg['minutes']} min, "
                 f"{cfg['steady']} steady clients, {cfg['hz']} broadcasts/s; "
                 f"lost {result['lost_messages']}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "soak-latest.png", dpi=100)
    plt.close(fig)


def summary(result: Dict[str, Any]) -> str:
    keys = ("churn_connects", "churn_failed", "churn_gaps", "broadcasts_sent", "lost_messages",
            "steady_gaps", "rss_start_mb", "rss_baseline_mb", "rss_peak_mb", "rss_end_mb",
            "rss_end_minus_baseline_mb", "rss_slope_mb_per_min", "connections_end",
            "namespaces_end", "churn_rooms_end", "fds_baseline", "fds_end")
    return "\n".join(f"{k:28} {result[k]}" for k in keys) + \
        f"\n{'steady_disconnected':28} {len(result['steady_disconnected'])}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--rate", type=int, default=1000, help="churn connects per minute")
    p.add_argument("--steady", type=int, default=50)
    p.add_argument("--hz", type=float, default=10.0, help="broadcasts per second")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--cooldown", type=float, default=30.0)
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.minutes <= 0 or args.minutes > 120 or args.rate > 20000:
        p.error("--minutes must be in (0, 120] and --rate at most 20000")
    result = run_soak(args.minutes, args.rate, args.steady, args.hz, args.sample,
                      args.cooldown, not args.no_redis, args.out)
    print(summary(result))
    ok = result["lost_messages"] == 0 and not result["steady_disconnected"] \
        and result["churn_failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
