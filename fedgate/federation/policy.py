"""Routing policies and their weighted combination (SPEC §2 Routing policies).

Each policy is a small frozen dataclass with a ``weight``; a
:class:`CompositePolicy` combines their scores as a weighted mean. Scoring
itself runs in one Numba kernel (:mod:`fedgate.routing.scoring`) over the router's
node arrays: a composite only produces the kernel's weight vector
(:meth:`CompositePolicy.weights`) and its per-policy parameters.

======================  =====================================================
policy                  component score in [0, 1]
======================  =====================================================
:class:`HealthPolicy`   HEALTHY 1.0, DEGRADED 0.5, UNKNOWN 0.3, UNHEALTHY 0.0
:class:`LatencyPolicy`  ``1 / (1 + mean(p50, p99) / latency_scale)``
:class:`PrivacyPolicy`  1.0 (every eligible node is cleared)
:class:`LocalityPolicy` 1.0 in the origin region, 0.0 elsewhere, 0.5 without one
:class:`CostPolicy`     cheapness blended with speed by ``qos.cost_tolerance``
:class:`GpuPolicy`      with ``qos.prefer_gpu``: GPU 1.0, CPU 0.0; else 0.5
======================  =====================================================

Hard constraints do not depend on the composite: a dead node (missed
heartbeats, lost connection), an open breaker, a node over
``qos.max_latency`` and — above all — a region not cleared for
``qos.privacy`` are ineligible whatever the weights, even with no
:class:`PrivacyPolicy` or one of weight 0 (sovereignty fails closed). A
policy's weight only shapes the score among eligible nodes.

``enterprise_default()`` is the case study's table (Health 2.0, Latency,
Privacy, Locality and Cost 1.0). It has no :class:`GpuPolicy`, so
``qos.prefer_gpu`` does not move the score until one is added, e.g.
``CompositePolicy.enterprise_default().with_policy(GpuPolicy(weight=0.5))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, TypeAlias

import numpy as np
import numpy.typing as npt

from fedgate._core.codes import (
    N_WEIGHTS,
    W_COST,
    W_GPU,
    W_HEALTH,
    W_LATENCY,
    W_LOCALITY,
    W_PRIVACY,
)
from fedgate.types import RegionId
from fedgate.validation import DAY, IDENT, MAX_COST, MAX_WEIGHT, Number, seconds, validate

__all__ = [
    "CompositePolicy",
    "CostPolicy",
    "GpuPolicy",
    "HealthPolicy",
    "LatencyPolicy",
    "LocalityPolicy",
    "Policy",
    "PrivacyPolicy",
]

# Slotted dataclasses turn field defaults into descriptors on the class, so the
# defaults used when a policy is absent are spelled out here.
_DEFAULT_LATENCY_SCALE = 0.25
_DEFAULT_COST_SCALE = 1.0


# A weight, a latency scale (seconds, or a timedelta) and a cost scale.
_Weight: TypeAlias = Annotated[float, Number(ge=0.0, le=MAX_WEIGHT)]
_LatencyScale: TypeAlias = Annotated[float, seconds(gt=0.0, le=DAY)]
_CostScale: TypeAlias = Annotated[float, Number(gt=0.0, le=MAX_COST)]


@dataclass(frozen=True, slots=True)
class Policy:
    """Base of every routing policy: a named component with a weight.

    Parameters
    ----------
    weight : float
        In [0, 1e6] (weights are relative); NaN, infinities and negatives
        are rejected naming the field. Every field's bounds are declared by
        its annotation (:mod:`fedgate.validation`).
    """

    weight: _Weight = 1.0

    name: ClassVar[str] = ""
    index: ClassVar[int] = -1

    def __post_init__(self) -> None:
        if type(self) is Policy:
            raise TypeError("Policy is abstract: use HealthPolicy, LatencyPolicy, …")
        validate(self)

    def to_mapping(self) -> dict[str, Any]:
        """The policy's fields as plain values (for configuration files)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class HealthPolicy(Policy):
    """Prefer healthy nodes: HEALTHY 1.0, DEGRADED 0.5, UNKNOWN 0.3, UNHEALTHY 0.0.

    Health scores, it does not exclude (SPEC §2 Health): a node UNHEALTHY by
    failures stays eligible until its circuit breaker opens, and a node that
    missed its heartbeats is excluded as not alive.
    """

    name: ClassVar[str] = "health"
    index: ClassVar[int] = W_HEALTH


