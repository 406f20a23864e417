"""Tenants: who a request is charged to, its quotas, and fair shares of a full fleet.

A request's tenant comes from its credential (an HTTP API key of
``[tenants.NAME] api_keys``, or a client's CURVE key at the ingress), never
from its body; a request with none is the tenant ``"default"``. Every tenant
has a :class:`TenantState` in the gateway's :class:`TenantBook`.

Quotas, checked in :meth:`TenantBook.admit` before anything is routed (so
before any worker is contacted), per ``[tenants.NAME]`` (or
``[tenants.default]`` for a tenant without a table of its own, each such
tenant with buckets of its own)::

    max_concurrent   requests in flight at once: the (N+1)th is refused while N run
    requests_per_s   a token bucket of rate r and size request_burst (default
                     max(1, r)): b requests at once, then one every 1/r seconds
    tokens_per_s     a token bucket of output tokens, size token_burst (default r):
                     a request's tokens are charged when it ends (unary answers are
                     only counted then, and a stream is charged once, not per
                     frame); while the bucket is negative new requests are refused

A refusal is :class:`~fedgate.errors.QuotaExceededError` naming the limit and
a ``retry_after``: for a bucket, the exact time until it holds enough (a
retry then is admitted); for concurrency, when the tenant's oldest request
in flight should end, from the tenant's recent request times (a slot frees
when a request ends, which nobody can know in advance). When several limits
refuse, the one with the longest wait is reported.

Fair sharing under overload
---------------------------
When every eligible node is full, a request waits for capacity in the
:class:`FairQueue` instead of a single FIFO: one FIFO per tenant, served by
start-time fair queuing (virtual time). Each waiter gets a start tag: the
finish tag of its tenant's last waiter, or the virtual time ``V`` when its
tenant has none waiting (never less than ``V``), and a finish tag
``start + 1 / weight``; a freed slot is *granted* to the waiter with the
smallest finish tag, and ``V`` advances to its start tag. A backlogged
tenant's tags grow by ``1/weight`` per request, so freed capacity goes to
backlogged tenants in proportion to their weights, and a tenant that was
idle starts at ``V`` (no credit saved up; waiters that left unserved leave
no debt): a tenant flooding at 10× capacity cannot starve another.

A grant holds the slot for its waiter until the waiter's task runs: while a
grant is outstanding, no other call may route (:meth:`FairQueue.blocks`), so
neither a newly arrived request nor a waiter's periodic re-check takes it
first. A waiter whose request could not use the freed slot (a slot of another
capability) waits again with its old tags, at the head of its tenant's
queue; the periodic re-check (50 ms, backing off to 0.8 s) finds capacity that
no release announced (a new worker, a node that cooled down). The queue holds
``max_queued`` waiters; when it is full a tenant still below its weighted
share of it may join (so it holds at most about twice that), and a tenant at
or above its share is refused (``BackpressureError``).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedgate.clock import Clock, monotonic
from fedgate.errors import QuotaExceededError
from fedgate.gateway.stats import TenantStats
from fedgate.validation import (
    IDENT,
    ApiKeys,
    Burst,
    InvalidParameterError,
    Rate,
    ShareWeight,
    TenantConcurrency,
    validate,
)

__all__ = [
    "DEFAULT",
    "LIMITS",
    "MAX_TENANTS",
    "FairQueue",
    "TenantBook",
    "TenantLimits",
    "TenantState",
    "Tenants",
    "Ticket",
    "TokenBucket",
]

DEFAULT = "default"
"""The tenant of a request without a credential, and the table for tenants without one."""

LIMITS = ("concurrency", "requests", "tokens")
"""The quotas a request may be refused for (``QuotaExceededError.limit``)."""

MAX_TENANTS = 10_000
"""Tenant states kept; beyond it idle tenants without a table of their own are forgotten."""

# A float bucket refilled for exactly retry_after seconds can fall short by a
# rounding error: that much shortfall still admits.
_EPS = 1e-9
# The first re-check of a waiter, and the longest (it doubles in between).
_RECHECK = 0.05
_MAX_RECHECK = 0.8
# A concurrency retry_after never below this (a slot is due "any moment").
_MIN_SLOT_WAIT = 0.01
# Assumed request time of a tenant with no finished request yet.
_FIRST_GUESS = 1.0


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One ``[tenants.NAME]`` table: the tenant's API keys, quotas and share weight.

    Parameters
    ----------
    api_keys : sequence of str
        HTTP bearer keys that authenticate as this tenant (each key belongs
        to one tenant).
    max_concurrent : int or None
        Requests in flight at once (None: unlimited).
    requests_per_s, request_burst : float or None
        The request bucket's rate and size (size default ``max(1, rate)``).
    tokens_per_s, token_burst : float or None
        The output-token bucket's rate and size (size default ``rate``).
    weight : float
        The tenant's share of a full fleet, relative to the others' (default 1).
    """

    api_keys: ApiKeys = ()
    max_concurrent: TenantConcurrency | None = None
    requests_per_s: Rate | None = None
    request_burst: Burst | None = None
    tokens_per_s: Rate | None = None
    token_burst: Burst | None = None
    weight: ShareWeight = 1.0

    def __post_init__(self) -> None:
        validate(self)
        for burst, rate in (("request_burst", "requests_per_s"), ("token_burst", "tokens_per_s")):
            if getattr(self, burst) is not None and getattr(self, rate) is None:
                raise InvalidParameterError(
                    "TenantLimits", burst, getattr(self, burst),
                    f"expected it only with {rate} (a bucket's size needs its rate), "
                    f"got {burst} alone",
                )  # fmt: skip

    @property
    def limited(self) -> bool:
        return not (
            self.max_concurrent is None
            and self.requests_per_s is None
            and self.tokens_per_s is None
        )


