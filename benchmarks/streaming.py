"""asv: streaming through the gateway, beside bare pyzmq streams measured in the same run.

Two figures, each with its baseline:

- **aggregate tokens/s**: ``readers`` concurrent ``infer_stream()`` calls,
  each reading whole streams of ``tokens`` tokens from two synthetic worker
  processes at full speed (the worker outpaces the reader, so tokens arrive
  batched, up to 256 per Partial frame). Baseline: the same number of
  ``zmq.asyncio`` DEALER readers, each asking a bare ROUTER stream server
  (another process) for the same number of frames of the same size and
  counting the same tokens.
- **per-token latency** (what the gateway adds between the worker emitting a
  token and the caller's ``async for`` receiving it): a python-backend worker
  yields one token every ``interval`` seconds whose bytes carry
  ``time.monotonic()`` at emission (CLOCK_MONOTONIC is one clock for every
  process on the machine); the reader subtracts it from the arrival time.
  Baselines: the same stamped tokens sent straight from a bare, blocking
  ROUTER stream server (paced by ``time.sleep``) to a DEALER (one hop, no
  gateway), and the bare DEALER/ROUTER round trip of :mod:`benchmarks.gateway`
  (the issue's yardstick for the latency the gateway adds).

:class:`StreamRig` owns the processes and the event loop;
``benchmarks/test_streaming.py`` (pytest-benchmark) runs the same coroutines.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from benchmarks.gateway import Rig, _spawn
from fedgate.transport import protocol as wire
from fedgate.types import Capability, InferenceRequest
from fedgate.worker.backends.synthetic import MAX_CHUNK_TOKENS, synthetic_tokens

__all__ = ["STREAM_SERVER", "StreamRig", "StreamThroughput", "TokenLatency", "timed_tokens"]

_STAMP = struct.Struct("<d")
_TOKEN_PAD = b" "  # a stamped token is 9 bytes, like a synthetic one


async def timed_tokens(data: bytes) -> AsyncIterator[bytes]:
    """python-backend callable: ``{"n": N, "interval": S}`` → N tokens, one per S seconds.

    Each token is ``time.monotonic()`` at emission (8 bytes, little-endian
    double) and a space.
    """
    spec = json.loads(data)
    n, interval = int(spec["n"]), float(spec["interval"])
    for _ in range(n):
        await asyncio.sleep(interval)
        yield _STAMP.pack(time.monotonic()) + _TOKEN_PAD


STREAM_SERVER = """
import json, struct, sys, time
import zmq

ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.SNDHWM, 0)
sock.setsockopt(zmq.RCVHWM, 0)
sock.bind("tcp://127.0.0.1:*")
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
stamp = struct.Struct("<d")
frames = {}
# Blocking, one request at a time: the cheapest possible sender, like the echo server.
while True:
    ident, body = sock.recv_multipart()
    spec = json.loads(body)
    if spec["kind"] == "bulk":
        # Pre-encoded frames of the gateway's size: the bare cost of moving them.
        frame = frames.setdefault(spec["frame"], bytes.fromhex(spec["frame"]))
        for _ in range(spec["frames"]):
            sock.send_multipart([ident, frame], copy=False)
    else:
        for _ in range(spec["n"]):
            time.sleep(spec["interval"])
            sock.send_multipart([ident, stamp.pack(time.monotonic()) + b" "])
    sock.send_multipart([ident, b""])
