"""A rogue worker for the trust tests: announces a node and counts what reaches it.

``python rogue_worker.py ENDPOINT NODE REGION SECONDS [--key F --gateway-key F]
[--gpu] [--cost C] [--routing-id ID]`` connects one DEALER (a CURVE client
when given keys), repeats a READY every 50 ms until refused or SECONDS pass,
and reads everything the gateway sends. It never answers a request: what it
reports is what an attacker would have got — the bytes of every frame that
reached its socket, on its own side — as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import zmq

from fedgate.transport import curve
from fedgate.transport import protocol as wire


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("node")
    parser.add_argument("region")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--key")
    parser.add_argument("--gateway-key")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--cost", type=float, default=1.0)
    parser.add_argument("--routing-id")
    args = parser.parse_args()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if args.routing_id:
        sock.setsockopt(zmq.ROUTING_ID, args.routing_id.encode())
    if args.key:
        for option, value in curve.client_options(
            curve.load_pair(args.key), curve.load_public(args.gateway_key)
        ).items():
            sock.setsockopt(option, value)
    sock.connect(args.endpoint)
    ready = wire.encode(
        wire.Ready(args.node, args.region, "0bad0bad0bad0bad", ["m"], ["generate"], args.gpu,
                   args.cost, 64, True, 0.05, os.getpid(), "0")
    )
    report = {"frames": 0, "bytes": 0, "requests": 0, "request_bytes": 0,
              "welcomed": False, "refused": None}
    end = time.monotonic() + args.seconds
    next_ready = 0.0
    while time.monotonic() < end and report["refused"] is None:
        now = time.monotonic()
        if now >= next_ready:
            with contextlib.suppress(zmq.Again):
                sock.send(ready, zmq.NOBLOCK)
            next_ready = now + 0.05
        if not sock.poll(20):
            continue
        payload = sock.recv()
        report["frames"] += 1
        report["bytes"] += len(payload)
        try:
            msg = wire.decode_gateway_message(payload)
        except wire.ProtocolError:
            continue
        if isinstance(msg, wire.Request):
            report["requests"] += 1
            report["request_bytes"] += len(payload)
        elif isinstance(msg, wire.Welcome):
            report["welcomed"] = True
        elif isinstance(msg, wire.Refuse):
            report["refused"] = msg.reason
    print(json.dumps(report), flush=True)
    sock.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
