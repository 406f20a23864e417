"""Upstream faults seen from the HTTP side: an ``openai`` SDK client, the front door, real
``--backend openai`` worker processes and the fake upstream (R24, SPEC §6).

Two workers serve model ``m``: a cheap one in front of a faulty upstream, a
dear one in front of a healthy upstream; the gateway routes by cost, so the
cheap one is asked first. Each worker names the model differently to its
upstream (``--upstream-model``), and the upstreams' own logs show the names
they were asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from fake_upstream import FakeUpstream, answer, embedding
from procs import Fleet

from fedgate import (
    CompositePolicy,
    GatewayBuilder,
    GatewayConfig,
    HealthChecker,
    HealthConfig,
    Region,
    RegionId,
)
from fedgate.federation.policy import CostPolicy
from fedgate.gateway.http import HttpConfig, HttpFront
from fedgate.gateway.models import Alias, ModelSpec, ModelTable
from fedgate.worker.backends.synthetic import synthetic_output

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

HB = 0.1
REGION = "eu-west-1"
OPENAI = ("--backend", "openai", "--api-key-env", "FEDGATE_TEST_NO_KEY",
          "--first-token-timeout", "2", "--stall-timeout", "2")  # fmt: skip
MESSAGES = [{"role": "user", "content": "say 60 words"}]


@contextlib.asynccontextmanager
async def door(
    tmp_path: Path, fault: str, *, fallback: bool = True, capability: str = "generate", **kw: Any
) -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeUpstream, FakeUpstream]]:
    async with FakeUpstream(fault, **kw) as bad, FakeUpstream("ok") as good:
        gateway = (
            GatewayBuilder()
            .bind("tcp://127.0.0.1:*")
            .config(GatewayConfig(request_timeout=10.0, retry_delay=0.05))
            .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=10)))
            .regions(Region(RegionId(REGION)))
            .policy(CompositePolicy([CostPolicy(1.0)]))
            .build()
        )
        async with gateway, HttpFront(gateway, HttpConfig(listen="127.0.0.1:0")) as front:
            with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path,
                       capability=capability) as fleet:  # fmt: skip
                fleet.start("cheap", REGION, *OPENAI, "--base-url", bad.base_url,
                            "--cost", "0.1", "--upstream-model", "up-cheap")  # fmt: skip
                nodes = ["cheap"]
                if fallback:
                    fleet.start("dear", REGION, *OPENAI, "--base-url", good.base_url,
                                "--cost", "10", "--upstream-model", "up-dear")  # fmt: skip
                    nodes.append("dear")
                client = openai.AsyncOpenAI(
                    base_url=f"{front.url}/v1", api_key="t", max_retries=0
                )
                try:
                    await fleet.wait_registered(gateway, *nodes)
                    yield client, bad, good
                except BaseException:
                    print(fleet.logs())
                    raise
                finally:
                    await client.close()


@pytest.mark.parametrize("fault", ["429-retry", "500-once"])
async def test_a_busy_or_failing_upstream_gets_the_client_the_fallbacks_answer(
    tmp_path: Path, fault: str
) -> None:
    async with door(tmp_path, fault, retry_after=5) as (client, bad, good):
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        done = raw.parse()
        assert done.choices[0].message.content == answer()
        assert raw.headers["x-fedgate-node"] == "dear"
        assert raw.headers["x-fedgate-attempts"] == "2"
        met = {"429-retry": "429-retry", "500-once": "500"}[fault]
        assert [a.outcome for a in bad.attempts] == [met]
        # --upstream-model: each upstream was asked for its own name, not the catalog's.
        assert [a.model for a in bad.attempts] == ["up-cheap"]
        assert [a.model for a in good.attempts] == ["up-dear"]


@pytest.mark.parametrize("status", ["400", "422"])
async def test_the_callers_fault_reaches_the_sdk_as_a_bad_request(
    tmp_path: Path, status: str
) -> None:
    async with door(tmp_path, status) as (client, bad, good):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.status_code == 400
        # The upstream's own status, reason and code, unchanged.
        assert f"HTTP {status}: fake upstream rejects this input ({status})" in info.value.message
        assert f"fake_{status}" in info.value.message
        assert len(bad.attempts) == 1 and good.attempts == []  # no other node will like it more


async def test_every_node_busy_is_503_with_the_upstreams_retry_after(tmp_path: Path) -> None:
    async with door(tmp_path, "429-retry", fallback=False, retry_after=30) as (client, bad, _):
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.status_code == 503 and info.value.code == "overloaded"
        assert info.value.response.headers["retry-after"] == "30"
        # A stream fails before its first byte: the same plain answer.
        with pytest.raises(openai.InternalServerError) as streamed:
            await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert streamed.value.response.headers["retry-after"] in ("29", "30")
        # The cooling node was not asked again inside its Retry-After.
        assert [a.outcome for a in bad.attempts] == ["429-retry"]


async def test_embeddings_through_an_openai_worker(tmp_path: Path) -> None:
    async with door(tmp_path, "ok", fallback=False, capability="embed") as (client, up, _):
        got = await client.embeddings.create(model="m", input=["ab", "cde"])
        assert [d.embedding for d in got.data] == [embedding("ab", 0), embedding("cde", 1)]
        assert got.model == "m"
        ((attempt),) = up.attempts
        assert (attempt.path, attempt.model) == ("/v1/embeddings", "up-cheap")


async def test_an_upstreams_context_length_error_moves_an_alias_to_a_larger_model(
    tmp_path: Path,
) -> None:
    # An upstream that finds every prompt too long, as OpenAI and vLLM say it.
    asked: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        asked.append((await request.json())["model"])
        error = {"message": "This model's maximum context length is 8 tokens",
                 "type": "invalid_request_error", "param": "messages",
                 "code": "context_length_exceeded"}  # fmt: skip
        return web.json_response({"error": error}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    table = ModelTable(
        (Alias("chat", ("small", "big")),), (ModelSpec("small", 8), ModelSpec("big", 4096))
    )
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=10.0, retry_delay=0.05))
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=10)))
        .build()
    )
    try:
        front = HttpFront(gateway, HttpConfig(listen="127.0.0.1:0"), models=table)
        async with gateway, front:
            with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path) as fleet:
                for node in ("small-1", "small-2"):  # two nodes: neither is asked twice
                    fleet.start(node, REGION, *OPENAI, "--base-url", f"http://127.0.0.1:{port}",
                                "--upstream-model", "vendor/small", model="small")  # fmt: skip
                fleet.start("big-1", REGION, model="big")
                client = openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key="t",
                                            max_retries=0)  # fmt: skip
                try:
                    await fleet.wait_registered(gateway, "small-1", "small-2", "big-1")
                    raw = await client.chat.completions.with_raw_response.create(
                        model="chat", messages=MESSAGES, max_tokens=5
                    )
                    done = raw.parse()
                    assert done.model == "big" and raw.headers["x-fedgate-node"] == "big-1"
                    assert done.choices[0].message.content == synthetic_output(done.id, 5).decode()
                    assert asked == ["vendor/small"]  # one attempt on the small model, ever
                    # Asked by its catalog name, the small model answers with the upstream's
                    # own reason, as OpenAI's typed error.
                    with pytest.raises(openai.BadRequestError) as info:
                        await client.chat.completions.create(model="small", messages=MESSAGES)
                    assert info.value.code == "context_length_exceeded"
                    assert "maximum context length is 8 tokens" in info.value.message
                    assert asked == ["vendor/small"] * 2
                except BaseException:
                    print(fleet.logs())
                    raise
                finally:
                    await client.close()
    finally:
        await runner.cleanup()
