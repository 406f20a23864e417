"""The gateway's guarantees, each driven frame by frame by scripted workers.

Fencing, resume trimming, heartbeat expiry, retry placement and in-flight
failover on heartbeat loss (RELIABILITY.md rules 1, 2, 3, 9). The workers are
real DEALER sockets that send exactly the frames a test scripts (``scripted.py``),
and health runs on a manual clock, so every interleaving here is the one the
test names, on any machine.
"""

from __future__ import annotations

import pytest
from scripted import Federation, ScriptedWorker, req, scripted_federation, tok, toks, until

from fedgate import NodeId, StreamInterruptedError
from fedgate.transport import protocol as wire


async def fail_over_after(
    fed: Federation, got: list[bytes], delivered: int
) -> tuple[ScriptedWorker, wire.Request, ScriptedWorker, wire.Request]:
    """Stream ``delivered`` tokens from the first node, fail it, and return both attempts."""
    first, r1 = await fed.next_request()
    await first.partial(r1, 0, toks(0, delivered))
    await until(lambda: got == toks(0, delivered), f"the caller to read {delivered} tokens")
    await first.error(r1)
    second, r2 = await fed.next_request()
    assert second is not first
    assert (r2.rid, r2.attempt, r2.resume_from) == (r1.rid, r1.attempt + 1, delivered)
    return first, r1, second, r2


# ------------------------------------------------------------------------ fencing
async def test_late_frames_of_an_abandoned_attempt_never_reach_the_caller() -> None:
    async with scripted_federation("a", "b") as fed:
        got, reading = fed.stream(req("fence-1"))
        first, r1, second, r2 = await fail_over_after(fed, got, 2)
        await second.partial(r2, 2, [tok(2)])
        await until(lambda: len(got) == 3, "token 2 from the retry")
        # The abandoned attempt wakes up while the retry streams (SIGSTOP/SIGCONT): a
        # Partial at exactly the next index, then a Final that would end the stream.
        await first.partial(r1, 3, [b"stale"])
        await first.final(r1, 4)
        await until(
            lambda: fed.gw.stats().stale_frames == 2 or len(got) > 3 or reading.done(),
            "the late frames to be read",
        )
        await second.partial(r2, 3, toks(3, 5))
        await second.final(r2, 5)
        await reading
        assert got == toks(0, 5)
        assert fed.gw.stats().stale_frames == 2


async def test_a_frame_naming_an_old_attempt_is_stale_even_from_the_current_worker() -> None:
    # The fence is (rid, attempt) from the worker the attempt went to: the sender's
    # identity alone does not make a frame current.
    async with scripted_federation("a", "b") as fed:
        got, reading = fed.stream(req("fence-2"))
        _, r1, second, r2 = await fail_over_after(fed, got, 2)
        await second.send(wire.Partial(r2.rid, r1.attempt, 2, [b"stale"]))
        await until(
            lambda: fed.gw.stats().stale_frames == 1 or len(got) > 2, "the old-numbered frame"
        )
        await second.partial(r2, 2, toks(2, 4))
        await second.final(r2, 4)
        await reading
        assert got == toks(0, 4)
        assert fed.gw.stats().stale_frames == 1


async def test_a_late_answer_of_an_abandoned_attempt_is_not_the_unary_answer() -> None:
    async with scripted_federation("a", "b") as fed:
        call = fed.spawn(fed.gw.infer(req("fence-3")))
        first, r1 = await fed.next_request()
        await first.error(r1)
        second, r2 = await fed.next_request()
        await first.final(r1, 1, b"stale answer")
        await until(lambda: fed.gw.stats().stale_frames == 1 or call.done(), "the late answer")
        await second.final(r2, 1, b"answer")
        response = await call
        assert (response.output, response.node_id) == (b"answer", second.node)
        assert fed.gw.stats().stale_frames == 1


