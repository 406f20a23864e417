"""``fedgate top``: attach the terminal dashboard to a running gateway.

Every flag is checked before anything connects; a bad one prints an error
naming it and exits with status 2. ``--once`` prints one snapshot as JSON
(for scripts, and for terminals where a full-screen app is no use); it exits
with status 1 when the gateway does not answer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from fedgate.telemetry import DEFAULT_ENDPOINT, PAGE_SIZE, TelemetryClient, TelemetryError

__all__ = ["build_parser", "main"]

_EPILOG = f"""\
The gateway publishes its telemetry on a ZeroMQ endpoint of its own (not the
one workers connect to): `fedgate gateway --telemetry {DEFAULT_ENDPOINT}`, or
TelemetryServer(gateway, "{DEFAULT_ENDPOINT}") in a program.

keys: 1-7 switch tabs (Catalog, Health, Routing, Circuits, Stats, Policies, Tenants),
? help, Tab/Shift+Tab next/previous tab, j/k move in a table, n/p next/previous
page of nodes (tables show 200 rows at a time), r refresh, q quit.

examples:
  fedgate top                                      # the gateway on this machine
  fedgate top --gateway tcp://10.0.0.5:5556 --interval 1
  fedgate top --once | jq .stats                   # one snapshot as JSON
  fedgate top --key keys/ops.key_secret --gateway-key keys/gateway.key   # a secured gateway

A gateway with `[trust] operators = DIR` answers only dashboards holding an
operator key of DIR (`fedgate keys generate NAME --dir DIR`): pass its secret
file as --key and the gateway's public key file as --gateway-key. Without
them the gateway refuses the connection and top shows it disconnected.
"""


# argparse prefixes these messages with "argument --flag: ".
def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds as a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected finite seconds > 0, got {text!r}")
    return value


def _endpoint(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"expected a ZeroMQ endpoint like {DEFAULT_ENDPOINT!r}, got {text!r}"
        )
    return text


def _key_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"expected a key file, got {text!r} (no such file)")
    return text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``fedgate top`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog or "fedgate top",
        description="Live terminal dashboard of a running fedgate gateway: catalog, health,\n"
        "routing decisions, circuit breakers, stats and the live routing policy.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gateway",
        metavar="ENDPOINT",
        type=_endpoint,
        default=DEFAULT_ENDPOINT,
        help=f"the gateway's telemetry endpoint (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_seconds,
        default=0.25,
        help="seconds between refreshes (default: 0.25)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=1.0,
        help="seconds to wait for the gateway before showing it as disconnected (default: 1)",
    )
    parser.add_argument(
        "--key",
        metavar="FILE",
        type=_key_file,
        help="this operator's CURVE secret key file (NAME.key_secret), for a gateway "
        "with [trust] operators",
    )
    parser.add_argument(
        "--gateway-key",
        metavar="FILE",
        type=_key_file,
        help="the gateway's public key file (its NAME.key); needed with --key",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot as JSON and exit (no dashboard)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run ``fedgate top`` with ``argv``; return the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if (args.key is None) != (args.gateway_key is None):
        parser.error("--key and --gateway-key go together (this operator's secret key file "
                     "and the gateway's public key file)")  # fmt: skip
    try:
        client = TelemetryClient(
            args.gateway, timeout=args.timeout, key=args.key, gateway_key=args.gateway_key
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if args.once:
            try:
                data = client.fetch_sync()
            except TelemetryError as exc:
                print(f"fedgate top: {exc}", file=sys.stderr)
                return 1
            json.dump(data, sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
            return 0
        from fedgate.top.app import TopApp

        # One page of each per-node table per poll: 10 000 nodes cost what 200 do.
        TopApp(client.fetch_page, interval=args.interval, endpoint=args.gateway,
               paged=True, page_size=PAGE_SIZE).run()  # fmt: skip
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
