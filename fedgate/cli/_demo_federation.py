"""The demo's federation and its timeline: three nodes, three regions, a kill and a restart.

What ``fedgate demo`` (:mod:`fedgate.cli.demo`) runs, as data: the case
study's nodes (:data:`FEDERATION`, each a ``fedgate worker`` command line),
their regions' clearances (:data:`REGIONS`), the gateway's settings that
make the failure visible in seconds (heartbeat, breaker threshold), the
request mix, and :class:`Plan`, when the kill and the restart happen.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.types import PrivacyLevel, Region, RegionId

__all__ = ["FEDERATION", "REGIONS", "ROGUE", "NodeSpec", "Plan"]


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

ROGUE = NodeSpec("eu-west-rogue-01", "eu-west-1", True, ("whisper-large-v3", "llama-3-8b"),
                 ("transcribe", "generate"), 0.01, 0.001, 1000.0)  # fmt: skip
"""An attacker: a trusted key with no grant, claiming a cheap, fast GPU node in eu-west."""

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
