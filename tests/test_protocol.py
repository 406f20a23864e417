"""The wire format: round trips, versioning, limits, and garbage that must never crash a reader."""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
from collections.abc import Callable

import msgspec
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import federation

from fedgate.gateway.gateway import GatewayConfig
from fedgate.transport import protocol
from fedgate.transport.protocol import (
    ERROR_CODES,
    MAX_FRAME_BYTES,
    NODE_CAUSED,
    PROTOCOL_VERSION,
    Cancel,
    Disconnect,
    Error,
    Final,
    Heartbeat,
    Partial,
    ProtocolError,
    Ready,
    Reannounce,
    Refuse,
    Request,
    Welcome,
    decode,
    decode_gateway_message,
    decode_worker_message,
    encode,
)
from fedgate.worker.backends.synthetic import SyntheticBackend
from fedgate.worker.process import Worker, WorkerConfig

RID = "9f86d081884c7d659a2feaa0c55ad015"
WID = "a1b2c3d4e5f60718"

EXAMPLES: list[protocol.Message] = [
    Ready(
        "us-west-gpu-01",
        "us-west-2",
        WID,
        ["whisper-large-v3", "llama-3-8b"],
        ["transcribe", "generate"],
        True,
        0.5,
        64,
        True,
        1.0,
        4242,
        "0.1.0",
    ),
    Ready("n", "r", WID, ["m"], ["generate"], False, 1.0, 8, False, 1.0, 1, "0.2.0", True),
    Welcome("us-west-gpu-01", "gw-7"),
    Refuse("us-west-gpu-01", "node id already live with worker 0011223344556677"),
    Heartbeat("us-west-gpu-01", WID, 17, 3, 1),
    Reannounce(),
    Request(
        RID,
        2,
        "req-001",
        "acme-corp",
        "transcribe",
        "whisper-large-v3",
        b"\x00audio\xff",
        4.75,
        12,
        True,
    ),
    Request(RID, 0, "req-002", None, "generate", None, b"", 0.001, 0, False),
    Request(RID, 3, "req-003", None, "generate", None, b"hi", 2.0, 40, True, b"w0 w1 \xe2\x82"),
    Partial(RID, 2, 12, [b"abcdef01 ", b"23456789 "]),
    Final(RID, 2, 40, b""),
    Final(RID, 0, 3, b"one two three"),
    Error(RID, 1, "backend", "upstream answered HTTP 500", True),
    Error(RID, 1, "bad_input", "upstream answered HTTP 400", False, 0.0, "context_length_exceeded"),
    Cancel(RID, 2),
    Disconnect("us-west-gpu-01", WID, "stopping"),
]

WORKER_SENT = (Ready, Heartbeat, Partial, Final, Error, Disconnect)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: protocol.Message) -> None:
    frame = encode(msg)
    assert frame[0] == PROTOCOL_VERSION
    assert decode(frame) == msg
    assert decode(memoryview(frame)) == msg
    assert decode(bytearray(frame)) == msg
    assert decode(zmq.Frame(frame)) == msg
    directed = decode_worker_message if isinstance(msg, WORKER_SENT) else decode_gateway_message
    assert directed(frame) == msg


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_a_message_sent_the_wrong_way_is_rejected(msg: protocol.Message) -> None:
    wrong = decode_gateway_message if isinstance(msg, WORKER_SENT) else decode_worker_message
    with pytest.raises(ProtocolError, match=rf"{type(msg).__name__} \(tag \d+\) is not a"):
        wrong(encode(msg))


def test_tags_are_distinct_small_ints() -> None:
    tags = [type(m).__struct_config__.tag for m in EXAMPLES]
    assert len(set(tags)) == len({type(m) for m in EXAMPLES}) == 11
    assert all(isinstance(t, int) and 0 < t < 128 for t in tags)