_UNLIMITED = TenantLimits()


@dataclass(frozen=True, slots=True)
class Tenants:
    """The ``[tenants]`` section: each tenant's :class:`TenantLimits`, by name.

    ``tenants[DEFAULT]`` (optional) applies to every tenant without a table
    of its own. An API key may belong to one tenant only.
    """

    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner: dict[str, tuple[str, int]] = {}
        for name, limits in self.tenants.items():
            if not isinstance(name, str) or not name or len(name) > IDENT.max_length:
                raise ValueError(f"{name!r}: expected {IDENT.expected} as a tenant name")
            if not isinstance(limits, TenantLimits):
                raise TypeError(f"{name}: expected a TenantLimits, got {limits!r}")
            for i, key in enumerate(limits.api_keys):
                if key in owner:
                    other, j = owner[key]
                    # Never the key itself: config errors are printed and logged.
                    raise ValueError(
                        f"{name}.api_keys[{i}]: expected each API key to belong to one "
                        f"tenant, got the key of {other}.api_keys[{j}] again "
                        f"(tenants {other!r} and {name!r})"
                    )
                owner[key] = (name, i)

    def limits(self, tenant: str) -> TenantLimits:
        """The limits of ``tenant``: its own table, else ``[tenants.default]``, else none."""
        own = self.tenants.get(tenant)
        if own is not None:
            return own
        return self.tenants.get(DEFAULT, _UNLIMITED)

    def keys(self) -> dict[str, str]:
        """API key → tenant."""
        return {key: name for name, lim in self.tenants.items() for key in lim.api_keys}


class TokenBucket:
    """A token bucket on an injected clock: ``rate`` per second up to ``burst``.

    The level may go below zero (tokens charged after the fact); what a
    caller needs is asked with :meth:`wait`, which says how long until the
    bucket holds it.
    """

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.stamp = now

    def _fill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, need: float, now: float) -> float:
        """Seconds until the bucket holds ``need`` (0: it does now)."""
        self._fill(now)
        short = need - self.level
        return 0.0 if short <= _EPS * max(1.0, need) else short / self.rate

    def take(self, amount: float, now: float) -> None:
        self._fill(now)
        self.level -= amount


