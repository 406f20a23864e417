"""The package as installed: which core loaded, and what importing it costs."""

from __future__ import annotations

import os
import subprocess
import sys

import fedgate
from fedgate import _core
from fedgate.routing.kernels import routing_kernels


def test_compiled_core_loaded_in_a_normal_install() -> None:
    # A normal install builds the extensions; silently running the pure twins
    # would hide a broken build behind slower but passing tests.
    if _core.NO_EXTENSIONS:
        assert _core.IMPLEMENTATION == "pure"
        return
    assert _core.COMPILED, "fedgate._core._latency / fedgate._core._breaker_table did not import"
    assert fedgate.IMPLEMENTATION == "compiled"
    assert _core.LatencyTable.__module__ == "fedgate._core._latency"
    assert _core.BreakerTable.__module__ == "fedgate._core._breaker_table"


def test_routing_kernels_compiled_ahead_of_time_in_a_normal_install() -> None:
    # Just in time would work, but cost every gateway Numba's ~100 MB and a compile.
    how = routing_kernels()[0]
    if _core.NO_EXTENSIONS or os.environ.get("NUMBA_DISABLE_JIT", "") not in ("", "0"):
        assert how == "jit"
        return
    assert how == "aot", (
        "fedgate.routing._kernels_aot did not import: was the build's pycc step skipped?"
    )


GATEWAY_WITHOUT_NUMBA = """
import asyncio, sys
from fedgate import Capability, InferenceRequest
from fedgate.gateway import GatewayBuilder
from fedgate.types import Region, RegionId

async def main():
    gateway = GatewayBuilder().bind("tcp://127.0.0.1:*").build()
    async with gateway:
        try:
            await gateway.infer(InferenceRequest(Capability.GENERATE, b"x", request_id="r"))
        except Exception as exc:  # no worker: routing ran and said so
            print(type(exc).__name__)
        gateway.router.candidates(InferenceRequest(Capability.GENERATE, b"x", request_id="r"))
    print(gateway.router.kernels, "numba" in sys.modules)

asyncio.run(main())
"""


def test_gateway_with_aot_kernels_never_loads_numba() -> None:
    if routing_kernels()[0] != "aot":
        return  # the just-in-time path loads Numba by design
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    out = subprocess.run([sys.executable, "-c", GATEWAY_WITHOUT_NUMBA], env=env,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out[-2:] == ["aot", "False"], out


def test_no_extensions_switch_forces_the_pure_twins() -> None:
    code = (
        "from fedgate import _core; print(_core.IMPLEMENTATION, _core.LatencyTable.__module__)"
    )
    env = {**os.environ, "FEDGATE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["pure", "fedgate._core._latency_py"]
