"""The example app (``example_app:create_app()``) under gevent gunicorn, without a browser.

REST validation of the todo demo, persistence across restarts, the sticky-notes
limits and concurrent edits (database and Redis stores), the room rules and counts,
and who may read the admin dashboard's data.
"""

import threading
import uuid

import pytest
from servers import ROOT, GunicornServer, wait_for

from flask_jpulse_ws.testing import HTTPSession, WSTestClient

APP = "example_app:create_app()"
TODO = "/api/1/ws/hello-todo"
NOTES = "/api/1/ws/hello-notes"
STATUS = "/api/1/ws/jpulse-ws-status"
API = "/api/1/hello-todo"
NOTES_MAX = 12


def example_server(db_path, port=None, workers=1, **env):
    base = {"EXAMPLE_DB_URL": f"sqlite:///{db_path}", "SECRET_KEY": "test-secret",
            "HELLO_NOTES_MAX": str(NOTES_MAX)}
    base.update({k: str(v) for k, v in env.items()})
    return GunicornServer(app=APP, chdir=ROOT, env=base, port=port, workers=workers)


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return tmp_path_factory.mktemp("example") / "example.sqlite3"


@pytest.fixture(scope="module")
def server(db_path):
    srv = example_server(db_path).start()
    yield srv
    srv.stop()


def client(srv, path, session=None, **kwargs):
    headers = {}
    if session is not None:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    c = WSTestClient(srv.ws_url(path), headers=headers, **kwargs)
    c.receive(type="connected")
    return c


def login(srv, username):
    http = HTTPSession(srv.base)
    resp = http.post("/login", data={"username": username, "password": f"{username}-demo"})
    assert resp.status == 200 and http.cookies, resp
    return http


def note_request(c, kind, data):
    return c.request({"type": kind, "data": data}, timeout=5)


# ---------------------------------------------------------------- todo (pattern A)

def test_todo_rest_refuses_bad_input_with_4xx(server):
    """Blank, too long or non-JSON titles are 400; bad ids 400; unknown ids 404."""
    http = HTTPSession(server.base)
    cases = [
        (http.post(API, json_body={"title": "   "}), 400, "VALIDATION_ERROR"),
        (http.post(API, json_body={"title": "x" * 201}), 400, "VALIDATION_ERROR"),
        (http.post(API, json_body={"title": 42}), 400, "VALIDATION_ERROR"),
        (http.post(API, data={"title": "a form"}), 400, "VALIDATION_ERROR"),
        (http.request("PUT", f"{API}/abc/toggle"), 400, "INVALID_TODO_ID"),
        (http.request("PUT", f"{API}/987654/toggle"), 404, "TODO_NOT_FOUND"),
        (http.request("DELETE", f"{API}/987654"), 404, "TODO_NOT_FOUND"),
    ]
    for resp, status, code in cases:
        assert resp.status == status, resp
        assert resp.json() == {"success": False, "code": code, "error": resp.json()["error"]}
    assert http.post(API, json_body={"title": "x" * 200}).status == 201


def test_todo_changes_are_broadcast_after_they_are_stored(server):
    """Create, toggle and delete each answer over REST, then reach WebSocket clients."""
    http = login(server, "alice")
    with client(server, TODO) as watcher:
        created = http.post(API, json_body={"title": "  Buy milk  "}).json()["data"]
        assert created["title"] == "Buy milk" and created["username"] == "alice"
        msg = watcher.receive(type="todo-created")["data"]
        assert msg["data"] == {"todo": created, "username": "alice"}
        assert msg["ctx"] == {"username": "alice"}  # no IP or roles on the wire
        toggled = http.request("PUT", f"{API}/{created['id']}/toggle").json()["data"]
        assert toggled["completed"] is True
        assert watcher.receive(type="todo-updated")["data"]["data"]["todo"] == toggled
        assert http.request("DELETE", f"{API}/{created['id']}").status == 200
        gone = watcher.receive(type="todo-deleted")["data"]["data"]
        assert gone["todoId"] == created["id"]
    assert created["id"] not in [t["id"] for t in http.get(API).json()["data"]]


# ---------------------------------------------------------------- notes (pattern B)