"""
"""A ROUTER that answers ``{"kind": "bulk" | "timed", …}`` with a stream of frames, then b""."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class StreamRig(Rig):
    """A gateway with fast synthetic workers and a timed worker, plus bare stream/echo servers.

    Parameters
    ----------
    tokens : int
        Tokens per stream in the throughput figure.
    """

    def __init__(self, tokens: int = 4096, *, uvloop: bool | None = None) -> None:
        super().__init__(workers=2, uvloop=uvloop)
        self.tokens = tokens
        self.stream_server: subprocess.Popen[bytes] | None = None
        self.readers: list[zmq.asyncio.Socket] = []
        self._reader_ix = 0

    def worker_flags(self, index: int) -> list[str]:
        # Two fast synthetic workers for "generate"; one stamping worker for "code".
        return [
            "--region", "us-west-2", "--model", "m", "--capability", "generate",
            "--tokens", str(self.tokens), "--log-level", "WARNING",
            "--max-concurrency", "1024",
        ]  # fmt: skip

    async def _start(self) -> None:
        await super()._start()
        assert self.gateway is not None
        argv = [
            "-m", "fedgate", "worker", "--gateway", self.gateway.endpoints[0], "--node", "timed",
            "--region", "us-west-2", "--model", "m", "--capability", "code",
            "--backend", "python", "--callable", "benchmarks.streaming:timed_tokens",
            "--log-level", "WARNING",
        ]  # fmt: skip
        if self.uvloop:
            argv.append("--uvloop")
        self.procs.append(_spawn(*argv))
        await self.gateway.wait_for_workers(self.workers + 1, timeout=30.0)
        server = _spawn("-c", STREAM_SERVER, stdout=subprocess.PIPE)
        self.procs.append(server)
        assert server.stdout is not None
        endpoint = server.stdout.readline().decode().strip()
        server.stdout.close()
        if not endpoint.startswith("tcp://"):
            raise RuntimeError(f"stream server: expected its endpoint, got {endpoint!r}")
        assert self.ctx is not None
        for _ in range(64):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.connect(endpoint)
            self.readers.append(sock)
        # Warm both paths (connections, first-call costs).
        await self.stream_tokens(4, 2)
        await self.raw_stream_tokens(4, 2)
        await self.stream_latencies(3, 0.001)
        await self.raw_latencies(3, 0.001)

    def stop(self) -> None:
        for sock in self.readers:
            sock.close(0)
        self.readers.clear()
        super().stop()

    # ------------------------------------------------------------ throughput
    def _request(self, capability: Capability, data: bytes) -> InferenceRequest:
        self._reader_ix += 1
        return InferenceRequest(capability, data, request_id=f"s{self._reader_ix}")

    async def stream_tokens(self, streams: int, readers: int) -> float:
        """``streams`` whole streams over ``readers`` concurrent callers; tokens per second."""
        gateway = self.gateway
        assert gateway is not None
        per_reader = max(1, streams // readers)
        counts = [0] * readers

        async def reader(i: int) -> None:
            n = 0
            for _ in range(per_reader):
                async for _token in gateway.infer_stream(self._request(Capability.GENERATE, b"")):
                    n += 1
            counts[i] = n

        t = time.perf_counter()
        await asyncio.gather(*(reader(i) for i in range(readers)))
        elapsed = time.perf_counter() - t
        expected = per_reader * readers * self.tokens
        if sum(counts) != expected:
            raise RuntimeError(f"expected {expected} tokens, got {sum(counts)}")
        return expected / elapsed

    def _bulk_frame(self) -> bytes:
        # The frame the gateway receives most: a full Partial of synthetic tokens.
        tokens = synthetic_tokens("s0", 0, MAX_CHUNK_TOKENS)
        return wire.encode(wire.Partial(wire.new_rid(), 1, 0, tokens))

    async def raw_stream_tokens(self, streams: int, readers: int) -> float:
        """The same streams as frames from a bare ROUTER: tokens per second at the readers."""
        per_reader = max(1, streams // readers)
        frames_per_stream = -(-self.tokens // MAX_CHUNK_TOKENS)
        spec = json.dumps(
            {"kind": "bulk", "frames": frames_per_stream, "frame": self._bulk_frame().hex()}
        ).encode()

        async def reader(sock: zmq.asyncio.Socket) -> int:
            n = 0
            for _ in range(per_reader):
                await sock.send(spec)
                while len(await sock.recv()):
                    n += MAX_CHUNK_TOKENS
            return n

        t = time.perf_counter()
        counts = await asyncio.gather(*(reader(self.readers[i]) for i in range(readers)))
        elapsed = time.perf_counter() - t
        return sum(counts) / elapsed

    # ------------------------------------------------------------ latency
    async def stream_latencies(self, tokens: int, interval: float) -> list[float]:
        """Per-token latency (s) from the timed worker's emission to this reader."""
        gateway = self.gateway
        assert gateway is not None
        data = json.dumps({"n": tokens, "interval": interval}).encode()
        clock = time.monotonic
        out = []
        async for token in gateway.infer_stream(self._request(Capability.CODE, data)):
            out.append(clock() - _STAMP.unpack_from(token)[0])
        return out

    async def raw_latencies(self, tokens: int, interval: float) -> list[float]:
        """Per-token latency (s) of the same stamped tokens from a bare ROUTER."""
        sock = self.readers[0]
        await sock.send(json.dumps({"kind": "timed", "n": tokens, "interval": interval}).encode())
        clock = time.monotonic
        out = []
        while True:
            frame = await sock.recv()
            if not frame:
                return out
            out.append(clock() - _STAMP.unpack_from(frame)[0])


# --------------------------------------------------------------------------- asv


class StreamThroughput:
    """Aggregate tokens/s: 32 streams of 4 096 tokens over 16 concurrent readers."""

    timeout = 240.0
    number = 1
    repeat = (3, 10, 60.0)
    unit = "tokens/s"

    def setup(self) -> None:
        self.rig = StreamRig().start()

    def teardown(self) -> None:
        self.rig.stop()

    def track_gateway_tokens_per_second(self) -> float:
        return float(self.rig.run(self.rig.stream_tokens(32, 16)))

    def track_raw_tokens_per_second(self) -> float:
        return float(self.rig.run(self.rig.raw_stream_tokens(32, 16)))

    track_gateway_tokens_per_second.unit = "tokens/s"  # type: ignore[attr-defined]
    track_raw_tokens_per_second.unit = "tokens/s"  # type: ignore[attr-defined]


class TokenLatency:
    """p50 latency of one token, emission to reader: gateway vs bare stream vs round trip."""

    timeout = 240.0
    number = 1
    repeat = (1, 3, 60.0)

    def setup(self) -> None:
        self.rig = StreamRig(tokens=16).start()

    def teardown(self) -> None:
        self.rig.stop()

    def _p50(self, coro: Any) -> float:
        return _percentile(self.rig.run(coro), 50) * 1e6

    def track_gateway_token_latency_p50(self) -> float:
        return self._p50(self.rig.stream_latencies(200, 0.002))

    def track_raw_token_latency_p50(self) -> float:
        return self._p50(self.rig.raw_latencies(200, 0.002))

    def track_raw_roundtrip_p50(self) -> float:
        return self._p50(self.rig.sequential(self.rig.raw_once, 200))

    track_gateway_token_latency_p50.unit = "µs"  # type: ignore[attr-defined]
    track_raw_token_latency_p50.unit = "µs"  # type: ignore[attr-defined]
    track_raw_roundtrip_p50.unit = "µs"  # type: ignore[attr-defined]
