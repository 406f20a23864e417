"""The synthetic backend: deterministic tokens, simulated timing, injected faults.

Token ``i`` of request ``r`` is :func:`synthetic_token` ``(r, i)`` — a pure
function — so any client or test can check every token it receives, whichever
node produced it and however often the stream was resumed. This is what the
tests, the benchmarks and ``fedgate demo`` run against.

Timing: the first token is due ``ttft`` seconds after the request starts and
token ``k`` of the run ``k / token_rate`` seconds after that (rate 0: all at
once). Each chunk holds every token already due (at most
:data:`MAX_CHUNK_TOKENS`), so a slow reader gets multi-token frames instead of
an ever-growing backlog of small ones.

Faults (``--fault KIND[=K]``, repeatable; K counts tokens produced by this
attempt, so a resumed attempt fails K tokens after its resume point):

- ``fail-after=K``: after K tokens, fail with code ``backend``;
- ``stall-after=K``: after K tokens, produce nothing more (CANCEL and the
  deadline still stop it);
- ``crash-after=K``: after K tokens, ``os._exit(1)`` the whole worker process
  (K = 0: right after accepting the request);
- ``slow=FACTOR``: multiply every delay;
- ``block-loop=SECONDS``: block the event loop with ``time.sleep`` once, on
  the first request (the worker stays connected but stops heartbeating).

Context window (``--context-window N``): a request whose prompt and output
together need more than N tokens fails with code ``context_length`` (as an
upstream's ``context_length_exceeded``), before any token. A prompt costs
:func:`prompt_tokens` tokens: one per 4 characters of its text, rounded up.

Embeddings: a request for capability ``embed`` (an OpenAI ``/v1/embeddings``
body, or plain text) is answered at once with one token, the JSON body of
OpenAI's answer, whose vectors are :func:`synthetic_embedding` of each input
text: :data:`EMBED_DIMENSIONS` numbers (or the request's ``dimensions``),
derived from the text alone, so any client can check them. ``encoding_format
= "base64"`` gives them as little-endian float32, as OpenAI does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from fedgate.errors import WorkerError
from fedgate.worker.backends.base import (
    BackendRequest,
    backend_failure,
    bad_input,
    context_too_long,
)

__all__ = [
    "EMBED_DIMENSIONS",
    "FAULT_KINDS",
    "MAX_CHUNK_TOKENS",
    "MAX_TOKENS",
    "Fault",
    "SyntheticBackend",
    "add_arguments",
    "create",
    "options_from_args",
    "parse_fault",
    "prompt_tokens",
    "synthetic_embedding",
    "synthetic_output",
    "synthetic_token",
    "synthetic_tokens",
]

MAX_TOKENS = 65536
"""Cap on a request's ``max_tokens`` (and on ``--tokens``)."""

MAX_CHUNK_TOKENS = 256
"""Most tokens yielded in one chunk (one Partial frame)."""

EMBED_DIMENSIONS = 16
"""Length of a synthetic embedding when the request does not ask for ``dimensions``."""

MAX_EMBED_DIMENSIONS = 4096
MAX_EMBED_INPUTS = 2048  # OpenAI's own limit on the texts of one request
MAX_CONTEXT_WINDOW = 1 << 30

FAULT_KINDS = ("fail-after", "stall-after", "crash-after", "slow", "block-loop")

_EMBED = "embed"  # the capability name (fedgate.types.Capability.EMBED)

# After yielding the K-th token the worker has queued its frame in libzmq; the
# I/O thread needs a moment to write it before the process dies, or a test
# could not tell "crashed after K tokens" from "crashed before them".
_CRASH_FLUSH_SECONDS = 0.05


def synthetic_token(request_id: str, index: int) -> bytes:
    """Token ``index`` of request ``request_id``: 8 hex digits and a space.

    >>> synthetic_token("req-001", 0)
    b'c408fd78 '
    """
    digest = blake2b(f"{request_id}\x00{index}".encode(), digest_size=4).hexdigest()
    return digest.encode("ascii") + b" "


