"""The OpenAI-compatible HTTP front door (SPEC §6) against real worker PROCESSES (R35).

A real gateway on loopback with its :class:`~fedgate.gateway.http.HttpFront`,
``python -m fedgate worker`` processes (:class:`procs.Fleet`), and real
clients: the official ``openai`` SDK (sync in a thread, async, streaming,
its typed errors), a raw-socket HTTP/1.1 client, and ``curl`` against a
``fedgate gateway --http`` process. The answer's ``id`` is the request id, so
every synthetic token is checked against ``synthetic_token(id, i)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from procs import Fleet, _env, free_port, wait_until

from fedgate import GatewayBuilder, GatewayConfig, HealthChecker, HealthConfig, PrivacyLevel, Region
from fedgate.gateway.http import HttpConfig, HttpFront
from fedgate.worker.backends.synthetic import synthetic_output, synthetic_token

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

HB = 0.1
MODEL = "m"


@contextlib.asynccontextmanager
async def front_door(
    tmp_path: Path, *, config: HttpConfig | None = None, regions: tuple[Region, ...] = ()
) -> AsyncIterator[tuple[Any, HttpFront, Fleet]]:
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=10.0, retry_delay=0.01))
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=3)))
        .regions(*regions)
        .build()
    )
    async with gateway:
        front = HttpFront(gateway, config or HttpConfig(listen="127.0.0.1:0"))
        async with front:
            with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path) as fleet:
                try:
                    yield gateway, front, fleet
                except BaseException:
                    print(fleet.logs())
                    raise


def clients(front: HttpFront) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    kw: dict[str, Any] = {"base_url": f"{front.url}/v1", "api_key": "tenant-a", "max_retries": 0}
    return openai.OpenAI(**kw), openai.AsyncOpenAI(**kw)


def chat(n: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": n,
    }


async def test_openai_sdk_sync_async_streaming_and_models(tmp_path: Path) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        fleet.start("a", "us-west-2", "--tokens", "4")
        await fleet.wait_registered(gw, "a")
        sync, aclient = clients(front)

        # Sync SDK in a thread: the gateway runs on this loop.
        raw = await asyncio.to_thread(
            lambda: sync.chat.completions.with_raw_response.create(**chat(7))
        )
        done = raw.parse()
        assert done.choices[0].message.content == synthetic_output(done.id, 7).decode()
        assert done.usage is not None and done.usage.completion_tokens == 7
        assert raw.headers["x-fedgate-node"] == "a"
        assert raw.headers["x-fedgate-region"] == "us-west-2"
        assert raw.headers["x-fedgate-attempts"] == "1"

        done = await aclient.chat.completions.create(**chat(5))
        assert done.choices[0].message.content == synthetic_output(done.id, 5).decode()

        text = await aclient.completions.create(model=MODEL, prompt="hi", max_tokens=3)
        assert text.choices[0].text == synthetic_output(text.id, 3).decode()

        stream = await aclient.chat.completions.create(
            **chat(300), stream=True, stream_options={"include_usage": True}
        )
        pieces: list[str] = []
        finish = None
        rid = None
        usage = None
        async for part in stream:
            rid = part.id
            if not part.choices:  # the usage chunk, last
                usage = part.usage
                continue
            if part.choices[0].delta.content:
                pieces.append(part.choices[0].delta.content)
            finish = part.choices[0].finish_reason or finish
        assert rid is not None and finish == "stop"
        assert usage is not None and usage.completion_tokens == 300
        assert "".join(pieces) == synthetic_output(rid, 300).decode()

        models = await aclient.models.list()
        (only,) = models.data
        assert only.id == MODEL
        extra = only.model_dump()
        assert extra["regions"] == ["us-west-2"] and extra["capabilities"] == ["generate"]
        await aclient.close()
        sync.close()
        assert gw.stats().active_streams == 0


async def test_openai_sdk_typed_errors(tmp_path: Path) -> None:
    regions = (Region("eu-west-1", PrivacyLevel.INTERNAL),)
    async with front_door(tmp_path, regions=regions) as (gw, front, fleet):
        fleet.start("a", "eu-west-1", "--tokens", "4")
        fleet.start("slow", "eu-west-1", "--ttft", "5", model="slow")
        await fleet.wait_registered(gw, "a", "slow")
        _, client = clients(front)

        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=MODEL, messages=[])
        assert bad.value.status_code == 400
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                **chat(3), extra_headers={"x-fedgate-privacy": "TOP-SECRET"}
            )
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(
                **chat(3), extra_headers={"x-fedgate-privacy": "RESTRICTED"}
            )
        assert denied.value.status_code == 403
        assert denied.value.body["code"] == "no_cleared_region"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(**{**chat(3), "model": "nope"})
        with pytest.raises(openai.APIStatusError) as late:
            await client.chat.completions.create(
                **{**chat(3), "model": "slow"}, extra_headers={"x-fedgate-deadline-ms": "200"}
            )
        assert late.value.status_code == 504
        # Streaming: an error before the first token is still the HTTP status.
        with pytest.raises(openai.APIStatusError) as late_stream:
            await client.chat.completions.create(
                **{**chat(3), "model": "slow"},
                stream=True,
                extra_headers={"x-fedgate-deadline-ms": "200"},
            )
        assert late_stream.value.status_code == 504
        fleet.kill("a")
        await fleet.wait_lost(gw, "a")
        fleet.kill("slow")
        await fleet.wait_lost(gw, "slow")
        # The catalog forgets a node only when it deregisters; a dead one is no capacity.
        # A dead node stays in the catalog (it is out of rotation, not deregistered):
        # the model is known, so this is no capacity, not an unknown model.
        assert gw.catalog.has_model(MODEL)
        with pytest.raises(openai.InternalServerError) as none:
            await client.chat.completions.create(**chat(3))
        assert none.value.status_code == 503
        await client.close()


def raw_http(port: int, request: bytes, *, timeout: float = 10.0) -> bytes:
    """One HTTP/1.1 exchange on a plain socket; the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
    return bytes(out)


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close", *extra]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_raw_socket_client_sse_format_and_hostile_bodies(tmp_path: Path) -> None:
    config = HttpConfig(listen="127.0.0.1:0", max_body_bytes=4096)
    async with front_door(tmp_path, config=config) as (gw, front, fleet):
        fleet.start("a", "us-west-2", "--tokens", "4")
        await fleet.wait_registered(gw, "a")
        port = int(front.url.rsplit(":", 1)[1])
        body = json.dumps({**chat(5), "stream": True}).encode()
        answer = await asyncio.to_thread(raw_http, port, post("/v1/chat/completions", body))
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"text/event-stream" in head.lower()
        # Chunked transfer: de-chunk, then split the events.
        data = bytearray()
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            data += rest[:size]
            rest = rest[size + 2 :]
        events = [e for e in data.decode().split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events)
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        rid = chunks[0]["id"]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == synthetic_output(rid, 5).decode()
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert chunks[0]["object"] == "chat.completion.chunk"

        big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 8000 + b'"}]}'
        answer = await asyncio.to_thread(raw_http, port, post("/v1/chat/completions", big))
        assert answer.startswith(b"HTTP/1.1 413")
        answer = await asyncio.to_thread(raw_http, port, post("/v1/chat/completions", b"{nope"))
        assert answer.startswith(b"HTTP/1.1 400")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["type"] == (
            "invalid_request_error"
        )
        answer = await asyncio.to_thread(raw_http, port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n"
                                         b"Connection: close\r\n\r\n")  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 200")
        assert gw.stats().total_requests == 1  # the refused bodies never reached a worker


