"""The example app (``example_app:create_app()``) under gevent gunicorn, without a browser.

REST validation of the todo demo, persistence across restarts, the sticky-notes
limits and concurrent edits (database and Redis stores), the room rules and who is in
a room (presence, across workers), and who may read the admin dashboard's data.
"""

import os
import signal
import threading
import time
import uuid

import pytest
from servers import ROOT, GunicornServer, RedisServer, wait_for

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
    c = WSTestClient(server.ws_url("/api/1/ws/hello-rooms/berlin"))
    with c:
        assert c.receive(type="connected")["data"]["data"]["presence"] is True
        info = c.request({"type": "room-info"}, timeout=5)["data"]
        assert info["roomName"] == "berlin" and info["clients"] >= 1 and info["users"] >= 1


def test_room_members_come_from_presence_with_their_display_names(server):
    """alice (logged in) and a guest in amsterdam: both listed, with the info the page
    shows; the guest leaving is a ``left`` batch for alice."""
    path = "/api/1/ws/hello-rooms/amsterdam"
    with client(server, path, login(server, "alice")) as a:
        guest = WSTestClient(server.ws_url(path))
        guest_id = guest.receive(type="connected")["data"]["data"]["clientId"]
        a.receive(match=lambda m: _type(m) == "_presence" and any(  # the guest's join
            x["clientId"] == guest_id for x in m["data"]["data"]["joined"]), timeout=5)
        reply = a.request({"type": "_presence"}, timeout=5)["data"]
        assert {m["clientId"] for m in reply["members"]} >= {guest_id}
        assert reply["stats"] == {"clients": 2, "users": 2}
        by_name = {m["username"] or "(anonymous)": m for m in reply["members"]}
        assert by_name["alice"]["info"]["name"] == "Alice Anders"
        assert by_name["(anonymous)"]["info"]["name"] == "guest"
        assert isinstance(by_name["(anonymous)"]["info"]["pid"], int)
        guest.close()
        left = a.receive(match=lambda m: _type(m) == "_presence" and any(
            x["clientId"] == guest_id for x in m["data"]["data"]["left"]), timeout=5)
        assert left["data"]["data"]["joined"] == []
        assert a.request({"type": "room-info"}, timeout=5)["data"]["users"] == 1


def test_room_chat_is_checked_and_broadcast(server):
    """Chat text is trimmed, limited to 500 characters and sent to the room as text."""
    path = "/api/1/ws/hello-rooms/amsterdam"
    with client(server, path) as a, client(server, path) as b:
        a.send({"type": "chat", "data": {"text": " <b>hi</b> "}})
        msg = b.receive(type="chat")["data"]["data"]
        assert msg["text"] == "<b>hi</b>" and msg["username"] == "guest"
        assert a.request({"type": "chat", "data": {"text": "z" * 501}})["code"] == 400
        assert a.request({"type": "chat", "data": {"text": "   "}})["code"] == 400


def _type(frame):
    data = frame.get("data")
    return data.get("type") if isinstance(data, dict) else None


#: Shortened presence TTL for the cluster test: a killed worker's members go within it.
ROOM_TTL = 2.0


