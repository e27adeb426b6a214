"""Real processes for integration tests: gunicorn gevent workers, redis-server, nginx.

Each helper starts a process on a free port, waits until it answers, and stops
it (SIGTERM, then SIGKILL) when the test is done. Nothing uses the shared Redis
on 6379.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from flask_jpulse_ws.testing import HTTPSession

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}" +
                         (f" (last error: {last_exc!r})" if last_exc else ""))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class HTTP(HTTPSession):
    """The suite's HTTP session (the package's own ``testing.HTTPSession``): JSON bodies
    in and out, and an HTTP error status raised as ``urllib.error.HTTPError``."""

    def call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.request(method, path, json_body=body if method != "GET" else None)
        if resp.status >= 400:
            raise urllib.error.HTTPError(self.base_url + path, resp.status, resp.body.decode(
                "utf-8", "replace"), Message(), io.BytesIO(resp.body))
        try:
            return resp.json()
        except ValueError:
            return resp.body.decode()

    def get(self, path: str) -> Any:  # type: ignore[override]
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:  # type: ignore[override]
        return self.call("POST", path, body)

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


#: ``gunicorn -k`` for this package's own worker (flask_jpulse_ws/worker.py).
OUR_WORKER = "flask_jpulse_ws.worker.GeventWorker"


class GunicornServer:
    """``gunicorn -k gevent`` serving an app factory, configured by environment."""

    def __init__(self, app: str = "core_app:create_app()", workers: int = 1,
                 settings: Optional[Dict[str, Any]] = None, env: Optional[Dict[str, str]] = None,
                 port: Optional[int] = None, chdir: Path = APPS, worker_class: str = "gevent",
                 args: Sequence[str] = ()) -> None:
        self.app = app
        self.worker_class = worker_class  # "sync" or "gthread": what must be refused; or OUR_WORKER
        self.args = list(args)  # e.g. ["--preload"]
        self.workers = workers
        self.settings = dict(settings or {})
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.chdir = chdir
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self) -> HTTP:
        return HTTP(self.base)

    def start(self) -> GunicornServer:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(self.chdir),
                                             env.get("PYTHONPATH", "")])
        for key, value in self.settings.items():
            env[key] = json.dumps(value)
        env.update(self.extra_env)
        cmd = [str(BIN / "gunicorn"), "-k", self.worker_class, "-w", str(self.workers),
               "-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "1", "--timeout", "60",
               "--chdir", str(self.chdir), "--log-level", "info", *self.args, self.app]
        if self.worker_class in ("gevent", OUR_WORKER):
            cmd[5:5] = ["--worker-connections", "5000"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: _port_open(self.port) or self._died(), timeout=20,
                 message=f"gunicorn on {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn died:\n{self.log()}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> List[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it is still there after 5 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group (master and workers)."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self._reap()

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait(5)
        self._log.close()
        self.proc = None

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_python(script: str, timeout: float, cwd: Path = ROOT) -> str:
    """Run ``script`` in a fresh interpreter that can import the project (gevent's
    monkey-patching, a plain process without Flask...); returns its stdout, stripped.
    A non-zero exit fails the calling test with the script's stderr."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=timeout, cwd=str(cwd),
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _terminate(proc: Optional[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


class RedisServer:
    """A private ``redis-server`` on a free port, that tests may stop and restart."""

    def __init__(self, port: Optional[int] = None, args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.args = list(args)  # e.g. ["--replicaof", "127.0.0.1", "6400"]
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port), timeout=10, message="redis-server")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


class SentinelServer:
    """A private Redis Sentinel watching one master, tuned to fail over in seconds."""

    def __init__(self, master_port: int, service: str = "jpulse",
                 down_after_ms: int = 1000, failover_timeout_ms: int = 10000) -> None:
        self.port = free_port()
        self.service = service
        self.dir = tempfile.mkdtemp(prefix="sentinel-")
        self.conf = Path(self.dir) / "sentinel.conf"  # sentinel rewrites it: a file of its own
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n")
        self.proc: Optional[subprocess.Popen] = None

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/{db}"

    def start(self) -> SentinelServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([exe, str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port), timeout=10, message="redis sentinel")
        return self

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


def _cluster_ports(n: int) -> List[int]:
    """``n`` free ports whose cluster bus port (port + 10000) is free too."""
    ports: List[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports or _port_open(port + 10000):
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


class RedisClusterServers:
    """A private Redis Cluster: ``masters`` masters, each with ``replicas`` replicas,
    on free ports, ready once every node says ``cluster_state:ok`` and every replica
    ``master_link_status:up``. Nodes are killed by pid, never by name."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
                 ) -> None:
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = _cluster_ports(masters * (1 + replicas))
        self.dir = tempfile.mkdtemp(prefix="redis-cluster-")
        self.procs: Dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start_node(self, port: int) -> None:
        node_dir = Path(self.dir) / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(node_dir / "nodes.conf"),
             "--cluster-node-timeout", str(self.node_timeout_ms),
             "--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "no",
             "--enable-debug-command", "yes", "--dir", str(node_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> RedisClusterServers:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            wait_for(lambda p=port: _port_open(p), timeout=10, message="a cluster node")
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas",
                        str(self.replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        self.wait_healthy()
        return self

    def client(self, port: int) -> Any:
        import redis as redis_py
        return redis_py.Redis(port=port, socket_timeout=2, decode_responses=True)

    def _info(self, port: int, section: str) -> Dict[str, Any]:
        with self.client(port) as r:
            return r.info(section) if section != "cluster" else dict(
                line.split(":", 1) for line in r.execute_command("CLUSTER", "INFO")
                .splitlines() if ":" in line)

    def alive(self) -> List[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def master_ports(self) -> List[int]:
        return [p for p in self.alive() if self._info(p, "replication")["role"] == "master"]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            for port in self.alive():
                if self._info(port, "cluster").get("cluster_state") != "ok":
                    return False
                info = self._info(port, "replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            return True
        wait_for(healthy, timeout=timeout, interval=0.05, message="a healthy Redis Cluster")

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot``, as the cluster sees it now."""
        with self.client(self.alive()[0]) as r:
            for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            _terminate(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


#: The nginx block that docs/scaling.md recommends: the fixture serves exactly it.
SCALING_DOC = ROOT / "docs" / "scaling.md"


def docs_nginx_block(doc: Path = SCALING_DOC) -> str:
    """The first ```nginx block of ``doc``, as a reader would copy it."""
    text = doc.read_text(encoding="utf-8")
    start = text.index("```nginx\n") + len("```nginx\n")
    return text[start:text.index("```", start)]


def _replace_once(text: str, old: str, new: str) -> str:
    """Replace ``old`` exactly once: the docs must still hold what the fixture expects."""
    assert text.count(old) == 1, f"docs/scaling.md's nginx block no longer has {old!r}"
    return text.replace(old, new)


class NginxServer:
    """A private ``nginx`` (Debian's nginx-light) serving the nginx block of
    docs/scaling.md in front of one upstream, on a free port.

    Only what ties the block to a real deployment is changed: the upstream's servers
    become ``upstream``, and ``listen 443 ssl`` a plain listen on 127.0.0.1 and a free
    port (not 80/443: the port must travel in Host for the origin check). Everything
    else (the upgrade headers, Host, X-Forwarded-*) is the documented text;
    ``edit(block) -> block`` lets a test change it to show what a change breaks.
    """

    def __init__(self, upstream: str, edit: Optional[Callable[[str], str]] = None) -> None:
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-"))
        block = docs_nginx_block()
        block = re.sub(r"(upstream jpulse_app \{\n)(?:\s*server [^\n]*\n)+",
                       lambda m: f"{m.group(1)}    server {upstream};\n", block)
        assert f"server {upstream};" in block, "docs/scaling.md: no upstream jpulse_app"
        block = _replace_once(block, "listen 443 ssl;", f"listen 127.0.0.1:{self.port};")
        if edit is not None:
            block = edit(block)
        self.block = block
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers may use the temp dirs
        temp = "".join(f"{kind}_temp_path {self.prefix / kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.prefix / 'nginx.pid'};\n"
            f"error_log {self.prefix / 'error.log'} info;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\naccess_log {self.prefix / 'access.log'};\n{temp}{block}\n}}\n")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def origin(self) -> str:
        """What a browser on a page served through this nginx sends as Origin."""
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self) -> HTTP:
        return HTTP(self.origin)

    def start(self) -> NginxServer:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                        else None)
        if exe is None:
            raise RuntimeError("nginx is not installed (scripts/system-deps lists the "
                               "packages: apt-get install nginx-light)")
        self.proc = subprocess.Popen([exe, "-p", str(self.prefix), "-c", str(self.conf),
                                      "-e", str(self.prefix / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        wait_for(lambda: _port_open(self.port) or self.proc.poll() is not None, timeout=10,
                 message="nginx")
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"nginx did not start:\n{err}\n{self.log()}")
        return self

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (nginx's fast stop: open sockets are cut), then SIGKILL of the
        group (master and worker) after 5 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
