"""``JPULSE_WS_METRICS_URL``: the Prometheus view, for the allowed addresses only.

The figures of every worker come from the stats rows they publish to Redis (the rows
of ``get_stats(cluster=True)``), so one scrape of any worker shows them all, each with
its ``worker`` label.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any, List, Union

from flask import Flask, Response, request

from . import auth

if TYPE_CHECKING:  # pragma: no cover
    from .state import AppState

__all__ = ["register"]

log = logging.getLogger("flask_jpulse_ws")

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def register(app: Flask, state: AppState) -> None:
    """Serve the metrics at ``JPULSE_WS_METRICS_URL`` (called by ``init_app`` when set)."""
    try:
        from ..core import metrics
    except ImportError as exc:
        raise RuntimeError("JPULSE_WS_METRICS_URL needs prometheus_client: pip install "
                           "'flask-jpulse-ws[metrics]'") from exc
    settings = state.settings
    assert settings.metrics_url is not None
    allowed: List[_Network] = [ipaddress.ip_network(entry, strict=False)
                               for entry in settings.metrics_allowed_ips]

    def jpulse_ws_metrics() -> Any:
        # The client as the origin check sees it: behind N trusted proxies, the address
        # they forwarded, so nginx's own loopback address lets nobody in by itself.
        ip = auth.client_ip(request.environ, settings.trusted_proxies)
        if not _allowed(ip, allowed):
            log.info("refused metrics to %s (not in JPULSE_WS_METRICS_ALLOWED_IPS)", ip)
            return Response("Forbidden: not in JPULSE_WS_METRICS_ALLOWED_IPS\n", 403,
                            mimetype="text/plain")
        cluster = state.backend.cluster_stats()
        body = metrics.render(cluster["instances"], time.time(), partial="error" in cluster)
        return Response(body, 200, {"Content-Type": metrics.CONTENT_TYPE,
                                    "Cache-Control": "no-store"})

    app.add_url_rule(settings.metrics_url, "jpulse_ws_metrics", jpulse_ws_metrics,
                     methods=["GET"])


def _allowed(ip: str, allowed: List[_Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return any(address.version == net.version and address in net for net in allowed)
