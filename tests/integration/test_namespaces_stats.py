"""Dynamic namespaces, isolation, removal, stats fields, colours and the activity log."""

from servers import wait_for

from flask_jpulse_ws.testing import WSTestClient

SETTINGS = {"JPULSE_WS_DYNAMIC_GRACE": 0.3, "JPULSE_WS_ACTIVITY_WINDOW": 2}


def stats(server):
    return server.http().get("/_test/stats")


def ns_paths(server):
    return {ns["path"] for ns in stats(server)["namespaces"]}


def test_rooms_are_isolated_from_each_other(server):
    a = WSTestClient(server.ws_url("/api/1/ws/rooms/alpha"))
    b = WSTestClient(server.ws_url("/api/1/ws/rooms/beta"))
    for c in (a, b):
        c.receive(type="connected")
        c.receive(type="joined")
    a.send({"type": "say", "data": "only alpha"})
    assert a.receive(type="say")["data"]["data"] == "only alpha"
    assert b.receive_all(0.3) == []
    a.close()
    b.close()


def test_an_empty_room_is_removed_after_the_grace_period(server):
    c = WSTestClient(server.ws_url("/api/1/ws/rooms/short-lived"))
    c.receive(type="connected")
    assert "/api/1/ws/rooms/short-lived" in ns_paths(server)
    c.close()
    wait_for(lambda: "/api/1/ws/rooms/short-lived" not in ns_paths(server), timeout=5,
             message="the empty room to go")
    assert "/api/1/ws/echo" in ns_paths(server)  # literal namespaces stay


def test_http_broadcast_reaches_a_room_and_reports_local_deliveries(server):
    with WSTestClient(server.ws_url("/api/1/ws/open-rooms/news")) as c:
        c.receive(type="connected")
        out = server.http().post("/_test/broadcast", {"path": "/api/1/ws/open-rooms/news",
                                                      "data": {"type": "headline", "data": 1}})
        assert out == {"local": 1}
        assert c.receive(type="headline")["data"]["ctx"] == {"username": ""}


def test_broadcast_to_a_path_nobody_declared_is_an_error(server):
    import urllib.error

    import pytest
    with pytest.raises(urllib.error.HTTPError) as err:
        server.http().post("/_test/broadcast", {"path": "/api/1/ws/undeclared",
                                                "data": {"type": "x"}})
    assert err.value.code == 500


def test_send_to_client_reaches_only_that_client(server):
    a = WSTestClient(server.ws_url("/api/1/ws/echo"))
    b = WSTestClient(server.ws_url("/api/1/ws/echo"))
    a_id = a.receive(type="connected")["data"]["data"]["clientId"]
    b.receive(type="connected")
    assert server.http().post("/_test/send", {"path": "/api/1/ws/echo", "clientId": a_id,
                                              "data": {"type": "dm", "data": "hi"}}) == \
        {"local": True}
    assert a.receive(type="dm")["data"]["data"] == "hi"
    assert b.receive_all(0.3) == []
    assert server.http().post("/_test/send", {"path": "/api/1/ws/echo",
                                              "clientId": "not-there",
                                              "data": {"type": "dm"}}) == {"local": False}
    a.close()
    b.close()


def test_forced_removal_closes_clients_4404_and_remove_if_empty_refuses(server):
    path = "/api/1/ws/open-rooms/doomed"
    c = WSTestClient(server.ws_url(path))
    c.receive(type="connected")
    http = server.http()
    assert http.post("/_test/remove", {"path": path, "remove_if_empty": True}) == \
        {"removed": False}
    assert http.post("/_test/remove", {"path": path}) == {"removed": True}
    assert c.wait_closed() == 4404
    assert path not in ns_paths(server)


def test_stats_have_the_seed_shape_and_count_traffic(server):
    with WSTestClient(server.ws_url("/api/1/ws/open-rooms/counted")) as c:
        c.receive(type="connected")
        for i in range(3):
            c.send({"type": "say", "requestId": f"r{i}"})
        # No handler here: each gets NO_REPLY, after it was counted.
        assert [c.receive()["requestId"] for _ in range(3)] == ["r0", "r1", "r2"]
        s = stats(server)
        assert {"uptime", "totalConnections", "totalMessages", "totalDropped", "namespaces",
                "activityLog"} <= set(s)
        ns = next(n for n in s["namespaces"] if n["path"] == "/api/1/ws/open-rooms/counted")
        assert {"path", "status", "clientCount", "activeUsers", "messagesPerMin",
                "messagesPerHour", "totalMessages", "deliveries", "lastActivity", "dropped",
                "limits"} <= set(ns)
        assert ns["clientCount"] == 1 and ns["status"] == "green"
        assert ns["totalMessages"] >= 3 and ns["messagesPerMin"] >= 3
        assert ns["lastActivity"].endswith("Z")