def synthetic_tokens(request_id: str, start: int, stop: int) -> list[bytes]:
    """Tokens ``start … stop - 1`` of request ``request_id``."""
    return [synthetic_token(request_id, i) for i in range(start, stop)]


def synthetic_output(request_id: str, tokens: int, start: int = 0) -> bytes:
    """The concatenated output a non-stream request of ``tokens`` tokens receives."""
    return b"".join(synthetic_tokens(request_id, start, tokens))


def synthetic_embedding(text: str, dimensions: int = EMBED_DIMENSIONS) -> list[float]:
    """The embedding of ``text``: ``dimensions`` numbers in (-1, 1), derived from the text.

    Each is ``(2b - 255) / 256`` for a byte ``b`` of a BLAKE2b stream of the
    text, so it is exact in float32 and survives OpenAI's base64 encoding.

    >>> synthetic_embedding("hello", 3)
    [-0.85546875, 0.29296875, -0.22265625]
    """
    out: list[float] = []
    block = 0
    while len(out) < dimensions:
        digest = blake2b(f"{block}\x00{text}".encode(), digest_size=64).digest()
        out.extend((2 * b - 255) / 256 for b in digest)
        block += 1
    return out[:dimensions]


def _text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def prompt_tokens(obj: Any) -> int:
    """The prompt size in tokens of an OpenAI body (chat, completion or embeddings) or text.

    One token per 4 characters of text, rounded up, per message or input: the
    same rough rule the HTTP front door reports in ``usage``.
    """
    if isinstance(obj, str):
        return _text_tokens(obj)
    if not isinstance(obj, dict):
        return 0
    total = 0
    messages = obj.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                total += _text_tokens(content)
            elif isinstance(content, list):  # content parts: their text
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += _text_tokens(part["text"])
    for key in ("prompt", "input"):
        value = obj.get(key)
        if isinstance(value, str):
            total += _text_tokens(value)
        elif isinstance(value, list):
            total += sum(_text_tokens(v) for v in value if isinstance(v, str))
    return total


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: ``kind`` in :data:`FAULT_KINDS` and its parameter."""

    kind: str
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault: expected one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"fault {self.kind}: expected a finite number, got {v!r}")
        if self.kind.endswith("-after"):
            if v < 0 or v != int(v):
                raise ValueError(f"fault {self.kind}: expected a token count >= 0, got {v!r}")
        elif self.kind == "slow":
            if v <= 0:
                raise ValueError(f"fault slow: expected a factor > 0, got {v!r}")
        elif v <= 0:
            raise ValueError(f"fault block-loop: expected seconds > 0, got {v!r}")

    def __str__(self) -> str:
        value = int(self.value) if self.kind.endswith("-after") else self.value
        return f"{self.kind}={value}"


def parse_fault(text: str) -> Fault:
    """Parse ``KIND[=K]`` (``fail-after=3``, ``crash-after``, ``slow=2.5`` …).

    The count of the ``*-after`` kinds defaults to 0; ``slow`` and
    ``block-loop`` need their value.
    """
    kind, sep, raw = text.strip().partition("=")
    kind = kind.strip().lower()
    if kind not in FAULT_KINDS:
        raise ValueError(
            f"expected KIND[=K] with KIND one of {', '.join(FAULT_KINDS)}, got {text!r}"
        )
    if not sep:
        if not kind.endswith("-after"):
            raise ValueError(f"expected {kind}=VALUE, got {text!r}")
        return Fault(kind, 0)
    try:
        value = int(raw) if kind.endswith("-after") else float(raw)
    except ValueError:
        what = "a token count" if kind.endswith("-after") else "a number"
        raise ValueError(f"{kind}: expected {what}, got {raw!r}") from None
    return Fault(kind, value)


def _check_number(name: str, value: Any, *, integer: bool = False, upper: float = math.inf) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name}: expected {'an int' if integer else 'a number'}, got {value!r}")
    if not (0 <= value <= upper) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number in [0, {upper:g}], got {value!r}")


class SyntheticBackend:
    """Deterministic tokens with simulated latency and fault injection.

    Parameters
    ----------
    tokens : int
        Output length when the input does not say (a JSON object with
        ``"max_tokens"`` or ``"max_completion_tokens"`` — an OpenAI chat or
        completion body — overrides it, capped at :data:`MAX_TOKENS`).
    ttft : float
        Seconds to the first token.
    token_rate : float
        Tokens per second after the first; 0 produces all at once.
    faults : iterable of Fault or str
        Injected faults (see the module docstring).
    context_window : int, optional
        Most tokens a request's prompt and output may need together; a longer
        one fails with code ``context_length`` (None: no limit).
    """

    resumable = True

    def __init__(
        self,
        tokens: int = 16,
        ttft: float = 0.0,
        token_rate: float = 0.0,
        faults: Iterable[Fault | str] = (),
        context_window: int | None = None,
    ) -> None:
        _check_number("tokens", tokens, integer=True, upper=MAX_TOKENS)
        if context_window is not None:
            _check_number("context_window", context_window, integer=True, upper=MAX_CONTEXT_WINDOW)
            if context_window < 1:
                raise ValueError(f"context_window: expected an int >= 1, got {context_window!r}")
        self.context_window = context_window
        _check_number("ttft", ttft, upper=86400.0)
        _check_number("token_rate", token_rate, upper=1e9)
        self.tokens = tokens
        self.ttft = float(ttft)
        self.token_rate = float(token_rate)
        self.faults = tuple(f if isinstance(f, Fault) else parse_fault(f) for f in faults)
        self._slow = 1.0
        self._block_seconds = 0.0
        self._blocked = False
        # The earliest token-count fault of each kind decides; several kinds may
        # be armed, and the smallest K across them fires first.
        self._after: dict[str, int] = {}
        for fault in self.faults:
            if fault.kind == "slow":
                self._slow *= fault.value
            elif fault.kind == "block-loop":
                self._block_seconds = fault.value
            else:
                k = int(fault.value)
                self._after[fault.kind] = min(k, self._after.get(fault.kind, k))

    def __repr__(self) -> str:
        faults = ", ".join(str(f) for f in self.faults)
        return (
            f"SyntheticBackend(tokens={self.tokens}, ttft={self.ttft}, "
            f"token_rate={self.token_rate}, faults=[{faults}], "
            f"context_window={self.context_window})"
        )

    def length(self, req: BackendRequest) -> int:
        """Total tokens of the generation for ``req`` (resume point not subtracted).

        Raises the ``context_length`` error when the prompt and this many
        tokens do not fit the context window.
        """
        obj = _json_object(req.input)
        total = self.tokens if obj is None else self._requested(obj)
        window = self.context_window
        if window is not None:
            prompt = prompt_tokens(obj if obj is not None else _text(req.input))
            if prompt + total > window:
                raise context_too_long(
                    f"synthetic: this model's maximum context length is {window} tokens; "
                    f"the request needs {prompt + total} ({prompt} in the prompt, "
                    f"{total} to generate)"
                )
        return total

    def _requested(self, obj: dict[str, Any]) -> int:
        # An OpenAI chat request (the HTTP front door passes its body unchanged)
        # may name its length either way; the newer name wins, as OpenAI's does.
        key = "max_completion_tokens" if "max_completion_tokens" in obj else "max_tokens"
        if key not in obj:
            return self.tokens
        n = obj[key]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise bad_input(f"synthetic: {key}: expected an int >= 0, got {n!r}")
        return min(n, MAX_TOKENS)

    def embed(self, req: BackendRequest) -> bytes:
        """OpenAI's ``/v1/embeddings`` answer for ``req``, as JSON bytes."""
        obj = _json_object(req.input)
        if obj is None:
            obj = {"input": _text(req.input)}
        texts = obj.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not 1 <= len(texts) <= MAX_EMBED_INPUTS
            or not all(isinstance(t, str) for t in texts)
        ):
            raise bad_input(
                f"synthetic: input: expected a string or a list of 1 to {MAX_EMBED_INPUTS} "
                f"strings, got {json.dumps(texts)[:200]}"
            )
        dims = obj.get("dimensions", EMBED_DIMENSIONS)
        if isinstance(dims, bool) or not isinstance(dims, int) or not (
            1 <= dims <= MAX_EMBED_DIMENSIONS
        ):
            raise bad_input(
                f"synthetic: dimensions: expected an int in [1, {MAX_EMBED_DIMENSIONS}], "
                f"got {dims!r}"
            )
        fmt = obj.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise bad_input(f"synthetic: encoding_format: expected float or base64, got {fmt!r}")
        used = prompt_tokens({"input": texts})
        window = self.context_window
        if window is not None:
            for t in texts:
                if _text_tokens(t) > window:
                    raise context_too_long(
                        f"synthetic: this model's maximum context length is {window} tokens; "
                        f"an input needs {_text_tokens(t)}"
                    )
        data = []
        for i, text in enumerate(texts):
            vector = synthetic_embedding(text, dims)
            value: Any = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        answer = {
            "object": "list",
            "data": data,
            "model": req.model or obj.get("model") or "synthetic",
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }
        return json.dumps(answer).encode()

    def complete(self, req: BackendRequest) -> list[list[bytes]] | None:
        """The chunks :meth:`generate` would yield, when it would yield them without waiting.

        At full speed (no time to first token, no token rate, no fault armed) and
        for at most one chunk, the whole answer is known now: the worker sends it
        without starting a task. Anything else (a delay, a fault, a longer
        generation that must let other work run between chunks, or input that
        :meth:`generate` would reject) returns None and takes the general path.
        """
        if self.ttft or self.token_rate or self._after or self._block_seconds:
            return None
        if req.capability == _EMBED:
            try:
                return [[self.embed(req)]]
            except WorkerError:
                return None  # generate() reports it, typed
        try:
            total = self.length(req)
        except WorkerError:
            return None  # generate() reports it, typed
        start = req.resume_from
        if start > total or total - start > MAX_CHUNK_TOKENS:
            return None
        if total == start:
            return []
        rid = req.request_id
        return [[synthetic_token(rid, j) for j in range(start, total)]]

    async def generate(self, req: BackendRequest) -> AsyncIterator[list[bytes]]:
        """Yield the tokens of ``req`` from ``req.resume_from``, in due-time chunks."""
        if req.capability == _EMBED:
            # One answer, no tokens to pace: only the process-level faults apply.
            if self._after.get("crash-after") == 0:
                os._exit(1)
            yield [self.embed(req)]
            return
        total = self.length(req)
        start = req.resume_from
        if start > total:
            raise bad_input(f"synthetic: resume_from: expected <= {total} tokens, got {start}")
        if self._block_seconds and not self._blocked:
            self._blocked = True
            # Deliberately blocks the event loop: the "alive is not serving" fault.
            time.sleep(self._block_seconds)
        fault, fault_at = self._next_fault(total - start)
        if fault == "crash-after" and fault_at == 0:
            os._exit(1)

        loop = asyncio.get_running_loop()
        first = loop.time() + self.ttft * self._slow
        interval = self._slow / self.token_rate if self.token_rate > 0 else 0.0
        target = min(total - start, fault_at)
        rid = req.request_id
        produced = 0
        while produced < target:
            now = loop.time()
            if now < first:
                await asyncio.sleep(first - now)
                continue
            if interval == 0.0:
                due = target
            else:
                # Token k is due at first + k * interval; the epsilon keeps float
                # rounding from waking us just before a token that is due.
                due = min(target, int((now - first) / interval + 1e-9) + 1)
                if due <= produced:
                    await asyncio.sleep(first + produced * interval - now)
                    continue
            n = min(due - produced, MAX_CHUNK_TOKENS)
            i = start + produced
            yield [synthetic_token(rid, j) for j in range(i, i + n)]
            produced += n
            if interval == 0.0:
                # Nothing else awaits between chunks at full speed: let heartbeats
                # and the other requests run.
                await asyncio.sleep(0)

        if fault is None:
            return
        if fault == "fail-after":
            raise backend_failure(f"synthetic: injected fault fail-after={fault_at}")
        if fault == "stall-after":
            await loop.create_future()  # never resolves; cancellation ends it
        if fault == "crash-after":
            await asyncio.sleep(_CRASH_FLUSH_SECONDS)
            os._exit(1)

    def _next_fault(self, remaining: int) -> tuple[str | None, int]:
        """The token-count fault that fires first within ``remaining`` tokens, if any."""
        best: tuple[str | None, int] = (None, remaining)
        for kind, k in self._after.items():
            if k <= remaining and (best[0] is None or k < best[1]):
                best = (kind, k)
        return best

    async def aclose(self) -> None:
        """Nothing to release."""


