"""``fedgate gateway``: run a gateway process, configured by a TOML file and flags.

The whole configuration — file and flags — is checked before anything binds;
a bad key or value prints an error naming it (``policy.health.wieght: unknown
key; …``, ``argument --max-retries: …``) and exits with status 2. Then the
gateway binds, serves its telemetry for ``fedgate top``, logs worker
registrations, node losses and breaker transitions on stderr, and runs until
SIGTERM or SIGINT, after which it fails what is in flight, closes its sockets
and exits 0. SIGHUP re-reads ``--config`` (flags still win): a valid file
changes the routing policy, strategy, origin, region clearances and
``[tenants]`` (API keys, quotas, weights) at once; an invalid one is logged
and changes nothing. Exit status 1: an endpoint could
not be bound.

Clients reach a gateway process through its *ingress* (``--ingress
ENDPOINT``, off by default; see :mod:`fedgate.gateway.ingress`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgate.config import (
    DEFAULT_BIND,
    ConfigError,
    FedgateConfig,
    load_config,
    to_toml,
)
from fedgate.deploy import build_gateway, reload_gateway
from fedgate.federation.breaker import BreakerConfig
from fedgate.federation.health import HealthConfig
from fedgate.federation.policy import (
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    PrivacyPolicy,
)
from fedgate.gateway import GatewayConfig
from fedgate.gateway.ingress import Ingress
from fedgate.telemetry import DEFAULT_ENDPOINT
from fedgate.transport.bind import is_loopback
from fedgate.types import PrivacyLevel
from fedgate.validation import argument_type

if TYPE_CHECKING:
    pass

__all__ = ["build_parser", "main", "overrides_from_args"]

log = logging.getLogger("fedgate.gateway")

_POLICY_NAMES = tuple(
    cls.name
    for cls in (HealthPolicy, LatencyPolicy, PrivacyPolicy, LocalityPolicy, CostPolicy, GpuPolicy)
)
_STRATEGIES = (
    # Spelled out so that `--help` does not import the router (and Numba).
    "least-latency",
    "round-robin",
    "least-connections",
    "weighted-random",
    "consistent-hash",
)

# flag dest → (dotted config key, flag as typed)
_FLAG_KEYS: dict[str, tuple[str, str]] = {
    "strategy": ("gateway.strategy", "--strategy"),
    "origin": ("gateway.origin", "--origin"),
    "gateway_id": ("gateway.id", "--gateway-id"),
    "prometheus_port": ("gateway.prometheus_port", "--prometheus-port"),
    "http": ("http.listen", "--http"),
    "request_timeout": ("gateway.request_timeout", "--request-timeout"),
    "max_retries": ("retry.max_retries", "--max-retries"),
    "retry_delay": ("retry.retry_delay", "--retry-delay"),
    "heartbeat_interval": ("health.heartbeat_interval", "--heartbeat-interval"),
    "heartbeat_liveness": ("health.heartbeat_liveness", "--heartbeat-liveness"),
    "failure_threshold": ("breaker.failure_threshold", "--failure-threshold"),
    "open_timeout": ("breaker.open_timeout", "--open-timeout"),
}

_EPILOG = f"""\
examples:
  # defaults: workers connect to {DEFAULT_BIND}, `fedgate top` attaches to {DEFAULT_ENDPOINT}
  fedgate gateway

  # a documented configuration file, with two settings overridden
  fedgate gateway --config examples/federation.toml --max-retries 2 --strategy round-robin

  # everything by flags: EU data stays in eu-west-1, Prometheus metrics on :9100
  fedgate gateway --bind tcp://127.0.0.1:5555 --region eu-west-1=RESTRICTED \\
      --region us-west-2=INTERNAL --origin us-west-2 --policy health=3 --prometheus-port 9100

  # any OpenAI client: http://127.0.0.1:8080/v1 (chat completions, models, metrics)
  fedgate gateway --http 127.0.0.1:8080

  # workers from other machines: CURVE keys and grants in the file's [trust]
  # (fedgate keys --help), then any address may be bound
  fedgate gateway --config secured.toml --bind tcp://0.0.0.0:5555

  # serve clients too (MessagePack over ZeroMQ; see `python -m pydoc fedgate.cli.gateway`)
  fedgate gateway --ingress tcp://127.0.0.1:5557

  # check a configuration file and print it in full, without starting anything
  fedgate gateway --config federation.toml --check

