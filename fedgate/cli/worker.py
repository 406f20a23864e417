"""``fedgate worker``: run one node as a process.

Every flag is checked before any socket opens; a bad one prints an error
naming it and exits with status 2. Exit statuses: 0 after SIGTERM/SIGINT
(drained), 3 when a gateway refused the registration, 1 on an internal failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from fedgate.transport import curve
from fedgate.validation import InvalidParameterError, argument_type
from fedgate.worker.backends import backend_names, create_backend
from fedgate.worker.backends import openai as openai_backend
from fedgate.worker.backends import python as python_backend
from fedgate.worker.backends import synthetic as synthetic_backend
from fedgate.worker.backends.base import Backend
from fedgate.worker.process import Worker, WorkerConfig

__all__ = ["build_parser", "config_from_args", "main"]

log = logging.getLogger("fedgate.worker")

_BACKEND_MODULES: dict[str, ModuleType] = {
    "synthetic": synthetic_backend,
    "openai": openai_backend,
    "python": python_backend,
}

# WorkerConfig names fields; the user typed flags. The numeric flags are parsed
# and checked by argparse with WorkerConfig's own declarations (argument_type).
_FIELD_FLAGS = {
    "gateways": "--gateway",
    "node": "--node",
    "region": "--region",
    "models": "--model",
    "capabilities": "--capability",
    "backend": "--backend",
    "cost": "--cost",
    "max_concurrency": "--max-concurrency",
    "heartbeat_interval": "--heartbeat-interval",
    "drain_timeout": "--drain-timeout",
    "key": "--key",
    "gateway_key": "--gateway-key",
}

_EXAMPLES = """\
examples:
  # a GPU node serving Whisper, deterministic tokens at 50 tokens/s
  fedgate worker --gateway tcp://127.0.0.1:5555 --node us-west-gpu-01 \\
      --region us-west-2 --model whisper-large-v3 --capability transcribe \\
      --backend synthetic --gpu --cost 0.5 --ttft 0.05 --token-rate 50

  # a flaky node for failover tests: fails after 5 tokens
  fedgate worker --gateway tcp://127.0.0.1:5555 --node eu-west-gpu-01 \\
      --region eu-west-1 --model llama-3-8b --capability generate --fault fail-after=5

  # one worker serving two gateway replicas, proxying to a local vLLM
  fedgate worker --gateway tcp://gw-a:5555 --gateway tcp://gw-b:5555 \\
      --node ap-south-cpu-01 --region ap-south-1 --model llama-3-8b \\
      --capability generate --backend openai --base-url http://127.0.0.1:8000 \\
      --upstream-model meta-llama/Llama-3.1-8B-Instruct

  # your own Python function (sync, async or async generator)
  fedgate worker --gateway tcp://127.0.0.1:5555 --node n1 --region r1 \\
      --model sentiment-v2 --capability sentiment --backend python \\
      --callable mypkg.models:classify

signals: SIGTERM or SIGINT drains (Disconnect, finish in-flight requests up to
--drain-timeout, fail the rest with error "shutdown") and exits 0; a second one
stops at once. Exit status 3: a gateway refused the registration (node id
already live with another worker, or outside this worker key's grant: the
message names the grant it lacks).
"""


class _Formatter(argparse.HelpFormatter):
    """Wraps prose like the default formatter, but keeps multi-line text (the examples) as is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``fedgate worker`` argument parser (every option, with examples in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=prog or "fedgate worker",
        description="Run one fedgate node: connect to the gateway(s), announce the models and "
        "capabilities served, heartbeat, and serve inference requests with a backend.",
        epilog=_EXAMPLES,
        formatter_class=_Formatter,
    )
    node = parser.add_argument_group("node")
    node.add_argument(
        "--gateway",
        action="append",
        required=True,
        metavar="ENDPOINT",
        help="a gateway's ZeroMQ endpoint (repeatable: one worker can serve several gateway "
        "replicas), e.g. --gateway tcp://127.0.0.1:5555",
    )
    node.add_argument(
        "--node",
        required=True,
        metavar="NODE_ID",
        help="this node's id, e.g. --node us-west-gpu-01",
    )
    node.add_argument(
        "--region",
        required=True,
        metavar="REGION_ID",
        help="the region it runs in, e.g. --region us-west-2 (its privacy "
        "clearance is set by the gateway, never by the worker)",
    )
    node.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="MODEL_ID",
        help="a model served (repeatable), e.g. --model whisper-large-v3",
    )
    node.add_argument(
        "--capability",
        action="append",
        required=True,
        metavar="CAP",
        help="a capability served (repeatable): transcribe, synthesize, generate, "
        "code, embed, image_gen or a custom name, e.g. --capability transcribe",
    )
    node.add_argument(
        "--backend",
        default="synthetic",
        choices=backend_names(),
        help="what serves the requests (default synthetic)",
    )
    kind = node.add_mutually_exclusive_group()
    kind.add_argument(
        "--gpu", dest="gpu", action="store_true", default=False, help="announce a GPU node"
    )
    kind.add_argument(
        "--cpu", dest="gpu", action="store_false", help="announce a CPU node (the default)"
    )
    node.add_argument(
        "--cost",
        type=argument_type(WorkerConfig, "cost"),
        default=1.0,
        metavar="COST",
        help="cost per 1k tokens or per request, for the cost policy "
        "(default 1.0), e.g. --cost 0.5",
    )
    node.add_argument(
        "--max-concurrency",
        type=argument_type(WorkerConfig, "max_concurrency"),
        default=64,
        metavar="N",
        help="requests served at once; more are refused as 'overloaded' (default 64)",
    )
    node.add_argument(
        "--heartbeat-interval",
        type=argument_type(WorkerConfig, "heartbeat_interval"),
        default=1.0,
        metavar="SECONDS",
        help="seconds between heartbeats; the gateway declares the node dead "
        "after a few missed ones (default 1.0)",
    )
    node.add_argument(
        "--drain-timeout",
        type=argument_type(WorkerConfig, "drain_timeout"),
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish (default 5)",
    )
    node.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default INFO)",
    )
    node.add_argument(
        "--key",
        metavar="FILE",
        help="this worker's CURVE secret key file (fedgate keys generate): the link is "
        "encrypted and the gateway serves the node under this key's grant; with --gateway-key",
    )
    node.add_argument(
        "--gateway-key",
        metavar="FILE",
        help="the gateway's public key file (NAME.key), with --key",
    )
    node.add_argument(
        "--uvloop",
        action="store_true",
        help="run on uvloop (must be installed) instead of the default asyncio loop",
    )
    for module in _BACKEND_MODULES.values():
        module.add_arguments(parser)
    return parser


