"""Attempts: one request on one worker, its inbox, and the book of all of them.

An :class:`Attempt` is what a call waits on: the socket reader pushes the
worker's frames into its inbox, and the gateway pushes a :class:`Lost` event
when it fails the attempt itself (deadline, overflow, a lost node, a send
that failed, shutdown). :class:`LostCause` says, once, what each such cause
means for the node and the request.

:class:`Attempts` opens and closes attempts: it encodes the REQUEST and hands
it to the socket pump (batched per loop iteration), registers the attempt
for the reader's fencing, watches its deadline (one FIFO behind one timer),
sends CANCEL when a caller leaves, and grants each released node slot to
the calls waiting for one, in weighted fair order across tenants (its
:class:`~fedgate.gateway.tenants.FairQueue`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
from typing import TYPE_CHECKING, Any

import zmq

from fedgate.errors import BackpressureError, FederationError, NodeUnreachableError
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.stats import GatewayCounters
from fedgate.gateway.tenants import FairQueue, Ticket
from fedgate.routing.router import Router
from fedgate.transport import protocol as wire
from fedgate.transport.pump import Pump

if TYPE_CHECKING:
    from fedgate.gateway.call import Call
    from fedgate.gateway.registry import Registry, Worker

__all__ = ["LAGGING", "OVERFLOW", "TIMEOUT", "Attempt", "Attempts", "Lost", "LostCause"]

log = logging.getLogger("fedgate.gateway")


class LostCause(enum.Enum):
    """Why the gateway failed an attempt itself, without a frame from the node.

    Each cause says whether it counts against the node (its health and
    breaker), whether another node may still serve the request, and whether
    the request was *stranded*: its node is gone (dead, disconnected,
    replaced, or it refused the send), so it never got an answer, good or
    bad. A stranded request moves to another node without being charged to
    the retry budget (see :mod:`fedgate.gateway.call`); the crash still
    counts against the node, as SPEC §2 says crashes do.
    """

    #: The request's deadline passed on the node: it took longer than allowed.
    DEADLINE = ("deadline", True, False, False)
    #: The caller reads the stream too slowly: the reader's doing.
    OVERFLOW = ("overflow", False, False, False)
    #: The deadline passed while frames the node sent waited for the caller to
    #: read them: the reader's slowness, not the node's.
    LAGGING = ("deadline", False, False, False)
    #: The send queue to the node is full: not the node's fault, another may take it.
    BACKPRESSURE = ("backpressure", False, True, False)
    #: The gateway is stopping.
    SHUTDOWN = ("shutdown", False, False, False)
    #: The node's process is gone (missed heartbeats, its connection lost, replaced).
    CRASH = (wire.ERR_CRASH, True, True, True)
    #: The node produced no frame for ``stall_timeout``.
    STALL = (wire.ERR_STALL, True, True, False)
    #: The socket refused the REQUEST for another reason (an unexpected ZMQError).
    SEND_FAILED = ("send_failed", True, True, False)

    def __init__(self, code: str, node_caused: bool, retryable: bool, stranded: bool) -> None:
        self.code = code
        self.node_caused = node_caused
        self.retryable = retryable
        self.stranded = stranded


class Lost:
    """An inbox event: the gateway failed the attempt (``cause``), as ``message`` tells."""

    __slots__ = ("cause", "message")

    def __init__(self, cause: LostCause, message: str) -> None:
        self.cause = cause
        self.message = message


# Shared events: a deadline or an overflow allocates nothing.
TIMEOUT = Lost(LostCause.DEADLINE, "deadline")
LAGGING = Lost(LostCause.LAGGING, "deadline while the reader lagged")
OVERFLOW = Lost(LostCause.OVERFLOW, "overflow")


def _deadline(att: Attempt) -> None:
    """The attempt's deadline passed: the node's fault unless its frames wait unread."""
    att.push(LAGGING if att.buffered else TIMEOUT)


class Attempt:
    """One attempt of one request on one worker: its inbox of frames and its waiter."""

    __slots__ = (
        "buffered",
        "buffered_bytes",
        "cancelled",
        "closed",
        "continuing",
        "deadline",
        "inbox",
        "last_frame",
        "number",
        "rid",
        "sent",
        "sizes",
        "started",
        "timer",
        "waiter",
        "worker",
    )

    def __init__(self, rid: str, number: int, worker: Worker) -> None:
        self.rid = rid
        self.number = number
        self.worker = worker
        self.inbox: collections.deque[Any] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffered = 0  # tokens received, not yet read by the caller
        self.buffered_bytes = 0  # their frames' bytes (sizes: one per Partial, in order)
        self.sizes: collections.deque[int] = collections.deque()
        self.last_frame = 0.0
        self.started = 0.0
        self.deadline = 0.0
        self.closed = False
        self.cancelled = False  # a CANCEL went to the worker
        self.sent = False  # its REQUEST has left (set by the pump)
        self.continuing = False  # its REQUEST carried the delivered text (a continuation)

    def push(self, event: Any) -> None:
        self.inbox.append(event)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, loop: asyncio.AbstractEventLoop) -> Any:
        inbox = self.inbox
        while not inbox:
            self.waiter = waiter = loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        event = inbox.popleft()
        if type(event) is wire.Partial:
            self.buffered -= len(event.tokens)
            self.buffered_bytes -= self.sizes.popleft()
        return event


class Attempts:
    """The open attempts of one gateway: opening, closing, deadlines, waiting for capacity.

    ``pump`` and ``loop`` are set while the gateway runs (None otherwise).
    """

    __slots__ = (
        "_deadline_at",
        "_deadline_timer",
        "_deadlines",
        "by_rid",
        "config",
        "counters",
        "fair",
        "loop",
        "pump",
        "registry",
        "router",
    )

    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        registry: Registry,
        counters: GatewayCounters,
        fair: FairQueue | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.registry = registry
        self.counters = counters
        self.pump: Pump | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.by_rid: dict[str, Attempt] = {}
        # Open attempts in deadline order (see _watch_deadline).
        self._deadlines: collections.deque[Attempt] = collections.deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf  # when _deadline_timer fires
        # Calls waiting for a node slot, by tenant; a released slot is granted here.
        self.fair = fair if fair is not None else FairQueue(config.max_queued)

    def stop(self) -> None:
        """The gateway stops: fail every open attempt, forget the deadlines."""
        for att in list(self.by_rid.values()):
            att.push(Lost(LostCause.SHUTDOWN, "gateway stopping"))

    def clear(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()

    def open(self, call: Call, worker: Worker, number: int) -> Attempt:
        """Register one attempt (fenced by attempt number) and send its REQUEST."""
        pump = self.pump
        if pump is None:
            raise NodeUnreachableError("gateway is not running")
        att = Attempt(call.rid, number, worker)
        loop = self.loop
        assert loop is not None
        now = loop.time()
        remaining = call.deadline - now
        req = call.request
        delivered = call.delivered_for(worker) if call.next_index else b""
        frame = wire.encode(
            wire.Request(
                call.rid,
                number,
                req.request_id,
                req.tenant_id,
                str(req.capability),
                req.model,
                req.input,
                remaining,
                call.next_index,
                call.stream,
                delivered,
            )
        )
        att.continuing = bool(delivered)
        att.started = att.last_frame = now
        att.deadline = call.deadline
        # The REQUEST first, the bookkeeping after: no reply is read before this
        # task yields, and the bookkeeping then overlaps the round trip instead
        # of delaying it. A failed send reaches the attempt through its inbox,
        # as a lost node does, once it is registered.
        unsent = pump.send_to(worker.identity, frame, att)
        self._watch_deadline(att)
        self.by_rid[call.rid] = att
        worker.attempts[call.rid] = att
        self.router.acquire(worker.node)
        self.counters.per_node[worker.node].requests += 1
        if unsent is not None:
            self.unsent(att, unsent)
        return att

    def close(self, att: Attempt, *, cancel: bool) -> None:
        """Forget an attempt; later frames for it are stale. Optionally tell the worker to stop.

        Idempotent: an attempt the node already answered is closed on its
        answer, and again by its call.
        """
        if att.closed:
            return
        if self.by_rid.get(att.rid) is att:
            del self.by_rid[att.rid]
        worker = att.worker
        if worker.attempts.pop(att.rid, None) is not None:
            self.router.release(worker.node)
            self.fair.grant()
        att.closed = True  # the deadline watch and the pump skip it from now on
        if att.timer is not None:
            att.timer.cancel()
            att.timer = None
        if cancel:
            self.cancel(att)

    def abandon(self, att: Attempt, *, cancel: bool) -> None:
        """The call is done with ``att``: close it, and count what it never read.

        Frames that arrived but were never handed on (the call moved on first: a
        deadline, a cancel, a failure) are an abandoned attempt's frames too:
        dropped and counted as stale, never vanished.
        """
        inbox = att.inbox
        if inbox:
            self.counters.stale += sum(1 for event in inbox if not isinstance(event, Lost))
            inbox.clear()
        self.close(att, cancel=cancel)

    def cancel(self, att: Attempt) -> None:
        """Tell the worker to stop ``att`` (once); its slot comes back with its answer or close."""
        # A REQUEST still held is simply never sent: there is nothing to cancel.
        pump = self.pump
        worker = att.worker
        if att.cancelled or not att.sent or not worker.alive or pump is None:
            return
        att.cancelled = True
        # Now, not held: its REQUEST has left, so order holds, and the
        # worker should stop as soon as possible.
        with contextlib.suppress(FederationError, zmq.ZMQError):
            pump.send_now(wire.encode(wire.Cancel(att.rid, att.number)), worker.identity)
            self.counters.cancels_sent += 1

    def unsent(self, att: Attempt, exc: Exception) -> None:
        """A REQUEST could not be handed to libzmq: fail its attempt (the pump's ``on_unsent``)."""
        worker = att.worker
        if isinstance(exc, BackpressureError):
            att.push(
                Lost(
                    LostCause.BACKPRESSURE,
                    f"send queue to worker {worker.node} is full ({self.config.send_hwm} frames)",
                )
            )
        elif isinstance(exc, NodeUnreachableError):
            self.registry.lose(worker, "not connected")  # fails this attempt too, and fails it over
        else:
            pump = self.pump
            stopping = (
                pump is None
                or pump.closed
                or (isinstance(exc, zmq.ZMQError) and exc.errno in (zmq.ETERM, zmq.ENOTSOCK))
            )
            if stopping:
                att.push(Lost(LostCause.SHUTDOWN, f"cannot send to node {worker.node}: {exc}"))
            else:
                log.error("cannot send to worker %s: %s", worker.node, exc)
                att.push(Lost(LostCause.SEND_FAILED, f"cannot send to node {worker.node}: {exc}"))

    def check_stalls(self, now: float, stall: float) -> None:
        """Fail the attempts that received no frame for ``stall`` seconds."""
        for att in list(self.by_rid.values()):
            if now - att.last_frame > stall:
                att.last_frame = now
                att.push(Lost(LostCause.STALL, f"no frame for {stall:g}s"))

    # -------------------------------------------------------------- deadlines
    def _watch_deadline(self, att: Attempt) -> None:
        """Fail ``att`` with a timeout at its deadline, unless it is closed first.

        Deadlines mostly arrive in order (one request_timeout for all), so the
        open attempts wait in one FIFO behind a single loop timer: no timer
        handle per request, and no heap of cancelled ones. An attempt whose
        deadline is earlier than the newest watched one gets a timer of its own.
        """
        loop = self.loop
        assert loop is not None
        watched = self._deadlines
        while watched and watched[0].closed:
            watched.popleft()
        if watched and att.deadline < watched[-1].deadline:
            att.timer = loop.call_at(att.deadline, _deadline, att)
            return
        if len(watched) > 64 and len(watched) > 2 * len(self.by_rid):
            # Closed attempts stuck behind a long-lived one at the head: bounded
            # memory, at most twice the attempts in flight.
            watched = self._deadlines = collections.deque(a for a in watched if not a.closed)
        watched.append(att)
        # The head holds the earliest deadline; the timer may still be set for a
        # later one (its attempts closed and were pruned): bring it forward.
        head = watched[0].deadline
        timer = self._deadline_timer
        if timer is None or head < self._deadline_at:
            if timer is not None:
                timer.cancel()
            self._deadline_at = head
            self._deadline_timer = loop.call_at(head, self._expire_deadlines)

    def _expire_deadlines(self) -> None:
        loop = self.loop
        assert loop is not None
        self._deadline_timer = None
        watched = self._deadlines
        # The loop may run a timer up to its clock resolution early.
        now = loop.time() + 1e-6
        while watched:
            att = watched[0]
            if att.closed:
                watched.popleft()
            elif att.deadline <= now:
                watched.popleft()
                _deadline(att)
            else:
                self._deadline_at = att.deadline
                self._deadline_timer = loop.call_at(att.deadline, self._expire_deadlines)
                return

    # --------------------------------------------------------------- capacity
    async def wait_for_capacity(self, ticket: Ticket, deadline: float) -> bool:
        """Queue until a node slot is granted or a re-check is due (True), or the
        deadline / queue bound hits (False). Slots are granted across tenants in
        weighted fair order (:class:`~fedgate.gateway.tenants.FairQueue`)."""
        loop = self.loop
        assert loop is not None
        return await self.fair.wait(ticket, loop, deadline)
