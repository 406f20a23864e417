"""A fast OpenAI-compatible upstream for benchmarks: canned answers, keep-alive, its own process.

``tests/fake_upstream.py`` is the upstream of the fault tests: it closes every
connection and logs every attempt, on the test's loop. A benchmark needs one
that is never the bottleneck, so this one answers from a bare
:class:`asyncio.Protocol` (uvloop when installed) with a precomputed answer:

- ``POST …/chat/completions`` (or ``…/completions``) with ``"stream": true``:
  server-sent events, the role and the one word of content, the finish
  reason, ``data: [DONE]`` (fedgate's ``openai`` backend always streams);
- without it: one ``chat.completion`` JSON answer with ``usage``.

Each answer carries a Content-Length and the connection stays open.

    python benchmarks/openai_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

WORD = "hello"


def _answers() -> tuple[bytes, bytes]:
    base = {"id": "up-1", "created": 0, "model": "m"}
    whole = {
        **base,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": WORD},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    events = [
        {"index": 0, "delta": {"role": "assistant", "content": WORD}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"},
    ]
    sse = b"".join(
        b"data: %s\n\n" % json.dumps({**base, "object": "chat.completion.chunk", "choices": [c]})
        .encode()
        for c in events
    ) + b"data: [DONE]\n\n"
    body = json.dumps(whole).encode()
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
    return plain % (len(body), body), stream % (len(sse), sse)


PLAIN, STREAM = _answers()
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class Upstream(asyncio.Protocol):
    """HTTP/1.1 with Content-Length bodies, requests answered in order."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head:
                # No client of these benchmarks sends a chunked body: say so, loudly.
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
                return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if not path.endswith(b"completions"):
                self.transport.write(NOT_FOUND)
                continue
            stream = json.loads(body).get("stream") is True
            self.transport.write(STREAM if stream else PLAIN)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port)
    await server.serve_forever()


def main(argv: list[str]) -> None:
    port = int(argv[0])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    main(sys.argv[1:])
