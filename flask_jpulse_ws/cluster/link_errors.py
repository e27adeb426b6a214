"""How a Redis call through the link can fail (``redis_link.py``); importing them loads
no redis, so the server's parts can catch them in a process that runs without Redis."""

from __future__ import annotations

__all__ = ["LinkError", "LinkDown", "LinkBusy", "CommandFailed"]


class LinkError(Exception):
    """A Redis call did not give its result; the caller takes its fallback."""


class LinkDown(LinkError):  # noqa: N818 - named for the state it reports
    """The connection to Redis failed or Redis did not answer (already reported)."""


class LinkBusy(LinkError):  # noqa: N818 - named for the state it reports
    """The call waited too long for its turn, or the queue is full: not an outage.

    ``sent`` tells whether the commands had gone to Redis when the caller gave up (their
    outcome is then unknown); otherwise they never will be, if the call was cancelled.
    """

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class CommandFailed(LinkError):  # noqa: N818 - named for the state it reports
    """Redis answered a command with an error (``reply``: redis-py's exception for it,
    e.g. a ``MovedError`` the Redis Cluster link follows)."""

    def __init__(self, message: str, reply: object = None) -> None:
        super().__init__(message)
        self.reply = reply
