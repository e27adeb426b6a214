"""Sphinx configuration for flask-jpulse-ws.

Built by ``make docs`` as ``sphinx-build -W -b html docs docs/_build/html``: every
warning is an error, so a broken reference or a page missing from the toctree fails
the build. Pages are Markdown (MyST); the API reference is reST for autodoc.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

from flask_jpulse_ws import __version__  # noqa: E402

project = "flask-jpulse-ws"
author = "flask-jpulse-ws contributors"
copyright = "flask-jpulse-ws contributors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# examples/ holds Python files that pages include and tests import; not pages.
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors so pages can link to sections (page.md#section).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# autodoc: members in source order, signatures with their type hints.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options: dict = {}  # each directive names its public members

html_theme = "alabaster"
html_title = f"flask-jpulse-ws {release}"
html_static_path: list = []
