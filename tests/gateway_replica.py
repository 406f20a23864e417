"""A gateway replica in its own process, for the replica tests (R26).

``python tests/gateway_replica.py ENDPOINT HEARTBEAT_INTERVAL LIVENESS`` binds a
gateway on ENDPOINT and prints one JSON line per event on stdout:
``{"event": "listening", "at": …}`` once bound, then ``{"event": "workers N",
"at": …}`` whenever the number of live workers changes (``at`` is
``time.time()``, comparable across processes). It runs until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from fedgate import GatewayBuilder, GatewayConfig, HealthChecker, HealthConfig


def say(event: str) -> None:
    print(json.dumps({"event": event, "at": time.time()}), flush=True)


async def main(endpoint: str, interval: float, liveness: int) -> None:
    health = HealthChecker(HealthConfig(heartbeat_interval=interval, heartbeat_liveness=liveness))
    gateway = GatewayBuilder().bind(endpoint).config(GatewayConfig()).health(health).build()
    async with gateway:
        say("listening")
        seen = -1
        while True:
            alive = sum(1 for w in gateway.workers() if w["alive"])
            if alive != seen:
                seen = alive
                say(f"workers {alive}")
            await asyncio.sleep(0.002)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
