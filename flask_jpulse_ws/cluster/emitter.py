"""``Emitter``: publish to a cluster's clients from anywhere (Celery, cron, scripts).

No Flask app, no gevent: a plain Redis client that writes the same relay messages
the server processes exchange::

    from flask_jpulse_ws import Emitter

    emitter = Emitter("redis://localhost:6379/0")
    emitter.broadcast("/api/1/ws/news", {"type": "headline", "data": {"text": "Hi"}})
    emitter.send_to_client("/api/1/ws/chat", client_id, {"type": "dm", "data": {}})
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core import envelope
from ..core.paths import validate_path
from .keys import check_prefix
from .redis_connect import is_cluster_url, redis_client
from .relay import channel_for, encode_op, new_host_id

__all__ = ["Emitter"]

#: Seconds a publish may wait on Redis before it raises.
EMITTER_TIMEOUT = 5.0


class Emitter:
    """Send to the clients of a jPulse WebSocket cluster through its Redis.

    Frames carry the system ctx (``username: ""``) unless ``ctx`` is given. A failed
    publish raises ``redis.RedisError`` (never retried here: a retry could deliver
    twice; the caller decides, e.g. with Celery's own retry).

    :param redis_url: the servers' ``JPULSE_WS_REDIS_URL`` (``redis://``, ``rediss://``,
        ``unix://``, ``redis+sentinel://`` or ``redis+cluster://``).
    :param channel_prefix: the servers' ``JPULSE_WS_CHANNEL_PREFIX``.
    :param wire_ctx_fields: the servers' ``JPULSE_WS_WIRE_CTX_FIELDS``.
    """

    def __init__(self, redis_url: str, channel_prefix: str = "jpulse-ws",
                 wire_ctx_fields: Sequence[str] = ("username",),
                 timeout: float = EMITTER_TIMEOUT) -> None:
        self.prefix = check_prefix(channel_prefix)
        self.host_id = new_host_id("emitter")
        self.wire_ctx_fields = tuple(wire_ctx_fields)
        # Sharded pub/sub on a Redis Cluster: the servers listen with SSUBSCRIBE.
        self._verb = "SPUBLISH" if is_cluster_url(redis_url) else "PUBLISH"
        self._redis = redis_client(redis_url, socket_timeout=timeout,
                                   socket_connect_timeout=timeout,
                                   retry=Retry(NoBackoff(), 0))

    def _publish(self, op: str, **fields: Any) -> int:
        channel = channel_for(self.prefix, op, fields)
        return int(self._redis.execute_command(self._verb, channel,
                                               encode_op(self.host_id, op, fields)))

    def broadcast(self, path: str, data: Dict[str, Any], ctx: Any = None) -> int:
        """Send ``{type, data}`` to every client of a concrete path on every process.

        :returns: how many server processes received the message: those holding a
            client of ``path`` (and, for a few seconds, those whose last one just left).
        """
        payload = envelope.encode_success(data, envelope.wire_ctx(ctx, self.wire_ctx_fields))
        return self._publish("broadcast", path=validate_path(path), payload=payload,
                             type=str(data.get("type", "")))

    def send_to_client(self, path: str, client_id: str, data: Dict[str, Any],
                       ctx: Any = None) -> int:
        """Send to one client, wherever it is connected.

        :returns: how many server processes received the message (those holding a
            client of ``path``; not whether this client exists).
        """
        payload = envelope.encode_success(data, envelope.wire_ctx(ctx, self.wire_ctx_fields))
        return self._publish("send", path=validate_path(path), clientId=str(client_id),
                             payload=payload, type=str(data.get("type", "")))

    def remove_namespace(self, path: str) -> int:
        """Remove a namespace on every process (its clients are closed 4404)."""
        return self._publish("remove", path=validate_path(path))

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
