"""``flask jpulse-ws ...``: the app's WebSocket side from the command line.

The commands reach the running servers through Redis (``JPULSE_WS_REDIS_URL``): a
command-line process holds no sockets, so without Redis it can only list what is
declared. Output is JSON, for scripts and ``jq``::

    flask --app myapp jpulse-ws namespaces
    flask --app myapp jpulse-ws stats --cluster
    flask --app myapp jpulse-ws broadcast /api/1/ws/chat '{"type": "notice", "data": "Back in 5"}'
    flask --app myapp jpulse-ws send /api/1/ws/chat 6f1c...5f '{"type": "dm", "data": "hi"}'
"""

from __future__ import annotations

import json
from typing import Any, Dict

import click
from flask import current_app
from flask.cli import AppGroup

from ..cluster.relay import merge_instances

__all__ = ["commands"]

commands = AppGroup("jpulse-ws", help="WebSocket namespaces of this app (flask-jpulse-ws).")


def _state() -> Any:
    state = current_app.extensions.get("jpulse_ws")
    if state is None:
        raise click.ClickException("JPulseWS is not initialised for this app")
    state.backend.serve_nobody()  # not a server: no row of its own in the cluster stats
    return state


def _needs_redis(state: Any, what: str) -> None:
    if not state.settings.redis_url:
        raise click.ClickException(
            f"{what} needs JPULSE_WS_REDIS_URL: without Redis each server process keeps its "
            f"clients to itself, and this command-line process holds none of them")


def _message(text: str) -> Dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise click.BadParameter('a JSON object with a "type", e.g. {"type": "news", '
                                 '"data": "hello"}')
    return data


def _echo(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@commands.command("namespaces")
def namespaces() -> None:
    """The declared namespaces, and with Redis the live ones on every server."""
    state = _state()
    registry = state.registry
    declared = [{"path": t.path, "pattern": t.is_pattern, "requireAuth": t.require_auth,
                 "requireRoles": list(t.require_roles), "historySize": t.history_size,
                 "presence": t.has_presence}
                for t in [*registry.literals.values(), *registry.patterns]]
    out: Dict[str, Any] = {"declared": sorted(declared, key=lambda t: t["path"])}
    if state.settings.redis_url:
        out["live"] = _cluster(state)["namespaces"]
    _echo(out)


@commands.command("stats")
@click.option("--cluster", "per_worker", is_flag=True,
              help="also one row per server process")
def stats(per_worker: bool) -> None:
    """Totals over every server process (from their snapshots in Redis)."""
    state = _state()
    _needs_redis(state, "stats of the running servers")
    merged = _cluster(state)
    if not per_worker:
        merged.pop("instances", None)
    _echo(merged)


@commands.command("broadcast")
@click.argument("path")
@click.argument("message")
def broadcast(path: str, message: str) -> None:
    """Send MESSAGE (JSON) to every client of the concrete PATH, on every server."""
    state = _state()
    _needs_redis(state, "broadcast")
    data = _message(message)
    try:
        state.fanout.broadcast(path, data)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None
    _echo({"sent": True, "path": path, "relay": _relay_state(state)})


@commands.command("send")
@click.argument("path")
@click.argument("client_id")
@click.argument("message")
def send(path: str, client_id: str, message: str) -> None:
    """Send MESSAGE (JSON) to the client CLIENT_ID of PATH, wherever it is connected."""
    state = _state()
    _needs_redis(state, "send")
    data = _message(message)
    try:
        state.fanout.send_to_client(path, client_id, data)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None
    _echo({"sent": True, "path": path, "clientId": client_id, "relay": _relay_state(state)})


def _cluster(state: Any) -> Dict[str, Any]:
    """Every server's stats row, without this command-line process's own."""
    merged = state.backend.cluster_stats()
    rows = [r for r in merged.get("instances", ())
            if r.get("instanceId") != state.backend.host_id]
    out = merge_instances(rows)
    if merged.get("error"):
        raise click.ClickException(str(merged["error"]))
    return out


def _relay_state(state: Any) -> str:
    status = state.backend.status()
    if status.get("dropped"):
        raise click.ClickException(f"not sent: Redis unavailable ({status.get('lastError')})")
    return "published"
