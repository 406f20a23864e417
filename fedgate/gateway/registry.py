"""The worker registry: which worker processes are connected, and what happens when one goes.

A worker announces itself with Ready; :meth:`Registry.register` records it
(by node id and by socket identity), registers its models in the catalog and
its node with health and the router, and answers Welcome — or Refuse when
another live process already holds the node id (R16). Heartbeats keep the
node alive in the health checker; a heartbeat from an unknown process is
answered with Reannounce. :meth:`Registry.lose` takes a node out of routing
and fails its in-flight attempts over (a crash, missed heartbeats, a lost
connection); :meth:`Registry.expire` is the heartbeat monitor's pass.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any

import zmq

from fedgate.errors import FederationError, NodeUnreachableError
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker
from fedgate.gateway.attempt import Attempt, Lost, LostCause
from fedgate.gateway.stats import GatewayCounters
from fedgate.gateway.trust import TrustState
from fedgate.routing.router import Router
from fedgate.transport import protocol as wire
from fedgate.transport.pump import Pump
from fedgate.types import ModelId, NodeId, RegionId

__all__ = ["Registry", "Worker"]

log = logging.getLogger("fedgate.gateway")


class Worker:
    """What the gateway knows of one connected worker process."""

    __slots__ = (
        "alive",
        "attempts",
        "continuable",
        "cost",
        "gpu",
        "identity",
        "key",
        "lost_at",
        "max_concurrency",
        "models",
        "node",
        "pid",
        "region",
        "resumable",
        "worker_id",
    )

    def __init__(
        self, identity: bytes, msg: wire.Ready, key: bytes | None = None, region: str = ""
    ) -> None:
        self.identity = identity
        self.key = key  # its CURVE public key (None on a plain link)
        self.node = NodeId(msg.node)
        self.region = RegionId(region or msg.region)
        self.worker_id = msg.worker_id
        self.models = [ModelId(m) for m in msg.models]
        self.gpu = msg.gpu
        self.cost = msg.cost
        self.max_concurrency = msg.max_concurrency
        self.resumable = msg.resumable
        self.continuable = msg.continuable  # continues a stream from its delivered text
        self.pid = msg.pid
        self.alive = True
        self.lost_at = 0.0  # health clock reading when it was lost
        self.attempts: dict[str, Attempt] = {}


class Registry:
    """The connected workers of one gateway, by node id and by socket identity.

    ``pump`` is set while the gateway runs (None otherwise): the registry
    answers workers through it.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        health: HealthChecker,
        router: Router,
        counters: GatewayCounters,
        gateway_id: str,
        dead_grace: float = 60.0,
        trust: TrustState | None = None,
    ) -> None:
        self.trust = trust
        self.catalog = catalog
        self.dead_grace = dead_grace
        self.health = health
        self.router = router
        self.counters = counters
        self.gateway_id = gateway_id
        self.pump: Pump | None = None
        self.by_identity: dict[bytes, Worker] = {}
        self.by_node: dict[NodeId, Worker] = {}
        # Whether a continuable worker ever registered: until one has, streams do
        # not keep their delivered text (gateway/call.py), which no node could use.
        self.continuable = False

    def alive(self) -> int:
        return sum(1 for w in self.by_node.values() if w.alive)

    def describe(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """The connected workers, for dashboards (``start``/``stop``: a slice of them)."""
        return [
            {
                "node": w.node,
                "region": w.region,
                "worker_id": w.worker_id,
                "pid": w.pid,
                "gpu": w.gpu,
                "cost": w.cost,
                "resumable": w.resumable,
                "alive": w.alive,
                "inflight": len(w.attempts),
                "models": list(w.models),
            }
            for w in itertools.islice(self.by_node.values(), start, stop)
        ]

    # ------------------------------------------------------------- messages
    def heartbeat(self, identity: bytes, msg: wire.Heartbeat) -> None:
        worker = self.by_identity.get(identity)
        if worker is None or worker.worker_id != msg.worker_id or not worker.alive:
            self._try_send(identity, wire.Reannounce())
            return
        self.health.heartbeat(worker.node)

    def disconnect(self, identity: bytes, msg: wire.Disconnect) -> None:
        worker = self.by_identity.get(identity)
        if worker is not None and worker.worker_id == msg.worker_id:
            # Draining: no new work; its in-flight requests still finish or fail explicitly.
            self.router.set_alive(worker.node, False)
            log.info(
                "worker %s (%s) disconnecting: %s", worker.node, worker.worker_id, msg.reason
            )

    def refuse(self, identity: bytes, msg: wire.Ready, code: str, why: str) -> None:
        """Answer Refuse (the worker exits with ``why``), log it and count it under ``code``."""
        self.counters.refused += 1
        self.counters.refused_by[code] += 1
        log.warning("refused worker %s announcing node %s: %s", msg.worker_id, msg.node, why)
        self._try_send(identity, wire.Refuse(msg.node, why))

    def register(self, identity: bytes, msg: wire.Ready, key: bytes | None = None) -> None:
        """Record a READY (``key``: the CURVE key of the link it came on), or refuse it."""
        node = NodeId(msg.node)
        region = ""
        trust = self.trust
        if trust is not None:
            refusal = trust.check(key, msg)
            if refusal is not None:
                self.refuse(identity, msg, *refusal)
                return
            # Routed as its grant's region: checked equal above, taken from the grant.
            region = trust.grants[trust.keys[key]].region  # type: ignore[index]
        mine = self.by_identity.get(identity)
        if mine is not None and mine.node != node:
            # One connection, one node: a worker process announces the node it serves
            # and nothing else, so a second node id on the same link is a process
            # minting nodes (40 000 fakes on one socket once took 84 % of real traffic).
            self.refuse(
                identity,
                msg,
                "one_node",
                f"this connection already serves node {mine.node!r}; a worker announces "
                f"one node (start one worker per node)",
            )
            return
        current = self.by_node.get(node)
        if (
            current is not None
            and current.worker_id != msg.worker_id
            and current.alive
            and self.health.is_alive(node)
            and self.connected(current)
        ):
            # R16: a second process claiming a live node id is refused, not merged.
            self.refuse(
                identity,
                msg,
                "live",
                f"node id {node!r} is live with another worker ({current.worker_id})",
            )
            return
        if current is not None and (
            current.worker_id != msg.worker_id or current.identity != identity
        ):
            self.lose(current, "replaced by a new worker process")
            self.by_identity.pop(current.identity, None)
        worker = Worker(identity, msg, key, region)
        if (
            current is not None
            and current.worker_id == msg.worker_id
            and current.identity == identity
        ):
            worker.attempts = current.attempts  # a re-announce keeps its in-flight work
        self.by_identity[identity] = worker
        self.by_node[node] = worker
        if worker.continuable:
            self.continuable = True
        stale_models = set(self.catalog.models_on(node)) - set(worker.models)
        for model in stale_models:
            self.catalog.deregister_sync(model, node)
        for model in worker.models:
            self.catalog.register_sync(model, node, worker.region, msg.capabilities)
        if current is not None and current.worker_id != msg.worker_id:
            # A new process: the old one's failure streak and latencies describe
            # another process, so its health starts afresh; the breaker keeps its
            # state and probes the node on its own schedule.
            self.health.deregister_node(node)
        self.health.register_node(node, expect_heartbeats=True)
        self.health.heartbeat(node)
        self.router.update_node(
            node,
            region=worker.region,
            gpu=worker.gpu,
            cost=worker.cost,
            max_concurrency=worker.max_concurrency,
        )
        self.router.set_alive(node, True)
        self._try_send(identity, wire.Welcome(node, self.gateway_id))
        log.info(
            "worker %s registered: node %s region %s models %s",
            msg.worker_id,
            node,
            worker.region,
            worker.models,
        )

    # --------------------------------------------------------------- losing
    def connected(self, worker: Worker, *, probe: bool = False) -> bool:
        """Whether the worker's connection still exists (ROUTER_MANDATORY tells at once).

        A process restarted right after a SIGKILL announces itself before its
        predecessor's heartbeats have expired; the old connection, though, is
        already gone, and refusing the new process would keep the node down.
        The message sent is a Reannounce, or with ``probe`` a Welcome (for a
        registered worker, which must not announce itself again).
        """
        pump = self.pump
        if pump is None:
            return False
        if probe:
            frame = wire.encode(wire.Welcome(worker.node, self.gateway_id))
        else:
            frame = wire.encode(wire.Reannounce())
        try:
            pump.send_now(frame, worker.identity)
        except NodeUnreachableError:
            return False
        except (FederationError, zmq.ZMQError):
            return True
        return True

    def check_connections(self) -> int:
        """Lose every live worker with work in flight whose connection is gone; how many.

        Called when the socket reports a dropped connection: a SIGKILLed
        worker's TCP connection closes at once, long before its heartbeats are
        missed, and its stranded requests should not wait for the heartbeats
        (R20). Each such worker is sent a Welcome (a no-op to a registered
        worker) with ``ROUTER_MANDATORY``, which fails for a peer whose
        connection is gone. Idle workers are left to the heartbeats: nothing
        of theirs is waiting, and a request routed to a dead one is refused
        by the socket at once and moves on.
        """
        lost = 0
        for worker in list(self.by_node.values()):
            if worker.alive and worker.attempts and not self.connected(worker, probe=True):
                self.lose(worker, "connection lost")
                lost += 1
        return lost

    def lose(self, worker: Worker, why: str) -> None:
        """A worker is gone: no new dispatch, and its in-flight attempts fail over."""
        if worker.alive:
            worker.alive = False
            worker.lost_at = self.health.clock()
            self.router.set_alive(worker.node, False)
            log.warning("node %s lost: %s", worker.node, why)
        for att in list(worker.attempts.values()):
            att.push(Lost(LostCause.CRASH, f"node {worker.node} lost: {why}"))

    def expire(self) -> None:
        """The heartbeat monitor's pass: lose every live worker whose heartbeats stopped."""
        self.health.expire()
        # Ask every live worker rather than use expire()'s list: whoever calls
        # expire() first gets that list (the router does, on each route), and a
        # dead node missed here would keep its in-flight attempts until deadline.
        retire_before = self.health.clock() - self.dead_grace
        for worker in list(self.by_node.values()):
            if worker.alive:
                if not self.health.is_alive(worker.node):
                    self.lose(worker, "missed heartbeats")
            elif worker.lost_at <= retire_before and not worker.attempts:
                self.retire(worker)

    def retire(self, worker: Worker) -> None:
        """Forget a node lost for longer than ``dead_grace``: catalog, health, the registry.

        Its models leave the catalog (and so the router's masks: it is no
        longer a candidate for anything), and it is no longer listed. A worker
        that comes back registers afresh.
        """
        node = worker.node
        if self.by_node.get(node) is worker:
            del self.by_node[node]
        if self.by_identity.get(worker.identity) is worker:
            del self.by_identity[worker.identity]
        self.catalog.deregister_node_sync(node)
        self.health.deregister_node(node)
        self.counters.retired += 1
        log.info("node %s retired: lost for more than %gs", node, self.dead_grace)

    def _try_send(self, identity: bytes, msg: wire.Message) -> None:
        pump = self.pump
        if pump is None:
            return
        with contextlib.suppress(FederationError, zmq.ZMQError):
            pump.send_now(wire.encode(msg), identity)
