"""Which models run where: the federation's model catalog.

The catalog maps a model to its deployments — (node, region, capabilities) —
and keeps two indexes so that the questions the router asks are dictionary
lookups: which nodes offer a capability, and which models a node serves.

The public methods are coroutines, as in the case study, so that a networked
catalog can implement the same interface. The in-memory catalog never awaits
inside them, which makes every change atomic with respect to the event loop;
a lock makes it atomic across threads too. The ``*_sync`` twins and the read
helpers (:meth:`ModelCatalog.nodes_for`, :meth:`ModelCatalog.region_of` …) are
plain calls for code that cannot await (a socket callback, the router).

Listeners (:meth:`ModelCatalog.subscribe`) hear about every change as a
:class:`CatalogEvent`; the router keeps its per-capability node masks from
them instead of rebuilding anything per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from fedgate.federation._listeners import add_listener
from fedgate.types import Capability, ModelId, NodeId, RegionId

__all__ = [
    "CatalogEvent",
    "CatalogListener",
    "Deployment",
    "ModelCatalog",
    "ModelMetadata",
]

_MAX_ID = 256


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what}: expected a str, got {value!r}")
    if not value or len(value) > _MAX_ID or not value.isprintable() or value != value.strip():
        raise ValueError(
            f"{what}: expected a non-empty printable id of at most {_MAX_ID} characters "
            f"without surrounding spaces, got {value!r}"
        )
    return value


def _check_capabilities(capabilities: object) -> tuple[Capability, ...]:
    # A bare string is iterable too; taking "transcribe" as eleven one-letter
    # capabilities would be a silent misregistration.
    if isinstance(capabilities, (str, bytes)) or not isinstance(capabilities, Iterable):
        raise TypeError(f"capabilities: expected a list of Capability, got {capabilities!r}")
    parsed: dict[Capability, None] = {}
    for cap in capabilities:
        parsed[Capability.parse(cap)] = None
    if not parsed:
        raise ValueError("capabilities: expected at least one capability, got none")
    return tuple(parsed)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model on one node."""

    node_id: NodeId
    region_id: RegionId
    capabilities: tuple[Capability, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What the catalog knows about one model.

    Attributes
    ----------
    model_id : ModelId
        The model.
    deployments : tuple of Deployment
        Where it runs, in registration order.
    capabilities : frozenset of Capability
        The union over its deployments.
    regions : tuple of RegionId
        Regions it runs in, in order of first deployment.
    """

    model_id: ModelId
    deployments: tuple[Deployment, ...]
    capabilities: frozenset[Capability]
    regions: tuple[RegionId, ...]

    @property
    def nodes(self) -> tuple[NodeId, ...]:
        """Nodes it runs on."""
        return tuple(d.node_id for d in self.deployments)


EventKind = Literal["registered", "updated", "deregistered"]


@dataclass(frozen=True, slots=True)
class CatalogEvent:
    """One change to the catalog.

    Attributes
    ----------
    kind : {"registered", "updated", "deregistered"}
        A new deployment, a deployment whose capabilities changed, or one removed.
    model_id, node_id, region_id
        The deployment.
    capabilities : tuple of Capability
        Its capabilities after the change (before it, for "deregistered").
    previous : tuple of Capability
        Its capabilities before the change (empty for "registered").
    """

    kind: EventKind
    model_id: ModelId
    node_id: NodeId
    region_id: RegionId
    capabilities: tuple[Capability, ...]
    previous: tuple[Capability, ...] = ()


CatalogListener = Callable[[CatalogEvent], None]


class ModelCatalog:
    """The in-memory model catalog.

    Registering the same model on the same node twice is idempotent (one
    deployment); registering it again with other capabilities replaces them.
    A node sits in one region: registering a node under another region while
    it still serves other models is refused (``ValueError``) — deregister it
    first; a node's only deployment may be re-registered in a new region.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # model -> node -> Deployment, both in registration order.
        self._models: dict[ModelId, dict[NodeId, Deployment]] = {}
        # node -> model -> None (ordered set), and node -> region.
        self._by_node: dict[NodeId, dict[ModelId, None]] = {}
        self._region: dict[NodeId, RegionId] = {}
        # capability -> node -> number of the node's models offering it.
        self._by_cap: dict[Capability, dict[NodeId, int]] = {}
        self._listeners: list[CatalogListener] = []
        self._version = 0

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: CatalogListener, *, replay: bool = False) -> Callable[[], None]:
        """Call ``listener(event)`` after every change, synchronously, in order.

        Parameters
        ----------
        listener : callable
            Receives each :class:`CatalogEvent`.
        replay : bool
            First send a "registered" event for every current deployment, in
            the same critical section as the subscription, so a listener that
            joins late misses nothing and sees nothing twice.

        Returns
        -------
        callable
            Call it to unsubscribe.
        """
        if not callable(listener):
            raise TypeError(f"listener: expected a callable, got {listener!r}")
        with self._lock:  # re-entrant: the replay and the subscription are one step
            if replay:
                for model, deployments in self._models.items():
                    for d in deployments.values():
                        listener(
                            CatalogEvent(
                                "registered", model, d.node_id, d.region_id, d.capabilities
                            )
                        )
            return add_listener(self._listeners, listener, self._lock)

    def _emit(self, event: CatalogEvent) -> None:
        self._version += 1
        for listener in tuple(self._listeners):
            listener(event)

    @property
    def version(self) -> int:
        """Bumped on every change."""
        return self._version

    # -------------------------------------------------------------- mutation

    def _index_caps(self, node: NodeId, caps: Iterable[Capability], delta: int) -> None:
        for cap in caps:
            nodes = self._by_cap.setdefault(cap, {})
            count = nodes.get(node, 0) + delta
            if count > 0:
                nodes[node] = count
            else:
                nodes.pop(node, None)
                if not nodes:
                    del self._by_cap[cap]

    def register_sync(
        self,
        model: ModelId,
        node: NodeId,
        region: RegionId,
        capabilities: Iterable[Capability | str],
    ) -> bool:
        """Plain-call :meth:`register`. Returns True when anything changed."""
        model = ModelId(_check_id(model, "model"))
        node = NodeId(_check_id(node, "node"))
        region = RegionId(_check_id(region, "region"))
        caps = _check_capabilities(capabilities)
        with self._lock:
            current_region = self._region.get(node)
            deployments = self._models.get(model)
            existing = deployments.get(node) if deployments is not None else None
            if current_region is not None and current_region != region:
                others = [m for m in self._by_node.get(node, {}) if m != model]
                if others:
                    raise ValueError(
                        f"region: node {node!r} serves {others[0]!r} in region "
                        f"{current_region!r}; expected that region, got {region!r} "
                        "(deregister the node to move it)"
                    )
                # The node's only deployment moves: drop it, then add it afresh.
                if existing is not None:
                    self._remove(model, node)
                    existing = None
            if existing is not None:
                if set(existing.capabilities) == set(caps):
                    return False
                self._index_caps(node, existing.capabilities, -1)
                self._index_caps(node, caps, +1)
                updated = Deployment(node, region, caps)
                self._models[model][node] = updated
                self._emit(
                    CatalogEvent("updated", model, node, region, caps, existing.capabilities)
                )
                return True
            self._models.setdefault(model, {})[node] = Deployment(node, region, caps)
            self._by_node.setdefault(node, {})[model] = None
            self._region[node] = region
            self._index_caps(node, caps, +1)
            self._emit(CatalogEvent("registered", model, node, region, caps))
            return True

    def _remove(self, model: ModelId, node: NodeId) -> Deployment | None:
        deployments = self._models.get(model)
        if deployments is None or node not in deployments:
            return None
        gone = deployments.pop(node)
        if not deployments:
            del self._models[model]
        models = self._by_node[node]
        del models[model]
        if not models:
            del self._by_node[node]
            del self._region[node]
        self._index_caps(node, gone.capabilities, -1)
        self._emit(
            CatalogEvent(
                "deregistered", model, node, gone.region_id, gone.capabilities, gone.capabilities
            )
        )
        return gone

    def deregister_sync(self, model: ModelId, node: NodeId) -> bool:
        """Plain-call :meth:`deregister`. Returns True when a deployment was removed."""
        _check_id(model, "model")
        _check_id(node, "node")
        with self._lock:
            return self._remove(model, node) is not None

    def deregister_node_sync(self, node: NodeId) -> list[ModelId]:
        """Plain-call :meth:`deregister_node`. Returns the models removed."""
        _check_id(node, "node")
        with self._lock:
            models = list(self._by_node.get(node, ()))
            for model in models:
                self._remove(model, node)
            return models

    async def register(
        self,
        model: ModelId,
        node: NodeId,
        region: RegionId,
        capabilities: Iterable[Capability | str],
    ) -> bool:
        """Register ``model`` on ``node`` in ``region`` with ``capabilities``.

        Parameters
        ----------
        model, node, region : str
            Non-empty printable ids.
        capabilities : iterable of Capability or str
            At least one; names are parsed (``"TRANSCRIBE"`` works).

        Returns
        -------
        bool
            True when the catalog changed (False for an exact repeat).

        Raises
        ------
        TypeError, ValueError
            A malformed id or capability (named), or a node registered under
            a second region.
        """
        return self.register_sync(model, node, region, capabilities)

    async def deregister(self, model: ModelId, node: NodeId) -> bool:
        """Remove ``model`` from ``node`` (every index). False if it was not there."""
        return self.deregister_sync(model, node)

    async def deregister_node(self, node: NodeId) -> list[ModelId]:
        """Remove every model of ``node``; returns the models removed."""
        return self.deregister_node_sync(node)

    async def find_by_capability(
        self, capability: Capability | str
    ) -> list[tuple[NodeId, RegionId]]:
        """Every ``(node, region)`` offering ``capability``, each node once."""
        return self.nodes_for(capability)

    async def list_all(self) -> list[ModelId]:
        """Every registered model id, in registration order."""
        with self._lock:
            return list(self._models)

    async def get_metadata(self, model: ModelId) -> ModelMetadata:
        """What the catalog knows about ``model``.

        Raises
        ------
        KeyError
            The model is not registered.
        """
        return self.metadata(model)

    # ------------------------------------------------------------ sync reads

    def nodes_for(
        self, capability: Capability | str, model: ModelId | None = None
    ) -> list[tuple[NodeId, RegionId]]:
        """``(node, region)`` pairs offering ``capability`` (of ``model`` when given)."""
        cap = Capability.parse(capability)
        with self._lock:
            if model is None:
                return [(n, self._region[n]) for n in self._by_cap.get(cap, ())]
            deployments = self._models.get(model, {})
            return [(n, d.region_id) for n, d in deployments.items() if cap in d.capabilities]

    def metadata(self, model: ModelId) -> ModelMetadata:
        """Plain-call :meth:`get_metadata`."""
        with self._lock:
            deployments = self._models.get(model)
            if deployments is None:
                raise KeyError(f"model: expected a registered model id, got {model!r}")
            deps = tuple(deployments.values())
        caps = frozenset(c for d in deps for c in d.capabilities)
        regions = tuple(dict.fromkeys(d.region_id for d in deps))
        return ModelMetadata(ModelId(model), deps, caps, regions)

    def deployments(self) -> list[tuple[ModelId, Deployment]]:
        """Every ``(model, deployment)``, for a listener that joins late."""
        with self._lock:
            return [(m, d) for m, nodes in self._models.items() for d in nodes.values()]

    def region_of(self, node: NodeId) -> RegionId | None:
        """The node's region, or None when it serves nothing."""
        return self._region.get(node)

    def models_on(self, node: NodeId) -> list[ModelId]:
        """The models ``node`` serves."""
        with self._lock:
            return list(self._by_node.get(node, ()))

    def capabilities_of(self, node: NodeId) -> frozenset[Capability]:
        """Every capability ``node`` offers, over all its models."""
        with self._lock:
            return frozenset(
                c for m in self._by_node.get(node, ()) for c in self._models[m][node].capabilities
            )

    def capabilities(self) -> list[Capability]:
        """Every capability some node offers."""
        with self._lock:
            return list(self._by_cap)

    def has_capability(self, capability: Capability | str) -> bool:
        """Whether any node offers ``capability``."""
        return Capability.parse(capability) in self._by_cap

    def has_model(self, model: ModelId) -> bool:
        """Whether ``model`` is registered anywhere."""
        return model in self._models

    def nodes(self) -> list[NodeId]:
        """Every node serving at least one model."""
        with self._lock:
            return list(self._by_node)

    def __len__(self) -> int:
        """Number of deployments."""
        with self._lock:
            return sum(len(d) for d in self._models.values())

    def __contains__(self, model: object) -> bool:
        return model in self._models

    def __repr__(self) -> str:
        return f"ModelCatalog(models={len(self._models)}, nodes={len(self._by_node)})"