then, in other terminals:
  fedgate worker --gateway {DEFAULT_BIND} --node us-west-gpu-01 --region us-west-2 \\
      --model llama-3-8b --capability generate --gpu
  fedgate top --gateway {DEFAULT_ENDPOINT}

Secure by default: without [trust] every endpoint must be loopback (127.0.0.1,
localhost, ipc://); another address needs --insecure, and every such start
warns that anyone reaching it can announce a node in any region. Under [trust]
the worker link runs CURVE; the ingress runs it with `clients = DIR` (client
keys; a client's tenant is its key's name) and telemetry with `operators =
DIR` (`fedgate top --key`); without its directory each stays loopback-only.
Prometheus (--prometheus-port) always binds 127.0.0.1.

Flags override the file. Signals: SIGTERM/SIGINT stop cleanly (exit 0); SIGHUP
re-reads --config (an invalid file is rejected and changes nothing). Exit
status 2: invalid configuration (nothing was bound); 1: an endpoint could not
be bound.
"""


class _Formatter(argparse.HelpFormatter):
    """Wraps prose like the default formatter, but keeps multi-line text (the examples) as is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _syntax(cls: type, field: str) -> Any:
    # Only the syntax here (an integer, seconds): ranges are checked where the
    # file's keys are, with the same declarations, so a flag and a key get one message.
    return argument_type(cls, field, check=False)


def _region(text: str) -> tuple[str, str]:
    rid, sep, clearance = text.partition("=")
    names = ", ".join(m.name for m in PrivacyLevel)
    if not sep or not rid.strip() or not clearance.strip():
        raise argparse.ArgumentTypeError(
            f"expected REGION=CLEARANCE (CLEARANCE one of {names}), got {text!r}"
        )
    try:
        level = PrivacyLevel.parse(clearance)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected CLEARANCE one of {names}, got {clearance!r} in {text!r}"
        ) from None
    return rid.strip(), level.name


