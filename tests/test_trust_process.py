"""The trust attacks with real processes (R19, R28, R29, R30, R33).

The gateway runs here with CURVE on its worker link and a ``[trust]`` of two
worker keys; honest workers are ``fedgate worker`` processes, attackers are
``rogue_worker.py`` processes that count, on their own side, every byte the
gateway sent them while RESTRICTED traffic flows to the honest EU node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from procs import TESTS, Fleet, _env, free_port, wait_until

from fedgate import Capability, InferenceRequest, PrivacyLevel, QoSRequirements, Region
from fedgate.federation.health import HealthChecker, HealthConfig
from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.trust import Trust, WorkerGrant
from fedgate.transport import curve

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

HB = 0.1
# Long liveness: a restart accepted while the old worker's heartbeats have not
# expired yet shows the registry took the dead connection, not the timeout.
LIVENESS = 100


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("gateway", "us", "eu", "rogue"):
        curve.generate(tmp_path / "keys", name)
    (tmp_path / "trusted").mkdir()
    for name in ("us", "eu"):
        (tmp_path / "trusted" / f"{name}.key").write_bytes(
            (tmp_path / "keys" / f"{name}.key").read_bytes()
        )
    return tmp_path


def key_flags(keys: Path, name: str) -> list[str]:
    return [
        "--key", str(keys / "keys" / f"{name}.key_secret"),
        "--gateway-key", str(keys / "keys" / "gateway.key"),
    ]


@contextlib.asynccontextmanager
async def secured(keys: Path) -> AsyncIterator[tuple[Gateway, Fleet]]:
    trust = Trust(
        key=str(keys / "keys" / "gateway.key_secret"),
        workers=str(keys / "trusted"),
        grants={
            "us": WorkerGrant(nodes=["us-1"], region="us-west-2", max_cost=5.0),
            "eu": WorkerGrant(nodes=["eu-1"], region="eu-west-1", gpu=True),
        },
    )
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=10.0, retry_delay=0.01))
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=LIVENESS)))
        .regions(Region("eu-west-1", PrivacyLevel.RESTRICTED))
        .trust(trust)
        .build()
    )
    async with gateway:
        with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=keys) as fleet:
            try:
                yield gateway, fleet
            except BaseException:
                print(fleet.logs())
                raise


def rogue(gw: Gateway, node: str, region: str, seconds: float, *flags: str) -> Any:
    argv = [sys.executable, str(TESTS / "rogue_worker.py"), gw.endpoints[0], node, region,
            str(seconds), *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, env=_env())


async def report(proc: Any) -> dict[str, Any]:
    out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0
    return dict(json.loads(out))


def restricted(rid: str) -> InferenceRequest:
    return InferenceRequest(
        Capability.GENERATE, b"RESTRICTED-" + rid.encode(), request_id=rid,
        qos=QoSRequirements(privacy=PrivacyLevel.RESTRICTED),
    )


async def traffic(gw: Gateway, prefix: str, n: int) -> set[str]:
    responses = await asyncio.gather(*(gw.infer(restricted(f"{prefix}{i}")) for i in range(n)))
    return {r.node_id for r in responses}


async def test_r28_r19_no_key_or_an_unknown_key_cannot_register_and_gets_nothing(
    keys: Path,
) -> None:
    async with secured(keys) as (gw, fleet):
        fleet.start("eu-1", "eu-west-1", "--gpu", *key_flags(keys, "eu"))
        await gw.wait_for_workers(1, timeout=20.0)
        attackers = [
            rogue(gw, "eu-2", "eu-west-1", 3.0),
            rogue(gw, "eu-2", "eu-west-1", 3.0, *key_flags(keys, "rogue")),
            rogue(gw, "eu-1", "eu-west-1", 3.0, *key_flags(keys, "rogue")),
        ]
        served = set()
        for round_ in range(5):
            served |= await traffic(gw, f"r{round_}-", 20)
        reports = [await report(p) for p in attackers]
        assert served == {"eu-1"}
        for got in reports:
            # Checked on the attacker's side: not one byte, not even a refusal.
            assert got["frames"] == 0 and got["bytes"] == 0 and not got["welcomed"], got
        assert [w["node"] for w in gw.workers()] == ["eu-1"]
        assert gw.stats().successful_requests == 100
        assert gw.stats().refused_handshakes >= 2  # the two attackers with an unknown key


@pytest.mark.parametrize(
    ("node", "region", "flags", "reason", "words"),
    [
        ("us-1", "eu-west-1", (), "region", "granted region 'us-west-2', not 'eu-west-1'"),
        ("eu-1", "eu-west-1", (), "node", "no grant for node id 'eu-1'"),
        ("us-7", "us-west-2", (), "node", "no grant for node id 'us-7'"),
        ("us-1", "us-west-2", ("--gpu",), "gpu", "no grant to announce a GPU"),
        ("us-1", "us-west-2", ("--cost", "9"), "cost", "granted cost 0-5, not 9"),
    ],
)
async def test_r29_r19_a_claim_beyond_the_keys_grant_is_refused_and_gets_no_data(
    keys: Path, node: str, region: str, flags: tuple[str, ...], reason: str, words: str
) -> None:
    async with secured(keys) as (gw, fleet):
        fleet.start("eu-1", "eu-west-1", "--gpu", *key_flags(keys, "eu"))
        await gw.wait_for_workers(1, timeout=20.0)
        attacker = rogue(gw, node, region, 10.0, *key_flags(keys, "us"), *flags)
        served = await traffic(gw, "a", 50)
        got = await report(attacker)
        assert got["refused"] is not None and words in got["refused"], got
        assert got["requests"] == 0 and got["request_bytes"] == 0 and not got["welcomed"]
        assert served == {"eu-1"}
        stats = gw.stats()
        assert stats.refused_workers >= 1 and set(stats.refused_by_reason) == {reason}
        if node != "eu-1":  # the fleet runs eu-1 already: one process per node name
            # A real worker with the same claim exits 3, saying which grant it lacks.
            fleet.start(node, region, *flags, *key_flags(keys, "us"))
            assert await fleet.async_wait_exit(node, timeout=20.0) == 3
            assert words in fleet.logs(node)
        assert [w["node"] for w in gw.workers()] == ["eu-1"]


async def test_r30_a_node_id_belongs_to_its_key_live_killed_and_restarted(keys: Path) -> None:
    async with secured(keys) as (gw, fleet):
        fleet.start("eu-1", "eu-west-1", "--gpu", *key_flags(keys, "eu"))
        await gw.wait_for_workers(1, timeout=20.0)
        victim = gw.workers()[0]
        # A trusted key that read the worker id from the dashboard, live node.
        stolen = rogue(gw, "eu-1", "eu-west-1", 10.0, *key_flags(keys, "us"),
                       "--routing-id", f"eu-1/{victim['worker_id']}")
        assert await traffic(gw, "live", 20) == {"eu-1"}
        got = await report(stolen)
        assert got["refused"] and got["requests"] == 0, got
        # SIGKILLed: the id is still not another key's ...
        fleet.kill("eu-1")
        fleet.wait_exit("eu-1")
        stolen = rogue(gw, "eu-1", "eu-west-1", 10.0, *key_flags(keys, "us"),
                       "--routing-id", f"eu-1/{victim['worker_id']}")
        got = await report(stolen)
        assert got["refused"] and "no grant for node id 'eu-1'" in got["refused"], got
        assert got["requests"] == 0 and not got["welcomed"]
        # ... and its own key's new process takes it back at once, long before
        # the old one's heartbeats would have expired.
        fleet.restart("eu-1")
        await wait_until(
            lambda: any(w["pid"] == fleet.pid("eu-1") and w["alive"] for w in gw.workers()),
            HB * LIVENESS / 2,
            "the restarted worker registered",
        )
        assert await traffic(gw, "after", 20) == {"eu-1"}
        assert gw.stats().refused_by_reason.get("node", 0) >= 2


def _gateway(*flags: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "fedgate", "gateway", "--no-telemetry", "--log-level", "INFO",
            *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


async def _started(proc: subprocess.Popen[str]) -> str:
    """The gateway's stderr up to its start (the banner is on stdout), then stopped."""
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert "is running" in line
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0
    return err