class TenantState:
    """One tenant's running state: its limits, buckets, requests in flight and counters."""

    __slots__ = (
        "admitted",
        "avg_time",
        "cancelled",
        "completed",
        "failed",
        "in_flight",
        "limited",
        "limits",
        "name",
        "own",
        "rejected",
        "requests",
        "starts",
        "tokens",
        "tokens_bucket",
        "waiting",
        "weight",
    )

    def __init__(self, name: str, limits: TenantLimits, now: float, own: bool) -> None:
        self.name = name
        self.requests: TokenBucket | None = None
        self.tokens_bucket: TokenBucket | None = None
        self.apply(limits, now, own)
        self.in_flight = self.waiting = 0
        self.admitted = self.completed = self.failed = self.cancelled = self.tokens = 0
        self.rejected = dict.fromkeys(LIMITS, 0)
        # Admission time of each request in flight, oldest first (for concurrency limits).
        self.starts: dict[Ticket, float] = {}
        self.avg_time: float | None = None

    def apply(self, limits: TenantLimits, now: float, own: bool) -> None:
        """Take ``limits`` (at start, or a reload): a bucket keeps its level, capped at its size."""
        self.limits = limits
        self.own = own  # a table of its own (never forgotten)
        self.limited = limits.limited
        self.weight = limits.weight
        rate = limits.requests_per_s
        self.requests = _rebucket(
            self.requests, rate, limits.request_burst or max(1.0, rate or 1.0), now
        )
        rate = limits.tokens_per_s
        self.tokens_bucket = _rebucket(self.tokens_bucket, rate, limits.token_burst or rate, now)

    def stats(self) -> TenantStats:
        return TenantStats(
            tenant=self.name,
            weight=self.weight,
            in_flight=self.in_flight,
            max_concurrent=self.limits.max_concurrent,
            waiting=self.waiting,
            admitted=self.admitted,
            completed=self.completed,
            failed=self.failed,
            tokens=self.tokens,
            rejected=dict(self.rejected),
        )


def _rebucket(
    old: TokenBucket | None, rate: float | None, burst: float | None, now: float
) -> TokenBucket | None:
    if rate is None or burst is None:
        return None
    new = TokenBucket(rate, burst, now)
    if old is not None:  # a reload is no refill, nor a way out of a deficit
        old._fill(now)
        new.level = min(old.level, burst)
    return new


class Ticket:
    """One admitted request: its tenant, and its place in the fair queue while it waits."""

    __slots__ = ("finish", "fut", "granted", "queued", "recheck", "start", "started", "state")

    def __init__(self, state: TenantState, started: float) -> None:
        self.state = state
        self.started = started
        self.start = self.finish = -1.0  # tags, set on its first wait
        self.granted = False
        self.queued = False
        self.recheck = _RECHECK
        self.fut: asyncio.Future[None] | None = None


