"""Who excludes a failing node (SPEC §2 Health; RELIABILITY R23), through a real gateway.

Liveness is health's: missed heartbeats exclude a node at once. Failures are
the breaker's: with default settings (health's failure_threshold 3, the
breaker's 5) a node failing every request stays eligible while health calls
it UNHEALTHY, trips its breaker on the 5th failure, is then rejected locally
(no frame reaches it) and is probed on the breaker's growing schedule
(30 s, 60 s, 120 s, ...). Health and breaker run on the federation's manual
clock, so the schedule is asserted to the millisecond without sleeping.
"""

from __future__ import annotations

import pytest
from scripted import Federation, req, scripted_federation

from fedgate import AllNodesUnhealthyError, NodeId, WorkerError
from fedgate.federation.breaker import BreakerConfig, CircuitState
from fedgate.federation.health import HealthState
from fedgate.gateway import GatewayConfig

SICK = NodeId("sick")
# One heartbeat a second, dead after 100 s of silence: the test's fake time
# moves in steps of at most 10 s, each followed by a heartbeat.
LIVENESS = 100


async def fails(fed: Federation, rid: str) -> None:
    """One infer() that reaches the node, which answers it with a worker error."""
    call = fed.spawn(fed.gw.infer(req(rid)))
    worker, request = await fed.next_request()
    assert worker.node == SICK and request.rid
    await worker.error(request)
    with pytest.raises(WorkerError):
        await call


async def rejected_locally(fed: Federation, rid: str) -> None:
    """One infer() refused by the gateway itself: no attempt, no frame to the node."""
    sent = fed.gw.stats().per_node[SICK].requests
    with pytest.raises(AllNodesUnhealthyError, match="1 with an open breaker"):
        await fed.gw.infer(req(rid))
    # Attempts are counted as their REQUEST is queued, before infer() can return.
    assert fed.gw.stats().per_node[SICK].requests == sent


async def elapse(fed: Federation, seconds: float) -> None:
    """Move the fake clock, heartbeating so liveness is never in question."""
    while seconds > 0:
        step = min(seconds, 10.0)
        fed.clock.advance(step)
        seconds -= step
        await fed.beat(SICK)


async def test_r23_a_failing_node_trips_its_breaker_and_is_probed_on_its_schedule() -> None:
    async with scripted_federation(
        SICK, heartbeat_liveness=LIVENESS, breaker=BreakerConfig()
    ) as fed:
        gw = fed.gw
        for i in range(3):
            await fails(fed, f"r{i}")
        # Health calls it UNHEALTHY (the seed's status) but does not exclude it.
        assert gw.health.status(SICK).state is HealthState.UNHEALTHY
        assert gw.breaker.state(SICK) is CircuitState.CLOSED
        for i in range(3, 5):
            await fails(fed, f"r{i}")
        assert gw.breaker.state(SICK) is CircuitState.OPEN
        assert gw.stats().breaker_trips == 1
        requests = len(fed[SICK].requests)
        assert requests == 5

        # Open periods double: 30 s, 60 s, 120 s. Inside each, every call is
        # refused locally; at its end exactly one probe reaches the node.
        for period, trips in ((30.0, 2), (60.0, 3), (120.0, 4)):
            assert gw.breaker.status(SICK).open_timeout == period
            await rejected_locally(fed, f"early-{period}")
            await elapse(fed, period - 0.001)
            await rejected_locally(fed, f"late-{period}")
            await elapse(fed, 0.001)
            assert gw.breaker.state(SICK) is CircuitState.HALF_OPEN
            await fails(fed, f"probe-{period}")
            requests += 1
            # Every REQUEST the node got is one of the calls above: the rejected ones sent nothing.
            assert len(fed[SICK].requests) == gw.stats().per_node[SICK].requests == requests
            assert gw.breaker.state(SICK) is CircuitState.OPEN
            assert gw.stats().breaker_trips == trips
        assert gw.breaker.status(SICK).open_timeout == 240.0
        assert gw.stats().local_rejections == 0  # the router never offered the OPEN node


async def test_r23_liveness_loss_excludes_at_once() -> None:
    # The gateway's monitor looks once a minute here: the exclusion below is
    # health's verdict, read by the router on the very next decision.
    slow_monitor = GatewayConfig(request_timeout=30.0, retry_delay=0.0, monitor_interval=60.0)
    async with scripted_federation(
        "a", ("b", {"cost": 5.0}), heartbeat_liveness=4, config=slow_monitor
    ) as fed:
        gw = fed.gw  # both registered (and heartbeated) at clock() now
        # Both fail three times (UNHEALTHY by reports, health scored 0, breakers
        # still closed): only price tells them apart, and a is cheaper.
        for i in range(3):
            call = fed.spawn(gw.infer(req(f"fail-{i}")))
            for node in ("a", "b"):  # a first, then the retry on b
                worker, request = await fed.next_request()
                assert worker.node == node
                await worker.error(request)
            with pytest.raises(WorkerError):
                await call
        fed.clock.advance(3.0)
        await fed.beat("b")  # a has been silent 3 s of its 4 s
        fed.clock.advance(1.001)
        for i in range(3):
            call = fed.spawn(gw.infer(req(f"live-{i}")))
            worker, request = await fed.next_request()
            assert worker.node == "b"
            await worker.final(request, 0)
            await call
        assert gw.health.status(NodeId("a")).alive is False
        assert fed.alive("a")  # the monitor has not looked yet
        assert gw.breaker.state(NodeId("a")) is CircuitState.CLOSED