async def test_r35_client_disconnect_mid_stream_cancels_the_worker(tmp_path: Path) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        fleet.start("a", "us-west-2", "--token-rate", "200")
        await fleet.wait_registered(gw, "a")
        _, client = clients(front)
        stream = await client.chat.completions.create(**chat(10_000), stream=True)
        got = 0
        async for part in stream:
            if part.choices[0].delta.content:
                got += 1
            if got >= 3:
                break
        assert gw.stats().active_streams == 1
        rid = part.id
        await stream.close()  # the connection closes mid-stream
        closed = time.monotonic()
        await wait_until(lambda: gw.stats().active_streams == 0, 5.0, "active streams 0")
        acked = await wait_until(
            lambda: gw.stats().cancels_acknowledged == 1, 5.0, "the worker's CANCEL ack"
        )
        stats = gw.stats()
        assert stats.cancels_sent == 1 and stats.active_requests == 0
        assert stats.failed_requests == 0
        assert synthetic_token(rid, 0)  # the id names the request the worker cancelled
        print(f"\nR35: CANCEL acknowledged {(time.monotonic() - closed) * 1000:.1f} ms "
              f"after the client closed (poll {acked * 1000:.1f} ms)")  # fmt: skip

        # A non-streaming request whose client gives up: cancelled down to the worker too.
        fleet.start("slow", "us-west-2", "--ttft", "30", model="slow")
        await fleet.wait_registered(gw, "slow")
        with pytest.raises(openai.APITimeoutError):
            await client.with_options(timeout=0.5).chat.completions.create(
                **{**chat(3), "model": "slow"}
            )
        await wait_until(lambda: gw.stats().cancels_sent == 2, 5.0, "a second CANCEL")
        await wait_until(lambda: gw.stats().active_requests == 0, 5.0, "no active request")
        await wait_until(lambda: gw.stats().cancels_acknowledged == 2, 5.0, "its CANCEL acked")
        await client.close()