def test_version_byte_is_checked() -> None:
    body = encode(Cancel(RID, 0))[1:]
    with pytest.raises(ProtocolError, match="expected protocol version 1, got 7"):
        decode(b"\x07" + body)
    with pytest.raises(ProtocolError, match="expected protocol version 1, got 0"):
        decode(b"\x00" + body)


def test_empty_frame() -> None:
    with pytest.raises(ProtocolError, match="empty frame"):
        decode(b"")
    with pytest.raises(ProtocolError, match="empty frame"):
        decode(memoryview(b""))


def test_non_bytes_frame() -> None:
    with pytest.raises(ProtocolError, match="expected a bytes-like frame, got str"):
        decode("not bytes")  # type: ignore[arg-type]


def test_oversized_frame_is_rejected_before_decoding() -> None:
    big = Request(RID, 0, "r", None, "generate", None, b"x" * 1000, 1.0)
    frame = encode(big)
    assert decode(frame, max_frame_bytes=len(frame)) == big
    with pytest.raises(ProtocolError, match=rf"at most {len(frame) - 1} bytes, got {len(frame)}"):
        decode(frame, max_frame_bytes=len(frame) - 1)
    # Checked before decoding: a huge frame of garbage reports the size, not the garbage.
    with pytest.raises(ProtocolError, match="oversized"):
        decode(b"\x01" + b"\xff" * MAX_FRAME_BYTES)


# --- size limits at every entry point ----------------------------------------
# Each decoder has a fast path for ``bytes`` (what pyzmq's recv returns) with its
# own inline size check, and a general path for every other buffer: both must
# hold the limit to the byte, on either side of the copy/slice threshold.


def _worker_sized(pad: int, knob: int) -> protocol.Message:
    return Final(RID, knob, 3, b"x" * pad)


def _gateway_sized(pad: int, knob: int) -> protocol.Message:
    return Request(RID, knob, "r", None, "generate", None, b"x" * pad, 1.0)


def exactly(size: int, build: Callable[[int, int], protocol.Message]) -> bytes:
    """A valid frame of exactly ``size`` bytes, padded through a bytes field.

    MessagePack length headers grow by a byte at 256 and 65536, which leaves
    sizes one padding length cannot reach; a second field whose encoding is one
    byte longer (attempt 200 against 0) reaches them.
    """
    for knob in (0, 200):
        guess = size - len(encode(build(0, knob)))
        for pad in range(max(guess - 8, 0), max(guess + 1, 0)):
            frame = encode(build(pad, knob))
            if len(frame) == size:
                return frame
    raise AssertionError(f"no frame of exactly {size} bytes")  # pragma: no cover


BUFFERS: dict[str, Callable[[bytes], object]] = {
    "bytes": bytes,  # the fast path
    "bytearray": bytearray,
    "memoryview": memoryview,
    "zmq.Frame": zmq.Frame,
}
# (decoder, message builder): every entry point with a message it must accept.
ENTRY_POINTS = {
    "decode(worker)": (decode, _worker_sized),
    "decode(gateway)": (decode, _gateway_sized),
    "decode_worker_message": (decode_worker_message, _worker_sized),
    "decode_gateway_message": (decode_gateway_message, _gateway_sized),
}