def test_note_limits_are_enforced_by_the_server(server):
    """Text over 500 characters, unknown colours, bad ids and a full board are refused."""
    with client(server, NOTES) as c:
        c.receive(type="notes-init")
        made = note_request(c, "note-create", {"x": 10, "y": 10, "text": "ok"})
        assert made["success"] is True
        nid = made["data"]["note"]["id"]
        too_long = note_request(c, "note-update", {"id": nid, "text": "y" * 501})
        assert too_long["success"] is False and too_long["code"] == 400
        assert too_long["details"] == {"limit": 500, "length": 501}
        assert note_request(c, "note-update", {"id": nid, "text": "y" * 500})["success"]
        assert note_request(c, "note-update", {"id": nid, "color": "red"})["code"] == 400
        assert note_request(c, "note-update", {"id": "nope", "x": 1})["code"] == 400
        assert note_request(c, "note-update", {"id": str(uuid.uuid4()), "x": 1})["code"] == 404
        assert note_request(c, "note-update", {"id": nid, "x": "far"})["code"] == 400
        clamped = note_request(c, "note-update", {"id": nid, "x": -50, "y": 10 ** 9})
        assert clamped["data"]["note"]["x"] == 0 and clamped["data"]["note"]["y"] <= 800
        created = [nid]
        while True:
            r = note_request(c, "note-create", {"x": 1, "y": 1})
            if not r["success"]:
                assert r["code"] == "BOARD_FULL"
                break
            created.append(r["data"]["note"]["id"])
            assert len(created) <= NOTES_MAX
        c.send({"type": "x"})  # a fresh connection sees exactly the cap
    with client(server, NOTES) as c2:
        assert len(c2.receive(type="notes-init")["data"]["data"]["notes"]) == NOTES_MAX
        for nid in created:
            assert note_request(c2, "note-delete", {"id": nid})["success"]


def _edit_concurrently(srv, editors=6, edits=15):
    """Each editor owns a note and edits it ``edits`` times, all at once."""
    with client(srv, NOTES) as setup:
        setup.receive(type="notes-init")
        ids = [note_request(setup, "note-create", {"x": 5 * i, "y": 5})["data"]["note"]["id"]
               for i in range(editors)]
    errors = []
    start = threading.Barrier(editors)

    def edit(i, nid):
        try:
            with client(srv, NOTES) as c:
                start.wait(10)
                for n in range(edits):
                    r = note_request(c, "note-update", {"id": nid, "text": f"editor {i} #{n}",
                                                        "x": float(n)})
                    assert r["success"], r
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=edit, args=(i, nid)) for i, nid in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with client(srv, NOTES) as c:
        notes = {n["id"]: n for n in c.receive(type="notes-init")["data"]["data"]["notes"]}
        for i, nid in enumerate(ids):
            assert notes[nid]["text"] == f"editor {i} #{edits - 1}"
            assert notes[nid]["x"] == float(edits - 1)
            assert note_request(c, "note-delete", {"id": nid})["success"]


def test_concurrent_edits_of_different_notes_all_survive_in_the_database(server):
    """Per-row UPDATEs: six editors at once, every note ends with its own last edit."""
    _edit_concurrently(server)


def test_concurrent_edits_of_different_notes_all_survive_in_redis(redis_server, tmp_path):
    """Two workers, notes in Redis hashes: no edit of another note is lost."""
    srv = example_server(tmp_path / "db.sqlite3", workers=2, REDIS_URL=redis_server.url,
                         HELLO_REDIS_PREFIX=f"t-{uuid.uuid4().hex[:8]}").start()
    try:
        _edit_concurrently(srv)
    finally:
        srv.stop()


# ---------------------------------------------------------------- persistence

def test_todos_and_notes_survive_a_restart(tmp_path):
    """Both stores are on disk: a new server process on the same database sees them."""
    db = tmp_path / "restart.sqlite3"
    srv = example_server(db).start()
    try:
        http = HTTPSession(srv.base)
        todo = http.post(API, json_body={"title": "remember me"}).json()["data"]
        with client(srv, NOTES) as c:
            c.receive(type="notes-init")
            note = note_request(c, "note-create", {"x": 3, "y": 4, "text": "me too"})
            note = note["data"]["note"]
    finally:
        srv.stop()
    srv = example_server(db, port=srv.port).start()
    try:
        todos = HTTPSession(srv.base).get(API).json()["data"]
        assert todo in todos
        with client(srv, NOTES) as c:
            assert note in c.receive(type="notes-init")["data"]["data"]["notes"]
    finally:
        srv.stop()


# ---------------------------------------------------------------- rooms

def test_rooms_accept_only_the_three_demo_rooms(server):
    """paris, Berlin (case matters) and an encoded slash are refused with 4404."""
    for name in ("paris", "Berlin", "berlin%2Fx"):
        c = WSTestClient(server.ws_url(f"/api/1/ws/hello-rooms/{name}"))
        assert c.wait_closed(5) == 4404, name
        c.close()
    with client(server, "/api/1/ws/hello-rooms/berlin") as c:
        assert c.receive(type="room-stats")["data"]["data"]["userCount"] >= 1


def test_room_chat_is_checked_and_broadcast(server):
    """Chat text is trimmed, limited to 500 characters and sent to the room as text."""
    path = "/api/1/ws/hello-rooms/amsterdam"
    with client(server, path) as a, client(server, path) as b:
        a.send({"type": "chat", "data": {"text": " <b>hi</b> "}})
        msg = b.receive(type="chat")["data"]["data"]
        assert msg["text"] == "<b>hi</b>" and msg["username"] == "guest"
        assert a.request({"type": "chat", "data": {"text": "z" * 501}})["code"] == 400
        assert a.request({"type": "chat", "data": {"text": "   "}})["code"] == 400


