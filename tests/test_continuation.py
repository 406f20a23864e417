"""Streams continued from their delivered text on a node that cannot resume (issue 13).

A node whose Ready says ``continuable`` (the openai backend: an upstream asked
to continue an assistant message) may take a stream past its first token: its
REQUEST carries the bytes already delivered, and its tokens are numbered from
``resume_from``, so fencing and trimming stay as they are. A node that can
neither resume nor continue never takes a stream past its first token. A
continuation the node refuses (``cannot_continue``) is nobody's fault, and the
caller hears of the interruption, never of the refusal. Driven frame by frame
by scripted workers (``scripted.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from inproc import federation
from scripted import Federation, req, scripted_federation, tok, toks, until

from fedgate import GatewayConfig, NodeId, StreamInterruptedError
from fedgate.transport import protocol as wire
from fedgate.worker.backends.base import BackendRequest, backend_failure

PLAIN = {"resumable": False}
CONTINUABLE = {"resumable": False, "continuable": True}
CONFIG = GatewayConfig(request_timeout=30.0, retry_delay=0.0, monitor_interval=0.005)


def pin(fed: Federation, node: str) -> list[str]:
    """Open every other node's breaker, so that the first attempt goes to ``node``."""
    others = [n for n in fed.workers if n != node]
    for other in others:
        for _ in range(5):
            fed.gw.breaker.record_failure(NodeId(other))
    return others


def unpin(fed: Federation, others: list[str]) -> None:
    for other in others:
        fed.gw.breaker.reset(NodeId(other))


async def cut_after(
    fed: Federation, first: str, got: list[bytes], delivered: int, code: str = wire.ERR_BACKEND
) -> wire.Request:
    """The first attempt (on ``first``) streams ``delivered`` tokens, then fails with ``code``."""
    others = pin(fed, first)
    worker, r1 = await fed.next_request()
    assert worker.node == first and r1.delivered == b"" and r1.resume_from == 0
    unpin(fed, others)
    for i in range(0, delivered, 2):  # small frames, each read: no reader overflow
        upto = min(i + 2, delivered)
        await worker.partial(r1, i, toks(i, upto))
        await until(lambda n=upto: len(got) == n, f"the caller to read {upto} tokens")
    assert got == toks(0, delivered)
    await worker.error(r1, code, "upstream ended the stream without [DONE] (truncated)")
    return r1


async def test_a_continuable_node_takes_a_stream_past_its_first_token() -> None:
    async with scripted_federation(("a", PLAIN), ("b", CONTINUABLE), config=CONFIG) as fed:
        got, reading = fed.stream(req("cont-1"))
        r1 = await cut_after(fed, "a", got, 3)
        second, r2 = await fed.next_request()
        assert second.node == "b"
        # It carries what the caller already has, and continues from the next index.
        assert (r2.rid, r2.attempt, r2.resume_from) == (r1.rid, r1.attempt + 1, 3)
        assert r2.delivered == b"t0t1t2"
        # Numbered from resume_from: an overlap is trimmed, exactly as for a resume.
        await second.partial(r2, 2, toks(2, 5))
        await second.partial(r2, 5, [tok(5)])
        await second.final(r2, 6)
        await reading
        assert got == toks(0, 6)
        stats = fed.gw.stats()
        assert (stats.resumes, stats.successful_requests, stats.failed_requests) == (1, 1, 0)


async def test_a_node_that_can_neither_resume_nor_continue_never_takes_it() -> None:
    async with scripted_federation(("a", CONTINUABLE), ("b", PLAIN), config=CONFIG) as fed:
        got, reading = fed.stream(req("cont-2"))
        await cut_after(fed, "a", got, 3)
        with pytest.raises(StreamInterruptedError, match=r"after 3 tokens.*without \[DONE\]"):
            await reading
        assert got == toks(0, 3)
        assert fed["b"].requests == []  # the plain node was never asked


async def test_a_resumable_node_gets_no_delivered_text() -> None:
    both = {"resumable": True, "continuable": True}
    async with scripted_federation(("a", PLAIN), ("b", both), config=CONFIG) as fed:
        got, reading = fed.stream(req("cont-3"))
        await cut_after(fed, "a", got, 2)
        second, r2 = await fed.next_request()
        assert (second.node, r2.resume_from, r2.delivered) == ("b", 2, b"")
        await second.partial(r2, 2, toks(2, 4))
        await second.final(r2, 4)
        await reading
        assert got == toks(0, 4)


