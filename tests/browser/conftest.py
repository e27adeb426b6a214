"""Real headless Chromium (Debian's, through Playwright) against a real gunicorn server."""

import os
import signal
from contextlib import contextmanager

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """One Chromium per module; every test gets its own context (cookies, storage)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):  # CI installs it (.ci/run): a skip there would hide tests
            pytest.fail(f"{CHROMIUM} is not installed on CI (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright import sync_api  # requirements-dev: a missing one is an error
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context()
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def open_page(context):
    """``open_page(server)``: a tab on the server's test page (same origin as its sockets)."""

    def open_(server, ctx=None):
        page = (ctx or context).new_page()
        page.goto(server.base + "/")
        page.wait_for_function("() => window.jPulse && window.T")
        return page

    return open_


@pytest.fixture
def frozen():
    """``with frozen(server):`` pauses the server (see :func:`freeze`)."""
    return freeze


@contextmanager
def freeze(server):
    """SIGSTOP the master and its workers for the block; SIGCONT whatever happens."""
    pids = [server.proc.pid] + server.worker_pids()
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
