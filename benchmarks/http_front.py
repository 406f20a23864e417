"""The HTTP front door's cost: an HTTP round trip through fedgate beside ``infer()``.

Same run, same zero-delay synthetic worker process (``benchmarks/gateway.py``'s
:class:`Rig`, one worker, one token):

- ``infer()``: :meth:`Gateway.infer` on the gateway's loop, one call after the other;
- HTTP: ``POST /v1/chat/completions`` (non-streaming) from the load generator
  of ``benchmarks/http_servers.py`` in another process, keep-alive, 1 and 64
  connections;
- the generator's own ceiling: the same generator against a trivial asyncio
  server that answers canned bytes.

    python benchmarks/http_front.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys

from gateway import Rig

from fedgate.gateway.http import HttpConfig, HttpFront

HERE = os.path.dirname(os.path.abspath(__file__))

_GENERATOR = """
import asyncio, json, sys
sys.path.insert(0, {here!r})
import http_servers as h
h.BODY = {body!r}
h.PATH = b"/v1/chat/completions"
lat, took = asyncio.run(h._load({port}, {conns}, {seconds}))
print(json.dumps([lat, took]))
"""


def _summary(name: str, conns: int, lat: list[float], took: float) -> str:
    lat = sorted(lat)
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(len(lat) * 0.99)] * 1000
    return f"{name:34} {conns:>5} {p50:>8.3f} {p99:>8.3f} {len(lat) / took:>9.0f}"


async def _generate(
    port: int, conns: int, seconds: float, body: bytes
) -> tuple[list[float], float]:
    code = _GENERATOR.format(here=HERE, body=body, port=port, conns=conns, seconds=seconds)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited {proc.returncode}")
    lat, took = json.loads(out)
    return lat, took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    ).encode()
    print(f"{'path':34} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    with Rig(workers=1) as rig:
        front = HttpFront(rig.gateway, HttpConfig(listen="127.0.0.1:0"))  # type: ignore[arg-type]
        rig.run(front.start())
        try:
            lat = rig.run(rig.sequential(rig.infer_once, 5000))
            print(_summary("infer() (library, same loop)", 1, lat, sum(lat)))
            port = int(front.url.rsplit(":", 1)[1])
            for conns in (1, 64):
                lat, took = rig.run(_generate(port, conns, args.seconds, body))
                print(_summary("HTTP /v1/chat/completions", conns, lat, took))
        finally:
            rig.run(front.stop())
    print(f"(loop: {'uvloop' if rig.uvloop else 'asyncio'}; generator ceiling below)")
    import subprocess

    subprocess.run(
        [sys.executable, os.path.join(HERE, "http_servers.py"), "--seconds", str(args.seconds),
         "--only", "raw"],
        check=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