def _count(c, expected, timeout=10):
    """Read room-stats / user-left until the room's count is ``expected``."""
    def seen():
        m = c.receive(timeout=timeout)
        d = m.get("data") or {}
        return d.get("type") in ("room-stats", "user-left") and \
            d["data"]["userCount"] == expected
    return wait_for(seen, timeout=timeout, message=f"userCount {expected}")


@pytest.mark.cluster
def test_room_count_is_right_across_workers_and_after_a_worker_dies(redis_server, tmp_path):
    """Three workers share the count through expiring Redis keys; a killed worker's
    clients leave the total within a few heartbeats."""
    import os
    import signal

    srv = example_server(tmp_path / "db.sqlite3", workers=3, REDIS_URL=redis_server.url,
                         HELLO_ROOMS_HEARTBEAT="0.3",
                         HELLO_REDIS_PREFIX=f"t-{uuid.uuid4().hex[:8]}").start()
    path = "/api/1/ws/hello-rooms/cairo"
    clients = []
    try:
        pids = {}
        for _ in range(40):  # until the clients sit on at least two workers
            c = client(srv, path)
            clients.append(c)
            pid = c.request({"type": "room-info"})["data"]["pid"]
            pids.setdefault(pid, []).append(c)
            if len(pids) >= 2 and len(clients) >= 4:
                break
        assert len(pids) >= 2, "clients never spread over two workers"
        watcher = next(cs[0] for cs in pids.values())
        _count(watcher, len(clients))
        victim = next(p for p, cs in pids.items() if watcher not in cs)
        os.kill(victim, signal.SIGKILL)
        _count(watcher, len(clients) - len(pids[victim]))
    finally:
        for c in clients:
            c.close()
        srv.stop()


# ---------------------------------------------------------------- the dashboard's data

def test_dashboard_data_is_for_admins_only(server):
    """Anonymous: 4401 and a login redirect; alice: 4403 and 403; admin: stats-update."""
    anon = WSTestClient(server.ws_url(STATUS))
    assert anon.wait_closed(5) == 4401
    alice = login(server, "alice")
    c = WSTestClient(server.ws_url(STATUS), headers={
        "Cookie": "; ".join(f"{k}={v}" for k, v in alice.cookies.items())})
    assert c.wait_closed(5) == 4403
    assert alice.get("/admin/websocket-stats").status == 403
    assert "Demo users" in HTTPSession(server.base).get("/admin/websocket-stats").text
    admin = login(server, "admin")
    assert admin.get("/admin/websocket-stats").status == 200
    with client(server, STATUS, admin) as c, client(server, TODO):
        first = c.receive(type="stats-update", timeout=5)["data"]["data"]  # at once
        paths = {ns["path"] for ns in first["namespaces"]}
        assert {TODO, NOTES, STATUS, "/api/1/ws/hello-emoji"} <= paths
        assert first["public"] is False

        def todo_watched():  # the 2 s ticker brings the todo client along
            data = c.receive(type="stats-update", timeout=5)["data"]["data"]
            todo = next(ns for ns in data["namespaces"] if ns["path"] == TODO)
            return data if todo["clientCount"] >= 1 else None

        data = wait_for(todo_watched, timeout=8, message="todo client in the stats")
        assert data["uptime"] > first["uptime"]
        todo = next(ns for ns in data["namespaces"] if ns["path"] == TODO)
        assert len(todo["sparkline"]) == 60


def test_public_dashboard_shows_only_whitelisted_namespaces(tmp_path):
    """With public access on, anyone may watch, and sees hello-* and the status only."""
    srv = example_server(tmp_path / "db.sqlite3", JPULSE_WS_PUBLIC_ACCESS="true",
                         JPULSE_WS_PUBLIC_WHITELIST='["hello-*"]').start()
    try:
        # jpulse-ws-status is not whitelisted here: the page and the data stay closed.
        assert WSTestClient(srv.ws_url(STATUS)).wait_closed(5) == 4401
    finally:
        srv.stop()
    srv = example_server(tmp_path / "db.sqlite3", port=srv.port,
                         JPULSE_WS_PUBLIC_ACCESS="true",
                         JPULSE_WS_PUBLIC_WHITELIST='["hello-todo", "jpulse-ws-status"]'
                         ).start()
    try:
        assert HTTPSession(srv.base).get("/admin/websocket-stats").status == 200
        with client(srv, STATUS) as c, client(srv, NOTES) as n:
            n.send({"type": "note-create", "data": {}})
            data = c.receive(type="stats-update")["data"]["data"]
            assert data["public"] is True
            assert {ns["path"] for ns in data["namespaces"]} == {TODO, STATUS}
            assert all(e["namespace"] in (TODO, STATUS) for e in data["activityLog"])
    finally:
        srv.stop()

