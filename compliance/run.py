"""Run Autobahn|Testsuite against the server (gunicorn, werkzeug) and the Python client.

``make compliance`` runs all three; ``python compliance/run.py client`` one of them.
Reports go to ``compliance/reports/<target>/`` (HTML and ``index.json``) and the counts
per behaviour to ``compliance/reports/summary.md``. See compliance/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from summary import failures, load, summarise, table  # noqa: E402

from flask_jpulse_ws.client import AUTH_REQUIRED, DISCONNECTED, WSClient  # noqa: E402
from flask_jpulse_ws.core import frames  # noqa: E402

#: The sections the issue measured (301 cases); 8.x does not exist, 12.x and 13.x are
#: permessage-deflate, which is not negotiated.
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
WSTEST = Path(os.environ.get(
    "WSTEST", Path.home() / ".cache" / "jpulse-compliance" / "py27" / "bin" / "wstest"))
REPORTS = HERE / "reports"
TARGETS = ("gunicorn", "werkzeug", "client")
BIN = Path(sys.executable).parent
#: Seconds one case may take against the client before the harness gives up on it.
CASE_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    return env


def start_server(kind: str, port: int, log: Any) -> subprocess.Popen:
    if kind == "gunicorn":
        cmd = [str(BIN / "gunicorn"), "-k", "gevent", "-w", "1", "--worker-connections",
               "1000", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "1", "--timeout",
               "120", "--chdir", str(HERE), "echo_app:create_app()"]
    else:
        cmd = [sys.executable, str(HERE / "echo_app.py"), str(port)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_port(port, proc)
    deadline = time.monotonic() + 30
    while True:  # gunicorn's master listens before its worker has booted (or failed to)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/1/ws/echo", timeout=2):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 404):
                return proc  # the app answers (the echo route takes upgrades only)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the {kind} server did not come up: see its log")
        time.sleep(0.2)


def test_server(kind: str, cases: List[str]) -> Path:
    """wstest's fuzzing client against the echo endpoint under ``kind``."""
    outdir = REPORTS / f"server-{kind}"
    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    spec = {"outdir": str(outdir), "cases": cases, "exclude-cases": [],
            "exclude-agent-cases": {},
            "servers": [{"agent": f"server-{kind}", "url": f"ws://127.0.0.1:{port}/api/1/ws/echo"}]}
    (outdir / "spec.json").write_text(json.dumps(spec, indent=2))
    with open(outdir / "server.log", "wb") as log:
        server = start_server(kind, port, log)
        try:
            subprocess.run([str(WSTEST), "-m", "fuzzingclient", "-s", str(outdir / "spec.json")],
                           cwd=outdir, stdout=log, stderr=subprocess.STDOUT, check=True)
        finally:
            stop(server)
    return outdir


class EchoClient(WSClient):
    """The Python client, its data messages echoed: the suite's client under test."""

    received: Optional[bytes] = None
    _max_fragments = 1 << 17  # 9.3.1 and 9.4.1 send 65,536 fragments

    def _data_message(self, opcode: int, payload: bytes) -> Optional[Dict[str, Any]]:
        self.received = payload
        try:
            self._write(frames.encode_frame(opcode, payload, mask=True))
        except OSError:
            pass
        return None


def run_client(url: str) -> EchoClient:
    """One socket of the Python client, until it ends (it never reconnects here)."""
    done = threading.Event()
    client = EchoClient(url, max_reconnect_attempts=0, ping_interval=3600.0,
                        pong_timeout=60.0)
    client.on_status_change(
        lambda new, old: done.set() if new in (DISCONNECTED, AUTH_REQUIRED) else None)
    client._start()
    if not done.wait(CASE_TIMEOUT):
        client.disconnect()
    return client


def test_client(cases: List[str]) -> Path:
    """wstest's fuzzing server, and the Python client playing each case in turn."""
    outdir = REPORTS / "client"
    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"ws://127.0.0.1:{port}"
    spec = {"url": base, "outdir": str(outdir), "cases": cases, "exclude-cases": [],
            "exclude-agent-cases": {}}
    (outdir / "spec.json").write_text(json.dumps(spec, indent=2))
    with open(outdir / "wstest.log", "wb") as log:
        wstest = subprocess.Popen([str(WSTEST), "-m", "fuzzingserver", "-s",
                                   str(outdir / "spec.json")], cwd=outdir, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(port, wstest)
            count = int(run_client(f"{base}/getCaseCount").received or b"0")
            for case in range(1, count + 1):
                run_client(f"{base}/runCase?case={case}&agent=client")
            run_client(f"{base}/updateReports?agent=client")
        finally:
            stop(wstest)
    return outdir


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="target",
                        help="gunicorn, werkzeug, client (default: all three)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated case patterns (default: %(default)s)")
    args = parser.parse_args(argv)
    if not WSTEST.exists():
        print(f"no wstest at {WSTEST}: see compliance/README.md (or set WSTEST)",
              file=sys.stderr)
        return 2
    targets = args.targets or list(TARGETS)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}: choose from {', '.join(TARGETS)}")
    cases = args.cases.split(",")
    index: Dict[str, Any] = {}
    for target in targets:
        started = time.monotonic()
        outdir = test_client(cases) if target == "client" else test_server(target, cases)
        found = load(outdir)
        if not found:
            raise RuntimeError(f"no results for {target}: see the logs in {outdir}")
        index.update(found)
        print(f"{target}: {time.monotonic() - started:.0f} s", flush=True)
    summary = summarise(index)
    text = table(summary) + "\n"
    for agent, bad in failures(index).items():
        text += f"\n{agent}: {len(bad)} cases not OK/INFORMATIONAL" + (
            f": {', '.join(bad)}" if bad else "") + "\n"
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "summary.md").write_text(text)
    print(text)
    return 0 if not any(failures(index).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