def _finish(ticket: Ticket) -> float:
    return ticket.finish


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class FairQueue:
    """Requests waiting for a node slot, granted in weighted fair order (module docstring)."""

    __slots__ = ("max_queued", "outstanding", "queues", "size", "vtime")

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        # Each tenant's waiters in tag order (a list: a waiter back from a
        # re-check goes back to its place by bisection, not a Python-level scan).
        self.queues: dict[TenantState, list[Ticket]] = {}
        self.size = 0
        self.outstanding = 0  # slots granted to waiters whose task has not run yet
        self.vtime = 0.0

    def blocks(self, ticket: Ticket) -> bool:
        """Whether ``ticket``'s call must wait rather than route now.

        A granted waiter goes (once); anyone else waits while a slot is
        promised to a waiter that has not run yet.
        """
        if ticket.granted:
            ticket.granted = False
            return False
        return self.outstanding > 0

    def _room(self, state: TenantState) -> bool:
        if self.size < self.max_queued:
            return True
        # Full: a tenant below its weighted share of the queue may still join,
        # so one flooding tenant cannot fill it for everyone.
        weights = sum(s.weight for s in self.queues)
        if state not in self.queues:
            weights += state.weight
        mine = len(self.queues.get(state, ()))
        return mine < self.max_queued * state.weight / weights

    def _enqueue(self, ticket: Ticket) -> None:
        state = ticket.state
        queue = self.queues.get(state)
        if queue is None:
            queue = self.queues[state] = []
        if not queue or queue[-1].finish <= ticket.finish:
            queue.append(ticket)
        else:  # a waiter back from a re-check or an unusable grant: its old place
            bisect.insort_right(queue, ticket, key=_finish)
        ticket.queued = True
        self.size += 1

    def _dequeue(self, ticket: Ticket) -> None:
        state = ticket.state
        queue = self.queues[state]
        if queue[0] is ticket:
            del queue[0]
        else:
            queue.remove(ticket)
        if not queue:
            del self.queues[state]
        ticket.queued = False
        self.size -= 1

    async def wait(
        self, ticket: Ticket, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> bool:
        """Wait for a granted slot or a re-check (True), or False: deadline passed or no room.

        A waiter woken for a re-check keeps its place in the queue (it is
        taken out by :meth:`grant` once it is no longer waiting, or by
        :meth:`leave` when its request ends), so a re-check that finds every
        node still full costs no queue operation.
        """
        now = loop.time()
        if now >= deadline:
            self.leave(ticket)
            return False
        state = ticket.state
        if ticket.start < 0:
            if not self._room(state):
                return False
            # After the tenant's last waiter, or at V when it has none: tags of
            # waiters that left unserved (a deadline) are no debt, idle time no credit.
            queue = self.queues.get(state)
            ticket.start = max(self.vtime, queue[-1].finish) if queue else self.vtime
            ticket.finish = ticket.start + 1.0 / state.weight
        if not ticket.queued:
            self._enqueue(ticket)
        fut = ticket.fut = loop.create_future()
        timer = loop.call_at(min(deadline, now + ticket.recheck), _resolve, fut)
        ticket.recheck = min(ticket.recheck * 2, _MAX_RECHECK)
        state.waiting += 1
        try:
            await fut
        except BaseException:
            self._woken(ticket, timer)
            self.leave(ticket)
            self.forfeit(ticket)  # cancelled while granted: the slot is the next one's
            raise
        self._woken(ticket, timer)
        if loop.time() >= deadline:
            self.leave(ticket)
            self.forfeit(ticket)
            return False
        return True

    def _woken(self, ticket: Ticket, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        ticket.fut = None
        ticket.state.waiting -= 1
        if ticket.granted:  # its task runs: the promise is kept now, or passed on
            self.outstanding -= 1

    def leave(self, ticket: Ticket) -> None:
        """``ticket``'s request waits no more (it ends, or gives up waiting)."""
        if ticket.queued:
            self._dequeue(ticket)

    def forfeit(self, ticket: Ticket) -> None:
        """A granted waiter leaves without routing: its slot goes to the next one."""
        if ticket.granted:
            ticket.granted = False
            self.grant()

    def grant(self) -> None:
        """A node slot was released: promise it to the waiter with the smallest tag."""
        best: Ticket | None = None
        for queue in list(self.queues.values()):
            while queue and queue[0].fut is None:
                # Not waiting now (routing after a re-check, or done): out of line.
                self._dequeue(queue[0])
            if queue and (best is None or queue[0].finish < best.finish):
                best = queue[0]
        if best is None:
            return
        self._dequeue(best)
        best.granted = True
        self.outstanding += 1
        if best.start > self.vtime:
            self.vtime = best.start
        assert best.fut is not None
        _resolve(best.fut)


class TenantBook:
    """Every tenant's state: admission against quotas, release, the fair queue, counters.

    Parameters
    ----------
    tenants : Tenants, optional
        The ``[tenants]`` section (none: no quotas, every weight 1).
    clock : callable
        Monotonic seconds for the buckets and request times (injected in tests).
    max_queued : int
        The fair queue's bound (``GatewayConfig.max_queued``).
    """

    __slots__ = ("clock", "config", "fair", "keys", "states")

    def __init__(
        self, tenants: Tenants | None = None, *, clock: Clock = monotonic, max_queued: int = 10_000
    ) -> None:
        self.config = tenants if tenants is not None else Tenants()
        self.clock = clock
        self.keys = self.config.keys()
        self.states: dict[str, TenantState] = {}
        self.fair = FairQueue(max_queued)

    def state(self, tenant: str) -> TenantState:
        state = self.states.get(tenant)
        if state is None:
            if len(self.states) >= MAX_TENANTS:
                self._forget_idle()
            own = tenant in self.config.tenants
            state = self.states[tenant] = TenantState(
                tenant, self.config.limits(tenant), self.clock(), own
            )
        return state

    def _forget_idle(self) -> None:
        # Tenants named by unauthenticated clients could otherwise grow this without bound.
        for name, st in list(self.states.items()):
            if not st.own and st.in_flight == 0 and st.waiting == 0:
                del self.states[name]

    def admit(self, tenant: str | None) -> Ticket:
        """Admit one request of ``tenant`` (None: the default tenant) or refuse it.

        Raises
        ------
        QuotaExceededError
            Over a quota: the limit with the longest wait, and that wait.
        """
        state = self.state(tenant or DEFAULT)
        if not state.limited:
            state.admitted += 1
            state.in_flight += 1
            return Ticket(state, 0.0)
        now = self.clock()
        limits = state.limits
        wait, limit, why = 0.0, "", ""
        if limits.max_concurrent is not None and state.in_flight >= limits.max_concurrent:
            # (Requests admitted before a reload set the limit have no start: now.)
            oldest = next(iter(state.starts.values()), now)
            expected = state.avg_time if state.avg_time is not None else _FIRST_GUESS
            wait = max(oldest + expected - now, _MIN_SLOT_WAIT)
            limit, why = "concurrency", f"max_concurrent {limits.max_concurrent} in flight"
        bucket = state.requests
        if bucket is not None:
            need = bucket.wait(1.0, now)
            if need > wait:
                wait, limit = need, "requests"
                why = f"requests_per_s {limits.requests_per_s:g} (burst {bucket.burst:g})"
        bucket = state.tokens_bucket
        if bucket is not None:
            need = bucket.wait(0.0, now)
            if need > wait:
                wait, limit = need, "tokens"
                why = (f"tokens_per_s {limits.tokens_per_s:g}: "
                       f"{-bucket.level:.0f} tokens over")  # fmt: skip
        if limit:
            state.rejected[limit] += 1
            raise QuotaExceededError(
                f"tenant {state.name!r} is over its quota: {why}; retry after {wait:.3f}s",
                tenant=state.name,
                limit=limit,
                retry_after=wait,
            )
        if state.requests is not None:
            state.requests.take(1.0, now)
        state.admitted += 1
        state.in_flight += 1
        ticket = Ticket(state, now)
        state.starts[ticket] = now
        return ticket

    def release(self, ticket: Ticket, outcome: str, tokens: int) -> None:
        """The request of ``ticket`` ended (``"ok"``, ``"failed"`` or ``"cancelled"``)."""
        state = ticket.state
        if ticket.queued:
            self.fair.leave(ticket)
        state.in_flight -= 1
        state.tokens += tokens
        if outcome == "ok":
            state.completed += 1
        elif outcome == "cancelled":
            state.cancelled += 1
        else:
            state.failed += 1
        state.starts.pop(ticket, None)
        if not state.limited:
            return
        now = self.clock()
        if state.tokens_bucket is not None and tokens:
            state.tokens_bucket.take(float(tokens), now)
        if outcome == "ok":
            took = now - ticket.started
            avg = state.avg_time
            state.avg_time = took if avg is None else 0.8 * avg + 0.2 * took

    def reconfigure(self, tenants: Tenants | None) -> list[str]:
        """Apply a new ``[tenants]`` section at once (a SIGHUP reload); what changed, in words.

        API keys, limits and weights change in place; each tenant keeps its
        counters and its requests in flight, and a bucket its level (capped at
        a smaller size): a reload neither refills a bucket nor clears a deficit.
        """
        new = tenants if tenants is not None else Tenants()
        old = self.config
        self.config = new
        self.keys = new.keys()
        now = self.clock()
        for name, state in self.states.items():
            limits = new.limits(name)
            if limits != state.limits or state.own != (name in new.tenants):
                state.apply(limits, now, name in new.tenants)
        notes = []
        for name in sorted(set(old.tenants) | set(new.tenants)):
            before, after = old.tenants.get(name), new.tenants.get(name)
            if before == after:
                continue
            what = "added" if before is None else "removed" if after is None else "changed"
            if before is not None and after is not None and before.api_keys != after.api_keys:
                what += f" ({len(after.api_keys)} API keys)"
            notes.append(f"tenant {name}: {what}")
        return notes

    def stats(self) -> tuple[TenantStats, ...]:
        return tuple(st.stats() for _, st in sorted(self.states.items()))