@pytest.mark.parametrize("limit", [100, protocol._COPY_MAX, protocol._COPY_MAX + 1, 70_000])
@pytest.mark.parametrize("buffer", BUFFERS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_decoder_holds_the_size_limit_to_the_byte(
    entry: str, buffer: str, limit: int
) -> None:
    reader, build = ENTRY_POINTS[entry]
    wrap = BUFFERS[buffer]
    for size in (limit - 1, limit):
        frame = exactly(size, build)
        assert reader(wrap(frame), limit) == decode(frame), size
    over = exactly(limit + 1, build)
    with pytest.raises(
        ProtocolError, match=rf"^oversized frame: expected at most {limit} bytes, got {limit + 1}$"
    ):
        reader(wrap(over), limit)
    # The same frame passes once the limit allows it: only its size was wrong.
    assert reader(wrap(over), limit + 1) == decode(over)


@pytest.mark.parametrize("buffer", ["bytes", "memoryview"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_decoder_holds_the_default_limit(entry: str, buffer: str) -> None:
    reader, build = ENTRY_POINTS[entry]
    wrap = BUFFERS[buffer]
    at_limit = exactly(MAX_FRAME_BYTES, build)
    assert reader(wrap(at_limit)) == decode(at_limit, MAX_FRAME_BYTES)
    with pytest.raises(ProtocolError, match=rf"at most {MAX_FRAME_BYTES} bytes, got "):
        reader(wrap(exactly(MAX_FRAME_BYTES + 1, build)))


@pytest.mark.parametrize("buffer", BUFFERS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_decoder_checks_size_before_content(entry: str, buffer: str) -> None:
    reader = ENTRY_POINTS[entry][0]
    wrap = BUFFERS[buffer]
    limit = 64
    # Garbage one byte over the limit is oversized; at the limit it is malformed.
    with pytest.raises(ProtocolError, match=r"^oversized frame"):
        reader(wrap(b"\x01" + b"\xc1" * limit), limit)
    with pytest.raises(ProtocolError, match=r"^malformed"):
        reader(wrap(b"\x01" + b"\xc1" * (limit - 1)), limit)
    # And the smallest frames: nothing at all, then a version byte with no body.
    with pytest.raises(ProtocolError, match=r"^empty frame"):
        reader(wrap(b""), limit)
    with pytest.raises(ProtocolError, match=r"^malformed"):
        reader(wrap(b"\x01"), limit)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ([1, "", 0, "r", None, "generate", None, b"", 1.0, 0, True], "'rid'"),
        ([1, RID, -1, "r", None, "generate", None, b"", 1.0, 0, True], "'attempt'"),
        ([1, RID, 0, "", None, "generate", None, b"", 1.0, 0, True], "'request_id'"),
        ([1, RID, 0, "r", "", "generate", None, b"", 1.0, 0, True], "'tenant'"),
        ([1, RID, 0, "r", None, "", None, b"", 1.0, 0, True], "'capability'"),
        ([1, RID, 0, "r", None, "x" * 65, None, b"", 1.0, 0, True], "'capability'"),
        ([1, RID, 0, "r", None, "generate", None, b"", 0.0, 0, True], "'deadline'"),
        ([1, RID, 0, "r", None, "generate", None, b"", -1.0, 0, True], "'deadline'"),
        ([1, RID, 0, "r", None, "generate", None, b"", math.inf, 0, True], "'deadline'"),
        ([1, RID, 0, "r", None, "generate", None, b"", math.nan, 0, True], "'deadline'"),
        ([1, RID, 0, "r", None, "generate", None, b"", 1.0, -3, True], "'resume_from'"),
        ([1, RID, 0, "r", None, "generate", None, "text", 1.0, 0, True], "'input'"),
        ([2, RID, 0, -1, [b"x"]], "'index'"),
        ([2, RID, 0, 0, []], "'tokens'"),
        ([2, RID, 0, 0, ["str"]], "'tokens'"),
        ([3, RID, 0, -5, b""], "'tokens'"),
        ([4, RID, 0, "", "m", True], "'code'"),
        ([4, RID, 0, "backend", "m", "yes"], "'node_caused'"),
        ([6, "n", "not-hex!", 0, 0, 0], "'worker_id'"),
        ([6, "n", WID, 0, -1, 0], "'inflight'"),
        ([6, "n", WID, 0, 1, 2], "queue_depth: expected at most inflight"),
        (
            [7, "n", "r", WID, ["m", "m"], ["generate"], False, 1.0, 1, False, 1.0, 1, "v"],
            "models: expected distinct",
        ),
        ([7, "n", "r", WID, [], ["generate"], False, 1.0, 1, False, 1.0, 1, "v"], "'models'"),
        (
            [7, "n", "r", WID, ["m"], ["Generate"], False, 1.0, 1, False, 1.0, 1, "v"],
            "'capabilities'",
        ),
        ([7, "n", "r", WID, ["m"], ["generate"], False, -1.0, 1, False, 1.0, 1, "v"], "'cost'"),
        (
            [7, "n", "r", WID, ["m"], ["generate"], False, 1.0, 0, False, 1.0, 1, "v"],
            "'max_concurrency'",
        ),
        (
            [7, "n", "r", WID, ["m"], ["generate"], False, 1.0, 1, False, 0.0, 1, "v"],
            "'heartbeat_interval'",
        ),
    ],
)
def test_semantic_constraints_are_validated(fields: list[object], complaint: str) -> None:
    frame = b"\x01" + msgspec.msgpack.encode(fields)
    with pytest.raises(ProtocolError, match=complaint):
        decode(frame)


def test_unknown_tag_and_extra_fields_are_rejected() -> None:
    with pytest.raises(ProtocolError, match=r"expected a message tag in 1\.\.11, got 99"):
        decode(b"\x01" + msgspec.msgpack.encode([99, "x"]))
    with pytest.raises(ProtocolError, match="at most length 2"):
        decode(b"\x01" + msgspec.msgpack.encode([5, RID, 0, "extra"]))
    with pytest.raises(ProtocolError, match="got None"):
        decode(b"\x01" + msgspec.msgpack.encode({"rid": RID}))


def test_error_codes_classification() -> None:
    assert {"internal", "backend", "crash", "deadline", "stall"} == NODE_CAUSED
    not_node = {"bad_input", "unsupported", "overloaded", "cancelled", "shutdown"}
    not_node |= {"context_length", "cannot_continue"}
    assert NODE_CAUSED | not_node == ERROR_CODES
    for code in NODE_CAUSED:
        assert protocol.is_node_caused(code)
        assert protocol.error(RID, 0, code, "x").node_caused is True
    for code in not_node:
        assert not protocol.is_node_caused(code)
        assert protocol.error(RID, 0, code, "x").node_caused is False
    assert protocol.is_node_caused("something_new")  # unknown codes count


def test_ids_are_fresh_and_unguessable() -> None:
    # Three batches of the per-thread cache, so refills are covered too.
    rids = [protocol.new_rid() for _ in range(3 * protocol._RID_BATCH + 17)]
    assert len(set(rids)) == len(rids)
    # Exactly 32 lower-case hex digits: int(r, 16) would also take "0x…", "-…",
    # "1_0", whitespace or upper case.
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in rids), rids[:5]
    # 128 random bits: every bit position is set in some ids and clear in others
    # (a fixed bit survives 800 fair draws with probability 2**-799).
    values = [int(r, 16) for r in rids]
    ored, anded = 0, (1 << 128) - 1
    for v in values:
        ored, anded = ored | v, anded & v
    assert ored == (1 << 128) - 1 and anded == 0, (hex(ored), hex(anded))
    # In another thread: its own batch, no id shared with this one.
    other: list[str] = []
    thread = threading.Thread(target=lambda: other.extend(protocol.new_rid() for _ in range(300)))
    thread.start()
    thread.join()
    assert len(set(other)) == 300 and not set(other) & set(rids)
    wid = protocol.new_worker_id()
    assert decode(encode(Heartbeat("n", wid, 0, 0, 0))).worker_id == wid  # type: ignore[union-attr]


def test_a_typical_partial_is_small() -> None:
    one = encode(Partial(protocol.new_rid(), 0, 1234, [b"abcdef01 "]))
    assert len(one) <= 56
    # Batching amortises the header: 64 tokens cost their bytes plus 2 each.
    many = encode(Partial(protocol.new_rid(), 0, 1234, [b"abcdef01 "] * 64))
    assert len(many) <= 64 * (9 + 2) + 48


# --- the receive loops: the limit each side configures, and frames per message --
# The gateway's ROUTER reads [identity, frame] and the worker's DEALER [frame];
# both pass their configured max_frame_bytes to the decoder's bytes fast path.
# A message with one frame too many is dropped whole, and the next one is read
# from its own first frame.


def _heartbeat_sized(pad: int, knob: int) -> protocol.Message:
    return Heartbeat("n" * (pad + 1), WID, knob, 0, 0)


async def _reply(sock: zmq.asyncio.Socket, timeout: float = 5.0) -> protocol.Message:
    return decode(await asyncio.wait_for(sock.recv(), timeout))


async def test_gateway_receive_limits_frame_size_and_count() -> None:
    # A heartbeat from a worker the gateway does not know is answered with
    # Reannounce, and a dropped frame is counted: both are visible from outside.
    limit = 200
    config = GatewayConfig(request_timeout=5.0, retry_delay=0.01, max_frame_bytes=limit)
    async with federation(config=config) as (gw, _):
        ctx = zmq.asyncio.Context()
        rogue = ctx.socket(zmq.DEALER)
        rogue.connect(gw.endpoints[0])
        try:
            dropped = 0
            for size in (limit + 1, limit, limit + 1, limit - 1):
                frame = exactly(size, _heartbeat_sized)
                await rogue.send(frame)
                if size > limit:
                    dropped += 1
                    continue
                # Frames from one peer are read in order: the answer to this one
                # comes after every earlier frame was dropped or answered.
                assert isinstance(await _reply(rogue), Reannounce), size
                assert gw.stats().malformed_frames == dropped, size
            beat = encode(Heartbeat("n", WID, 0, 0, 0))
            for extra in ([b""], [beat], [beat, beat]):
                await rogue.send_multipart([beat, *extra])
                await rogue.send(beat)
                dropped += 1
                assert isinstance(await _reply(rogue), Reannounce), extra
                assert gw.stats().malformed_frames == dropped, extra
            assert not await rogue.poll(0), "a multi-frame message was answered"
        finally:
            rogue.close(0)
            ctx.term()


async def test_worker_receive_limits_frame_size_and_count() -> None:
    limit = 300
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    cfg = WorkerConfig(
        [router.getsockopt_string(zmq.LAST_ENDPOINT)], "node", "region", ["m"], ["generate"],
        heartbeat_interval=0.05, close_linger=0.0, max_frame_bytes=limit,
    )  # fmt: skip

    async def answer(rid: str) -> protocol.Message:
        while True:  # skip heartbeats and partials
            _, frame = await asyncio.wait_for(router.recv_multipart(), 5.0)
            msg = decode_worker_message(frame)
            if isinstance(msg, (Final, Error)) and msg.rid == rid:
                return msg

    def sized(size: int, rid: str) -> bytes:
        return exactly(
            size, lambda pad, knob: Request(rid, knob, "r", None, "generate", None,
                                            b"x" * pad, 10.0, 0, False)
        )  # fmt: skip

    try:
        async with Worker(cfg, backend=SyntheticBackend(tokens=1)) as worker:
            ident, ready = await asyncio.wait_for(router.recv_multipart(), 5.0)
            assert isinstance(decode_worker_message(ready), Ready)
            await router.send_multipart([ident, encode(Welcome("node", "gw"))])
            await worker.wait_welcomed(5.0)
            dropped = served = 0
            for k, size in enumerate((limit + 1, limit, limit + 1, limit - 1)):
                rid = f"{k:032x}"
                await router.send_multipart([ident, sized(size, rid)])
                if size > limit:
                    dropped += 1
                    continue
                served += 1
                assert isinstance(await answer(rid), Final), size
                assert worker.stats.malformed_frames == dropped, size
                assert worker.stats.requests == served, size
            for k, extra in enumerate(([b""], [encode(Cancel(RID, 0))])):
                one, two = f"{k:031x}a", f"{k:031x}b"
                await router.send_multipart([ident, sized(100, one), *extra])
                await router.send_multipart([ident, sized(100, two)])
                dropped += 1
                served += 1
                assert isinstance(await answer(two), Final)
                assert worker.stats.malformed_frames == dropped, extra
                assert worker.stats.requests == served, extra
    finally:
        router.close(0)
        ctx.term()


# --- garbage: everything raises ProtocolError, nothing else ------------------


def _must_reject_or_decode(frame: bytes) -> None:
    for reader in (decode, decode_worker_message, decode_gateway_message):
        try:
            msg = reader(frame)
        except ProtocolError:
            continue
        # Whatever decodes must be a real message that survives a round trip.
        assert decode(encode(msg)) == msg


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    _must_reject_or_decode(data)
    _must_reject_or_decode(b"\x01" + data)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
_MSGPACK_VALUES = _SCALARS | st.lists(_SCALARS, max_size=4)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(0, 14), st.lists(_MSGPACK_VALUES, max_size=13))
def test_well_formed_msgpack_of_wrong_shape_is_rejected(tag: int, fields: list[object]) -> None:
    try:
        body = msgspec.msgpack.encode([tag, *fields])
    except (OverflowError, TypeError):  # ints beyond 64 bits are not msgpack
        return
    _must_reject_or_decode(b"\x01" + body)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_and_byte_flip_of_a_valid_frame(msg: protocol.Message) -> None:
    frame = encode(msg)
    for cut in range(len(frame)):
        _must_reject_or_decode(frame[:cut])
    rng = random.Random(len(frame))
    for _ in range(300):
        mutated = bytearray(frame)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(1, len(mutated))] = rng.randrange(256)
        _must_reject_or_decode(bytes(mutated))


