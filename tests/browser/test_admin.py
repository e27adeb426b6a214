"""The admin dashboard (flask_jpulse_ws.admin) in real headless Chromium.

An admin watches while a guest uses the demos in another browser context. All
data reaches the page as text: an HTML payload sent by the guest must show up as
characters, and ``window.__pwned`` must stay undefined everywhere.
"""

import pytest
from test_demo import ARTIFACTS, VIEWPORT, login, open_demo, shot, start_demo

pytestmark = pytest.mark.browser

DASHBOARD = "/admin/websocket-stats"
PAYLOAD = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    srv = start_demo(tmp_path_factory.mktemp("admin") / "admin.sqlite3")
    yield srv
    srv.stop()


@pytest.fixture
def pages(browser):
    opened = []

    def track(page):
        opened.append(page)
        return page

    yield track
    for page in opened:
        page.context.close()


def open_dashboard(browser, base, username="admin"):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    login(page, base, username)
    page.goto(base + DASHBOARD)
    page.wait_for_function("() => window.jwLastUpdate")
    return page


def card_clients(page, path):
    return page.locator(f".jw-card[data-path='{path}'] .jw-clients")


def test_dashboard_lists_the_demo_namespaces_with_live_counts(browser, admin_server, pages):
    """Cards for every demo namespace; the clients count follows a guest in and out."""
    dash = pages(open_dashboard(browser, admin_server.base))
    for path in ("hello-emoji", "hello-todo", "hello-notes", "hello-request",
                 "jpulse-ws-status"):
        dash.locator(f".jw-card[data-path='/api/1/ws/{path}']").wait_for()
    assert card_clients(dash, "/api/1/ws/jpulse-ws-status").text_content() == "1"
    guest = pages(open_demo(browser, admin_server.base, "rooms"))
    guest.click("button[data-room=amsterdam]")
    guest.wait_for_function("() => document.querySelector('#room-count').textContent "
                            "=== '1 person here'")
    for path in ("hello-todo", "hello-notes", "hello-rooms/amsterdam"):
        dash.wait_for_function("p => { const c = document.querySelector("
                               "`.jw-card[data-path='${p}'] .jw-clients`); "
                               "return c && c.textContent === '1'; }", arg=f"/api/1/ws/{path}")
    guest.fill("#chat-text", "hello dashboard")
    guest.click("#chat-form button")
    dash.locator("#jw-log td.jw-msg", has_text="hello dashboard").wait_for()
    # The namespace filter narrows the log to one namespace.
    dash.select_option("#jw-filter-ns", "/api/1/ws/hello-rooms/amsterdam")
    shown = dash.locator("#jw-log tbody tr td:nth-child(3)").all_text_contents()
    assert shown and set(shown) == {"/api/1/ws/hello-rooms/amsterdam"}
    dash.select_option("#jw-filter-ns", "")
    dash.wait_for_function("() => document.querySelector('.jw-card[data-path=\"/api/1/ws/"
                           "hello-rooms/amsterdam\"] polyline')")
    dash.wait_for_timeout(2100)  # one more tick, so the sparklines show the chat
    shot(dash, "admin-dashboard")
    dash.screenshot(path=str(ARTIFACTS / "admin-dashboard-full.png"), full_page=True)
    guest.context.close()
    dash.wait_for_function("() => document.querySelector(\".jw-card[data-path="
                           "'/api/1/ws/hello-todo'] .jw-clients\").textContent === '0'")


