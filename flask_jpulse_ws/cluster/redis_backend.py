"""The backend over Redis: the same calls as :class:`~.backend.Backend`, carried to every
process of the app (``docs/scaling.md``).

It puts together the relay (pub/sub and the circuit), the link every short command goes
through, the history streams, the client id claims and the cross-process server
requests. Imported only when ``JPULSE_WS_REDIS_URL`` is set.
"""

from __future__ import annotations

from typing import Any, Dict

from ..config import Settings
from .backend import Backend, Hooks
from .cluster_relay import ClusterRelay
from .id_claims import IdClaims
from .redis_connect import is_cluster_url
from .redis_history import RedisHistory
from .redis_relay import RedisRelay
from .remote_request import RemoteRequests
from .revocations import RedisRevocations

__all__ = ["RedisBackend"]


class RedisBackend(Backend):
    """Every process of the app shares one Redis (plain, Sentinel) or one Redis
    Cluster; each listens only to the namespaces it holds clients of."""

    kind = "RedisRelay"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        url = str(settings.redis_url)
        # A Redis Cluster needs sharded pub/sub and a link per master (cluster_relay.py).
        relay_class = ClusterRelay if is_cluster_url(url) else RedisRelay
        self.kind = relay_class.__name__
        self.relay = relay_class(url, settings.channel_prefix,
                                self.host_id, on_op=self._on_op,
                                on_gap=lambda reason: self.hooks.resync_all(reason),
                                on_late=lambda paths: self.hooks.resync_paths(
                                    paths, "relay-gap"),
                                on_recovered=self._on_recovered,
                                stats_row=lambda: self.hooks.stats_row(),
                                linger=settings.unsubscribe_linger)
        self.link = self.relay.link
        self.history = RedisHistory(self.relay)
        self.requests = RemoteRequests(self.relay, self._find_client,
                                       settings.wire_ctx_fields)

    def renew_host_id(self) -> None:
        super().renew_host_id()
        self.relay.host_id = self.host_id

    def bind(self, hooks: Hooks, secret: bytes) -> None:
        super().bind(hooks, secret)
        self.claims = IdClaims(self.link, self.settings.channel_prefix, secret,
                               self.available)
        self.revocations = RedisRevocations(self.link, self.settings.channel_prefix,
                                            self.available)

    # ------------------------------------------------------------------ the calls
    @property
    def degraded(self) -> bool:
        return self.relay.degraded

    def available(self) -> bool:
        return self.relay.ensure_available()

    def serve_nobody(self) -> None:
        self.relay.announce = False

    def start(self) -> None:
        self.relay.start()

    def stop(self) -> None:
        self.relay.stop()

    def follow(self, path: str) -> bool:
        return self.relay.follow(path)

    def unfollow(self, path: str) -> None:
        self.relay.unfollow(path)

    def publish(self, op: str, **fields: Any) -> None:
        self.relay.publish(op, **fields)

    def ask(self, path: str, client_id: str, data: Dict[str, Any], timeout: float,
            ctx: Any) -> Dict[str, Any]:
        return self.requests.ask(path, client_id, data, timeout, ctx)

    def status(self) -> Dict[str, Any]:
        return {"kind": self.kind, **self.relay.status(), "idClaims": self.claims.status()}

    def extra_stats(self) -> Dict[str, Any]:
        return {"remoteRequests": self.requests.status()}

    def cluster_stats(self) -> Dict[str, Any]:
        return self.relay.cluster_stats()

    # ------------------------------------------------------------------ from Redis
    def _on_op(self, message: Dict[str, Any]) -> None:
        op = message.get("op")
        if op == "request":  # a server request for a client that may be held here
            self.requests.on_request(message)
        elif op == "reply":  # the answer to a request this process may have made
            self.requests.on_reply(message)
        else:
            self.hooks.apply(message)

    def _on_recovered(self) -> None:
        self.claims.recovered()  # Redis may have restarted empty: make every claim again

    def _find_client(self, path: str, client_id: str) -> Any:
        return self.hooks.find_client(path, client_id)
