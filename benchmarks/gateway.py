"""asv: end-to-end ``gateway.infer()`` to worker processes, beside a bare pyzmq round trip.

Ours: :meth:`fedgate.gateway.gateway.Gateway.infer` on this process's event loop to
zero-delay synthetic workers (``python -m fedgate.worker --tokens 1``, one
token, no time to first token) over loopback TCP — routing, the attempt
loop, encoding, the ROUTER socket, the worker's asyncio loop and backend, the
Final frame back, stats.

Baseline: the same loop's ``zmq.asyncio`` DEALER sending a frame of the same
size as the gateway's Request to a ROUTER echo in another process (a
blocking ``recv_multipart``/``send_multipart`` loop: the cheapest possible
server), and awaiting it back. Both sides cross the same loopback and the same
pyzmq asyncio machinery, so the ratio is the gateway's own overhead plus the
worker's.

:class:`Rig` owns the processes and the event loop; ``benchmarks/test_gateway.py``
(pytest-benchmark) measures exactly the same coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.transport import protocol as wire
from fedgate.types import Capability, InferenceRequest

__all__ = ["ECHO_SERVER", "GatewayLatency", "GatewayThroughput", "Rig"]

ECHO_SERVER = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.SNDHWM, 0)
sock.setsockopt(zmq.RCVHWM, 0)
sock.bind("tcp://127.0.0.1:*")
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
while True:
    sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
"""
"""A ROUTER that sends every message straight back (run with ``python -c``)."""


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _new_loop(uvloop: bool) -> asyncio.AbstractEventLoop:
    if uvloop:
        import uvloop as _uvloop

        return _uvloop.new_event_loop()
    return asyncio.new_event_loop()


_REQUEST = InferenceRequest(Capability.GENERATE, b"x", request_id="bench-0")
# Run the children from the checkout, so they import the fedgate being measured.
_REPO = Path(__file__).resolve().parent.parent


def _spawn(*argv: str, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=stdout, cwd=_REPO
    )


