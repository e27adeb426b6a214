"""Settings shared by the benchmark server apps (read from the environment).

The runner (benchmarks/run.py) sets these variables before starting gunicorn:

- ``BENCH_REDIS_URL``: a Redis URL for the cross-worker scenario (unset: one process).
- ``BENCH_PING_INTERVAL``: seconds between protocol pings (default 120, so that pings
  do not disturb the measurements; every peer gets the same value where it has one).
- ``BENCH_HISTORY_SIZE``: jpulse only, missed-message history length (unset: off).
- ``BENCH_GC_THRESHOLD``: jpulse only, ``JPULSE_WS_GC_THRESHOLD`` (unset: the default),
  for an A/B run by hand.
"""

import os

REDIS_URL = os.environ.get("BENCH_REDIS_URL") or None
PING_INTERVAL = float(os.environ.get("BENCH_PING_INTERVAL", "120"))
HISTORY_SIZE = int(os.environ.get("BENCH_HISTORY_SIZE", "0") or 0)
GC_THRESHOLD = os.environ.get("BENCH_GC_THRESHOLD") or None  # None: the package's default
