"""The wire between the gateway and its workers: versioned, compact, validated.

Every ZeroMQ message is ONE frame: a version byte (:data:`PROTOCOL_VERSION`)
followed by a MessagePack array ``[tag, field, field, …]`` decoded by msgspec
straight into one of the structs below. The gateway binds a ROUTER and sees
``[identity, frame]``; a worker connects one DEALER per gateway and sees
``[frame]`` (no empty delimiter frame: there is no REQ envelope to emulate).

Who sends what::

    worker  → gateway   Ready, Heartbeat, Partial, Final, Error, Disconnect
    gateway → worker    Welcome, Refuse, Reannounce, Request, Cancel

A conversation::

    W: Ready ─────────────▶ G      (repeated every heartbeat interval until Welcome)
    W ◀───────────── Welcome: G    (or Refuse: the worker exits with status 3)
    W: Heartbeat ─────────▶ G      (every interval, from the worker's own event loop)
    W ◀───────────── Request: G    (rid, attempt, remaining deadline, resume_from,
                                    the text delivered when a continuable W continues it)
    W: Partial … Partial ─▶ G      (index of the first token of each frame)
    W: Final | Error ─────▶ G      (exactly one per accepted Request)
    W ◀────────────── Cancel: G    (the worker answers Error "cancelled")
    W ◀────────── Reannounce: G    (the gateway does not know this worker: send Ready)
    W: Disconnect ────────▶ G      (clean shutdown; in-flight requests still finish)

Validation happens on receipt: :func:`decode` raises :class:`ProtocolError`
(a ``ValueError``) for anything that is not a well-formed message of this
version, so a receiver drops, counts and logs it and carries on. Constraints
that msgspec can express (non-empty ids, indices ≥ 0, finite positive
deadlines, capability names) are declared with ``msgspec.Meta`` and checked by
the decoder itself in C. Encoding trusts the sender: structs built in Python
are not re-validated.

Fast path notes (the gateway's per-request overhead should approach a bare
pyzmq round trip):

- One module-level ``Encoder`` and one ``Decoder`` per union are reused; a
  decoder built for a union dispatches on the integer tag with no Python code.
- ``encode`` is ``b"\\x01" + encoder.encode(msg)``. Encoding into a fresh
  ``bytearray`` at offset 1 with ``encode_into`` was measured slower for the
  frames that dominate (a 1-token Partial: ~280 ns against ~550 ns), because
  the buffer has to grow from empty; the one extra copy of a small frame costs
  less than that growth.
- ``decode`` of a ``bytes`` frame (what pyzmq's ``recv`` returns) takes a
  fast path: version and size checked inline, the body past the version byte
  copied when small (cheaper than a memoryview) and sliced through a
  ``memoryview`` when large, so a big Request or Final body is never copied.
  A frame that fails there is explained from msgspec's error and the tag in
  its first bytes, never decoded a second time (rejected input must not cost
  twice).
- Every struct is ``gc=False`` (its fields are scalars, strings, bytes and
  lists of those: no cycles are possible) and ``array_like`` (field names never
  travel); a typical one-token Partial is about 50 bytes.
- Workers use :func:`decode_gateway_message` and gateways
  :func:`decode_worker_message`: a message sent in the wrong direction is
  rejected by the decoder like any other malformed frame.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from typing import Annotated, TypeAlias, Union
from typing import Final as _Final

import msgspec

from fedgate import validation as _limits

__all__ = [
    "ERROR_CODES",
    "ERR_BACKEND",
    "ERR_BAD_INPUT",
    "ERR_CANCELLED",
    "ERR_CANNOT_CONTINUE",
    "ERR_CONTEXT_LENGTH",
    "ERR_CRASH",
    "ERR_DEADLINE",
    "ERR_INTERNAL",
    "ERR_OVERLOADED",
    "ERR_SHUTDOWN",
    "ERR_STALL",
    "ERR_UNSUPPORTED",
    "MAX_DEADLINE",
    "MAX_FRAME_BYTES",
    "NODE_CAUSED",
    "PROTOCOL_VERSION",
    "Cancel",
    "Disconnect",
    "Error",
    "Final",
    "GatewayMessage",
    "Heartbeat",
    "Message",
    "Partial",
    "ProtocolError",
    "Ready",
    "Reannounce",
    "Refuse",
    "Request",
    "Welcome",
    "WorkerMessage",
    "decode",
    "decode_gateway_message",
    "decode_worker_message",
    "encode",
    "error",
    "is_node_caused",
    "new_rid",
    "new_worker_id",
    "peek_ids",
    "socket_max_bytes",
]

PROTOCOL_VERSION: _Final = 1
"""The first byte of every frame.

