"""Tenants through the HTTP front door, with a real worker process and the openai SDK (R32).

An API key of ``[tenants.NAME]`` is the tenant's credential: a wrong key is
the SDK's ``AuthenticationError`` (401), a request over quota its
``RateLimitError`` (429) with a ``Retry-After`` that, when waited, admits the
retry. A ``fedgate gateway`` process reads the same ``[tenants]`` from TOML,
and SIGHUP rotates its keys at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from procs import Fleet, _env, free_port, wait_until

from fedgate import GatewayBuilder, GatewayConfig, HealthChecker, HealthConfig
from fedgate.gateway.http import HttpConfig, HttpFront
from fedgate.gateway.tenants import TenantLimits, Tenants
from fedgate.worker.backends.synthetic import synthetic_output

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

HB = 0.1
MODEL = "m"
TENANTS = Tenants(
    {
        "acme": TenantLimits(api_keys=("sk-acme-1",), requests_per_s=0.5, request_burst=2),
        "globex": TenantLimits(api_keys=("sk-globex",), max_concurrent=1),
    }
)


@contextlib.asynccontextmanager
async def front_door(tmp_path: Path) -> AsyncIterator[tuple[Any, HttpFront, Fleet]]:
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=10.0, retry_delay=0.01))
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=3)))
        .tenants(TENANTS)
        .build()
    )
    async with gateway, HttpFront(gateway, HttpConfig(listen="127.0.0.1:0")) as front:
        with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path) as fleet:
            try:
                yield gateway, front, fleet
            except BaseException:
                print(fleet.logs())
                raise


def client(front: HttpFront, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key=key, max_retries=0)


def chat(n: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": n}


async def test_api_keys_name_tenants_and_quotas_answer_429_with_a_working_retry_after(
    tmp_path: Path,
) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        fleet.start("a", "us-west-2", "--tokens", "4")
        await fleet.wait_registered(gw, "a")

        wrong, acme, globex = (client(front, k) for k in ("sk-wrong", "sk-acme-1", "sk-globex"))
        with pytest.raises(openai.AuthenticationError) as auth:
            await wrong.chat.completions.create(**chat(3))
        assert auth.value.status_code == 401
        assert auth.value.code == "invalid_api_key" and "sk-wrong" not in str(auth.value)

        for _ in range(2):  # the burst
            done = await acme.chat.completions.create(**chat(3))
            assert done.choices[0].message.content == synthetic_output(done.id, 3).decode()
        before = gw.stats().per_node["a"].requests
        with pytest.raises(openai.RateLimitError) as limited:
            await acme.chat.completions.create(**chat(3))
        err = limited.value
        assert err.status_code == 429
        body = err.body
        assert isinstance(body, dict) and body["type"] == "rate_limit_exceeded"
        assert body["code"] == "quota_requests"
        retry_after = int(err.response.headers["retry-after"])
        assert retry_after == 2  # 1 / 0.5 requests per second
        assert gw.stats().per_node["a"].requests == before  # the worker never saw it
        # Another tenant is unaffected, and its own quota is its own.
        await globex.chat.completions.create(**chat(3))
        await asyncio.sleep(retry_after)
        done = await acme.chat.completions.create(**chat(3))  # waited as told: admitted
        assert done.usage is not None and done.usage.completion_tokens == 3

        # A stream over quota is a plain 429 too (it fails before its first token).
        with pytest.raises(openai.RateLimitError):
            await acme.chat.completions.create(**chat(3), stream=True)
        rows = {t.tenant: t for t in gw.stats().tenants}
        assert rows["acme"].admitted == 3 and rows["acme"].rejected["requests"] == 2
        assert rows["globex"].admitted == 1 and "default" not in rows
        for sdk in (wrong, acme, globex):
            await sdk.close()

        # The credential is checked before the body is read: a bad body with a
        # wrong key is a 401, not a 400.
        def post(key: str) -> tuple[int, dict[str, Any]]:
            http = urllib.request.Request(
                f"{front.url}/v1/chat/completions", data=b"{not json", method="POST",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(http, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, json.loads(exc.read())

        status, body = await asyncio.to_thread(post, "sk-wrong")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, body = await asyncio.to_thread(post, "sk-globex")
        assert status == 400


async def test_a_gateway_process_reads_tenants_from_its_toml(tmp_path: Path) -> None:
    port, http = free_port(), free_port()
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nbind = "tcp://127.0.0.1:{port}"\ntelemetry = false\n'
        f'[http]\nlisten = "127.0.0.1:{http}"\n'
        '[tenants.acme]\napi_keys = ["sk-acme"]\nrequests_per_s = 0.2\nrequest_burst = 1\n'
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fedgate", "gateway", "--config", str(config)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with Fleet(f"tcp://127.0.0.1:{port}", heartbeat_interval=HB, log_dir=tmp_path) as fleet:
            fleet.start("a", "us-west-2", "--tokens", "2")
            sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="sk-acme",
                                max_retries=0)  # fmt: skip

            def ready() -> bool:
                try:
                    return bool(sdk.models.list().data)
                except openai.APIError:
                    return False

            await wait_until(ready, 20.0, "the gateway serving model m", every=0.2)
            await asyncio.to_thread(lambda: sdk.chat.completions.create(**chat(2)))
            t0 = time.monotonic()
            with pytest.raises(openai.RateLimitError) as limited:
                await asyncio.to_thread(lambda: sdk.chat.completions.create(**chat(2)))
            assert limited.value.response.headers["retry-after"] in ("4", "5")
            wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="sk-x",
                                  max_retries=0)  # fmt: skip
            with pytest.raises(openai.AuthenticationError):
                await asyncio.to_thread(lambda: wrong.chat.completions.create(**chat(2)))
            assert time.monotonic() - t0 < 4.0

            # SIGHUP rotates the key at once: the old one is refused, the new one served.
            config.write_text(config.read_text().replace('"sk-acme"', '"sk-acme-2"'))
            gateway.send_signal(signal.SIGHUP)
            rotated = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1",
                                    api_key="sk-acme-2", max_retries=0)  # fmt: skip

            def refused_as(sdk: openai.OpenAI, kind: type[Exception]) -> bool:
                try:
                    sdk.chat.completions.create(**chat(2))
                except kind:
                    return True
                except openai.APIError:
                    return False
                return False

            await wait_until(lambda: refused_as(sdk, openai.AuthenticationError), 10.0,
                             "the old key refused after SIGHUP", every=0.1)  # fmt: skip
            # The new key is the same tenant: its bucket was not refilled by the reload.
            assert refused_as(rotated, openai.RateLimitError)
            for client in (sdk, wrong, rotated):
                client.close()
    finally:
        gateway.terminate()
        out, _ = gateway.communicate(timeout=10)
        if gateway.returncode not in (0, -15):
            print(out.decode(errors="replace"))
