"""Model names without sockets: the alias fallback's choices, the backends' context windows and
embeddings, and the HTTP answers of their errors (SPEC §6 Model names)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import types

import pytest
from fake_upstream import FakeUpstream, embedding

from fedgate.errors import (
    DeadlineExceededError,
    NoCapacityError,
    PrivacyViolationError,
    WorkerError,
)
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.http import HttpFront, _error_response, answer_of
from fedgate.gateway.models import Alias, Fallback, ModelSpec, ModelTable
from fedgate.transport.protocol import ERR_BAD_INPUT, ERR_CONTEXT_LENGTH, ERR_OVERLOADED
from fedgate.types import Capability
from fedgate.worker.backends.base import BackendRequest
from fedgate.worker.backends.openai import OpenAIBackend, _status_error
from fedgate.worker.backends.synthetic import SyntheticBackend, synthetic_embedding

TABLE = ModelTable(
    (Alias("chat", ("s8k", "n-undeclared", "m8k", "l32k", "xl128k")),),
    (
        ModelSpec("s8k", 8192),
        ModelSpec("m8k", 8192),
        ModelSpec("l32k", 32768),
        ModelSpec("xl128k", 131072),
    ),
)


def too_long(model: str) -> WorkerError:
    return WorkerError(f"{model}: too long", code=ERR_CONTEXT_LENGTH, node_caused=False)


def test_an_alias_tries_its_live_models_in_order_and_skips_dead_ones() -> None:
    live = {"s8k", "l32k", "xl128k"}
    plan = Fallback(TABLE, "chat", live.__contains__)
    assert plan.next() == "s8k"
    assert plan.failed("s8k", NoCapacityError("full"))
    # n-undeclared and m8k have no live worker: never tried.
    assert plan.next() == "l32k"
    assert plan.failed("l32k", PrivacyViolationError("no region cleared"))
    assert plan.next() == "xl128k"
    assert plan.failed("xl128k", NoCapacityError("full"))
    assert plan.next() is None
    assert plan.tried == ["s8k", "l32k", "xl128k"]


def test_a_context_error_moves_to_a_larger_window_never_the_same_or_an_equal_one() -> None:
    plan = Fallback(TABLE, "chat", lambda m: True)
    assert plan.next() == "s8k"
    assert plan.failed("s8k", too_long("s8k"))
    # Not n-undeclared (nothing says it is larger), not m8k (8192 is not larger than 8192).
    assert plan.next() == "l32k"
    assert plan.failed("l32k", too_long("l32k"))
    assert plan.next() == "xl128k"
    assert plan.failed("xl128k", too_long("xl128k"))
    assert plan.next() is None
    final = plan.final_error(too_long("xl128k"))
    assert isinstance(final, WorkerError) and final.code == ERR_CONTEXT_LENGTH
    assert "s8k (8192), l32k (32768), xl128k (131072)" in str(final)


def test_the_window_floor_holds_across_a_skip_for_capacity() -> None:
    # A context error at 8k, then the 32k model is full: the next must still beat 8k.
    table = ModelTable(
        (Alias("a", ("s8k", "l32k", "m4k", "xl128k")),),
        (ModelSpec("s8k", 8192), ModelSpec("l32k", 32768), ModelSpec("m4k", 4096),
         ModelSpec("xl128k", 131072)),
    )  # fmt: skip
    plan = Fallback(table, "a", lambda m: True)
    assert plan.next() == "s8k" and plan.failed("s8k", too_long("s8k"))
    assert plan.next() == "l32k" and plan.failed("l32k", NoCapacityError("full"))
    assert plan.next() == "xl128k"


@pytest.mark.parametrize(
    "exc",
    [
        WorkerError("bad", code=ERR_BAD_INPUT, node_caused=False),
        WorkerError("boom", code="backend"),
        DeadlineExceededError("late"),
        ValueError("bad"),
    ],
)
def test_an_error_another_model_would_not_fix_is_the_answer(exc: Exception) -> None:
    plan = Fallback(TABLE, "chat", lambda m: True)
    assert plan.next() == "s8k"
    assert not plan.failed("s8k", exc)


def test_a_busy_model_passes_the_request_on() -> None:
    plan = Fallback(TABLE, "chat", lambda m: True)
    plan.next()
    assert plan.failed("s8k", WorkerError("429", code=ERR_OVERLOADED, node_caused=False))
    assert plan.next() == "n-undeclared"


def test_a_name_that_is_not_an_alias_is_one_catalog_model() -> None:
    plan = Fallback(TABLE, "s8k", lambda m: True)
    assert plan.next() == "s8k"
    assert plan.failed("s8k", too_long("s8k"))
    assert plan.next() is None
    last = too_long("s8k")
    assert plan.final_error(last) is last  # its own words: no alias to talk about


def test_model_table_rules() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        ModelTable((), (ModelSpec("a", 1), ModelSpec("a", 2)))
    with pytest.raises(ValueError, match="is an alias"):
        ModelTable((Alias("a", ("b",)),), (ModelSpec("a", 1),))
    with pytest.raises(ValueError, match="context_window"):
        ModelSpec("a", 0)
    with pytest.raises(ValueError, match="model names"):
        Alias("a", ())


def test_the_http_answers_of_context_and_busy_errors() -> None:
    err = answer_of(too_long("s8k"))
    assert (err.status, err.code, err.kind) == (400, "context_length_exceeded",
                                                "invalid_request_error")  # fmt: skip
    busy = answer_of(WorkerError("429", code=ERR_OVERLOADED, node_caused=False, retry_after=2.2))
    assert (busy.status, busy.code) == (503, "overloaded")
    assert _error_response(busy).headers["Retry-After"] == "3"  # rounded up, never earlier
    unsaid = answer_of(WorkerError("429", code=ERR_OVERLOADED, node_caused=False))
    assert "Retry-After" not in _error_response(unsaid).headers


# ------------------------------------------------------------------ backends


def chat(content: str, max_tokens: int) -> bytes:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return json.dumps(body).encode()


async def test_the_synthetic_context_window_counts_prompt_and_output() -> None:
    backend = SyntheticBackend(context_window=20)
    fits = BackendRequest("r", "generate", chat("x" * 60, 5))  # 15 + 5 tokens
    assert backend.length(fits) == 5
    over = BackendRequest("r", "generate", chat("x" * 61, 5))  # 16 + 5
    assert backend.complete(over) is None  # the general path reports it, typed
    with pytest.raises(WorkerError) as info:
        async for _ in backend.generate(over):
            pass
    assert (info.value.code, info.value.node_caused) == (ERR_CONTEXT_LENGTH, False)
    assert "maximum context length is 20 tokens" in str(info.value)


async def test_synthetic_embeddings_are_derived_from_each_text() -> None:
    backend = SyntheticBackend()
    body = {"input": ["hello", "world"], "model": "e", "dimensions": 5}
    req = BackendRequest("r", "embed", json.dumps(body).encode(), model="e")
    chunks = [c async for c in backend.generate(req)]
    assert len(chunks) == 1 and len(chunks[0]) == 1
    answer = json.loads(chunks[0][0])
    assert [d["embedding"] for d in answer["data"]] == [
        synthetic_embedding("hello", 5),
        synthetic_embedding("world", 5),
    ]
    assert synthetic_embedding("hello", 5) != synthetic_embedding("world", 5)
    assert answer["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert backend.complete(req) == chunks  # the worker's fast path says the same
    # base64: little-endian float32, exactly the same numbers.
    b64 = {"input": "hello", "encoding_format": "base64"}
    out = json.loads(backend.embed(BackendRequest("r", "embed", json.dumps(b64).encode())))
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == synthetic_embedding("hello")
    for bad in ({"input": []}, {"input": [1]}, {"input": "x", "dimensions": 0},
                {"input": "x", "encoding_format": "hex"}):  # fmt: skip
        with pytest.raises(WorkerError) as info:
            backend.embed(BackendRequest("r", "embed", json.dumps(bad).encode()))
        assert info.value.code == ERR_BAD_INPUT


def test_an_upstream_context_length_400_is_a_context_error() -> None:
    body = json.dumps({"error": {"message": "too long", "code": "context_length_exceeded"}})
    err = _status_error(400, "http://u/v1/chat/completions", body, None)
    assert (err.code, err.node_caused) == (ERR_CONTEXT_LENGTH, False)
    assert "too long (code context_length_exceeded)" in str(err)
    other = json.dumps({"error": {"message": "nope", "code": "invalid_value"}})
    assert _status_error(400, "http://u", other, None).code == ERR_BAD_INPUT


async def test_the_openai_backend_proxies_embeddings_under_the_upstream_name() -> None:
    async with FakeUpstream("ok") as up:
        backend = OpenAIBackend(up.base_url, api_key_env=None, upstream_model="up-embed")
        body = {"model": "catalog-embed", "input": ["ab", "cde"], "encoding_format": "float"}
        req = BackendRequest("r", "embed", json.dumps(body).encode(), model="catalog-embed")
        try:
            chunks = [c async for c in backend.generate(req)]
        finally:
            await backend.aclose()
    answer = json.loads(b"".join(chunks[0]))
    assert [d["embedding"] for d in answer["data"]] == [embedding("ab", 0), embedding("cde", 1)]
    ((attempt),) = up.attempts
    assert (attempt.path, attempt.model) == ("/v1/embeddings", "up-embed")


async def test_the_openai_backend_asks_its_upstream_for_the_upstream_name() -> None:
    async with FakeUpstream("ok") as up:
        backend = OpenAIBackend(up.base_url, api_key_env=None, upstream_model="vendor/Llama-8B")
        req = BackendRequest("r", "generate", chat("hi", 5), model="llama-8b")
        try:
            tokens = [t async for c in backend.generate(req) for t in c]
        finally:
            await backend.aclose()
    assert tokens
    ((attempt),) = up.attempts
    assert (attempt.path, attempt.model) == ("/v1/chat/completions", "vendor/Llama-8B")


async def test_every_model_of_an_alias_shares_the_one_deadline() -> None:
    gateway = types.SimpleNamespace(
        catalog=types.SimpleNamespace(has_model=lambda m: True),
        config=GatewayConfig(request_timeout=10.0),
        tenants=types.SimpleNamespace(keys={}),  # no API keys: the bearer names the tenant
    )
    front = HttpFront(gateway, models=TABLE)  # type: ignore[arg-type]
    obj = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}

    def plan_for(headers: dict[str, str]) -> tuple[Fallback, object]:
        request = types.SimpleNamespace(headers=headers)
        return front._plan(request, obj, b"{}", "rid", Capability.GENERATE)  # type: ignore[arg-type,return-value]

    # No deadline header: the first model gets none (the gateway's own), a later
    # one what is left of request_timeout.
    plan, build = plan_for({})
    assert build(plan.next()).deadline is None  # type: ignore[operator]
    await asyncio.sleep(0.05)
    left = build(plan.next()).deadline  # type: ignore[operator]
    assert left is not None and 0 < left <= 10.0 - 0.05
    # A header deadline already spent by the first model: the next one is not tried.
    plan, build = plan_for({"x-fedgate-deadline-ms": "20"})
    assert build(plan.next()).deadline == 0.02  # type: ignore[operator]
    await asyncio.sleep(0.03)
    with pytest.raises(DeadlineExceededError, match="deadline passed before model"):
        build(plan.next())  # type: ignore[operator]
