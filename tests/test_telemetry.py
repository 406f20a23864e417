"""Telemetry: snapshots of a real gateway, the ZeroMQ endpoint, Prometheus metrics.

Gateways here run with in-process workers on loopback TCP (real sockets and
frames). The breaker runs on a ManualClock where a test asserts times, so
"time to reset" and transition ages are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import inproc
import msgspec
import pytest
import zmq
import zmq.asyncio

from fedgate import Capability, InferenceRequest, ManualClock, PrivacyLevel, Region
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker
from fedgate.federation.policy import CompositePolicy, GpuPolicy, LatencyPolicy
from fedgate.gateway import Gateway, GatewayBuilder
from fedgate.telemetry import (
    PROBE_NOTE,
    SCHEMA_VERSION,
    Telemetry,
    TelemetryClient,
    TelemetryError,
    TelemetryServer,
    TelemetryTimeout,
    snapshot,
    telemetry_for,
)

GEN = Capability.GENERATE


@contextlib.asynccontextmanager
async def federation(*nodes: dict[str, Any], **kw: Any) -> AsyncIterator[Gateway]:
    """A gateway with one in-process worker per node spec (see ``inproc.federation``)."""
    async with inproc.federation(*nodes, options={"tokens": 4}, **kw) as (gateway, _):
        yield gateway


def req(rid: str, **kw: Any) -> InferenceRequest:
    return InferenceRequest(GEN, b"x", request_id=rid, **kw)


def by_node(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["node"]: row for row in rows}


# ---------------------------------------------------------------- snapshot contents


async def test_snapshot_of_a_real_gateway() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=5, open_timeout=30.0), clock=clock)
    regions = (Region("eu-west-1", clearance=PrivacyLevel.RESTRICTED),)
    async with federation(
        {"node": "a", "gpu": True, "models": ["llama"]},
        {"node": "b", "region": "eu-west-1", "models": ["llama", "whisper"],
         "capabilities": ["generate", "transcribe"]},
        breaker=breaker, regions=regions,
    ) as gw:  # fmt: skip
        telemetry = telemetry_for(gw)
        assert telemetry_for(gw) is telemetry  # one per gateway
        for i in range(6):
            await gw.infer(req(f"r{i}", tenant_id="acme" if i % 2 else None))
        for _ in range(5):
            gw.breaker.record_failure("b")
        clock.advance(10.0)
        snap = snapshot(gw)

        assert snap["schema"] == SCHEMA_VERSION
        assert snap["gateway"]["id"] == gw.gateway_id
        assert snap["gateway"]["endpoints"] == gw.endpoints and snap["gateway"]["running"]
        # Plain data: survives JSON (no NaN) and MessagePack unchanged.
        assert json.loads(json.dumps(snap, allow_nan=False)) == snap
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(snap)) == snap

        catalog = snap["catalog"]
        assert catalog["models"]["llama"] == [
            {"node": "a", "region": "us-west-2", "capabilities": ["generate"]},
            {"node": "b", "region": "eu-west-1", "capabilities": ["generate", "transcribe"]},
        ]
        assert catalog["models"]["whisper"][0]["node"] == "b"
        assert catalog["capabilities"] == ["generate", "transcribe"] and catalog["deployments"] == 3
        assert [(w["node"], w["alive"], w["gpu"]) for w in snap["workers"]] == [
            ("a", True, True), ("b", True, False)
        ]  # fmt: skip

        # Health percentiles are the checker's, for the nodes that served.
        health = by_node(snap["health"])
        served = {n for n, row in health.items() if row["samples"]}
        assert served and sum(health[n]["samples"] for n in served) == 6
        for node in served:
            row, status = health[node], gw.health.status(node)  # type: ignore[arg-type]
            assert (row["p50"], row["p95"], row["p99"]) == (
                status.latency_p50, status.latency_p95, status.latency_p99
            )
            assert 0 < row["p50"] <= row["p95"] <= row["p99"]
            assert row["state"] == "HEALTHY" and row["last_check_age"] >= 0
        assert all(row["heartbeat_age"] is not None and row["alive"] for row in health.values())

        # The tripped breaker: state, failures, exact time to reset, and its transition.
        breakers = by_node(snap["breakers"])
        assert breakers["b"]["state"] == "OPEN" and breakers["b"]["failures"] == 5
        assert breakers["b"]["time_to_reset"] == pytest.approx(20.0)
        assert breakers["b"]["last_failure_age"] == pytest.approx(10.0)
        assert breakers["b"]["opened_age"] == pytest.approx(10.0)
        assert breakers["b"]["open_timeout"] == 30.0 and breakers["b"]["trips"] == 1
        assert breakers["a"]["state"] == "CLOSED" and breakers["a"]["time_to_reset"] is None
        assert snap["transitions"] == [
            {"node": "b", "old": "CLOSED", "new": "OPEN", "age": pytest.approx(10.0)}
        ]
        clock.advance(20.0)  # the open period ends by the clock alone
        later = snapshot(gw)
        assert by_node(later["breakers"])["b"]["state"] == "HALF_OPEN"
        assert [(t["old"], t["new"]) for t in later["transitions"]] == [
            ("OPEN", "HALF_OPEN"), ("CLOSED", "OPEN")
        ]  # fmt: skip

        # Routing: the recorded decisions, and the router's current breakdown.
        recent = snap["routing"]["recent"]
        assert [r["request_id"] for r in recent] == [f"r{i}" for i in reversed(range(6))]
        assert all(r["node"] in ("a", "b") and 0 < r["score"] <= 1 for r in recent)
        assert recent[0]["tenant"] == "acme" and recent[1]["tenant"] is None
        breakdown = snap["routing"]["breakdown"]
        assert set(breakdown) == {"generate", "transcribe"}
        gen = by_node(breakdown["generate"])
        assert gen["a"]["eligible"] and 0 < gen["a"]["total"] <= 1
        assert not gen["b"]["eligible"] and gen["b"]["total"] is None
        assert gen["b"]["reason"] == "breaker: OPEN"
        names = [p.name for p in gw.router.policy.policies]
        assert list(gen["a"]["scores"]) == names
        direct = {c.node_id: c for c in gw.router.candidates(req("probe"))}
        assert gen["a"]["scores"] == pytest.approx(direct["a"].breakdown)  # type: ignore[index]
        assert snap["routing"]["note"] == PROBE_NOTE

        # Stats: every GatewayStats field, per node and per tenant.
        stats = gw.stats()
        assert snap["stats"]["total_requests"] == stats.total_requests == 6
        assert snap["stats"]["successful_requests"] == 6 and snap["stats"]["total_tokens"] == 24
        assert snap["stats"]["breaker_trips"] == 1 and snap["stats"]["workers"] == 2
        assert snap["stats"]["per_tenant"]["acme"] == {
            "requests": 3, "successes": 3, "failures": 0, "tokens": 12
        }  # fmt: skip
        assert sum(n["requests"] for n in snap["stats"]["per_node"].values()) == 6
        # Every field but ``tenants``: a top-level section of its own.
        assert set(snap["stats"]) == {f for f in stats.__dataclass_fields__} - {"tenants"}
        assert [t["tenant"] for t in snap["tenants"]] == ["acme", "default"]
        assert snap["tenants"][0] == {
            "tenant": "acme", "weight": 1.0, "in_flight": 0, "max_concurrent": None,
            "waiting": 0, "admitted": 3, "completed": 3, "failed": 0, "tokens": 12,
            "rejected": {"concurrency": 0, "requests": 0, "tokens": 0},
        }  # fmt: skip

        # The live policy, strategy and clearances.
        policy = snap["policy"]
        assert [(p["name"], p["weight"]) for p in policy["policies"]] == [
            ("health", 2.0), ("latency", 1.0), ("privacy", 1.0), ("locality", 1.0), ("cost", 1.0)
        ]  # fmt: skip
        assert policy["policies"][0]["share"] == pytest.approx(2 / 6)
        assert policy["policies"][1]["params"] == {"latency_scale": 0.25}
        assert policy["strategy"] == "least-latency" and policy["total_weight"] == 6.0
        assert policy["regions"] == [
            {"region": "eu-west-1", "clearance": "RESTRICTED", "nodes": ["b"]},
            {"region": "us-west-2", "clearance": "INTERNAL", "nodes": ["a"]},
        ]
        assert snap["config"]["breaker"]["failure_threshold"] == 5
        assert snap["config"]["gateway"]["request_timeout"] == 5.0


async def test_policy_section_follows_the_live_policy() -> None:
    custom = CompositePolicy.enterprise_default().with_policy(GpuPolicy(weight=0.5))
    async with federation({"node": "a"}, policy=custom) as gw:
        policy = snapshot(gw)["policy"]
        assert [(p["name"], p["weight"]) for p in policy["policies"]][-1] == ("gpu", 0.5)
        gw.router.set_policy(CompositePolicy([LatencyPolicy(weight=3.0, latency_scale=0.1)]))
        gw.router.set_strategy("round-robin")
        snap = snapshot(gw)
        assert snap["policy"]["policies"] == [
            {"name": "latency", "weight": 3.0, "share": 1.0, "params": {"latency_scale": 0.1}}
        ]
        assert snap["policy"]["strategy"] == "round-robin"
        assert list(snap["routing"]["breakdown"]["generate"][0]["scores"]) == ["latency"]


async def test_rates_and_history_come_from_counter_deltas() -> None:
    clock = ManualClock(0.0)
    async with federation({"node": "a"}) as gw:
        telemetry = Telemetry(gw, clock=clock, sample_interval=0.25, rate_window=5.0, history=4)
        try:
            first = telemetry.snapshot()
            assert first["rates"]["requests_per_s"] == 0.0 and len(first["history"]) == 1
            for i in range(10):
                await gw.infer(req(f"r{i}"))
            clock.advance(2.0)
            snap = telemetry.snapshot()
            assert snap["rates"] == {
                "requests_per_s": 5.0, "ok_per_s": 5.0, "failed_per_s": 0.0,
                "tokens_per_s": 20.0, "window_s": 2.0,
            }  # fmt: skip
            assert [h["t"] for h in snap["history"]] == [-2.0, 0.0]
            assert snap["history"][-1]["rps"] == 5.0 and snap["history"][-1]["total"] == 10
            assert snap["history"][-1]["p50"] == pytest.approx(gw.stats().latency_p50)
            # Too soon: no new sample, same rates.
            clock.advance(0.1)
            assert not telemetry.sample()
            # The window slides: samples older than 5 s stop counting; the ring is bounded.
            for _ in range(4):
                clock.advance(3.0)
                assert telemetry.sample()
            snap = telemetry.snapshot()
            assert len(snap["history"]) == 4
            assert snap["rates"]["requests_per_s"] == 0.0
            assert snap["rates"]["window_s"] == pytest.approx(3.0)
            assert snap["gateway"]["uptime"] == pytest.approx(14.1)
        finally:
            telemetry.close()


async def test_empty_federation_snapshot() -> None:
    async with federation() as gw:
        snap = snapshot(gw)
    assert snap["workers"] == [] and snap["health"] == [] and snap["breakers"] == []
    assert snap["catalog"] == {"models": {}, "capabilities": [], "deployments": 0}
    assert snap["routing"]["breakdown"] == {} and snap["routing"]["recent"] == []
    assert snap["stats"]["total_requests"] == 0 and snap["stats"]["latency_p50"] is None
    assert snap["gateway"]["running"] is True


def test_telemetry_rejects_bad_settings() -> None:
    gw = GatewayBuilder().build()
    with pytest.raises(ValueError, match="history: expected an int >= 2, got 1"):
        Telemetry(gw, history=1)
    with pytest.raises(ValueError, match="rate_window: expected finite seconds >= 0, got nan"):
        Telemetry(gw, rate_window=float("nan"))
    with pytest.raises(ValueError, match="endpoint: expected a ZeroMQ endpoint"):
        TelemetryServer(gw, "127.0.0.1:5556")
    with pytest.raises(ValueError, match="prometheus_port: expected a port 0-65535 or None"):
        TelemetryServer(gw, prometheus_port=-1)
    with pytest.raises(ValueError, match="timeout: expected finite seconds > 0, got 0"):
        TelemetryClient("tcp://127.0.0.1:5556", timeout=0)


# ---------------------------------------------------------------- the ZeroMQ endpoint


async def test_server_and_client_round_trip() -> None:
    async with federation({"node": "a"}) as gw:
        await gw.infer(req("one"))
        # min_interval=0, share=1: every request builds anew (the default caches).
        async with TelemetryServer(gw, "tcp://127.0.0.1:0", min_interval=0, share=1) as server:
            assert server.endpoint.startswith("tcp://127.0.0.1:")
            assert not server.endpoint.endswith((":0", ":*"))
            async with TelemetryClient(server.endpoint, timeout=2.0) as client:
                snap = await client.fetch()
                assert snap["gateway"]["id"] == gw.gateway_id
                assert snap["gateway"]["telemetry"] == server.endpoint
                assert snap["stats"]["total_requests"] == 1
                assert snap["workers"][0]["node"] == "a"
                await gw.infer(req("two"))
                assert (await client.fetch())["stats"]["total_requests"] == 2
                assert await client.request(b"ping") == {"pong": True, "gateway": gw.gateway_id}
                # The blocking variant, from a thread (the loop must keep serving).
                sync = await asyncio.to_thread(client.fetch_sync)
                assert sync["stats"]["total_requests"] == 2

            # A plain REQ socket works too (the envelope is echoed).
            ctx = zmq.asyncio.Context()
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.endpoint)
            try:
                await sock.send(b"snapshot")
                reply = msgspec.msgpack.decode(await asyncio.wait_for(sock.recv(), 2.0))
                assert reply["gateway"]["id"] == gw.gateway_id
            finally:
                sock.close(0)
                ctx.term()
        assert not server.running


async def test_bad_requests_get_an_error_and_the_server_keeps_serving() -> None:
    async with (
        federation({"node": "a"}) as gw,
        TelemetryServer(gw, "tcp://127.0.0.1:0", min_interval=0, share=1) as server,
    ):
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        try:

            async def ask(*frames: bytes) -> dict[str, Any]:
                await sock.send_multipart(list(frames))
                reply = await asyncio.wait_for(sock.recv_multipart(), 2.0)
                assert reply[:-1] == list(frames[:-1])  # the envelope comes back
                decoded: dict[str, Any] = msgspec.msgpack.decode(reply[-1])
                return decoded

            bogus = await ask(b"id-1", b"bogus")
            assert bogus["error"] == (
                "expected a command b'snapshot' [offset=N] [limit=M] or b'ping', got b'bogus'"
            )
            assert (await ask(b"id-2", b"\x00\xff" * 40))["error"].endswith("(80 bytes)")
            huge = await ask(b"id-3", b"x" * 5000)
            assert huge["error"] == "expected a command of at most 1024 bytes, got 5000 bytes"
            # No envelope at all: the reply is one frame.
            assert (await ask(b"snapshot"))["gateway"]["id"] == gw.gateway_id

            # A snapshot that fails becomes an error reply, once; the server lives on.
            async def broken(**_: Any) -> Any:
                raise RuntimeError("boom")

            original = server.telemetry.build
            server.telemetry.build = broken  # type: ignore[method-assign]
            try:
                failed = await ask(b"id-5", b"snapshot")
            finally:
                server.telemetry.build = original  # type: ignore[method-assign]
            assert failed["error"] == "snapshot failed: RuntimeError: boom"
            assert (await ask(b"id-6", b"snapshot"))["gateway"]["id"] == gw.gateway_id
            # A page: options that are not offset/limit ints are refused, naming the word.
            for bad in (b"snapshot offset=-1", b"snapshot limit=0", b"snapshot rows=5",
                        b"snapshot offset"):  # fmt: skip
                refused = await ask(b"id-7", bad)
                assert refused["error"].startswith("expected a command b'snapshot' [offset=N]")
                assert repr(bad.split()[1]) in refused["error"]
            paged = await ask(b"id-8", b"snapshot offset=0 limit=1")
            assert paged["page"]["total"]["workers"] == 1 and len(paged["workers"]) == 1
            assert server.errors == 8 and server.requests == 11
        finally:
            sock.close(0)
            ctx.term()


async def test_client_times_out_clearly_and_recovers_when_the_gateway_returns() -> None:
    async with federation({"node": "a"}) as gw:
        server = TelemetryServer(gw, "tcp://127.0.0.1:0")
        await server.start()
        endpoint = server.endpoint
        await server.stop()
        client = TelemetryClient(endpoint, timeout=0.2)
        try:
            with pytest.raises(TelemetryTimeout, match=f"telemetry at {endpoint} did not answer "
                                                       r"'snapshot' within 0.2s"):  # fmt: skip
                await client.fetch()
            with pytest.raises(TimeoutError):  # it is a TimeoutError too
                await asyncio.to_thread(client.fetch_sync)
            async with TelemetryServer(gw, endpoint):
                snap = await client.fetch()  # a fresh socket: nothing stale queued
                assert snap["gateway"]["id"] == gw.gateway_id
        finally:
            client.close()


async def test_client_reports_error_replies() -> None:
    async with (
        federation() as gw,
        TelemetryServer(gw, "tcp://127.0.0.1:0") as server,
        TelemetryClient(server.endpoint, timeout=2.0) as client,
    ):
        with pytest.raises(TelemetryError, match="got b'metrics'"):
            await client.request(b"metrics")
        assert (await client.fetch())["workers"] == []


async def test_binding_a_busy_endpoint_fails_clearly() -> None:
    async with federation() as gw, TelemetryServer(gw, "tcp://127.0.0.1:0") as server:
        with pytest.raises(OSError, match="cannot bind telemetry endpoint"):
            await TelemetryServer(gw, server.endpoint).start()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            second = TelemetryServer(gw, "tcp://127.0.0.1:0", prometheus_port=port)
            with pytest.raises(OSError, match=f"cannot serve Prometheus metrics on .*:{port}"):
                await second.start()
            assert not second.running and second.metrics_url is None  # nothing left bound


# ---------------------------------------------------------------- Prometheus


async def test_prometheus_endpoint_serves_gateway_metrics() -> None:
    from prometheus_client import REGISTRY, generate_latest

    async with federation({"node": "a"}, {"node": "b"}) as gw:
        for i in range(3):
            await gw.infer(req(f"p{i}", tenant_id="acme"))
        for _ in range(5):
            gw.breaker.record_failure("b")
        # min_interval=0, share=1: no snapshot is reused, so a scrape sees the request before it.
        async with TelemetryServer(
            gw, "tcp://127.0.0.1:0", prometheus_port=0, min_interval=0, share=1
        ) as server:
            url = server.metrics_url
            assert url is not None and url.startswith("http://127.0.0.1:")

            def scrape() -> str:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body: bytes = response.read()
                return body.decode()

            text = await asyncio.to_thread(scrape)
            assert "fedgate_requests_total 3.0" in text
            assert "fedgate_requests_succeeded_total 3.0" in text
            assert "fedgate_tokens_total 12.0" in text
            assert "fedgate_breaker_trips_total 1.0" in text
            assert "fedgate_workers 2.0" in text
            assert 'fedgate_node_breaker_state{node="b",state="open"} 1.0' in text
            assert 'fedgate_node_breaker_state{node="b",state="closed"} 0.0' in text
            assert 'fedgate_node_breaker_failures{node="b"} 5.0' in text
            assert 'fedgate_tenant_requests_total{outcome="ok",tenant="acme"} 3.0' in text
            assert 'fedgate_tenant_in_flight{tenant="acme"} 0.0' in text
            assert 'fedgate_tenant_waiting{tenant="acme"} 0.0' in text
            assert 'fedgate_tenant_rejected_total{limit="requests",tenant="acme"} 0.0' in text
            assert 'fedgate_request_latency_seconds{quantile="0.99"}' in text
            served = [n for n in ("a", "b") if gw.health.status(n).samples]  # type: ignore[arg-type]
            assert f'fedgate_node_health_state{{node="{served[0]}",state="healthy"}} 1.0' in text
            # Scraped live, at request time.
            await gw.infer(req("p3"))
            assert "fedgate_requests_total 4.0" in await asyncio.to_thread(scrape)
            # Its own registry, never the process-wide one.
            assert b"fedgate_requests_total" not in generate_latest(REGISTRY)
            assert server.registry is not None and server.registry is not REGISTRY
            async with TelemetryClient(server.endpoint) as client:
                assert (await client.fetch())["gateway"]["metrics"] == url
        with pytest.raises(OSError):
            await asyncio.to_thread(scrape)  # stopped with the server
