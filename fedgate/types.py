"""The federation's vocabulary: identifiers, capabilities, privacy, requests.

Identifiers are ``typing.NewType`` over ``str`` so they compare, hash and
serialise as plain strings while keeping the type checker honest.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, NewType

import msgspec

from fedgate.validation import (
    CAPABILITY_PATTERN,
    IDENT,
    Cost,
    Deadline,
    Ident,
    Instance,
    Latency,
    Number,
    Parsed,
    Payload,
    RequestIdent,
    Switch,
    Text,
    count,
    validate,
)

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

_CAPABILITY_NAME = re.compile(CAPABILITY_PATTERN)


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


_Privacy = Annotated[
    PrivacyLevel,
    Parsed(PrivacyLevel.parse, what="a privacy level (PUBLIC, INTERNAL, CONFIDENTIAL, RESTRICTED)"),
]


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

    max_latency: Latency | None = None
    min_throughput: Annotated[float, Number(ge=0.0, le=1e9)] | None = None
    privacy: _Privacy = PrivacyLevel.INTERNAL
    prefer_gpu: Switch = True
    cost_tolerance: Annotated[int, count(0, 100)] = 50

    def __post_init__(self) -> None:
        validate(self)


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

    capability: Annotated[Capability, Parsed(Capability.parse, what="a capability name")]
    input: Annotated[bytes, Payload()]
    # One shared default: it is frozen, and the router recognises it by identity.
    qos: Annotated[QoSRequirements, Instance(QoSRequirements)] = _DEFAULT_QOS
    request_id: RequestIdent = ""
    tenant_id: Ident | None = None
    model: Annotated[ModelId, IDENT] | None = None
    # What the wire's Request.deadline accepts: the gateway never builds a frame it rejects.
    deadline: Deadline | None = None
    origin: Annotated[RegionId, IDENT] | None = None
    affinity_key: Annotated[str, Text(blank=True, what="a non-empty string")] | None = None

    def __post_init__(self) -> None:
        validate(self)


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

    id: Annotated[RegionId, IDENT]
    clearance: _Privacy = PrivacyLevel.INTERNAL
    zone: Annotated[str, Text(what="a non-empty string")] | None = None
    cost: Cost | None = None

    def __post_init__(self) -> None:
        validate(self)
