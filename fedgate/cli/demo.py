"""``fedgate demo``: the case study's federation, failing and recovering, on this machine.

One command, nothing to set up: a gateway on free loopback ports with three
regions (us-west-2 and ap-south-1 INTERNAL, eu-west-1 cleared for RESTRICTED
data), its telemetry endpoint, and the case study's three nodes as real
``fedgate worker`` processes with the synthetic backend:

=================  ==========  =====  ===================================  ==========
node               region      kind   models                               serves
=================  ==========  =====  ===================================  ==========
us-west-gpu-01     us-west-2   GPU    whisper-large-v3, llama-3-8b         transcribe, generate
eu-west-gpu-01     eu-west-1   GPU    whisper-large-v3, llama-3-8b         transcribe, generate
ap-south-cpu-01    ap-south-1  CPU    llama-3-8b (cheaper, slower)         generate
=================  ==========  =====  ===================================  ==========

Traffic is a seeded mix: transcriptions, streamed generations (every token
checked against :func:`~fedgate.worker.backends.synthetic.synthetic_token`, so a
lost, duplicated or reordered token is caught), and RESTRICTED requests of an
EU tenant, each dispatch of which is checked to have gone to eu-west-1. At 30 %
of the duration us-west-gpu-01 — the gateway's local node, which takes most of
the traffic — is SIGKILLed with requests in flight: they fail over (streams
resume on another node from the next token), its circuit breaker opens, and at
50 % the node is started again, probed and taken back.

With a terminal the live dashboard (``fedgate top``) shows it; without one, or
with ``--no-tui``, progress lines and a summary are printed. Exit status 0
when every invariant held (no sovereignty violation, no bad or lost token, no
silently truncated answer, no lost request), 1 otherwise, 130 when
interrupted, 2 for a bad flag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgate.federation.breaker import BreakerConfig, BreakerTransition
from fedgate.federation.health import HealthConfig
from fedgate.types import (
    Capability,
    InferenceRequest,
    PrivacyLevel,
    QoSRequirements,
    Region,
    RegionId,
)
from fedgate.worker.backends.synthetic import synthetic_output, synthetic_token

if TYPE_CHECKING:
    from rich.console import Console

    from fedgate.gateway import Gateway

__all__ = [
    "FEDERATION",
    "REGIONS",
    "DemoResult",
    "NodeSpec",
    "Plan",
    "build_parser",
    "main",
    "render_summary",
]

log = logging.getLogger("fedgate.demo")

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class NodeSpec:
    """One worker of the demo federation and its simulated speed."""

    node: str
    region: str
    gpu: bool
    models: tuple[str, ...]
    capabilities: tuple[str, ...]
    cost: float
    ttft: float
    token_rate: float

    def argv(self, endpoint: str, heartbeat: float) -> list[str]:
        """The ``fedgate worker`` flags that run this node against ``endpoint``."""
        args = ["--gateway", endpoint, "--node", self.node, "--region", self.region]
        for model in self.models:
            args += ["--model", model]
        for cap in self.capabilities:
            args += ["--capability", cap]
        args += [
            "--gpu" if self.gpu else "--cpu",
            "--cost", f"{self.cost:g}",
            "--backend", "synthetic",
            "--ttft", f"{self.ttft:g}",
            "--token-rate", f"{self.token_rate:g}",
            "--heartbeat-interval", f"{heartbeat:g}",
            "--drain-timeout", "0.5",
        ]  # fmt: skip
        return args


FEDERATION: tuple[NodeSpec, ...] = (
    NodeSpec("us-west-gpu-01", "us-west-2", True, ("whisper-large-v3", "llama-3-8b"),
             ("transcribe", "generate"), 1.0, 0.03, 150.0),
    NodeSpec("eu-west-gpu-01", "eu-west-1", True, ("whisper-large-v3", "llama-3-8b"),
             ("transcribe", "generate"), 1.2, 0.04, 120.0),
    NodeSpec("ap-south-cpu-01", "ap-south-1", False, ("llama-3-8b",),
             ("generate",), 0.25, 0.12, 40.0),
)  # fmt: skip
"""The case study's three nodes (cost per 1k tokens, ttft in s, tokens/s)."""

REGIONS: tuple[Region, ...] = (
    Region(RegionId("us-west-2"), PrivacyLevel.INTERNAL, zone="us-west-2a"),
    Region(RegionId("eu-west-1"), PrivacyLevel.RESTRICTED, zone="eu-west-1a"),
    Region(RegionId("ap-south-1"), PrivacyLevel.INTERNAL, zone="ap-south-1a"),
)
"""Region clearances: only eu-west-1 may receive RESTRICTED data."""

