"""``fedgate keys``: CURVE key pairs for workers, gateways, clients and operators.

``fedgate keys generate NAME --dir DIR`` writes ``DIR/NAME.key`` (the public
key: copy it to the peers that must trust this one) and ``DIR/NAME.key_secret``
(the key pair, mode 0600: it never leaves the machine that uses it). The files
are pyzmq's certificate format (``zmq.auth``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedgate.transport import curve

__all__ = ["build_parser", "main"]

_EPILOG = """\
A federation with CURVE on the worker link:
  fedgate keys generate gateway --dir keys/          # the gateway's pair
  fedgate keys generate eu-worker-1 --dir keys/      # one pair per worker
  mkdir trusted && cp keys/eu-worker-1.key trusted/  # what the gateway trusts
  # gateway TOML: [trust] key = "keys/gateway.key_secret", workers = "trusted",
  #   [trust.workers.eu-worker-1] nodes = ["eu-gpu-01"], region = "eu-west-1"
  fedgate worker --key keys/eu-worker-1.key_secret --gateway-key keys/gateway.key ...

An existing key is never overwritten: remove both files first to replace one
(every gateway trusting the old public key then refuses the worker).
"""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Manage the CURVE key pairs of a federation (pyzmq's zmq.auth format).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = sub.add_parser(
        "generate",
        help="write a new key pair: NAME.key (public) and NAME.key_secret (mode 0600)",
        description=(
            "Write a new CURVE key pair: DIR/NAME.key, the public key to give to the "
            "peers that must trust it (a gateway's trusted directory, a worker's "
            "--gateway-key), and DIR/NAME.key_secret, the pair, readable by its owner only."
        ),
    )
    gen.add_argument("name", metavar="NAME", help="the key's name: its files' stem")
    gen.add_argument(
        "--dir", required=True, metavar="DIR", help="where to write it (created if missing)"
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        public, secret = curve.generate(args.dir, args.name)
    except (OSError, ValueError) as exc:
        print(f"{prog or 'fedgate keys'}: error: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}  (give this file to the peers that trust {args.name})")
    print(f"secret key: {secret}  (mode 0600; keep it on this machine)")
    return 0