def _json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` as a JSON object, or None when it is not one (plain input)."""
    if data.lstrip()[:1] != b"{":  # cheap: bytes.lstrip returns itself when unchanged
        return None
    try:
        obj = json.loads(data)
    except ValueError:  # not JSON after all: plain input
        return None
    return obj if isinstance(obj, dict) else None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def create(**options: Any) -> SyntheticBackend:
    """Build a :class:`SyntheticBackend` from keyword options (the registry's factory)."""
    return SyntheticBackend(**options)


# --- command line --------------------------------------------------------------


def _nonneg_float(flag: str, upper: float) -> Any:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (0 <= value <= upper):
            raise argparse.ArgumentTypeError(f"expected a number in [0, {upper:g}], got {text!r}")
        return value

    convert.__name__ = flag
    return convert


def _token_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_TOKENS}], got {text!r}")
    return value


def _context_window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_CONTEXT_WINDOW:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [1, {MAX_CONTEXT_WINDOW}], got {text!r}"
        )
    return value


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--backend synthetic`` options to the worker's parser."""
    group = parser.add_argument_group(
        "synthetic backend (--backend synthetic)",
        "Deterministic tokens (8 hex digits and a space, derived from the request id and "
        "the token index) with simulated timing and injected faults.",
    )
    group.add_argument(
        "--ttft",
        type=_nonneg_float("ttft", 86400.0),
        default=None,
        metavar="SECONDS",
        help="time to first token (default 0), e.g. --ttft 0.2",
    )
    group.add_argument(
        "--token-rate",
        type=_nonneg_float("token-rate", 1e9),
        default=None,
        metavar="TOKENS_PER_S",
        help="tokens per second after the first; 0 = as fast as possible (default 0), "
        "e.g. --token-rate 50",
    )
    group.add_argument(
        "--tokens",
        type=_token_count,
        default=None,
        metavar="N",
        help='output length (default 16); a JSON input {"max_tokens": N} overrides it',
    )
    group.add_argument(
        "--context-window",
        type=_context_window,
        default=None,
        metavar="TOKENS",
        help="refuse a request whose prompt (4 characters a token) and output need more "
        "tokens, with code context_length (default: no limit), e.g. --context-window 4096",
    )
    group.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=None,
        metavar="KIND[=K]",
        help="inject a fault (repeatable): fail-after=K (error 'backend' after K tokens), "
        "stall-after=K (stop producing after K tokens), crash-after=K (exit the process "
        "after K tokens; 0 = on accepting the request), slow=FACTOR (multiply delays), "
        "block-loop=SECONDS (block the event loop once, on the first request); "
        "e.g. --fault fail-after=5 --fault slow=2",
    )


OPTION_FLAGS: dict[str, str] = {
    "ttft": "--ttft",
    "token_rate": "--token-rate",
    "tokens": "--tokens",
    "fault": "--fault",
    "context_window": "--context-window",
}


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The factory's keyword options from parsed flags (flags left out keep their defaults)."""
    options: dict[str, Any] = {}
    if args.ttft is not None:
        options["ttft"] = args.ttft
    if args.token_rate is not None:
        options["token_rate"] = args.token_rate
    if args.tokens is not None:
        options["tokens"] = args.tokens
    if args.fault:
        options["faults"] = tuple(args.fault)
    if getattr(args, "context_window", None) is not None:
        options["context_window"] = args.context_window
    return options
