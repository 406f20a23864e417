"""The package as installed: which core loaded, and what importing it costs."""

from __future__ import annotations

import os
import subprocess
import sys

import fedgate
from fedgate import _accel


def test_compiled_core_loaded_in_a_normal_install() -> None:
    # A normal install builds the extensions; silently running the pure twins
    # would hide a broken build behind slower but passing tests.
    if _accel.NO_EXTENSIONS:
        assert _accel.IMPLEMENTATION == "pure"
        return
    assert _accel.COMPILED, "fedgate._latency / fedgate._breaker_table did not import"
    assert fedgate.IMPLEMENTATION == "compiled"
    assert _accel.LatencyTable.__module__ == "fedgate._latency"
    assert _accel.BreakerTable.__module__ == "fedgate._breaker_table"


def test_no_extensions_switch_forces_the_pure_twins() -> None:
    code = (
        "from fedgate import _accel; print(_accel.IMPLEMENTATION, _accel.LatencyTable.__module__)"
    )
    env = {**os.environ, "FEDGATE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["pure", "fedgate._latency_py"]
