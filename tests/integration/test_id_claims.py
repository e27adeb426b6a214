"""The Redis scripts behind cluster-wide client id claims, against a private redis-server.

``IdClaims`` gets the link to Redis, the key prefix, the app's secret key and whether
Redis is available, as the Redis backend gives them. The handshake side is covered by
test_cluster.py::test_a_client_id_held_on_another_worker_is_not_given_to_another_identity,
and, at the end of this file, what happens to a namespace while a handshake waits on its
claim (real gunicorn, real Redis, the handshake held at the claim by cluster_app's gate).
"""

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import redis as redis_py
from servers import wait_for

from flask_jpulse_ws.cluster.id_claims import CLAIM_REFRESH, CLAIM_TTL, IdClaims
from flask_jpulse_ws.cluster.keys import client_id_key
from flask_jpulse_ws.cluster.redis_link import RedisLink
from flask_jpulse_ws.testing import WSTestClient

APP = "cluster_app:create_app()"

PATH = "/api/1/ws/rooms/a"
ID = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
ID2 = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"


def make_claims(url):
    client = redis_py.Redis.from_url(url)
    link = RedisLink(redis_py.Redis.from_url(url), on_down=lambda reason: None)
    return IdClaims(link, "claims-test", b"s3cret", available=lambda: True), client


class StandIn:
    """A socket as the claims see it: open, and known to its namespace by its id."""

    def __init__(self, client_id, identity=("user", "x", "t"), claim=None):
        self.client_id, self.identity = client_id, identity
        self.namespace = SimpleNamespace(path=PATH, clients={client_id: self})
        self.id_claim, self.id_claimed_at, self.needs_claim = claim, 0.0, claim is None
        self.open, self.closed_with = True, None

    def close(self, code, reason=""):
        self.closed_with = code


def conn_of(client_id, claim):
    return StandIn(client_id, claim=claim)


def test_claims_keep_ids_per_identity_and_release_only_their_own(redis_server):
    claims, client = make_claims(redis_server.url)
    alice, mallory = ("user", "alice", "tok-a"), ("anon", "10.0.0.9", "curl")
    got, first, later = claims.claim(PATH, ID, alice)
    assert got == ID and first and not later
    key = client_id_key("claims-test", PATH, ID)
    stored = client.get(key).decode()
    assert stored == first and "alice" not in stored and "tok-a" not in stored  # keyed digest
    assert 0 < client.pttl(key) <= CLAIM_TTL * 1000
    other, other_claim, _ = claims.claim(PATH, ID, mallory)
    assert other != ID and other_claim  # another identity gets a fresh id, claimed too
    again, second, _ = claims.claim(PATH, ID, alice)  # the same identity, another worker
    assert again == ID and second != first
    # The older socket's release leaves the newer socket's claim alone (the script):
    assert claims.link.eval(claims._release, [key], [first]) == 0
    assert client.get(key).decode() == second
    claims.release(conn_of(ID, second))  # sent in a batch, from a task
    wait_for(lambda: client.get(key) is None, timeout=5, message="the claim released")
    assert claims.claim(PATH, ID, mallory)[0] == ID  # free again


def test_refresh_extends_and_remakes_lost_claims_but_never_steals(redis_server):
    claims, client = make_claims(redis_server.url)
    _, claim, _ = claims.claim(PATH, ID2, ("user", "bob", "t"))
    key = client_id_key("claims-test", PATH, ID2)
    client.pexpire(key, 1000)
    conn = conn_of(ID2, claim)
    claims.refresh([conn], now=CLAIM_REFRESH + 1)
    assert client.pttl(key) > 1000 and conn.id_claimed_at == CLAIM_REFRESH + 1
    client.delete(key)  # lost (Redis restarted without persistence): made again
    claims.refresh([conn], now=2 * CLAIM_REFRESH + 2)
    assert client.get(key).decode() == claim
    client.set(key, "someone-else:1")  # taken by another identity while Redis had lost it:
    claims.refresh([conn], now=3 * CLAIM_REFRESH + 3)  # left alone, and ours closed 4409
    assert client.get(key).decode() == "someone-else:1"
    assert conn.closed_with == 4409 and conn.id_claim is None