def test_a_namespace_without_clients_is_red(server):
    ns = next(n for n in stats(server)["namespaces"] if n["path"] == "/api/1/ws/admin-only")
    assert ns["clientCount"] == 0 and ns["status"] == "red"


def test_active_users_count_distinct_logged_in_usernames(server):
    http = server.http()
    http.post("/_test/login/bob")
    clients = [WSTestClient(server.ws_url("/api/1/ws/secure"),
                            headers={"Cookie": http.cookie_header()}) for _ in range(2)]
    for c in clients:
        c.receive(type="connected")
    ns = next(n for n in stats(server)["namespaces"] if n["path"] == "/api/1/ws/secure")
    assert ns["clientCount"] == 2 and ns["activeUsers"] == 1
    for c in clients:
        c.close()


def test_activity_log_records_each_direction_and_forgets_after_its_window(server):
    with WSTestClient(server.ws_url("/api/1/ws/rooms/logged")) as c:
        c.receive(type="connected")
        c.send({"type": "say", "data": "hello log"})
        c.receive(type="say")
        c.send_text(b"not json")
        c.receive()
    wait_for(lambda: any(e["direction"] == "disconnected" and
                         e["namespace"] == "/api/1/ws/rooms/logged"
                         for e in stats(server)["activityLog"]), message="disconnect entry")
    log = [e for e in stats(server)["activityLog"]
           if e["namespace"] == "/api/1/ws/rooms/logged"]
    assert [e["direction"] for e in log] == ["connected", "sent", "received", "sent",
                                             "rejected", "disconnected"]
    assert [e["type"] for e in log[1:4]] == ["joined", "say", "say"]
    assert "hello log" in log[2]["message"]
    wait_for(lambda: not any(e["namespace"] == "/api/1/ws/rooms/logged"
                             for e in stats(server)["activityLog"]), timeout=5,
             message="entries older than the 2 s window to go")


def test_stopping_the_worker_closes_sockets_with_1001(make_server):
    srv = make_server()
    c = WSTestClient(srv.ws_url("/api/1/ws/echo"))
    c.receive(type="connected")
    import os
    import signal
    for pid in srv.worker_pids():
        os.kill(pid, signal.SIGTERM)  # what the master sends its workers on a deploy
    assert c.wait_closed(timeout=5) == 1001


def test_send_to_user_reaches_all_of_that_users_sockets_and_counts_them(server):
    """One process: the count is the user's sockets reached; other users get nothing."""
    alice = server.http()
    alice.post("/_test/login/alice")
    cookie = {"Cookie": alice.cookie_header()}
    with WSTestClient(server.ws_url("/api/1/ws/echo"), headers=cookie) as a1, \
            WSTestClient(server.ws_url("/api/1/ws/history"), headers=cookie) as a2, \
            WSTestClient(server.ws_url("/api/1/ws/echo")) as anonymous:
        for c in (a1, a2, anonymous):
            c.receive(type="connected")
        out = server.http().post("/_test/send-user", {"userId": "alice",
                                                      "data": {"type": "note", "data": 1}})
        assert out["local"] == 2
        assert a1.receive(type="note")["data"]["data"] == 1
        assert a2.receive(type="note")["data"]["data"] == 1
        out = server.http().post("/_test/send-user", {"userId": "alice", "path":
                                                      "/api/1/ws/echo",
                                                      "data": {"type": "note", "data": 2}})
        assert out["local"] == 1 and a1.receive(type="note")["data"]["data"] == 2
        server.http().post("/_test/broadcast", {"path": "/api/1/ws/echo",
                                                 "data": {"type": "marker", "data": 0}})
        # The anonymous socket's next frame is the later marker: no note came before it.
        assert anonymous.receive()["data"]["type"] == "marker"