# ---------------------------------------------------------------- resume trimming
@pytest.mark.parametrize("overlap_from", [0, 1, 2])
async def test_an_overlapping_resume_is_trimmed_to_exactly_the_missing_tokens(
    overlap_from: int,
) -> None:
    async with scripted_federation("a", "b") as fed:
        got, reading = fed.stream(req("trim-1"))
        _, _, second, r2 = await fail_over_after(fed, got, 3)
        # The new node restarts before the resume point; then a frame wholly
        # delivered already, then one starting exactly at the next index.
        await second.partial(r2, overlap_from, toks(overlap_from, 5))
        await second.partial(r2, 1, toks(1, 4))
        await second.partial(r2, 5, toks(5, 7))
        await second.final(r2, 7)
        await reading
        assert got == toks(0, 7)
        stats = fed.gw.stats()
        assert (stats.resumes, stats.total_tokens, stats.successful_requests) == (1, 7, 1)


async def test_a_gapped_resume_fails_over_to_another_node_from_the_same_index() -> None:
    async with scripted_federation("a", "b", "c") as fed:
        got, reading = fed.stream(req("gap-1"))
        first, _, second, r2 = await fail_over_after(fed, got, 3)
        await second.partial(r2, 4, toks(4, 6))  # token 3 is missing
        third, r3 = await fed.next_request()
        assert third not in (first, second)
        assert (r3.attempt, r3.resume_from) == (3, 3)
        await until(lambda: bool(second.cancels), "the gapped attempt to be cancelled")
        assert [(c.rid, c.attempt) for c in second.cancels] == [(r2.rid, r2.attempt)]
        await third.partial(r3, 3, toks(3, 6))
        await third.final(r3, 6)
        await reading
        assert got == toks(0, 6)
        assert fed.gw.stats().failovers == 2


async def test_a_gapped_resume_with_no_node_left_ends_with_an_explicit_error() -> None:
    async with scripted_federation("a", "b") as fed:
        got, reading = fed.stream(req("gap-2"))
        _, _, second, r2 = await fail_over_after(fed, got, 3)
        await second.partial(r2, 4, toks(4, 6))
        with pytest.raises(StreamInterruptedError, match=r"after 3 tokens.*skipped tokens"):
            await reading
        assert got == toks(0, 3)  # no hole papered over, nothing past it delivered
        assert fed.gw.stats().failed_requests == 1


# --------------------------------------------------------------- heartbeat expiry
INTERVAL = 1.0
LIVENESS = 4


@pytest.mark.parametrize("phase", range(LIVENESS))
async def test_a_silent_node_dies_on_time_while_another_keeps_beating(phase: int) -> None:
    # Whatever the phase of the silence against the expiry checks, the quiet node
    # dies one liveness window after its last heartbeat, however often the steady
    # node beats: expiry must follow the earliest deadline, not the latest.
    step = INTERVAL / 4
    window = INTERVAL * LIVENESS
    async with scripted_federation(
        "quiet", "steady", heartbeat_interval=INTERVAL, heartbeat_liveness=LIVENESS
    ) as fed:
        health = fed.gw.health
        start = fed.clock()
        last_quiet = start + 2 * window + phase * INTERVAL
        dead_at: float | None = None
        while fed.clock() < last_quiet + 3 * window:
            now = fed.clock.advance(step)
            if (now - start) % INTERVAL == 0:
                await fed.beat("steady", *(["quiet"] if now <= last_quiet else []))
            if dead_at is None:
                if not health.is_alive(NodeId("quiet")):
                    dead_at = now
                else:
                    assert fed.alive("quiet")  # the monitor never runs ahead of health
            assert health.is_alive(NodeId("steady")) and fed.alive("steady")
        assert dead_at is not None, "the quiet node was never declared dead"
        assert last_quiet + window < dead_at <= last_quiet + window + INTERVAL
        await until(lambda: not fed.alive("quiet"), "the monitor to lose the quiet node")
        assert fed.alive("steady") and fed.gw.stats().workers == 1


# ---------------------------------------------------------------- retry placement
@pytest.mark.parametrize("code", [wire.ERR_BACKEND, wire.ERR_OVERLOADED])
async def test_each_retry_goes_to_a_node_not_yet_tried(code: str) -> None:
    # Whether the failure counts against the node (backend) or not (overloaded),
    # the failed node stays the router's favourite: only the exclusion moves the retry.
    async with scripted_federation("a", "b", "c") as fed:
        call = fed.spawn(fed.gw.infer(req("place-1")))
        order: list[tuple[str, int]] = []
        for _ in range(3):
            worker, r = await fed.next_request()
            order.append((worker.node, r.attempt))
            if len(order) < 3:
                await worker.error(r, code)
            else:
                await worker.final(r, 1, b"answer")
        response = await call
        assert sorted(node for node, _ in order) == ["a", "b", "c"], order
        assert [attempt for _, attempt in order] == [1, 2, 3]
        assert {w.node: len(w.requests) for w in fed.workers.values()} == {"a": 1, "b": 1, "c": 1}
        assert (response.node_id, response.output, response.attempts) == (
            order[2][0],
            b"answer",
            3,
        )
        # A worker that answered with its own Error has finished: no CANCEL follows.
        assert fed.gw.stats().cancels_sent == 0