def _flag_message(message: str, flags: dict[str, str]) -> str:
    """A backend's ``"tokens: expected …"`` → ``"argument --tokens: expected …"``."""
    field, sep, rest = message.partition(":")
    words = field.split()
    if sep and words and words[0] in flags:
        return (
            f"argument {flags[words[0]]}: {message}"
            if len(words) > 1
            else (f"argument {flags[field]}:{rest}")
        )
    return message


def config_from_args(args: argparse.Namespace) -> tuple[WorkerConfig, Backend]:
    """Turn parsed flags into a validated config and a built backend.

    Raises
    ------
    ValueError
        A flag's value is invalid; the message starts with ``argument --flag:``.
    """
    name = args.backend
    for other, module in _BACKEND_MODULES.items():
        if other == name:
            continue
        for dest, flag in module.OPTION_FLAGS.items():
            if getattr(args, dest, None) is not None:
                raise ValueError(f"argument {flag}: only applies to --backend {other}")
    if (args.key is None) != (args.gateway_key is None):
        given, missing = ("--key", "--gateway-key") if args.key else ("--gateway-key", "--key")
        raise ValueError(f"argument {missing}: expected with {given} (a CURVE link needs both)")
    if args.key is not None:
        # Read now: a bad key file is a flag error (exit 2), not a failure after connecting.
        for flag, path, load in (
            ("--key", args.key, curve.load_pair),
            ("--gateway-key", args.gateway_key, curve.load_public),
        ):
            try:
                load(path)
            except ValueError as exc:
                raise ValueError(f"argument {flag}: {exc}") from None
    options: dict[str, Any] = {}
    flags: dict[str, str] = {}
    if name in _BACKEND_MODULES:
        module = _BACKEND_MODULES[name]
        options = module.options_from_args(args)
        # The backends' own messages name their option ("tokens: …", "fault slow: …").
        flags = dict(module.OPTION_FLAGS)
    try:
        config = WorkerConfig(
            gateways=args.gateway,
            node=args.node,
            region=args.region,
            models=args.model,
            capabilities=args.capability,
            backend=name,
            backend_options=options,
            gpu=args.gpu,
            cost=args.cost,
            max_concurrency=args.max_concurrency,
            heartbeat_interval=args.heartbeat_interval,
            drain_timeout=args.drain_timeout,
            key=args.key,
            gateway_key=args.gateway_key,
        )
    except InvalidParameterError as exc:
        flag = _FIELD_FLAGS.get(exc.field)
        raise ValueError(f"argument {flag}: {exc.reason}" if flag else str(exc)) from None
    try:
        backend = create_backend(name, **options)
    except ValueError as exc:
        raise ValueError(_flag_message(str(exc), flags)) from None
    return config, backend


async def _serve(worker: Worker) -> int:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if worker.stopping:
            log.warning("%s again: stopping without waiting for in-flight requests", sig.name)
            worker.stop(drain=False)
        else:
            log.info(
                "%s: draining (up to %gs), then exiting", sig.name, worker.config.drain_timeout
            )
            worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no handlers
            loop.add_signal_handler(sig, on_signal, sig)
    return await worker.run()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run ``fedgate worker`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    A bad flag raises ``SystemExit(2)`` (argparse's convention) before any socket opens.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config, backend = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    run_uvloop: Any = None
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            parser.error("argument --uvloop: uvloop is not installed (pip install uvloop)")
        run_uvloop = uvloop.run
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
        stream=sys.stderr,
    )
    worker = Worker(config, backend=backend)
    runner = run_uvloop if run_uvloop is not None else asyncio.run
    return int(runner(_serve(worker)))