async def test_gateway_process_with_http_answers_curl_or_a_raw_socket(tmp_path: Path) -> None:
    bind_port, http_port = free_port(), free_port()
    argv = [sys.executable, "-m", "fedgate", "gateway", "--bind", f"tcp://127.0.0.1:{bind_port}",
            "--no-telemetry", "--http", f"127.0.0.1:{http_port}", "--heartbeat-interval", "0.1",
            "--log-level", "WARNING"]  # fmt: skip
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        with Fleet(f"tcp://127.0.0.1:{bind_port}", heartbeat_interval=HB, log_dir=tmp_path) as f:
            f.start("a", "us-west-2", "--tokens", "4")

            def ready() -> bool:
                with contextlib.suppress(OSError):
                    return (
                        b" 200 "
                        in raw_http(
                            http_port,
                            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        ).split(b"\r\n", 1)[0]
                    )
                return False

            await wait_until(ready, 30.0, "the gateway process ready on HTTP", every=0.1)
            body = json.dumps(chat(6))
            url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
            if shutil.which("curl"):
                out = subprocess.run(
                    ["curl", "-sS", "-H", "Content-Type: application/json", "-d", body, url],
                    capture_output=True, timeout=20, check=True,
                ).stdout  # fmt: skip
            else:  # CI installs no curl: the same request from a plain socket
                answer = raw_http(http_port, post("/v1/chat/completions", body.encode()))
                out = answer.partition(b"\r\n\r\n")[2]
            done = json.loads(out)
            assert (
                done["choices"][0]["message"]["content"] == synthetic_output(done["id"], 6).decode()
            )
            metrics = raw_http(
                http_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert metrics.startswith(b"HTTP/1.1 200") and b"fedgate_requests" in metrics
    finally:
        proc.terminate()
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


async def test_r34_slowloris_and_idle_clients_are_dropped_and_others_are_served(
    tmp_path: Path,
) -> None:
    config = HttpConfig(listen="127.0.0.1:0", idle_timeout=0.5)
    async with front_door(tmp_path, config=config) as (gw, front, fleet):
        fleet.start("a", "us-west-2", "--tokens", "4")
        await fleet.wait_registered(gw, "a")
        port = int(front.url.rsplit(":", 1)[1])

        async def slowloris(i: int) -> float:
            """Trickle a request head one header at a time: never finishing it."""
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.monotonic()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            try:
                for k in range(200):  # 20 s of trickling if nobody stops it
                    await asyncio.sleep(0.1)
                    writer.write(b"x-slow-%d: %d\r\n" % (k, i))
                    await writer.drain()
                    if reader.at_eof():
                        break
                await asyncio.wait_for(reader.read(), 1.0)
            except (ConnectionError, asyncio.TimeoutError):
                pass
            finally:
                writer.close()
            return time.monotonic() - start

        async def idle() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(reader.read(), 10.0)
            finally:
                writer.close()

        async def slow_body() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post("/v1/chat/completions", b"{" + b" " * 99)[:-99])
            try:
                return await asyncio.wait_for(reader.readline(), 10.0)
            finally:
                writer.close()

        attackers = [asyncio.ensure_future(slowloris(i)) for i in range(20)]
        quiet = asyncio.ensure_future(idle())
        trickle = asyncio.ensure_future(slow_body())
        _, client = clients(front)
        for _ in range(10):  # served throughout
            done = await client.chat.completions.create(**chat(4))
            assert done.choices[0].message.content == synthetic_output(done.id, 4).decode()
        held = await asyncio.wait_for(asyncio.gather(*attackers), 15.0)
        # Dropped after about the idle timeout, long before they would have finished.
        assert max(held) < 10.0, held
        assert await quiet == b""  # closed without an answer
        assert (await trickle).startswith(b"HTTP/1.1 408")
        await client.close()


