"""The ingress round trip with CURVE beside the same run without it (issue 14).

Two gateways on this process's loop, each with its ingress and one zero-delay
synthetic worker process (``--tokens 1``) over loopback TCP: one plain, one
with ``[trust]`` and a ``clients`` directory (CURVE on the worker link and on
the ingress). A client on the same loop (:class:`~fedgate.gateway.ingress.IngressClient`,
with a client key for the secured one) sends sequential requests in
alternating rounds, so the machine's load drifts over both alike; prints p50
and p99 of each and their ratio. The client shares the gateway's loop and
CPU, so the figure is the whole cost of a request, both ends' crypto included.

    python -m benchmarks.ingress_curve [--calls 4000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.curve import alternate, report, worker
from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.ingress import Ingress, IngressClient
from fedgate.gateway.trust import Trust, WorkerGrant
from fedgate.transport import curve


async def _gateway(trust: Trust | None) -> tuple[Gateway, Ingress]:
    gw = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=30.0))
        .trust(trust)
        .build()
    )
    await gw.start()
    ingress = Ingress(gw, "tcp://127.0.0.1:*")
    await ingress.start()
    return gw, ingress


async def _round(client: IngressClient, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    payload = b"x" * 64
    for _ in range(n):
        start = clock()
        await client.infer("generate", payload)
        out.append(clock() - start)
    return out


async def main(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        curve.generate(keys / "keys", "gateway")
        curve.generate(keys / "trusted", "w")
        curve.generate(keys / "clients", "acme")
        trust = Trust(
            key=str(keys / "keys" / "gateway.key_secret"),
            workers=str(keys / "trusted"),
            grants={"w": WorkerGrant(nodes=["secured"], region="us-west-2")},
            clients=str(keys / "clients"),
        )
        (plain, plain_in), (secured, secured_in) = await _gateway(None), await _gateway(trust)
        procs = [
            worker(plain, "plain"),
            worker(secured, "secured", "--key", str(keys / "trusted" / "w.key_secret"),
                    "--gateway-key", str(keys / "keys" / "gateway.key")),
        ]
        clients = {
            "plain": IngressClient(plain_in.endpoint),
            "curve": IngressClient(secured_in.endpoint,
                                   key=keys / "clients" / "acme.key_secret",
                                   gateway_key=keys / "keys" / "gateway.key"),
        }  # fmt: skip
        try:
            await plain.wait_for_workers(1, timeout=30.0)
            await secured.wait_for_workers(1, timeout=30.0)
            for client in clients.values():
                await _round(client, 200)  # warm: connections, kernels, caches
            got = await alternate(
                {"plain": lambda n: _round(clients["plain"], n),
                 "curve": lambda n: _round(clients["curve"], n)},
                calls, rounds,
            )  # fmt: skip
        finally:
            for client in clients.values():
                await client.close()
            for proc in procs:
                proc.kill()
                proc.wait()
            for front, gw in ((plain_in, plain), (secured_in, secured)):
                await front.stop()
                await gw.stop()
    report(got, "ingress round trip")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