def test_a_presence_namespace_card_shows_clients_and_users_from_presence(
        browser, admin_server, pages):
    """Two tabs of alice and a guest in berlin: 3 clients, 2 users, labelled presence;
    a namespace without presence keeps its own counts."""
    dash = pages(open_dashboard(browser, admin_server.base))
    alice = pages(open_demo(browser, admin_server.base, "rooms", "alice"))
    second = pages(alice.context.new_page())  # same login, another tab
    second.goto(admin_server.base + "/hello-websocket/#rooms")
    guest = pages(open_demo(browser, admin_server.base, "rooms"))
    for page in (alice, second, guest):
        page.click("button[data-room=berlin]")
    alice.wait_for_function("() => document.querySelector('#room-count').textContent "
                            "=== '2 people here'")
    card = dash.locator(".jw-card[data-path='/api/1/ws/hello-rooms/berlin']")
    # alice's page counts 2 people as soon as she and the guest are in; her second tab
    # may join a moment later, after a dashboard tick showing 2 clients: wait for both.
    dash.wait_for_function("() => { const q = (s) => document.querySelector(\".jw-card"
                           "[data-path='/api/1/ws/hello-rooms/berlin'] \" + s); "
                           "const u = q('.jw-users'), c = q('.jw-clients'); "
                           "return u && c && u.textContent === '2' && c.textContent === '3'; }")
    assert card.locator(".jw-clients").text_content() == "3"
    labels = card.locator("dt").all_text_contents()
    assert labels[:3] == ["Clients (presence)", "Users (presence)", "Clients here"]
    assert card.locator(".jw-badge").text_content() == "presence"
    todo = dash.locator(".jw-card[data-path='/api/1/ws/hello-todo']")
    assert todo.locator("dt").all_text_contents()[:2] == ["Clients", "Active users"]
    assert todo.locator(".jw-badge").count() == 0
    assert "Presence on this process: " in dash.locator("#jw-presence").text_content()
    guest.context.close()
    dash.wait_for_function("() => document.querySelector(\".jw-card[data-path="
                           "'/api/1/ws/hello-rooms/berlin'] .jw-clients\").textContent === '2'")
    assert card.locator(".jw-users").text_content() == "1"


def test_html_in_messages_is_shown_as_text_in_the_demo_and_the_dashboard(
        browser, admin_server, pages):
    """The payload is chat text, a todo title and a note: characters, never markup."""
    dash = pages(open_dashboard(browser, admin_server.base))
    guest = pages(open_demo(browser, admin_server.base, "rooms"))
    other = pages(open_demo(browser, admin_server.base, "rooms"))
    for page in (guest, other):
        page.click("button[data-room=cairo]")
        page.wait_for_function("() => document.querySelector('#rooms-status').textContent "
                               "=== 'connected'")
    guest.fill("#chat-text", PAYLOAD)
    guest.click("#chat-form button")
    other.locator("#room-chat li", has_text=PAYLOAD).wait_for()
    guest.goto(admin_server.base + "/hello-websocket/#todo")
    guest.wait_for_function("() => hello.todo.isConnected()")
    guest.fill("#todo-title", PAYLOAD)
    guest.click("#todo-form button")
    other.click("button[data-tab=todo]")
    other.locator("#todo-list li .title", has_text=PAYLOAD).wait_for()
    guest.evaluate("t => hello.notes.request({type: 'note-create', data: {x: 30, y: 30, "
                   "text: t}})", PAYLOAD)
    other.click("button[data-tab=notes]")
    other.wait_for_function("t => [...document.querySelectorAll('.note textarea')]"
                            ".some(n => n.value === t)", arg=PAYLOAD)
    dash.locator("#jw-log td.jw-msg", has_text='onerror=\\"window.__pwned=1\\"').first.wait_for()
    assert dash.locator("#jw-log img, #jw-namespaces img").count() == 0
    shot(other, "demo-xss-as-text")
    for page in (dash, guest, other):
        assert page.evaluate("() => typeof window.__pwned") == "undefined"
        assert page.locator("img").count() == 0


def test_a_non_admin_gets_no_dashboard_data(browser, admin_server, pages):
    """alice: HTTP 403 for the page, close 4403 (auth-required) for the status socket."""
    ctx = browser.new_context(viewport=VIEWPORT)
    page = pages(ctx.new_page())
    login(page, admin_server.base, "alice")
    response = page.goto(admin_server.base + DASHBOARD)
    assert response.status == 403
    page.goto(admin_server.base + "/hello-websocket/")
    page.wait_for_function("() => hello.todo.isConnected()")
    status = page.evaluate("""() => new Promise((resolve) => {
        const frames = [];
        const h = jPulse.ws.connect('/api/1/ws/jpulse-ws-status');
        h.onMessage((f) => frames.push(f));
        h.onStatusChange((s) => { if (s !== 'connecting') resolve([s, frames.length]); });
    })""")
    assert status == ["auth-required", 0]
    anon = pages(browser.new_context().new_page())
    anon.goto(admin_server.base + DASHBOARD)
    assert "/login" in anon.url and anon.locator("#jw-dashboard").count() == 0
