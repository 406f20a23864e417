"""Stranded requests move, they do not fail; the retry budget is waited for (SPEC §2, R20).

Scripted workers (``scripted.py``) on a real gateway, health on a manual
clock: each test names the interleaving it checks. The retry budget is one
request at a time (``retry_budget_min=1``, ratio 0), so a single charged
retry spends it.
"""

from __future__ import annotations

import asyncio

import pytest
from scripted import Federation, req, scripted_federation, until

from fedgate import DeadlineExceededError, GatewayConfig, NodeId
from fedgate.transport import protocol as wire

LIVENESS = 3
ONE_AT_A_TIME = GatewayConfig(
    request_timeout=30.0,
    retry_delay=0.0,
    monitor_interval=0.005,
    retry_budget_ratio=0.0,
    retry_budget_min=1,
)


def pin(fed: Federation, node: str) -> None:
    """Trip every other node's breaker: new requests go to ``node``."""
    for other in fed.workers:
        if other != node:
            for _ in range(fed.gw.breaker.config.failure_threshold):
                fed.gw.breaker.record_failure(NodeId(other))


def unpin(fed: Federation) -> None:
    for node in fed.workers:
        fed.gw.breaker.reset(NodeId(node))


async def no_request_for(fed: Federation, seconds: float) -> None:
    with pytest.raises(AssertionError, match="no REQUEST"):
        await fed.next_request(timeout=seconds)


@pytest.mark.parametrize("how", ["heartbeats", "connection"])
async def test_requests_stranded_by_a_death_all_move_at_once_uncharged(how: str) -> None:
    n = 4
    async with scripted_federation("a", "b", config=ONE_AT_A_TIME, heartbeat_liveness=LIVENESS) as (
        fed
    ):
        pin(fed, "a")
        calls = [fed.spawn(fed.gw.infer(req(f"strand-{i}"))) for i in range(n)]
        firsts = [await fed.next_request() for _ in range(n)]
        assert {w.node for w, _ in firsts} == {"a"}
        unpin(fed)
        if how == "heartbeats":
            for _ in range(LIVENESS + 1):
                fed.clock.advance(fed.interval)
                await fed.beat("b")
        else:
            # The clock stands still: only the dropped connection can tell.
            await fed["a"].close()
        # Every stranded request reaches b before any has an answer: none waited for
        # the budget of 1, none failed.
        moved = [await fed.next_request() for _ in range(n)]
        assert {w.node for w, _ in moved} == {"b"}
        assert sorted(r.request_id for _, r in moved) == sorted(r.request_id for _, r in firsts)
        assert all(r.attempt == 2 for _, r in moved)
        for worker, r in moved:
            await worker.final(r, 1, b"ok")
        responses = await asyncio.gather(*calls)
        assert all(r.output == b"ok" and r.node_id == "b" for r in responses)
        stats = fed.gw.stats()
        assert (stats.successful_requests, stats.failed_requests) == (n, 0)
        assert stats.failovers == n


async def test_a_retry_that_finds_the_budget_spent_waits_for_room() -> None:
    async with scripted_federation("a", "b", config=ONE_AT_A_TIME) as fed:
        pin(fed, "a")
        first = fed.spawn(fed.gw.infer(req("holder")))
        second = fed.spawn(fed.gw.infer(req("waiter")))
        got = dict(
            [(r.request_id, (w, r)) for w, r in [await fed.next_request() for _ in range(2)]]
        )
        unpin(fed)
        # The holder's node answers badly: its retry takes the one budget slot.
        worker, r = got["holder"]
        await worker.error(r, wire.ERR_BACKEND)
        holder_retry = await fed.next_request()
        assert holder_retry[1].request_id == "holder"
        # The waiter's node answers badly too: the budget is spent, it waits (no
        # REQUEST, no error) instead of failing.
        worker, r = got["waiter"]
        await worker.error(r, wire.ERR_BACKEND)
        await no_request_for(fed, 0.2)
        assert not second.done()
        # The holder ends: its slot goes to the waiter, whose retry goes out.
        w, r = holder_retry
        await w.final(r, 1, b"held")
        assert (await first).output == b"held"
        w, r = await fed.next_request()
        assert (r.request_id, r.attempt) == ("waiter", 2)
        await w.final(r, 1, b"waited")
        assert (await second).output == b"waited"
        assert fed.gw.stats().failed_requests == 0


async def test_a_retry_waiting_for_the_budget_gives_up_at_its_deadline() -> None:
    async with scripted_federation("a", "b", config=ONE_AT_A_TIME) as fed:
        pin(fed, "a")
        fed.spawn(fed.gw.infer(req("holder")))
        second = fed.spawn(fed.gw.infer(req("waiter", deadline=0.5)))
        got = dict(
            [(r.request_id, (w, r)) for w, r in [await fed.next_request() for _ in range(2)]]
        )
        unpin(fed)
        worker, r = got["holder"]
        await worker.error(r, wire.ERR_BACKEND)
        await fed.next_request()  # the holder's retry, never answered
        worker, r = got["waiter"]
        await worker.error(r, wire.ERR_BACKEND)
        with pytest.raises(DeadlineExceededError, match=r"retry budget.*scripted backend"):
            await second
        await until(lambda: fed.gw.stats().failed_requests == 1, "the waiter counted as failed")