A change an older peer would misread bumps it. A field appended to a message
with a default does not: :func:`encode` leaves such fields off the frame while
they hold their defaults (see :data:`_OPTIONAL_TAIL`), so an older peer reads
every message that does not use them, and a newer peer reads an older peer's
shorter message with the defaults filled in. A message that does use one is
sent only to a peer that announced it understands it (a ``delivered`` text
only to a worker whose Ready said ``continuable``); the rest (a ``continuable``
Ready, an Error carrying ``retry_after`` or ``upstream_code``) reaches only an
upgraded gateway, so gateways upgrade first."""

MAX_FRAME_BYTES: _Final = 16 * 1024 * 1024
"""Default largest frame accepted (version byte included); checked before decoding."""

MAX_DEADLINE: _Final = _limits.MAX_DEADLINE
"""Largest remaining deadline a Request may carry, in seconds (it must be finite).

Declared in :mod:`fedgate.validation` with the other settings' bounds, so that an
``InferenceRequest`` never accepts a deadline this wire would reject."""

# --- error codes -------------------------------------------------------------
# Whether a failure counts against a node's health and breaker travels with
# the error (Error.node_caused), but the classification is defined once here
# so that both sides agree on it.
ERR_INTERNAL: _Final = "internal"  # the worker itself failed (a bug)
ERR_BACKEND: _Final = "backend"  # the model backend failed (upstream 5xx, exception)
ERR_CRASH: _Final = "crash"  # the worker process died (the gateway infers it)
ERR_DEADLINE: _Final = "deadline"  # the attempt's remaining time ran out on the worker
ERR_STALL: _Final = "stall"  # the worker stopped producing (the gateway infers it)
ERR_BAD_INPUT: _Final = "bad_input"  # the request's input is invalid for the backend
ERR_UNSUPPORTED: _Final = "unsupported"  # capability / model / resume not served here
ERR_OVERLOADED: _Final = "overloaded"  # max concurrency reached: try another node
ERR_CANCELLED: _Final = "cancelled"  # acknowledges the gateway's Cancel
ERR_SHUTDOWN: _Final = "shutdown"  # the worker is draining and did not finish this one
# The input is longer than this model's context window: no node of the same model will
# take it, a model with a larger window may (an upstream's context_length_exceeded).
ERR_CONTEXT_LENGTH: _Final = "context_length"
# A continuation (Request.delivered) the backend's upstream would not take, e.g. a
# server that refuses an assistant prefill: nobody's fault; the stream's real cause
# of failure is the interruption that asked for the continuation.
ERR_CANNOT_CONTINUE: _Final = "cannot_continue"

NODE_CAUSED: _Final[frozenset[str]] = frozenset(
    {ERR_INTERNAL, ERR_BACKEND, ERR_CRASH, ERR_DEADLINE, ERR_STALL}
)
"""Codes that count against the node's health and breaker."""