def test_late_claims_take_free_ids_and_close_4409_when_another_identity_holds_one(
        redis_server):
    """Sockets admitted while Redis was away are claimed by the health cycle; one whose
    id another identity took meanwhile is closed 4409 (its client reconnects with a fresh
    id), and a socket that left meanwhile is not claimed."""
    claims, client = make_claims(redis_server.url)
    free = StandIn("1c1c1c1c-1111-4111-8111-111111111111", ("user", "carol", "t"))
    taken = StandIn("2d2d2d2d-2222-4222-8222-222222222222", ("user", "dave", "t"))
    gone = StandIn("3e3e3e3e-3333-4333-8333-333333333333", ("user", "erin", "t"))
    gone.open = False
    client.set(client_id_key("claims-test", PATH, taken.client_id), "someone-else:1")
    claims.claim_late([free, taken, gone], now=7.0)
    assert free.id_claim and free.id_claimed_at == 7.0 and free.closed_with is None
    assert client.get(client_id_key("claims-test", PATH, free.client_id)).decode() == \
        free.id_claim
    assert taken.closed_with == 4409 and taken.id_claim is None
    assert not free.needs_claim and not taken.needs_claim
    assert client.get(client_id_key("claims-test", PATH, gone.client_id)) is None
    assert claims.status()["late"] == 1 and claims.status()["conflicts"] == 1


def held_at_the_claim(srv, path):
    """A handshake to ``path`` that waits at its id claim: a future of its client. The
    HTTP 101 leaves with the first frame after admission, so the client is made in a
    thread and has its 101 only once the gate opens."""
    http = srv.http()
    http.post("/_test/claim-gate", {"path": path})
    pool = ThreadPoolExecutor(1)
    client = pool.submit(WSTestClient, srv.ws_url(path), timeout=20)
    pool.shutdown(wait=False)
    wait_for(lambda: http.get("/_test/claim-gate")["waiting"] == 1, timeout=10,
             message="the handshake waiting at its claim")
    assert not client.done()  # no 101 before admission
    return client


def test_a_room_whose_first_socket_waits_on_its_claim_is_not_evicted_at_the_cap(
        make_server, redis_server):
    """At JPULSE_WS_MAX_NAMESPACES, a new room is empty while its first socket waits on
    its claim; a rival room's handshake must not evict it (the rival is refused 4529),
    so the first socket joins a namespace that broadcasts reach."""
    cap = 30
    srv = make_server(app=APP, settings={"JPULSE_WS_REDIS_URL": redis_server.url,
                                         "JPULSE_WS_CHANNEL_PREFIX": "claim-evict",
                                         "JPULSE_WS_MAX_NAMESPACES": cap})
    http = srv.http()
    literals = http.get("/_test/stats")["totalNamespaces"]
    full = [WSTestClient(srv.ws_url(f"/api/1/ws/cluster-rooms/full-{i}"))
            for i in range(cap - literals - 1)]  # every room but one taken and occupied
    for c in full:
        c.receive(type="connected")
    path = "/api/1/ws/cluster-rooms/first"
    first = held_at_the_claim(srv, path)
    rival = WSTestClient(srv.ws_url("/api/1/ws/cluster-rooms/rival"))
    assert rival.wait_closed(timeout=10) == 4529
    http.post("/_test/claim-gate/open")
    first = first.result(timeout=10)
    first.receive(type="connected", timeout=10)
    assert http.get(f"/_test/namespace?path={path}")["clientCount"] == 1
    http.post("/_test/broadcast", {"path": path, "data": {"type": "reached"}})
    assert first.receive(type="reached", timeout=5)
    for c in full + [first]:
        c.close()


def test_a_room_removed_while_its_first_socket_waits_on_its_claim_closes_it_4404(
        make_server, redis_server):
    """A room being joined is not empty (``remove_if_empty`` leaves it); removed anyway
    by the app, its waiting handshake ends in 4404 instead of a namespace nobody
    reaches."""
    srv = make_server(app=APP, settings={"JPULSE_WS_REDIS_URL": redis_server.url,
                                         "JPULSE_WS_CHANNEL_PREFIX": "claim-remove"})
    http = srv.http()
    path = "/api/1/ws/cluster-rooms/doomed"
    client = held_at_the_claim(srv, path)
    assert http.post("/_test/remove", {"path": path, "remove_if_empty": True}) == \
        {"removed": False}
    assert http.post("/_test/remove", {"path": path}) == {"removed": True}
    http.post("/_test/claim-gate/open")
    assert client.result(timeout=10).wait_closed(timeout=10) == 4404
    assert http.get(f"/_test/namespace?path={path}") is None
    assert http.get("/_test/stats")["rejections"].get("4404") == 1
