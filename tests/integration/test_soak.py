"""Soak and churn, the 2-minute CI version of ``benchmarks/soak.py``.

One gevent worker with the Redis relay; 1,000 connects and disconnects a minute (half
in their own dynamic room, a third without a close frame), 50 steady clients checking
10 numbered broadcasts a second. The 20-minute run and its figures: docs/reliability.md.
"""

import sys

import pytest
from servers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from soak import run_soak, summary  # noqa: E402

#: RSS allowed above the post-warm-up baseline at the end. Measured (docs/reliability.md):
#: +0.49 and +0.56 MB after this 2-minute run, +0.89 MB after 20 minutes and 20,000 connections,
#: with the growth flattening out. 5 MB is more than 5x that noise, and still fails a
#: leak of 2.5 KB per connection (a lost connection object with its buffers and greenlet
#: is far bigger); smaller leaks show as the slope of the 20-minute run.
RSS_BOUND_MB = 5.0
STEADY = 50
HZ = 10.0


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    result = run_soak(minutes=2, rate=1000, steady=STEADY, hz=HZ, sample=2.0, cooldown=10.0,
                      out=tmp_path_factory.mktemp("soak"), log=lambda line: None)
    print("\n" + summary(result))  # shown with -s; the JSON is in the tmp directory
    return result


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_no_broadcast_is_lost_to_a_connected_client(soak):
    """Every steady client has every broadcast, in order, and was never dropped."""
    assert soak["broadcasts_sent"] >= 0.8 * HZ * 120, soak["broadcast_errors"]
    assert soak["steady_disconnected"] == []
    assert soak["lost_messages"] == 0
    assert soak["steady_gaps"] == 0
    assert soak["churn_gaps"] == 0  # short-lived clients saw no hole either


@pytest.mark.soak
def test_every_churn_connection_is_served_and_cleaned_up(soak):
    """2,000 connects all get their welcome (and echo), and none outlives its client."""
    assert soak["churn_connects"] == 2000
    assert soak["churn_failed"] == 0, soak["churn_failures"]
    assert soak["churn_echo_replies"] == 1000
    assert soak["connections_end"] == STEADY
    assert soak["churn_rooms_end"] == 0  # every dynamic room was removed after its grace
    assert soak["fds_end"] <= soak["fds_baseline"]
    assert soak["worker_alive"]


@pytest.mark.soak
def test_memory_returns_to_its_baseline_after_churn(soak):
    """The worker's RSS after the churn is within RSS_BOUND_MB of the post-warm-up one."""
    assert soak["rss_end_mb"] <= soak["rss_baseline_mb"] + RSS_BOUND_MB, \
        {k: soak[k] for k in ("rss_start_mb", "rss_baseline_mb", "rss_peak_mb", "rss_end_mb")}
