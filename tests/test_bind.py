"""Binding a ROUTER (fedgate.transport.bind): the gateway, the ingress and telemetry share it."""

from __future__ import annotations

import re

import pytest
import zmq
import zmq.asyncio

from fedgate.gateway import GatewayBuilder
from fedgate.gateway.ingress import Ingress
from fedgate.telemetry import TelemetryServer
from fedgate.transport.bind import bind_router, check_endpoint


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:65536",
                                      "tcp://127.0.0.1:-1", "tcp://[::1]:70000"])  # fmt: skip
def test_a_port_out_of_range_is_refused_naming_the_endpoint(endpoint: str) -> None:
    # libzmq would bind the port modulo 65536: another port, silently.
    expected = re.escape(f"cannot bind test endpoint '{endpoint}'") + ".*0-65535"
    with pytest.raises(OSError, match=expected):
        check_endpoint(endpoint, "test")


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:*", "tcp://127.0.0.1:0",
                                      "tcp://127.0.0.1:65535", "tcp://[::1]:5555",
                                      "ipc:///tmp/x:99999", "inproc://a:99999"])  # fmt: skip
def test_valid_endpoints_pass(endpoint: str) -> None:
    check_endpoint(endpoint, "test")


def test_bind_router_sets_options_and_resolves_ports() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock, bound = bind_router(
        ctx, ["tcp://127.0.0.1:*", "inproc://bind-test"], what="test",
        options={zmq.LINGER: 0, zmq.SNDHWM: 7},
    )  # fmt: skip
    try:
        assert bound[0].startswith("tcp://127.0.0.1:") and not bound[0].endswith(":*")
        assert bound[1] == "inproc://bind-test"
        assert sock.getsockopt(zmq.SNDHWM) == 7
        assert sock.type == zmq.ROUTER
    finally:
        sock.close(0)
        ctx.term()


def test_a_failed_bind_closes_the_socket_and_its_context() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    holder = ctx.socket(zmq.ROUTER)
    holder.bind("tcp://127.0.0.1:*")
    busy = holder.getsockopt_string(zmq.LAST_ENDPOINT)
    other: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with pytest.raises(OSError, match=re.escape(f"cannot bind test endpoint '{busy}'")):
            bind_router(other, [busy], what="test", options={zmq.LINGER: 0})
        assert other.closed
    finally:
        holder.close(0)
        ctx.term()


async def test_gateway_ingress_and_telemetry_refuse_a_port_out_of_range() -> None:
    bad = "tcp://127.0.0.1:99999"
    gateway = GatewayBuilder().bind(bad).build()
    with pytest.raises(OSError, match=re.escape(f"cannot bind gateway endpoint '{bad}'")):
        await gateway.start()
    assert not gateway.running
    async with GatewayBuilder().bind("tcp://127.0.0.1:*").build() as gw:
        with pytest.raises(OSError, match=re.escape(f"cannot bind ingress endpoint '{bad}'")):
            await Ingress(gw, bad).start()
        with pytest.raises(OSError, match=re.escape(f"cannot bind telemetry endpoint '{bad}'")):
            await TelemetryServer(gw, bad).start()
