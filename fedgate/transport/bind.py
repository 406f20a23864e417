"""Binding a ROUTER: the gateway's worker socket, the ingress and the telemetry server.

:func:`bind_router` makes the socket, sets its options, binds every endpoint
and returns the endpoints actually bound (a ``:*`` port resolved). Whatever
fails, the caller gets one ``OSError`` naming the endpoint, and the socket and
its context are gone. A TCP port outside 0-65535 is refused before libzmq sees
it: libzmq would bind the port modulo 65536, silently another one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import zmq

__all__ = ["bind_router", "check_endpoint", "is_loopback"]

_TCP_PORT = re.compile(r"^tcp://.*:([^:\]]*)$")

S = TypeVar("S", bound=zmq.Socket)


_LOOPBACK_HOSTS = ("localhost", "[::1]", "::1")


def is_loopback(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint`` (loopback TCP, ``ipc://``, ``inproc://``).

    A host name other than ``localhost``, an interface name, ``*`` and
    ``0.0.0.0`` all count as reachable from the network.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    if ";" in host:  # tcp://source;destination: the address bound is the part after
        host = host.rsplit(";", 1)[1]
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def check_endpoint(endpoint: str, what: str = "") -> None:
    """Raise ``OSError`` when a TCP endpoint's port is not ``*`` or a number in 0-65535."""
    match = _TCP_PORT.match(endpoint)
    if match is None:
        return
    port = match.group(1)
    if port == "*":
        return
    if not port.isdigit() or int(port) > 65535:
        label = f"{what} endpoint" if what else "endpoint"
        raise OSError(
            f"cannot bind {label} {endpoint!r}: the port must be * or a number in 0-65535, "
            f"got {port!r}"
        )


def bind_router(
    ctx: zmq.Context[S],
    endpoints: Iterable[str],
    *,
    what: str,
    options: Mapping[Any, Any],
) -> tuple[S, list[str]]:
    """A ROUTER of ``ctx`` with ``options`` set, bound to every endpoint.

    Returns the socket and the endpoints it is bound to (``LAST_ENDPOINT``:
    a ``:*`` or ``:0`` port resolved).

    Raises
    ------
    OSError
        An endpoint cannot be bound (``what`` names the socket in the
        message, e.g. ``"telemetry"``). The socket is closed and ``ctx``
        terminated: callers make a context for this socket.
    """
    sock = ctx.socket(zmq.ROUTER)
    bound: list[str] = []
    endpoint = ""
    try:
        for option, value in options.items():
            sock.setsockopt(option, value)
        for endpoint in endpoints:
            check_endpoint(endpoint, what)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise OSError(f"cannot bind {what} endpoint {endpoint!r}: {exc}") from exc
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except BaseException:
        sock.close(0)
        ctx.term()
        raise
    return sock, bound
