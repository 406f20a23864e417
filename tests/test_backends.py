"""Backends: synthetic (determinism, resume, chunking, faults), openai (fake SSE server), python."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pybackend_fixture
import pytest

from fedgate.errors import WorkerError
from fedgate.worker.backends import (
    Backend,
    BackendRequest,
    backend_names,
    create_backend,
    register_backend,
)
from fedgate.worker.backends.openai import OpenAIBackend
from fedgate.worker.backends.python import PythonBackend, load_callable
from fedgate.worker.backends.synthetic import (
    MAX_CHUNK_TOKENS,
    MAX_TOKENS,
    Fault,
    SyntheticBackend,
    parse_fault,
    synthetic_output,
    synthetic_token,
    synthetic_tokens,
)

pytestmark = pytest.mark.timeout(30)


def req(request_id: str = "req-001", data: bytes = b"hello", **kw: Any) -> BackendRequest:
    return BackendRequest(request_id=request_id, capability="generate", input=data, **kw)


async def chunks_of(backend: Backend, request: BackendRequest) -> list[list[bytes]]:
    return [chunk async for chunk in backend.generate(request)]


async def tokens_of(backend: Backend, request: BackendRequest) -> list[bytes]:
    return [t for chunk in await chunks_of(backend, request) for t in chunk]


# --- registry ----------------------------------------------------------------


def test_registry_names_and_factories() -> None:
    assert backend_names()[:3] == ["synthetic", "openai", "python"]
    assert isinstance(create_backend("synthetic", tokens=3), SyntheticBackend)
    with pytest.raises(ValueError, match="expected one of synthetic, openai, python"):
        create_backend("nope")
    with pytest.raises(ValueError, match="built in"):
        register_backend("synthetic", SyntheticBackend)
    register_backend("test-custom", lambda **kw: SyntheticBackend(tokens=kw["n"]))
    backend = create_backend("test-custom", n=2)
    assert isinstance(backend, Backend) and backend.tokens == 2  # type: ignore[attr-defined]
    assert "test-custom" in backend_names()


# --- synthetic ---------------------------------------------------------------


def test_synthetic_token_is_a_pure_function() -> None:
    assert synthetic_token("req-001", 0) == synthetic_token("req-001", 0) == b"c408fd78 "
    assert re.fullmatch(rb"[0-9a-f]{8} ", synthetic_token("x", 123456))
    firsts = {synthetic_token(f"req-{i}", 0) for i in range(500)}
    seconds = {synthetic_token("req-1", i) for i in range(500)}
    assert len(firsts) == len(seconds) == 500
    assert synthetic_output("r", 3) == b"".join(synthetic_tokens("r", 0, 3))


async def test_synthetic_default_length_and_determinism() -> None:
    backend = SyntheticBackend()
    first = await tokens_of(backend, req("abc"))
    assert first == synthetic_tokens("abc", 0, 16)
    assert await tokens_of(backend, req("abc")) == first
    assert await tokens_of(backend, req("abd")) != first


async def test_synthetic_tokens_option_and_max_tokens_input() -> None:
    backend = SyntheticBackend(tokens=5)
    assert len(await tokens_of(backend, req(data=b"plain text"))) == 5
    assert len(await tokens_of(backend, req(data=b'{"max_tokens": 40}'))) == 40
    assert len(await tokens_of(backend, req(data=b'  {"max_tokens": 0}'))) == 0
    assert len(await tokens_of(backend, req(data=b'{"prompt": "no max"}'))) == 5
    assert len(await tokens_of(backend, req(data=b"{not json"))) == 5
    assert backend.length(req(data=b'{"max_tokens": 10000000}')) == MAX_TOKENS


async def test_synthetic_speaks_an_openai_chat_body() -> None:
    backend = SyntheticBackend(tokens=5)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}
    got = await tokens_of(backend, req("chatcmpl-1", data=json.dumps(chat).encode()))
    assert got == [synthetic_token("chatcmpl-1", i) for i in range(7)]
    # The newer name wins over the older, as in OpenAI's API.
    newer = {**chat, "max_completion_tokens": 3}
    assert backend.length(req(data=json.dumps(newer).encode())) == 3
    with pytest.raises(WorkerError, match="max_completion_tokens"):
        backend.length(req(data=b'{"max_completion_tokens": -2}'))


@pytest.mark.parametrize(
    "bad",
    [
        b'{"max_tokens": -1}',
        b'{"max_tokens": "5"}',
        b'{"max_tokens": true}',
        b'{"max_tokens": 2.5}',
    ],
)
async def test_synthetic_bad_max_tokens_is_bad_input(bad: bytes) -> None:
    with pytest.raises(WorkerError) as info:
        await tokens_of(SyntheticBackend(), req(data=bad))
    assert info.value.code == "bad_input" and info.value.node_caused is False
    assert "max_tokens" in str(info.value)


@pytest.mark.parametrize("k", [0, 1, 7, 100, 299, 300])
async def test_synthetic_resume_equals_the_tail_of_a_full_run(k: int) -> None:
    backend = SyntheticBackend(tokens=300)
    full = await tokens_of(backend, req("resumable"))
    assert len(full) == 300
    assert await tokens_of(backend, req("resumable", resume_from=k)) == full[k:]


async def test_synthetic_resume_past_the_end_is_bad_input() -> None:
    with pytest.raises(WorkerError, match="resume_from") as info:
        await tokens_of(SyntheticBackend(tokens=4), req(resume_from=5))
    assert info.value.code == "bad_input"


async def test_synthetic_full_speed_chunks_are_capped() -> None:
    chunks = await chunks_of(SyntheticBackend(tokens=1000), req("big"))
    assert [len(c) for c in chunks] == [256, 256, 256, 232]
    assert [t for c in chunks for t in c] == synthetic_tokens("big", 0, 1000)
    assert MAX_CHUNK_TOKENS == 256


async def test_synthetic_paced_tokens_come_one_by_one_to_a_fast_reader() -> None:
    backend = SyntheticBackend(tokens=10, token_rate=500.0)
    started = time.monotonic()
    chunks = await chunks_of(backend, req("paced"))
    elapsed = time.monotonic() - started
    assert [t for c in chunks for t in c] == synthetic_tokens("paced", 0, 10)
    assert elapsed >= 9 / 500 * 0.9  # 9 intervals after the first token
    assert len(chunks) >= 3  # mostly single tokens; a busy machine may merge some


async def test_synthetic_slow_reader_gets_multi_token_chunks() -> None:
    backend = SyntheticBackend(tokens=200, token_rate=1000.0)
    gen = backend.generate(req("batched"))
    first = await gen.__anext__()
    await asyncio.sleep(0.05)  # the reader is slow: ~50 tokens fall due meanwhile
    second = await gen.__anext__()
    rest = [t async for c in gen for t in c]
    assert len(first) >= 1 and len(second) >= 10
    assert first + second + rest == synthetic_tokens("batched", 0, 200)


async def test_synthetic_time_to_first_token_and_slow_fault() -> None:
    started = time.monotonic()
    await SyntheticBackend(tokens=1, ttft=0.05).generate(req()).__anext__()
    assert time.monotonic() - started >= 0.045
    started = time.monotonic()
    await SyntheticBackend(tokens=1, ttft=0.05, faults=["slow=3"]).generate(req()).__anext__()
    assert time.monotonic() - started >= 0.14


async def test_synthetic_fail_after_k() -> None:
    backend = SyntheticBackend(tokens=10, faults=["fail-after=3"])
    got: list[bytes] = []
    with pytest.raises(WorkerError, match="fail-after=3") as info:
        async for chunk in backend.generate(req("f")):
            got.extend(chunk)
    assert got == synthetic_tokens("f", 0, 3)
    assert info.value.code == "backend" and info.value.node_caused is True
    # K counts tokens of this attempt: a resumed attempt fails 3 tokens after its start.
    got = []
    with pytest.raises(WorkerError):
        async for chunk in backend.generate(req("f", resume_from=5)):
            got.extend(chunk)
    assert got == synthetic_tokens("f", 5, 8)
    # A fault beyond the output never fires.
    assert len(await tokens_of(SyntheticBackend(tokens=2, faults=["fail-after=3"]), req())) == 2


async def test_synthetic_stall_after_k_stops_producing_but_can_be_cancelled() -> None:
    backend = SyntheticBackend(tokens=10, faults=[Fault("stall-after", 2)])
    gen = backend.generate(req("s"))
    assert await gen.__anext__() == synthetic_tokens("s", 0, 2)
    pending = asyncio.ensure_future(gen.__anext__())
    done, _ = await asyncio.wait({pending}, timeout=0.2)
    assert not done  # stalled
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending


async def test_synthetic_block_loop_blocks_once() -> None:
    backend = SyntheticBackend(tokens=1, faults=["block-loop=0.2"])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.03)
    before = ticks
    started = time.monotonic()
    gen = backend.generate(req())
    await gen.__anext__()  # blocks, then yields the token without awaiting anything else
    assert time.monotonic() - started >= 0.19
    assert ticks == before  # nothing else ran: the loop was blocked
    await gen.aclose()
    started = time.monotonic()
    await tokens_of(backend, req())
    assert time.monotonic() - started < 0.15  # only the first request blocks
    task.cancel()


def test_fault_parsing() -> None:
    assert parse_fault("fail-after=3") == Fault("fail-after", 3)
    assert parse_fault("crash-after") == Fault("crash-after", 0)
    assert parse_fault(" SLOW=2.5 ") == Fault("slow", 2.5)
    assert parse_fault("block-loop=1") == Fault("block-loop", 1.0)
    assert str(Fault("stall-after", 4)) == "stall-after=4"
    for bad, why in [
        ("explode=1", "KIND one of"),
        ("slow", "slow=VALUE"),
        ("fail-after=x", "token count"),
        ("slow=0", "factor > 0"),
        ("fail-after=-1", ">= 0"),
        ("block-loop=-2", "seconds > 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_fault(bad)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens": -1}, "tokens"),
        ({"tokens": MAX_TOKENS + 1}, "tokens"),
        ({"tokens": 1.5}, "tokens"),
        ({"ttft": -0.1}, "ttft"),
        ({"token_rate": float("nan")}, "token_rate"),
        ({"faults": ["nope"]}, "KIND"),
    ],
)
def test_synthetic_rejects_bad_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticBackend(**kwargs)


# --- openai against a fake OpenAI-compatible server ----------------------------


class _FakeOpenAI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the stream ends when the connection closes
    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(  # type: ignore[attr-defined]
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        status = {"http500": 500, "http400": 400, "http429": 429, "http401": 401}.get(text)
        if status is not None:
            payload = json.dumps({"error": {"message": f"fake {status}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chat = "messages" in body

        def event(obj: Any) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        def piece(content: str | None, finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {} if content is None else {"content": content}
            else:
                choice["text"] = content or ""
            return {"id": "x", "object": "chunk", "choices": [choice]}

        if text == "error-event":
            event({"error": {"message": "model overloaded"}})
            return
        self.wfile.write(b": keep-alive comment\n\n")
        if chat:
            event({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        words = text.split()
        for i, word in enumerate(words):
            event(piece(word if i == 0 else " " + word))
            time.sleep(0.5 if text.startswith("slow") else 0.002)
        if text.startswith("truncate"):
            return  # the connection closes: no finish reason, no [DONE]
        event(piece(None, "stop"))
        self.wfile.write(b"data: [DONE]\n\n")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that cancelled closes its connection mid-stream: expected here


@pytest.fixture
def fake_openai() -> Iterator[ThreadingHTTPServer]:
    server = _QuietServer(("127.0.0.1", 0), _FakeOpenAI)
    server.seen = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
async def openai_backend(fake_openai: ThreadingHTTPServer) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(_url(fake_openai) + "/v1/", api_key_env="FEDGATE_TEST_KEY")
    yield backend
    await backend.aclose()


async def test_openai_streams_content_deltas(
    openai_backend: OpenAIBackend, fake_openai: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGATE_TEST_KEY", "sk-test")
    tokens = await tokens_of(openai_backend, req(data=b"the quick brown fox", model="llama-3-8b"))
    assert tokens == [b"the", b" quick", b" brown", b" fox"]
    seen = fake_openai.seen[-1]  # type: ignore[attr-defined]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"] == {
        "messages": [{"role": "user", "content": "the quick brown fox"}],
        "model": "llama-3-8b",
        "stream": True,
    }
    assert seen["auth"] == "Bearer sk-test"
    assert openai_backend.resumable is False


async def test_openai_json_body_is_used_with_model_and_stream_overridden(
    fake_openai: ThreadingHTTPServer,
) -> None:
    backend = OpenAIBackend(_url(fake_openai), api_key_env=None, upstream_model="upstream-x")
    body = {
        "model": "ignored",
        "stream": False,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "alpha beta"},
        ],
    }
    try:
        tokens = await tokens_of(backend, req(data=json.dumps(body).encode(), model="m"))
    finally:
        await backend.aclose()
    assert tokens == [b"alpha", b" beta"]
    seen = fake_openai.seen[-1]  # type: ignore[attr-defined]
    assert seen["body"] == {**body, "model": "upstream-x", "stream": True}
    assert seen["auth"] is None


async def test_openai_prompt_body_goes_to_completions(
    openai_backend: OpenAIBackend, fake_openai: ThreadingHTTPServer
) -> None:
    data = json.dumps({"prompt": "one two three", "max_tokens": 3}).encode()
    assert await tokens_of(openai_backend, req(data=data, model="m")) == [
        b"one",
        b" two",
        b" three",
    ]
    assert fake_openai.seen[-1]["path"] == "/v1/completions"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "code", "node_caused"),
    [
        ("http500", "backend", True),
        ("http400", "bad_input", False),
        ("http429", "overloaded", False),
        ("http401", "backend", True),  # a worker with a wrong key is misconfigured: its fault
        ("error-event", "backend", True),
        ("truncate me now", "backend", True),
    ],
)
async def test_openai_failures_are_typed(
    openai_backend: OpenAIBackend, text: str, code: str, node_caused: bool
) -> None:
    got: list[bytes] = []
    with pytest.raises(WorkerError) as info:
        async for chunk in openai_backend.generate(req(data=text.encode(), model="m")):
            got.extend(chunk)
    assert info.value.code == code and info.value.node_caused is node_caused
    if text.startswith("http"):
        assert f"HTTP {text[4:]}" in str(info.value)
    if text.startswith("truncate"):
        assert got == [b"truncate", b" me", b" now"]  # delivered, then an explicit error
        assert "truncated" in str(info.value)


async def test_openai_stream_can_be_cancelled_midway(openai_backend: OpenAIBackend) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(tokens_of(openai_backend, req(data=b"slow a b c d", model="m")), 0.3)
    assert time.monotonic() - started < 1.0  # the worker's deadline is not held up by HTTP


async def test_openai_unreachable_server_is_a_backend_failure() -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", connect_timeout=2.0)
    try:
        with pytest.raises(WorkerError) as info:
            await tokens_of(backend, req(model="m"))
    finally:
        await backend.aclose()
    assert info.value.code == "backend"
    assert f"Cannot connect to host 127.0.0.1:{port}" in str(info.value)


async def test_openai_bad_inputs(openai_backend: OpenAIBackend) -> None:
    with pytest.raises(WorkerError, match="UTF-8") as info:
        await tokens_of(openai_backend, req(data=b"\xff\xfe", model="m"))
    assert info.value.code == "bad_input"
    with pytest.raises(WorkerError, match='"messages" or "prompt"'):
        await tokens_of(openai_backend, req(data=b'{"temperature": 1}', model="m"))
    with pytest.raises(WorkerError, match="expected a model"):
        await tokens_of(openai_backend, req(data=b"no model anywhere"))


def test_openai_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("ftp://x")
    with pytest.raises(ValueError, match="upstream_model"):
        OpenAIBackend("http://x", upstream_model="")


# --- python ------------------------------------------------------------------


def py(name: str) -> PythonBackend:
    return PythonBackend(f"pybackend_fixture:{name}")


async def test_python_sync_function_returning_bytes() -> None:
    backend = py("shout")
    assert await tokens_of(backend, req(data=b"hi")) == [b"HI"]
    assert backend.resumable is False
    await backend.aclose()


async def test_python_sync_generator_runs_in_a_thread() -> None:
    backend = py("words")
    assert await tokens_of(backend, req(data=b"a bb ccc")) == [b"a ", b"bb ", b"ccc "]
    await backend.aclose()


async def test_python_blocking_function_does_not_block_the_loop() -> None:
    backend = py("blocking")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(ticker())
    assert await tokens_of(backend, req(data=b"0.3")) == [b"done"]
    task.cancel()
    assert ticks >= 10  # the loop kept running (heartbeats would have gone out)
    await backend.aclose()


async def test_python_async_function_and_async_generators() -> None:
    assert await tokens_of(py("async_words"), req(data=b"x y")) == [b"x ", b"y "]
    chunks = await chunks_of(py("in_chunks"), req())
    assert chunks == [[b"a", b"b"], [b"c"], [b"d"]]


async def test_python_resumable_when_the_callable_takes_resume_from() -> None:
    backend = py("counting")
    assert backend.resumable is True
    full = await tokens_of(backend, req(data=b"10"))
    assert full == [f"t{i} ".encode() for i in range(10)]
    assert await tokens_of(backend, req(data=b"10", resume_from=6)) == full[6:]


async def test_python_keywords_are_passed_when_declared() -> None:
    out = await tokens_of(py("keywords"), req("rq-9", b"in", tenant="acme", model="m1"))
    assert out == [b"rq-9|acme|m1|in"]
    out = await tokens_of(py("everything"), req())
    assert out == [b"capability,model,request_id,resume_from,stream,tenant"]


async def test_python_errors_are_typed() -> None:
    with pytest.raises(WorkerError, match="cannot use") as info:
        await tokens_of(py("rejects"), req(data=b"zz"))
    assert info.value.code == "bad_input" and info.value.node_caused is False
    got: list[bytes] = []
    with pytest.raises(WorkerError, match="RuntimeError: model exploded") as info:
        async for chunk in py("breaks").generate(req()):
            got.extend(chunk)
    assert got == [b"ok "] and info.value.code == "backend" and info.value.node_caused
    with pytest.raises(WorkerError, match="expected bytes or str tokens, got int") as info:
        await tokens_of(py("wrong_token_type"), req())
    assert info.value.code == "backend"


async def test_python_closing_a_stream_stops_the_thread() -> None:
    pybackend_fixture.endless_stopped.clear()
    backend = py("endless")
    gen = backend.generate(req())
    got = 0
    async for chunk in gen:
        got += len(chunk)
        if got >= 5:
            break
    await gen.aclose()
    assert await asyncio.to_thread(pybackend_fixture.endless_stopped.wait, 5.0)
    stopped_at = pybackend_fixture.endless_progress["count"]
    await asyncio.sleep(0.05)
    assert pybackend_fixture.endless_progress["count"] == stopped_at
    await backend.aclose()


def test_load_callable_errors() -> None:
    assert load_callable("pybackend_fixture:shout") is pybackend_fixture.shout
    for spec, why in [
        ("no_colon", "module:function"),
        ("a:b:c", "module:function"),
        ("missing_module_xyz:f", "cannot import module"),
        ("pybackend_fixture:nope", "no attribute"),
        ("pybackend_fixture:NOT_CALLABLE", "expected a callable"),
    ]:
        with pytest.raises(ValueError, match=why):
            load_callable(spec)