def _policy(text: str) -> tuple[str, float]:
    name, sep, weight = text.partition("=")
    name = name.strip()
    if not sep or name not in _POLICY_NAMES:
        raise argparse.ArgumentTypeError(
            f"expected NAME=WEIGHT with NAME one of {', '.join(_POLICY_NAMES)}, got {text!r}"
        )
    try:
        return name, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number as the weight, got {weight!r} in {text!r}"
        ) from None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``fedgate gateway`` argument parser (every option, with examples in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=prog or "fedgate gateway",
        description="Run a fedgate gateway: workers connect to it over ZeroMQ and register "
        "their models; it routes each inference request to the best node by policy "
        "(data sovereignty first), fails over on node failures, and publishes telemetry "
        "for `fedgate top`.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML configuration file (see examples/federation.toml for every key); "
        "flags override its values",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the configuration, print it in full as TOML and exit (nothing starts)",
    )
    net = parser.add_argument_group("endpoints")
    net.add_argument(
        "--bind",
        action="append",
        metavar="ENDPOINT",
        help=f"where workers connect (repeatable; replaces the file's list; port 0 picks a "
        f"free one), default {DEFAULT_BIND}",
    )
    tele = net.add_mutually_exclusive_group()
    tele.add_argument(
        "--telemetry",
        metavar="ENDPOINT",
        help=f"telemetry endpoint that `fedgate top` attaches to, default {DEFAULT_ENDPOINT}",
    )
    tele.add_argument(
        "--no-telemetry", action="store_true", help="serve no telemetry (no `fedgate top`)"
    )
    net.add_argument(
        "--ingress",
        metavar="ENDPOINT",
        help="take requests from clients on this ZeroMQ endpoint (MessagePack; see the "
        "module documentation: python -m pydoc fedgate.cli.gateway); off by default",
    )
    net.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, "
        "/healthz, /readyz, /metrics) on HOST:PORT (port 0: a free one); off by default",
    )
    net.add_argument(
        "--prometheus-port",
        type=_syntax(FedgateConfig, "prometheus_port"),
        metavar="PORT",
        help="also serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: a free port)",
    )
    net.add_argument("--gateway-id", metavar="ID", help="this gateway's id (default: generated)")
    net.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding a non-loopback address without [trust] (no worker "
        "authentication: anyone reaching it can serve, and receive, any region's data)",
    )
    routing = parser.add_argument_group("routing")
    routing.add_argument(
        "--region",
        action="append",
        type=_region,
        metavar="REGION=CLEARANCE",
        help="a region's privacy clearance (repeatable), e.g. --region eu-west-1=RESTRICTED; "
        "a region never configured is INTERNAL: it never receives CONFIDENTIAL or "
        "RESTRICTED data",
    )
    routing.add_argument(
        "--origin",
        metavar="REGION",
        help="the gateway's own region: the locality policy favours nodes there",
    )
    routing.add_argument(
        "--strategy",
        choices=_STRATEGIES,
        help="load balancing among eligible nodes (default least-latency)",
    )
    routing.add_argument(
        "--policy",
        action="append",
        type=_policy,
        metavar="NAME=WEIGHT",
        help=f"a routing policy's weight (repeatable; 0 switches it off), NAME one of "
        f"{', '.join(_POLICY_NAMES)}; e.g. --policy health=3",
    )
    retry = parser.add_argument_group("retries, health and breakers")
    retry.add_argument(
        "--max-retries",
        type=_syntax(GatewayConfig, "max_retries"),
        metavar="N",
        help="further attempts on other nodes after a node fails (default 3)",
    )
    retry.add_argument(
        "--retry-delay",
        type=_syntax(GatewayConfig, "retry_delay"),
        metavar="SECONDS",
        help="base backoff between attempts, doubled each retry, with jitter (default 0.1)",
    )
    retry.add_argument(
        "--request-timeout",
        type=_syntax(GatewayConfig, "request_timeout"),
        metavar="SECONDS",
        help="deadline of a request that sets none (default 30)",
    )
    retry.add_argument(
        "--heartbeat-interval",
        type=_syntax(HealthConfig, "heartbeat_interval"),
        metavar="SECONDS",
        help="the workers' heartbeat interval; match the workers' --heartbeat-interval (default 1)",
    )
    retry.add_argument(
        "--heartbeat-liveness",
        type=_syntax(HealthConfig, "heartbeat_liveness"),
        metavar="N",
        help="missed heartbeats before a node is declared dead (default 3)",
    )
    retry.add_argument(
        "--failure-threshold",
        type=_syntax(BreakerConfig, "failure_threshold"),
        metavar="N",
        help="consecutive node failures that open its circuit breaker (default 5)",
    )
    retry.add_argument(
        "--open-timeout",
        type=_syntax(BreakerConfig, "open_timeout"),
        metavar="SECONDS",
        help="how long an open breaker rejects before probing the node (default 30)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default INFO)",
    )
    return parser