ERROR_CODES: _Final[frozenset[str]] = NODE_CAUSED | frozenset(
    {
        ERR_BAD_INPUT,
        ERR_UNSUPPORTED,
        ERR_OVERLOADED,
        ERR_CANCELLED,
        ERR_SHUTDOWN,
        ERR_CONTEXT_LENGTH,
        ERR_CANNOT_CONTINUE,
    }
)
"""Every code this version defines; a receiver treats any other code as node-caused."""


def is_node_caused(code: str) -> bool:
    """Whether a failure with this code counts against the node.

    Unknown codes count: a worker that invents codes is misbehaving.
    """
    return code in NODE_CAUSED or code not in ERROR_CODES


# --- field types -------------------------------------------------------------
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=_limits.MAX_ID)]
WireRid = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=_limits.MAX_REQUEST_ID)]
WorkerId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,64}$")]
CapabilityName = Annotated[str, msgspec.Meta(pattern=_limits.CAPABILITY_PATTERN)]
# On per-request messages a pattern would cost ~2 µs per decode (msgspec calls
# into ``re``): a Request's capability is only bounded here, because the worker
# looks it up in the set it announced (whose names Ready validated) anyway.
CapabilityRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
UpstreamCode = Annotated[str, msgspec.Meta(max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=8192)]
Count = Annotated[int, msgspec.Meta(ge=0)]
# NaN fails every comparison, so gt/ge bounds also reject it; le bounds reject inf.
# The bounds a worker's config and a request declare (fedgate.validation), checked here in C.
Seconds = Annotated[float, _limits.DEADLINE.meta]
Interval = Annotated[float, _limits.HEARTBEAT.meta]
Cost = Annotated[float, _limits.COST.meta]
RetryAfter = Annotated[float, msgspec.Meta(ge=0, le=3600)]
Concurrency = Annotated[int, _limits.CONCURRENCY.meta]


class _Msg(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """Base of every wire message (options shared by all of them)."""


# Tags are small ints (one msgpack byte). Hot-path messages got the low ones only
# for readability of hex dumps; every tag below 128 costs the same.
class Request(_Msg, tag=1):
    """gateway → worker: run one attempt of one request.

    ``rid`` is the gateway's unguessable wire id for the request (the same on
    every attempt); ``request_id`` is the caller's id. ``deadline`` is the time
    REMAINING for this attempt, in seconds (clocks are not shared). A stream
    resumed on another node starts at token ``resume_from``. A stream
    *continued* on a node that cannot resume but can continue a text (its
    Ready said ``continuable``) also carries ``delivered``: the bytes of the
    ``resume_from`` tokens the caller already has, for the backend to continue
    from; its tokens are still numbered from ``resume_from``. Sent only to a
    continuable worker, and only non-empty then.
    """

    rid: WireRid
    attempt: Count
    request_id: RequestId
    tenant: Id | None
    capability: CapabilityRef
    model: Id | None
    input: bytes
    deadline: Seconds
    resume_from: Count = 0
    stream: bool = True
    delivered: bytes = b""


class Partial(_Msg, tag=2):
    """worker → gateway: tokens ``index … index + len(tokens) - 1`` of an attempt."""

    rid: WireRid
    attempt: Count
    index: Count
    tokens: Annotated[list[bytes], msgspec.Meta(min_length=1)]


class Final(_Msg, tag=3):
    """worker → gateway: the attempt completed.

    ``tokens`` is the total length of the generation (the index after its last
    token, counting from 0 even when the attempt resumed). ``output`` is the
    whole output of a non-stream request, ``b""`` for a stream.
    """

    rid: WireRid
    attempt: Count
    tokens: Count
    output: bytes = b""


class Error(_Msg, tag=4):
    """worker → gateway: the attempt failed; ``node_caused`` says whether it counts.

    ``retry_after`` (seconds) is how long the node asks not to be sent another
    request (an upstream's ``Retry-After``); 0 when it did not say.
    ``upstream_code`` is the error code the node's upstream gave (an OpenAI
    error body's ``code``), ``""`` when none: the caller reads it unchanged.
    Both are left off the frame at their defaults (see :data:`PROTOCOL_VERSION`).
    """

    rid: WireRid
    attempt: Count
    code: Code
    message: Text
    node_caused: bool
    retry_after: RetryAfter = 0.0
    upstream_code: UpstreamCode = ""


class Cancel(_Msg, tag=5):
    """gateway → worker: stop this attempt (answered by Error ``cancelled``)."""

    rid: WireRid
    attempt: Count


class Heartbeat(_Msg, tag=6):
    """worker → gateway: sent every interval from the worker's own event loop."""

    node: Id
    worker_id: WorkerId
    seq: Count
    inflight: Count
    queue_depth: Count

    def __post_init__(self) -> None:
        # Cross-field rules msgspec cannot declare; only on low-rate messages,
        # never on the per-token path.
        if self.queue_depth > self.inflight:
            raise ValueError(
                f"queue_depth: expected at most inflight ({self.inflight}), got {self.queue_depth}"
            )


class Ready(_Msg, tag=7):
    """worker → gateway: announce (or re-announce) what this worker serves.

    ``resumable``: its backend reproduces a generation exactly from any token
    index. ``continuable``: it cannot, but it can continue a stream from the
    text already delivered (Request.delivered), as an OpenAI-compatible
    server continues an assistant message.
    """

    node: Id
    region: Id
    worker_id: WorkerId
    models: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=1024)]
    capabilities: Annotated[list[CapabilityName], msgspec.Meta(min_length=1, max_length=256)]
    gpu: bool
    cost: Cost
    max_concurrency: Concurrency
    resumable: bool
    heartbeat_interval: Interval
    pid: Count
    version: Annotated[str, msgspec.Meta(max_length=64)]
    continuable: bool = False

    def __post_init__(self) -> None:
        for name in ("models", "capabilities"):
            items = getattr(self, name)
            if len(set(items)) != len(items):
                raise ValueError(f"{name}: expected distinct names, got {items!r}")