@pytest.mark.cluster
def test_room_members_are_right_across_workers_and_after_a_worker_dies(redis_server,
                                                                       tmp_path):
    """Three workers, two clients on each: every worker lists all six members; a
    SIGKILLed worker's members leave every list within the presence TTL, as ``left``."""
    srv = example_server(tmp_path / "db.sqlite3", workers=3, REDIS_URL=redis_server.url,
                         JPULSE_WS_PRESENCE_TTL=ROOM_TTL,
                         HELLO_REDIS_PREFIX=f"t-{uuid.uuid4().hex[:8]}").start()
    path = "/api/1/ws/hello-rooms/cairo"
    clients = []
    try:
        wait_for(lambda: len(srv.worker_pids()) == 3, message="three workers")
        by_pid = {}  # worker pid -> [(client, client id)]

        def join():
            c = WSTestClient(srv.ws_url(path))
            clients.append(c)
            cid = c.receive(type="connected")["data"]["data"]["clientId"]
            pid = c.request({"type": "room-info"}, timeout=5)["data"]["pid"]
            by_pid.setdefault(pid, []).append((c, cid))

        for n in range(2):  # two clients per worker: the workers that have their n+1th
            for _ in range(3):  # are paused (SIGSTOP) meanwhile, so another one accepts
                busy = [pid for pid, held in by_pid.items() if len(held) > n]
                for pid in busy:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    join()
                finally:
                    for pid in busy:
                        os.kill(pid, signal.SIGCONT)
        assert sorted(len(held) for held in by_pid.values()) == [2, 2, 2], by_pid
        everyone = {cid for held in by_pid.values() for _, cid in held}

        def listed(c, expected):
            reply = c.request({"type": "_presence"}, timeout=5)["data"]
            ids = {m["clientId"] for m in reply["members"]}
            return reply if ids == expected and not reply.get("partial") else None

        for pid, held in by_pid.items():  # every worker sees every member
            first = held[0][0]
            wait_for(lambda c=first: listed(c, everyone), timeout=5,
                     message=f"all {len(everyone)} members listed on worker {pid}")
            info = first.request({"type": "room-info"}, timeout=5)["data"]
            assert (info["clients"], info["users"]) == (len(everyone), len(everyone))

        watcher = by_pid[next(iter(by_pid))][0][0]
        victim = next(p for p in by_pid if p != next(iter(by_pid)))
        gone = {cid for _, cid in by_pid[victim]}
        left_seen = set()
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def keep_left(frame):  # batches that arrive while a reply is awaited count too
            if _type(frame) == "_presence":
                left_seen.update(m["clientId"] for m in frame["data"]["data"]["left"])

        def survivors_only():
            rid = uuid.uuid4().hex
            watcher.send({"type": "_presence", "requestId": rid})
            reply = watcher.receive(match=lambda m: keep_left(m) or m.get("requestId") == rid,
                                    timeout=5)["data"]
            return {m["clientId"] for m in reply["members"]} == everyone - gone

        wait_for(survivors_only, timeout=ROOM_TTL + 1.5, interval=0.1,
                 message="the killed worker's members gone from the list")
        assert time.monotonic() - killed_at <= ROOM_TTL + 1.5

        def left_announced():
            if not gone <= left_seen:
                keep_left(watcher.receive(timeout=1))
            return gone <= left_seen

        wait_for(left_announced, timeout=ROOM_TTL + 3, message="a left batch for them")
        info = watcher.request({"type": "room-info"}, timeout=5)["data"]
        assert info["clients"] == len(everyone - gone)
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


def _room_card(c, path):
    data = c.receive(type="stats-update", timeout=5)["data"]["data"]
    return next((ns for ns in data["namespaces"] if ns["path"] == path), None)


@pytest.mark.cluster
def test_dashboard_counts_rooms_from_presence_and_says_partial_without_redis(tmp_path):
    """A room's card carries presence counts (every worker); with Redis gone they are
    this worker's own members, marked partial, and the dashboard keeps pushing."""
    redis = RedisServer().start()
    srv = example_server(tmp_path / "db.sqlite3", REDIS_URL=redis.url,
                         HELLO_REDIS_PREFIX=f"t-{uuid.uuid4().hex[:8]}").start()
    room = "/api/1/ws/hello-rooms/berlin"
    try:
        with client(srv, STATUS, login(srv, "admin")) as dash, \
                client(srv, room, login(srv, "alice")), client(srv, room), client(srv, room):
            def counted():
                card = _room_card(dash, room)
                return card if card and card.get("presence", {}).get("clients") == 3 else None

            card = wait_for(counted, timeout=8, message="the room's presence on the card")
            assert card["presence"] == {"clients": 3, "users": 3, "partial": False}
            assert "presence" not in _room_card(dash, TODO)
            redis.kill()

            def partial():
                card = _room_card(dash, room)
                return card if card and card["presence"]["partial"] else None

            card = wait_for(partial, timeout=10, message="a partial presence count")
            assert (card["presence"]["clients"], card["presence"]["users"]) == (3, 3)
    finally:
        srv.stop()
        redis.stop()


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

