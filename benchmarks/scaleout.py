"""What a relayed message costs each gunicorn worker, in the real server.

Starts a private redis-server and ``gunicorn -k gevent -w W`` with
``benchmarks/apps/scaleout_app.py`` (rooms ``/api/1/ws/rooms/:room`` over Redis), opens
WebSocket clients into the rooms, learns which worker holds each (the app answers an
echo with its pid), then publishes broadcasts from another process at a fixed rate, as
an ``Emitter`` would, and reads every worker's CPU time (``/proc``) and Redis's
(``INFO cpu``) before and after. An idle window of the same length is measured first
and subtracted. Clients check every room's sequence: gaps and duplicates are counted.

Placements:

- ``owned``: one client per room; only the rooms held by one worker (the "holder") get
  messages. The holder's CPU per message is the cost of a relayed message delivered to
  one socket; every other worker's is what a message for a namespace it does not hold
  costs it (the waste interest routing removes).
- ``every``: one client of every room on every worker; every message goes to every
  worker (the case where interest routing cannot help).

    .venv/bin/python benchmarks/scaleout.py                      # both, 3 repetitions
    .venv/bin/python benchmarks/scaleout.py --placement owned --reps 1 --rate 1000
    .venv/bin/python benchmarks/scaleout.py --topology cluster --name scaleout-cluster
    .venv/bin/python benchmarks/scaleout.py --server-python /tmp/old/.venv/bin/python \\
        --server-src /tmp/old --relay single --name before      # an older checkout

``--relay single`` publishes on 0.1's one app channel (``<prefix>:relay``) for a
server from before interest routing. Results: ``benchmarks/results/<name>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import loadgen as lg  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from flask_jpulse_ws.cluster.relay import channel_for, encode_op  # noqa: E402

PREFIX = "bench"
ROOM_PATH = "/api/1/ws/rooms/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=open(workdir / "redis.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        info = redis.Redis.from_url(self.url).info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def cpu_by_node(self) -> dict[int, float]:
        return {self.port: self.cpu_seconds()}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class RedisClusterNodes:
    """``masters`` redis-server nodes in a Redis Cluster (no replicas: only the CPU of
    the masters is measured), on free ports whose bus port (+10000) is free too."""

    def __init__(self, workdir: Path, masters: int = 3):
        self.ports: list[int] = []
        while len(self.ports) < masters:
            port = free_port()
            if port + 10000 < 65536 and port_free(port + 10000) and port not in self.ports:
                self.ports.append(port)
        self.procs = []
        for port in self.ports:
            node_dir = workdir / f"node-{port}"
            node_dir.mkdir()
            self.procs.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--port", str(port),
                 "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file",
                 str(node_dir / "nodes.conf"), "--save", "", "--appendonly", "no",
                 "--dir", str(node_dir)],
                stdout=open(node_dir / "redis.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        for port in self.ports:
            wait_port(port)
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in redis.Redis(port=p).execute_command(
                "CLUSTER", "INFO") for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become healthy")
            time.sleep(0.1)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def cpu_by_node(self) -> dict[int, float]:
        out = {}
        for port in self.ports:
            info = redis.Redis(port=port).info("cpu")
            out[port] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return out

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_node().values())

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis(port=port).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Gunicorn:
    def __init__(self, workers: int, redis_url: str, workdir: Path, python: str,
                 src: Path):
        self.port = free_port()
        self.workdir = workdir
        env = dict(os.environ, BENCH_REDIS_URL=redis_url, BENCH_PING_INTERVAL="120",
                   PYTHONPATH=os.pathsep.join([str(src), str(HERE / "apps")]))
        self.proc = subprocess.Popen(
            [python, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
             "--worker-connections", "20000", "-b", f"127.0.0.1:{self.port}",
             "--chdir", str(HERE / "apps"), "--log-level", "warning",
             "--graceful-timeout", "2", "scaleout_app:app"],
            stdout=open(workdir / "gunicorn.log", "wb"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
            cwd=workdir)  # not the checkout: ``python -m`` puts the cwd on sys.path
        self.workers = workers
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < workers or not self._answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                log = (self.workdir / "gunicorn.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gunicorn did not start:\n{log}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            asyncio.run(lg.http_get_json("127.0.0.1", self.port, "/count", 2.0))
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def worker_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.Error:
            return []

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_of(pids) -> dict[int, float]:
    out = {}
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        out[pid] = t.user + t.system
    return out


# ------------------------------------------------------------------ the publisher
def publish(url: str, relay: str, paths: list[str], rate: int, seconds: float, out) -> None:
    """Open loop: ``rate`` broadcasts a second, round robin over ``paths``, in batches
    of 5 ms; each carries its room's sequence number and the send time."""
    if url.startswith("redis+cluster://"):
        # Sharded pub/sub: each message to the master of its channel's slot.
        nodes = [(h, int(p)) for h, p in (item.rsplit(":", 1) for item in
                                          url.split("://", 1)[1].split(","))]
        slots = redis.Redis(host=nodes[0][0], port=nodes[0][1]).execute_command(
            "CLUSTER", "SLOTS")
        owner = [0] * 16384
        for start_slot, end_slot, master, *_ in slots:
            owner[start_slot:end_slot + 1] = [int(master[1])] * (end_slot - start_slot + 1)
        clients = {port: redis.Redis(port=port) for port in set(owner)}
        verb = "SPUBLISH"
    else:
        clients = {0: redis.Redis.from_url(url)}
        owner, verb = None, "PUBLISH"
    seq = {p: 0 for p in paths}
    sent = 0
    start = time.monotonic()
    step = 0.005
    per_step = max(1, round(rate * step))
    i = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = min(int(elapsed * rate) + per_step, int(seconds * rate))
        pipes = {port: c.pipeline(transaction=False) for port, c in clients.items()}
        while sent < due:
            path = paths[i % len(paths)]
            i += 1
            seq[path] += 1
            payload = json.dumps({"success": True, "data": {"type": "tick", "data": {
                "room": path, "seq": seq[path], "t": time.time()}}})
            fields = {"path": path, "payload": payload, "type": "tick"}
            channel = (f"{PREFIX}:relay" if relay == "single"
                       else channel_for(PREFIX, "broadcast", fields))
            port = owner[key_slot(channel.encode())] if owner else 0
            pipes[port].execute_command(verb, channel,
                                        encode_op("bench-publisher", "broadcast", fields))
            sent += 1
        for pipe in pipes.values():
            pipe.execute()
        time.sleep(max(0.0, start + (sent / rate) - time.monotonic()))
    out.put({"sent": sent, "seconds": time.monotonic() - start, "per_path": seq})