@pytest.mark.parametrize("refusal", [wire.ERR_CANNOT_CONTINUE, wire.ERR_BAD_INPUT])
async def test_a_refused_continuation_ends_with_the_real_cause(refusal: str) -> None:
    async with scripted_federation(("a", PLAIN), ("b", CONTINUABLE), config=CONFIG) as fed:
        got, reading = fed.stream(req("cont-4"))
        await cut_after(fed, "a", got, 3)
        second, r2 = await fed.next_request()
        assert second.node == "b" and r2.delivered == b"t0t1t2"
        await second.error(r2, refusal, "HTTP 400: assistant prefill is not supported")
        with pytest.raises(StreamInterruptedError) as info:
            await reading
        text = str(info.value)
        assert "interrupted after 3 tokens" in text and "without [DONE]" in text
        assert "node b could not continue it" in text
        assert "HTTP 400" not in text and "prefill" not in text
        assert got == toks(0, 3)  # nothing shortened silently, nothing added
        # Not b's fault: its health and breaker are untouched.
        assert fed.gw.health.status(NodeId("b")).consecutive_failures == 0
        assert fed.gw.health.status(NodeId("a")).consecutive_failures == 1


async def test_a_continuation_that_fails_is_named_after_the_cut_never_instead() -> None:
    async with scripted_federation(("a", PLAIN), ("b", CONTINUABLE), config=CONFIG) as fed:
        got, reading = fed.stream(req("cont-7"))
        await cut_after(fed, "a", got, 3)
        second, r2 = await fed.next_request()
        await second.error(r2, wire.ERR_BACKEND, "sent no first token within 1s")
        with pytest.raises(StreamInterruptedError) as info:
            await reading
        text = str(info.value)
        assert text.index("without [DONE]") < text.index("; continuing it failed: ") < text.index(
            "sent no first token"
        ), text
        # A real failure of b's: it counts against b, unlike a refusal.
        assert fed.gw.health.status(NodeId("b")).consecutive_failures == 1


async def test_a_refusal_moves_the_continuation_to_another_continuable_node() -> None:
    nodes = (("a", PLAIN), ("b", CONTINUABLE), ("c", CONTINUABLE))
    async with scripted_federation(*nodes, config=CONFIG) as fed:
        got, reading = fed.stream(req("cont-5"))
        await cut_after(fed, "a", got, 3)
        second, r2 = await fed.next_request()
        await second.error(r2, wire.ERR_CANNOT_CONTINUE)
        third, r3 = await fed.next_request()
        assert {second.node, third.node} == {"b", "c"}
        assert (r3.resume_from, r3.delivered) == (3, b"t0t1t2")
        await third.partial(r3, 3, toks(3, 5))
        await third.final(r3, 5)
        await reading
        assert got == toks(0, 5)


async def test_past_the_stream_buffer_bound_a_stream_is_not_continued() -> None:
    small = GatewayConfig(
        request_timeout=30.0, retry_delay=0.0, monitor_interval=0.005, stream_buffer=4
    )
    async with scripted_federation(("a", PLAIN), ("b", CONTINUABLE), config=small) as fed:
        got, reading = fed.stream(req("cont-6"))
        await cut_after(fed, "a", got, 5)  # one token past the bound of 4
        with pytest.raises(StreamInterruptedError, match=r"after 5 tokens.*past what a contin"):
            await reading
        assert fed["b"].requests == []


# ------------------------------------------------- real workers, in process


class _Words:
    """Ten words, continued from the delivered text; fails after ``cut`` words when set."""

    resumable = False
    continuable = True

    def __init__(self, cut: int | None = None) -> None:
        self.cut = cut
        self.seen: list[tuple[int, bytes]] = []  # (resume_from, delivered) per request

    async def generate(self, request: BackendRequest) -> AsyncIterator[list[bytes]]:
        self.seen.append((request.resume_from, request.delivered))
        start = len(request.delivered.split())
        for i in range(start, 10):
            if i == self.cut:
                raise backend_failure("upstream ended the stream without [DONE] (truncated)")
            yield [b"w%d " % i]
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        return None


async def test_a_worker_with_a_continuable_backend_continues_a_stream_cut_elsewhere() -> None:
    cutter, continuer = _Words(cut=4), _Words()
    async with federation(
        {"node": "a", "backend_obj": cutter}, {"node": "b", "backend_obj": continuer}
    ) as (gw, _):
        assert {w["node"] for w in gw.workers()} == {"a", "b"}
        for _ in range(5):  # the first attempt goes to a: b's breaker is open until then
            gw.breaker.record_failure(NodeId("b"))
        agen = gw.infer_stream(req("inproc-1"))
        got = [await agen.__anext__()]
        gw.breaker.reset(NodeId("b"))
        got += [t async for t in agen]
    assert b"".join(got) == b"".join(b"w%d " % i for i in range(10))
    assert cutter.seen == [(0, b"")]
    assert continuer.seen == [(4, b"w0 w1 w2 w3 ")]  # numbered from 4, from the text
