"""Tenants (SPEC §5, R32): quotas exact at their bounds, retry-afters that work, fair shares.

Quotas run on a :class:`ManualClock` (the buckets' injected clock), through
the real gateway and scripted workers, so each bound is asserted exactly:
the worker's own count of REQUEST frames shows that a refused request never
reached it. The fair queue is tested on its own (grant order, weights, the
queue's bound per share) and through the gateway (a released slot goes to
the other tenant's waiter before the flooding tenant's backlog).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from scripted import Federation, req, scripted_federation

from fedgate import QuotaExceededError
from fedgate.clock import ManualClock
from fedgate.gateway.ingress import Ingress
from fedgate.gateway.tenants import (
    DEFAULT,
    FairQueue,
    TenantBook,
    TenantLimits,
    Tenants,
    TenantState,
    Ticket,
)

T0 = 1000.0


def book(**limits: Any) -> tuple[TenantBook, ManualClock]:
    clock = ManualClock(T0)
    return TenantBook(Tenants({"a": TenantLimits(**limits)}), clock=clock), clock


def refused(b: TenantBook, tenant: str = "a") -> QuotaExceededError:
    with pytest.raises(QuotaExceededError) as info:
        b.admit(tenant)
    return info.value


# ------------------------------------------------------------------ quotas (the book)


def test_the_request_bucket_admits_exactly_its_burst_then_one_per_interval() -> None:
    b, clock = book(requests_per_s=4.0, request_burst=3)
    for _ in range(3):
        b.admit("a")
    err = refused(b)
    assert (err.tenant, err.limit) == ("a", "requests")
    assert err.retry_after == pytest.approx(0.25, abs=1e-12)
    clock.advance(0.25 - 1e-6)  # a moment early: still refused, with the rest to wait
    assert refused(b).retry_after == pytest.approx(1e-6, abs=1e-9)
    clock.advance(1e-6)  # exactly retry_after after the first refusal
    b.admit("a")
    assert refused(b).retry_after == pytest.approx(0.25, abs=1e-12)
    # Sustained: 10 s later the bucket has refilled to its burst, not beyond.
    clock.advance(10.0)
    for _ in range(3):
        b.admit("a")
    refused(b)
    state = b.states["a"]
    assert state.admitted == 7 and state.rejected == {"concurrency": 0, "requests": 4, "tokens": 0}


def test_the_request_bucket_over_a_long_run_admits_burst_plus_rate_times_time() -> None:
    b, clock = book(requests_per_s=10.0)  # burst defaults to the rate: 10
    admitted = 0
    for _ in range(1000):  # 10 s in steps of 10 ms, asking 5 times per step
        for _ in range(5):
            try:
                b.admit("a")
                admitted += 1
            except QuotaExceededError:
                pass
        clock.advance(0.01)
    assert admitted == 10 + 100 - 1 or admitted == 10 + 100  # bound ±1 (the last step)


def test_concurrency_refuses_the_n_plus_first_and_estimates_when_a_slot_frees() -> None:
    b, clock = book(max_concurrent=2)
    first = b.admit("a")
    clock.advance(2.0)
    b.release(first, "ok", 0)  # the tenant's requests take 2 s
    one = b.admit("a")
    clock.advance(0.5)
    b.admit("a")
    err = refused(b)
    assert err.limit == "concurrency"
    # The oldest in flight started 0.5 s ago and requests take 2 s: 1.5 s to go.
    assert err.retry_after == pytest.approx(1.5)
    clock.advance(err.retry_after)
    b.release(one, "ok", 0)  # it ended when expected: the retry is admitted
    b.admit("a")
    assert b.states["a"].in_flight == 2


def test_the_token_bucket_refuses_while_negative_and_retry_after_is_the_deficit() -> None:
    b, clock = book(tokens_per_s=10.0)  # a bucket of 10 tokens
    t = b.admit("a")
    t2 = b.admit("a")  # admitted while the bucket is not negative: charged when they end
    b.release(t, "ok", 10)
    b.admit("a")  # exactly 0 left: not negative, admitted
    b.release(t2, "ok", 20)
    err = refused(b)
    assert err.limit == "tokens" and err.retry_after == pytest.approx(2.0, abs=1e-12)
    clock.advance(2.0 - 1e-6)
    refused(b)
    clock.advance(1e-6)
    b.admit("a")


def test_the_longest_wait_is_reported_when_several_limits_refuse() -> None:
    b, _ = book(max_concurrent=1, requests_per_s=0.1, request_burst=1)
    b.admit("a")
    err = refused(b)
    assert err.limit == "requests" and err.retry_after == pytest.approx(10.0)


def test_tenants_without_a_table_get_the_default_limits_each_on_their_own() -> None:
    clock = ManualClock(T0)
    b = TenantBook(
        Tenants({DEFAULT: TenantLimits(requests_per_s=1.0), "big": TenantLimits(weight=4)}),
        clock=clock,
    )
    b.admit("x")
    b.admit("y")  # its own bucket
    b.admit(None)  # the default tenant itself
    refused(b, "x")
    for _ in range(50):
        b.admit("big")  # a table of its own: no limits
    assert b.states["big"].weight == 4 and b.states["x"].weight == 1
    assert [s.tenant for s in b.stats()] == ["big", "default", "x", "y"]


# ------------------------------------------------------------------ quotas (the gateway)


async def answer(fed: Federation, tokens: int = 1) -> None:
    worker, request = await fed.next_request()
    await worker.final(request, tokens, b"ok")


async def test_the_gateway_refuses_over_quota_before_any_worker_is_contacted() -> None:
    tenants = Tenants({"a": TenantLimits(requests_per_s=2.0, request_burst=2, max_concurrent=3)})
    async with scripted_federation("n", tenants=tenants) as fed:
        for i in range(2):
            task = fed.spawn(fed.gw.infer(req(f"r{i}", tenant_id="a")))
            await answer(fed)
            await task
        with pytest.raises(QuotaExceededError) as info:
            await fed.gw.infer(req("r2", tenant_id="a"))
        assert info.value.limit == "requests" and info.value.retry_after == pytest.approx(0.5)
        assert len(fed["n"].requests) == 2  # the refused request never reached it
        fed.clock.advance(info.value.retry_after)  # a retry at retry_after is admitted
        task = fed.spawn(fed.gw.infer(req("r3", tenant_id="a")))
        await answer(fed)
        await task
        # Another tenant is not charged for a's quota.
        task = fed.spawn(fed.gw.infer(req("o", tenant_id="other")))
        await answer(fed)
        await task
        (a, other) = fed.gw.stats().tenants
        assert (a.tenant, a.admitted, a.completed, a.rejected["requests"]) == ("a", 3, 3, 1)
        assert (other.tenant, other.admitted, other.max_concurrent) == ("other", 1, None)


async def test_the_gateway_refuses_the_n_plus_first_concurrent_request() -> None:
    tenants = Tenants({"a": TenantLimits(max_concurrent=2)})
    async with scripted_federation("n", tenants=tenants) as fed:
        running = [fed.spawn(fed.gw.infer(req(f"r{i}", tenant_id="a"))) for i in range(2)]
        first = [await fed.next_request() for _ in running]
        with pytest.raises(QuotaExceededError) as info:
            await fed.gw.infer(req("r2", tenant_id="a"))
        assert info.value.limit == "concurrency" and info.value.retry_after > 0
        assert len(fed["n"].requests) == 2
        assert fed.gw.stats().tenants[0].in_flight == 2
        worker, request = first[0]
        await worker.final(request, 1, b"ok")
        await running[0]
        task = fed.spawn(fed.gw.infer(req("r3", tenant_id="a")))  # a slot is free again
        await answer(fed)
        await task
        worker, request = first[1]
        await worker.final(request, 1, b"ok")
        await running[1]
        assert fed.gw.stats().tenants[0].in_flight == 0


async def test_the_gateway_charges_tokens_when_a_request_ends() -> None:
    tenants = Tenants({"a": TenantLimits(tokens_per_s=10.0)})
    async with scripted_federation("n", tenants=tenants) as fed:
        task = fed.spawn(fed.gw.infer(req("r0", tenant_id="a")))
        await answer(fed, tokens=30)  # 20 tokens over
        await task
        with pytest.raises(QuotaExceededError) as info:
            await fed.gw.infer(req("r1", tenant_id="a"))
        assert info.value.limit == "tokens" and info.value.retry_after == pytest.approx(2.0)
        fed.clock.advance(2.0)
        task = fed.spawn(fed.gw.infer(req("r2", tenant_id="a")))
        await answer(fed)
        await task
        assert fed.gw.stats().tenants[0].tokens == 31


# ------------------------------------------------------------------ the fair queue


def waiters(fair: FairQueue, loop: asyncio.AbstractEventLoop, *specs: tuple[TenantState, int]
            ) -> list[tuple[str, asyncio.Task[bool]]]:  # fmt: skip
    out = []
    for state, n in specs:
        for i in range(n):
            ticket = Ticket(state, 0.0)
            name = f"{state.name}{i}"
            out.append((name, loop.create_task(fair.wait(ticket, loop, loop.time() + 60))))
    return out


async def grant_order(fair: FairQueue, tasks: list[tuple[str, asyncio.Task[bool]]], n: int
                      ) -> list[str]:  # fmt: skip
    await asyncio.sleep(0)  # every waiter queued
    order = []
    for _ in range(n):
        fair.grant()
        await asyncio.sleep(0)
        done = [name for name, t in tasks if t.done() and name not in order]
        assert len(done) == 1, done
        order += done
    for _, t in tasks:
        t.cancel()
    await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
    return order


def tenant(name: str, weight: float = 1.0) -> TenantState:
    return TenantState(name, TenantLimits(weight=weight), 0.0, True)


async def test_a_freed_slot_goes_to_the_other_tenant_before_the_floods_backlog() -> None:
    loop = asyncio.get_running_loop()
    fair = FairQueue(100)
    a, b = tenant("a"), tenant("b")
    tasks = waiters(fair, loop, (a, 6), (b, 2))  # b queues after all of a's
    order = await grant_order(fair, tasks, 8)
    # Plain FIFO would be a0..a5, b0, b1.
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"]


async def test_shares_follow_the_weights_while_both_are_backlogged() -> None:
    loop = asyncio.get_running_loop()
    fair = FairQueue(100)
    a, b = tenant("a"), tenant("b", weight=3.0)
    tasks = waiters(fair, loop, (a, 20), (b, 20))
    order = await grant_order(fair, tasks, 16)
    assert sum(n.startswith("b") for n in order) == 12  # 3 of every 4


async def test_an_idle_tenant_saves_no_credit_and_carries_no_debt() -> None:
    loop = asyncio.get_running_loop()
    fair = FairQueue(100)
    a, b = tenant("a"), tenant("b")
    first = waiters(fair, loop, (a, 10))
    assert await grant_order(fair, first, 6) == [f"a{i}" for i in range(6)]
    # b arrives after a was served alone for a while: it alternates with a's
    # backlog from now on, it does not get six grants in a row.
    second = waiters(fair, loop, (a, 4), (b, 4))
    order = await grant_order(fair, second, 4)
    assert sorted(order) == ["a0", "a1", "b0", "b1"]


async def test_a_grant_holds_the_slot_until_its_waiter_runs() -> None:
    loop = asyncio.get_running_loop()
    fair = FairQueue(100)
    a = tenant("a")
    ticket, newcomer = Ticket(a, 0.0), Ticket(a, 0.0)
    task = loop.create_task(fair.wait(ticket, loop, loop.time() + 60))
    await asyncio.sleep(0)
    fair.grant()
    assert fair.blocks(newcomer)  # arrived first, but the slot is promised
    assert await task
    assert not fair.blocks(ticket)  # the granted one goes, once
    assert not fair.blocks(newcomer) and not fair.blocks(ticket)


async def test_a_cancelled_grantee_passes_its_slot_on() -> None:
    loop = asyncio.get_running_loop()
    fair = FairQueue(100)
    a, b = tenant("a"), tenant("b")
    tasks = waiters(fair, loop, (a, 1), (b, 1))
    await asyncio.sleep(0)
    fair.grant()  # to a0
    tasks[0][1].cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert tasks[1][1].done() and tasks[1][1].result()
    assert fair.outstanding == 0 and fair.size == 0


async def test_a_full_queue_still_takes_a_tenant_below_its_share() -> None:
    loop = asyncio.get_running_loop()
    fair = FairQueue(4)
    a, b = tenant("a"), tenant("b")
    tasks = waiters(fair, loop, (a, 4))
    await asyncio.sleep(0)
    deadline = loop.time() + 60
    assert not await fair.wait(Ticket(a, 0.0), loop, deadline)  # a holds the whole queue
    tasks += waiters(fair, loop, (b, 1))
    await asyncio.sleep(0)
    assert fair.size == 5 and b.waiting == 1
    for _, t in tasks:
        t.cancel()
    await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
    assert fair.size == 0 and a.waiting == b.waiting == 0


async def test_through_the_gateway_the_other_tenant_is_served_between_the_floods_requests(
) -> None:  # fmt: skip
    async with scripted_federation(("n", {"concurrency": 1})) as fed:
        order: list[str] = []

        async def run(rid: str, tenant_id: str) -> None:
            await fed.gw.infer(req(rid, tenant_id=tenant_id))

        tasks = [fed.spawn(run("a0", "a"))]
        worker, held = await fed.next_request()
        tasks += [fed.spawn(run(f"a{i}", "a")) for i in range(1, 7)]
        await asyncio.sleep(0.05)  # a's backlog queues first
        tasks += [fed.spawn(run(f"b{i}", "b")) for i in range(2)]
        await asyncio.sleep(0.05)
        await worker.final(held, 1, b"ok")
        order.append(held.request_id)
        while len(order) < 9:
            worker, request = await fed.next_request()
            order.append(request.request_id)
            await worker.final(request, 1, b"ok")
        await asyncio.gather(*tasks)
        assert order == ["a0", "a1", "b0", "a2", "b1", "a3", "a4", "a5", "a6"], order
        assert {t.tenant: t.completed for t in fed.gw.stats().tenants} == {"a": 7, "b": 2}


async def test_the_ingress_returns_quota_errors_typed_with_their_retry_after() -> None:
    tenants = Tenants({"a": TenantLimits(requests_per_s=1.0)})
    async with scripted_federation("n", tenants=tenants) as fed:
        ingress = Ingress(fed.gw, "tcp://127.0.0.1:*")
        await ingress.start()
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ingress.endpoint)
        try:
            for rid in ("r0", "r1"):
                body = {"id": rid, "capability": "generate", "tenant": "a"}
                await sock.send(msgspec.msgpack.encode(body))
            await answer(fed)
            replies = [msgspec.msgpack.decode(await asyncio.wait_for(sock.recv(), 10.0))
                       for _ in range(2)]  # fmt: skip
            by_id = {r["id"]: r for r in replies}
            assert by_id["r0"]["done"]
            err = by_id["r1"]
            assert err["error"] == "QuotaExceededError"
            assert (err["tenant"], err["limit"]) == ("a", "requests")
            assert err["retry_after"] == pytest.approx(1.0)
            assert len(fed["n"].requests) == 1
        finally:
            sock.close(0)
            await ingress.stop()
            ctx.term()


def test_tenant_states_are_bounded_idle_unnamed_ones_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedgate.gateway.tenants as tenants_module

    monkeypatch.setattr(tenants_module, "MAX_TENANTS", 4)
    b, _ = book(requests_per_s=1.0)
    busy = b.admit("x0")  # in flight: kept
    b.admit("a")  # a table of its own: kept
    for i in range(1, 3):
        b.release(b.admit(f"x{i}"), "ok", 0)
    b.admit("y")  # the 5th: the idle x1 and x2 go
    assert sorted(b.states) == ["a", "x0", "y"]
    b.release(busy, "ok", 0)
    assert b.states["x0"].completed == 1


async def test_a_full_ingress_still_starts_a_request_of_a_client_below_its_share() -> None:
    # The finding: one client's 10 000 requests took every ingress slot
    # and the other client got Overloaded on 20 of 20.
    async with scripted_federation("n") as fed:
        ingress = Ingress(fed.gw, "tcp://127.0.0.1:*", max_active=4)
        await ingress.start()
        ctx = zmq.asyncio.Context()
        flooder, other = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for sock in (flooder, other):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(ingress.endpoint)

        async def recv(sock: zmq.asyncio.Socket) -> dict[str, Any]:
            reply: dict[str, Any] = msgspec.msgpack.decode(await asyncio.wait_for(sock.recv(), 10))
            return reply

        try:
            for i in range(5):
                body = {"id": f"f{i}", "capability": "generate", "tenant": "a"}
                await flooder.send(msgspec.msgpack.encode(body))
            held = [await fed.next_request() for _ in range(4)]
            overloaded = await recv(flooder)
            assert (overloaded["id"], overloaded["error"]) == ("f4", "Overloaded")
            await other.send(msgspec.msgpack.encode({"id": "o", "capability": "generate"}))
            worker, request = await fed.next_request()
            assert request.request_id == "o"  # started although 4 of 4 were running
            await worker.final(request, 1, b"ok")
            assert (await recv(other))["done"]
            for worker, request in held:
                await worker.final(request, 1, b"ok")
            assert sorted([(await recv(flooder))["id"] for _ in held]) == ["f0", "f1", "f2", "f3"]
        finally:
            flooder.close(0)
            other.close(0)
            await ingress.stop()
            ctx.term()


def test_a_reload_changes_keys_limits_and_weights_but_refills_nothing() -> None:
    clock = ManualClock(T0)
    b = TenantBook(
        Tenants({"a": TenantLimits(api_keys=("k1",), requests_per_s=1.0, request_burst=4)}),
        clock=clock,
    )
    held = [b.admit("a") for _ in range(3)]  # 1 request left in the bucket
    b.admit("other")
    notes = b.reconfigure(
        Tenants(
            {
                "a": TenantLimits(
                    api_keys=("k2",), requests_per_s=2.0, request_burst=8, max_concurrent=3,
                    weight=2,
                ),
                DEFAULT: TenantLimits(requests_per_s=1.0),
            }
        )
    )
    assert notes == ["tenant a: changed (1 API keys)", "tenant default: added"]
    assert b.keys == {"k2": "a"}
    state = b.states["a"]
    assert state.weight == 2 and state.in_flight == 3 and state.admitted == 3
    # The bucket kept its level (1), not refilled to the new size (8) ...
    err = refused(b)  # ... but 3 run and the new limit is 3
    assert err.limit == "concurrency"
    b.release(held[0], "ok", 0)
    b.admit("a")
    b.release(held[1], "ok", 0)
    assert refused(b).limit == "requests"  # now the bucket is empty: 1 / 2 per second
    assert refused(b).retry_after == pytest.approx(0.5)
    # A tenant without a table takes the new default at once.
    b.admit("other")
    assert refused(b, "other").limit == "requests"
    assert b.reconfigure(None) == ["tenant a: removed", "tenant default: removed"]
    for _ in range(10):
        b.admit("a")


async def test_a_rechecked_waiter_keeps_its_place_until_it_leaves_or_is_passed_over() -> None:
    loop = asyncio.get_running_loop()
    b = TenantBook()
    fair = b.fair
    first, second = b.admit("a"), b.admit("a")
    tasks = [loop.create_task(fair.wait(t, loop, loop.time() + 60)) for t in (first, second)]
    await asyncio.sleep(0)
    assert first.fut is not None
    first.fut.set_result(None)  # its re-check timer: nodes may have room
    assert await tasks[0]
    # Woken, not waiting, but still in line (a re-check that finds every node
    # full waits again from the same place, at no cost).
    assert first.queued and fair.size == 2 and b.states["a"].waiting == 1
    fair.grant()  # passes over the one not waiting, and drops it from the line
    assert await tasks[1] and second.granted and not first.queued and fair.size == 0
    third = b.admit("a")
    task = loop.create_task(fair.wait(third, loop, loop.time() + 60))
    await asyncio.sleep(0)
    assert third.fut is not None
    third.fut.set_result(None)
    assert await task and third.queued
    b.release(third, "ok", 1)  # it routed after its re-check and ended: out of line
    assert not third.queued and fair.size == 0
