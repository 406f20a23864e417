"""One request's attempt loop: route, admit, send, read the answer, fail over, resume.

A :class:`Call` is made per ``infer`` / ``infer_stream`` and talks to a few
collaborators, gathered once per gateway in a :class:`CallEnv`: the router
(with the health checker and breaker it routes by), the worker registry, the
attempt book (which sends through the socket pump) and the counters. See
:mod:`fedgate.gateway.gateway` for the whole request path.

Failover is not a retry storm (SPEC §2 Gateway, R10 and R20)
-------------------------------------------------------------
A failed attempt is one of two kinds, and they are treated differently:

* **Stranded** — the node never answered because it is gone: its process
  died, its connection was lost, it was replaced, or the socket refused the
  REQUEST because the node is no longer connected
  (:attr:`LostCause.CRASH <fedgate.gateway.attempt.LostCause>`). The request
  did nothing wrong and nothing about it says the fleet is failing; it
  *moves*: to the next node at once (no backoff: the dead node will not get
  better by waiting), still bounded by ``max_retries`` and its deadline, but
  **not charged to the retry budget**. The crash still counts against the
  node (its health and breaker: SPEC §2 counts crashes), and the registry
  has already taken it out of routing (:meth:`Registry.lose
  <fedgate.gateway.registry.Registry.lose>`). A moved request that finds
  every survivor full queues for a slot inside its deadline
  (:meth:`Attempts.wait_for_capacity
  <fedgate.gateway.attempt.Attempts.wait_for_capacity>`), as any request does.
  This cannot become a storm: a death strands at most what was in flight on
  that node, each stranded request is re-sent once per death, and only to a
  node it has not tried.
* **Answered badly** — the node answered with an error, stalled, overran
  the deadline, or the send failed for an unexpected reason. These are what
  a fleet failing as a whole produces, so a retry is **charged**: a request
  holds one budget slot from its first charged retry until it ends, and at
  most ``max(retry_budget_min, retry_budget_ratio × active)`` requests hold
  one at once. A request that finds the budget spent **waits for room**
  (a slot freed by a request that ends, or the budget grown with the load)
  inside its deadline, instead of failing at once; the deadline, not the
  budget, decides when it gives up (:class:`DeadlineExceededError` naming
  the last failure). The budget still bounds how many retries run at once,
  so a failing fleet sees no more than that many extra attempts in flight,
  and the breakers and health take the failing nodes out of routing in the
  meantime (a waiting request then fails as soon as no node is left).

A busy node is left alone for a while (SPEC §2 Gateway, R24)
-------------------------------------------------------------
A worker's ``overloaded`` error cools the node down: no request is sent to it
until its ``Retry-After``, or a jittered backoff, has passed
(:mod:`fedgate.gateway.cooldown` has the rules). A request that finds every
eligible node cooling waits for the first to cool, inside its deadline.

A stream continues from what it delivered (SPEC §2 Gateway, R24)
----------------------------------------------------------------
Past its first token a stream may only move to a node that cannot repeat
or skip what the caller already has. A *resumable* node replays the
generation exactly from ``resume_from``. A *continuable* node (its Ready
says so: the ``openai`` backend, whose upstream continues an assistant
message) cannot, but continues the text: its REQUEST carries the bytes of
the tokens delivered so far (``Request.delivered``), and its tokens are
numbered from ``resume_from`` like a resumed node's, so fencing by attempt
and trimming by index are the same for both. Any other node is left out.

So the call keeps each token it hands on while the stream lasts (once any
continuable worker has registered: until then nobody could use them), within
the stream's own bounds: at most ``stream_buffer`` tokens and
``stream_buffer_bytes`` bytes, and no more than a REQUEST frame holds
beside the input (``max_frame_bytes``). Past the bound it stops keeping
them, continuable nodes are left out, and an interruption ends the stream
with :class:`StreamInterruptedError` naming the cut and the bound.

A continuation the node refuses (``cannot_continue``, or ``bad_input`` on a
continuation: the input was good, another node streamed from it, so what
was refused is the delivered text) is nobody's fault: no health or breaker
entry, and another continuable node may try. The caller hears of the
interruption that asked for the continuation, never of the refusal: its
:class:`StreamInterruptedError` names the original cause (the cut, the
stall, the malformed event) and the nodes that could not continue it; a
continuation that failed otherwise (a timeout, a cut of its own before any
new token) is named after the cut, never instead of it. A
continued stream's usage is what the caller received: every token
delivered, from all attempts, counted once (``InferenceResponse.tokens``,
the HTTP ``completion_tokens``); the prompt is the caller's own, never the
delivered text sent back as a prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

from fedgate.errors import (
    BackpressureError,
    CircuitOpenError,
    DeadlineExceededError,
    FederationError,
    NoCapacityError,
    NodeUnreachableError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.federation.breaker import Admission, CircuitBreaker
from fedgate.federation.health import HealthChecker
from fedgate.federation.statemachine import RequestLifecycle, RequestState, TransitionHook
from fedgate.gateway.attempt import Attempt, Attempts, Lost, LostCause
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.cooldown import MAX_COOLDOWN, Cooldowns
from fedgate.gateway.registry import Registry, Worker
from fedgate.gateway.stats import GatewayCounters, NodeStats, RouteRecord
from fedgate.gateway.tenants import TenantBook, Ticket
from fedgate.routing.router import Router
from fedgate.transport import protocol as wire
from fedgate.types import InferenceRequest, InferenceResponse, NodeId, RegionId

__all__ = ["MAX_COOLDOWN", "Call", "CallEnv", "Failure"]

_FRAME_MARGIN = 4096
"""Bytes a Request frame holds besides its input and delivered text (ids, deadline, …)."""

_S = RequestState


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class CallEnv:
    """What every call of one gateway talks to (``loop`` is set while it runs)."""

    __slots__ = (
        "attempts",
        "audit",
        "breaker",
        "budget_waiters",
        "config",
        "cooldowns",
        "counters",
        "health",
        "hooks",
        "loop",
        "recent_routes",
        "registry",
        "rng",
        "router",
        "tenants",
    )

    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        health: HealthChecker,
        breaker: CircuitBreaker,
        registry: Registry,
        attempts: Attempts,
        counters: GatewayCounters,
        recent_routes: deque[RouteRecord],
        tenants: TenantBook | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.health = health
        self.breaker = breaker
        self.registry = registry
        self.attempts = attempts
        # Quotas (admission) and the fair queue (tenants): gateway/tenants.py.
        self.tenants = tenants if tenants is not None else TenantBook(max_queued=config.max_queued)
        self.counters = counters
        self.recent_routes = recent_routes
        self.hooks: list[TransitionHook] = []
        self.rng = random.Random()
        # Nodes that said they are busy, left alone for a while (gateway/cooldown.py).
        self.cooldowns = Cooldowns(config.retry_delay, self.rng)
        self.loop: asyncio.AbstractEventLoop | None = None
        # Requests whose charged retry waits for room in the retry budget.
        self.budget_waiters: deque[asyncio.Future[None]] = deque()
        # Called per attempt ended (request, attempt, finished, failure): gateway/audit.py.
        self.audit: Any = None

    def fire(self, request_id: str, old: RequestState, new: RequestState, at: float) -> None:
        for hook in list(self.hooks):
            hook(request_id, old, new, at)


class Failure(NamedTuple):
    """Why an attempt ended without an answer, and what that means for the node and the request."""

    error: Exception
    node_caused: bool  # counts against the node's health and breaker
    retryable: bool  # another node may still serve the request
    stranded: bool = False  # the node is gone: the request moves, uncharged to the budget
    answered: bool = False  # the worker's own Error: its side is done, nothing to cancel
    # A continuation the node could not take: the stream's cause stays the interruption.
    secondary: bool = False


class Call:
    """One request's attempt loop: routing, dispatch, failover, resume.

    :meth:`run_unary` (``infer``) and :meth:`run` (``infer_stream``, an async
    generator of token chunks) are the same loop; the steps they share are the
    methods below. The unary loop is a plain coroutine because an async
    generator costs every call a registration with the loop's shutdown set and
    an extra frame per resumption, which ``infer`` never needs.
    """

    __slots__ = (
        "attempts",
        "cut",
        "cut_at",
        "deadline",
        "env",
        "first_token_at",
        "kept",
        "kept_bytes",
        "kept_room",
        "kept_tokens",
        "last_error",
        "lifecycle",
        "next_index",
        "node",
        "not_continued",
        "output",
        "region",
        "request",
        "retrying",
        "rid",
        "score",
        "started",
        "stream",
        "tenant",
        "ticket",
        "tried",
    )

    def __init__(self, env: CallEnv, request: InferenceRequest, stream: bool) -> None:
        self.env = env
        self.request = request
        self.stream = stream
        self.rid = wire.new_rid()
        loop = env.loop
        assert loop is not None
        self.started = loop.time()
        timeout = request.deadline if request.deadline is not None else env.config.request_timeout
        self.deadline = self.started + timeout
        self.lifecycle = RequestLifecycle(
            request.request_id,
            clock=loop.time,
            start=_S.READY,
            trace=False,
            hook=env.fire if env.hooks else None,
        )
        self.next_index = 0
        self.attempts = 0
        self.tried: set[NodeId] = set()
        self.last_error: Exception | None = None
        self.first_token_at = -1.0
        self.output = b""
        self.node = NodeId("")
        self.region = RegionId("")
        self.score = 0.0
        self.retrying = False
        self.tenant: NodeStats | None = None
        # A stream keeps the tokens it delivered, for a continuable node to continue
        # from (see "A stream continues …"); None once past the bound, when not a
        # stream, or while no continuable worker ever registered (nobody to use them).
        self.kept: list[bytes] | None = None
        self.kept_bytes = 0
        self.kept_room = self.kept_tokens = 0
        if stream and env.registry.continuable:
            config = env.config
            self.kept = []
            self.kept_tokens = config.stream_buffer
            self.kept_room = min(
                config.stream_buffer_bytes,
                config.max_frame_bytes - len(request.input) - _FRAME_MARGIN,
            )
        self.not_continued: list[str] | None = None  # nodes that could not continue it
        # The failure that last cut the stream (tokens had arrived since the one
        # before): what the caller is told, whatever later continuations met.
        self.cut: Exception | None = None
        self.cut_at = 0
        self.ticket: Ticket | None = None

    def response(self) -> InferenceResponse:
        loop = self.env.loop
        assert loop is not None
        return InferenceResponse(
            output=self.output,
            node_id=self.node,
            region_id=self.region,
            score=self.score,
            latency=loop.time() - self.started,
            tokens=self.next_index,
            attempts=self.attempts,
            request_id=self.request.request_id,
        )

    # --------------------------------------------------------------- the loop
    async def run_unary(self) -> None:
        """Run the request to its answer (``self.output``), failing over as needed.

        The attempt loop is :meth:`run`'s; a unary answer arrives whole in its
        FINAL, so there are no chunks to hand on. No ``aclosing``: every await is
        inside the generator, so a cancellation ends it there, ``finally`` and all.
        """
        async for _ in self.run():
            pass

    async def run(self) -> AsyncGenerator[list[bytes], None]:
        """Run the request as a stream: yields each chunk of new tokens, in order."""
        loop = self.env.loop
        assert loop is not None
        outcome = self._begin()
        try:
            self.lifecycle.to(_S.ROUTING)
            while True:
                choice = self._choose()
                while not isinstance(choice, tuple):
                    # Every eligible node is at its concurrency limit, or cooling down.
                    await self._wait_for(choice)
                    choice = self._choose()
                worker, score, admission = choice
                att = self._send_attempt(worker, score)
                failure: Failure | None = None
                if isinstance(att, Attempt):
                    finished = False
                    try:
                        while True:
                            step = self._step(await att.next(loop), att)
                            if step is None:
                                finished = True
                                break
                            if isinstance(step, Failure):
                                failure = step
                                break
                            if step:
                                yield step
                    finally:
                        # Reached on success, failure, and when the caller stops reading.
                        self._end_attempt(att, admission, finished, failure)
                    if finished:
                        outcome = self._completed(att)
                        return
                else:
                    failure = att
                assert failure is not None
                await self._after_failure(worker.node, admission, failure)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self._end(outcome)

    # ------------------------------------------------------------ shared steps
    def _begin(self) -> str:
        counters = self.env.counters
        req = self.request
        # Tenants: over quota → QuotaExceededError, before anything is routed.
        self.ticket = self.env.tenants.admit(req.tenant_id)
        counters.total += 1
        counters.active += 1
        if req.tenant_id:
            self.tenant = tenant = counters.per_tenant[req.tenant_id]
            tenant.requests += 1
        return "failed"  # the outcome until the request completes or is cancelled

    def _end(self, outcome: str) -> None:
        counters = self.env.counters
        tenant = self.tenant
        assert self.ticket is not None
        self.env.tenants.release(self.ticket, outcome, self.next_index)  # tenants: quotas
        counters.active -= 1
        if self.retrying:
            counters.retrying -= 1
            waiters = self.env.budget_waiters
            while waiters:  # a budget slot is free: the longest waiter takes it
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
                    break
        if outcome == "ok":
            counters.ok += 1
            if tenant is not None:
                tenant.successes += 1
                tenant.tokens += self.next_index
        elif outcome == "cancelled":
            counters.cancelled += 1
        else:
            counters.failed += 1
            if tenant is not None:
                tenant.failures += 1

    def _exclude(self) -> set[NodeId]:
        exclude = self.tried
        cooldowns = self.env.cooldowns
        if cooldowns:
            loop = self.env.loop
            assert loop is not None
            cooling = cooldowns.cooling(loop.time())
            if cooling:
                exclude = exclude | cooling
        if not self.stream or self.next_index == 0:
            return exclude
        # Past the commit point only a node that can resume the generation may serve,
        # or one that can continue it from the delivered text while that is kept.
        kept = self.kept is not None
        return exclude | {
            w.node
            for w in self.env.registry.by_node.values()
            if not (w.resumable or (kept and w.continuable))
        }

    def delivered_for(self, worker: Worker) -> bytes:
        """The text a continuation on ``worker`` starts from; ``b""`` when it is none.

        Only a worker that cannot resume but can continue gets it (a resumable
        one reproduces the tokens itself; any other never serves past the
        commit point, see :meth:`_exclude`).
        """
        kept = self.kept
        if not self.next_index or kept is None or worker.resumable or not worker.continuable:
            return b""
        return b"".join(kept)

    async def _wait_for(self, what: BackpressureError | float) -> None:
        if isinstance(what, BackpressureError):
            await self._wait_for_capacity(what)
            return
        loop = self.env.loop
        assert loop is not None
        await asyncio.sleep(max(what - loop.time(), 0.0))

    def _choose(self) -> tuple[Worker, float, Admission] | BackpressureError | float:
        """The next node to try, admitted by its breaker; the router's
        BackpressureError when every eligible node is full (wait for capacity);
        the loop time the first cooling node is free when only cooling nodes are
        left (wait for it).

        Raises the caller's error when no node is left.
        """
        env = self.env
        req = self.request
        tried = self.tried
        assert self.ticket is not None
        if env.attempts.fair.blocks(self.ticket):  # tenants: a freed slot is promised to a waiter
            return BackpressureError(
                f"request {req.request_id!r}: every eligible node is busy (waiting its turn)"
            )
        while True:
            try:
                decision = env.router.route(req, exclude=self._exclude())
            except BackpressureError as exc:
                return exc
            except FederationError as exc:
                cooldowns = env.cooldowns
                # Only cooling nodes left: route again when the first not yet tried is free.
                wake = cooldowns.first_free(tried, self.deadline) if cooldowns else None
                if wake is not None:
                    return wake
                self.lifecycle.to(_S.FAILED)
                cooling = self._cooling_error(exc) if cooldowns else None
                raise self._final_error(cooling or exc) from exc
            node = decision.node_id
            worker = env.registry.by_node.get(node)
            if worker is None or not worker.alive:
                tried.add(node)
                continue
            admission = env.breaker.admit(node)
            if admission is Admission.REJECT:
                env.counters.local_rejections += 1
                tried.add(node)
                if self.last_error is None:
                    self.last_error = CircuitOpenError(f"node {node}: circuit breaker open")
                continue
            self.lifecycle.to(_S.INFERRING)
            self.attempts += 1
            tried.add(node)
            return worker, decision.score, admission

    def _cooling_error(self, exc: FederationError) -> WorkerError | None:
        """When only nodes cooling past the deadline could serve: "busy", and for how long.

        The caller then learns when to come back (the front door's
        ``Retry-After``) instead of a bare "no capacity". The first cooling
        node the router accepts on its own, earliest first, says how long.
        """
        env = self.env
        loop = env.loop
        assert loop is not None
        now = loop.time()
        cooling = env.cooldowns.pending(self.tried, now)
        exclude = self.tried | {node for _, node in cooling}
        for until, node in cooling:
            try:
                decision = env.router.route(self.request, exclude=exclude - {node})
            except FederationError:
                continue
            if decision.node_id == node:
                return WorkerError(
                    f"request {self.request.request_id!r}: every node that could serve it "
                    f"is cooling down (node {node} asked not to be sent requests for "
                    f"{until - now:.1f}s more, past the deadline): {exc}",
                    code=wire.ERR_OVERLOADED,
                    node_caused=False,
                    retry_after=until - now,
                )
        return None

    async def _wait_for_capacity(self, full: BackpressureError) -> None:
        """Wait in the bounded admission queue for a slot, within the deadline.

        Slots are granted across tenants in weighted fair order (gateway/tenants.py).
        Raises the caller's error (``full``) when the queue is full or the deadline passes.
        """
        assert self.ticket is not None
        if not await self.env.attempts.wait_for_capacity(self.ticket, self.deadline):
            self.lifecycle.to(_S.FAILED)
            raise self._final_error(full) from full

    def _send_attempt(self, worker: Worker, score: float) -> Attempt | Failure:
        """Start the attempt on ``worker`` (a failed send arrives in its inbox)."""
        env = self.env
        try:
            att = env.attempts.open(self, worker, self.attempts)
        except NodeUnreachableError as exc:  # the gateway stopped under this request
            return Failure(exc, False, False)
        self.node, self.region, self.score = worker.node, worker.region, score
        recent = env.recent_routes
        if recent.maxlen:  # for the dashboard; after the send, off the latency path
            req = self.request
            recent.append(
                RouteRecord(
                    time.time(),
                    req.request_id,
                    req.tenant_id,
                    str(req.capability),
                    worker.node,
                    worker.region,
                    score,
                    self.attempts,
                )
            )
        return att

    def _step(self, event: Any, att: Attempt) -> list[bytes] | Failure | None:
        """Apply one inbox event: new tokens to pass on, None when done, or the failure."""
        kind = type(event)
        if kind is wire.Final:
            if not self.stream:
                self.output = event.output
                self.next_index = event.tokens
                return None
            if event.tokens != self.next_index:
                return Failure(
                    NodeUnreachableError(
                        f"node {self.node} ended the stream at {self.next_index} "
                        f"tokens but reported {event.tokens}"
                    ),
                    True,
                    True,
                )
            return None
        if kind is wire.Partial:
            loop = self.env.loop
            assert loop is not None
            att.last_frame = loop.time()
            fresh = self._accept(event)
            if fresh is None:  # a gap: the node broke the stream
                return Failure(
                    NodeUnreachableError(
                        f"node {self.node} skipped tokens (expected index "
                        f"{self.next_index}, got {event.index})"
                    ),
                    True,
                    True,
                )
            if fresh and self.first_token_at < 0:
                self.first_token_at = loop.time()
                self.lifecycle.to(_S.STREAMING)
            return fresh
        if kind is wire.Error:
            return self._worker_error(event, att)
        return self._local_error(event, self.node)  # crash, stall, deadline, overflow, shutdown

    def _end_attempt(
        self, att: Attempt, admission: Admission, finished: bool, failure: Failure | None
    ) -> None:
        env = self.env
        # A worker that answered (Final, or its own Error) has nothing left to stop.
        answered = finished or (failure is not None and failure.answered)
        env.attempts.abandon(att, cancel=not answered and att.worker.alive)
        if env.audit is not None:
            env.audit(self.request, att, finished, failure)
        if failure is None and not finished and admission is Admission.PROBE:
            # The caller stopped: no verdict on the node, free the probe.
            env.breaker.release(att.worker.node)

    def _completed(self, att: Attempt) -> str:
        self._succeeded(att.worker.node, att.started)
        self.lifecycle.to(_S.COMPLETED)
        return "ok"

    async def _after_failure(self, node: NodeId, admission: Admission, failure: Failure) -> None:
        """Book a failed attempt, then back off for the next one or raise the caller's error."""
        env = self.env
        counters = env.counters
        loop = env.loop
        assert loop is not None
        lc = self.lifecycle
        error = failure.error
        if failure.secondary and self.last_error is not None:
            # The node could not continue the stream: what the caller must hear
            # about is still the interruption that asked for the continuation.
            if self.not_continued is None:
                self.not_continued = []
            self.not_continued.append(node)
            error = self.last_error
        self.last_error = error
        if self.next_index > self.cut_at:
            self.cut, self.cut_at = error, self.next_index
        if failure.node_caused:
            env.health.report_failure(node)
            env.breaker.record_failure(node)
            counters.per_node[node].failures += 1
        elif admission is Admission.PROBE:
            env.breaker.release(node)
        if not (failure.retryable and self._may_retry()):
            lc.to(_S.FAILED)
            raise self._final_error(error)
        lc.to(_S.RETRYING)
        if not failure.stranded and not self.retrying:
            # A charged retry: it needs a slot of the budget, and waits for one.
            if not self._budget_room():
                await self._wait_for_budget(error)
            self.retrying = True
            counters.retrying += 1
        counters.retries += 1
        if failure.node_caused or failure.stranded:
            counters.failovers += 1
        if self.next_index:
            counters.resumes += 1
        if failure.stranded:
            # The node is gone: waiting would not make it better, move now.
            lc.to(_S.ROUTING)
            return
        delay = env.config.retry_delay * (2 ** (self.attempts - 1)) * (0.5 + env.rng.random())
        if loop.time() + delay >= self.deadline:
            lc.to(_S.FAILED)
            raise DeadlineExceededError(
                f"request {self.request.request_id!r}: deadline passed while retrying "
                f"after {self.attempts} attempt(s): {error}"
            ) from error
        if delay > 0:
            await asyncio.sleep(delay)
        lc.to(_S.ROUTING)

    def _accept(self, msg: wire.Partial) -> list[bytes] | None:
        """New tokens of a Partial, in order; [] for a duplicate, None for a gap."""
        start = msg.index
        if start > self.next_index:
            return None
        tokens = msg.tokens
        end = start + len(tokens)
        if end <= self.next_index:
            return []
        if start < self.next_index:
            tokens = tokens[self.next_index - start :]
        self.next_index = end
        kept = self.kept
        if kept is not None:
            # Joined per frame: bytes are no work for the garbage collector, lists are.
            text = b"".join(tokens)
            kept.append(text)
            self.kept_bytes += len(text)
            if self.kept_bytes > self.kept_room or end > self.kept_tokens:
                self.kept = None  # past the bound: no continuation, an interruption ends it
        return tokens

    def _succeeded(self, node: NodeId, attempt_started: float) -> None:
        env = self.env
        counters = env.counters
        assert env.loop is not None
        now = env.loop.time()
        latency = now - self.started
        # The node's health sees its own attempt's latency, not the backoffs before it.
        env.health.report_success(node, now - attempt_started)
        env.breaker.record_success(node)
        env.cooldowns.succeeded(node)
        stats = counters.per_node[node]
        stats.successes += 1
        stats.tokens += self.next_index
        counters.tokens += self.next_index
        counters.latency_sum += latency
        counters.latency.record(0, latency)
        if self.first_token_at >= 0:
            counters.latency.record(1, self.first_token_at - self.started)

    def _worker_error(self, msg: wire.Error, att: Attempt) -> Failure:
        """The failure a worker's Error frame reports."""
        code = msg.code
        text = f"node {self.node} failed request {self.request.request_id!r}: {code}: {msg.message}"
        upstream = msg.upstream_code
        if att.continuing and code in (
            wire.ERR_CANNOT_CONTINUE, wire.ERR_BAD_INPUT, wire.ERR_CONTEXT_LENGTH
        ):
            # A node already streamed from this input, so what this one refused is the
            # delivered text (an upstream that takes no prefill, or a prefill that no
            # longer fits): nobody's fault, another continuable node may take it, and the
            # caller hears of the interruption.
            return Failure(
                WorkerError(
                    text, code=wire.ERR_CANNOT_CONTINUE, node_caused=False, upstream_code=upstream
                ),
                False,
                True,
                answered=True,
                secondary=True,
            )
        if code == wire.ERR_BAD_INPUT or code == wire.ERR_CONTEXT_LENGTH:
            # The caller's input: never the node's fault, and no other node of this model
            # will like it more (a longer context window is another model: the front
            # door's alias fallback, fedgate.gateway.models).
            return Failure(
                WorkerError(text, code=code, node_caused=False, upstream_code=upstream),
                False,
                False,
                answered=True,
            )
        node_caused = msg.node_caused or wire.is_node_caused(code)
        if code == wire.ERR_OVERLOADED:
            loop = self.env.loop
            assert loop is not None
            self.env.cooldowns.overloaded(self.node, msg.retry_after, loop.time())
        if code == wire.ERR_DEADLINE:
            return Failure(DeadlineExceededError(text), node_caused, False, answered=True)
        # retry_after travels on: a caller told "every node is busy" learns for how long.
        error = WorkerError(
            text,
            code=code,
            node_caused=node_caused,
            retry_after=msg.retry_after,
            upstream_code=upstream,
        )
        return Failure(error, node_caused, True, answered=True)

    def _local_error(self, event: Lost, node: NodeId) -> Failure:
        """The failure the gateway observed itself (no frame from the node)."""
        rid = self.request.request_id
        cause = event.cause
        if cause is LostCause.OVERFLOW:
            config = self.env.config
            error: Exception = BackpressureError(
                f"request {rid!r}: reader too slow, more than {config.stream_buffer} "
                f"tokens or {config.stream_buffer_bytes} bytes buffered"
            )
        elif cause is LostCause.DEADLINE:
            error = DeadlineExceededError(f"request {rid!r} exceeded its deadline on node {node}")
        elif cause is LostCause.LAGGING:
            error = DeadlineExceededError(
                f"request {rid!r} exceeded its deadline while its reader lagged behind node {node}"
            )
        elif cause is LostCause.BACKPRESSURE:
            error = BackpressureError(f"request {rid!r}: {event.message}")
        elif cause is LostCause.SHUTDOWN:
            error = NodeUnreachableError(f"request {rid!r}: {event.message}")
        else:  # crash, stall, a failed send: the node's connection or process
            error = NodeUnreachableError(f"request {rid!r} on node {node}: {event.message}")
        return Failure(error, cause.node_caused, cause.retryable, cause.stranded)

    def _may_retry(self) -> bool:
        """Attempts left and time left (the budget is waited for, see :meth:`_wait_for_budget`)."""
        env = self.env
        if env.attempts.pump is None or self.attempts > env.config.max_retries:
            return False
        assert env.loop is not None
        return env.loop.time() < self.deadline

    def _budget_room(self) -> bool:
        """Whether the retry budget has a slot for one more retrying request."""
        config = self.env.config
        counters = self.env.counters
        budget = max(config.retry_budget_min, int(config.retry_budget_ratio * counters.active))
        return counters.retrying < budget

    async def _wait_for_budget(self, error: Exception) -> None:
        """Wait until the retry budget has room, inside the deadline.

        Woken when a retrying request ends; re-checked on a short timer too,
        since the budget also grows with the active load. Raises
        :class:`DeadlineExceededError` (naming ``error``, the last failure)
        when the deadline passes first.
        """
        env = self.env
        loop = env.loop
        assert loop is not None
        waiters = env.budget_waiters
        while not self._budget_room():
            now = loop.time()
            if now >= self.deadline:
                self.lifecycle.to(_S.FAILED)
                raise DeadlineExceededError(
                    f"request {self.request.request_id!r}: deadline passed while waiting for "
                    f"the retry budget after {self.attempts} attempt(s): {error}"
                ) from error
            fut: asyncio.Future[None] = loop.create_future()
            waiters.append(fut)
            timer = loop.call_at(min(self.deadline, now + 0.05), _resolve, fut)
            try:
                await fut
            finally:
                timer.cancel()
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)

    def _why_not_continued(self) -> str:
        """Why no node continued an interrupted stream, when a continuation was possible."""
        if self.not_continued:
            return f" (not continued: node {', '.join(self.not_continued)} could not continue it)"
        if self.kept is None and self.kept_tokens:
            return (
                f" (not continued: {self.kept_bytes} bytes delivered, past what a "
                f"continuation carries: {self.kept_room} bytes, {self.kept_tokens} "
                "tokens)"
            )
        return ""

    def _final_error(self, error: Exception) -> Exception:
        """The error a caller sees: past the commit point, an explicit stream interruption."""
        # Backpressure is the reader's own doing, not the node's: it stays typed as such.
        if (
            self.stream
            and self.next_index > 0
            and not isinstance(error, (StreamInterruptedError, BackpressureError))
        ):
            last = self.last_error or error
            cut = self.cut or last
            then = "" if last is cut else f"; continuing it failed: {last}"
            out = StreamInterruptedError(
                f"stream {self.request.request_id!r} interrupted after {self.next_index} tokens: "
                f"{cut}{self._why_not_continued()}{then}"
            )
            out.__cause__ = error
            return out
        if isinstance(error, NoCapacityError) and self.last_error is not None:
            # Every node was tried: report why the last one failed, not "no capacity".
            return self.last_error
        return error
