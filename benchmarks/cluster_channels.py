"""Single relay channel vs one channel per namespace: what each worker pays.

Starts a private redis-server, W subscriber processes (standing in for gunicorn
workers) and one publisher, and reports per-worker CPU per published message, the
end-to-end rate, Redis's CPU, and the cost of (un)subscribing a room.

    .venv/bin/python benchmarks/cluster_channels.py [--messages 30000] [--rooms 1000]

Each worker holds a fraction ``share`` of the rooms: 1.0 when clients land on
workers at random (any room with a few members has one on every worker), 1/W when
rooms are sticky to one worker.
"""

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import orjson
import redis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from flask_jpulse_ws.cluster.keys import namespace_channel, relay_channel  # noqa: E402
from flask_jpulse_ws.cluster.relay import encode_op  # noqa: E402

PREFIX = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def room(i):
    return f"/api/1/ws/rooms/room-{i}"


def worker(url, mode, rooms, expected, ready, out):
    r = redis.Redis.from_url(url)
    p = r.pubsub(ignore_subscribe_messages=True)
    local = set(rooms)
    t0 = time.perf_counter()
    if mode == "single":
        p.subscribe(relay_channel(PREFIX))
    else:
        for path in rooms:  # one SUBSCRIBE per room, as when its first member arrives
            p.subscribe(namespace_channel(PREFIX, path))
    p.ping()  # its pong comes after every subscribe confirmation
    while True:
        msg = p.get_message(timeout=1)
        if msg is not None and msg["type"] == "pong":
            break
    sub_time = time.perf_counter() - t0
    ready.set()
    received = delivered = 0
    cpu0 = time.process_time()
    while received < expected:
        msg = p.get_message(timeout=1)
        if msg is None:
            if time.process_time() - cpu0 > 60:
                break
            continue
        received += 1
        op = orjson.loads(msg["data"])
        if op["path"] in local:  # what AppState.apply_remote does before delivering
            delivered += 1
            op["payload"].encode()
    out.put({"cpu": time.process_time() - cpu0, "received": received,
             "delivered": delivered, "subscribe_s": sub_time, "rooms": len(rooms)})


def run(url, mode, workers, n_rooms, share, messages):
    per = max(1, int(n_rooms * share))
    assignments = [[room((w * per + k) % n_rooms) for k in range(per)] for w in range(workers)]
    # Messages go round-robin over rooms: how many reach each worker's channels.
    counts = []
    for rooms in assignments:
        local = set(rooms)
        counts.append(messages if mode == "single" else
                      sum(1 for i in range(messages) if room(i % n_rooms) in local))
    out, procs, events = mp.Queue(), [], []
    for w in range(workers):
        ev = mp.Event()
        proc = mp.Process(target=worker, args=(url, mode, assignments[w], counts[w], ev, out))
        proc.start()
        procs.append(proc)
        events.append(ev)
    for ev in events:
        ev.wait(60)
    pub = redis.Redis.from_url(url)
    info0 = pub.info("cpu")
    payload = orjson.dumps({"success": True, "data": {"type": "tick", "data": "x" * 150}})
    t0 = time.perf_counter()
    pipe = pub.pipeline(transaction=False)
    for i in range(messages):
        path = room(i % n_rooms)
        ch = relay_channel(PREFIX) if mode == "single" else namespace_channel(PREFIX, path)
        pipe.publish(ch, encode_op("bench-host", "broadcast", {"path": path,
                                                               "payload": payload}))
        if len(pipe) >= 200:
            pipe.execute()
    pipe.execute()
    results = [out.get(timeout=120) for _ in procs]
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.join()
    info1 = pub.info("cpu")
    redis_cpu = (info1["used_cpu_user"] + info1["used_cpu_sys"]
                 - info0["used_cpu_user"] - info0["used_cpu_sys"])
    cpu = sum(r["cpu"] for r in results) / workers
    return {
        "mode": mode, "share": share, "rooms": n_rooms, "workers": workers,
        "msgs_per_s": round(messages / elapsed),
        "worker_cpu_us_per_published": round(cpu / messages * 1e6, 2),
        "worker_cpu_us_per_received": round(
            cpu / max(1, sum(r["received"] for r in results) / workers) * 1e6, 2),
        "redis_cpu_us_per_published": round(redis_cpu / messages * 1e6, 2),
        "subscribe_ms_per_room": round(
            sum(r["subscribe_s"] / r["rooms"] for r in results) / workers * 1e3, 3),
        "lost": sum(counts) - sum(r["received"] for r in results),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", tempfile.mkdtemp()],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        print(f"# {args.workers} workers, {args.rooms} rooms, {args.messages} messages, "
              f"{os.cpu_count()} cores")
        for share in (1.0, 1.0 / args.workers):
            for mode in ("single", "per-namespace"):
                print(orjson.dumps(run(url, mode, args.workers, args.rooms, share,
                                       args.messages)).decode())
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
