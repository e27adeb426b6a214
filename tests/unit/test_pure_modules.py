"""The pure modules stay pure: loaded on their own, they pull in neither Flask,
gevent nor redis (so they can be reused and tested without a server)."""

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "flask_jpulse_ws"
#: Every module of core/ (found, not listed: a new one is checked too) and the leaves.
PURE = sorted(f"core.{p.stem}" for p in (PACKAGE / "core").glob("*.py")
              if p.stem != "__init__") + ["errors", "context", "config"]

LOADER = r"""
import importlib, json, sys, types
package_dir, names = sys.argv[1], sys.argv[2:]
# An empty stand-in for the package: relative imports resolve to its files, and
# flask_jpulse_ws/__init__.py (which imports Flask) never runs.
pkg = types.ModuleType("flask_jpulse_ws")
pkg.__path__ = [package_dir]
sys.modules["flask_jpulse_ws"] = pkg
for name in names:
    importlib.import_module(f"flask_jpulse_ws.{name}")
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(names):
    out = subprocess.run([sys.executable, "-c", LOADER, str(PACKAGE), *names],
                         capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout))


def test_pure_modules_import_neither_flask_gevent_nor_redis():
    modules = loaded_modules(PURE)
    assert {f"flask_jpulse_ws.{n}" for n in PURE} <= modules  # they really were loaded
    heavy = {m for m in modules
             if m.split(".")[0] in {"flask", "werkzeug", "gevent", "greenlet", "redis",
                                    "flask_login"}}
    assert not heavy
    # nothing else of the package came along either (only what was asked for)
    assert {m for m in modules if m.startswith("flask_jpulse_ws.")} == \
        {f"flask_jpulse_ws.{n}" for n in PURE} | {"flask_jpulse_ws.core"}


def test_the_check_notices_a_module_that_is_not_pure():
    """A control for the test above: handshake.py imports Flask, and loading it the
    same way shows Flask in sys.modules."""
    modules = loaded_modules(["server.handshake"])
    assert "flask_jpulse_ws.server.handshake" in modules and "flask" in modules