def test_wrong_field_types_for_every_message() -> None:
    odd_values: list[object] = [None, True, -1, 2**63, 1.5, math.nan, "", "x" * 300, b"b", [], {}]
    rejected = 0
    for msg in EXAMPLES:
        fields = list(msgspec.msgpack.decode(encode(msg)[1:]))
        for position in range(1, len(fields)):
            for value in odd_values:
                candidate = list(fields)
                candidate[position] = value
                frame = b"\x01" + msgspec.msgpack.encode(candidate)
                try:
                    decode(frame)
                except ProtocolError:
                    rejected += 1
    assert rejected > 500


def test_deeply_nested_garbage() -> None:
    nested = b"\x91" * 100_000 + b"\xc0"  # [[[[ … nil ]]]]: a recursion bomb
    with pytest.raises(ProtocolError):
        decode(b"\x01" + nested)
    with pytest.raises(ProtocolError):
        decode(b"\x01\x9b\x01" + nested)


def test_error_retry_after_travels_and_a_five_field_error_still_decodes() -> None:
    # A worker of the previous build sends Errors without retry_after: still read.
    old = protocol.encode(protocol.Error("r", 0, protocol.ERR_BACKEND, "boom", True))
    old = old[:1] + msgspec.msgpack.encode(msgspec.msgpack.decode(old[1:])[:6])
    back = protocol.decode_worker_message(old)
    assert isinstance(back, protocol.Error) and back.retry_after == 0.0 and back.node_caused
    busy = protocol.Error("r", 1, protocol.ERR_OVERLOADED, "429", False, 2.5)
    back = protocol.decode_worker_message(protocol.encode(busy))
    assert isinstance(back, protocol.Error) and back.retry_after == 2.5
    for bad in (-1.0, math.inf, math.nan):
        frame = protocol.encode(protocol.Error("r", 1, protocol.ERR_OVERLOADED, "x", False, bad))
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_worker_message(frame)


