"""Who may ask and look, and the audit log, with real processes (R31, SPEC §5 audit).

The gateway runs with CURVE on all three endpoints: its worker link, the
client ingress (``[trust] clients``) and telemetry (``[trust] operators``).
Honest workers are ``fedgate worker`` processes; attackers are
``rogue_client.py`` processes that count, on their own side, every byte that
reached them while RESTRICTED traffic flows through the ingress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from procs import TESTS, Fleet, _env, wait_until

from fedgate import PrivacyLevel, Region
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker
from fedgate.federation.health import HealthChecker, HealthConfig
from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.ingress import Ingress, IngressClient
from fedgate.gateway.trust import Trust, WorkerGrant
from fedgate.telemetry import TelemetryClient, TelemetryServer, TelemetryTimeout
from fedgate.transport import curve

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

HB = 0.1


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("gateway", "eu", "de", "acme", "mallory", "ops", "eve"):
        curve.generate(tmp_path / "keys", name)
    for folder, names in (("trusted", ("eu", "de")), ("clients", ("acme",)),
                          ("operators", ("ops",))):  # fmt: skip
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / f"{name}.key").write_bytes(
                (tmp_path / "keys" / f"{name}.key").read_bytes()
            )
    return tmp_path


def key_flags(keys: Path, name: str) -> list[str]:
    return [
        "--key", str(keys / "keys" / f"{name}.key_secret"),
        "--gateway-key", str(keys / "keys" / "gateway.key"),
    ]


def client(keys: Path, endpoint: str, name: str = "acme") -> IngressClient:
    return IngressClient(
        endpoint,
        key=keys / "keys" / f"{name}.key_secret",
        gateway_key=keys / "keys" / "gateway.key",
        timeout=20.0,
    )


@contextlib.asynccontextmanager
async def secured(
    keys: Path, *, strategy: str = "least-latency"
) -> AsyncIterator[tuple[Gateway, Fleet, Ingress, TelemetryServer]]:
    trust = Trust(
        key=str(keys / "keys" / "gateway.key_secret"),
        workers=str(keys / "trusted"),
        grants={
            "eu": WorkerGrant(nodes=["eu-1"], region="eu-west-1"),
            "de": WorkerGrant(nodes=["de-1"], region="eu-central-1"),
        },
        clients=str(keys / "clients"),
        operators=str(keys / "operators"),
        audit_log=str(keys / "audit.jsonl"),
    )
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=15.0, retry_delay=0.01, max_retries=3))
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=100)))
        # A failing node must stay routable: the failover test needs it tried first.
        .circuit_breaker(CircuitBreaker(BreakerConfig(failure_threshold=1000)))
        .regions(Region("eu-west-1", PrivacyLevel.RESTRICTED),
                 Region("eu-central-1", PrivacyLevel.RESTRICTED))
        .strategy(strategy)
        .trust(trust)
        .build()
    )
    async with gateway:
        ingress = Ingress(gateway, "tcp://127.0.0.1:*")
        telemetry = TelemetryServer(gateway, "tcp://127.0.0.1:*", prometheus_port=0)
        await ingress.start()
        await telemetry.start()
        try:
            with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=keys) as fleet:
                try:
                    yield gateway, fleet, ingress, telemetry
                except BaseException:
                    print(fleet.logs())
                    raise
        finally:
            await telemetry.stop()
            await ingress.stop()


def python_worker(fleet: Fleet, keys: Path, node: str, region: str, key: str, fn: str) -> None:
    fleet.start(node, region, "--backend", "python", "--callable", f"pybackend_fixture:{fn}",
                *key_flags(keys, key))  # fmt: skip


def rogue(kind: str, endpoint: str, seconds: float, *flags: str) -> Any:
    argv = [sys.executable, str(TESTS / "rogue_client.py"), kind, endpoint, str(seconds), *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, env=_env())


async def report(proc: Any) -> dict[str, Any]:
    out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0
    return dict(json.loads(out))


def audit_lines(keys: Path) -> list[dict[str, Any]]:
    path = keys / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_r31_clients_and_dashboards_without_a_trusted_key_are_refused_and_get_nothing(
    keys: Path,
) -> None:
    async with secured(keys) as (gw, fleet, ingress, telemetry):
        python_worker(fleet, keys, "eu-1", "eu-west-1", "eu", "keywords")
        await gw.wait_for_workers(1, timeout=20.0)
        mallory = key_flags(keys, "mallory")
        attackers = [
            rogue("ingress", ingress.endpoint, 3.0),  # no key at all
            rogue("ingress", ingress.endpoint, 3.0, *mallory),  # a key the gateway does not trust
            rogue("telemetry", telemetry.endpoint, 3.0),
            rogue("telemetry", telemetry.endpoint, 3.0, *key_flags(keys, "eve")),
        ]
        served = 0
        async with client(keys, ingress.endpoint) as acme:
            for round_ in range(5):
                replies = await asyncio.gather(*(
                    acme.infer("generate", b"RESTRICTED-" + str(i).encode(),
                               privacy="RESTRICTED", id=f"r{round_}-{i}")
                    for i in range(20)
                ))  # fmt: skip
                served += sum(r["node"] == "eu-1" for r in replies)
        reports = [await report(p) for p in attackers]
        for got in reports:
            # Checked on the attacker's side: it sent, and not one byte came back.
            assert got["sent"] > 0 and got["frames"] == 0 and got["bytes"] == 0, got
        assert served == 100
        # Not one attacker request was read: the gateway ran the honest 100 only.
        assert gw.stats().total_requests == 100 and ingress.served == 100
        assert ingress.rejected == 0
        refused = gw.stats().refused_handshakes_by_endpoint
        assert refused.get("ingress", 0) >= 2 and refused.get("telemetry", 0) >= 2, refused
        assert ingress.refused_handshakes == refused["ingress"]
        # The operator's key reads the snapshot, with the refusals in it.
        ops = TelemetryClient(telemetry.endpoint, timeout=10.0,
                              key=keys / "keys" / "ops.key_secret",
                              gateway_key=keys / "keys" / "gateway.key")  # fmt: skip
        with ops:
            snap = await ops.fetch()
        assert snap["stats"]["refused_handshakes_by_endpoint"]["ingress"] >= 2
        # Prometheus has no key: it binds loopback only, whatever else is secured.
        assert telemetry.metrics_url is not None
        assert telemetry.metrics_url.startswith("http://127.0.0.1:")
        metrics = (await telemetry.prometheus_text()).decode()
        for endpoint in ("ingress", "telemetry"):
            assert f'fedgate_refused_endpoint_handshakes_total{{endpoint="{endpoint}"}}' in metrics
        # Without it, the dashboard gets nothing: a timeout, not an error reply.
        with TelemetryClient(telemetry.endpoint, timeout=0.5) as anon, pytest.raises(
            TelemetryTimeout, match="operator key"
        ):
            await anon.fetch()


async def test_r31_a_clients_tenant_is_its_keys_name_whatever_the_request_says(
    keys: Path,
) -> None:
    async with secured(keys) as (gw, fleet, ingress, _telemetry):
        python_worker(fleet, keys, "eu-1", "eu-west-1", "eu", "keywords")
        await gw.wait_for_workers(1, timeout=20.0)
        async with client(keys, ingress.endpoint) as acme:
            named = await acme.infer("generate", b"x", tenant="other", id="t1")
            unnamed = await acme.infer("generate", b"y", id="t2")
        # The python backend's `keywords` answers "request_id|tenant|model|input":
        # the tenant the worker saw.
        assert named["output"].split(b"|")[1] == b"acme"
        assert unnamed["output"].split(b"|")[1] == b"acme"
        per_tenant = gw.stats().per_tenant
        assert set(per_tenant) == {"acme"} and per_tenant["acme"].requests == 2


async def test_audit_shows_both_dispatches_of_a_failover_and_nothing_for_public(
    keys: Path,
) -> None:
    async with secured(keys, strategy="round-robin") as (gw, fleet, ingress, _telemetry):
        python_worker(fleet, keys, "eu-1", "eu-west-1", "eu", "explodes")
        python_worker(fleet, keys, "de-1", "eu-central-1", "de", "keywords")
        await gw.wait_for_workers(2, timeout=20.0)
        async with client(keys, ingress.endpoint) as acme:
            # PUBLIC: served (by de-1: eu-1 fails and the request moves), never audited.
            for i in range(4):
                await acme.infer("generate", b"p", privacy="PUBLIC", id=f"pub-{i}")
            assert audit_lines(keys) == []
            replies = await asyncio.gather(*(
                acme.infer("generate", b"r", privacy="RESTRICTED", tenant="other", id=f"res-{i}")
                for i in range(6)
            ))  # fmt: skip
        assert {r["node"] for r in replies} == {"de-1"}
        await wait_until(lambda: len(audit_lines(keys)) >= 6, 5.0, "six audit lines")
        lines = audit_lines(keys)
        assert {line["request_id"] for line in lines} == {f"res-{i}" for i in range(6)}
        prints = {
            name: curve.digest(curve.load_public(keys / "keys" / f"{name}.key"))
            for name in ("eu", "de")
        }
        by_request: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            by_request.setdefault(line["request_id"], []).append(line)
            assert line["tenant"] == "acme" and line["privacy"] == "RESTRICTED"
            assert line["fingerprint"] == prints[line["key"]]
        failovers = [rows for rows in by_request.values() if len(rows) == 2]
        assert failovers, by_request  # round robin: some requests tried eu-1 first
        for first, second in failovers:
            assert (first["node"], first["region"], first["key"]) == ("eu-1", "eu-west-1", "eu")
            assert first["outcome"] == "WorkerError" and first["attempt"] == 1
            assert (second["node"], second["region"], second["key"]) == (
                "de-1", "eu-central-1", "de")
            assert second["outcome"] == "ok" and second["attempt"] == 2
        for rows in by_request.values():
            assert rows[-1]["outcome"] == "ok" and len(rows) in (1, 2)
        assert gw.audit is not None and gw.audit.errors == 0