async def test_r34_a_thousand_idle_connections_neither_block_others_nor_stay(
    tmp_path: Path,
) -> None:
    import resource

    # Both ends live in this process: 2 descriptors per idle connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * 1000 + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        config = HttpConfig(listen="127.0.0.1:0", idle_timeout=2.0)
        async with front_door(tmp_path, config=config) as (gw, front, fleet):
            fleet.start("a", "us-west-2", "--tokens", "4")
            await fleet.wait_registered(gw, "a")
            port = int(front.url.rsplit(":", 1)[1])
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1000)]
            _, client = clients(front)
            for _ in range(20):  # served while a thousand connections sit there
                done = await client.chat.completions.create(**chat(4))
                assert done.choices[0].message.content == synthetic_output(done.id, 4).decode()
            # ... and every idle one is closed by the server, unanswered.
            got = await asyncio.wait_for(
                asyncio.gather(*(reader.read() for reader, _ in idle)), 20.0
            )
            assert set(got) == {b""}
            for _, writer in idle:
                writer.close()
            await client.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_an_error_after_the_first_streamed_byte_is_an_in_band_event(tmp_path: Path) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        # One node that fails after 3 tokens: no node is left to resume on.
        fleet.start("a", "us-west-2", "--tokens", "50", "--fault", "fail-after=3")
        await fleet.wait_registered(gw, "a")
        _, client = clients(front)
        stream = await client.chat.completions.create(**chat(50), stream=True)
        text = []
        with pytest.raises(openai.APIError) as failed:
            async for part in stream:
                text.append(part.choices[0].delta.content or "")
        assert "".join(text) == synthetic_output(part.id, 3).decode()
        assert "fail-after" in str(failed.value) or "interrupt" in str(failed.value).lower()

        port = int(front.url.rsplit(":", 1)[1])
        body = json.dumps({**chat(50), "stream": True}).encode()
        answer = await asyncio.to_thread(raw_http, port, post("/v1/chat/completions", body))
        assert answer.startswith(b"HTTP/1.1 200")
        assert b'data: {"error": ' in answer and b"[DONE]" not in answer
        await client.close()


async def test_a_stream_whose_worker_is_sigkilled_resumes_for_the_sdk(tmp_path: Path) -> None:
    async with front_door(tmp_path) as (gw, front, fleet):
        for node in ("a", "b"):
            fleet.start(node, "us-west-2", "--token-rate", "400")
        await fleet.wait_registered(gw, "a", "b")
        _, client = clients(front)
        text: list[str] = []
        async with client.chat.completions.with_streaming_response.create(
            **chat(400), stream=True
        ) as response:
            serving = response.headers["x-fedgate-node"]
            assert response.headers["x-fedgate-attempts"] == "1"
            rid = None
            last = None
            async for part in await response.parse():
                rid = part.id
                last = part
                text.append(part.choices[0].delta.content or "")
                if len(text) == 3:
                    fleet.kill(serving)  # SIGKILL mid-stream
        # Every token, in order, none twice: resumed on the other node from the next index.
        assert rid is not None
        assert "".join(text) == synthetic_output(rid, 400).decode()
        assert gw.stats().resumes >= 1
        # The headers went out with the first chunk and name the node that died; the
        # last chunk names the node that finished.
        assert last is not None and last.choices[0].finish_reason == "stop"
        served = (last.model_extra or {})["x_fedgate"]
        survivor = ({"a", "b"} - {serving}).pop()
        assert served == {"node": survivor, "region": "us-west-2", "attempts": 2, "model": MODEL}
        await client.close()


@pytest.mark.timeout(120)
async def test_demo_prints_a_curl_line_that_works_while_it_runs(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedgate", "demo", "--no-tui", "--duration", "5",
        "--log-dir", str(tmp_path / "logs"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        curl = None
        while curl is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60.0)).decode()
            assert line, "".join(seen)
            seen.append(line)
            if line.startswith("  curl "):
                curl = line.strip()
        argv = shlex.split(curl)  # the line as a shell would run it
        url, body = argv[2], argv[argv.index("-d") + 1].encode()
        if shutil.which("curl"):
            out = await asyncio.to_thread(
                lambda: subprocess.run(argv, capture_output=True, timeout=20, check=True).stdout
            )
        else:  # CI installs no curl: the same request from a plain socket
            port = int(url.split(":")[2].split("/")[0])
            answer = await asyncio.to_thread(raw_http, port, post("/v1/chat/completions", body))
            out = answer.partition(b"\r\n\r\n")[2]
        done = json.loads(out)
        assert done["model"] == "llama-3-8b" and done["usage"]["completion_tokens"] > 0
        assert (
            done["choices"][0]["message"]["content"]
            == synthetic_output(done["id"], done["usage"]["completion_tokens"]).decode()
        )
        rest = await asyncio.wait_for(proc.stdout.read(), 100.0)
        assert await proc.wait() == 0, "".join(seen) + rest.decode()
        assert b"RESULT: PASS" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
