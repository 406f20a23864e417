"""The socket pump (fedgate.transport.pump), against plain peer sockets over TCP loopback.

The gateway drives its ROUTER with a routed pump, a worker each DEALER with an
unrouted one; both are covered end to end elsewhere. Here: the batching rule,
the lone-message path, full queues and wake-ups, each once and directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from fedgate.errors import BackpressureError, NodeUnreachableError
from fedgate.transport.pump import Pump

pytestmark = pytest.mark.timeout(30)


class Owner:
    """A message held by send_to until the end of its burst."""

    def __init__(self) -> None:
        self.closed = False
        self.sent = False


class Inbox:
    """What a pump received, with a way to wait for it."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.malformed: list[str] = []
        self.changed = asyncio.Event()
        self.reply: Callable[[bytes, bytes], object] | None = None

    def on_message(self, identity: bytes, payload: bytes) -> None:
        self.messages.append((identity, payload))
        self.changed.set()
        if self.reply is not None:
            self.reply(identity, payload)

    def on_malformed(self, identity: bytes, why: str) -> None:
        self.malformed.append(why)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.messages) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5.0)


SOCKETS: list[zmq.Socket[Any]] = []


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    close_all()
    context.term()


@pytest.fixture
async def actx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    close_all()
    context.term()


def close_all() -> None:
    while SOCKETS:
        SOCKETS.pop().close(0)


