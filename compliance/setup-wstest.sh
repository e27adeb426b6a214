#!/bin/sh
# Creates the Python 2.7 virtualenv that runs wstest (Autobahn|Testsuite runs only under
# Python 2.7), once: $JPULSE_COMPLIANCE_HOME/py27 (default ~/.cache/jpulse-compliance).
# Python 2.7 is found as $PYTHON27, on the PATH, or in pyenv's versions.
set -eu
HOME_DIR="${JPULSE_COMPLIANCE_HOME:-$HOME/.cache/jpulse-compliance}"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$HOME_DIR/py27/bin/wstest" ]; then
    exit 0
fi
PY="${PYTHON27:-}"
if [ -z "$PY" ]; then
    # pyenv's versions first: its python2.7 shim on the PATH fails unless 2.7 is selected.
    for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/2.7*/bin/python2.7 \
            "$(command -v python2.7 || true)"; do
        if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then PY="$candidate"; break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "no Python 2.7 found: install one (pyenv install 2.7.18) or set PYTHON27" >&2
    exit 2
fi
mkdir -p "$HOME_DIR"
# Python 2.7 has no venv module, and virtualenv 20.22+ no longer creates 2.7 environments.
"$PY" -m pip install -q --disable-pip-version-check --target "$HOME_DIR/bootstrap" \
    "virtualenv==20.15.1"
PYTHONPATH="$HOME_DIR/bootstrap" "$PY" -m virtualenv -q "$HOME_DIR/py27"
"$HOME_DIR/py27/bin/pip" install -q --disable-pip-version-check \
    -r "$HERE/requirements-py27.txt"
"$HOME_DIR/py27/bin/wstest" --autobahnversion 2>/dev/null
