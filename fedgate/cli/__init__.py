"""The ``fedgate`` command: a dispatcher over subcommand modules.

Each subcommand lives in its own module exposing
``main(argv: Sequence[str] | None, *, prog: str | None) -> int``; this file
only names them, so ``fedgate --help`` never imports what a subcommand needs
(the worker does not load the gateway, the dashboard does not load a backend).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module with main(argv, prog=...), one-line summary)
    "demo": ("fedgate.cli.demo", "a three-region federation with a node failure, on this machine"),
    "gateway": ("fedgate.cli.gateway", "run a gateway: route requests to the workers"),
    "worker": ("fedgate.cli.worker", "run one node: serve a backend to the gateway(s)"),
    "keys": ("fedgate.cli.keys", "make CURVE key pairs for workers, gateways and clients"),
    "top": ("fedgate.cli.top", "the live terminal dashboard of a running gateway"),
    "dashboard": ("fedgate.cli.top", "the same as top"),
}
"""Subcommands by name. To add one, add its entry here and a module with ``main``."""


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: fedgate [--version] [--help] COMMAND [ARGS …]",
        "",
        "fedgate — a federation gateway for ML inference.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()),
        "",
        "Run 'fedgate COMMAND --help' for a command's options.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fedgate`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from fedgate._version import __version__

        print(f"fedgate {__version__}")
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        print(_usage(), file=sys.stderr)
        choices = ", ".join(SUBCOMMANDS)
        print(f"\nfedgate: error: expected a command ({choices}), got {name!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(args[1:], prog=f"fedgate {name}"))


if __name__ == "__main__":
    raise SystemExit(main())