# ------------------------------------------------------------ no frame vanishes
async def test_frames_never_read_by_an_abandoned_stream_are_counted_stale() -> None:
    # The caller stops after one token while four more frames already wait in the
    # attempt's inbox: they are an abandoned attempt's frames, dropped and counted.
    async with scripted_federation("a") as fed:
        stream = fed.gw.infer_stream(req("drop-1"))
        first = fed.spawn(stream.__anext__())  # type: ignore[arg-type]
        worker, r = await fed.next_request()
        for i in range(5):
            await worker.partial(r, i, [tok(i)])
        assert await first == tok(0)
        att = fed.gw._attempts.by_rid[r.rid]
        await until(lambda: len(att.inbox) == 4, "the other four frames to reach the attempt")
        await stream.aclose()  # type: ignore[attr-defined]
        stats = fed.gw.stats()
        assert (stats.stale_frames, stats.cancels_sent) == (4, 1)


# ------------------------------------------------- in-flight failover on heartbeats
@pytest.mark.parametrize("delivered", [0, 2])
async def test_in_flight_work_fails_over_when_its_node_stops_heartbeating(delivered: int) -> None:
    async with scripted_federation(
        "a", "b", heartbeat_interval=INTERVAL, heartbeat_liveness=LIVENESS
    ) as fed:
        got, reading = fed.stream(req("hb-1"))
        stuck, r1 = await fed.next_request()
        if delivered:
            await stuck.partial(r1, 0, toks(0, delivered))
            await until(lambda: len(got) == delivered, "the first tokens")
        other = fed["b" if stuck.node == "a" else "a"]
        # The stuck node's socket stays open and silent; the other keeps beating
        # past the stuck one's liveness window.
        for _ in range(LIVENESS + 1):
            fed.clock.advance(INTERVAL)
            await fed.beat(other.node)
        # Only the gateway's own monitor can notice: nothing else happens now.
        retry, r2 = await fed.next_request()
        assert retry is other
        assert (r2.rid, r2.attempt, r2.resume_from) == (r1.rid, 2, delivered)
        assert not fed.alive(stuck.node)
        await other.partial(r2, delivered, toks(delivered, 5))
        await other.final(r2, 5)
        await reading
        assert got == toks(0, 5)
        assert fed.gw.stats().failovers == 1


# ------------------------------------------------------------- one link, one node
async def test_one_connection_cannot_announce_a_second_node() -> None:
    """A process minting node ids on its one socket is refused; its first node stays."""
    async with scripted_federation("a") as fed:
        rogue = fed["a"]
        for fake in ("fake-1", "fake-2"):
            await rogue.send(
                wire.Ready(
                    fake, "us-west-2", rogue.worker_id, ["m"], ["generate"], False, 0.01, 16,
                    True, 1.0, 0, "scripted",
                )
            )  # fmt: skip
        await until(
            lambda: sum(isinstance(m, wire.Refuse) for m in rogue.received) == 2,
            "both fakes refused",
        )
        refusals = [m for m in rogue.received if isinstance(m, wire.Refuse)]
        assert [m.node for m in refusals] == ["fake-1", "fake-2"]
        assert "already serves node 'a'" in refusals[0].reason
        assert sorted(w["node"] for w in fed.gw.workers()) == ["a"]
        assert list(fed.gw.catalog.models_on(NodeId("fake-1"))) == []
        assert fed.gw.stats().refused_by_reason == {"one_node": 2}
        # The real node is untouched: it still gets the traffic.
        task = fed.spawn(fed.gw.infer(req("after-fakes")))
        worker, request = await fed.next_request()
        assert worker is rogue
        await worker.final(request, 1, b"ok")
        assert (await task).node_id == "a"