class Welcome(_Msg, tag=8):
    """gateway → worker: registration accepted."""

    node: Id
    gateway_id: Id


class Refuse(_Msg, tag=9):
    """gateway → worker: registration refused; the worker exits with status 3."""

    node: Id
    reason: Text


class Reannounce(_Msg, tag=10):
    """gateway → worker: "I do not know you" (e.g. after a gateway restart): send Ready."""


class Disconnect(_Msg, tag=11):
    """worker → gateway: clean shutdown.

    No new requests; heartbeats go on while in-flight work drains.
    """

    node: Id
    worker_id: WorkerId
    reason: Text


WorkerMessage: TypeAlias = Union[Ready, Heartbeat, Partial, Final, Error, Disconnect]  # noqa: UP007
GatewayMessage: TypeAlias = Union[Welcome, Refuse, Reannounce, Request, Cancel]  # noqa: UP007
Message: TypeAlias = Union[WorkerMessage, GatewayMessage]  # noqa: UP007

_OPTIONAL_TAIL: dict[type[_Msg], tuple[tuple[str, object, int], ...]] = {
    Request: (("delivered", b"", 2),),
    Ready: (("continuable", False, 1),),
    Error: (("upstream_code", "", 1), ("retry_after", 0.0, 9)),
}
"""Per message, the fields appended since it first shipped, LAST first: (name,
default, the default's encoded size). :func:`encode` leaves off the run of
them, from the end, that hold their defaults (every one of these messages is a
fixarray: a one-byte header counting its items)."""

_ENCODER = msgspec.msgpack.Encoder()
_encode_body = _ENCODER.encode
_PREFIX = bytes([PROTOCOL_VERSION])
_DECODE_ANY = msgspec.msgpack.Decoder(Message).decode
_VERSION = PROTOCOL_VERSION
# Fast path for ``bytes`` frames (what pyzmq's recv returns): copying a small
# body past the version byte is cheaper than making and slicing a memoryview
# (measured ~670 ns against ~950 ns for a one-token Partial, decode included);
# large bodies are sliced without a copy.
_COPY_MAX = 4096
_DECODE_FROM_WORKER = msgspec.msgpack.Decoder(WorkerMessage).decode
_DECODE_FROM_GATEWAY = msgspec.msgpack.Decoder(GatewayMessage).decode


