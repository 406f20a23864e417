"""The federation's vocabulary: identifiers, capabilities, privacy, requests.

Identifiers are ``typing.NewType`` over ``str`` so they compare, hash and
serialise as plain strings while keeping the type checker honest.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, NewType

import msgspec

from fedgate.clock import to_seconds

__all__ = [
    "Capability",
    "InferenceRequest",
    "InferenceResponse",
    "ModelId",
    "NodeId",
    "PrivacyLevel",
    "QoSRequirements",
    "Region",
    "RegionId",
]

ModelId = NewType("ModelId", str)
NodeId = NewType("NodeId", str)
RegionId = NewType("RegionId", str)

_CAPABILITY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")


class Capability(str):
    """What a model can do: ``Capability.TRANSCRIBE`` … or ``Capability.custom("sentiment")``.

    A capability is a lower-case name (a ``str``), so custom ones travel over
    the wire and through configuration files unchanged.
    """

    __slots__ = ()

    TRANSCRIBE: ClassVar[Capability]
    SYNTHESIZE: ClassVar[Capability]
    GENERATE: ClassVar[Capability]
    CODE: ClassVar[Capability]
    EMBED: ClassVar[Capability]
    IMAGE_GEN: ClassVar[Capability]

    def __new__(cls, name: str) -> Capability:
        if not isinstance(name, str):
            raise TypeError(f"capability: expected a str, got {name!r}")
        if not _CAPABILITY_NAME.match(name):
            raise ValueError(
                "capability: expected a lower-case name of 1-64 characters "
                f"[a-z0-9_.-], got {name!r}"
            )
        return super().__new__(cls, name)

    @classmethod
    def custom(cls, name: str) -> Capability:
        """A capability beyond the built-in ones, e.g. ``Capability.custom("sentiment")``."""
        return cls(name)

    @classmethod
    def parse(cls, value: str | Capability) -> Capability:
        """Accept ``"transcribe"``, ``"TRANSCRIBE"`` or a ``Capability``."""
        if isinstance(value, Capability):
            return value
        if not isinstance(value, str):
            raise TypeError(f"capability: expected a str or Capability, got {value!r}")
        return cls(value.strip().lower())

    def __repr__(self) -> str:
        upper = str(self).upper().replace("-", "_").replace(".", "_")
        if getattr(Capability, upper, None) == self:
            return f"Capability.{upper}"
        return f"Capability.custom({str(self)!r})"


Capability.TRANSCRIBE = Capability("transcribe")
Capability.SYNTHESIZE = Capability("synthesize")
Capability.GENERATE = Capability("generate")
Capability.CODE = Capability("code")
Capability.EMBED = Capability("embed")
Capability.IMAGE_GEN = Capability("image_gen")


class PrivacyLevel(enum.IntEnum):
    """How sensitive a request's data is; a region's clearance must be at least this."""

    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @classmethod
    def parse(cls, value: str | int | PrivacyLevel) -> PrivacyLevel:
        """Accept a member, its name (any case) or its integer value."""
        if isinstance(value, PrivacyLevel):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                names = ", ".join(m.name for m in cls)
                raise ValueError(f"privacy level: expected one of {names}, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"privacy level: expected 0-3, got {value!r}") from None
        raise TypeError(f"privacy level: expected a PrivacyLevel or name, got {value!r}")


def _optional_positive(value: float | timedelta | None, name: str) -> float | None:
    if value is None:
        return None
    seconds = to_seconds(value, name)
    if not (seconds > 0 and seconds != float("inf")):
        raise ValueError(f"{name}: expected a finite duration > 0 seconds, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class QoSRequirements:
    """What a request demands of the node that serves it.

    Parameters
    ----------
    max_latency : float or timedelta, optional
        Nodes whose median latency exceeds this are not eligible.
    min_throughput : float, optional
        Tokens per second the node must sustain (advisory).
    privacy : PrivacyLevel
        The node's region must be cleared for at least this level.
    prefer_gpu : bool
        Favour GPU nodes.
    cost_tolerance : int
        0 prefers the cheapest node, 100 the fastest; in between blends them.
    """

    max_latency: float | None = None
    min_throughput: float | None = None
    privacy: PrivacyLevel = PrivacyLevel.INTERNAL
    prefer_gpu: bool = True
    cost_tolerance: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_latency", _optional_positive(self.max_latency, "max_latency"))
        if self.min_throughput is not None:
            mt = self.min_throughput
            if (
                isinstance(mt, bool)
                or not isinstance(mt, (int, float))
                or not (0 <= mt < float("inf"))
            ):
                raise ValueError(f"min_throughput: expected a finite number >= 0, got {mt!r}")
        object.__setattr__(self, "privacy", PrivacyLevel.parse(self.privacy))
        if not isinstance(self.prefer_gpu, bool):
            raise TypeError(f"prefer_gpu: expected a bool, got {self.prefer_gpu!r}")
        ct = self.cost_tolerance
        if isinstance(ct, bool) or not isinstance(ct, int) or not 0 <= ct <= 100:
            raise ValueError(f"cost_tolerance: expected an int in 0..100, got {ct!r}")


_DEFAULT_QOS = QoSRequirements()


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One inference call.

    Parameters
    ----------
    capability : Capability
        What to do (transcribe, generate, …).
    input : bytes
        The payload handed to the worker unchanged.
    qos : QoSRequirements
        Latency, privacy, GPU and cost requirements.
    request_id : str
        Non-empty; the gateway adds an unguessable suffix on the wire.
    tenant_id : str, optional
        Who is asking; used for stats and consistent hashing.
    model : ModelId, optional
        Pin a model; otherwise any model with the capability serves.
    deadline : float or timedelta, optional
        Time allowed for this request, overriding the gateway's ``request_timeout``.
    origin : RegionId, optional
        Where the caller is, for the locality policy.
    affinity_key : str, optional
        Key for consistent hashing (defaults to the tenant).
    """

    capability: Capability
    input: bytes
    # One shared default: it is frozen, and the router recognises it by identity.
    qos: QoSRequirements = _DEFAULT_QOS
    request_id: str = ""
    tenant_id: str | None = None
    model: ModelId | None = None
    deadline: float | None = None
    origin: RegionId | None = None
    affinity_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "capability", Capability.parse(self.capability))
        if isinstance(self.input, (bytearray, memoryview)):
            object.__setattr__(self, "input", bytes(self.input))
        if not isinstance(self.input, bytes):
            raise TypeError(f"input: expected bytes, got {type(self.input).__name__}")
        if not isinstance(self.qos, QoSRequirements):
            raise TypeError(f"qos: expected QoSRequirements, got {self.qos!r}")
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id: expected a non-empty str, got {self.request_id!r}")
        for name in ("tenant_id", "model", "origin", "affinity_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name}: expected a non-empty str or None, got {value!r}")
        object.__setattr__(self, "deadline", _optional_positive(self.deadline, "deadline"))


class InferenceResponse(msgspec.Struct, frozen=True, gc=False):
    """The result of :meth:`Gateway.infer`.

    A frozen msgspec struct rather than a frozen dataclass: the gateway builds
    one per request, and a frozen dataclass pays an ``object.__setattr__`` per
    field (~1.4 µs against ~0.1 µs). It holds no containers, so it needs no
    garbage-collector tracking.
    """

    output: bytes
    node_id: NodeId
    region_id: RegionId
    score: float
    latency: float
    tokens: int
    attempts: int
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Region:
    """A region as the gateway's configuration declares it.

    Clearance comes only from here, never from a worker's announcement: a
    region not configured has clearance INTERNAL.
    """

    id: RegionId
    clearance: PrivacyLevel = PrivacyLevel.INTERNAL
    zone: str | None = None
    cost: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"region id: expected a non-empty str, got {self.id!r}")
        object.__setattr__(self, "clearance", PrivacyLevel.parse(self.clearance))
        if self.cost is not None:
            c = self.cost
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c < float("inf"):
                raise ValueError(
                    f"region {self.id!r} cost: expected a finite number >= 0, got {c!r}"
                )
