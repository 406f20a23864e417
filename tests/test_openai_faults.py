"""The openai backend against each fault class of the fake upstream, in process (R24).

What the worker reports for each fault decides what the gateway does with it
(tests/test_upstream_faults_process.py checks that end to end); here the
backend alone: the error code, whether it counts against the node, the
Retry-After it carries, and that no fault ends as a short success.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from fake_upstream import WORDS, FakeUpstream, answer

from fedgate.errors import WorkerError
from fedgate.transport.protocol import ERR_BACKEND, ERR_BAD_INPUT, ERR_OVERLOADED, ERR_STALL
from fedgate.worker.backends.base import BackendRequest
from fedgate.worker.backends.openai import OpenAIBackend, _seconds


def backend(up: FakeUpstream, **kw: float) -> OpenAIBackend:
    return OpenAIBackend(up.base_url, api_key_env=None, **kw)  # type: ignore[arg-type]


async def run(b: OpenAIBackend, data: bytes = b"say 60 words") -> list[bytes]:
    out: list[bytes] = []
    try:
        chunks: AsyncIterator[list[bytes]] = b.generate(
            BackendRequest("r", "generate", data, model="m")
        )
        async for chunk in chunks:
            out.extend(chunk)
    finally:
        await b.aclose()
    return out


async def failure(up: FakeUpstream, **kw: float) -> tuple[WorkerError, list[bytes]]:
    b = backend(up, **kw)
    got: list[bytes] = []
    with pytest.raises(WorkerError) as info:
        try:
            async for chunk in b.generate(BackendRequest("r", "generate", b"hi", model="m")):
                got.extend(chunk)
        finally:
            await b.aclose()
    return info.value, got


async def test_a_healthy_upstream_streams_the_whole_answer() -> None:
    async with FakeUpstream("ok") as up:
        tokens = await run(backend(up))
    assert b"".join(tokens).decode() == answer() and len(tokens) == WORDS


async def test_429_with_retry_after_is_overloaded_and_carries_the_seconds() -> None:
    async with FakeUpstream("429-retry", retry_after=2.5) as up:
        err, got = await failure(up)
    assert (err.code, err.node_caused, err.retry_after, got) == (ERR_OVERLOADED, False, 2.5, [])


@pytest.mark.parametrize("fault", ["429", "503"])
async def test_busy_without_retry_after_is_overloaded_with_no_seconds(fault: str) -> None:
    async with FakeUpstream(fault) as up:
        err, _ = await failure(up)
    assert (err.code, err.node_caused, err.retry_after) == (ERR_OVERLOADED, False, 0.0)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert _seconds("3") == 3.0
    assert _seconds(None) == _seconds("") == _seconds("soon") == _seconds("-4") == 0.0
    assert _seconds("99999") == 3600.0  # bounded as the wire bounds it
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < _seconds(date) <= 31


@pytest.mark.parametrize("fault", ["500-once", "reset"])
async def test_a_5xx_or_a_reset_counts_against_the_node(fault: str) -> None:
    async with FakeUpstream(fault) as up:
        err, got = await failure(up)
    assert (err.code, err.node_caused, got) == (ERR_BACKEND, True, [])


@pytest.mark.parametrize("status", ["400", "413", "422"])
async def test_the_callers_fault_keeps_the_upstreams_status_reason_and_code(status: str) -> None:
    async with FakeUpstream(status) as up:
        err, _ = await failure(up)
    assert err.code == ERR_BAD_INPUT and not err.node_caused
    assert (
        f"HTTP {status}: fake upstream rejects this input ({status}) (code fake_{status})"
        in str(err)
    )


async def test_no_first_token_fails_at_first_token_timeout() -> None:
    async with FakeUpstream("silent") as up:
        start = time.monotonic()
        err, got = await failure(up, first_token_timeout=0.3)
    assert (err.code, err.node_caused, got) == (ERR_BACKEND, True, [])
    assert "no first token within 0.3s" in str(err)
    assert time.monotonic() - start < 5


async def test_a_stall_after_tokens_is_a_stall_error() -> None:
    async with FakeUpstream("stall", k=5) as up:
        err, got = await failure(up, first_token_timeout=5, stall_timeout=0.4)
    assert (err.code, err.node_caused) == (ERR_STALL, True)
    assert b"".join(got).decode() == answer(0, 5)


@pytest.mark.parametrize("fault", ["cut", "malformed"])
async def test_a_broken_stream_is_an_error_never_a_short_success(fault: str) -> None:
    async with FakeUpstream(fault, k=5) as up:
        err, got = await failure(up)
    assert (err.code, err.node_caused) == (ERR_BACKEND, True)
    assert b"".join(got).decode() == answer(0, 5)
    assert ("without [DONE]" if fault == "cut" else "malformed event") in str(err)


def test_timeouts_must_be_positive_seconds() -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="stall_timeout"):
            OpenAIBackend("http://127.0.0.1:1", stall_timeout=bad)


def test_good_events_before_a_malformed_one_in_the_same_read_are_kept() -> None:
    from fedgate.worker.backends.openai import _SSEParser

    parser = _SSEParser()
    good = 'data: {"choices": [{"delta": {"content": "w0 "}}]}\n\n'
    assert parser.feed(good + good.replace("w0", "w1") + "data: {oops\n\n" + good) == [
        b"w0 ",
        b"w1 ",
    ]
    assert parser.error is not None and parser.error.code == ERR_BACKEND
    assert "malformed event" in str(parser.error)
    assert parser.feed(good) == []  # nothing after the bad event is read