def socket(ctx: zmq.Context[Any], kind: int) -> Any:
    """A socket closed when the test ends."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    SOCKETS.append(sock)
    return sock


def router_pump(ctx: zmq.Context[Any], inbox: Inbox, **kw: Any) -> tuple[Pump, str]:
    sock = socket(ctx, zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in kw.pop("options", {}).items():
        sock.setsockopt(option, value)
    sock.bind("tcp://127.0.0.1:*")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    pump = Pump(asyncio.get_running_loop(), sock, inbox.on_message, inbox.on_malformed,
                routed=True, batch=kw.pop("batch", 64), **kw)  # fmt: skip
    pump.start()
    return pump, endpoint


def dealer_pump(ctx: zmq.Context[Any], endpoint: str, inbox: Inbox, hwm: int = 1000) -> Pump:
    sock = socket(ctx, zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 20)
    sock.connect(endpoint)
    pump = Pump(asyncio.get_running_loop(), sock, inbox.on_message, inbox.on_malformed,
                routed=False, batch=64)  # fmt: skip
    pump.start()
    return pump


async def connected_peer(
    actx: zmq.asyncio.Context, endpoint: str, pump: Pump, inbox: Inbox, identity: bytes
) -> zmq.asyncio.Socket:
    """A DEALER peer of a routed pump, its connection known to the pump."""
    peer = socket(actx, zmq.DEALER)
    peer.setsockopt(zmq.ROUTING_ID, identity)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(endpoint)
    await peer.send(b"hello")
    await inbox.wait_for(1)
    inbox.messages.clear()
    return peer


async def test_frames_after_the_first_of_an_iteration_leave_together_at_its_end(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context
) -> None:
    inbox = Inbox()
    pump, endpoint = router_pump(ctx, inbox, hold_per_iteration=True)
    peer = await connected_peer(actx, endpoint, pump, inbox, b"peer")
    owners = [Owner() for _ in range(4)]
    owners[2].closed = True  # withdrawn before its burst ends: never sent
    for i, owner in enumerate(owners):
        assert pump.send_to(b"peer", b"m%d" % i, owner) is None
    # The first left at once (a lone caller waits for nothing); the rest are held.
    assert [o.sent for o in owners] == [True, False, False, False]
    assert pump.held == 3
    await asyncio.sleep(0)  # the iteration ends
    assert [o.sent for o in owners] == [True, True, False, True]
    assert pump.held == 0
    got = [await asyncio.wait_for(peer.recv(), 5.0) for _ in range(3)]
    assert got == [b"m0", b"m1", b"m3"]
    # A new iteration, a new burst: its first message leaves at once again.
    fresh = Owner()
    assert pump.send_to(b"peer", b"m4", fresh) is None and fresh.sent
    pump.close()


async def test_replies_made_while_reading_leave_together_at_the_end_of_the_pass(
    ctx: zmq.Context[Any],
) -> None:
    # inproc and a synchronous peer: the five requests are in the pump's pipe
    # before the loop first runs its descriptor callback, so one pass reads them.
    peer = socket(ctx, zmq.ROUTER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.bind("inproc://pump-cork")
    inbox = Inbox()
    pump = dealer_pump(ctx, "inproc://pump-cork", inbox)
    assert pump.send(b"hello") is None  # connected at once: it left
    assert peer.poll(5000)
    identity, hello = peer.recv_multipart()
    assert hello == b"hello"
    held_at_reply: list[int] = []

    def reply(_identity: bytes, payload: bytes) -> None:
        assert pump.send(b"re:" + payload) is None  # not queued in the backlog
        held_at_reply.append(pump.held)

    inbox.reply = reply
    for i in range(5):
        peer.send_multipart([identity, b"q%d" % i])
    await inbox.wait_for(5)
    # One pass: the first reply left at once, the others waited for its end.
    assert held_at_reply == [0, 1, 2, 3, 4]
    assert pump.held == 0 and not pump.backlog
    got = []
    for _ in range(5):
        assert peer.poll(5000)
        got.append(peer.recv_multipart()[1])
    assert got == [b"re:q%d" % i for i in range(5)]
    pump.close()
    peer.close(0)


@pytest.mark.parametrize("defer_lone", [False, True])
async def test_lone_messages_one_after_another_are_all_read(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context, defer_lone: bool
) -> None:
    # Each message is alone in its pass; the look that ends the pass (at once,
    # or deferred after the woken callers) must leave the descriptor armed for
    # the next one.
    inbox = Inbox()
    pump, endpoint = router_pump(ctx, inbox, defer_lone=defer_lone)
    peer = await connected_peer(actx, endpoint, pump, inbox, b"peer")
    for i in range(20):
        await peer.send(b"lone%d" % i)
        await inbox.wait_for(i + 1)
    assert [m for _, m in inbox.messages] == [b"lone%d" % i for i in range(20)]
    assert {identity for identity, _ in inbox.messages} == {b"peer"}
    pump.close()


async def test_ping_pong_never_loses_a_wake_up(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context
) -> None:
    # Every reply is a send on the socket the next request arrives on: a send
    # can consume the descriptor's notification, and the pump must look again.
    inbox = Inbox()
    pump, endpoint = router_pump(ctx, inbox, defer_lone=True, hold_per_iteration=True)
    peer = await connected_peer(actx, endpoint, pump, inbox, b"peer")
    inbox.reply = lambda identity, payload: pump.send_now(payload, identity)
    for i in range(300):
        await peer.send(b"%d" % i)
        assert await asyncio.wait_for(peer.recv(), 5.0) == b"%d" % i
    pump.close()


async def test_a_message_of_several_frames_is_dropped_and_the_next_one_read(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context
) -> None:
    inbox = Inbox()
    pump, endpoint = router_pump(ctx, inbox)
    peer = await connected_peer(actx, endpoint, pump, inbox, b"peer")
    await peer.send_multipart([b"a", b"b", b"c"])
    await peer.send(b"fine")
    await inbox.wait_for(1)
    assert inbox.messages == [(b"peer", b"fine")]
    assert inbox.malformed == ["expected 1 frame per message, got 3"]
    pump.close()


async def test_a_failing_handler_does_not_end_the_pass(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    def reply(_identity: bytes, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")

    inbox.reply = reply
    pump, endpoint = router_pump(ctx, inbox)
    peer = await connected_peer(actx, endpoint, pump, inbox, b"peer")
    await peer.send(b"boom")
    await peer.send(b"after")
    await inbox.wait_for(2)
    assert [m for _, m in inbox.messages] == [b"boom", b"after"]
    assert "handler bug" in caplog.text
    pump.close()


async def test_a_full_queue_and_an_unknown_peer_are_typed_errors(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context
) -> None:
    inbox = Inbox()
    pump, endpoint = router_pump(ctx, inbox, options={zmq.SNDHWM: 1},
                                 hold_per_iteration=True)  # fmt: skip
    peer = socket(actx, zmq.DEALER)
    peer.setsockopt(zmq.ROUTING_ID, b"slow")
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.connect(endpoint)
    await peer.send(b"hello")
    await inbox.wait_for(1)
    with pytest.raises(NodeUnreachableError, match="b'nobody' is not connected"):
        pump.send_now(b"x", b"nobody")
    # The peer never reads: the pipe fills, and a send fails at once (nothing queued).
    with pytest.raises(BackpressureError, match="b'slow' is full"):
        for _ in range(100_000):
            pump.send_now(b"x" * 1024, b"slow")
    # The same through the batched path (the first send of an iteration goes at
    # once): the error is returned to the caller. libzmq may have moved a message
    # on meanwhile, so send until the pipe is full again.
    error: Exception | None = None
    for _ in range(100_000):
        await asyncio.sleep(0)
        owner = Owner()
        error = pump.send_to(b"slow", b"x" * 1024, owner)
        if error is not None:
            break
        assert owner.sent
    assert isinstance(error, BackpressureError) and not owner.sent
    pump.close()


async def test_a_held_message_that_cannot_leave_is_passed_to_on_unsent(
    ctx: zmq.Context[Any], actx: zmq.asyncio.Context
) -> None:
    inbox = Inbox()
    unsent: list[tuple[Owner, Exception]] = []
    pump, endpoint = router_pump(ctx, inbox, hold_per_iteration=True,
                                 on_unsent=lambda o, e: unsent.append((o, e)))  # fmt: skip
    peer = await connected_peer(actx, endpoint, pump, inbox, b"peer")
    first, second = Owner(), Owner()
    assert pump.send_to(b"peer", b"one", first) is None
    assert pump.send_to(b"gone", b"two", second) is None  # held
    await asyncio.sleep(0)
    assert first.sent and not second.sent
    assert [(o, type(e)) for o, e in unsent] == [(second, NodeUnreachableError)]
    assert await asyncio.wait_for(peer.recv(), 5.0) == b"one"
    pump.close()


async def test_a_frame_the_socket_cannot_take_waits_in_the_backlog_until_it_can(
    ctx: zmq.Context[Any],
) -> None:
    peer = socket(ctx, zmq.ROUTER)
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.bind("inproc://pump-backlog")
    inbox = Inbox()
    pump = dealer_pump(ctx, "inproc://pump-backlog", inbox, hwm=1)
    # The peer does not read: the pipe fills, and the next frame waits in the backlog.
    left = []
    for i in range(1000):
        out = pump.send(b"%d" % i)
        if out is not None:
            break
        left.append(b"%d" % i)
    assert out is not None and out.frame == b"%d" % i
    queued = [out, pump.send(b"late-1"), pump.send(b"withdrawn"), pump.send(b"late-2")]
    assert all(q is not None for q in queued)
    assert list(pump.backlog) == queued  # in order, behind the first that waited
    withdrawn = queued[2]
    assert withdrawn is not None
    withdrawn.frame = None  # its sender gave up: it never leaves
    expected = [*left, b"%d" % i, b"late-1", b"late-2"]

    async def read_all() -> list[bytes]:
        got: list[bytes] = []
        while len(got) < len(expected):
            if peer.poll(0):
                got.append(peer.recv_multipart()[1])
            else:
                await asyncio.sleep(0.005)  # the pump runs: the backlog moves on
        return got

    assert await asyncio.wait_for(read_all(), 10.0) == expected
    last = queued[3]
    assert last is not None
    await asyncio.wait_for(pump.sent(last), 5.0)
    assert last.frame is None and not pump.backlog
    assert not peer.poll(100)  # the withdrawn frame never left
    pump.close()


async def test_close_resolves_waiters_and_drops_what_is_held(ctx: zmq.Context[Any]) -> None:
    inbox = Inbox()
    pump = dealer_pump(ctx, "tcp://127.0.0.1:9", inbox)  # never connects
    out = pump.send(b"stuck")
    assert out is not None
    waiter = asyncio.ensure_future(pump.sent(out))
    await asyncio.sleep(0)
    pump.close()
    await asyncio.wait_for(waiter, 5.0)
    assert pump.closed and not pump.backlog
    assert pump.send(b"late") is not None  # a closed pump sends nothing
    pump.close()  # idempotent
