"""What the demo records, the invariants it checks, and the summary it prints.

::

    _Demo (fedgate.cli.demo) ──fills──► DemoResult ──► violations(): the invariants that broke
                                            └────────► render_summary(): per node, breaker
                                                       transitions, timeline, totals, verdict
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedgate.cli._demo_federation import EU_REGION, FAILURE_THRESHOLD, VICTIM

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DemoResult", "render_summary"]


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
    # The rogue worker: started, how the gateway answered it, what reached it.
    rogue_started: bool = False
    rogue_refusal: str | None = None
    rogue_requests: int = 0

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
        if self.rogue_requests:
            out.append(f"{self.rogue_requests} request(s) reached the rogue worker")
        if self.rogue_started and self.rogue_refusal is None:
            out.append("the rogue worker was not refused")
        return out


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
        "retries",
        f"{r.retries} (budget: 20 % of active requests, at least 3; requests stranded "
        "by a dead node move without it)",
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
    if r.rogue_started:
        totals.add_row(
            "rogue worker",
            f"refused ({r.rogue_refusal}); {r.rogue_requests} requests reached it"
            if r.rogue_refusal is not None
            else f"not refused; {r.rogue_requests} requests reached it",
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