def socket_max_bytes(max_frame_bytes: int) -> int:
    """The ``MAXMSGSIZE`` of a socket whose frames are bounded by ``max_frame_bytes``.

    Twice the bound: a frame a little over it is still read, counted and
    answered as malformed on the same connection (a worker answers a REQUEST
    it cannot take with an Error for its id), while anything larger makes
    libzmq drop the sender's connection as soon as the frame's header announces
    it, before a byte of it is buffered — two 1 GiB frames cost nothing.
    """
    return 2 * max_frame_bytes


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


def encode(msg: Message) -> bytes:
    """Encode one message as one frame: the version byte, then the MessagePack body.

    Parameters
    ----------
    msg : Message
        Any struct of this module. Field values are trusted (not re-validated).

    Returns
    -------
    bytes
        The frame to send. Fields appended to the message since it first
        shipped are left off while they hold their defaults, so that older
        peers read it (see :data:`PROTOCOL_VERSION`).
    """
    kind = type(msg)
    if kind is Partial:  # the frame per token chunk: nothing optional, nothing to check
        return _PREFIX + _encode_body(msg)
    if kind in _OPTIONAL_TAIL:
        if kind is Request:  # once per attempt: its own short path
            body = _encode_body(msg)
            if msg.delivered:  # type: ignore[union-attr]
                return _PREFIX + body
            if len(body) <= _COPY_MAX:
                return _REQUEST_SHORT + body[1:-2]
            return b"".join((_REQUEST_SHORT, memoryview(body)[1:-2]))
        return _encode_short(msg)
    return _PREFIX + _encode_body(msg)


# The version byte and the fixarray header of a Request without ``delivered``.
_REQUEST_SHORT = bytes((PROTOCOL_VERSION, 0x90 + len(Request.__struct_fields__)))


def _encode_short(msg: Message) -> bytes:
    body = _encode_body(msg)
    dropped = cut = 0
    for name, default, size in _OPTIONAL_TAIL[type(msg)]:
        value = getattr(msg, name)
        if type(value) is not type(default) or value != default:
            break
        dropped += 1
        cut += size
    if not dropped:
        return _PREFIX + body
    return b"".join((_PREFIX, bytes((body[0] - dropped,)), memoryview(body)[1 : len(body) - cut]))


def _decode(frame: object, max_frame_bytes: int, decode_body: object, what: str) -> object:
    try:
        view = memoryview(frame)  # type: ignore[arg-type]
    except TypeError:
        raise ProtocolError(f"expected a bytes-like frame, got {type(frame).__name__}") from None
    size = view.nbytes
    if size == 0:
        raise ProtocolError("empty frame: expected a version byte and a message body")
    if size > max_frame_bytes:
        raise ProtocolError(
            f"oversized frame: expected at most {max_frame_bytes} bytes, got {size}"
        )
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        try:
            view = view.cast("B")
        except TypeError:
            raise ProtocolError("expected a contiguous bytes-like frame") from None
    version = view[0]
    if not isinstance(version, int):  # a "c" view yields 1-byte bytes
        version = version[0]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"expected protocol version {PROTOCOL_VERSION}, got {version}")
    body = view[1:]
    try:
        return decode_body(body)  # type: ignore[operator]
    except msgspec.DecodeError as exc:
        raise ProtocolError(_explain(body, exc, what)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # defensive
        raise ProtocolError(f"malformed {what}: {exc}") from None


_BY_TAG: dict[int, type[_Msg]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Request,
        Partial,
        Final,
        Error,
        Cancel,
        Heartbeat,
        Ready,
        Welcome,
        Refuse,
        Reannounce,
        Disconnect,
    )
}
_WHERE = re.compile(r"`\$\[(\d+)\]")


