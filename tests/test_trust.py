"""CURVE on the worker link and the trust grants, with in-process workers (R19, R29, R30 fast).

The gateway and its workers share the test's loop but talk over real
loopback TCP with libzmq's CURVE handshake and pyzmq's ZAP authenticator; the
same attacks with separate processes are in ``test_trust_process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from procs import wait_until

from fedgate import Capability, InferenceRequest, PrivacyLevel, QoSRequirements, Region
from fedgate.cli import keys as keys_cli
from fedgate.federation.health import HealthChecker, HealthConfig
from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.trust import Trust, WorkerGrant
from fedgate.telemetry import TelemetryServer
from fedgate.transport import curve
from fedgate.worker import process
from fedgate.worker.process import Worker, WorkerConfig


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_keys_generate_writes_a_private_secret_and_a_shareable_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keys_cli.main(["generate", "w1", "--dir", str(tmp_path / "k")]) == 0
    public, secret = tmp_path / "k" / "w1.key", tmp_path / "k" / "w1.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    pair = curve.load_pair(secret)
    assert pair.public == curve.load_public(public) and pair.secret is not None
    assert b"secret" not in public.read_bytes().replace(b"secret-key", b"")
    assert "w1.key_secret" in capsys.readouterr().out
    # Never overwritten: a replaced secret would lock its worker out.
    before = secret.read_bytes()
    assert keys_cli.main(["generate", "w1", "--dir", str(tmp_path / "k")]) == 2
    assert secret.read_bytes() == before
    with pytest.raises(SystemExit):
        keys_cli.main(["--help"])
    assert "NAME.key_secret" in capsys.readouterr().out


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    for name in ("gateway", "us", "eu", "rogue"):
        curve.generate(tmp_path / "keys", name)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for name in ("us", "eu"):
        (trusted / f"{name}.key").write_bytes((tmp_path / "keys" / f"{name}.key").read_bytes())
    return tmp_path


def grants(keydir: Path, **extra: WorkerGrant) -> Trust:
    return Trust(
        key=str(keydir / "keys" / "gateway.key_secret"),
        workers=str(keydir / "trusted"),
        grants={
            "us": WorkerGrant(nodes=["us-1", "us-2"], region="us-west-2", max_cost=5.0),
            "eu": WorkerGrant(nodes=["eu-1"], region="eu-west-1", gpu=True),
            **extra,
        },
    )


@contextlib.asynccontextmanager
async def secured(keydir: Path) -> AsyncIterator[Gateway]:
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=5.0, retry_delay=0.01))
        .health(HealthChecker(HealthConfig(heartbeat_interval=0.1, heartbeat_liveness=30)))
        .regions(Region("eu-west-1", PrivacyLevel.RESTRICTED))
        .trust(grants(keydir))
        .build()
    )
    async with gateway:
        yield gateway


def worker(gw: Gateway, keydir: Path, node: str, region: str, key: str | None, **kw: Any) -> Worker:
    keyed: dict[str, Any] = {}
    if key is not None:
        keyed = {
            "key": str(keydir / "keys" / f"{key}.key_secret"),
            "gateway_key": str(keydir / "keys" / "gateway.key"),
        }
    cfg = WorkerConfig(
        [gw.endpoints[0]], node, region, ["m"], ["generate"],
        heartbeat_interval=0.1, close_linger=0.0, drain_timeout=0.2,
        backend_options={"tokens": 4}, **keyed, **kw,
    )
    return Worker(cfg)


def restricted(rid: str) -> InferenceRequest:
    return InferenceRequest(
        Capability.GENERATE, b"secret", request_id=rid,
        qos=QoSRequirements(privacy=PrivacyLevel.RESTRICTED),
    )


async def test_a_granted_key_registers_and_serves_restricted_traffic(keydir: Path) -> None:
    async with secured(keydir) as gw:
        eu = worker(gw, keydir, "eu-1", "eu-west-1", "eu", gpu=True)
        async with eu:
            await gw.wait_for_workers(1, timeout=10.0)
            response = await gw.infer(restricted("r1"))
            assert response.node_id == "eu-1" and eu.stats.requests == 1
        assert gw.stats().refused_workers == 0


@pytest.mark.parametrize(
    ("node", "region", "kw", "reason", "words"),
    [
        ("us-1", "eu-west-1", {}, "region", "granted region 'us-west-2'"),
        ("eu-1", "eu-west-1", {}, "node", "no grant for node id 'eu-1'"),
        ("us-9", "us-west-2", {}, "node", "no grant for node id 'us-9'"),
        ("us-1", "us-west-2", {"gpu": True}, "gpu", "no grant to announce a GPU"),
        ("us-1", "us-west-2", {"cost": 0.0 + 9.0}, "cost", "granted cost 0-5"),
    ],
)
async def test_a_claim_outside_the_grant_is_refused_with_its_reason(
    keydir: Path, node: str, region: str, kw: dict[str, Any], reason: str, words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with secured(keydir) as gw:
        us = worker(gw, keydir, node, region, "us", **kw)
        assert await asyncio.wait_for(us.run(), 10.0) == 3
        assert us.stats.requests == 0 and gw.workers() == []
        stats = gw.stats()
        assert stats.refused_workers >= 1 and set(stats.refused_by_reason) == {reason}
        assert any(words in r.getMessage() for r in caplog.records if r.name == "fedgate.worker")
        async with TelemetryServer(gw, "tcp://127.0.0.1:0", prometheus_port=0,
                                   min_interval=0, share=1) as server:
            assert server.metrics_url is not None
            text = await asyncio.to_thread(scrape, server.metrics_url)
        count = stats.refused_by_reason[reason]
        assert f'fedgate_refused_worker_reasons_total{{reason="{reason}"}} {count:.1f}' in text


async def test_an_unknown_key_or_no_key_cannot_connect(
    keydir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The handshake's refusal says nothing to the worker: it says so itself, soon.
    monkeypatch.setattr(process, "SILENT_WARNING", 0.3)
    async with secured(keydir) as gw:
        eu = worker(gw, keydir, "eu-1", "eu-west-1", "eu", gpu=True)
        rogue = worker(gw, keydir, "eu-2", "eu-west-1", "rogue")
        plain = worker(gw, keydir, "eu-3", "eu-west-1", None)
        async with eu, rogue, plain:
            await gw.wait_for_workers(1, timeout=10.0)
            for i in range(20):
                await gw.infer(restricted(f"r{i}"))
            # Their READYs repeat every heartbeat; none gets through the handshake.
            await wait_until(lambda: rogue.stats.readies_sent >= 5, 10.0, "READY repeats")
            assert [w["node"] for w in gw.workers()] == ["eu-1"]
            assert rogue.welcomed_by() == [None] and plain.welcomed_by() == [None]
            assert rogue.stats.requests == plain.stats.requests == 0
            assert eu.stats.requests == 20
            # The unknown key was refused at its handshake, and counted; the
            # keyless one never reached ZAP (a mechanism mismatch).
            assert gw.stats().refused_handshakes >= 1
            said = [r.getMessage() for r in caplog.records]
            silent = [m for m in said if "has not answered" in m]
            assert any("eu-2" in m and "--key is not in its trusted keys" in m for m in silent)
            assert any("eu-3" in m and "needs --key and --gateway-key" in m for m in silent)
            assert not any("eu-1" in m for m in silent)


async def test_another_key_never_takes_a_node_id_its_own_key_restarts_it(keydir: Path) -> None:
    async with secured(keydir) as gw:
        first = worker(gw, keydir, "eu-1", "eu-west-1", "eu", gpu=True)
        async with first:
            await gw.wait_for_workers(1, timeout=10.0)
            thief = worker(gw, keydir, "eu-1", "eu-west-1", "us")
            assert await asyncio.wait_for(thief.run(), 10.0) == 3
        assert gw.stats().refused_by_reason == {"node": gw.stats().refused_workers}
        # The node's worker is gone: another key still cannot take the id ...
        thief = worker(gw, keydir, "eu-1", "eu-west-1", "us")
        assert await asyncio.wait_for(thief.run(), 10.0) == 3
        # ... and its own key's new process is accepted at once.
        again = worker(gw, keydir, "eu-1", "eu-west-1", "eu", gpu=True)
        async with again:
            await wait_until(lambda: again.welcomed_by() != [None], 10.0, "the restart welcomed")
            response = await gw.infer(restricted("after"))
            assert response.node_id == "eu-1" and again.stats.requests == 1