ORIGIN = RegionId("us-west-2")
VICTIM = "us-west-gpu-01"
EU_REGION = "eu-west-1"
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_LIVENESS = 4
FAILURE_THRESHOLD = 3
REQUEST_TIMEOUT = 10.0
RETRY_BUDGET_MIN = 10
# The request mix: (kind, share).
MIX = (("transcribe", 0.3), ("generate", 0.5), ("restricted", 0.2))
TENANTS = {"transcribe": "acme-corp", "generate": "globex", "restricted": "eu-health"}


@dataclass(frozen=True)
class Plan:
    """When things happen, in seconds from the start of the traffic.

    Relative to the duration, so a short demo still shows the whole story:
    the kill at 30 %, the restart at 50 % (later if need be: not before the
    death is noticed and the breaker has half-opened), and an open timeout
    (15 %, at least 0.5 s) that ends before the restart, so the restarted
    node is probed as soon as it registers.
    """

    duration: float
    kill_at: float
    restart_at: float
    open_timeout: float

    @classmethod
    def for_duration(cls, duration: float) -> Plan:
        kill_at = 0.30 * duration
        open_timeout = min(30.0, max(0.5, 0.15 * duration))
        detect = HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS
        return cls(
            duration=duration,
            kill_at=kill_at,
            restart_at=max(0.50 * duration, kill_at + detect + open_timeout),
            open_timeout=open_timeout,
        )


# ------------------------------------------------------------------ results


