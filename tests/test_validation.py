"""One declared vocabulary (fedgate.validation): every numeric setting has real bounds.

The cases of issue 11 — values ``fedgate gateway --check`` used to accept and the
gateway then could not live with — and the agreement between what a request
accepts and what the wire accepts.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest

from fedgate import cli
from fedgate.config import ConfigError, FedgateConfig, loads_config
from fedgate.deploy import build_gateway
from fedgate.federation.breaker import BreakerConfig
from fedgate.federation.health import HealthConfig
from fedgate.gateway import GatewayConfig
from fedgate.gateway.config import HttpConfig
from fedgate.gateway.tenants import TenantLimits
from fedgate.transport import protocol as wire
from fedgate.types import Capability, InferenceRequest, QoSRequirements, Region
from fedgate.validation import (
    MAX_DEADLINE,
    InvalidParameterError,
    Number,
    ParameterTypeError,
    Text,
    count,
    rule_of,
    validate,
)
from fedgate.worker.process import WorkerConfig

WORKER = {
    "gateways": ["tcp://127.0.0.1:5555"],
    "node": "n",
    "region": "r",
    "models": ["m"],
    "capabilities": ["generate"],
}


def rejected(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_config(text, source="t.toml")
    return info.value


# ------------------------------------------------------------------ the cases


def test_a_send_hwm_beyond_a_c_int_is_rejected_by_name_and_value() -> None:
    err = rejected("[gateway]\nsend_hwm = 3000000000\n")
    assert err.key == "gateway.send_hwm"
    assert err.reason == "expected an integer in [1, 10000000], got 3000000000"
    with pytest.raises(ValueError, match=r"^GatewayConfig\.send_hwm: expected .*got 3000000000$"):
        GatewayConfig(send_hwm=3_000_000_000)
    with pytest.raises(ValueError, match=r"WorkerConfig\.recv_hwm: .*got 3000000000"):
        WorkerConfig(**WORKER, recv_hwm=3_000_000_000)


def test_check_rejects_what_the_start_would_crash_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway]\nsend_hwm = 3000000000\n")
    assert cli.main(["gateway", "--config", str(path), "--check"]) == 2
    assert "gateway.send_hwm: expected an integer in [1, 10000000]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[gateway]\nrequest_timeout = 1e308", "gateway.request_timeout"),
        ("[gateway]\nstall_timeout = 1e308", "gateway.stall_timeout"),
        ("[gateway]\nretry_delay = 1e308", "gateway.retry_delay"),
        ("[gateway]\nmonitor_interval = 1e-300", "gateway.monitor_interval"),
        ("[health]\nheartbeat_interval = 1e-300", "health.heartbeat_interval"),
        ("[worker]\nheartbeat_interval = 1e-300", "worker.heartbeat_interval"),
        ("[breaker]\nopen_timeout = 1e7", "breaker.open_timeout"),
        ("[worker]\ndrain_timeout = 1e308", "worker.drain_timeout"),
    ],
)
def test_durations_have_a_sane_minimum_and_maximum(text: str, key: str) -> None:
    err = rejected(text)
    assert err.key == key
    assert err.reason.startswith("expected seconds in ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[gateway]\nbind = "tcp://127.0.0.1:99999"', "gateway.bind[0]"),
        ('[gateway]\nbind = ["tcp://127.0.0.1:1", "tcp://[::1]:65536"]', "gateway.bind[1]"),
        ('[gateway]\ntelemetry = "tcp://127.0.0.1:70000"', "gateway.telemetry"),
        ('[gateway]\ningress = "tcp://127.0.0.1:99999"', "gateway.ingress"),
        ('[worker]\ngateways = ["tcp://127.0.0.1:99999"]', "worker.gateways[0]"),
        # A worker connects: "any free port" is no place to connect to.
        ('[worker]\ngateways = ["tcp://127.0.0.1:0"]', "worker.gateways[0]"),
        ('[worker]\ngateways = ["tcp://127.0.0.1:*"]', "worker.gateways[0]"),
    ],
)
def test_ports_outside_1_to_65535_are_rejected(text: str, key: str) -> None:
    err = rejected(text)
    assert err.key == key
    assert "PORT 1-65535" in err.reason


def test_port_bounds_are_inclusive_and_a_bind_may_ask_for_any_port() -> None:
    cfg = loads_config(
        '[gateway]\nbind = ["tcp://127.0.0.1:65535", "tcp://127.0.0.1:0", "tcp://*:1"]\n'
        'ingress = "tcp://127.0.0.1:*"\n[worker]\ngateways = "tcp://[::1]:65535"\n'
    )
    assert cfg.binds == ("tcp://127.0.0.1:65535", "tcp://127.0.0.1:*", "tcp://*:1")
    assert cfg.worker["gateways"] == ("tcp://[::1]:65535",)
    with pytest.raises(ValueError, match=r"FedgateConfig\.binds\[0\]: .*'tcp://h:99999'"):
        FedgateConfig(binds=("tcp://h:99999",))


def test_a_request_never_accepts_a_deadline_the_wire_rejects() -> None:
    def on_wire(deadline: float) -> bool:
        frame = wire.encode(
            wire.Request("r" * 16, 0, "req", None, "generate", None, b"", deadline)
        )
        try:
            wire.decode(frame)
        except wire.ProtocolError:
            return False
        return True

    def accepted(deadline: float) -> bool:
        try:
            InferenceRequest(Capability.GENERATE, b"", request_id="r", deadline=deadline)
        except ValueError:
            return False
        return True

    for deadline in (1e-9, 1.0, MAX_DEADLINE, MAX_DEADLINE * 1.0000001, 1e308, 0.0, -1.0,
                     math.inf, math.nan):  # fmt: skip
        assert accepted(deadline) == on_wire(deadline), deadline
    assert wire.MAX_DEADLINE == MAX_DEADLINE


def test_request_ids_are_bounded_as_the_wire_bounds_them() -> None:
    InferenceRequest(Capability.GENERATE, b"", request_id="r" * 1024, tenant_id="t" * 256)
    with pytest.raises(ValueError, match=r"InferenceRequest\.request_id"):
        InferenceRequest(Capability.GENERATE, b"", request_id="r" * 1025)
    with pytest.raises(ValueError, match=r"InferenceRequest\.tenant_id"):
        InferenceRequest(Capability.GENERATE, b"", request_id="r", tenant_id="t" * 257)


# Key, largest accepted value (the next integer up is rejected).
UPPER = [
    ("gateway.max_retries", 100),
    ("gateway.retry_budget_min", 100_000),
    ("gateway.max_input_bytes", 2**31 - 1),
    ("gateway.max_frame_bytes", 2**31 - 1),
    ("gateway.send_hwm", 10_000_000),
    ("gateway.stream_buffer", 10_000_000),
    ("gateway.recent_routes", 100_000),
    ("gateway.max_queued", 10_000_000),
    ("gateway.prometheus_port", 65535),
    ("health.failure_threshold", 1023),
    ("health.recovery_threshold", 1023),
    ("health.window", 1 << 20),
    ("health.heartbeat_liveness", 100),
    ("breaker.failure_threshold", 1023),
    ("breaker.half_open_max_probes", 63),
    ("breaker.success_threshold", 63),
    ("worker.max_concurrency", 1_000_000),
    ("worker.send_hwm", 10_000_000),
    ("worker.recv_hwm", 10_000_000),
    ("worker.max_frame_bytes", 2**31 - 1),
]


@pytest.mark.parametrize(("key", "high"), UPPER, ids=[u[0] for u in UPPER])
def test_counts_and_sizes_have_an_upper_bound(key: str, high: int) -> None:
    table, name = key.split(".")
    cfg = loads_config(f"[{table}]\n{name} = {high}\n")
    assert cfg is not None
    err = rejected(f"[{table}]\n{name} = {high + 1}\n")
    assert err.key == key
    assert err.reason.endswith(f", {high}], got {high + 1}")


# ------------------------------------------------------------------ the declarations


CONFIGS: list[type] = [
    GatewayConfig,
    TenantLimits,
    HealthConfig,
    BreakerConfig,
    WorkerConfig,
    QoSRequirements,
    InferenceRequest,
    Region,
    FedgateConfig,
    HttpConfig,
]


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__name__ for c in CONFIGS])
def test_every_field_declares_a_rule_and_numbers_finite_bounds(cls: type) -> None:
    for f in dataclasses.fields(cls):
        try:
            rule = rule_of(cls, f.name)
        except KeyError:
            # Only nested configs and the strategy (a choice) go without a rule.
            nested = ("gateway", "regions", "policy", "breaker", "health", "http", "worker",
                      "trust", "models", "tenants")  # fmt: skip
            assert f.name in (*nested, "source", "strategy"), f"{cls.__name__}.{f.name}"
            continue
        if isinstance(rule, Number):
            assert math.isfinite(rule.low) and math.isfinite(rule.high), f.name
            assert rule.meta.le == rule.high


def test_errors_say_which_field_and_value_structurally() -> None:
    with pytest.raises(InvalidParameterError) as info:
        HealthConfig(window=0)
    err = info.value
    assert (err.owner, err.field, err.index, err.value) == ("HealthConfig", "window", None, 0)
    assert str(err) == f"HealthConfig.window: {err.reason}"
    # A wrong type is a TypeError too (and still a ValueError, as WorkerConfig's always were).
    with pytest.raises(ParameterTypeError) as typed:
        BreakerConfig(open_timeout="5m")  # type: ignore[arg-type]
    assert isinstance(typed.value, TypeError) and isinstance(typed.value, ValueError)
    with pytest.raises(InvalidParameterError) as item:
        WorkerConfig(**{**WORKER, "models": ["a", "b", "a"]})
    assert (item.value.field, item.value.index, item.value.value) == ("models", 2, "a")
    # It crosses a process boundary whole (a worker's failure reported to its parent).
    again = pickle.loads(pickle.dumps(item.value))
    assert type(again) is type(item.value) and str(again) == str(item.value)
    assert (again.field, again.index) == ("models", 2)


def test_values_are_normalised_as_declared() -> None:
    assert HealthConfig(heartbeat_interval=timedelta(milliseconds=5)).heartbeat_interval == 0.005
    w = WorkerConfig(**{**WORKER, "capabilities": [" Generate "], "cost": 2})
    assert w.capabilities == ("generate",) and isinstance(w.cost, float)
    assert isinstance(w.gateways, tuple)
    # NaN fails every bound.
    with pytest.raises(ValueError, match="nan"):
        QoSRequirements(min_throughput=math.nan)


@dataclasses.dataclass(frozen=True)
class Small:
    n: Annotated[int, count(1, 3)] = 1
    label: Annotated[str, Text(what="a label")] | None = None

    def __post_init__(self) -> None:
        validate(self)


def test_validate_checks_any_declared_dataclass() -> None:
    assert Small(3).n == 3 and Small(label=None).label is None
    with pytest.raises(ValueError, match=r"^Small\.n: expected an integer in \[1, 3\], got 4$"):
        Small(4)
    with pytest.raises(TypeError, match=r"^Small\.label: expected a label, got 7$"):
        Small(label=7)  # type: ignore[arg-type]


def test_worker_flags_are_checked_by_the_worker_config_declarations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["worker", "--gateway", "tcp://127.0.0.1:1", "--node", "n", "--region", "r",
            "--model", "m", "--capability", "generate",
            "--heartbeat-interval", "1e-300"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    expected = rule_of(WorkerConfig, "heartbeat_interval").expected
    assert f"argument --heartbeat-interval: expected {expected}, got '1e-300'" in (
        capsys.readouterr().err
    )


async def test_a_gateway_starts_with_every_setting_at_its_declared_maximum() -> None:
    # What --check accepts, the gateway lives with: the largest of every count.
    highs: dict[str, Any] = {}
    for f in dataclasses.fields(GatewayConfig):
        rule = rule_of(GatewayConfig, f.name)
        assert isinstance(rule, Number)
        highs[f.name] = int(rule.high) if rule.integer else rule.high
    highs["monitor_interval"] = 0.05  # the maximum is valid but would slow the test's stop
    cfg = FedgateConfig(
        binds=("tcp://127.0.0.1:0",), telemetry=None, gateway=GatewayConfig(**highs)
    )
    gw = build_gateway(cfg)
    await gw.start()
    try:
        assert gw.running
    finally:
        await gw.stop()
