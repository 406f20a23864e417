"""``[trust] clients``, ``operators`` and ``audit_log``: configuration, binds, the audit file.

The attacks themselves (unauthenticated clients and dashboards, a request
naming another tenant, a failover's audit lines) run with real processes in
``test_trust_clients_process.py``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedgate import Capability, InferenceRequest, PrivacyLevel, QoSRequirements
from fedgate.cli import gateway as gateway_cli
from fedgate.cli import top as top_cli
from fedgate.config import ConfigError, load_config, to_toml
from fedgate.gateway.audit import AuditLog
from fedgate.gateway.ingress import IngressClient
from fedgate.telemetry import TelemetryClient
from fedgate.transport import curve


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    for name in ("gateway", "eu", "acme", "ops"):
        curve.generate(tmp_path / "keys", name)
    for folder, name in (("trusted", "eu"), ("clients", "acme"), ("operators", "ops")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.key").write_bytes(
            (tmp_path / "keys" / f"{name}.key").read_bytes()
        )
    return tmp_path


def write_toml(keydir: Path, extra: str = "") -> Path:
    path = keydir / "secured.toml"
    path.write_text(
        '[trust]\nkey = "keys/gateway.key_secret"\ntrusted = "trusted"\n' + extra
        + '[trust.grants.eu]\nnodes = ["eu-1"]\nregion = "eu-west-1"\n'
    )
    return path


def test_trust_reads_clients_operators_and_audit_log_relative_to_the_file(keydir: Path) -> None:
    path = write_toml(
        keydir, 'clients = "clients"\noperators = "operators"\naudit_log = "audit.jsonl"\n'
    )
    cfg = load_config(path)
    assert cfg.trust is not None
    assert cfg.trust.clients == str(keydir / "clients")
    assert cfg.trust.operators == str(keydir / "operators")
    assert cfg.trust.audit_log == str(keydir / "audit.jsonl")
    state = cfg.trust.load()
    assert state.clients is not None and set(state.clients.values()) == {"acme"}
    assert state.operators is not None and set(state.operators.values()) == {"ops"}
    # What --check prints reads back the same.
    again = keydir / "again.toml"
    again.write_text(to_toml(cfg))
    assert load_config(again).trust == cfg.trust


def test_trust_names_a_bad_clients_value_and_a_missing_directory(keydir: Path) -> None:
    with pytest.raises(ConfigError, match=r"trust\.clients: expected a file path, got 3"):
        load_config(write_toml(keydir, "clients = 3\n"))
    with pytest.raises(ConfigError, match=r"trust\.operator: unknown key.*operators"):
        load_config(write_toml(keydir, 'operator = "operators"\n'))
    cfg = load_config(write_toml(keydir, 'operators = "nowhere"\n'))
    assert cfg.trust is not None
    with pytest.raises(ValueError, match=r"nowhere.*does not exist"):
        cfg.trust.load()


@pytest.mark.parametrize(
    ("extra", "flag", "refused"),
    [
        ("", ["--ingress", "tcp://0.0.0.0:5557"], True),
        ('clients = "clients"\n', ["--ingress", "tcp://0.0.0.0:5557"], False),
        ("", ["--telemetry", "tcp://0.0.0.0:5556"], True),
        ('operators = "operators"\n', ["--telemetry", "tcp://0.0.0.0:5556"], False),
        ('clients = "clients"\n', ["--telemetry", "tcp://0.0.0.0:5556"], True),
    ],
)
def test_an_ingress_or_telemetry_without_its_key_directory_stays_on_loopback(
    keydir: Path, extra: str, flag: list[str], refused: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(write_toml(keydir, extra), overrides={
        "gateway.ingress" if flag[0] == "--ingress" else "gateway.telemetry": flag[1]
    })  # fmt: skip
    assert (gateway_cli._exposed(cfg) == [flag[1]]) is refused
    # On loopback the same endpoint starts (with a warning): the host is the boundary.
    assert (flag[1] in gateway_cli._unguarded(cfg)) is refused
    if refused:
        # Refused before anything binds, naming what is missing.
        argv = ["--config", str(keydir / "secured.toml"), *flag]
        assert gateway_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert flag[1] in err and "--insecure" in err
        assert ("[trust] clients" if flag[0] == "--ingress" else "[trust] operators") in err


def test_top_takes_an_operator_key_and_the_gateways_key_together(
    keydir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret, public = keydir / "keys" / "ops.key_secret", keydir / "keys" / "gateway.key"
    with pytest.raises(SystemExit) as info:
        top_cli.main(["--once", "--key", str(secret)])
    assert info.value.code == 2
    assert "--key and --gateway-key go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        top_cli.main(["--once", "--key", str(keydir / "nope"), "--gateway-key", str(public)])
    assert info.value.code == 2
    assert "argument --key: expected a key file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        top_cli.main(["--once", "--key", str(public), "--gateway-key", str(public)])
    assert "holds no secret key" in capsys.readouterr().err


def test_clients_read_their_keys_at_once(keydir: Path) -> None:
    secret, public = keydir / "keys" / "acme.key_secret", keydir / "keys" / "gateway.key"
    for cls in (IngressClient, TelemetryClient):
        with pytest.raises(ValueError, match="both CURVE key files or neither"):
            cls("tcp://127.0.0.1:5557", key=secret)
        with pytest.raises(ValueError, match="cannot read the key file"):
            cls("tcp://127.0.0.1:5557", key=keydir / "missing", gateway_key=public)


def _dispatch(privacy: PrivacyLevel, rid: str = "r1", tenant: str | None = "acme") -> Any:
    request = InferenceRequest(
        Capability.GENERATE, b"x", request_id=rid, tenant_id=tenant,
        qos=QoSRequirements(privacy=privacy),
    )  # fmt: skip
    return request


def _attempt(key: bytes | None, number: int = 1) -> Any:
    worker = SimpleNamespace(node="eu-1", region="eu-west-1", key=key)
    return SimpleNamespace(worker=worker, number=number)


def test_audit_writes_one_line_per_confidential_or_restricted_attempt(keydir: Path) -> None:
    public = curve.load_public(keydir / "keys" / "eu.key")
    path = keydir / "audit" / "dispatches.jsonl"
    path.parent.mkdir()
    audit = AuditLog(path, {public: "eu"}, clock=lambda: 1_764_684_000.25)
    failure = SimpleNamespace(error=TimeoutError("late"))
    for level in (PrivacyLevel.PUBLIC, PrivacyLevel.INTERNAL):
        audit(_dispatch(level), _attempt(public), True, None)
    assert path.read_bytes() == b""  # created (mode 0600), nothing written
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    audit(_dispatch(PrivacyLevel.RESTRICTED), _attempt(public, 1), False, failure)
    audit(_dispatch(PrivacyLevel.RESTRICTED), _attempt(public, 2), True, None)
    audit(_dispatch(PrivacyLevel.CONFIDENTIAL, "r2", None), _attempt(None), False, None)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "time": "2025-12-02T14:00:00.250000+00:00", "tenant": "acme", "request_id": "r1",
        "attempt": 1, "privacy": "RESTRICTED", "node": "eu-1", "region": "eu-west-1",
        "key": "eu", "fingerprint": curve.digest(public), "outcome": "TimeoutError",
    }  # fmt: skip
    assert lines[1]["outcome"] == "ok" and lines[1]["attempt"] == 2
    # A plain link has no key; a caller that stopped reading is "cancelled".
    assert (lines[2]["key"], lines[2]["fingerprint"], lines[2]["outcome"]) == (
        None, None, "cancelled")
    assert audit.lines == 3 and audit.errors == 0
    # Closed (the gateway stopped), the next line opens the file again: appended.
    audit.close()
    audit(_dispatch(PrivacyLevel.RESTRICTED, "r3"), _attempt(public), True, None)
    assert len(path.read_text().splitlines()) == 4
    audit.close()


def test_audit_names_a_path_it_cannot_append_to(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"audit_log: cannot append to '.*missing/a\.jsonl'"):
        AuditLog(tmp_path / "missing" / "a.jsonl")


def test_the_audit_fingerprint_is_sha256_of_the_raw_key(keydir: Path) -> None:
    import hashlib

    import zmq.utils.z85

    public = curve.load_public(keydir / "keys" / "eu.key")
    raw = zmq.utils.z85.decode(public)
    assert curve.digest(public) == "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]
    assert curve.digest(public) == curve.digest(raw)
