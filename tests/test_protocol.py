"""The wire format: round trips, versioning, limits, and garbage that must never crash a reader."""

from __future__ import annotations

import math
import random

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    Partial(RID, 2, 12, [b"abcdef01 ", b"23456789 "]),
    Final(RID, 2, 40, b""),
    Final(RID, 0, 3, b"one two three"),
    Error(RID, 1, "backend", "upstream answered HTTP 500", True),
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
    assert NODE_CAUSED | not_node == ERROR_CODES
    for code in NODE_CAUSED:
        assert protocol.is_node_caused(code)
        assert protocol.error(RID, 0, code, "x").node_caused is True
    for code in not_node:
        assert not protocol.is_node_caused(code)
        assert protocol.error(RID, 0, code, "x").node_caused is False
    assert protocol.is_node_caused("something_new")  # unknown codes count


def test_ids_are_fresh_and_unguessable() -> None:
    rids = {protocol.new_rid() for _ in range(1000)}
    assert len(rids) == 1000
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in rids)
    wid = protocol.new_worker_id()
    assert decode(encode(Heartbeat("n", wid, 0, 0, 0))).worker_id == wid  # type: ignore[union-attr]


def test_a_typical_partial_is_small() -> None:
    one = encode(Partial(protocol.new_rid(), 0, 1234, [b"abcdef01 "]))
    assert len(one) <= 56
    # Batching amortises the header: 64 tokens cost their bytes plus 2 each.
    many = encode(Partial(protocol.new_rid(), 0, 1234, [b"abcdef01 "] * 64))
    assert len(many) <= 64 * (9 + 2) + 48


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