def overrides_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The flags as dotted configuration keys, and for each key the flag that set it."""
    overrides: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for dest, (key, flag) in _FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides[key] = value
            flags[key] = flag
    if args.bind:
        overrides["gateway.bind"] = list(args.bind)
        flags["gateway.bind"] = "--bind"
        for i in range(len(args.bind)):
            flags[f"gateway.bind[{i}]"] = "--bind"
    if args.ingress is not None:
        overrides["gateway.ingress"] = args.ingress
        flags["gateway.ingress"] = "--ingress"
    if args.no_telemetry:
        overrides["gateway.telemetry"] = False
    elif args.telemetry is not None:
        overrides["gateway.telemetry"] = args.telemetry
        flags["gateway.telemetry"] = "--telemetry"
    for rid, clearance in args.region or ():
        overrides[f"regions.{rid}"] = clearance
    for name, weight in args.policy or ():
        overrides[f"policy.{name}.weight"] = weight
        flags[f"policy.{name}.weight"] = "--policy"
    return overrides, flags


def _error_text(exc: ConfigError, flags: dict[str, str]) -> str:
    flag = flags.get(exc.key or "")
    if flag is not None:
        return f"argument {flag}: {exc.reason.removesuffix(f' (set by {flag})')}"
    return str(exc)


def _connect_hint(endpoint: str) -> str:
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    if host in ("0.0.0.0", "*", "[::]", "::"):
        return f"{endpoint}  (all interfaces: workers use this machine's address)"
    return endpoint


def _banner(
    cfg: FedgateConfig, gateway: Any, telemetry: Any, ingress: Ingress | None, http: Any = None
) -> str:
    endpoints = gateway.endpoints
    first = endpoints[0]
    lines = [f"fedgate gateway {gateway.gateway_id} is running", ""]
    lines.append("  workers connect to:")
    lines.extend(f"    {_connect_hint(e)}" for e in endpoints)
    lines.append(
        f"    e.g. fedgate worker --gateway {first} --node NODE --region REGION "
        "--model MODEL --capability CAP"
    )
    if cfg.trust is not None:
        lines.append(
            f"  trust:       CURVE; {len(cfg.trust.grants)} worker key(s) granted "
            f"(trusted keys: {cfg.trust.workers})"
        )
    else:
        lines.append("  trust:       none: workers are not authenticated (see [trust])")
    trust = cfg.trust
    keys = ""
    if trust is not None:
        public = Path(trust.key).with_name(f"{Path(trust.key).stem}.key")
        keys = f" --key OPERATOR.key_secret --gateway-key {public}"
    if telemetry is not None and telemetry.endpoint.startswith("tcp://"):
        if trust is not None and trust.operators is not None:
            lines.append(f"  dashboard:   fedgate top --gateway {telemetry.endpoint}{keys}"
                         f"  (CURVE; operator keys: {trust.operators})")  # fmt: skip
        else:
            lines.append(f"  dashboard:   fedgate top --gateway {telemetry.endpoint}")
    else:
        lines.append("  dashboard:   off (no telemetry endpoint; see --telemetry)")
    if ingress is not None:
        lines.append(f"  clients:     {ingress.endpoint}  (requests: MessagePack over ZeroMQ)")
        if trust is not None and trust.clients is not None:
            lines.append(f"               CURVE: client keys in {trust.clients}; a client's "
                         "tenant is its key's name")  # fmt: skip
    if http is not None:
        lines.append(f"  http:        {http.url}/v1  (OpenAI API; /healthz /readyz /metrics)")
    if telemetry is not None and telemetry.metrics_url:
        lines.append(f"  prometheus:  {telemetry.metrics_url}")
    if cfg.regions:
        regions = ", ".join(f"{r.id} {r.clearance.name}" for r in cfg.regions)
        lines.append(f"  regions:     {regions}; any other region INTERNAL")
    else:
        lines.append("  regions:     none configured: every region INTERNAL")
    policy = ", ".join(f"{p.name} {p.weight:g}" for p in cfg.policy.policies)
    lines.append(f"  policy:      {policy}; strategy {cfg.strategy}")
    if cfg.origin:
        lines.append(f"  origin:      {cfg.origin}")
    g = cfg.gateway
    lines.append(
        f"  retries:     {g.max_retries} (delay {g.retry_delay:g}s), request timeout "
        f"{g.request_timeout:g}s; breaker opens after {cfg.breaker.failure_threshold} "
        f"failures for {cfg.breaker.open_timeout:g}s; heartbeats every "
        f"{cfg.health.heartbeat_interval:g}s (dead after {cfg.health.heartbeat_liveness} missed)"
    )
    lines += ["", "Ctrl-C or SIGTERM stops it; SIGHUP reloads --config."]
    return "\n".join(lines)


async def _serve(
    cfg: FedgateConfig,
    path: str | None,
    overrides: dict[str, Any],
    flags: dict[str, str],
) -> int:
    from fedgate.telemetry import TelemetryServer

    gateway = build_gateway(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current = cfg

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            return
        log.info("%s: stopping", sig.name)
        stop.set()

    def on_reload() -> None:
        nonlocal current
        if path is None:
            log.warning("SIGHUP: no --config file to reload")
            return
        try:
            new = load_config(path, overrides=overrides, flags=flags)
        except ConfigError as exc:
            log.error("reload rejected, configuration unchanged: %s", _error_text(exc, flags))
            return
        notes = reload_gateway(gateway, current, new)
        current = new
        if not notes:
            log.info("reloaded %s: nothing changed", path)
        for note in notes:
            log.info("reloaded %s: %s", path, note)

    handlers: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no handlers
            loop.add_signal_handler(sig, on_stop, sig)
            handlers.append(sig)
    if hasattr(signal, "SIGHUP"):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_reload)
            handlers.append(signal.SIGHUP)

    def on_transition(event: Any) -> None:
        level = logging.WARNING if event.new.name == "OPEN" else logging.INFO
        log.log(level, "breaker %s: %s → %s", event.node_id, event.old.name, event.new.name)

    unsubscribe = gateway.breaker.subscribe(on_transition)
    telemetry: TelemetryServer | None = None
    ingress: Ingress | None = None
    http: Any = None
    try:
        log.info("compiling the routing kernels (a few seconds, once per process)")
        try:
            await gateway.start()
        except OSError as exc:
            print(f"fedgate gateway: error: {exc}", file=sys.stderr)
            return 1
        try:
            if cfg.telemetry is not None or cfg.prometheus_port is not None or cfg.http is not None:
                # Prometheus alone still needs the server; an in-process endpoint does.
                endpoint = cfg.telemetry or f"inproc://fedgate-telemetry-{gateway.gateway_id}"
                server = TelemetryServer(gateway, endpoint, cfg.prometheus_port)
                await server.start()
                telemetry = server
            if cfg.ingress is not None:
                front = Ingress(gateway, cfg.ingress)
                await front.start()
                ingress = front
            if cfg.http is not None:
                from fedgate.gateway.http import HttpFront

                assert telemetry is not None
                door = HttpFront(
                    gateway, cfg.http, metrics=telemetry.prometheus_text, models=cfg.models
                )
                await door.start()
                http = door
        except OSError as exc:
            print(f"fedgate gateway: error: {exc}", file=sys.stderr)
            return 1
        print(_banner(cfg, gateway, telemetry, ingress, http), flush=True)
        await stop.wait()
        return 0
    finally:
        unsubscribe()
        if http is not None:
            await http.stop()
        if ingress is not None:
            await ingress.stop()
        if telemetry is not None:
            await telemetry.stop()
        await gateway.stop()
        for sig in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        log.info("gateway stopped")


def _exposed(cfg: FedgateConfig) -> list[str]:
    """The endpoints that the network reaches without CURVE guarding them."""
    return [e for e in _unguarded(cfg) if not is_loopback(e)]


def _unguarded(cfg: FedgateConfig) -> list[str]:
    """The endpoints without CURVE: the worker link without [trust], the ingress without
    ``[trust] clients``, telemetry without ``[trust] operators``."""
    trust = cfg.trust
    endpoints = [] if trust is not None else list(cfg.binds)
    if cfg.telemetry is not None and (trust is None or trust.operators is None):
        endpoints.append(cfg.telemetry)
    if cfg.ingress is not None and (trust is None or trust.clients is None):
        endpoints.append(cfg.ingress)
    return endpoints


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run ``fedgate gateway`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    An invalid flag or configuration prints an error naming it and returns 2
    before anything binds.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    name = parser.prog
    overrides, flags = overrides_from_args(args)
    try:
        cfg = load_config(args.config, overrides=overrides, flags=flags)
    except ConfigError as exc:
        print(f"{name}: error: {_error_text(exc, flags)}", file=sys.stderr)
        return 2
    if args.check:
        sys.stdout.write(to_toml(cfg))
        print(f"# {args.config or 'defaults and flags'}: configuration OK", file=sys.stderr)
        return 0
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    exposed = _exposed(cfg)
    if exposed and not args.insecure:
        print(
            f"{name}: error: {', '.join(exposed)} is reachable from other machines without "
            "CURVE: anyone reaching it can announce a node in any region (--bind without "
            "[trust] keys and grants), ask as any tenant (--ingress without [trust] clients) "
            "or read the federation's state (--telemetry without [trust] operators); bind "
            "127.0.0.1, configure [trust], or pass --insecure",
            file=sys.stderr,
        )
        return 2
    if exposed:
        log.warning(
            "INSECURE: %s bound without worker authentication (--insecure): anyone reaching "
            "it can serve, and receive, any region's data",
            ", ".join(exposed),
        )
    elif cfg.trust is None:
        log.info("no [trust] configuration: workers are not authenticated; loopback binds only")
    else:
        for endpoint in _unguarded(cfg):
            # Loopback without a key directory: the host's own users are the boundary.
            log.warning(
                "%s runs without CURVE (no [trust] %s directory): any process on this "
                "machine may use it; loopback binds only",
                endpoint, "clients" if endpoint == cfg.ingress else "operators",
            )  # fmt: skip
    return asyncio.run(_serve(cfg, args.config, overrides, flags))


if __name__ == "__main__":
    raise SystemExit(main())
