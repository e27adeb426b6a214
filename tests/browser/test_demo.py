"""The /hello-websocket/ demos in real headless Chromium: two users, two browser contexts.

alice is logged in; the other visitor is anonymous ("guest"). What one does must
show up for the other. Screenshots of each tab go to tests/artifacts/ (git-ignored).
"""

from pathlib import Path

import pytest
from servers import ROOT, GunicornServer

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "tests" / "artifacts"
APP = "example_app:create_app()"
VIEWPORT = {"width": 1280, "height": 860}


def start_demo(db: Path, port=None) -> GunicornServer:
    env = {"EXAMPLE_DB_URL": f"sqlite:///{db}", "SECRET_KEY": "browser-test"}
    return GunicornServer(app=APP, chdir=ROOT, env=env, port=port).start()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The example app on a temporary database; a test may restart it (same port)."""
    holder = {"db": tmp_path_factory.mktemp("demo") / "demo.sqlite3"}
    holder["server"] = start_demo(holder["db"])
    yield holder
    holder["server"].stop()


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def login(page, base, username):
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"{username}-demo")
    page.click("form button[type=submit]")
    page.wait_for_url("**/hello-websocket/")


def open_demo(browser, base, tab, username=None):
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    if username:
        login(page, base, username)
    page.goto(f"{base}/hello-websocket/#{tab}")
    page.wait_for_function("() => window.hello && hello.todo.isConnected() && "
                           "hello.notes.isConnected() && hello.request.isConnected() && "
                           "hello.emoji.isConnected()")
    # The todo list's first GET is sent on connect and its answer replaces the whole
    # list: a todo broadcast applied before it arrives would vanish again. Wait for it
    # (a loaded list always has a line; the tab may be hidden).
    page.locator("#todo-list li").first.wait_for(state="attached")
    return page


@pytest.fixture
def pair(browser, demo):
    """(alice's page, a guest's page), both on the demo page; contexts closed after."""
    pages = []

    def make(tab):
        base = demo["server"].base
        pages.extend([open_demo(browser, base, tab, "alice"), open_demo(browser, base, tab)])
        return pages[0], pages[1]

    yield make
    for page in pages:
        assert page.errors == []
        page.context.close()


def test_a_cursor_moves_for_the_other_user_and_vanishes_when_they_leave(pair):
    """alice's mouse over the area draws her emoji and name on the guest's page."""
    alice, guest = pair("cursors")
    box = alice.locator("#cursor-area").bounding_box()
    alice.click("#emoji-picker button[data-emoji='🦊']")
    for i in range(8):  # the page throttles to one move per 50 ms
        alice.mouse.move(box["x"] + 200 + 30 * i, box["y"] + 150 + 10 * i)
        alice.wait_for_timeout(60)
    cursor = guest.locator("#cursor-area .cursor")
    cursor.wait_for()
    assert cursor.locator(".cursor-name").text_content() == "alice"
    assert cursor.locator(".cursor-emoji").text_content() == "🦊"
    guest.wait_for_function("() => parseFloat(document.querySelector('#cursor-area .cursor')"
                            ".style.left) > 20")
    assert alice.locator("#cursor-area .cursor").count() == 0  # never her own echo
    shot(guest, "demo-cursors")
    alice.context.close()
    cursor.wait_for(state="detached")


def test_todo_changes_by_one_user_show_for_the_other(pair):
    """Add (REST, then broadcast), toggle and delete sync; an empty title is refused."""
    alice, guest = pair("todo")
    alice.fill("#todo-title", "Water the plants")
    alice.click("#todo-form button")
    item = guest.locator("#todo-list li", has_text="Water the plants")
    item.wait_for()
    assert item.locator(".muted").text_content() == "by alice"
    item.locator("input[type=checkbox]").check()
    alice.locator("#todo-list li.done", has_text="Water the plants").wait_for()
    guest.fill("#todo-title", "   ")
    guest.click("#todo-form button")
    guest.wait_for_function("() => document.querySelector('#todo-error').textContent"
                            ".includes('must not be empty')")
    alice.fill("#todo-title", "Call the bank")
    alice.click("#todo-form button")
    guest.locator("#todo-list li", has_text="Call the bank").wait_for()
    shot(guest, "demo-todo")
    alice.locator("#todo-list li", has_text="Water the plants").locator("button").click()
    item.wait_for(state="detached")


def test_notes_created_edited_and_moved_show_for_the_other(pair):
    """Create, type (debounced), drag and delete a note: the other page follows."""
    alice, guest = pair("notes")
    alice.click("#color-picker button[data-color='#c8e6c9']")
    alice.click("#note-add")
    note = guest.locator("#notes-board .note")
    note.wait_for()
    nid = note.get_attribute("data-id")
    mine = alice.locator(f".note[data-id='{nid}']")
    mine.locator("textarea").click()
    mine.locator("textarea").type("Remember the milk, and the bread", delay=15)
    guest.wait_for_function("id => document.querySelector(`.note[data-id='${id}'] textarea`)"
                            ".value === 'Remember the milk, and the bread'", arg=nid)
    # Her own echoes never rewrote what she was typing.
    assert mine.locator("textarea").input_value() == "Remember the milk, and the bread"
    bar = mine.locator(".note-bar").bounding_box()
    before = mine.bounding_box()
    # New notes land at a random spot; drag towards the side with room, since the board
    # clamps a note at its edges.
    board = alice.locator("#notes-board").bounding_box()
    dx = 100 if before["x"] < board["x"] + board["width"] / 2 else -100
    alice.mouse.move(bar["x"] + 60, bar["y"] + 8)
    alice.mouse.down()
    alice.mouse.move(bar["x"] + 60 + dx, bar["y"] + 80, steps=8)
    # While the button is down the note follows the mouse, whatever echoes arrive.
    dragged = mine.bounding_box()
    alice.mouse.up()
    assert abs(dragged["x"] - before["x"] - dx) < 1
    # The drop leaves it there, on both pages. Not one bounding_box() after the drop: the
    # echo of the live move sent at the first step may land just after it and show that
    # spot until the echo of the drop follows.
    dropped_at = dragged["x"] - board["x"]
    for page in (alice, guest):
        page.wait_for_function(
            "([id, x]) => Math.abs(document.querySelector(`.note[data-id='${id}']`)"
            ".getBoundingClientRect().x - document.querySelector('#notes-board')"
            ".getBoundingClientRect().x - x) < 1", arg=[nid, dropped_at])
    assert "200, 230, 201" in note.evaluate("n => getComputedStyle(n).backgroundColor")
    shot(guest, "demo-notes")
    guest.click(f".note[data-id='{nid}'] .note-bar button")
    mine.wait_for(state="detached")


def members(page):
    return page.locator("#room-members li").all_text_contents()


def test_room_members_and_chat_sync_and_unknown_rooms_are_refused(pair):
    """Both in berlin: each lists the other (and marks itself), chat both ways; when
    one leaves, the other's list and count drop; paris: refused."""
    alice, guest = pair("rooms")
    alice.click("button[data-room=berlin]")
    guest.click("button[data-room=berlin]")
    for page in (alice, guest):
        page.wait_for_function("() => document.querySelector('#room-count')"
                               ".textContent === '2 people here'")
    alice.wait_for_function("() => document.querySelectorAll('#room-members li').length === 2")
    guest.wait_for_function("() => document.querySelectorAll('#room-members li').length === 2")
    assert sorted(m.split(" · ")[0] for m in members(alice)) == ["alice (you)", "guest"]
    assert sorted(m.split(" · ")[0] for m in members(guest)) == ["alice", "guest (you)"]
    assert any("Alice Anders" in m for m in members(guest))
    alice.fill("#chat-text", "Hallo Berlin!")
    alice.press("#chat-text", "Enter")
    guest.locator("#room-chat li", has_text="alice: Hallo Berlin!").wait_for()
    guest.fill("#chat-text", "Hi alice")
    guest.click("#chat-form button")
    alice.locator("#room-chat li", has_text="guest: Hi alice").wait_for()
    shot(alice, "demo-rooms")
    guest.click("#room-leave")
    alice.wait_for_function("() => document.querySelector('#room-count').textContent "
                            "=== '1 person here'")
    alice.locator("#room-chat li", has_text="guest left").wait_for()
    assert [m.split(" · ")[0] for m in members(alice)] == ["alice (you)"]
    guest.fill("#room-name", "paris")
    guest.click("#room-other button")
    guest.wait_for_function("() => document.querySelector('#rooms-status').textContent "
                            "=== 'disconnected'")
    assert "does not exist" in guest.locator("#rooms-error").text_content()
    assert guest.locator("#room-members li").count() == 0


