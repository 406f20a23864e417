"""Callables for the python backend's tests (imported as ``pybackend_fixture:NAME``)."""

from __future__ import annotations

import asyncio
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


NOT_CALLABLE = 42
