"""The documentation's code is code: examples import, Python blocks compile."""

import importlib.util
import re
from pathlib import Path

import pytest

from flask_jpulse_ws import config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python_blocks():
    for page in PAGES:
        for n, match in enumerate(PYTHON_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            yield pytest.param(page, match.group(1), id=f"{page.name}-{n}")


def test_quickstart_example_registers_its_namespace():
    """docs/examples/quickstart_app.py imports and declares /api/1/ws/chat on its app."""
    module = _import(DOCS / "examples" / "quickstart_app.py")
    state = module.app.extensions["jpulse_ws"]
    assert state.get_namespace("/api/1/ws/chat") is not None
    assert module.chat.path == "/api/1/ws/chat"
    assert module.chat.message_handler is module.message


def test_metrics_example_serves_the_metrics_to_loopback_and_refuses_others():
    """docs/examples/metrics_app.py: /metrics answers the machine itself, 403 elsewhere."""
    module = _import(DOCS / "examples" / "metrics_app.py")
    client = module.app.test_client()
    resp = client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert resp.status_code == 200 and b"jpulse_ws_open_connections{worker=" in resp.data
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 403


def test_metrics_page_includes_its_example():
    assert "examples/metrics_app.py" in (DOCS / "metrics.md").read_text(encoding="utf-8")


def test_the_quickstarts_own_test_passes(monkeypatch):
    """docs/examples/test_quickstart.py, as a reader runs it beside quickstart_app.py."""
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    monkeypatch.delitem(__import__("sys").modules, "quickstart_app", raising=False)
    module = _import(DOCS / "examples" / "test_quickstart.py")
    module.test_chat_echo()


def test_quickstart_page_shows_its_test_verbatim():
    test = (DOCS / "examples" / "test_quickstart.py").read_text(encoding="utf-8")
    assert f"```python\n{test}```" in (DOCS / "quickstart.md").read_text(encoding="utf-8")


def test_readme_shows_the_quickstart_example_verbatim():
    """The README's first Python block is the file the docs include and this suite imports."""
    example = (DOCS / "examples" / "quickstart_app.py").read_text(encoding="utf-8")
    first = PYTHON_BLOCK.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert first is not None and first.group(1) == example


@pytest.mark.parametrize(("page", "source"), list(_python_blocks()))
def test_python_blocks_in_the_docs_compile(page, source):
    """Every ```python block in docs/*.md and the README is valid Python."""
    compile(source, str(page), "exec")


def test_configuration_page_lists_every_setting():
    """docs/configuration.md has a row for each JPULSE_WS_* key, and no unknown key."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(JPULSE_WS_[A-Z_]+)` \|", text, re.MULTILINE))
    assert rows == set(config.DEFAULTS)
