"""Upstream faults handled by class (R24): real ``openai``-backend workers, a fake upstream.

Two ``fedgate worker --backend openai`` processes serve one model: a cheap
primary in front of a faulty fake upstream (:mod:`fake_upstream`), a dear
fallback in front of a healthy one. The gateway routes by cost, so every
request goes to the primary first while it is eligible. Each test asserts on
what the caller got and on the faulty upstream's own log of the attempts it
received: how many, how far apart.

Run with ``pytest -m process tests/test_upstream_faults_process.py``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
from fake_upstream import WORDS, FakeUpstream, answer
from procs import Fleet

from fedgate import (
    Capability,
    CompositePolicy,
    Gateway,
    GatewayBuilder,
    GatewayConfig,
    HealthChecker,
    HealthConfig,
    InferenceRequest,
    NodeId,
    Region,
    RegionId,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.federation.policy import CostPolicy
from fedgate.gateway.http import HttpConfig, HttpFront
from fedgate.routing._jit import warm_up

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

HB = 0.1
# Heartbeats missed before a node is declared dead: 3 s of silence, which a worker on
# a loaded 2-core machine does not reach by accident (0.5 s it did). Nothing here
# kills a worker, so no test waits on this.
LIVENESS = 30
REGION = "eu-west-1"
RETRY_DELAY = 0.1  # GatewayConfig's default: the first backoff step of an overloaded node
TIMEOUTS = ("--first-token-timeout", "1", "--stall-timeout", "1")
# The fallback's upstream is never silent: its timeouts only have to outlast a loaded
# machine (a refused prefill once took over 1 s to come back, and failed as silence).
FALLBACK_TIMEOUTS = ("--first-token-timeout", "10", "--stall-timeout", "10")


@pytest.fixture(scope="module", autouse=True)
def _quiet_heap() -> Iterator[None]:
    warm_up()
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path, fault: str, fallback: str = "ok", **kw: float
) -> AsyncIterator[tuple[Gateway, FakeUpstream, FakeUpstream]]:
    """A gateway, the cheap primary (faulty upstream) and the dear fallback (``fallback``)."""
    async with FakeUpstream(fault, **kw) as bad, FakeUpstream(fallback) as good:  # type: ignore[arg-type]
        gateway = (
            GatewayBuilder()
            .bind("tcp://127.0.0.1:*")
            .config(GatewayConfig(retry_delay=RETRY_DELAY))
            .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=LIVENESS)))
            .regions(Region(RegionId(REGION)))
            .policy(CompositePolicy([CostPolicy(1.0)]))
            .build()
        )
        async with gateway:
            with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path) as fleet:
                backend = ("--backend", "openai", "--api-key-env", "FEDGATE_TEST_NO_KEY")
                fleet.start("cheap", REGION, *backend, "--base-url", bad.base_url, "--cost",
                            "0.1", *TIMEOUTS)  # fmt: skip
                fleet.start("dear", REGION, *backend, "--base-url", good.base_url, "--cost",
                            "10", *FALLBACK_TIMEOUTS)  # fmt: skip
                try:
                    await fleet.wait_registered(gateway, "cheap", "dear")
                    yield gateway, bad, good
                except BaseException:
                    print(fleet.logs())
                    raise


def req(rid: str) -> InferenceRequest:
    return InferenceRequest(Capability.GENERATE, b"say 60 words", request_id=rid, deadline=15.0)


async def stream_text(gateway: Gateway, rid: str) -> str:
    return b"".join([t async for t in gateway.infer_stream(req(rid))]).decode()


def gaps(up: FakeUpstream) -> list[float]:
    ats = [a.at for a in up.attempts]
    return [b - a for a, b in itertools.pairwise(ats)]


# --------------------------------------------------------------- busy upstream


async def test_r24_retry_after_is_honoured_per_node(tmp_path: Path) -> None:
    async with pair(tmp_path, "429-retry", retry_after=1.5) as (gw, bad, _good):
        first = await gw.infer(req("r0"))
        assert first.output.decode() == answer() and first.node_id == "dear"
        assert [a.outcome for a in bad.attempts] == ["429-retry"]
        # Requests while the Retry-After runs never reach the throttled upstream.
        k = 1
        deadline = time.monotonic() + 10
        while len(bad.attempts) < 2 and time.monotonic() < deadline:
            resp = await gw.infer(req(f"r{k}"))
            assert resp.output.decode() == answer()
            k += 1
        assert len(bad.attempts) == 2, "the primary was never asked again"
        assert k > 3, "too few requests ran inside the Retry-After to show anything"
        # The upstream's clock: it sent the 429 after logging the attempt, so the
        # gap is an upper bound on what the gateway waited, and must still hold.
        assert gaps(bad)[0] >= 1.5


@pytest.mark.parametrize("fault", ["429", "503"])
async def test_r24_persistent_busy_upstream_is_backed_off_with_jitter(
    tmp_path: Path, fault: str
) -> None:
    async with pair(tmp_path, fault) as (gw, bad, _good):
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 2.5:
            resp = await gw.infer(req(f"r{n}"))
            assert resp.output.decode() == answer() and resp.node_id == "dear"
            n += 1
        assert all(a.outcome == fault for a in bad.attempts)
        # One attempt per backoff step: step i lasts at least 0.5 × 0.1 s × 2^i.
        seen = gaps(bad)
        assert len(bad.attempts) >= 2
        for i, gap in enumerate(seen):
            assert gap >= 0.5 * RETRY_DELAY * 2**i, (i, seen)
        assert len(bad.attempts) < n / 2, (len(bad.attempts), n)


# ------------------------------------------------------- transient failures


@pytest.mark.parametrize("fault", ["500-once", "reset"])
async def test_r24_transient_failure_is_answered_elsewhere(tmp_path: Path, fault: str) -> None:
    async with pair(tmp_path, fault) as (gw, bad, good):
        text = await stream_text(gw, "r0")
        assert text == answer()
        assert len(bad.attempts) == 1 and len(good.attempts) == 1


async def test_r24_no_first_token_fails_over_at_first_token_timeout(tmp_path: Path) -> None:
    async with pair(tmp_path, "silent") as (gw, bad, good):
        start = time.monotonic()
        text = await stream_text(gw, "r0")
        took = time.monotonic() - start
        assert text == answer()
        assert len(bad.attempts) == 1 and len(good.attempts) == 1
        # At the 1 s first-token timeout, not at the 15 s deadline.
        assert took < 7.5, took
        # The worker's clock starts a moment before the upstream logs the request.
        assert good.attempts[0].at - bad.attempts[0].at >= 0.9


# ------------------------- broken streams: continued elsewhere, never a short success
# What the primary's worker reports for each (the real cause a caller must hear of
# when no node continues the stream).
CAUSE = {
    "cut": "without [DONE]",
    "stall": "stalled: no data for 1.0s",
    "malformed": "malformed event",
}
BROKEN = [("cut", 40), ("stall", 20), ("malformed", 8)]


@pytest.mark.parametrize(("fault", "k"), BROKEN)
async def test_r24_broken_stream_continues_on_the_fallback_from_the_delivered_text(
    tmp_path: Path, fault: str, k: int
) -> None:
    async with pair(tmp_path, fault, k=k) as (gw, bad, good):
        # A whole answer (infer) is only delivered complete: it comes from the fallback.
        resp = await gw.infer(req("unary"))
        assert resp.output.decode() == answer() and resp.node_id == "dear"
        assert resp.tokens == WORDS  # usage of the attempt that answered
        # A stream past its first token continues on the fallback from what was delivered:
        # one answer, word for word what a healthy upstream gives.
        got = [t async for t in gw.infer_stream(req("stream"))]
        text = b"".join(got).decode()
        assert text == answer(), text
        assert len(got) == WORDS  # every word once: none repeated, none missing
        assert [a.outcome for a in bad.attempts] == [f"{fault}@{k}"] * 2
        # The fallback saw the unary request whole, then exactly one prefill: the
        # k words the caller already had.
        assert [a.prefill for a in good.attempts] == ["", answer(0, k)]
        assert [a.outcome for a in good.attempts] == ["ok", "ok"]


@pytest.mark.parametrize(("fault", "k"), BROKEN)
async def test_r24_refused_prefill_ends_with_the_real_cause_never_shortened(
    tmp_path: Path, fault: str, k: int
) -> None:
    async with pair(tmp_path, fault, "prefill-refused", k=k) as (gw, bad, good):
        got: list[bytes] = []
        with pytest.raises(StreamInterruptedError) as info:
            async for token in gw.infer_stream(req("stream")):
                got.append(token)
        err = str(info.value)
        assert b"".join(got).decode() == answer(0, k)  # nothing silently shortened or added
        assert f"interrupted after {k} tokens" in err and CAUSE[fault] in err, err
        assert "node dear could not continue it" in err, err
        assert "HTTP 400" not in err and "prefill" not in err, err  # never the refusal itself
        assert [a.outcome for a in bad.attempts] == [f"{fault}@{k}"]
        # The fallback was asked once, with the delivered text, and refused it.
        assert [(a.outcome, a.prefill) for a in good.attempts] == [("400-prefill", answer(0, k))]
        # The refusal is nobody's fault: it counts against the primary only.
        assert gw.health.status(NodeId("dear")).consecutive_failures == 0
        assert gw.health.status(NodeId("cheap")).consecutive_failures == 1


# ----------------------------------------------------------- the caller's fault


@pytest.mark.parametrize("status", ["400", "413", "422"])
async def test_r24_callers_fault_is_not_retried_and_keeps_its_reason(
    tmp_path: Path, status: str
) -> None:
    async with pair(tmp_path, status) as (gw, bad, good):
        with pytest.raises(WorkerError) as info:
            await gw.infer(req("r0"))
        err = info.value
        assert err.code == "bad_input" and not err.node_caused
        assert f"HTTP {status}" in str(err)
        assert f"fake upstream rejects this input ({status}) (code fake_{status})" in str(err)
        assert err.upstream_code == f"fake_{status}"  # its own field, across the wire
        assert len(bad.attempts) == 1 and good.attempts == []


# ------------------------------------------------ the same, through the front door


async def sse_text(front: HttpFront, parts: list[str]) -> str:
    """One streamed chat through the HTTP front door and the openai SDK: its text
    (each content delta is appended to ``parts`` as it arrives)."""
    client = openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key="t", max_retries=0)
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "say 60 words"}], stream=True
    )
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
    finally:
        await client.close()
    return "".join(parts)


async def test_r24_http_caller_reads_one_answer_or_the_cut_in_band(tmp_path: Path) -> None:
    async with pair(tmp_path, "cut", k=40) as (gw, _bad, good):
        async with HttpFront(gw, HttpConfig(listen="127.0.0.1:0")) as front:
            assert await sse_text(front, []) == answer()
        assert [a.prefill for a in good.attempts] == [answer(0, 40)]
        # The caller's JSON body went through whole: the prefill follows its messages.
        assert good.attempts[0].body["messages"] == [
            {"role": "user", "content": "say 60 words"},
            {"role": "assistant", "content": answer(0, 40)},
        ]
    async with pair(tmp_path, "cut", "prefill-refused", k=40) as (gw, _bad, good):
        async with HttpFront(gw, HttpConfig(listen="127.0.0.1:0")) as front:
            parts: list[str] = []
            with pytest.raises(openai.APIError) as info:
                await sse_text(front, parts)
        assert "".join(parts) == answer(0, 40)  # nothing silently shortened or added
        err = str(info.value)
        assert "interrupted after 40 tokens" in err and "without [DONE]" in err, err
        assert "HTTP 400" not in err and "prefill" not in err, err
        assert [a.outcome for a in good.attempts] == ["400-prefill"]