@dataclass(frozen=True, slots=True)
class LatencyPolicy(Policy):
    """Prefer fast nodes: ``1 / (1 + mean(p50, p99) / latency_scale)``.

    Parameters
    ----------
    weight : float
        As :class:`Policy`.
    latency_scale : float or timedelta
        The latency (seconds) that scores 0.5; finite and > 0.
    """

    latency_scale: _LatencyScale = 0.25  # keep equal to _DEFAULT_LATENCY_SCALE

    name: ClassVar[str] = "latency"
    index: ClassVar[int] = W_LATENCY


@dataclass(frozen=True, slots=True)
class PrivacyPolicy(Policy):
    """Data sovereignty. The constraint is always enforced; the weight only scores."""

    name: ClassVar[str] = "privacy"
    index: ClassVar[int] = W_PRIVACY


@dataclass(frozen=True, slots=True)
class LocalityPolicy(Policy):
    """Prefer nodes in the request's origin region.

    Parameters
    ----------
    weight : float
        As :class:`Policy`.
    origin : RegionId, optional
        A fixed origin; a request's own ``origin`` hint takes precedence, and
        the router's ``origin`` setting applies when neither is given.
    """

    origin: Annotated[RegionId, IDENT] | None = None

    name: ClassVar[str] = "locality"
    index: ClassVar[int] = W_LOCALITY


@dataclass(frozen=True, slots=True)
class CostPolicy(Policy):
    """Balance price against speed by the request's ``qos.cost_tolerance``.

    Parameters
    ----------
    weight : float
        As :class:`Policy`.
    cost_scale : float
        The price that scores 0.5 on cheapness; finite and > 0.
    """

    cost_scale: _CostScale = 1.0  # keep equal to _DEFAULT_COST_SCALE

    name: ClassVar[str] = "cost"
    index: ClassVar[int] = W_COST


@dataclass(frozen=True, slots=True)
class GpuPolicy(Policy):
    """Favour GPU nodes when the request's ``qos.prefer_gpu`` is set."""

    name: ClassVar[str] = "gpu"
    index: ClassVar[int] = W_GPU


_KINDS: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (HealthPolicy, LatencyPolicy, PrivacyPolicy, LocalityPolicy, CostPolicy, GpuPolicy)
}