class Rig:
    """A gateway with ``workers`` zero-delay worker processes, and a raw echo pair.

    Everything runs on the rig's own event loop; the ``*_sync`` helpers drive
    it from synchronous code (asv and pytest-benchmark call plain functions).
    """

    def __init__(self, workers: int = 2, *, uvloop: bool | None = None) -> None:
        self.workers = workers
        # uvloop (when installed) on both sides, for ours and the baseline alike:
        # FEDGATE_BENCH_UVLOOP=0 measures the stock asyncio loop instead.
        if uvloop is None:
            uvloop = os.environ.get("FEDGATE_BENCH_UVLOOP", "1") != "0" and _has_uvloop()
        self.uvloop = uvloop
        self.loop = _new_loop(uvloop)
        self.gateway: Gateway | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.echo: subprocess.Popen[bytes] | None = None
        self.ctx: zmq.asyncio.Context | None = None
        self.dealer: zmq.asyncio.Socket | None = None
        # The baseline's frame is as large as the Request the gateway sends.
        self.frame = wire.encode(
            wire.Request(
                wire.new_rid(), 1, _REQUEST.request_id, None, "generate", None, _REQUEST.input, 30.0
            )
        )

    # ------------------------------------------------------------------ lifecycle
    def worker_flags(self, index: int) -> list[str]:
        """Flags of worker ``index``: zero-delay synthetic, one token."""
        return [
            "--region", "us-west-2", "--model", "m", "--capability", "generate",
            "--tokens", "1", "--log-level", "WARNING",
        ]  # fmt: skip

    def start(self) -> Rig:
        try:
            self.loop.run_until_complete(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        gateway = (
            GatewayBuilder()
            .bind("tcp://127.0.0.1:*")
            .config(GatewayConfig(request_timeout=30.0))
            .build()
        )
        await gateway.start()  # compiles the routing kernels (seconds, once per process)
        self.gateway = gateway
        for i in range(self.workers):
            argv = ["-m", "fedgate", "worker", "--gateway", gateway.endpoints[0], "--node", f"b{i}"]
            flags = self.worker_flags(i) + (["--uvloop"] if self.uvloop else [])
            self.procs.append(_spawn(*argv, *flags))
        await gateway.wait_for_workers(self.workers, timeout=30.0)

        self.echo = _spawn("-c", ECHO_SERVER, stdout=subprocess.PIPE)
        self.procs.append(self.echo)
        assert self.echo.stdout is not None
        endpoint = self.echo.stdout.readline().decode().strip()
        self.echo.stdout.close()
        if not endpoint.startswith("tcp://"):
            raise RuntimeError(f"echo server: expected its endpoint, got {endpoint!r}")
        self.ctx = zmq.asyncio.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.SNDHWM, 0)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        self.dealer.connect(endpoint)
        # The first round trips pay for connecting; neither side is timed cold.
        for _ in range(50):
            await self.raw_once()
            await self.infer_once()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.gateway is not None:
                self.loop.run_until_complete(self.gateway.stop())
        if self.dealer is not None:
            self.dealer.close(0)
        if self.ctx is not None:
            self.ctx.term()
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        self.procs.clear()
        self.gateway = self.echo = self.ctx = self.dealer = None
        if not self.loop.is_closed():
            self.loop.close()

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    # ------------------------------------------------------------------ one call
    async def infer_once(self) -> None:
        assert self.gateway is not None
        await self.gateway.infer(_REQUEST)

    async def raw_once(self) -> None:
        assert self.dealer is not None
        await self.dealer.send(self.frame)
        await self.dealer.recv()

    # ------------------------------------------------------------------ batches
    async def sequential(self, once: Callable[[], Awaitable[None]], n: int) -> list[float]:
        """``n`` calls one after the other; each call's latency in seconds."""
        clock = time.perf_counter
        out = []
        for _ in range(n):
            t = clock()
            await once()
            out.append(clock() - t)
        return out

    async def infer_concurrent(self, total: int, inflight: int = 64) -> float:
        """``total`` infer() calls, ``inflight`` at a time; requests per second."""
        assert self.gateway is not None
        infer = self.gateway.infer
        per_task = total // inflight

        async def lane() -> None:
            for _ in range(per_task):
                await infer(_REQUEST)

        t = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        return per_task * inflight / (time.perf_counter() - t)

    async def raw_pipelined(self, total: int, inflight: int = 64) -> float:
        """``total`` echo round trips with ``inflight`` outstanding; messages per second."""
        dealer = self.dealer
        assert dealer is not None
        frame = self.frame
        t = time.perf_counter()
        for _ in range(min(inflight, total)):
            await dealer.send(frame)
        sent = min(inflight, total)
        for _ in range(total):
            await dealer.recv()
            if sent < total:
                await dealer.send(frame)
                sent += 1
        return total / (time.perf_counter() - t)


# --------------------------------------------------------------------------- asv


class GatewayLatency:
    """One call at a time: ``infer()`` to a worker process vs a raw echo round trip."""

    timeout = 180.0  # the routing kernels compile in setup
    number = 100
    repeat = (5, 20, 60.0)

    def setup(self) -> None:
        self.rig = Rig(workers=1).start()

    def teardown(self) -> None:
        self.rig.stop()

    def time_infer(self) -> None:
        self.rig.run(self.rig.infer_once())

    def time_raw_roundtrip(self) -> None:
        self.rig.run(self.rig.raw_once())


class GatewayThroughput:
    """1 024 calls with 64 in flight: ``infer()`` over two workers vs a pipelined raw echo."""

    timeout = 180.0
    number = 1
    repeat = (3, 10, 60.0)
    total = 1024

    def setup(self) -> None:
        self.rig = Rig(workers=2).start()

    def teardown(self) -> None:
        self.rig.stop()

    def time_infer_64_inflight(self) -> None:
        self.rig.run(self.rig.infer_concurrent(self.total, 64))

    def time_raw_64_inflight(self) -> None:
        self.rig.run(self.rig.raw_pipelined(self.total, 64))
