"""The README's commands work on a fresh machine: each `make X` it shows is a target of
the Makefile, and `make test` first checks the Debian packages (scripts/system-deps)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
SYSTEM_DEPS = ROOT / "scripts" / "system-deps"


def _targets():
    return set(re.findall(r"^([a-zA-Z][\w-]*):", MAKEFILE, re.MULTILINE))


def _packages():
    return re.search(r"^PACKAGES=\(([^)]*)\)", SYSTEM_DEPS.read_text(), re.MULTILINE) \
        .group(1).split()


def test_every_make_command_in_the_readme_is_a_makefile_target():
    shown = set(re.findall(r"`?\$? ?make ([a-z][\w-]*)", README))
    assert {"run", "test", "test-fast"} <= shown
    assert shown <= _targets(), shown - _targets()


def test_make_test_checks_the_system_packages_before_anything_else():
    prerequisites = re.search(r"^test:(.*)$", MAKEFILE, re.MULTILINE).group(1).split()
    assert prerequisites[0] == "system-deps"
    assert "scripts/system-deps" in MAKEFILE
    assert "scripts/system-deps" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_names_the_packages_make_test_needs():
    assert set(_packages()) == {"redis-server", "chromium", "nodejs", "nginx-light", "make"}
    for pkg in _packages():
        assert f"`{pkg}`" in README, pkg


def _run_with(tmp_path, commands):
    """scripts/system-deps --check with only ``commands`` on PATH (as stubs)."""
    for name in commands:
        stub = tmp_path / name
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return subprocess.run(["/bin/bash", str(SYSTEM_DEPS), "--check"], capture_output=True,
                          text=True, timeout=30, env={"PATH": str(tmp_path)})


def test_a_missing_package_stops_with_the_one_command_that_installs_it(tmp_path):
    out = _run_with(tmp_path, ["redis-server", "node", "nginx", "make"])
    assert out.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y chromium" in out.stderr


def test_nothing_missing_is_silent_success(tmp_path):
    out = _run_with(tmp_path, ["redis-server", "node", "nginx", "make", "chromium"])
    assert out.returncode == 0 and out.stderr == ""