class CompositePolicy:
    """An immutable, ordered set of policies combined as a weighted mean.

    ``CompositePolicy()`` is empty; :meth:`with_policy` returns a new
    composite with one more policy (a policy of a kind already present
    replaces it in place). A composite whose weights sum to 0 cannot route:
    :meth:`weights` and :meth:`validate` reject it.

    Parameters
    ----------
    policies : iterable of Policy
        Initial policies, in order (later ones of the same kind replace
        earlier ones).
    """

    __slots__ = ("_policies",)

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        ordered: dict[type[Policy], Policy] = {}
        for p in policies:
            if not isinstance(p, Policy) or type(p) is Policy:
                raise TypeError(f"policy: expected a Policy such as HealthPolicy, got {p!r}")
            ordered[type(p)] = p
        self._policies: tuple[Policy, ...] = tuple(ordered.values())

    @classmethod
    def enterprise_default(cls) -> CompositePolicy:
        """The case study's table: Health 2.0, Latency, Privacy, Locality, Cost 1.0."""
        return cls(
            (
                HealthPolicy(weight=2.0),
                LatencyPolicy(weight=1.0),
                PrivacyPolicy(weight=1.0),
                LocalityPolicy(weight=1.0),
                CostPolicy(weight=1.0),
            )
        )

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The policies, in the order they were added."""
        return self._policies

    def with_policy(self, policy: Policy) -> CompositePolicy:
        """A new composite with ``policy`` added (replacing one of the same kind).

        Parameters
        ----------
        policy : Policy
            The policy to add.

        Returns
        -------
        CompositePolicy
            A new composite; this one is unchanged.
        """
        if not isinstance(policy, Policy) or type(policy) is Policy:
            raise TypeError(f"policy: expected a Policy such as HealthPolicy, got {policy!r}")
        if any(type(p) is type(policy) for p in self._policies):
            return CompositePolicy(policy if type(p) is type(policy) else p for p in self._policies)
        return CompositePolicy((*self._policies, policy))

    def without(self, kind: type[Policy] | str) -> CompositePolicy:
        """A new composite without the policy of ``kind`` (a class or its name)."""
        cls = _KINDS.get(kind) if isinstance(kind, str) else kind
        if cls is None or cls not in _KINDS.values():
            raise ValueError(f"policy kind: expected one of {', '.join(_KINDS)}, got {kind!r}")
        return CompositePolicy(p for p in self._policies if type(p) is not cls)

    def get(self, kind: type[Policy] | str) -> Policy | None:
        """The policy of ``kind`` (a class or its name), or None."""
        for p in self._policies:
            if p.name == kind or type(p) is kind:
                return p
        return None

    @property
    def total_weight(self) -> float:
        """Sum of the weights."""
        return math.fsum(p.weight for p in self._policies)

    def validate(self) -> None:
        """Raise ``ValueError`` unless this composite can score (some weight > 0)."""
        if not self.total_weight > 0.0:
            names = ", ".join(f"{p.name}={p.weight}" for p in self._policies) or "no policies"
            raise ValueError(
                f"CompositePolicy: expected at least one policy with weight > 0, got {names}"
            )

    def weights(self) -> npt.NDArray[np.float64]:
        """The kernel's weight vector (float64[6], ``fedgate._core.codes.W_*`` order).

        A component without a policy has weight 0.

        Raises
        ------
        ValueError
            When every weight is 0.
        """
        self.validate()
        w = np.zeros(N_WEIGHTS, dtype=np.float64)
        for p in self._policies:
            w[p.index] = p.weight
        return w

    @property
    def latency_scale(self) -> float:
        """The latency policy's scale (its default when absent)."""
        p = self.get(LatencyPolicy)
        return p.latency_scale if isinstance(p, LatencyPolicy) else _DEFAULT_LATENCY_SCALE

    @property
    def cost_scale(self) -> float:
        """The cost policy's scale (its default when absent)."""
        p = self.get(CostPolicy)
        return p.cost_scale if isinstance(p, CostPolicy) else _DEFAULT_COST_SCALE

    @property
    def origin(self) -> RegionId | None:
        """The locality policy's fixed origin, if any."""
        p = self.get(LocalityPolicy)
        return p.origin if isinstance(p, LocalityPolicy) else None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> CompositePolicy:
        """Build a composite from configuration (a TOML table, a dict).

        ``{"health": {"weight": 2.0}, "latency": {"weight": 1, "latency_scale": 0.2},
        "cost": 1.0}`` — each key a policy name, each value its fields or just
        its weight. Order is kept.

        Raises
        ------
        ValueError
            An unknown policy or field (named), a bad value (the field named,
            e.g. ``latency.weight``), or all weights 0.
        TypeError
            A value that is neither a number nor a table.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(
                f"policies: expected a mapping of policy name to settings, got {mapping!r}"
            )
        built: list[Policy] = []
        for key, value in mapping.items():
            kind = _KINDS.get(key) if isinstance(key, str) else None
            if kind is None:
                raise ValueError(
                    f"policies: unknown policy {key!r}, expected one of {', '.join(_KINDS)}"
                )
            if isinstance(value, Mapping):
                allowed = {f.name for f in fields(kind)}
                for field_name in value:
                    if field_name not in allowed:
                        raise ValueError(
                            f"policies.{key}: unknown field {field_name!r}, "
                            f"expected one of {', '.join(sorted(allowed))}"
                        )
                kwargs = dict(value)
            else:
                kwargs = {"weight": value}
            try:
                built.append(kind(**kwargs))
            except (TypeError, ValueError) as exc:
                wrapped = TypeError if isinstance(exc, TypeError) else ValueError
                raise wrapped(f"policies.{key}: {exc}") from None
        composite = cls(built)
        composite.validate()
        return composite

    def to_mapping(self) -> dict[str, dict[str, Any]]:
        """The inverse of :meth:`from_mapping` (fields of each policy, in order)."""
        out: dict[str, dict[str, Any]] = {}
        for p in self._policies:
            fields_ = p.to_mapping()
            if fields_.get("origin", "") is None:
                del fields_["origin"]
            out[p.name] = fields_
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompositePolicy):
            return NotImplemented
        return self._policies == other._policies

    def __hash__(self) -> int:
        return hash(self._policies)

    def __iter__(self) -> Any:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self._policies)
        return f"CompositePolicy([{inner}])"
