"""Callables for the python backend's tests (imported as ``pybackend_fixture:NAME``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

endless_progress = {"count": 0}
endless_stopped = threading.Event()


def shout(data: bytes) -> bytes:
    return data.upper()


def words(data: bytes) -> Iterator[bytes]:
    for word in data.split():
        yield word + b" "


def blocking(data: bytes) -> str:
    time.sleep(float(data))
    return "done"


def endless(data: bytes) -> Iterator[str]:
    try:
        while True:
            endless_progress["count"] += 1
            yield "x"
            time.sleep(0.001)
    finally:
        endless_stopped.set()


async def async_words(data: bytes) -> list[str]:
    await asyncio.sleep(0)
    return [w + " " for w in data.decode().split()]


async def counting(data: bytes, resume_from: int = 0) -> AsyncIterator[str]:
    for i in range(resume_from, int(data)):
        yield f"t{i} "


async def in_chunks(data: bytes) -> AsyncIterator[list[bytes]]:
    yield [b"a", b"b"]
    yield [b"c"]
    yield b"d"  # type: ignore[misc]


def rejects(data: bytes) -> bytes:
    raise ValueError(f"cannot use {data!r}")


async def breaks(data: bytes) -> AsyncIterator[bytes]:
    yield b"ok "
    raise RuntimeError("model exploded")


def wrong_token_type(data: bytes) -> list[Any]:
    return [b"fine", 42]


def keywords(data: bytes, *, request_id: str, tenant: str | None, model: str | None) -> str:
    return f"{request_id}|{tenant}|{model}|{data.decode()}"


def everything(data: bytes, **kwargs: Any) -> str:
    return ",".join(sorted(kwargs))


async def pid_tagged(data: bytes, resume_from: int = 0) -> AsyncIterator[list[str]]:
    """``TOTAL RATE`` in the input: token ``i`` is ``"PID:i "``, due at ``i / RATE`` seconds.

    The tag names the process that produced a token, so a caller can tell an
    abandoned attempt's tokens from its retry's. Tokens are due by the clock,
    like the synthetic backend's: a process thawed after a SIGSTOP sends every
    overdue token at once, in one frame.
    """
    total, rate = (float(x) for x in data.split())
    tag = os.getpid()
    loop = asyncio.get_running_loop()
    start = loop.time()
    produced = resume_from
    while produced < total:
        due = min(int(total), resume_from + int((loop.time() - start) * rate) + 1)
        if due > produced:
            yield [f"{tag}:{i} " for i in range(produced, due)]
            produced = due
        await asyncio.sleep(1.0 / rate)


NOT_CALLABLE = 42


def explodes(data: bytes) -> bytes:
    raise RuntimeError("this node always fails")
