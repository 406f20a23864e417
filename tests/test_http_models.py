"""Model names at the HTTP front door, against real worker PROCESSES (SPEC §6).

Aliases with ordered fallbacks and the move to a larger context window,
``/v1/models`` listing them, and real ``/v1/embeddings``, all through the
official ``openai`` SDK against a real gateway and ``fedgate worker``
processes. Context windows are the synthetic workers' ``--context-window``:
a prompt costs one token per 4 characters, plus the tokens it asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from procs import Fleet

from fedgate import GatewayBuilder, GatewayConfig, HealthChecker, HealthConfig, PrivacyLevel, Region
from fedgate.gateway.http import HttpConfig, HttpFront
from fedgate.gateway.models import Alias, ModelSpec, ModelTable
from fedgate.worker.backends.synthetic import synthetic_embedding, synthetic_output

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

HB = 0.1
TABLE = ModelTable(
    (
        Alias("chat", ("small", "gone", "big")),
        Alias("private", ("small", "big")),
    ),
    (ModelSpec("small", 64), ModelSpec("gone", 100_000), ModelSpec("big", 1024)),
)


@contextlib.asynccontextmanager
async def front_door(tmp_path: Path) -> AsyncIterator[tuple[Any, HttpFront, Fleet]]:
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=10.0, retry_delay=0.01))
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=10)))
        .regions(Region("eu-west-1", PrivacyLevel.CONFIDENTIAL))
        .build()
    )
    async with gateway:
        front = HttpFront(gateway, HttpConfig(listen="127.0.0.1:0"), models=TABLE)
        async with front:
            with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path) as fleet:
                try:
                    yield gateway, front, fleet
                except BaseException:
                    print(fleet.logs())
                    raise


def client(front: HttpFront) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key="t", max_retries=0)


def ask(model: str, chars: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "x" * chars}],
        "max_tokens": max_tokens,
    }


async def test_an_alias_falls_back_in_order_and_to_a_larger_context_window(
    tmp_path: Path,
) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        # Two nodes of the small model: a context error must not try the second.
        fleet.start("small-1", "us-east-1", "--context-window", "64", model="small")
        fleet.start("small-2", "us-east-1", "--context-window", "64", model="small")
        fleet.start("big-1", "eu-west-1", "--context-window", "1024", model="big")
        await fleet.wait_registered(gw, "small-1", "small-2", "big-1")
        c = client(front)

        # Fits the small window (10 + 4 tokens): the first model answers.
        raw = await c.chat.completions.with_raw_response.create(**ask("chat", 40, 4))
        done = raw.parse()
        assert done.model == "small" and raw.headers["x-fedgate-model"] == "small"
        assert done.choices[0].message.content == synthetic_output(done.id, 4).decode()

        # 100 + 4 tokens: longer than small's 64; "gone" has no worker; big answers.
        retries = gw.stats().retries
        raw = await c.chat.completions.with_raw_response.create(**ask("chat", 400, 4))
        done = raw.parse()
        assert done.model == "big" and raw.headers["x-fedgate-node"] == "big-1"
        assert raw.headers["x-fedgate-attempts"] == "1"
        assert done.choices[0].message.content == synthetic_output(done.id, 4).decode()
        assert gw.stats().retries == retries, "the too-long request was retried on small"

        # Streaming: the fallback happens before the first byte; the last chunk says who.
        stream = await c.chat.completions.create(**ask("chat", 400, 30), stream=True)
        text, last = [], None
        async for part in stream:
            text.append(part.choices[0].delta.content or "")
            last = part
        assert last is not None and last.model == "big"
        assert "".join(text) == synthetic_output(last.id, 30).decode()
        assert (last.model_extra or {})["x_fedgate"]["model"] == "big"

        # Longer than every window (2000 + 4 tokens): OpenAI's context_length_exceeded.
        with pytest.raises(openai.BadRequestError) as too_long:
            await c.chat.completions.create(**ask("chat", 8000, 4))
        assert too_long.value.status_code == 400
        assert too_long.value.code == "context_length_exceeded"
        assert "small (64), big (1024)" in too_long.value.message
        # A catalog model named directly has no fallback: its own context error.
        with pytest.raises(openai.BadRequestError) as direct:
            await c.chat.completions.create(**ask("small", 400, 4))
        assert direct.value.code == "context_length_exceeded"
        assert gw.stats().retries == retries

        # No region of small's is cleared for CONFIDENTIAL: the alias moves on to big.
        done = await c.chat.completions.create(
            **ask("private", 8, 3), extra_headers={"x-fedgate-privacy": "confidential"}
        )
        assert done.model == "big"

        # /v1/models: the catalog with its windows, and the aliases with their models.
        listed = {m.id: m.model_dump() for m in (await c.models.list()).data}
        assert listed["small"]["context_window"] == 64 and listed["small"]["nodes"] == 2
        assert listed["chat"]["models"] == ["small", "gone", "big"]
        assert listed["chat"]["live_models"] == ["small", "big"]
        assert listed["private"]["alias"] is True

        # The larger model is down: not "too long" (it would fit), but "come back later".
        fleet.kill("big-1")
        await fleet.wait_lost(gw, "big-1")
        with pytest.raises(openai.InternalServerError) as down:
            await c.chat.completions.create(**ask("chat", 400, 4))
        assert down.value.status_code == 503 and "'big'" in down.value.message
        await c.close()


async def test_embeddings_through_the_sdk(tmp_path: Path) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        fleet.start("e", "us-east-1", model="embedder", capability="embed")
        fleet.start("g", "us-east-1", model="writer")
        await fleet.wait_registered(gw, "e", "g")
        c = client(front)
        texts = ["the cat", "sat on", "the mat"]
        # The SDK asks for base64 by default and decodes it: float32 survives exactly.
        raw = await c.embeddings.with_raw_response.create(model="embedder", input=texts)
        got = raw.parse()
        assert got.model == "embedder" and raw.headers["x-fedgate-node"] == "e"
        assert [d.embedding for d in got.data] == [synthetic_embedding(t) for t in texts]
        assert [d.index for d in got.data] == [0, 1, 2]
        assert got.usage.prompt_tokens == 6
        one = await c.embeddings.create(
            model="embedder", input="the cat", encoding_format="float", dimensions=40
        )
        assert one.data[0].embedding == synthetic_embedding("the cat", 40)

        # A model without the embed capability, and bad input, are typed errors.
        with pytest.raises(openai.APIStatusError) as wrong:
            await c.embeddings.create(model="writer", input="x")
        assert wrong.value.status_code == 503
        with pytest.raises(openai.BadRequestError):
            await c.embeddings.create(model="embedder", input=[])
        with pytest.raises(openai.NotFoundError):
            await c.embeddings.create(model="nobody", input="x")
        await c.close()


async def test_parallel_alias_requests_each_get_one_answer(tmp_path: Path) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        fleet.start("small-1", "us-east-1", "--context-window", "64", model="small")
        fleet.start("big-1", "eu-west-1", "--context-window", "1024", model="big")
        await fleet.wait_registered(gw, "small-1", "big-1")
        c = client(front)
        asks = [ask("chat", 400 if i % 2 else 40, 3) for i in range(20)]
        done = await asyncio.gather(*(c.chat.completions.create(**a) for a in asks))
        assert [d.model for d in done] == ["big" if i % 2 else "small" for i in range(20)]
        for d in done:
            assert d.choices[0].message.content == synthetic_output(d.id, 3).decode()
        await c.close()