# ------------------------------------------------------------------ the clients
class Sink:
    def __init__(self):
        self.pids: dict[int, dict] = {}
        self.latencies: list[float] = []
        self.last: dict[int, int] = {}  # id(conn) -> last seq
        self.received = 0
        self.gaps = 0
        self.duplicates = 0

    def on_reply(self, conn, rid, data, t):
        if isinstance(data, dict):
            self.pids[id(conn)] = data

    def on_tick(self, conn, data, t):
        self.received += 1
        self.latencies.append(time.time() - data["t"])
        last = self.last.get(id(conn), 0)
        if data["seq"] <= last:
            self.duplicates += 1
        elif data["seq"] > last + 1:
            self.gaps += data["seq"] - last - 1
        self.last[id(conn)] = max(last, data["seq"])


async def open_room_clients(port: int, sink: Sink, rooms: int, placement: str,
                            workers: int):
    """{room path: {pid: conn}} with one client per room (owned) or one per worker."""
    target = lg.Target("jpulse", port=port, client="raw")
    held: dict[str, dict[int, object]] = {}
    extra = []

    async def one(path):
        conn = await lg.open_conn(target, sink, path=path)
        conn.echo(1, None)
        for _ in range(400):
            if id(conn) in sink.pids:
                return conn, sink.pids[id(conn)]["pid"]
            await asyncio.sleep(0.01)
        raise RuntimeError("no pid from the server")

    sem = asyncio.Semaphore(100)

    async def fill(path):
        async with sem:
            want = 1 if placement == "owned" else workers
            tries = 0
            while len(held.setdefault(path, {})) < want and tries < 40:
                tries += 1
                conn, pid = await one(path)
                if pid in held[path]:
                    extra.append(conn)  # a second on the same worker: closed later
                else:
                    held[path][pid] = conn
            if len(held[path]) < want:
                raise RuntimeError(f"{path}: could not reach every worker")

    await asyncio.gather(*(fill(f"{ROOM_PATH}r{i}") for i in range(rooms)))
    if placement == "owned":
        # Every worker must hold rooms of its own (that get no messages): a worker with
        # no client at all would listen to nothing on any server, old or new, and
        # measure nothing.
        more = rooms
        while len({pid for by_pid in held.values() for pid in by_pid}) < workers:
            if more > rooms * 20:
                raise RuntimeError("could not place a room on every worker")
            await fill(f"{ROOM_PATH}r{more}")
            more += 1
    lg.close_all(extra, abrupt=False)
    return held