def _array_head(body: bytes | memoryview) -> int:
    """Where the first item of a MessagePack array starts in ``body``; -1 if not an array."""
    if not body:
        return -1
    first = body[0]
    if 0x90 <= first <= 0x9F:  # fixarray
        return 1
    if first == 0xDC:  # array 16
        return 3
    if first == 0xDD:  # array 32
        return 5
    return -1


def _peek_tag(body: bytes | memoryview) -> int | None:
    """The tag of a body, read from its first bytes (every tag is a positive fixint)."""
    pos = _array_head(body)
    if pos < 0 or pos >= len(body):
        return None
    tag = body[pos]
    return tag if tag < 0x80 else None


def peek_ids(frame: bytes | memoryview) -> tuple[int, str, int] | None:
    """``(tag, rid, attempt)`` from the head of a frame, without decoding the rest.

    The per-request messages (Request, Partial, Final, Error, Cancel) all start
    ``[tag, rid, attempt, …]``: a receiver that cannot decode one can still
    answer for its id. Reads a few bytes at most; None when the head is not
    readable (not this version, not an array, a rid that is not 1-128
    characters of text, an attempt that is not a non-negative integer).
    """
    size = len(frame)
    if size < 5 or frame[0] != PROTOCOL_VERSION:
        return None
    pos = _array_head(frame[1:6])
    if pos < 0:
        return None
    pos += 1
    tag = frame[pos]
    if tag >= 0x80:
        return None
    pos += 1
    if pos >= size:
        return None
    head = frame[pos]
    if 0xA0 <= head <= 0xBF:  # fixstr
        length, pos = head & 0x1F, pos + 1
    elif head == 0xD9 and pos + 1 < size:  # str 8
        length, pos = frame[pos + 1], pos + 2
    else:
        return None  # a rid is 1-128 characters: fixstr or str 8
    if not 1 <= length <= 128 or pos + length >= size:
        return None
    try:
        rid = bytes(frame[pos : pos + length]).decode()
    except UnicodeDecodeError:
        return None
    pos += length
    head = frame[pos]
    if head < 0x80:
        return tag, rid, head
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(head)
    if width is None or pos + 1 + width > size:
        return None
    return tag, rid, int.from_bytes(bytes(frame[pos + 1 : pos + 1 + width]), "big")


def _explain(body: bytes | memoryview, exc: Exception, what: str) -> str:
    """Turn msgspec's positional error (``$[5]``) into one naming the message and field.

    Never decodes the body again: the message is named by its tag, read from
    the body's first bytes. A frame that failed validation has already cost
    one full decode; a second, untyped one just to word the error would cost
    as much again (a 16 MiB Ready: ~340 ms and a 5.6 M-item list).
    """
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return f"malformed {what}: {text}"
    tag = _peek_tag(body)
    cls = _BY_TAG.get(tag) if tag is not None else None
    if cls is None:  # None: not an array, or its first item is no small integer
        return f"malformed {what}: expected a message tag in 1..{len(_BY_TAG)}, got {tag!r}"
    where = _WHERE.search(text)
    if where is None:
        return f"malformed {cls.__name__}: {text}"
    position = int(where.group(1))
    if position == 0:
        return f"malformed {what}: {cls.__name__} (tag {tag}) is not a {what}"
    fields = cls.__struct_fields__
    if position - 1 < len(fields):
        return f"malformed {cls.__name__}: field {fields[position - 1]!r}: {text}"
    return f"malformed {cls.__name__}: {text}"


