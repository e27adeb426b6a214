"""A standalone SVG flame graph from collapsed stacks (py-spy ``record -f raw``), no
dependency: the classic flamegraph.pl layout, root at the bottom, each frame as wide as
its samples, children sorted by name. Frames merge by function and file, not line, so
the lines of one function make one box. Hover a box for its samples (a ``<title>``).

    from flamegraph import render
    Path("profile.svg").write_text(render(Path("profile.txt").read_text(), "reqrep-50"))
"""

from __future__ import annotations

import html
import re
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]  # the repository
FRAME = re.compile(r"(.*) \((.*):(\d+)\)$")  # "func (path/file.py:LINE)"

WIDTH = 1200  # px, the whole image
PAD = 10  # px left and right of the root
ROW = 16  # px per stack level
FONT = 11  # px
CHAR = FONT * 0.6  # px, the width of an average character (approximate)
TOP = 50  # px above the top row: title, subtitle
MIN_SHARE = 0.001  # frames narrower than 0.1 % of the width are left out


def short(path: str) -> str:
    """A path without site-packages, the repository root or the stdlib's directory."""
    path = re.sub(r"^.*/site-packages/", "", path)
    path = path.replace(str(ROOT) + "/", "")
    return re.sub(r"^.*/lib/python3\.\d+/", "stdlib/", path)


def split_frame(frame: str) -> Tuple[str, str, Optional[int]]:
    """``func (path:LINE)`` -> (func, short path, line); a frame without a location
    (a C frame, py-spy's thread or process label) -> (frame, "", None)."""
    m = FRAME.match(frame)
    if not m:
        return frame, "", None
    return m.group(1), short(m.group(2)), int(m.group(3))


def merged_name(frame: str) -> str:
    """The name frames merge by: function and file, without the line."""
    func, path, _ = split_frame(frame)
    return f"{func} ({path})" if path else func


def parse(collapsed_text: str) -> Iterator[Tuple[List[str], int]]:
    """(frames outermost first, samples) per line of ``frame;frame;... COUNT``."""
    for line in collapsed_text.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if stack and n.isdigit():
            yield stack.split(";"), int(n)


class Node:
    __slots__ = ("name", "samples", "children")

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples = 0
        self.children: Dict[str, Node] = {}


def build(collapsed_text: str) -> Node:
    root = Node("all")
    for frames, n in parse(collapsed_text):
        root.samples += n
        node = root
        for frame in frames:
            name = merged_name(frame)
            node = node.children.setdefault(name, Node(name))
            node.samples += n
    return root


def colour(name: str) -> str:
    """A warm colour from a hash of the function name (stable across runs and files)."""
    h = zlib.crc32(name.split(" (")[0].encode())
    r, g, b = 205 + h % 51, (h >> 8) % 231, (h >> 16) % 56
    return f"rgb({r},{g},{b})"


def _label(name: str, width: float) -> str:
    fits = int((width - 6) / CHAR)
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[:fits - 2] + ".."


def render(collapsed_text: str, title: str, subtitle: str = "") -> str:
    """The SVG (a complete document) of the stacks in ``collapsed_text``."""
    root = build(collapsed_text)
    total = max(root.samples, 1)
    scale = (WIDTH - 2 * PAD) / total
    boxes: List[Tuple[Node, int, float]] = []  # node, depth, x

    def place(node: Node, depth: int, x: float) -> int:
        boxes.append((node, depth, x))
        deepest = depth
        for name in sorted(node.children):
            child = node.children[name]
            if child.samples / total >= MIN_SHARE:
                deepest = max(deepest, place(child, depth + 1, x))
            x += child.samples * scale
        return deepest

    depth = place(root, 0, PAD)
    height = TOP + (depth + 1) * ROW + PAD
    esc = html.escape
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Verdana, sans-serif" '
        f'font-size="{FONT}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f0"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="16">{esc(title)}</text>',
        f'<text x="{WIDTH / 2}" y="38" text-anchor="middle" fill="#555">{esc(subtitle)}</text>',
    ]
    for node, level, x in boxes:
        w = node.samples * scale
        y = height - PAD - (level + 1) * ROW
        pct = 100.0 * node.samples / total
        tip = f"{node.name}: {node.samples} samples ({pct:.2f} %)"
        out.append(
            f'<g><title>{esc(tip)}</title>'
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" '
            f'fill="{colour(node.name)}" rx="2"/>'
            f'<text x="{x + 3:.2f}" y="{y + ROW - 4}">{esc(_label(node.name, w))}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