def test_request_response_both_ways_and_between_users(pair):
    """echo, the server asking this browser, asking the other browser, and the errors."""
    alice, guest = pair("request")

    def result(page, text):
        page.wait_for_function("t => document.querySelector('#req-result').textContent"
                               ".includes(t)", arg=text)
        return page.locator("#req-result").text_content()

    alice.fill("#echo-text", "ping <b>me</b>")
    alice.click("#req-echo")
    assert '"text": "ping <b>me</b>"' in result(alice, "echo-result")
    alice.click("#req-browser")
    assert "HeadlessChrome" in result(alice, "ask-browser-result")
    alice.click("#req-peers")
    answer = result(alice, "ask-peers-result")
    assert '"username": "guest"' in answer and '"ok": true' in answer
    guest.locator("#req-asked li", has_text="alice (through the server) asked").wait_for()
    alice.click("#req-unknown")
    assert "NO_REPLY" in result(alice, "NO_REPLY")
    alice.click("#req-oversize")
    assert "MESSAGE_TOO_LARGE" in result(alice, "MESSAGE_TOO_LARGE")
    alice.click("#req-echo")
    result(alice, "echo-result")
    shot(alice, "demo-request")


def test_code_examples_tab_shows_the_running_code(pair):
    """The Code tab is read from the app's own files: server handlers and page code."""
    alice, _guest = pair("code")
    text = alice.locator("#tab-code").text_content()
    assert "def init_app(app: Flask, ws: JPulseWS)" in text
    assert "jPulse.ws.connect('/api/1/ws/hello-notes')" in text
    assert "onResync(loadTodos)" in text
    shot(alice, "demo-code")


