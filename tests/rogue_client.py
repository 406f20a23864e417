"""A rogue ingress client or dashboard for the trust tests: asks, and counts what reaches it.

``python rogue_client.py ingress|telemetry ENDPOINT SECONDS [--key F --gateway-key F]``
connects one DEALER (a CURVE client when given keys; then it connects again
every 200 ms, as a refused CURVE client is not retried by libzmq) and, for
SECONDS, sends what an attacker would: RESTRICTED requests naming tenant
"other" to an ingress, snapshot commands to telemetry. It reports on stdout,
as one JSON line, what reached its own sockets: frames and bytes.
"""

from __future__ import annotations

import argparse
import json
import time

import msgspec
import zmq

from fedgate.transport import curve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ingress", "telemetry"])
    parser.add_argument("endpoint")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--key")
    parser.add_argument("--gateway-key")
    args = parser.parse_args()
    options = {}
    if args.key:
        options = curve.client_options(curve.load_pair(args.key),
                                       curve.load_public(args.gateway_key))
    ctx = zmq.Context()
    frames = size = sent = 0
    n = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(option, value)
        sock.connect(args.endpoint)
        round_end = min(end, time.monotonic() + 0.2)
        while time.monotonic() < round_end:
            n += 1
            if args.kind == "ingress":
                payload = msgspec.msgpack.encode({
                    "id": f"rogue-{n}", "capability": "generate", "tenant": "other",
                    "privacy": "RESTRICTED", "input": b"RESTRICTED-rogue",
                })  # fmt: skip
                message = [payload]
            else:
                message = [n.to_bytes(8, "big"), b"snapshot"]
            try:
                sock.send_multipart(message, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
            if sock.poll(20):
                got = sock.recv_multipart()
                frames += len(got)
                size += sum(len(f) for f in got)
        sock.close(0)
    ctx.term()
    print(json.dumps({"frames": frames, "bytes": size, "sent": sent}))


if __name__ == "__main__":
    main()
