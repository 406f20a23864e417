"""TOML configuration: every table and key accepted when valid, rejected by name when not (R15).

Nothing here starts a gateway: configurations are parsed, built into (unstarted)
gateways, and reloaded onto them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fedgate import PrivacyLevel, Region
from fedgate.config import (
    DEFAULT_BIND,
    TABLES,
    ConfigError,
    FedgateConfig,
    apply_overrides,
    load_config,
    loads_config,
    parse_config,
    to_toml,
    worker_config,
)
from fedgate.deploy import build_gateway, reload_gateway
from fedgate.federation.breaker import BreakerConfig
from fedgate.federation.health import HealthConfig
from fedgate.federation.policy import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    PrivacyPolicy,
)
from fedgate.gateway import GatewayConfig
from fedgate.telemetry import DEFAULT_ENDPOINT

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parent.parent / "examples" / "federation.toml"


def rejected(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_config(text, source="test.toml")
    assert str(info.value).startswith(f"test.toml: {info.value.key}: ")
    return info.value


# ------------------------------------------------------------------ valid files


def test_empty_file_is_every_default() -> None:
    cfg = loads_config("")
    assert cfg == FedgateConfig()
    assert cfg.binds == (DEFAULT_BIND,)
    assert cfg.telemetry == DEFAULT_ENDPOINT
    assert cfg.ingress is None
    assert cfg.prometheus_port is None
    assert cfg.strategy == "least-latency"
    assert cfg.origin is None
    assert cfg.gateway == GatewayConfig()
    assert cfg.policy == CompositePolicy.enterprise_default()
    assert cfg.breaker == BreakerConfig()
    assert cfg.health == HealthConfig()
    assert cfg.regions == ()
    assert cfg.worker == {}


def test_every_key_of_every_table_is_read() -> None:
    cfg = load_config(DATA / "gateway_full.toml")
    assert cfg.source == str(DATA / "gateway_full.toml")
    # [gateway]: port 0 becomes ZeroMQ's "any port"
    assert cfg.binds == ("tcp://127.0.0.1:*", "ipc:///tmp/fedgate-test.sock")
    assert cfg.telemetry == "tcp://127.0.0.1:7556"
    assert cfg.ingress == "tcp://127.0.0.1:*"
    assert cfg.prometheus_port == 9109
    assert cfg.strategy == "consistent-hash"
    assert cfg.origin == "eu-west-1"
    assert cfg.gateway_id == "gw-test"
    assert cfg.gateway == GatewayConfig(
        max_retries=2,
        retry_delay=0.0,
        request_timeout=12.5,
        retry_budget_ratio=0.5,
        retry_budget_min=1,
        max_input_bytes=1048576,
        max_frame_bytes=4194304,
        send_hwm=5000,
        stream_buffer=4096,
        stall_timeout=4.0,
        monitor_interval=0.02,
        recent_routes=64,
    )
    assert cfg.regions == (
        Region("eu-west-1", PrivacyLevel.RESTRICTED, "eu-west-1b"),
        Region("us-east-1", PrivacyLevel.CONFIDENTIAL, None, 0.75),
    )
    # preset "none": exactly the policies listed, in file order
    assert cfg.policy == CompositePolicy(
        [
            HealthPolicy(3.0),
            PrivacyPolicy(1.5),
            LatencyPolicy(0.5, latency_scale=0.1),
            LocalityPolicy(2.0, origin="eu-west-1"),
            CostPolicy(0.25, cost_scale=2.0),
            GpuPolicy(0.75),
        ]
    )
    assert cfg.breaker == BreakerConfig(4, 2.5, 20.0, 2, 2, 1.5)
    assert cfg.health == HealthConfig(
        failure_threshold=2,
        recovery_threshold=4,
        degraded_latency=0.5,
        window=256,
        heartbeat_interval=0.25,
        heartbeat_liveness=5,
    )
    w = worker_config(cfg)
    assert w.gateways == ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5565")
    assert (w.node, w.region, w.backend, w.gpu, w.cost) == (
        "eu-west-gpu-01",
        "eu-west-1",
        "synthetic",
        True,
        1.2,
    )
    assert w.models == ("whisper-large-v3", "llama-3-8b")
    assert w.capabilities == ("transcribe", "generate")
    assert (w.max_concurrency, w.heartbeat_interval, w.drain_timeout) == (16, 0.2, 2.0)
    assert (w.send_hwm, w.recv_hwm, w.max_frame_bytes, w.close_linger) == (2000, 3000, 1048576, 0.1)
    assert dict(w.backend_options) == {"ttft": 0.04, "token_rate": 120}


@pytest.mark.parametrize("path", [EXAMPLE, DATA / "gateway_full.toml", DATA / "reload_good.toml"])
def test_to_toml_reads_back_the_same_config(path: Path) -> None:
    cfg = load_config(path)
    again = loads_config(to_toml(cfg), source=cfg.source)
    assert again == cfg


def test_documented_example_is_the_case_study() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.policy.weights().tolist() == [2.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    clearances = {r.id: r.clearance for r in cfg.regions}
    assert clearances == {
        "us-west-2": PrivacyLevel.INTERNAL,
        "eu-west-1": PrivacyLevel.RESTRICTED,
        "ap-south-1": PrivacyLevel.INTERNAL,
    }
    assert cfg.breaker == BreakerConfig() and cfg.health == HealthConfig()
    assert cfg.gateway == GatewayConfig()
    assert cfg.binds == (DEFAULT_BIND,) and cfg.telemetry == DEFAULT_ENDPOINT
    assert cfg.worker == {}  # the [worker] table is there, commented out


def test_policy_overlays_the_preset() -> None:
    cfg = loads_config("[policy]\nhealth = 3\n[policy.latency]\nlatency_scale = 0.1\n")
    assert cfg.policy == CompositePolicy(
        [
            HealthPolicy(3.0),
            LatencyPolicy(1.0, latency_scale=0.1),
            PrivacyPolicy(1.0),
            LocalityPolicy(1.0),
            CostPolicy(1.0),
        ]
    )
    # weight 0 switches one off; a new one is appended
    cfg = loads_config("[policy]\ncost = 0\ngpu = 0.5\n")
    assert cfg.policy.get("cost") == CostPolicy(0.0)
    assert cfg.policy.policies[-1] == GpuPolicy(0.5)


def test_single_strings_are_accepted_for_lists_and_telemetry_can_be_off() -> None:
    cfg = loads_config('[gateway]\nbind = "tcp://0.0.0.0:6000"\ntelemetry = false\n')
    assert cfg.binds == ("tcp://0.0.0.0:6000",)
    assert cfg.telemetry is None
    assert "telemetry = false" in to_toml(cfg)


def test_retry_keys_may_live_in_gateway_instead() -> None:
    a = loads_config(
        "[retry]\nmax_retries = 1\nretry_delay = 0.5\nbudget_ratio = 0.1\nbudget_min = 7"
    )
    b = loads_config(
        "[gateway]\nmax_retries = 1\nretry_delay = 0.5\nretry_budget_ratio = 0.1\n"
        "retry_budget_min = 7"
    )
    assert (
        a.gateway
        == b.gateway
        == GatewayConfig(max_retries=1, retry_delay=0.5, retry_budget_ratio=0.1, retry_budget_min=7)
    )


# ------------------------------------------------------------------ rejections

UNKNOWN = [
    ("gatway = 1", "gatway", "unknown key"),
    ("[gatway]\nbind = 'tcp://a:1'", "gatway", "unknown table"),
    ("[gateway]\nbnd = 'tcp://a:1'", "gateway.bnd", "expected one of bind,"),
    ("[retry]\ndelay = 1", "retry.delay", "expected one of budget_min, budget_ratio,"),
    ("[[regions]]\nid = 'x'\nclearence = 'PUBLIC'", "regions[0].clearence", "clearance"),
    ("[policy]\nhelth = 1", "policy.helth", "expected one of cost, gpu, health,"),
    ("[policy.health]\nwieght = 2.0", "policy.health.wieght", "expected one of weight"),
    # Gone with SPEC §2's "who excludes a node": failures are the breaker's.
    ("[health]\nunhealthy_cooldown = 5", "health.unhealthy_cooldown", "expected one of"),
    ("[http]\nlisten_on = 'x'", "http.listen_on", "expected one of"),
    ("[aliases.chat]\nmodel = ['a']", "aliases.chat.model", "expected one of models"),
    ("[models.a]\ncontext = 8", "models.a.context", "expected one of context_window"),
    ("[policy.latency]\nscale = 1", "policy.latency.scale", "latency_scale, weight"),
    ("[breaker]\nthreshold = 3", "breaker.threshold", "failure_threshold"),
    ("[health]\ninterval = 1", "health.interval", "heartbeat_interval"),
    ("[worker]\nnodes = 'x'", "worker.nodes", "expected one of"),
]


@pytest.mark.parametrize(("text", "key", "hint"), UNKNOWN, ids=[u[1] for u in UNKNOWN])
def test_unknown_tables_and_keys_are_named(text: str, key: str, hint: str) -> None:
    err = rejected(text)
    assert err.key == key
    assert "unknown" in err.reason
    assert hint in err.reason


BAD = [
    # [gateway]
    ("[gateway]\nbind = []", "gateway.bind", "[]"),
    ("[gateway]\nbind = 5555", "gateway.bind", "5555"),
    ("[gateway]\nbind = ['tcp://a:1', 'localhost:5']", "gateway.bind[1]", "'localhost:5'"),
    ("[gateway]\nbind = ['tcp://a:1', 'tcp://a:1']", "gateway.bind[1]", "twice"),
    ("[gateway]\ntelemetry = true", "gateway.telemetry", "True"),
    ("[gateway]\ntelemetry = 'udp://x:1'", "gateway.telemetry", "'udp://x:1'"),
    ("[gateway]\ningress = 'tcp:/x'", "gateway.ingress", "'tcp:/x'"),
    ("[gateway]\nprometheus_port = 70000", "gateway.prometheus_port", "70000"),
    ("[gateway]\nprometheus_port = -1", "gateway.prometheus_port", "-1"),
    ("[gateway]\nprometheus_port = '9100'", "gateway.prometheus_port", "'9100'"),
    ("[gateway]\nstrategy = 'fastest'", "gateway.strategy", "'fastest'"),
    ("[gateway]\norigin = ''", "gateway.origin", "''"),
    ("[gateway]\nid = 3", "gateway.id", "3"),
    ("[gateway]\nrequest_timeout = 0", "gateway.request_timeout", "(0, 86400], got 0"),
    ("[gateway]\nrequest_timeout = -5", "gateway.request_timeout", "-5"),
    ("[gateway]\nrequest_timeout = nan", "gateway.request_timeout", "nan"),
    ("[gateway]\nrequest_timeout = inf", "gateway.request_timeout", "inf"),
    ("[gateway]\nrequest_timeout = '30s'", "gateway.request_timeout", "'30s'"),
    ("[gateway]\nrequest_timeout = true", "gateway.request_timeout", "True"),
    ("[gateway]\nstall_timeout = 0", "gateway.stall_timeout", "0"),
    ("[gateway]\nmonitor_interval = -0.1", "gateway.monitor_interval", "-0.1"),
    ("[gateway]\nmax_input_bytes = 0", "gateway.max_input_bytes", "0"),
    ("[gateway]\nmax_frame_bytes = 10", "gateway.max_frame_bytes", "10"),
    ("[gateway]\nsend_hwm = 1.5", "gateway.send_hwm", "1.5"),
    ("[gateway]\nstream_buffer = 0", "gateway.stream_buffer", "0"),
    ("[gateway]\nstream_buffer_bytes = 1000", "gateway.stream_buffer_bytes", "1000"),
    ("[gateway]\nmax_deadline = 0", "gateway.max_deadline", "0"),
    ("[gateway]\ndead_grace = -1", "gateway.dead_grace", "-1"),
    ("[gateway]\nrecent_routes = -1", "gateway.recent_routes", "-1"),
    ("[gateway]\nmax_queued = -1", "gateway.max_queued", "-1"),
    ("[gateway]\nmax_retries = -1", "gateway.max_retries", "-1"),
    ("[gateway]\nretry_budget_ratio = 1.5", "gateway.retry_budget_ratio", "1.5"),
    # [retry]
    ("[retry]\nmax_retries = -1", "retry.max_retries", "-1"),
    ("[retry]\nmax_retries = 2.5", "retry.max_retries", "2.5"),
    ("[retry]\nretry_delay = -0.1", "retry.retry_delay", "-0.1"),
    ("[retry]\nretry_delay = inf", "retry.retry_delay", "inf"),
    ("[retry]\nbudget_ratio = nan", "retry.budget_ratio", "nan"),
    ("[retry]\nbudget_ratio = -0.2", "retry.budget_ratio", "-0.2"),
    ("[retry]\nbudget_min = -3", "retry.budget_min", "-3"),
    ("[gateway]\nmax_retries = 1\n[retry]\nmax_retries = 2", "retry.max_retries", "both"),
    # [[regions]]
    ("regions = 'eu'", "regions", "'eu'"),
    ("[regions]\nid = 'eu'", "regions", "[[regions]]"),
    ("[[regions]]\nclearance = 'PUBLIC'", "regions[0].id", "missing"),
    ("[[regions]]\nid = ''", "regions[0].id", "''"),
    ("[[regions]]\nid = 'x'\nclearance = 'SECRET'", "regions[0].clearance", "'SECRET'"),
    ("[[regions]]\nid = 'x'\nclearance = 3", "regions[0].clearance", "3"),
    ("[[regions]]\nid = 'x'\ncost = -1", "regions[0].cost", "-1"),
    ("[[regions]]\nid = 'x'\ncost = inf", "regions[0].cost", "inf"),
    ("[[regions]]\nid = 'x'\nzone = 7", "regions[0].zone", "7"),
    ("[[regions]]\nid = 'x'\n[[regions]]\nid = 'x'", "regions[1].id", "regions[0]"),
    # [policy]
    ("policy = 3", "policy", "3"),
    ("[policy]\npreset = 'fast'", "policy.preset", "'fast'"),
    ("[policy]\nhealth = -1", "policy.health.weight", "-1"),
    ("[policy]\nhealth = nan", "policy.health.weight", "nan"),
    ("[policy]\nhealth = inf", "policy.health.weight", "inf"),
    ("[policy]\nhealth = -inf", "policy.health.weight", "-inf"),
    ("[policy]\nhealth = 'high'", "policy.health.weight", "'high'"),
    ("[policy.privacy]\nweight = -0.5", "policy.privacy.weight", "-0.5"),
    ("[policy.latency]\nlatency_scale = 0", "policy.latency.latency_scale", "0"),
    ("[policy.latency]\nlatency_scale = nan", "policy.latency.latency_scale", "nan"),
    ("[policy.cost]\ncost_scale = -2", "policy.cost.cost_scale", "-2"),
    ("[policy.locality]\norigin = ''", "policy.locality.origin", "''"),
    ("[policy.gpu]\nweight = inf", "policy.gpu.weight", "inf"),
    ("[policy.latency]\nweight = -1", "policy.latency.weight", "-1"),
    ("[policy.locality]\nweight = nan", "policy.locality.weight", "nan"),
    ("[policy]\ncost = -inf", "policy.cost.weight", "-inf"),
    ("[policy]\npreset = 'none'\nhealth = 0", "policy", "weight > 0"),
    (
        "[policy]\nhealth = 0\nlatency = 0\nprivacy = 0\nlocality = 0\ncost = 0",
        "policy",
        "weight > 0",
    ),
    # [breaker]
    ("[breaker]\nfailure_threshold = 0", "breaker.failure_threshold", "0"),
    ("[breaker]\nfailure_threshold = 5000", "breaker.failure_threshold", "5000"),
    ("[breaker]\nfailure_threshold = 2.0", "breaker.failure_threshold", "2.0"),
    ("[breaker]\nopen_timeout = 0", "breaker.open_timeout", "0"),
    ("[breaker]\nopen_timeout = -1.0", "breaker.open_timeout", "-1.0"),
    ("[breaker]\nopen_timeout = nan", "breaker.open_timeout", "nan"),
    ("[breaker]\nopen_timeout = 0.0001", "breaker.open_timeout", "0.0001"),
    ("[breaker]\nmax_open_timeout = inf", "breaker.max_open_timeout", "inf"),
    ("[breaker]\nopen_timeout = 10\nmax_open_timeout = 5", "breaker.max_open_timeout", "(10.0)"),
    ("[breaker]\nmax_open_timeout = 5\nopen_timeout = 10", "breaker.max_open_timeout", "(10.0)"),
    ("[breaker]\nhalf_open_max_probes = 0", "breaker.half_open_max_probes", "0"),
    ("[breaker]\nsuccess_threshold = 64", "breaker.success_threshold", "64"),
    ("[breaker]\nprobe_timeout = -inf", "breaker.probe_timeout", "-inf"),
    # [health]
    ("[health]\nfailure_threshold = 0", "health.failure_threshold", "0"),
    ("[http]\nlisten = 'nope'", "http.listen", "nope"),
    ("[http]\nlisten = '127.0.0.1:70000'", "http.listen", "70000"),
    ("[http]\nmax_body_bytes = 10", "http.max_body_bytes", "10"),
    ("[http]\nidle_timeout = 0", "http.idle_timeout", "0"),
    ("[aliases.chat]\nmodels = []", "aliases.chat.models", "[]"),
    ("[aliases.chat]\nmodels = ['a', 'a']", "aliases.chat.models[1]", "'a' twice"),
    ("[aliases.chat]\nmodels = ['chat']", "aliases.chat.models", "itself"),
    ("[aliases.a]\nmodels = ['b']\n[aliases.b]\nmodels = ['c']", "aliases.a.models", "'b'"),
    ("[aliases.chat]\n", "aliases.chat.models", "missing"),
    ("[models.a]\ncontext_window = 0", "models.a.context_window", "0"),
    ("[models.a]\ncontext_window = 'big'", "models.a.context_window", "'big'"),
    ("[health]\nrecovery_threshold = -2", "health.recovery_threshold", "-2"),
    ("[health]\ndegraded_latency = 0", "health.degraded_latency", "0"),
    ("[health]\ndegraded_latency = nan", "health.degraded_latency", "nan"),
    ("[health]\nwindow = 0", "health.window", "0"),
    ("[health]\nwindow = 2000000", "health.window", "2000000"),
    ("[health]\nheartbeat_interval = -1", "health.heartbeat_interval", "-1"),
    ("[health]\nheartbeat_interval = inf", "health.heartbeat_interval", "inf"),
    ("[health]\nheartbeat_liveness = 0", "health.heartbeat_liveness", "0"),
    ("[health]\nheartbeat_liveness = true", "health.heartbeat_liveness", "True"),
    # [worker]
    ("worker = 1", "worker", "1"),
    ("[worker]\ngateways = ['localhost']", "worker.gateways[0]", "'localhost'"),
    ("[worker]\ngateways = ['tcp://x']", "worker.gateways[0]", "'tcp://x'"),
    ("[worker]\nnode = 'a b'", "worker.node", "'a b'"),
    ("[worker]\nregion = ''", "worker.region", "''"),
    ("[worker]\nmodels = []", "worker.models", "[]"),
    ("[worker]\nmodels = 7", "worker.models", "7"),
    ("[worker]\ncapabilities = ['']", "worker.capabilities[0]", "''"),
    ("[worker]\nbackend = ''", "worker.backend", "''"),
    ("[worker]\ngpu = 'yes'", "worker.gpu", "'yes'"),
    ("[worker]\ncost = -1", "worker.cost", "-1"),
    ("[worker]\ncost = nan", "worker.cost", "nan"),
    ("[worker]\nmax_concurrency = 0", "worker.max_concurrency", "0"),
    ("[worker]\nheartbeat_interval = 0", "worker.heartbeat_interval", "0"),
    ("[worker]\ndrain_timeout = -1", "worker.drain_timeout", "-1"),
    ("[worker]\nsend_hwm = 0", "worker.send_hwm", "0"),
    ("[worker]\nrecv_hwm = 0", "worker.recv_hwm", "0"),
    ("[worker]\nmax_frame_bytes = 1", "worker.max_frame_bytes", "1"),
    ("[worker]\nclose_linger = 100", "worker.close_linger", "100"),
    ("[worker]\noptions = 3", "worker.options", "3"),
    (
        "[health]\nheartbeat_interval = 1\n[worker]\nheartbeat_interval = 5",
        "worker.heartbeat_interval",
        "declares the worker dead",
    ),
    ("[trust]\nkey = 'k'", "trust.trusted", "missing"),
    ("[trust]\nkey = 3\ntrusted = 't'", "trust.key", "3"),
    ("[trust]\nkey = 'k'\ntrusted = 't'\nkeys = 1", "trust.keys", "unknown key"),
    ("[trust]\nkey = 'k'\ntrusted = 't'\n[trust.grants.w]\nnodes = ['a']", "trust.grants.w.region",
     "missing"),
    ("[trust]\nkey = 'k'\ntrusted = 't'\n[trust.grants.w]\nnodes = []\nregion = 'r'",
     "trust.grants.w.nodes", "[]"),
    ("[trust]\nkey = 'k'\ntrusted = 't'\n[trust.grants.w]\nnodes = 'a'\nregion = 'r'\n"
     "max_cost = -1", "trust.grants.w.max_cost", "-1"),
    ("[trust]\nkey = 'k'\ntrusted = 't'\n[trust.grants.w]\nnodes = 'a'\nregion = 'r'\n"
     "[trust.grants.v]\nnodes = 'a'\nregion = 'r'", "trust.grants.v.nodes", "'a' granted to 'w'"),
    ("[tenants]\na = 1", "tenants.a", "1"),
    ("[tenants.a]\nmax_concurrent = 0", "tenants.a.max_concurrent", "0"),
    ("[tenants.a]\nrequests_per_s = 0", "tenants.a.requests_per_s", "0"),
    ("[tenants.a]\nrequests_per_s = 1\nrequest_burst = 0.5", "tenants.a.request_burst", "0.5"),
    ("[tenants.a]\ntokens_per_s = inf", "tenants.a.tokens_per_s", "inf"),
    ("[tenants.a]\ntoken_burst = 5", "tenants.a.token_burst", "alone"),
    ("[tenants.a]\nweight = -1", "tenants.a.weight", "-1"),
    ("[tenants.a]\napi_keys = 3", "tenants.a.api_keys", "int"),
    ("[tenants.a]\napi_keys = ['sk a']", "tenants.a.api_keys[0]", "a string of 4 characters"),
    # Two tenants sharing a key: the error names both (and never the key).
    ("[tenants.a]\napi_keys = ['k1', 'sk-x']\n[tenants.b]\napi_keys = ['sk-x']",
     "tenants.b.api_keys[0]", "a.api_keys[1] again (tenants 'a' and 'b')"),
    ("[tenants.a]\nmax_concurent = 3", "tenants.a.max_concurent", "unknown key"),
]


@pytest.mark.parametrize(
    ("text", "key", "shown"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_values_are_named_with_the_value(text: str, key: str, shown: str) -> None:
    err = rejected(text)
    assert err.key == key, str(err)
    assert shown in err.reason, str(err)
    assert "expected" in err.reason or "missing" in err.reason, str(err)


def test_every_table_is_covered_by_the_rejection_cases() -> None:
    tables = {key.split(".")[0].split("[")[0] for _, key, _ in BAD + UNKNOWN}
    assert set(TABLES) <= tables


def test_every_key_of_every_table_has_a_rejection_case() -> None:
    # Each documented key appears in at least one rejection case above.
    cfg = load_config(DATA / "gateway_full.toml")
    keys: set[str] = set()
    for table, body in cfg.to_mapping().items():
        rows = body if isinstance(body, list) else [body]
        for row in rows:
            for key, value in row.items():
                if table == "policy" and isinstance(value, dict):
                    keys.update(f"policy.{key}.{k}" for k in value)
                elif table == "regions":
                    keys.add(f"regions.{key}")
                elif not isinstance(value, dict):
                    keys.add(f"{table}.{key}")
    keys.add("worker.options")
    covered = {k.replace("[0]", "").replace("[1]", "") for _, k, _ in BAD + UNKNOWN}
    covered |= {"gateway.bind", "worker.gateways"}
    # [retry] keys are spelled without "retry_" in [retry] and with it in [gateway]
    missing = sorted(k for k in keys if k not in covered)
    assert missing == [], f"no rejection case for {missing}"


def test_not_toml_unreadable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nbind = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML") as info:
        load_config(bad)
    assert info.value.key is None
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


def test_the_test_data_files_fail_as_documented() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "bad_unknown_key.toml")
    assert info.value.key == "policy.health.wieght"
    assert str(info.value) == (
        f"{DATA / 'bad_unknown_key.toml'}: policy.health.wieght: unknown key; "
        "expected one of weight"
    )
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "bad_value.toml")
    assert info.value.key == "breaker.open_timeout"
    assert "-1.0" in str(info.value)


# ------------------------------------------------------------------ overrides (flags)


def test_overrides_win_over_the_file() -> None:
    cfg = load_config(
        DATA / "gateway_full.toml",
        overrides={
            "gateway.bind": ["tcp://127.0.0.1:6001"],
            "gateway.strategy": "round-robin",
            "retry.max_retries": 7,
            "gateway.retry_budget_min": 9,  # the file set it as retry.budget_min
            "regions.eu-west-1": "CONFIDENTIAL",
            "regions.ap-south-1": "PUBLIC",
            "policy.health.weight": 4.0,  # the file gave a bare number
            "policy.latency.weight": 2.0,
            "breaker.failure_threshold": 2,
        },
    )
    assert cfg.binds == ("tcp://127.0.0.1:6001",)
    assert cfg.strategy == "round-robin"
    assert cfg.gateway.max_retries == 7
    assert cfg.gateway.retry_budget_min == 9
    assert cfg.region("eu-west-1") == Region("eu-west-1", PrivacyLevel.CONFIDENTIAL, "eu-west-1b")
    assert cfg.region("ap-south-1") == Region("ap-south-1", PrivacyLevel.PUBLIC)
    assert cfg.policy.get("health") == HealthPolicy(4.0)
    assert cfg.policy.get("latency") == LatencyPolicy(2.0, latency_scale=0.1)
    assert cfg.breaker.failure_threshold == 2
    assert cfg.breaker.open_timeout == 2.5  # untouched


def test_overrides_do_not_change_their_input() -> None:
    data: dict[str, Any] = {"retry": {"max_retries": 1}, "policy": {"health": 2}}
    out = apply_overrides(data, {"gateway.max_retries": 3, "policy.health.weight": 1})
    assert data == {"retry": {"max_retries": 1}, "policy": {"health": 2}}
    assert out == {"retry": {}, "gateway": {"max_retries": 3}, "policy": {"health": {"weight": 1}}}


def test_a_bad_override_names_its_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            overrides={"retry.max_retries": -2},
            flags={"retry.max_retries": "--max-retries"},
        )
    assert info.value.key == "retry.max_retries"
    assert info.value.reason.endswith("got -2 (set by --max-retries)")


def test_parse_config_rejects_a_non_table() -> None:
    with pytest.raises(ConfigError, match="expected a table"):
        parse_config([1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------------ building and reloading


def test_build_gateway_uses_every_section() -> None:
    cfg = load_config(DATA / "gateway_full.toml")
    gw = build_gateway(cfg)
    assert gw.config == cfg.gateway
    assert gw.gateway_id == "gw-test"
    assert gw.health.config == cfg.health
    assert gw.breaker.config == cfg.breaker
    assert gw.router.policy == cfg.policy
    assert gw.router.strategy == "consistent-hash"
    assert gw.router.clearance_of("eu-west-1") is PrivacyLevel.RESTRICTED
    assert gw.router.clearance_of("us-east-1") is PrivacyLevel.CONFIDENTIAL
    assert gw.router.clearance_of("nowhere") is PrivacyLevel.INTERNAL
    assert not gw.running  # built, nothing bound


def test_reload_applies_routing_settings_and_reports_the_rest() -> None:
    old = load_config(DATA / "gateway_full.toml")
    gw = build_gateway(old)
    new = load_config(DATA / "reload_good.toml")
    notes = reload_gateway(gw, old, new)
    assert gw.router.policy == new.policy
    assert gw.router.strategy == "round-robin"
    assert gw.router.clearance_of("ap-south-1") is PrivacyLevel.CONFIDENTIAL
    # dropped from the file: back to INTERNAL, fail closed
    assert gw.router.clearance_of("eu-west-1") is PrivacyLevel.INTERNAL
    assert gw.router.clearance_of("us-east-1") is PrivacyLevel.INTERNAL
    text = "\n".join(notes)
    assert "policy: health 5" in text and "strategy: round-robin" in text
    assert "origin: ap-south-1" in text
    assert "region eu-west-1: removed" in text
    for restart in ("binds", "breaker", "health", "gateway:", "models:"):
        assert restart in text
    # [tenants] applies at once: the old API keys stop working, the new ones start.
    assert "tenant acme: removed" in text and "tenant default: removed" in text
    assert "tenant globex: added" in text
    assert gw.tenants.keys == {"sk-globex": "globex"}
    assert reload_gateway(gw, new, new) == []


def test_a_failed_reload_changes_nothing(tmp_path: Path) -> None:
    old = load_config(DATA / "gateway_full.toml")
    gw = build_gateway(old)
    before = (gw.router.policy, gw.router.strategy, gw.router.clearance_of("eu-west-1"))
    # A valid change (strategy) next to an invalid one (a NaN weight): all or nothing.
    path = tmp_path / "reload.toml"
    path.write_text('[gateway]\nstrategy = "round-robin"\n[policy]\nhealth = nan\n')
    with pytest.raises(ConfigError, match=r"policy\.health\.weight: .*nan"):
        reload_gateway(gw, old, load_config(path))
    assert (gw.router.policy, gw.router.strategy, gw.router.clearance_of("eu-west-1")) == before


def test_worker_config_needs_its_required_keys_and_takes_overrides() -> None:
    cfg = loads_config('[worker]\nnode = "n1"\nregion = "r1"\n', source="w.toml")
    with pytest.raises(ConfigError, match=r"w\.toml: worker\.gateways: missing"):
        worker_config(cfg)
    w = worker_config(
        cfg, gateways=["tcp://127.0.0.1:5555"], models=["m"], capabilities=["generate"], cost=None
    )
    assert (w.node, w.region, w.cost) == ("n1", "r1", 1.0)
    with pytest.raises(ConfigError, match=r"worker\.cost: .*-3"):
        worker_config(
            cfg, gateways=["tcp://127.0.0.1:5555"], models=["m"], capabilities=["g"], cost=-3
        )


def test_durations_are_floats_and_nan_never_passes() -> None:
    cfg = loads_config("[breaker]\nopen_timeout = 2\n[health]\nheartbeat_interval = 1")
    assert isinstance(cfg.breaker.open_timeout, float) and cfg.breaker.open_timeout == 2.0
    assert not math.isnan(cfg.health.heartbeat_interval)