async def wait_quiet(sink: Sink, expected: int, timeout: float):
    deadline = time.monotonic() + timeout
    while sink.received < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def run_cell(args, placement: str, workdir: Path) -> dict:
    rds = RedisClusterNodes(workdir) if args.topology == "cluster" else RedisServer(workdir)
    srv = Gunicorn(args.workers, rds.url, workdir, args.server_python, args.server_src)
    sink = Sink()
    loop = asyncio.new_event_loop()
    try:
        held = loop.run_until_complete(open_room_clients(
            srv.port, sink, args.rooms, placement, args.workers))
        pids = srv.worker_pids()
        if placement == "owned":
            per_pid: dict[int, list[str]] = {}
            for path, by_pid in held.items():
                per_pid.setdefault(next(iter(by_pid)), []).append(path)
            holder = max(per_pid, key=lambda p: len(per_pid[p]))
            paths = per_pid[holder]
            print(f"rooms held per worker: { {p: len(v) for p, v in per_pid.items()} }",
                  flush=True)
        else:
            holder, paths = None, sorted(held)
        loop.run_until_complete(asyncio.sleep(1.0))  # handshakes settled
        # Idle window: what the workers spend with nothing published.
        cpu0, r0 = cpu_of(pids), rds.cpu_seconds()
        loop.run_until_complete(asyncio.sleep(args.seconds))
        cpu1, r1 = cpu_of(pids), rds.cpu_seconds()
        idle = {p: cpu1[p] - cpu0[p] for p in pids}
        redis_idle = r1 - r0
        # Publishing window.
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        proc = ctx.Process(target=publish, args=(rds.url, args.relay, paths, args.rate,
                                                 args.seconds, out))
        cpu0, r0 = cpu_of(pids), rds.cpu_seconds()
        nodes0 = rds.cpu_by_node()
        spy = None
        if args.spy and holder is not None:  # where the holder's time goes
            args.out.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(holder),
                 "-d", str(int(args.seconds)), "-r", "1000", "-f", "raw", "-o",
                 str(args.out / f"{args.name}-holder.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.start()
        while proc.is_alive() or out.empty():
            loop.run_until_complete(asyncio.sleep(0.05))
            if not proc.is_alive() and out.empty():
                raise RuntimeError("the publisher failed")
        result = out.get()
        proc.join()
        if spy is not None:
            spy.wait(30)
        expected = sum(result["per_path"].values()) * (1 if placement == "owned"
                                                        else args.workers)
        loop.run_until_complete(wait_quiet(sink, expected, 30))
        cpu1, r1 = cpu_of(pids), rds.cpu_seconds()
        nodes1 = rds.cpu_by_node()
        sent = result["sent"]
        busy = {p: (cpu1[p] - cpu0[p]) - idle[p] * result["seconds"] / args.seconds
                for p in pids}
        row = {
            "placement": placement, "relay": args.relay, "workers": args.workers,
            "rooms": args.rooms, "rate": args.rate, "sent": sent,
            "published_per_s": round(sent / result["seconds"]),
            "delivered": sink.received, "expected": expected,
            "gaps": sink.gaps, "duplicates": sink.duplicates,
            "p50_ms": round(statistics.median(sink.latencies) * 1000, 2),
            "p99_ms": round(lg.pct(sink.latencies, 99) * 1000, 2),
            "redis_us_per_msg": round((r1 - r0 - redis_idle) * 1e6 / sent, 2),
            "worker_us_per_msg": {str(p): round(busy[p] * 1e6 / sent, 2) for p in pids},
            "topology": args.topology,
            # The busiest Redis node's share of all Redis CPU (1.0 for one Redis).
            "redis_busiest_share": round(max(nodes1[n] - nodes0[n] for n in nodes1)
                                         / max(1e-9, sum(nodes1[n] - nodes0[n]
                                                         for n in nodes1)), 3),
        }
        if holder is not None:
            others = [busy[p] * 1e6 / sent for p in pids if p != holder]
            row["holder_us_per_msg"] = round(busy[holder] * 1e6 / sent, 2)
            row["non_holder_us_per_msg"] = round(max(others), 2) if others else None
        else:
            row["per_worker_us_per_msg"] = round(statistics.mean(
                busy[p] * 1e6 / sent for p in pids), 2)
        return row
    finally:
        loop.close()
        srv.stop()
        rds.stop()


def summarize(rows: list[dict]) -> dict:
    keys = ["holder_us_per_msg", "non_holder_us_per_msg", "per_worker_us_per_msg",
            "redis_us_per_msg", "redis_busiest_share", "p50_ms", "p99_ms",
            "published_per_s"]
    out = {k: statistics.median(r[k] for r in rows) for k in keys
           if all(r.get(k) is not None for r in rows) and k in rows[0]}
    out["gaps"] = sum(r["gaps"] for r in rows)
    out["duplicates"] = sum(r["duplicates"] for r in rows)
    out["missing"] = sum(r["expected"] - r["delivered"] for r in rows)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--rate", type=int, default=2000, help="broadcasts per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--placement", choices=["owned", "every", "both"], default="both")
    ap.add_argument("--relay", choices=["namespace", "single"], default="namespace",
                    help="single: publish on 0.1's one app channel (an older server)")
    ap.add_argument("--topology", choices=["single", "cluster"], default="single",
                    help="cluster: a 3-master Redis Cluster (sharded pub/sub)")
    ap.add_argument("--server-python", default=sys.executable)
    ap.add_argument("--server-src", type=Path, default=ROOT)
    ap.add_argument("--spy", action="store_true",
                    help="py-spy the holder (owned) into <out>/<name>-holder.txt")
    ap.add_argument("--name", default="scaleout")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    lg.raise_nofile()
    placements = ["owned", "every"] if args.placement == "both" else [args.placement]
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "cells": {}}
    for placement in placements:
        rows = []
        for _ in range(args.reps):
            with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
                row = run_cell(args, placement, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
        results["cells"][placement] = {"runs": rows, "median": summarize(rows)}
        print(placement, json.dumps(results["cells"][placement]["median"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    lines = [f"# {args.name}: CPU per relayed message (real gunicorn -k gevent workers)",
             "", f"`{' '.join(sys.argv)}`; W={args.workers}, {args.rooms} rooms, "
             f"{args.rate} broadcasts/s for {args.seconds} s, relay={args.relay}, "
             f"topology={args.topology}, {args.reps} repetitions (medians).", "",
             "| placement | holder us/msg | non-holder us/msg | every-worker us/msg | "
             "Redis us/msg | busiest Redis node share | p50 ms | p99 ms | gaps | "
             "duplicates | missing |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for placement, cell in results["cells"].items():
        m = cell["median"]
        lines.append(f"| {placement} | {m.get('holder_us_per_msg', '')} | "
                     f"{m.get('non_holder_us_per_msg', '')} | "
                     f"{m.get('per_worker_us_per_msg', '')} | {m['redis_us_per_msg']} | "
                     f"{m.get('redis_busiest_share', '')} | {m['p50_ms']} | {m['p99_ms']} | "
                     f"{m['gaps']} | {m['duplicates']} | "
                     f"{m['missing']} |")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