def _fast_failed(frame: bytes, exc: Exception, what: str) -> ProtocolError:
    """The error for a ``bytes`` frame the fast path could not decode (no second decode)."""
    body = frame[1:] if len(frame) <= _COPY_MAX else memoryview(frame)[1:]
    if isinstance(exc, msgspec.DecodeError):
        return ProtocolError(_explain(body, exc, what))
    return ProtocolError(f"malformed {what}: {exc}")


def decode(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int = MAX_FRAME_BYTES
) -> Message:
    """Decode one frame into a message, whichever side sent it.

    Parameters
    ----------
    frame : bytes-like
        ``bytes``, ``bytearray``, ``memoryview`` or a ``zmq.Frame`` (anything
        exposing the buffer protocol).
    max_frame_bytes : int
        Frames larger than this are rejected before any decoding.

    Returns
    -------
    Message
        The decoded struct.

    Raises
    ------
    ProtocolError
        Empty, oversized, wrong version, malformed MessagePack, unknown tag, or
        a field that fails validation. Never any other exception.
    """
    if type(frame) is bytes and 1 < len(frame) <= max_frame_bytes and frame[0] == _VERSION:
        try:
            return _DECODE_ANY(frame[1:] if len(frame) <= _COPY_MAX else memoryview(frame)[1:])
        except Exception as exc:
            raise _fast_failed(frame, exc, "message") from None
    return _decode(frame, max_frame_bytes, _DECODE_ANY, "message")  # type: ignore[return-value]


def decode_worker_message(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int = MAX_FRAME_BYTES
) -> WorkerMessage:
    """Decode a frame a worker sent (what a gateway receives); see :func:`decode`.

    A gateway→worker message is rejected as malformed.
    """
    if type(frame) is bytes and 1 < len(frame) <= max_frame_bytes and frame[0] == _VERSION:
        try:
            return _DECODE_FROM_WORKER(
                frame[1:] if len(frame) <= _COPY_MAX else memoryview(frame)[1:]
            )
        except Exception as exc:
            raise _fast_failed(frame, exc, "worker message") from None
    return _decode(frame, max_frame_bytes, _DECODE_FROM_WORKER, "worker message")  # type: ignore[return-value]


def decode_gateway_message(
    frame: bytes | bytearray | memoryview, max_frame_bytes: int = MAX_FRAME_BYTES
) -> GatewayMessage:
    """Decode a frame a gateway sent (what a worker receives); see :func:`decode`.

    A worker→gateway message is rejected as malformed.
    """
    if type(frame) is bytes and 1 < len(frame) <= max_frame_bytes and frame[0] == _VERSION:
        try:
            return _DECODE_FROM_GATEWAY(
                frame[1:] if len(frame) <= _COPY_MAX else memoryview(frame)[1:]
            )
        except Exception as exc:
            raise _fast_failed(frame, exc, "gateway message") from None
    return _decode(frame, max_frame_bytes, _DECODE_FROM_GATEWAY, "gateway message")  # type: ignore[return-value]


def error(rid: str, attempt: int, code: str, message: str) -> Error:
    """An :class:`Error` whose ``node_caused`` follows the code's classification."""
    return Error(rid, attempt, code, message[:8192], is_node_caused(code))


_RID_BATCH = 256
_rid_batches = threading.local()


def new_rid() -> str:
    """A fresh unguessable wire id for one request (128 random bits, hex).

    The bits come from ``os.urandom`` (as ``secrets`` draws them), 256 ids per
    system call instead of one per request; each thread draws its own batch,
    and a forked child never reuses its parent's.
    """
    ids: list[str] | None = getattr(_rid_batches, "ids", None)
    if not ids:
        raw = os.urandom(16 * _RID_BATCH).hex()
        ids = _rid_batches.ids = [raw[i : i + 32] for i in range(0, 32 * _RID_BATCH, 32)]
    return ids.pop()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _rid_batches.__dict__.clear())


def new_worker_id() -> str:
    """A fresh worker id (64 random bits, hex): new on every worker process start."""
    return secrets.token_hex(8)
