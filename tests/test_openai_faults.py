"""The openai backend against each fault class of the fake upstream, in process (R24).

What the worker reports for each fault decides what the gateway does with it
(tests/test_upstream_faults_process.py checks that end to end); here the
backend alone: the error code, whether it counts against the node, the
Retry-After it carries, and that no fault ends as a short success.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator

import pytest
from fake_upstream import WORDS, FakeUpstream, answer

from fedgate.errors import WorkerError
from fedgate.transport.protocol import (
    ERR_BACKEND,
    ERR_BAD_INPUT,
    ERR_CANNOT_CONTINUE,
    ERR_OVERLOADED,
    ERR_STALL,
)
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
    assert err.upstream_code == f"fake_{status}"  # a field of its own, not only in the text


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


# ------------------------------------------------ continuing a stream (prefill)


def continuation(data: bytes, delivered: str) -> BackendRequest:
    """The request a worker builds for a stream continued after ``delivered``."""
    return BackendRequest(
        "r", "generate", data, model="m", resume_from=len(delivered.split()),
        delivered=delivered.encode(),
    )  # fmt: skip


async def continued(up: FakeUpstream, request: BackendRequest) -> list[bytes]:
    b = backend(up)
    out: list[bytes] = []
    try:
        async for chunk in b.generate(request):
            out.extend(chunk)
    finally:
        await b.aclose()
    return out


async def test_a_chat_continues_from_an_assistant_prefill_with_vllms_hints() -> None:
    assert OpenAIBackend.continuable is True and OpenAIBackend.resumable is False
    async with FakeUpstream("ok") as up:
        tokens = await continued(up, continuation(b"say 60 words", answer(0, 40)))
    assert b"".join(tokens).decode() == answer(40)  # only what follows, nothing repeated
    (seen,) = up.attempts
    assert seen.prefill == answer(0, 40)
    assert seen.body["messages"] == [
        {"role": "user", "content": "say 60 words"},
        {"role": "assistant", "content": answer(0, 40)},
    ]
    assert (seen.body["continue_final_message"], seen.body["add_generation_prompt"]) == (
        True,
        False,
    )


async def test_the_callers_own_prefill_is_extended_not_repeated() -> None:
    user, own = {"role": "user", "content": "go"}, {"role": "assistant", "content": "w0 "}
    body = json.dumps({"messages": [user, own]}).encode()
    async with FakeUpstream("ok") as up:
        tokens = await continued(up, continuation(body, answer(1, 10)))
    assert b"".join(tokens).decode() == answer(10)
    messages = up.attempts[0].body["messages"]
    assert isinstance(messages, list) and len(messages) == 2
    assert messages[-1] == {"role": "assistant", "content": answer(0, 10)}


async def test_a_completion_continues_from_its_prompt_and_text() -> None:
    body = b'{"prompt": "count: ", "max_tokens": 60}'
    async with FakeUpstream("ok") as up:
        tokens = await continued(up, continuation(body, answer(0, 25)))
    assert b"".join(tokens).decode() == answer(25)
    seen = up.attempts[0]
    assert seen.path == "/v1/completions" and seen.body["prompt"] == "count: " + answer(0, 25)
    assert seen.body["max_tokens"] == 35  # what is left of the caller's limit


async def test_a_continuation_past_its_max_tokens_ends_without_asking() -> None:
    body = b'{"prompt": "count: ", "max_tokens": 20}'
    async with FakeUpstream("ok") as up:
        tokens = await continued(up, continuation(body, answer(0, 20)))
    assert tokens == [] and up.attempts == []


async def test_a_refused_prefill_is_cannot_continue_and_nobodys_fault() -> None:
    async with FakeUpstream("prefill-refused") as up:
        # Not a continuation: the same upstream answers in full.
        assert b"".join(await run(backend(up))).decode() == answer()
        with pytest.raises(WorkerError) as info:
            await continued(up, continuation(b"say 60 words", answer(0, 40)))
    err = info.value
    assert (err.code, err.node_caused, err.upstream_code) == (
        ERR_CANNOT_CONTINUE,
        False,
        "fake_400",
    )
    assert [a.outcome for a in up.attempts] == ["ok", "400-prefill"]
    assert up.attempts[1].prefill == answer(0, 40)


async def test_a_continuation_that_cannot_be_sent_is_cannot_continue() -> None:
    async with FakeUpstream("ok") as up:
        for data, delivered in (
            (b'{"prompt": ["a", "b"]}', b"w0 "),  # a batch prompt: no one text to extend
            (b"say 60 words", b"w0 \xe2\x82"),  # not UTF-8: cut inside a character
        ):
            request = BackendRequest(
                "r", "generate", data, model="m", resume_from=1, delivered=delivered
            )
            with pytest.raises(WorkerError) as info:
                await continued(up, request)
            assert info.value.code == ERR_CANNOT_CONTINUE and not info.value.node_caused
        assert up.attempts == []


async def test_values_only_pythons_json_reads_reach_the_upstream_as_written() -> None:
    # The hot path parses with msgspec; what it refuses (NaN, a float past its range,
    # a lone surrogate) must still go out as json.dumps wrote it, never as null.
    body = (
        b'{"messages": [{"role": "user", "content": "hi"}],'
        b' "temperature": NaN, "top_p": 1e400, "user": "\\ud800"}'
    )
    async with FakeUpstream("ok") as up:
        tokens = await run(backend(up), body)
    assert b"".join(tokens).decode() == answer()
    (seen,) = up.attempts
    assert math.isnan(seen.body["temperature"])  # type: ignore[arg-type]
    assert (seen.body["top_p"], seen.body["user"]) == (math.inf, "\ud800")