async def test_r33_secure_by_default(keys: Path) -> None:
    port = free_port()
    # A network address without [trust]: refused before anything binds.
    proc = _gateway("--bind", f"tcp://0.0.0.0:{port}")
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 2
    assert "tcp://0.0.0.0" in err and "--insecure" in err and "[trust]" in err
    # The default: loopback only, and it says so.
    err = await _started(_gateway("--bind", f"tcp://127.0.0.1:{port}"))
    assert "loopback binds only" in err and "INSECURE" not in err
    # --insecure: starts, and warns at every start.
    for _ in range(2):
        err = await _started(_gateway("--bind", f"tcp://0.0.0.0:{port}", "--insecure"))
        assert "WARNING" in err and "INSECURE" in err and f"tcp://0.0.0.0:{port}" in err
    # With [trust], the worker link may bind any address.
    toml = keys / "secured.toml"
    toml.write_text(
        '[trust]\nkey = "keys/gateway.key_secret"\ntrusted = "trusted"\n'
        '[trust.grants.eu]\nnodes = ["eu-1"]\nregion = "eu-west-1"\n'
    )
    err = await _started(_gateway("--config", str(toml), "--bind", f"tcp://0.0.0.0:{port}"))
    assert "INSECURE" not in err and "not authenticated" not in err