@dataclass
class DemoResult:
    """Everything the summary shows; the invariants are checked on it."""

    duration: float = 0.0
    rate: float = 0.0
    seed: int = 0
    sent: int = 0
    shed: int = 0
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    tokens_verified: int = 0
    token_mismatches: list[str] = field(default_factory=list)
    truncations: list[str] = field(default_factory=list)
    lost: int = 0
    restricted_requests: int = 0
    restricted_dispatches: int = 0
    sovereignty_violations: list[str] = field(default_factory=list)
    routes_unchecked: int = 0
    failovers: int = 0
    resumes: int = 0
    retries: int = 0
    breaker_trips: int = 0
    latency: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    ttft: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[tuple[float, str, str, str]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    killed_inflight: int | None = None
    failure_threshold: int = FAILURE_THRESHOLD
    open_timeout: float = 0.0
    interrupted: bool = False
    stopped_early: bool = False
    planned: float = 0.0
    log_dir: str | None = None

    def violations(self) -> list[str]:
        """The invariants that did not hold, in words (empty: all held)."""
        out = []
        if self.sovereignty_violations:
            out.append(f"{len(self.sovereignty_violations)} sovereignty violation(s)")
        if self.routes_unchecked:
            out.append(f"{self.routes_unchecked} RESTRICTED dispatch(es) could not be checked")
        if self.token_mismatches:
            out.append(f"{len(self.token_mismatches)} wrong, duplicated or reordered token(s)")
        if self.truncations:
            out.append(f"{len(self.truncations)} silently truncated answer(s)")
        if self.lost:
            out.append(f"{self.lost} lost request(s)")
        if self.sent and not self.ok:
            out.append("no request succeeded")
        return out


# ------------------------------------------------------------------ summary


def _ms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def render_summary(result: DemoResult, console: Console) -> None:
    """Print the end-of-demo summary: per node, breaker transitions, totals, verdict."""
    from rich import box
    from rich.table import Table

    r = result
    title = f"fedgate demo: {r.duration:.1f} s of traffic at {r.rate:g} req/s (seed {r.seed})"
    if r.interrupted:
        title += f" - interrupted (planned {r.planned:g} s)"
    elif r.stopped_early:
        title += f" - stopped early (planned {r.planned:g} s)"
    console.print()
    console.print(title, style="bold")
    nodes = Table(box=box.SIMPLE, title="requests per node", title_justify="left", pad_edge=False)
    for col, justify in (("node", "left"), ("region", "left"), ("clearance", "left"),
                         ("kind", "left"), ("dispatched", "right"), ("ok", "right"),
                         ("failed", "right"), ("tokens", "right"), ("pids", "left")):  # fmt: skip
        nodes.add_column(col, justify=justify)  # type: ignore[arg-type]
    for n in r.nodes:
        nodes.add_row(n["node"], n["region"], n["clearance"], n["kind"], str(n["requests"]),
                      str(n["successes"]), str(n["failures"]), str(n["tokens"]),
                      ",".join(str(p) for p in n["pids"]))  # fmt: skip
    console.print(nodes)

    console.print("breaker transitions", style="bold")
    if r.transitions:
        for at, node, old, new in r.transitions:
            console.print(f"  {at:+7.2f}s  {node:<16} {old} -> {new}", highlight=False)
    else:
        console.print("  none", highlight=False)
    timeline = [(at, text) for at, text in r.events if not text.startswith("breaker ")]
    if timeline:
        console.print("timeline", style="bold")
        for at, text in timeline:
            console.print(f"  {at:+7.2f}s  {text}", highlight=False)
    console.print()
    totals = Table(box=None, show_header=False, pad_edge=False)
    totals.add_column("what", style="bold")
    totals.add_column("value")
    errors = ", ".join(f"{k} {v}" for k, v in r.errors.most_common()) or "none"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.by_kind.items()))
    shed = f"; {r.shed} not sent: the gateway fell behind" if r.shed else ""
    totals.add_row("requests", f"{r.sent} ({kinds}{shed})")
    totals.add_row("succeeded", str(r.ok))
    totals.add_row("failed", f"{r.failed} (explicit errors: {errors})")
    totals.add_row("lost", f"{r.lost} (every request completed or ended with an explicit error)"
                   if not r.lost else str(r.lost))  # fmt: skip
    totals.add_row("failovers", str(r.failovers))
    totals.add_row("resumes", f"{r.resumes} (streams continued on another node mid-generation)")
    totals.add_row(
        "retries", f"{r.retries} (budget: 20 % of active requests, at least {RETRY_BUDGET_MIN})"
    )
    trips = (
        f"{r.breaker_trips} (in this demo a breaker opens after {r.failure_threshold} "
        f"consecutive failures, default 5, for {r.open_timeout:g}s)"
    )
    if not r.breaker_trips and r.killed_inflight is not None:
        trips += (
            f"; {VICTIM} had only {r.killed_inflight} request(s) in flight when killed: "
            "raise --rate to see it trip"
        )
    totals.add_row("breaker trips", trips)
    lat = r.latency
    totals.add_row("latency", f"p50 {_ms(lat[0])}  p95 {_ms(lat[1])}  p99 {_ms(lat[2])}")
    tt = r.ttft
    totals.add_row("time to first token", f"p50 {_ms(tt[0])}  p95 {_ms(tt[1])}  p99 {_ms(tt[2])}")
    totals.add_row(
        "tokens verified",
        f"{r.tokens_verified} ({len(r.token_mismatches)} wrong, duplicated or reordered; "
        f"{len(r.truncations)} truncated)",
    )
    totals.add_row(
        "sovereignty violations",
        f"{len(r.sovereignty_violations)} ({r.restricted_requests} RESTRICTED requests, "
        f"{r.restricted_dispatches} dispatches, all checked to be in {EU_REGION})"
        if not r.sovereignty_violations and not r.routes_unchecked
        else f"{len(r.sovereignty_violations)} ({r.routes_unchecked} dispatches unchecked)",
    )
    console.print(totals)
    problems = (
        ("sovereignty violation", r.sovereignty_violations),
        ("token error", r.token_mismatches),
        ("truncation", r.truncations),
    )
    for label, items in problems:
        for item in items[:5]:
            console.print(f"  {label}: {item}", style="red", highlight=False)
    for item in r.error_samples:
        console.print(f"  failed request: {item}", style="yellow", highlight=False)
    bad = r.violations()
    if bad:
        console.print(f"RESULT: FAIL - {'; '.join(bad)}", style="bold red", highlight=False)
    else:
        console.print("RESULT: PASS - every invariant held", style="bold green", highlight=False)
    if r.log_dir:
        console.print(f"worker and gateway logs: {r.log_dir}", highlight=False)


# ------------------------------------------------------------------ processes

