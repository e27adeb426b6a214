"""The Prometheus text format of the server's figures (pure; needs ``prometheus_client``,
the ``metrics`` extra).

Each worker publishes a stats row (``AppState.instance_stats``) whose ``metrics`` entry
holds its figures; :func:`render` turns a list of such rows, one per worker, into one
exposition where every sample carries a ``worker`` label (the row's ``instanceId``).
Without Redis there is one row, the worker's own.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Mapping, Sequence, Tuple, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["render", "CONTENT_TYPE", "PREFIX"]

#: Every metric name starts with it.
PREFIX = "jpulse_ws_"
#: The ``Content-Type`` of :func:`render`'s output: the classic text format, which every
#: Prometheus version reads (prometheus_client's own default moved to 1.0.0 in 0.22).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name, help, key in the row's "metrics"), one sample per worker.
_COUNTERS = (
    ("connections", "Connections welcomed since the worker started.", "connections"),
    ("messages_received", "Messages accepted from clients.", "messagesIn"),
    ("messages_sent", "Messages sent to this worker's clients: each send, broadcast or "
     "reply once, those relayed from other workers included.", "messagesOut"),
    ("deliveries", "Frames handed to sockets: a broadcast to N clients counts N.",
     "deliveries"),
    ("refused_origins", "Upgrades refused 403 by the origin check.", "refusedOrigins"),
    ("server_errors", "Connections ended by an unexpected exception after the 101.",
     "serverErrors"),
)
_GAUGES = (
    ("open_connections", "Sockets open on this worker.", "openConnections"),
    ("namespaces", "Live namespaces on this worker.", "namespaces"),
    ("uptime_seconds", "Seconds since the worker's extension started.", "uptime"),
    ("presence_members", "Presence members held by this worker.", "presenceMembers"),
    ("history_streams", "History streams kept in this worker's memory (no Redis).",
     "historyStreams"),
    ("history_entries", "Messages kept in those history streams.", "historyEntries"),
)
# (name, help, key in the row's "metrics" -> "relay"); counters of the Redis relay.
_RELAY_COUNTERS = (
    ("relay_published", "Operations published to Redis.", "published"),
    ("relay_received", "Operations received from Redis (own echoes included).", "received"),
    ("relay_dropped", "Operations dropped: Redis unreachable or the link's queue full.",
     "dropped"),
    ("relay_outages", "Times the relay lost Redis.", "outages"),
)
# (name, help, label, key): one sample per worker and label value.
_LABELLED = (
    ("dropped", "Inbound messages refused, and slow consumers cut, by reason.", "reason",
     "dropped"),
    ("closes", "Welcomed connections ended, by close code (1006: cut, no close frame).",
     "code", "closes"),
    ("rejections", "Connections refused during admission, by close code.", "code",
     "rejections"),
)


def render(rows: Iterable[Mapping[str, Any]], now: float, partial: bool = False) -> bytes:
    """The text exposition of every worker's row.

    :param rows: stats rows (``get_stats(cluster=True)["cluster"]["instances"]``); a row
        without ``metrics`` (a worker of an older version) counts only as a worker.
    :param now: the current time (``time.time()``), for the age of each row.
    :param partial: the other workers' rows could not be read (Redis unreachable).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RowsCollector(list(rows), now, partial))
    return generate_latest(registry)


class _RowsCollector(Collector):
    def __init__(self, rows: Sequence[Mapping[str, Any]], now: float, partial: bool) -> None:
        self.rows, self.now, self.partial = rows, now, partial

    def collect(self) -> Iterator[Metric]:
        workers = [(str(r.get("instanceId", "")), r["metrics"]) for r in self.rows
                   if isinstance(r.get("metrics"), Mapping)]
        yield GaugeMetricFamily(PREFIX + "workers", "Workers whose figures this scrape holds.",
                                value=len(self.rows))
        yield GaugeMetricFamily(PREFIX + "scrape_partial",
                                "1 when only this worker's figures could be read (Redis "
                                "down).", value=1 if self.partial else 0)
        for name, text, key in _COUNTERS:
            yield _family(CounterMetricFamily(PREFIX + name, text, labels=("worker",)),
                          [(w, m.get(key)) for w, m in workers])
        for name, text, key in _GAUGES:
            yield _family(GaugeMetricFamily(PREFIX + name, text, labels=("worker",)),
                          [(w, m.get(key)) for w, m in workers])
        for name, text, label, key in _LABELLED:
            family = CounterMetricFamily(PREFIX + name, text, labels=("worker", label))
            for worker, m in workers:
                for value, n in sorted((m.get(key) or {}).items()):
                    family.add_metric((worker, str(value)), float(n))
            yield family
        relay = [(w, m.get("relay") or {}) for w, m in workers]
        yield _family(GaugeMetricFamily(PREFIX + "relay_degraded",
                                        "1 while the worker cannot reach Redis.",
                                        labels=("worker",)),
                      [(w, 1 if r.get("degraded") else 0) for w, r in relay])
        yield _family(GaugeMetricFamily(PREFIX + "relay_degraded_seconds",
                                        "Seconds the current Redis outage has lasted (0 "
                                        "when none).", labels=("worker",)),
                      [(w, r.get("degradedFor", 0)) for w, r in relay])
        yield _family(GaugeMetricFamily(PREFIX + "relay_queued",
                                        "Redis commands waiting in the worker's link: its "
                                        "lag behind what it has to send.",
                                        labels=("worker",)),
                      [(w, r.get("queued")) for w, r in relay])
        for name, text, key in _RELAY_COUNTERS:
            yield _family(CounterMetricFamily(PREFIX + name, text, labels=("worker",)),
                          [(w, r.get(key)) for w, r in relay])
        yield _family(GaugeMetricFamily(PREFIX + "stats_age_seconds",
                                        "How old the worker's figures are (each worker "
                                        "publishes them every 2 s).", labels=("worker",)),
                      [(w, round(max(0.0, self.now - float(m.get("updatedAt", self.now))), 3))
                       for w, m in workers])


def _family(family: Union[CounterMetricFamily, GaugeMetricFamily],
            samples: List[Tuple[str, Any]]) -> Metric:
    for worker, value in samples:
        if value is not None:  # a figure this worker does not have (no Redis, no presence)
            family.add_metric((worker,), float(value))
    return family
