"""The socket pump: one ZeroMQ socket driven by the event loop, for the gateway and the worker.

A :class:`Pump` reads its socket from the loop's file-descriptor callback (no
future per message, no task per socket) and writes it with non-blocking sends.
The gateway runs one on its ROUTER (``routed``: every message is
``[identity, payload]``), a worker one per gateway on its DEALER. The rules
below are the whole of the socket-readiness logic; the owners only decode and
act on the payloads.

Wake-ups
    A ZeroMQ socket's descriptor is edge-triggered: it fires when the socket's
    state changes, and only an operation on the socket (a receive, a send, or
    asking ``ZMQ_EVENTS``) re-arms it. So a read pass ends only once the socket
    has been asked: a receive that finds nothing, or ``ZMQ_EVENTS`` without
    ``POLLIN``. A send may consume a notification as well: after sends, the
    pump *looks* (``ZMQ_EVENTS``) once before the loop next sleeps — one look
    for all the sends of a loop iteration — and reads if anything is due. A
    send while a read pass is scheduled or running needs no look of its own:
    the pass ends with one.

The lone message
    At low load a pass finds one message. Asking ``ZMQ_EVENTS`` after it
    re-arms the descriptor as an empty receive would, at a third of the cost
    (no exception raised). With ``defer_lone`` (the gateway), when the last
    pass was lone too, the look is made after the callers that message wakes
    have run, off their latency path.

Batching
    The first frame of a burst leaves at once (a lone caller waits for
    nothing); the frames sent after it in the same burst are held and leave
    together at the burst's end, so that libzmq's I/O thread wakes once and
    writes them in one go instead of one wake-up and one TCP write per frame. A
    burst is a read pass (replies produced while reading: the worker) and, with
    ``hold_per_iteration`` (the gateway's requests), a loop iteration.

Full queues
    :meth:`send_now` and :meth:`send_to` raise :class:`~fedgate.errors.BackpressureError`
    when the high-water mark is reached and :class:`~fedgate.errors.NodeUnreachableError`
    when a ROUTER has no connection to the identity (``ROUTER_MANDATORY``); a
    message is atomic, so nothing was queued. :meth:`send` instead keeps a
    frame the socket cannot take in the pump's backlog, in order, and returns
    it as an :class:`Out` its sender may wait for (:meth:`sent`); the backlog
    is sent when the socket is writable again, and a backing-off timer retries
    in case a wake-up was consumed elsewhere.

Reads are bounded per pass (``batch``): a flood of messages must not starve
the loop's other callbacks; a full pass schedules the next one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

import zmq

from fedgate.errors import BackpressureError, NodeUnreachableError

__all__ = ["Out", "Pump", "Sendable"]

log = logging.getLogger("fedgate.transport")

# Plain ints: zmq's flag enums cost an enum construction per operation.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_RCVMORE = int(zmq.RCVMORE)
_CLOSED = (zmq.ETERM, zmq.ENOTSOCK)
# The backlog's retry timer: from 1 ms, doubling up to 100 ms.
_RETRY_MIN = 0.001
_RETRY_MAX = 0.1


class Sendable(Protocol):
    """What owns a frame held by :meth:`Pump.send_to` until the end of its burst."""

    closed: bool  # withdrawn: the frame is dropped unsent
    sent: bool  # set by the pump once the frame is handed to libzmq


class Out:
    """A frame the socket could not take at once, queued behind the ones before it.

    ``frame`` becomes None once it has left, or when its sender withdrew it (a
    cancelled reply, a heartbeat replaced by a newer one); ``waiter`` is
    resolved once it is handed to libzmq (or the pump closes).
    """

    __slots__ = ("frame", "waiter")

    def __init__(self, frame: bytes) -> None:
        self.frame: bytes | None = frame
        self.waiter: asyncio.Future[None] | None = None


class Pump:
    """One socket, read from the loop's descriptor callback and written without blocking.

    Parameters
    ----------
    loop : asyncio.AbstractEventLoop
        The loop whose thread owns the socket.
    sock : zmq.Socket
        A plain (synchronous) socket; the pump closes it.
    on_message : callable
        ``on_message(identity, payload)`` per single-part message (``identity``
        is ``b""`` unless ``routed``). An exception is logged, and the pass goes on.
    on_malformed : callable
        ``on_malformed(identity, why)`` per message of the wrong shape (dropped).
    routed : bool
        A ROUTER: messages are ``[identity, payload]``.
    batch : int
        Messages read per pass at most.
    defer_lone : bool
        After two lone passes in a row, look at the socket after the woken
        callers have run (see the module docstring).
    hold_per_iteration : bool
        Frames sent with :meth:`send_to` after the first of a loop iteration
        leave together at its end.
    on_unsent : callable, optional
        ``on_unsent(owner, error)`` for a frame held by :meth:`send_to` that
        could not be sent at its burst's end (``error`` as :meth:`send_now` raises).
    on_error : callable, optional
        ``on_error(exc)`` when a receive fails for another reason than a closed
        socket; by default it is logged.
    """

    __slots__ = (
        "_batch",
        "_burst_sent",
        "_corked",
        "_defer_lone",
        "_held",
        "_hold_open",
        "_hold_per_iteration",
        "_lone",
        "_look_pending",
        "_loop",
        "_on_error",
        "_on_malformed",
        "_on_message",
        "_on_unsent",
        "_read_pending",
        "_retry",
        "_retry_delay",
        "_routed",
        "backlog",
        "closed",
        "fd",
        "last_frame",
        "sock",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[Any],
        on_message: Callable[[bytes, bytes], object],
        on_malformed: Callable[[bytes, str], object],
        *,
        routed: bool,
        batch: int,
        defer_lone: bool = False,
        hold_per_iteration: bool = False,
        on_unsent: Callable[[Any, Exception], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self.fd = cast(int, sock.getsockopt(zmq.FD))
        self._on_message = on_message
        self._on_malformed = on_malformed
        self._on_unsent = on_unsent
        self._on_error = on_error
        self._routed = routed
        self._batch = batch
        self._defer_lone = defer_lone
        self._hold_per_iteration = hold_per_iteration
        self.closed = False
        self._read_pending = False  # a read pass is scheduled or running
        self._look_pending = False  # a look is scheduled for this iteration
        self._lone = False  # the last pass found a lone message
        # The current burst: whether its first frame has left, and the frames held after it.
        self._burst_sent = False
        self._corked: list[bytes] | None = None  # set during a read pass (send())
        self._hold_open = False  # an iteration burst is open (send_to())
        self._held: list[tuple[bytes, bytes, Sendable]] = []
        # Frames waiting for the socket (send()); empty on the fast path.
        self.backlog: collections.deque[Out] = collections.deque()
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_MIN
        # A ROUTER's last payload as received, for its message properties
        # (CURVE's User-Id) while ``on_message`` runs.
        self.last_frame: zmq.Frame | None = None

    @property
    def held(self) -> int:
        """Frames held for the end of the current burst."""
        return len(self._held) + (len(self._corked) if self._corked is not None else 0)

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Read the socket whenever its descriptor fires."""
        self._loop.add_reader(self.fd, self.on_readable)

    def close(self, linger: int = 0) -> None:
        """Send what the backlog holds if the socket takes it, stop reading, close the socket.

        Held frames of an open burst are dropped; waiters of the backlog are
        resolved. Idempotent.
        """
        if self.closed:
            return
        self._flush_backlog()  # last chance for queued replies to leave
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._loop.remove_reader(self.fd)
        for out in self.backlog:
            if out.waiter is not None and not out.waiter.done():
                out.waiter.set_result(None)
        self.backlog.clear()
        self._held.clear()
        self.sock.close(linger=linger)

    # --------------------------------------------------------------- sending
    def send_now(self, frame: bytes, identity: bytes = b"") -> None:
        """Hand one message to libzmq now (a ROUTER: addressed to ``identity``).

        Raises
        ------
        BackpressureError
            The high-water mark is reached (nothing was queued).
        NodeUnreachableError
            A ROUTER has no connection to ``identity``.
        zmq.ZMQError
            Anything else (a closed socket, a terminated context).
        """
        self._put(frame, identity)
        if not self._look_pending and not self._read_pending:
            self._look_pending = True
            self._loop.call_soon(self._look)

    def _put(self, frame: bytes, identity: bytes) -> None:
        """:meth:`send_now` without the look: the caller looks after its sends."""
        sock = self.sock
        try:
            if self._routed:
                # Two plain sends with precomputed int flags: send_multipart
                # builds flag enums per frame. ROUTER_MANDATORY and a full pipe
                # both fail on the identity frame, before anything is queued;
                # once it is accepted the message is atomic.
                sock.send(identity, _SNDMORE_NOBLOCK)
            sock.send(frame, _NOBLOCK)
        except zmq.Again:
            raise BackpressureError(
                f"send queue to {identity!r} is full "
                f"({cast(int, sock.getsockopt(zmq.SNDHWM))} messages)"
            ) from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise NodeUnreachableError(f"{identity!r} is not connected") from None
            raise

    def send_to(self, identity: bytes, frame: bytes, owner: Sendable) -> Exception | None:
        """Send a ROUTER message in the current burst; ``owner.sent`` is set once it has left.

        Returns the error of a send made now (as :meth:`send_now` raises it),
        for the caller to act on; a held message that fails later is passed to
        ``on_unsent``. A held message whose owner is closed by then is dropped.
        """
        if self._hold_open:
            self._held.append((identity, frame, owner))
            return None
        try:
            if self._hold_per_iteration:
                self._hold_open = True
                # The burst's end looks at the socket after its sends.
                self._loop.call_soon(self._end_iteration)
                self._put(frame, identity)
            else:
                self.send_now(frame, identity)
        except (BackpressureError, NodeUnreachableError, zmq.ZMQError) as exc:
            return exc
        owner.sent = True
        return None

    def send(self, frame: bytes) -> Out | None:
        """Send a frame (a DEALER's) in the current burst, or queue it behind the frames before it.

        Returns None when it left (or is held for the burst's end: the fast
        path, nothing allocated), else its place in the backlog. On a closed
        pump the frame is dropped.
        """
        corked = self._corked
        if corked is not None:  # inside a read pass
            if self._burst_sent:  # leaves with the others at the pass's end
                corked.append(frame)
                return None
            # The pass's first frame leaves at once: a lone request (the common
            # case at low load) does not wait for the pass's empty receive.
            self._burst_sent = True
        if not self.backlog and not self.closed:
            try:
                self.sock.send(frame, _NOBLOCK)
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                if exc.errno in _CLOSED:
                    return None  # closing: nothing can be sent any more
                raise
            else:
                if not self._look_pending and not self._read_pending:
                    self._look_pending = True
                    self._loop.call_soon(self._look)
                return None
        out = Out(frame)
        if self.closed:
            return out
        self.backlog.append(out)
        self._arm_retry()
        if not self._look_pending and not self._read_pending:
            # The failed send may have consumed a notification: look once more soon.
            self._look_pending = True
            self._loop.call_soon(self._look)
        return out

    def send_first(self, frame: bytes) -> Out | None:
        """Send a frame that depends on no other (a heartbeat): ahead of the backlog.

        :meth:`send` keeps order, so a heartbeat would wait behind every reply
        the socket cannot take yet — one per serving task, megabytes under
        heavy streaming — and arrive late enough for the node to be declared
        dead. Each message is one frame, so placing this one at the head of
        the backlog never splits another.
        """
        if not self.backlog or self.closed or self._corked is not None:
            return self.send(frame)
        out = Out(frame)
        self.backlog.appendleft(out)
        self._arm_retry()
        return out

    async def sent(self, out: Out) -> None:
        """Wait until a queued frame has left; cancelled, it is withdrawn unsent."""
        if out.frame is None or self.closed:  # already sent, withdrawn, or never will be
            return
        fut = out.waiter = self._loop.create_future()
        try:
            await fut
        except asyncio.CancelledError:
            out.frame = None
            raise

    def _end_iteration(self) -> None:
        """The iteration burst ends: send the held messages, then look at the socket."""
        self._hold_open = False
        held = self._held
        if self.closed:
            held.clear()
            return
        if held:
            self._held = []
            put = self._put
            on_unsent = self._on_unsent
            for identity, frame, owner in held:
                if owner.closed:
                    continue  # withdrawn before it left
                try:
                    put(frame, identity)
                except (BackpressureError, NodeUnreachableError, zmq.ZMQError) as exc:
                    if on_unsent is not None:
                        on_unsent(owner, exc)
                    continue
                owner.sent = True
        # The sends may have consumed the descriptor's notification.
        self.look()

    def _flush_backlog(self) -> None:
        """Send queued frames in order until the socket is full again."""
        backlog = self.backlog
        if self.closed:
            return
        sock = self.sock
        while backlog:
            out = backlog[0]
            frame = out.frame
            if frame is not None:
                try:
                    sock.send(frame, _NOBLOCK)
                except zmq.Again:
                    self._arm_retry()
                    return
                except zmq.ZMQError as exc:
                    if exc.errno in _CLOSED:
                        return
                    raise
                out.frame = None  # sent: nothing left to withdraw
            backlog.popleft()
            waiter = out.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._retry_delay = _RETRY_MIN
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _arm_retry(self) -> None:
        if self._retry is None and not self.closed:
            self._retry = self._loop.call_later(self._retry_delay, self._on_retry)
            self._retry_delay = min(_RETRY_MAX, self._retry_delay * 2)

    def _on_retry(self) -> None:
        self._retry = None
        self.on_readable()

    # --------------------------------------------------------------- reading
    def _look(self) -> None:
        self._look_pending = False
        self.look()

    def look(self) -> None:
        """Ask the socket what it can do (re-arming its descriptor); read if anything is due."""
        if self._read_pending or self.closed:
            return
        events = cast(int, self.sock.getsockopt(_EVENTS))
        if events & _POLLIN or (self.backlog and events & _POLLOUT):
            self._lone = False  # more came in: read in batches again
            self._read_pending = True
            self._loop.call_soon(self.on_readable)

    def on_readable(self) -> None:
        """The descriptor fired (or a look found work): send the backlog, read a batch."""
        if self.closed:
            self._read_pending = False
            return
        # Frames produced while reading (after the first) are held back and
        # handed to libzmq together at the end.
        self._read_pending = True
        self._burst_sent = False
        corked = self._corked = []
        again = False
        try:
            if self.backlog:
                self._flush_backlog()
            again = self._read()
        finally:
            self._corked = None
            if (corked or self.backlog) and not self.closed:
                send = self.send
                for frame in corked:
                    send(frame)
                self._flush_backlog()
                # Those sends came after the pass's last look at the socket and
                # may have consumed its notification: look again.
                if not again and not self.closed:
                    events = cast(int, self.sock.getsockopt(_EVENTS))
                    if events & _POLLIN or (self.backlog and events & _POLLOUT):
                        self._loop.call_soon(self.on_readable)
                        again = True
            self._read_pending = again

    def _read(self) -> bool:
        """Read one pass; True when it scheduled the next one."""
        sock = self.sock
        recv = sock.recv
        getsockopt = sock.getsockopt
        on_message = self._on_message
        routed = self._routed
        identity = b""
        more: Any
        for n in range(self._batch):
            if n == 1:
                # A lone message: asking the socket re-arms its descriptor.
                if self._lone:
                    # Lone again: look after the callers it woke have run.
                    self._loop.call_soon(self.look)
                    return False
                if not cast(int, getsockopt(_EVENTS)) & _POLLIN:
                    self._lone = self._defer_lone
                    return False
                self._lone = False
            try:
                if routed:
                    identity = recv(_NOBLOCK)
                    # A ROUTER message is [identity, payload]: the payload comes
                    # as a zmq.Frame only to read its "more" flag without a
                    # getsockopt call (its receive cannot fail: messages are atomic).
                    frame = recv(_NOBLOCK, copy=False)
                    more = frame.more
                    payload = frame.bytes
                    self.last_frame = frame
                else:
                    # As bytes, not a zmq.Frame: a pass of several messages ends
                    # with a receive that finds nothing, and that failure costs
                    # twice as much with copy=False. RCVMORE is a plain option read.
                    payload = recv(_NOBLOCK)
                    more = getsockopt(_RCVMORE)
                if more:
                    parts = 1  # after the identity
                    while True:
                        parts += 1
                        if not recv(_NOBLOCK, copy=False).more:
                            break  # read and drop the rest: the next message starts clean
                    self._on_malformed(identity, f"expected 1 frame per message, got {parts}")
                    continue
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if exc.errno not in _CLOSED:
                    if self._on_error is not None:
                        self._on_error(exc)
                    else:
                        log.error("cannot read the socket: %s", exc)
                return False
            try:
                on_message(identity, payload)
            except Exception:  # a bug in a handler must not end the pass
                log.exception("failed to handle a message from %r", identity)
            if self.closed:
                return False
        # Pass full: more may be waiting, and the descriptor will not fire for it.
        self._loop.call_soon(self.on_readable)
        return True
