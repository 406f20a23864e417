"""What a worker asks of a model backend: the :class:`Backend` protocol.

A backend turns one request into a sequence of CHUNKS, each a non-empty list
of tokens (``bytes``). The worker sends one Partial frame per chunk, so a
backend that hands over everything produced since the worker last asked gets
multi-token frames for free when the network or the reader is slow.

Failures are :class:`fedgate.errors.WorkerError` with a wire code from
:mod:`fedgate.transport.protocol`: :func:`bad_input` for input the backend cannot use
(not the node's fault), :func:`backend_failure` for the backend failing. Any
other exception escaping ``generate`` is reported as code ``"backend"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import msgspec

from fedgate.errors import WorkerError
from fedgate.transport.protocol import (
    ERR_BACKEND,
    ERR_BAD_INPUT,
    ERR_CANNOT_CONTINUE,
    ERR_CONTEXT_LENGTH,
    ERR_UNSUPPORTED,
)

__all__ = [
    "Backend",
    "BackendRequest",
    "backend_failure",
    "bad_input",
    "cannot_continue",
    "context_too_long",
    "unsupported",
]


class BackendRequest(msgspec.Struct, frozen=True, gc=False):
    """One attempt of one request, as a backend sees it.

    A frozen msgspec struct: the worker builds one per request, and a frozen
    dataclass costs ten times as much to construct.

    Parameters
    ----------
    request_id : str
        The caller's request id (synthetic tokens derive from it).
    capability : str
        What is asked (``"transcribe"``, ``"generate"``, …).
    input : bytes
        The payload, unchanged.
    tenant : str, optional
        Who is asking.
    model : str, optional
        The model to use (the worker fills in its first model when the
        request did not pin one).
    resume_from : int
        Index of the first token to produce; tokens before it were already
        delivered by another node. Only resumable backends see values > 0.
    stream : bool
        Whether the caller streams (informational: the worker batches either way).
    delivered : bytes
        For a continuation (a continuable backend, ``resume_from > 0``): the
        bytes of the ``resume_from`` tokens already delivered, to continue
        from; ``b""`` otherwise.
    """

    request_id: str
    capability: str
    input: bytes
    tenant: str | None = None
    model: str | None = None
    resume_from: int = 0
    stream: bool = True
    delivered: bytes = b""


@runtime_checkable
class Backend(Protocol):
    """A model backend served by a worker.

    ``generate`` is normally an async generator function: it yields chunks
    (non-empty ``list[bytes]``) whose tokens start at ``req.resume_from`` and
    follow each other without gaps. It may be cancelled at any ``await``; it
    must release what it holds when closed (``aclose`` on the generator).
    ``resumable`` says whether ``resume_from > 0`` reproduces exactly the tokens
    an uninterrupted run would have produced from that index.

    A backend that cannot resume may still *continue*: with a class attribute
    ``continuable = True`` (optional; absent means False) it is sent streams
    interrupted elsewhere, with ``req.delivered`` holding the text the caller
    already has, and yields what follows that text (its tokens numbered from
    ``resume_from`` by the worker). A continuation its model refuses is
    :func:`cannot_continue`.
    """

    resumable: bool

    def generate(self, req: BackendRequest) -> AsyncIterator[list[bytes]]:
        """Yield the chunks of tokens for ``req``, starting at ``req.resume_from``."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and other resources."""
        ...


def bad_input(message: str, upstream_code: str = "") -> WorkerError:
    """The request's input is invalid for this backend (does not count against the node)."""
    return WorkerError(message, code=ERR_BAD_INPUT, node_caused=False, upstream_code=upstream_code)


def cannot_continue(message: str, upstream_code: str = "") -> WorkerError:
    """The backend will not continue this stream from its delivered text (nobody's fault)."""
    return WorkerError(
        message, code=ERR_CANNOT_CONTINUE, node_caused=False, upstream_code=upstream_code
    )


def context_too_long(message: str) -> WorkerError:
    """The input is longer than the model's context window (a larger model may take it)."""
    return WorkerError(message, code=ERR_CONTEXT_LENGTH, node_caused=False)


def unsupported(message: str) -> WorkerError:
    """The backend cannot serve this kind of request (does not count against the node)."""
    return WorkerError(message, code=ERR_UNSUPPORTED, node_caused=False)


def backend_failure(message: str) -> WorkerError:
    """The backend failed (counts against the node)."""
    return WorkerError(message, code=ERR_BACKEND, node_caused=True)
