"""Who may serve, ask and look: the gateway's CURVE key, the trusted keys, the grants.

A worker proves who it is with its CURVE key (the link's handshake, checked by
pyzmq's ZAP authenticator against the trusted directory); what it may do is
its key's grant, never its claim. A grant names the node ids the key may
announce, the one region they serve from, and bounds on what they may claim
(GPU, cost). A READY outside its grant is refused with a reason that names the
grant it lacks (:meth:`TrustState.check`).

Each node id is granted to one key only, so a node id belongs to a key: its
own key may restart its worker at once, another key never takes it.

Who may ask and look (SPEC §5, R31): ``clients`` is a directory of client
keys for the ingress — a client's tenant is its key's name, whatever its
request says — and ``operators`` one of dashboard keys for telemetry. Without
a directory that endpoint runs without CURVE, and then the gateway binds it
only on a loopback address unless ``--insecure`` (``fedgate gateway``).
``audit_log`` names the file of the CONFIDENTIAL and RESTRICTED dispatches
(:mod:`fedgate.gateway.audit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fedgate.transport import curve
from fedgate.transport import protocol as wire
from fedgate.validation import NON_EMPTY, Cost, NodeNames, NonEmpty, Switch, validate

__all__ = ["REFUSALS", "Trust", "TrustState", "WorkerGrant"]

# Why a READY was refused: the keys of the per-reason counts.
REFUSALS = ("no_key", "unknown_key", "node", "region", "gpu", "cost", "live")


@dataclass(frozen=True, slots=True)
class WorkerGrant:
    """What one worker key may announce.

    Parameters
    ----------
    nodes : sequence of str
        The node ids the key may use (each granted to this key only).
    region : str
        The one region its nodes serve from: the region they are routed as.
    gpu : bool
        Whether its nodes may announce a GPU.
    min_cost, max_cost : float
        The cost its nodes may announce: a low cost pulls traffic to a node,
        so the grant bounds it.
    """

    nodes: NodeNames
    region: Annotated[str, NON_EMPTY]
    gpu: Switch = False
    min_cost: Cost = 0.0
    max_cost: Cost = 1_000_000.0

    def __post_init__(self) -> None:
        validate(self)
        if self.min_cost > self.max_cost:
            raise ValueError(
                f"min_cost, max_cost: expected min_cost <= max_cost, "
                f"got {self.min_cost!r} > {self.max_cost!r}"
            )


@dataclass(frozen=True, slots=True)
class Trust:
    """The ``[trust]`` section: the gateway's key, the trusted worker keys, their grants.

    Parameters
    ----------
    key : str
        The gateway's CURVE secret key file (``fedgate keys generate``).
    workers : str
        The directory of trusted worker public keys (``NAME.key`` files).
    grants : mapping of str to WorkerGrant
        By key name (the file stem in ``workers``).
    clients : str, optional
        The directory of trusted client public keys (the ingress runs CURVE;
        a key's name is its client's tenant).
    operators : str, optional
        The directory of trusted operator public keys (telemetry runs CURVE:
        ``fedgate top --key``).
    audit_log : str, optional
        The file every CONFIDENTIAL or RESTRICTED dispatch is appended to, one
        JSON line each.
    """

    key: NonEmpty
    workers: NonEmpty
    grants: Mapping[str, WorkerGrant] = field(default_factory=dict)
    clients: NonEmpty | None = None
    operators: NonEmpty | None = None
    audit_log: NonEmpty | None = None

    def __post_init__(self) -> None:
        validate(self)
        owner: dict[str, str] = {}
        for name, grant in self.grants.items():
            if not isinstance(grant, WorkerGrant):
                raise TypeError(f"grants.{name}: expected a WorkerGrant, got {grant!r}")
            for node in grant.nodes:
                if node in owner:
                    raise ValueError(
                        f"grants.{name}.nodes: expected each node id granted to one key "
                        f"(a node id belongs to one key), got {node!r} granted to "
                        f"{owner[node]!r} too"
                    )
                owner[node] = name

    def load(self) -> TrustState:
        """Read the key files (``ValueError`` names a missing or bad one)."""
        pair = curve.load_pair(self.key)
        keys = curve.trusted_keys(self.workers)
        names = set(keys.values())
        for name in self.grants:
            if name not in names:
                raise ValueError(
                    f"trust.workers.{name}: no key file {name}.key in {self.workers!r}"
                )
        clients = curve.trusted_keys(self.clients) if self.clients is not None else None
        operators = curve.trusted_keys(self.operators) if self.operators is not None else None
        return TrustState(pair, keys, self.grants, clients, operators)


class TrustState:
    """The loaded keys and grants a running gateway checks READYs against.

    ``clients`` and ``operators``: the trusted keys of the ingress and of
    telemetry, each with its name (None: that endpoint runs without CURVE).
    """

    __slots__ = ("clients", "grants", "keys", "operators", "pair")

    def __init__(
        self,
        pair: curve.KeyPair,
        keys: dict[bytes, str],
        grants: Mapping[str, WorkerGrant],
        clients: dict[bytes, str] | None = None,
        operators: dict[bytes, str] | None = None,
    ) -> None:
        self.pair = pair
        self.keys = keys
        self.grants = grants
        self.clients = clients
        self.operators = operators

    def check(self, key: bytes | None, msg: wire.Ready) -> tuple[str, str] | None:
        """None when ``key`` may announce ``msg``, else (reason code, why in words)."""
        if key is None:
            return "no_key", "the link is not authenticated (no CURVE key)"
        name = self.keys.get(key)
        if name is None:
            return "unknown_key", f"key {curve.fingerprint(key)} is not trusted"
        grant = self.grants.get(name)
        if grant is None or msg.node not in grant.nodes:
            return "node", f"key {name!r} has no grant for node id {msg.node!r}"
        if msg.region != grant.region:
            return "region", (
                f"key {name!r} is granted region {grant.region!r}, "
                f"not {msg.region!r}"
            )
        if msg.gpu and not grant.gpu:
            return "gpu", f"key {name!r} has no grant to announce a GPU"
        if not grant.min_cost <= msg.cost <= grant.max_cost:
            return "cost", (
                f"key {name!r} is granted cost {grant.min_cost:g}-{grant.max_cost:g}, "
                f"not {msg.cost:g}"
            )
        return None