# --- fields appended since version 1 shipped: what older peers read -----------


class _OldRequest(msgspec.Struct, array_like=True, forbid_unknown_fields=True, tag=1):
    rid: str
    attempt: int
    request_id: str
    tenant: str | None
    capability: str
    model: str | None
    input: bytes
    deadline: float
    resume_from: int = 0
    stream: bool = True


class _OldReady(msgspec.Struct, array_like=True, forbid_unknown_fields=True, tag=7):
    node: str
    region: str
    worker_id: str
    models: list[str]
    capabilities: list[str]
    gpu: bool
    cost: float
    max_concurrency: int
    resumable: bool
    heartbeat_interval: float
    pid: int
    version: str


class _OldError(msgspec.Struct, array_like=True, forbid_unknown_fields=True, tag=4):
    rid: str
    attempt: int
    code: str
    message: str
    node_caused: bool


_OLD = msgspec.msgpack.Decoder(_OldRequest | _OldReady | _OldError)


def test_new_fields_at_their_defaults_are_left_off_for_older_peers() -> None:
    """An older peer (the structs as version 1 first shipped them) reads every message that
    does not use a field appended since; one that uses it is longer, and it refuses that."""
    plain = Request(RID, 2, "r", None, "generate", None, b"x", 1.0, 5, False)
    old = _OLD.decode(encode(plain)[1:])
    assert isinstance(old, _OldRequest) and (old.resume_from, old.stream) == (5, False)
    ready = Ready("n", "r", WID, ["m"], ["generate"], False, 1.0, 8, True, 1.0, 1, "v")
    assert isinstance(_OLD.decode(encode(ready)[1:]), _OldReady)
    error = Error(RID, 1, "backend", "boom", True)
    assert _OLD.decode(encode(error)[1:]) == _OldError(RID, 1, "backend", "boom", True)
    # The new side reads the short forms back whole.
    for msg in (plain, ready, error):
        assert decode(encode(msg)) == msg
    # Used, a new field travels, and an older peer refuses the frame (never misreads it).
    for used in (
        Request(RID, 2, "r", None, "generate", None, b"x", 1.0, 5, True, b"w0 "),
        Ready("n", "r", WID, ["m"], ["generate"], False, 1.0, 8, False, 1.0, 1, "v", True),
        Error(RID, 1, "overloaded", "429", False, 2.5),
        Error(RID, 1, "bad_input", "400", False, 0.0, "fake_400"),
    ):
        assert decode(encode(used)) == used
        with pytest.raises(msgspec.ValidationError):
            _OLD.decode(encode(used)[1:])
    # retry_after set, upstream_code default: only the code is left off.
    assert len(msgspec.msgpack.decode(encode(Error(RID, 1, "x", "m", False, 1.0))[1:])) == 7


def test_messages_with_optional_fields_stay_fixarrays() -> None:
    # encode() rewrites the one-byte fixarray header when it leaves fields off.
    for cls in protocol._OPTIONAL_TAIL:
        assert len(cls.__struct_fields__) + 1 <= 15, cls
        for name, default, size in protocol._OPTIONAL_TAIL[cls]:
            assert len(msgspec.msgpack.encode(default)) == size, (cls, name)


def test_continuation_fields_are_bounded_and_typed() -> None:
    base: list[object] = [1, RID, 0, "r", None, "generate", None, b"", 1.0, 3, True]
    with pytest.raises(ProtocolError, match="'delivered'"):
        decode(b"\x01" + msgspec.msgpack.encode([*base, "text, not bytes"]))
    error: list[object] = [4, RID, 0, "bad_input", "m", False, 0.0]
    with pytest.raises(ProtocolError, match="'upstream_code'"):
        decode(b"\x01" + msgspec.msgpack.encode([*error, "c" * 129]))
    assert not protocol.is_node_caused(protocol.ERR_CANNOT_CONTINUE)
