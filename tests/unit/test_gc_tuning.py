"""The cycle collector's thresholds: only CPython's defaults are raised, once per process."""

import gc

import pytest

from flask_jpulse_ws import config
from flask_jpulse_ws.server import gc_tuning


@pytest.mark.parametrize("current", sorted(gc_tuning.CPYTHON_DEFAULTS))
def test_cpython_defaults_get_the_young_threshold(current):
    assert gc_tuning.tuned_threshold(current, 10000) == (10000,) + current[1:]


@pytest.mark.parametrize("current, young", [
    ((700, 10, 10), 0),        # switched off
    ((5000, 10, 10), 10000),   # the app's own thresholds
    ((700, 20, 10), 10000),
    ((0, 10, 10), 10000),      # the app disabled automatic collection this way
    ((2000, 10, 0), 1000),     # never lowered
])
def test_anything_else_is_left_alone(current, young):
    assert gc_tuning.tuned_threshold(current, young) is None


@pytest.fixture
def restore_collector(monkeypatch):
    before = gc.get_threshold()
    monkeypatch.setattr(gc_tuning, "_tuned", False)
    yield
    gc.set_threshold(*before)


def test_the_first_call_decides_for_the_process(restore_collector):
    gc.set_threshold(700, 10, 10)
    gc_tuning.tune_collector(10000)
    assert gc.get_threshold() == (10000, 10, 10)
    gc.set_threshold(700, 10, 10)
    gc_tuning.tune_collector(20000)  # a second app in the same process
    assert gc.get_threshold() == (700, 10, 10)


def test_an_apps_own_thresholds_are_kept(restore_collector):
    gc.set_threshold(3000, 15, 15)
    gc_tuning.tune_collector(10000)
    assert gc.get_threshold() == (3000, 15, 15)


def test_the_setting_accepts_zero_and_refuses_negative_values():
    assert config.load({"JPULSE_WS_GC_THRESHOLD": "0"}).gc_threshold == 0
    assert config.load({}).gc_threshold == 10000
    with pytest.raises(ValueError, match="JPULSE_WS_GC_THRESHOLD"):
        config.load({"JPULSE_WS_GC_THRESHOLD": -1})