# Linux: the worker dies with the demo even if the demo is SIGKILLed
# (PR_SET_PDEATHSIG survives exec), then becomes `python -m fedgate.worker`
# under the same pid, so the pid the gateway reports is the one we signal.
_LAUNCH = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.execv(sys.executable, [sys.executable, "-m", "fedgate", "worker", *sys.argv[2:]])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Workers:
    """The demo's worker processes: start, SIGKILL, restart, and always clean up."""

    def __init__(self, endpoint: str, log_dir: Path) -> None:
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[str, list[int]] = {}
        self._all: list[subprocess.Popen[bytes]] = []
        self._env = dict(os.environ)
        # The children import this very fedgate, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        self._env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, self._env.get("PYTHONPATH")) if p
        )
        self._env.setdefault("PYTHONUNBUFFERED", "1")

    def start(self, spec: NodeSpec) -> subprocess.Popen[bytes]:
        args = spec.argv(self.endpoint, HEARTBEAT_INTERVAL)
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-c", _LAUNCH, str(os.getpid()), *args]
        else:
            argv = [sys.executable, "-m", "fedgate", "worker", *args]
        with (self.log_dir / f"{spec.node}.log").open("ab") as logf:
            logf.write(
                f"--- {time.strftime('%H:%M:%S')} fedgate worker {' '.join(args)}\n".encode()
            )
            logf.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=self._env
            )
        self.procs[spec.node] = proc
        self.pids.setdefault(spec.node, []).append(proc.pid)
        self._all.append(proc)
        return proc

    def kill(self, node: str) -> int:
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        return proc.pid

    def exited(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, node: str, lines: int = 15) -> str:
        path = self.log_dir / f"{node}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """SIGTERM (drain) every worker still running, SIGKILL what is left after 2 s, reap all."""
        running = [p for p in self._all if p.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        for p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        for p in self._all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(2.0)


# ------------------------------------------------------------------ the demo


class _Demo:
    def __init__(self, args: argparse.Namespace, tui: bool) -> None:
        self.args = args
        self.tui = tui
        self.plan = Plan.for_duration(args.duration)
        self.result = DemoResult(
            duration=0.0,
            planned=args.duration,
            rate=args.rate,
            seed=args.seed,
            open_timeout=self.plan.open_timeout,
        )
        self.stop = asyncio.Event()
        self.t0: float | None = None
        self.gateway: Gateway | None = None
        self.workers: _Workers | None = None
        self.telemetry: Any = None
        self.app: Any = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.restricted: set[str] = set()
        self._last_route: Any = None
        self._known_alive: dict[str, int] = {}
        self._transitions: list[BreakerTransition] = []

    # ---------------------------------------------------------------- output
    def now(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def say(self, text: str) -> None:
        """A line before or after the traffic (never while the dashboard is up)."""
        if self.app is None:
            print(text, flush=True)

    def event(self, text: str, severity: str = "information") -> None:
        at = self.now()
        self.result.events.append((at, text))
        if self.app is not None:
            with contextlib.suppress(Exception):  # the app may be closing
                self.app.notify(text, severity=severity, timeout=4)
        else:
            print(f"[{at:6.2f}s] {text}", flush=True)

    # ---------------------------------------------------------------- run
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._interrupt, sig)
        keep = self.args.log_dir is not None
        log_dir = Path(self.args.log_dir or tempfile.mkdtemp(prefix="fedgate-demo-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        # The gateway's own log lines would tear through the dashboard and the
        # progress lines: they go to a file beside the workers' logs.
        handler = logging.FileHandler(log_dir / "gateway.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger = logging.getLogger("fedgate")
        saved = (logger.level, logger.propagate)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        started = False
        try:
            started = await self._start(log_dir)
            if started and not self.stop.is_set():
                await self._scenario()
        except OSError as exc:
            print(f"fedgate demo: error: {exc}", file=sys.stderr)
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.workers is not None:
                await asyncio.to_thread(self.workers.close)
            if self.telemetry is not None:
                await self.telemetry.stop()
            if self.gateway is not None:
                self._collect()
                await self.gateway.stop()
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
            handler.close()
        status = EXIT_OK if started and not self.result.violations() else EXIT_VIOLATION
        if keep or status != EXIT_OK:
            self.result.log_dir = str(log_dir)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
        if started:
            from rich.console import Console

            # Not a terminal: rich would wrap at 80 columns; the summary's lines are longer.
            width = None if sys.stdout.isatty() else 120
            render_summary(self.result, Console(highlight=False, width=width))
        elif self.result.log_dir:
            print(f"worker and gateway logs: {self.result.log_dir}", file=sys.stderr)
        if self.result.interrupted:
            return EXIT_INTERRUPTED
        return status

    def _interrupt(self, sig: signal.Signals) -> None:
        if not self.result.interrupted:
            self.result.interrupted = True
            self.say(f"{sig.name}: stopping the traffic, then cleaning up")
        self.stop.set()
        if self.app is not None:
            self.app.exit()

    async def _start(self, log_dir: Path) -> bool:
        """Start the gateway, its telemetry and the workers; False if the federation failed."""
        from fedgate.config import FedgateConfig, build_gateway
        from fedgate.gateway import GatewayConfig
        from fedgate.telemetry import TelemetryServer

        self.say(
            "fedgate demo: a gateway and the case study's federation as 3 worker processes "
            f"({', '.join(s.node for s in FEDERATION)})"
        )
        for attempt in range(3):
            endpoint = f"tcp://127.0.0.1:{_free_port()}"
            cfg = FedgateConfig(
                binds=(endpoint,),
                telemetry="tcp://127.0.0.1:*",
                origin=ORIGIN,
                gateway=GatewayConfig(
                    max_retries=3,
                    retry_delay=0.02,
                    request_timeout=REQUEST_TIMEOUT,
                    # A killed node fails all its requests at once; a budget of at
                    # least RETRY_BUDGET_MIN lets every one of them fail over.
                    retry_budget_min=RETRY_BUDGET_MIN,
                    recent_routes=8192,
                ),
                regions=REGIONS,
                breaker=BreakerConfig(
                    failure_threshold=FAILURE_THRESHOLD,
                    open_timeout=self.plan.open_timeout,
                    max_open_timeout=max(30.0, self.plan.open_timeout),
                    probe_timeout=2.0,
                ),
                health=HealthConfig(
                    heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_liveness=HEARTBEAT_LIVENESS
                ),
            )
            gateway = build_gateway(cfg)
            self.gateway = gateway
            gateway.breaker.subscribe(self._transitions.append)
            # Workers first: they start while the gateway compiles its kernels, and
            # keep announcing themselves until it answers.
            self.workers = _Workers(endpoint, log_dir)
            for spec in FEDERATION:
                self.workers.start(spec)
            self.say("compiling the routing kernels and starting the workers (a few seconds)...")
            try:
                await gateway.start()
                break
            except OSError:
                # The free port was taken meanwhile: start over on another one.
                await asyncio.to_thread(self.workers.close)
                self.workers = None
                self.gateway = None
                if attempt == 2:
                    raise
        assert self.gateway is not None and self.workers is not None
        self.telemetry = TelemetryServer(self.gateway, "tcp://127.0.0.1:0")
        await self.telemetry.start()
        try:
            await self._wait_registered([s.node for s in FEDERATION], timeout=60.0)
        except RuntimeError as exc:
            print(f"fedgate demo: error: {exc}", file=sys.stderr)
            return False
        gateway = self.gateway
        self.say(f"gateway {gateway.gateway_id}: workers connect to {gateway.endpoints[0]}")
        self.say(
            f"dashboard from another terminal: fedgate top --gateway {self.telemetry.endpoint}"
        )
        self.say(
            f"regions: {', '.join(f'{r.id} {r.clearance.name}' for r in REGIONS)}; origin {ORIGIN}"
        )
        self.say(
            f"plan: {self.plan.duration:g}s of traffic at {self.args.rate:g} req/s; SIGKILL "
            f"{VICTIM} at {self.plan.kill_at:.1f}s, restart it at {self.plan.restart_at:.1f}s"
        )
        return True

    async def _wait_registered(self, nodes: list[str], timeout: float) -> None:
        assert self.gateway is not None and self.workers is not None
        workers = self.workers
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            live = {w["node"]: w["pid"] for w in self.gateway.workers() if w["alive"]}
            missing = [n for n in nodes if live.get(n) != workers.procs[n].pid]
            if not missing:
                for n in nodes:
                    self._known_alive[n] = workers.procs[n].pid
                return
            for n in missing:
                code = workers.procs[n].poll()
                if code is not None:
                    raise RuntimeError(
                        f"worker {n} exited with status {code} before registering:\n"
                        + workers.log_tail(n)
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {missing} did not register within {timeout:g}s")
            await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- scenario
    async def _scenario(self) -> None:
        workers, telemetry = self.workers, self.telemetry
        assert workers is not None and telemetry is not None
        self.t0 = time.monotonic()
        runners = [
            asyncio.create_task(self._traffic(), name="demo-traffic"),
            asyncio.create_task(self._chaos(workers), name="demo-chaos"),
            asyncio.create_task(self._watch(workers), name="demo-watch"),
        ]
        app_task: asyncio.Task[Any] | None = None
        if self.tui:
            from fedgate.telemetry import telemetry_for

            assert self.gateway is not None
            app = _demo_app(telemetry_for(self.gateway).snapshot, telemetry.endpoint)
            self.app = app
            app_task = asyncio.create_task(app.run_async(), name="demo-dashboard")
        try:
            waiters: set[asyncio.Future[Any]] = {runners[0]}
            if app_task is not None:
                waiters.add(app_task)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            self.stop.set()  # q in the dashboard, or the duration is over
            if app_task is not None:
                if not app_task.done():
                    self.app.exit()
                with contextlib.suppress(Exception):
                    await app_task
                self.app = None
            await runners[0]
            await self._drain()
        finally:
            for task in runners[1:]:
                task.cancel()
            for task in runners:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._flush_transitions()
            self._scan_routes()

    async def _traffic(self) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.args.seed)
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        end = loop.time() + self.plan.duration
        at = loop.time()
        i = 0
        cap = max(50, int(self.args.rate * REQUEST_TIMEOUT))
        while not self.stop.is_set():
            at += rng.expovariate(self.args.rate)
            if at >= end:
                break
            delay = at - loop.time()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                if self.stop.is_set():
                    break
            kind = rng.choices(kinds, weights)[0]
            tokens = rng.randint(12, 32) if kind == "transcribe" else rng.randint(16, 64)
            stream = kind == "generate" or (kind == "restricted" and rng.random() < 0.5)
            if len(self.tasks) >= cap:  # the gateway is not keeping up: shed, don't pile up
                self.result.shed += 1
                continue
            rid = f"demo-{self.args.seed}-{i:05d}"
            i += 1
            task = asyncio.create_task(self._request(kind, rid, tokens, stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        stopped = self.stop.is_set()
        self.result.duration = (
            min(self.plan.duration, self.now()) if stopped else self.plan.duration
        )
        self.result.stopped_early = stopped and not self.result.interrupted

    async def _request(self, kind: str, rid: str, tokens: int, stream: bool) -> None:
        gw = self.gateway
        assert gw is not None
        r = self.result
        r.sent += 1
        r.by_kind[kind] += 1
        restricted = kind == "restricted"
        qos = QoSRequirements(
            privacy=PrivacyLevel.RESTRICTED if restricted else PrivacyLevel.INTERNAL
        )
        if restricted:
            self.restricted.add(rid)
            r.restricted_requests += 1
        cap = Capability.TRANSCRIBE if kind == "transcribe" else Capability.GENERATE
        body: dict[str, Any] = {"max_tokens": tokens}
        if kind == "transcribe":
            body["audio"] = "pcm16/16kHz"
            body["seconds"] = round(tokens / 4, 1)
        else:
            body["prompt"] = "Summarise the incident report."
        req = InferenceRequest(
            cap,
            json.dumps(body).encode(),
            qos=qos,
            request_id=rid,
            tenant_id=TENANTS[kind],
            origin=RegionId(EU_REGION) if restricted else None,
        )
        try:
            if stream:
                index = 0
                async for token in gw.infer_stream(req):
                    if token != synthetic_token(rid, index):
                        r.token_mismatches.append(f"{rid} token {index}: got {token!r}")
                        break
                    index += 1
                    r.tokens_verified += 1
                else:
                    if index != tokens:
                        r.truncations.append(
                            f"{rid}: stream ended without error after {index} of {tokens} tokens"
                        )
            else:
                resp = await gw.infer(req)
                if resp.output == synthetic_output(rid, tokens) and resp.tokens == tokens:
                    r.tokens_verified += tokens
                elif resp.output == synthetic_output(rid, resp.tokens):
                    r.truncations.append(
                        f"{rid}: {resp.tokens} of {tokens} tokens from {resp.node_id}"
                    )
                else:
                    r.token_mismatches.append(f"{rid}: wrong output from {resp.node_id}")
                if restricted and resp.region_id != EU_REGION:
                    r.sovereignty_violations.append(
                        f"{rid} answered by {resp.node_id} in {resp.region_id}"
                    )
        except asyncio.CancelledError:
            r.lost += 1
            raise
        except Exception as exc:  # an explicit error: counted, not an invariant broken
            r.failed += 1
            r.errors[type(exc).__name__] += 1
            if len(r.error_samples) < 5:
                r.error_samples.append(f"{rid}: {type(exc).__name__}: {exc}")
            return
        r.ok += 1

    async def _chaos(self, workers: _Workers) -> None:
        plan = self.plan
        assert self.gateway is not None
        await self._until(plan.kill_at)
        # Kill it while it is busy, so its in-flight requests have to fail over
        # (and are enough to open its breaker); give up waiting after a while.
        give_up = self.now() + min(2.0, max(0.4, 0.1 * plan.duration))
        inflight = 0
        while self.now() < give_up:
            inflight = next(
                (w["inflight"] for w in self.gateway.workers() if w["node"] == VICTIM), 0
            )
            if inflight >= FAILURE_THRESHOLD:
                break
            await asyncio.sleep(0.01)
        pid = workers.kill(VICTIM)
        killed_at = self.now()
        self.result.killed_inflight = inflight
        self.event(f"SIGKILL {VICTIM} (pid {pid}) with {inflight} request(s) in flight", "warning")
        # Not before its death is noticed and its breaker has half-opened (the
        # kill may have waited for requests in flight).
        detect = HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS
        await self._until(max(plan.restart_at, killed_at + detect + plan.open_timeout))
        proc = workers.start(next(s for s in FEDERATION if s.node == VICTIM))
        self.event(f"restarting {VICTIM} (pid {proc.pid})")

    async def _until(self, at: float) -> None:
        delay = at - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _watch(self, workers: _Workers) -> None:
        """Turn state changes into events; print progress lines without the dashboard."""
        gw = self.gateway
        assert gw is not None
        next_line = 1.0
        while True:
            await asyncio.sleep(0.05)
            self._flush_transitions()
            self._scan_routes()
            live = {w["node"]: w["pid"] for w in gw.workers() if w["alive"]}
            for node, pid in live.items():
                if self._known_alive.get(node) != pid:
                    self._known_alive[node] = pid
                    self.event(f"worker {node} registered (pid {pid})")
            for node in list(self._known_alive):
                if node not in live:
                    del self._known_alive[node]
                    self.event(f"node {node} lost: its requests fail over", "warning")
            if self.app is None and self.now() >= next_line:
                next_line += 1.0
                print(self._progress(live), flush=True)

    def _progress(self, live: dict[str, int]) -> str:
        assert self.gateway is not None
        s = self.gateway.stats()
        states = self.gateway.breaker.all_states()
        open_ = [f"{n} {st.name}" for n, st in sorted(states.items()) if st.name != "CLOSED"]
        return (
            f"[{self.now():6.2f}s] requests {self.result.sent:4d}  ok {self.result.ok:4d}  "
            f"failed {self.result.failed}  in flight {len(self.tasks):3d}  failovers "
            f"{s.failovers}  resumes {s.resumes}  live workers {len(live)}/{len(FEDERATION)}  "
            f"breakers: {', '.join(open_) if open_ else 'all CLOSED'}"
        )

    def _flush_transitions(self) -> None:
        # The listener may run under the breaker's lock: it only appends; here we report.
        while self._transitions:
            t = self._transitions.pop(0)
            at = t.at - self.t0 if self.t0 is not None else 0.0
            self.result.transitions.append((at, str(t.node_id), t.old.name, t.new.name))
            severity = "error" if t.new.name == "OPEN" else "information"
            self.event(f"breaker {t.node_id}: {t.old.name} -> {t.new.name}", severity)

    def _scan_routes(self) -> None:
        """Check every dispatch of a RESTRICTED request since the last scan."""
        gw = self.gateway
        if gw is None:
            return
        routes = gw.recent_routes
        fresh = []
        for rec in reversed(routes):
            if rec is self._last_route:
                break
            fresh.append(rec)
        else:
            if self._last_route is not None and len(routes) == routes.maxlen:
                # The ring wrapped between two scans: some dispatches went unseen.
                self.result.routes_unchecked += 1
        if routes:
            self._last_route = routes[-1]
        for rec in fresh:
            if rec.request_id in self.restricted:
                self.result.restricted_dispatches += 1
                if rec.region_id != EU_REGION:
                    self.result.sovereignty_violations.append(
                        f"{rec.request_id} (attempt {rec.attempt}) dispatched to {rec.node_id} "
                        f"in {rec.region_id}"
                    )

    async def _drain(self) -> None:
        """Let requests in flight finish (their deadline bounds the wait)."""
        if not self.tasks:
            return
        pending = list(self.tasks)
        self.say(f"traffic over; waiting for {len(pending)} request(s) in flight")
        _, still = await asyncio.wait(pending, timeout=REQUEST_TIMEOUT + 2.0)
        for task in still:
            task.cancel()  # counted as lost by the request itself
        if still:
            await asyncio.wait(still)

    def _collect(self) -> None:
        workers = self.workers
        gw = self.gateway
        if gw is None:
            return
        s = gw.stats()
        r = self.result
        r.failovers, r.resumes, r.retries = s.failovers, s.resumes, s.retries
        r.breaker_trips = s.breaker_trips
        r.latency = (s.latency_p50, s.latency_p95, s.latency_p99)
        r.ttft = (s.ttft_p50, s.ttft_p95, s.ttft_p99)
        if s.total_requests == 0:
            r.latency = r.ttft = (math.nan, math.nan, math.nan)
        clearance = {str(reg.id): reg.clearance.name for reg in REGIONS}
        r.nodes = []
        for spec in FEDERATION:
            n = s.per_node.get(spec.node)
            r.nodes.append(
                {
                    "node": spec.node,
                    "region": spec.region,
                    "clearance": clearance[spec.region],
                    "kind": "GPU" if spec.gpu else "CPU",
                    "requests": n.requests if n else 0,
                    "successes": n.successes if n else 0,
                    "failures": n.failures if n else 0,
                    "tokens": n.tokens if n else 0,
                    "pids": workers.pids.get(spec.node, []) if workers else [],
                }
            )


def _demo_app(source: Any, endpoint: str) -> Any:
    """The ``fedgate top`` dashboard, fed by the in-process gateway, with Ctrl-C to quit."""
    from textual.binding import Binding

    from fedgate.top.app import TopApp

    class DemoApp(TopApp):
        TITLE = "fedgate demo"
        BINDINGS = [Binding("ctrl+c", "quit", "Quit", show=False, priority=True)]  # noqa: RUF012

    return DemoApp(source, interval=0.25, endpoint=endpoint)


# ------------------------------------------------------------------ command line


def _positive(what: str, upper: float) -> Any:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and 0 < value <= upper):
            raise argparse.ArgumentTypeError(f"expected {what} in (0, {upper:g}], got {text!r}")
        return value

    convert.__name__ = what
    return convert


def _duration(text: str) -> float:
    value: float = _positive("seconds", 3600.0)(text)
    if value < 4.0:
        raise argparse.ArgumentTypeError(
            f"expected at least 4 seconds (the failure, the breaker and the recovery need "
            f"time to show), got {text!r}"
        )
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The ``fedgate demo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog or "fedgate demo",
        description="Run the case study's federation on this machine: a gateway, three "
        "regions (eu-west-1 cleared for RESTRICTED data) and three worker processes "
        "(us-west GPU, eu-west GPU, ap-south CPU) with the synthetic backend. Traffic "
        "flows, every token is verified, RESTRICTED requests are checked to stay in the "
        "EU, and part-way through us-west-gpu-01 is killed: watch the failover, its "
        "circuit breaker opening, and its recovery after a restart.",
        epilog="With a terminal the live dashboard runs (keys as in `fedgate top`; q quits). "
        "Without one, or with --no-tui, progress lines and a summary are printed. Exit "
        "status: 0 every invariant held, 1 one did not (or the federation did not start), "
        "130 interrupted, 2 bad flag.",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        default=20.0,
        metavar="SECONDS",
        help="seconds of traffic, at least 4 (default 20); the kill comes at 30 %% of it "
        "and the restart at about 50 %%",
    )
    parser.add_argument(
        "--rate",
        type=_positive("requests per second", 1000.0),
        default=20.0,
        metavar="RPS",
        help="requests per second, Poisson arrivals (default 20)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=1,
        metavar="N",
        help="seed of the request mix and arrivals (default 1)",
    )
    parser.add_argument(
        "--no-tui",
        action="store_true",
        help="print progress lines and a summary instead of the dashboard",
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="keep the worker and gateway logs in DIR (default: a temporary directory, "
        "removed unless the demo fails)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run ``fedgate demo`` with ``argv``; return the exit status (see the module docstring)."""
    args = build_parser(prog).parse_args(argv)
    tui = sys.stdout.isatty() and not args.no_tui
    return asyncio.run(_Demo(args, tui).run())


if __name__ == "__main__":
    raise SystemExit(main())
