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

::

    main() ──► _Demo.run()
      ├─ _start(): gateway + TelemetryServer, Workers      _demo_workers.py
      │            for FEDERATION, REGIONS and the Plan     _demo_federation.py
      ├─ _scenario(): _traffic() ∥ _chaos() (kill, restart) ∥ _watch() [∥ dashboard];
      │               every answer and dispatch checked into DemoResult
      └─ stop everything, _collect(), render_summary()     _demo_report.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgate.cli._demo_federation import (
    EU_REGION,
    FAILURE_THRESHOLD,
    FEDERATION,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    MIX,
    ORIGIN,
    REGIONS,
    REQUEST_TIMEOUT,
    ROGUE,
    TENANTS,
    VICTIM,
    NodeSpec,
    Plan,
)
from fedgate.cli._demo_report import DemoResult, render_summary
from fedgate.cli._demo_workers import Workers, free_port
from fedgate.federation.breaker import BreakerConfig, BreakerTransition
from fedgate.federation.health import HealthConfig
from fedgate.types import (
    Capability,
    InferenceRequest,
    PrivacyLevel,
    QoSRequirements,
    RegionId,
)
from fedgate.worker.backends.synthetic import synthetic_output, synthetic_token

if TYPE_CHECKING:
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
        self.workers: Workers | None = None
        self.telemetry: Any = None
        self.top_keys = ""  # the `fedgate top` key flags for the run's telemetry
        self.http: Any = None
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
            if self.http is not None:
                await self.http.stop()
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
        from fedgate.config import FedgateConfig
        from fedgate.deploy import build_gateway
        from fedgate.gateway import GatewayConfig
        from fedgate.telemetry import TelemetryServer

        self.say(
            "fedgate demo: a gateway and the case study's federation as 3 worker processes "
            f"({', '.join(s.node for s in FEDERATION)})"
        )
        trust, extra = self._keys(log_dir)
        for attempt in range(3):
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            cfg = FedgateConfig(
                trust=trust,
                binds=(endpoint,),
                telemetry="tcp://127.0.0.1:*",
                origin=ORIGIN,
                gateway=GatewayConfig(
                    max_retries=3,
                    retry_delay=0.02,
                    request_timeout=REQUEST_TIMEOUT,
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
            self.workers = Workers(endpoint, log_dir)
            self.workers.extra = extra
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
            f"dashboard from another terminal: fedgate top --gateway {self.telemetry.endpoint} "
            f"{self.top_keys}"
        )
        from fedgate.gateway.http import HttpConfig, HttpFront

        self.http = HttpFront(
            gateway, HttpConfig(listen="127.0.0.1:0"), metrics=self.telemetry.prometheus_text
        )
        await self.http.start()
        url = self.http.url
        self.say(f"OpenAI API on {url}/v1 (try it while the demo runs):")
        self.say(
            f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
            """-d '{"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}'"""
        )
        self.say(
            "  python -c 'from openai import OpenAI; "
            f'c = OpenAI(base_url="{url}/v1", api_key="demo"); '
            'print(c.chat.completions.create(model="llama-3-8b", '
            """messages=[{"role": "user", "content": "hi"}]).choices[0].message.content)'"""
        )
        self.say(
            f"regions: {', '.join(f'{r.id} {r.clearance.name}' for r in REGIONS)}; origin {ORIGIN}"
        )
        self.say(
            f"plan: {self.plan.duration:g}s of traffic at {self.args.rate:g} req/s; SIGKILL "
            f"{VICTIM} at {self.plan.kill_at:.1f}s, restart it at {self.plan.restart_at:.1f}s"
        )
        return True

    def _keys(self, log_dir: Path) -> tuple[Any, dict[str, list[str]]]:
        """CURVE keys for the gateway, each node and the rogue; the grants; worker flags.

        The rogue's key is trusted (it can connect) but granted nothing: its
        READY for an eu-west node is refused, and nothing is routed to it.
        """
        from fedgate.gateway.trust import Trust, WorkerGrant
        from fedgate.transport import curve

        folder = Path(tempfile.mkdtemp(prefix="keys-", dir=log_dir))
        trusted = folder / "trusted"
        curve.generate(folder, "gateway")
        extra: dict[str, list[str]] = {}
        grants = {}
        for spec in (*FEDERATION, ROGUE):
            name = "rogue" if spec is ROGUE else spec.node
            curve.generate(trusted, name)
            extra[spec.node] = [
                "--key", str(trusted / f"{name}.key_secret"),
                "--gateway-key", str(folder / "gateway.key"),
            ]  # fmt: skip
            if spec is not ROGUE:
                grants[name] = WorkerGrant(
                    nodes=[spec.node], region=spec.region, gpu=spec.gpu,
                    min_cost=spec.cost, max_cost=spec.cost,
                )  # fmt: skip
        # The dashboard's key: telemetry answers operators only (`fedgate top --key`).
        operators = folder / "operators"
        curve.generate(operators, "operator")
        self.top_keys = (
            f"--key {operators / 'operator.key_secret'} --gateway-key {folder / 'gateway.key'}"
        )
        audit = log_dir / "audit.jsonl"
        self.say(f"CURVE keys in {folder}: each worker is served under its key's grant; "
                 f"CONFIDENTIAL and RESTRICTED dispatches audited in {audit}")  # fmt: skip
        trust = Trust(key=str(folder / "gateway.key_secret"), workers=str(trusted), grants=grants,
                      operators=str(operators), audit_log=str(audit))  # fmt: skip
        return trust, extra

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

    async def _chaos(self, workers: Workers) -> None:
        plan = self.plan
        assert self.gateway is not None
        await self._until(plan.kill_at / 2)
        rogue = workers.start(ROGUE)
        self.result.rogue_started = True
        self.event(
            f"rogue worker (pid {rogue.pid}): a key with no grant announces {ROGUE.node} in "
            f"{ROGUE.region} at cost {ROGUE.cost:g}",
            "warning",
        )
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

    async def _watch(self, workers: Workers) -> None:
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
        if r.rogue_started:
            rogue = s.per_node.get(ROGUE.node)
            r.rogue_requests = rogue.requests if rogue else 0
            if workers is not None:
                for line in workers.log_tail(ROGUE.node, 50).splitlines():
                    if "refused node " in line:
                        r.rogue_refusal = line.partition("refused node ")[2].partition(": ")[2]
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
        "circuit breaker opening, and its recovery after a restart. The worker link runs "
        "CURVE with keys made for the run, and a rogue worker (a key with no grant) "
        "claiming an eu-west node is refused: no request reaches it.",
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