def test_todos_and_notes_survive_a_restart_and_pages_refetch(browser, demo):
    """Stored data outlives the server; an open page refetches after it reconnects."""
    srv = demo["server"]
    page = open_demo(browser, srv.base, "todo")
    page.fill("#todo-title", "Survive the restart")
    page.click("#todo-form button")
    page.locator("#todo-list li", has_text="Survive the restart").wait_for()
    page.evaluate("() => hello.notes.request({type: 'note-create', data: "
                  "{x: 40, y: 40, text: 'still here', color: '#bbdefb'}})")
    srv.stop()
    page.wait_for_function("() => hello.todo.getStatus() === 'reconnecting'")
    srv = demo["server"] = start_demo(demo["db"], port=srv.port)
    # Created while the page is away (it retries after about 5 s): only a refetch finds it.
    from flask_jpulse_ws.testing import HTTPSession
    assert HTTPSession(srv.base).post("/api/1/hello-todo",
                                      json_body={"title": "Made while you were away"}
                                      ).status == 201
    page.locator("#todo-list li", has_text="Made while you were away").wait_for(
        timeout=20_000)
    page.locator("#todo-list li", has_text="Survive the restart").wait_for()
    fresh = open_demo(browser, srv.base, "notes")
    fresh.wait_for_function("() => [...document.querySelectorAll('.note textarea')]"
                            ".some(t => t.value === 'still here')")
    shot(fresh, "demo-after-restart")
    assert page.errors == [] and fresh.errors == []
    page.context.close()
    fresh.context.close()
