"""The Code tab: snippets read from the running app's own files, so they always match."""

from __future__ import annotations

import inspect
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

from . import cursors, notes, request_demo, rooms, todo

__all__ = ["code_examples", "js_blocks"]

HERE = Path(__file__).resolve().parent
_BLOCK = re.compile(r"^[ \t]*// <example:([a-z]+)>\n(.*?)^[ \t]*// </example:\1>", re.M | re.S)

#: (key, title, server module, what the server part shows)
DEMOS = [
    ("cursors", "Emoji cursors (ephemeral)", cursors, "Broadcast checked positions."),
    ("todo", "Todo, pattern A (REST + WebSocket)", todo, "Validate, store, answer, broadcast."),
    ("notes", "Sticky notes, pattern B (WebSocket CRUD)", notes,
     "Validate, store per note, broadcast, reply."),
    ("rooms", "Dynamic rooms", rooms, "on_create, chat, presence: who is here."),
    ("request", "Request / response", request_demo, "conn.reply() and conn.request()."),
]


def _dedent(text: str) -> str:
    lines = text.rstrip().splitlines()
    indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(x[indent:] for x in lines)


@lru_cache(maxsize=1)
def js_blocks() -> Dict[str, str]:
    """The ``// <example:name>`` blocks of static/hello.js, dedented."""
    source = (HERE / "static" / "hello.js").read_text(encoding="utf-8")
    return {m.group(1): _dedent(m.group(2)) for m in _BLOCK.finditer(source)}


@lru_cache(maxsize=1)
def code_examples() -> List[Dict[str, str]]:
    blocks = js_blocks()
    out = []
    for key, title, module, note in DEMOS:
        out.append({"title": f"{title}: server", "note": note,
                    "file": f"example_app/{Path(module.__file__ or '').name}",
                    "code": inspect.getsource(module.init_app)})
        out.append({"title": f"{title}: browser", "note": "The page's part.",
                    "file": "example_app/static/hello.js", "code": blocks.get(key, "")})
    return out
