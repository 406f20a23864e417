"""A small OpenAI-compatible HTTP server with one fault mode per fault class (R24).

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions``, streaming
(server-sent events ending in ``data: [DONE]``) or not, on 127.0.0.1 with an
ephemeral port, on the event loop of the test that starts it (the workers
under test are real processes; only the upstream lives in the test).

The answer to any request is ``WORDS`` words, ``"w0 w1 … w59 "``, one word
per chunk. A chat request whose last message is the assistant's (a prefill)
is continued from the words that message already holds, so a stream cut on
one upstream and continued on another reads as one answer; so is a
completions prompt holding the answer's start (from ``w0`` on).

``POST /v1/embeddings`` (after the same status faults) answers OpenAI's
body with :func:`embedding` of each input text, as floats or, with
``encoding_format = "base64"``, as little-endian float32.

Every request is logged as an :class:`Attempt` (monotonic time, model, the
fault it met) before it is answered, so a test asserts on how the gateway
behaved towards this upstream: how many attempts, how far apart.

Fault modes (``FakeUpstream(fault=…)``):

``ok``             the whole answer
``429``            HTTP 429, no Retry-After, every time
``429-retry``      HTTP 429 with ``Retry-After: <retry_after>``, every time
``503``            HTTP 503, every time
``500-once``       HTTP 500 on the first request, then ``ok``
``reset``          the connection closed before any header
``silent``         headers, then nothing (no first token) until the client leaves
``stall``          ``k`` words, then nothing until the client leaves
``cut``            ``k`` words, then the connection closed without ``[DONE]``
``malformed``      ``k`` words, then a chunk that is not JSON
``400``/``413``/``422``  that status with an OpenAI error body (``code`` ``fake_<status>``)
``prefill-refused`` ``ok``, except a prefill, refused with 400 as some servers do
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
from dataclasses import dataclass, field

__all__ = ["WORDS", "Attempt", "FakeUpstream", "answer", "embedding"]

WORDS = 60
FAULTS = frozenset(
    {
        "ok",
        "429",
        "429-retry",
        "503",
        "500-once",
        "reset",
        "silent",
        "stall",
        "cut",
        "malformed",
        "400",
        "413",
        "422",
        "prefill-refused",
    }
)


def answer(start: int = 0, end: int = WORDS) -> str:
    """The text of words ``start`` … ``end - 1`` of every answer."""
    return "".join(f"w{i} " for i in range(start, end))


def embedding(text: str, index: int) -> list[float]:
    """The fake upstream's vector for input ``index``, ``text`` (exact in float32)."""
    return [float(len(text)), float(index), 0.25]


@dataclass
class Attempt:
    """One request the upstream received."""

    at: float  # time.monotonic() when its body had arrived
    model: str
    path: str
    stream: bool
    outcome: str  # the fault it met ("ok", "429", "cut@20", …)
    prefill: str = ""  # the assistant text it was asked to continue
    body: dict[str, object] = field(default_factory=dict)  # the request's JSON body


@dataclass
class FakeUpstream:
    """The server; ``async with FakeUpstream("cut", k=20) as up: up.base_url``."""

    fault: str = "ok"
    k: int = 20
    retry_after: float = 1.0
    attempts: list[Attempt] = field(default_factory=list)
    _server: asyncio.base_events.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault: expected one of {sorted(FAULTS)}, got {self.fault!r}")

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    # ------------------------------------------------------------------ serving
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left: that is its right
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
        if method != "POST" or path not in paths:
            await _respond(writer, 404, {"error": {"message": "not found", "code": "not_found"}})
            return
        req = json.loads(body)
        stream = bool(req.get("stream"))
        prefill = _prefill(req)
        fault = self.fault
        if fault == "500-once":
            fault = "500" if not self.attempts else "ok"
        elif fault == "prefill-refused":
            fault = "400-prefill" if prefill else "ok"
        outcome = f"{fault}@{self.k}" if fault in ("stall", "cut", "malformed") else fault
        self.attempts.append(
            Attempt(time.monotonic(), str(req.get("model")), path, stream, outcome, prefill, req)
        )
        if fault == "reset":
            return  # closed before any header
        if fault in ("429", "429-retry", "503", "500"):
            extra = {"Retry-After": f"{self.retry_after:g}"} if fault == "429-retry" else {}
            err = {"message": f"fake upstream says {fault}", "type": "server", "code": None}
            await _respond(writer, int(fault[:3]), {"error": err}, extra)
            return
        if fault in ("400", "413", "422", "400-prefill"):
            status = int(fault[:3])
            message = (
                "assistant prefill is not supported"
                if fault == "400-prefill"
                else f"fake upstream rejects this input ({status})"
            )
            err = {"message": message, "type": "invalid_request_error", "code": f"fake_{status}"}
            await _respond(writer, status, {"error": err})
            return
        if path == "/v1/embeddings":
            await _respond(writer, 200, _embeddings(req))
            return
        start = len(prefill.split())
        chat = path.endswith("chat/completions")
        if not stream:
            text = answer(start)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice["finish_reason"] = "stop"
            usage = {"completion_tokens": WORDS - start}
            await _respond(writer, 200, {"choices": [choice], "usage": usage})
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        if fault == "silent":
            await reader.read()  # until the client leaves
            return
        stop = start + self.k if fault in ("stall", "cut", "malformed") else WORDS
        for i in range(start, min(stop, WORDS)):
            writer.write(_event(chat, f"w{i} ", None))
            await writer.drain()
            await asyncio.sleep(0)
        if fault in ("stall", "cut", "malformed"):
            # The k words reach the client before the fault does, not in the same read:
            # the class under test is a fault after the first tokens.
            await asyncio.sleep(0.2)
        if fault == "stall":
            await reader.read()
            return
        if fault == "cut":
            return
        if fault == "malformed":
            writer.write(b'data: {"choices": [{"delta": {"content": "w\n\n')
            await writer.drain()
            return
        writer.write(_event(chat, "", "stop"))
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()


def _embeddings(req: dict[str, object]) -> dict[str, object]:
    texts = req.get("input")
    texts = [texts] if isinstance(texts, str) else list(texts)  # type: ignore[arg-type]
    data = []
    for i, text in enumerate(texts):
        vector: object = embedding(str(text), i)
        if req.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack("<3f", *embedding(str(text), i))).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    used = sum(len(str(t)) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": req.get("model"),
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


def _prefill(req: dict[str, object]) -> str:
    messages = req.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            return str(last.get("content") or "")
    prompt = req.get("prompt")
    if isinstance(prompt, str) and "w0 " in prompt:
        return prompt[prompt.index("w0 ") :]
    return ""


def _event(chat: bool, text: str, finish: str | None) -> bytes:
    choice: dict[str, object] = (
        {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    )
    choice["finish_reason"] = finish
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    payload: dict[str, object],
    extra: dict[str, str] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    writer.write("\r\n".join(head).encode() + body)
    await writer.drain()
