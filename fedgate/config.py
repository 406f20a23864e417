"""TOML configuration of a gateway (and of a worker), validated whole before anything starts.

A file has these tables, all optional (``examples/federation.toml`` documents
every key)::

    [gateway]      bind, telemetry, ingress, prometheus_port, strategy, origin, id,
                   and the GatewayConfig keys (request_timeout, stall_timeout, …)
    [retry]        max_retries, retry_delay, budget_ratio, budget_min
    [[regions]]    id, clearance, zone, cost            (one table per region)
    [policy]       preset, and per policy (health, latency, privacy, locality,
                   cost, gpu) either a weight or a table of its fields
    [breaker]      the BreakerConfig keys
    [health]       the HealthConfig keys
    [worker]       one worker's settings (gateways, node, region, models, …)
    [worker.options]  its backend's options

:func:`load_config` reads and checks everything and returns a
:class:`FedgateConfig`; nothing is bound or started until every key passed. An
unknown table or key, or a bad value, raises :class:`ConfigError` naming the
key by its dotted path and the value::

    policy.health.wieght: unknown key; expected one of weight
    breaker.open_timeout: expected finite seconds > 0, got -1.0
    regions[1].clearance: expected one of PUBLIC, INTERNAL, CONFIDENTIAL, RESTRICTED, got 'SECRET'

Command-line flags override the file: :func:`apply_overrides` sets dotted keys
in the parsed TOML data before it is checked, so a flag's value passes the same
checks (its error names the flag). :func:`build_gateway` turns a config into a
:class:`~fedgate.gateway.gateway.Gateway`; :func:`reload_gateway` applies a new config
to a running one (policy, strategy, origin, region clearances) all or nothing.

``[policy]`` overlays a preset: ``preset = "enterprise_default"`` (the
default: Health 2, Latency, Privacy, Locality, Cost 1) or ``"none"`` (start
empty); each policy named replaces the preset's fields it sets, and a weight
of 0 switches a policy off. ``retry_delay`` may be 0 (retry at once); every
other duration must be finite and > 0.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedgate.federation.breaker import BreakerConfig, CircuitBreaker
from fedgate.federation.health import HealthChecker, HealthConfig
from fedgate.federation.policy import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    Policy,
    PrivacyPolicy,
)
from fedgate.telemetry import DEFAULT_ENDPOINT
from fedgate.types import PrivacyLevel, Region, RegionId

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from fedgate.gateway import Gateway, GatewayConfig
    from fedgate.worker.process import WorkerConfig

__all__ = [
    "DEFAULT_BIND",
    "TABLES",
    "ConfigError",
    "FedgateConfig",
    "apply_overrides",
    "build_gateway",
    "load_config",
    "loads_config",
    "parse_config",
    "reload_gateway",
    "to_toml",
    "worker_config",
]

DEFAULT_BIND = "tcp://127.0.0.1:5555"
"""Where a gateway binds when neither the file nor ``--bind`` says."""

TABLES = ("gateway", "retry", "regions", "policy", "breaker", "health", "worker")
"""The top-level tables a configuration file may have."""

_POLICY_KINDS: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (HealthPolicy, LatencyPolicy, PrivacyPolicy, LocalityPolicy, CostPolicy, GpuPolicy)
}
_PRESETS = ("enterprise_default", "none")

# [retry] key → GatewayConfig field. The same fields may be set in [gateway]
# under their own names, but not in both places.
_RETRY_FIELDS = {
    "max_retries": "max_retries",
    "retry_delay": "retry_delay",
    "budget_ratio": "retry_budget_ratio",
    "budget_min": "retry_budget_min",
}
_GATEWAY_OWN = ("bind", "telemetry", "ingress", "prometheus_port", "strategy", "origin", "id")
_REGION_KEYS = ("id", "clearance", "zone", "cost")
_WORKER_REQUIRED = ("gateways", "node", "region", "models", "capabilities")
# Placeholders for the required WorkerConfig fields a [worker] table leaves to
# flags: they let the given keys be checked on their own.
_WORKER_PLACEHOLDERS: dict[str, Any] = {
    "gateways": [DEFAULT_BIND],
    "node": "node",
    "region": "region",
    "models": ["model"],
    "capabilities": ["generate"],
}


class ConfigError(ValueError):
    """A configuration is invalid; the message starts with the offending key's dotted path.

    Attributes
    ----------
    key : str or None
        Dotted path of the key (``"policy.health.weight"``, ``"regions[1].id"``),
        None for an error of the whole file (unreadable, not TOML).
    source : str or None
        The file, when one was read.
    """

    def __init__(self, key: str | None, message: str, *, source: str | None = None) -> None:
        self.key = key
        self.reason = message
        self.source = source
        text = f"{key}: {message}" if key else message
        super().__init__(f"{source}: {text}" if source else text)

    def with_source(self, source: str | None) -> ConfigError:
        """The same error, its message prefixed with ``source``."""
        return ConfigError(self.key, self.reason, source=source)


# ----------------------------------------------------------------- value checks


def _typename(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(key: str, value: Any, *, zero: bool = False) -> float:
    if not _is_number(value):
        raise ConfigError(key, f"expected seconds as a number, got {_typename(value)} {value!r}")
    ok = math.isfinite(value) and (value >= 0 if zero else value > 0)
    if not ok:
        bound = ">= 0" if zero else "> 0"
        raise ConfigError(key, f"expected finite seconds {bound}, got {value!r}")
    return float(value)


def _integer(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_typename(value)} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(key, f"expected an integer {bound}, got {value!r}")
    return value


def _finite(key: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
    if not _is_number(value):
        raise ConfigError(key, f"expected a number, got {_typename(value)} {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        bound = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(key, f"expected a finite number {bound}, got {value!r}")
    return float(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a non-empty string, got {_typename(value)} {value!r}")
    return value


def _endpoint(key: str, value: Any) -> str:
    text = _text(key, value)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise ConfigError(
            key, f"expected a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got {value!r}"
        )
    # ZeroMQ spells "any free port" as *; everyone else says 0.
    if scheme == "tcp" and text.endswith(":0"):
        text = text[:-2] + ":*"
    return text


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, got {_typename(value)} {value!r}")
    return value


def _unknown(key: str, allowed: Sequence[str]) -> ConfigError:
    return ConfigError(key, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _reason(exc: BaseException) -> str:
    """``"GatewayConfig.x: expected …"`` / ``"x: expected …"`` → ``"expected …"``."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if sep and " " not in head:
        return rest
    return text


def _dataclass(
    cls: Any,
    table: str,
    given: dict[str, tuple[str, Any]],
    base: Mapping[str, Any] | None = None,
) -> Any:
    """Build ``cls`` from ``{field: (dotted path, value)}``, naming the key a failure is about.

    ``base`` holds values of required fields the table leaves out, so that
    the given ones can be checked on their own.
    """
    values = {**(base or {}), **{name: value for name, (_, value) in given.items()}}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        # The configs' messages start with the field ("BreakerConfig.open_timeout: …",
        # "cost: …"), cross-field rules included, which name the field they reject.
        text = str(exc)
        for name, (path, _) in given.items():
            if text.startswith((f"{cls.__name__}.{name}:", f"{name}:")):
                raise ConfigError(path, _reason(exc)) from None
        # Otherwise: the key that fails on its own.
        for name, (path, value) in given.items():
            try:
                cls(**{**(base or {}), name: value})
            except (TypeError, ValueError) as alone:
                raise ConfigError(path, _reason(alone)) from None
        raise ConfigError(table, text) from None


# ----------------------------------------------------------------- the config


def _default_gateway_config() -> GatewayConfig:
    from fedgate.gateway import GatewayConfig

    return GatewayConfig()


@dataclass(frozen=True)
class FedgateConfig:
    """A validated configuration (see the module docstring for the file format).

    Parameters
    ----------
    binds : tuple of str
        Endpoints the gateway's ROUTER binds (workers connect here).
    telemetry : str or None
        Telemetry endpoint for ``fedgate top`` (None: not served).
    ingress : str or None
        Endpoint where ``fedgate gateway`` takes requests from clients
        (None: not served; the gateway is then used as a library).
    prometheus_port : int or None
        Serve Prometheus metrics on this port (0: any free one).
    strategy : str
        Load-balancing strategy (:data:`fedgate.routing.router.STRATEGIES`).
    origin : RegionId or None
        The gateway's own region, for the locality policy.
    gateway_id : str or None
        The gateway's id (default: generated).
    gateway : GatewayConfig
        Retries, timeouts and queue bounds.
    regions : tuple of Region
        Region clearances and costs (a region not listed is INTERNAL).
    policy : CompositePolicy
        Routing policy.
    breaker : BreakerConfig
        Circuit-breaker settings.
    health : HealthConfig
        Health and heartbeat settings.
    worker : mapping
        The ``[worker]`` keys given (checked), for :func:`worker_config`.
    source : str or None
        The file it was read from.
    """

    binds: tuple[str, ...] = (DEFAULT_BIND,)
    telemetry: str | None = DEFAULT_ENDPOINT
    ingress: str | None = None
    prometheus_port: int | None = None
    strategy: str = "least-latency"
    origin: RegionId | None = None
    gateway_id: str | None = None
    gateway: GatewayConfig = field(default_factory=_default_gateway_config)
    regions: tuple[Region, ...] = ()
    policy: CompositePolicy = field(default_factory=CompositePolicy.enterprise_default)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    worker: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def region(self, region_id: str) -> Region | None:
        """The configured region ``region_id``, if any."""
        for r in self.regions:
            if r.id == region_id:
                return r
        return None

    def to_mapping(self) -> dict[str, Any]:
        """The configuration as TOML-ready data; ``parse_config`` of it gives it back."""
        gw: dict[str, Any] = {"bind": list(self.binds)}
        gw["telemetry"] = self.telemetry if self.telemetry is not None else False
        if self.ingress is not None:
            gw["ingress"] = self.ingress
        if self.prometheus_port is not None:
            gw["prometheus_port"] = self.prometheus_port
        gw["strategy"] = self.strategy
        if self.origin is not None:
            gw["origin"] = self.origin
        if self.gateway_id is not None:
            gw["id"] = self.gateway_id
        retry_fields = set(_RETRY_FIELDS.values())
        for f in fields(self.gateway):
            value = getattr(self.gateway, f.name)
            if f.name not in retry_fields and value is not None:
                gw[f.name] = value
        retry = {key: getattr(self.gateway, name) for key, name in _RETRY_FIELDS.items()}
        regions = []
        for r in self.regions:
            row: dict[str, Any] = {"id": r.id, "clearance": r.clearance.name}
            if r.zone is not None:
                row["zone"] = r.zone
            if r.cost is not None:
                row["cost"] = r.cost
            regions.append(row)
        policy: dict[str, Any] = {"preset": "none"}
        policy.update(self.policy.to_mapping())
        out: dict[str, Any] = {"gateway": gw, "retry": retry}
        if regions:
            out["regions"] = regions
        out["policy"] = policy
        out["breaker"] = {f.name: getattr(self.breaker, f.name) for f in fields(self.breaker)}
        out["health"] = {f.name: getattr(self.health, f.name) for f in fields(self.health)}
        if self.worker:
            worker = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.worker.items()}
            if "options" in worker:
                worker["options"] = dict(worker["options"])
            out["worker"] = worker
        return out


def _gateway_table(
    data: Mapping[str, Any], out: dict[str, Any], gw_fields: dict[str, tuple[str, Any]]
) -> None:
    from fedgate.gateway import GatewayConfig
    from fedgate.routing.router import STRATEGIES

    table = _table("gateway", data)
    known = [f.name for f in fields(GatewayConfig)]
    allowed = [*_GATEWAY_OWN, *known]
    for key, value in table.items():
        path = f"gateway.{key}"
        if key not in allowed:
            raise _unknown(path, allowed)
        if key == "bind":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items:
                raise ConfigError(
                    path, f"expected an endpoint or a non-empty array of them, got {value!r}"
                )
            binds = [_endpoint(f"{path}[{i}]", v) for i, v in enumerate(items)]
            for i, b in enumerate(binds):
                if b in binds[:i]:
                    raise ConfigError(
                        f"{path}[{i}]", f"expected distinct endpoints, got {b!r} twice"
                    )
            out["binds"] = tuple(binds)
        elif key == "telemetry":
            if value is False:
                out["telemetry"] = None
            else:
                if value is True:
                    raise ConfigError(path, f"expected an endpoint or false, got {value!r}")
                out["telemetry"] = _endpoint(path, value)
        elif key == "ingress":
            out["ingress"] = _endpoint(path, value)
        elif key == "prometheus_port":
            out["prometheus_port"] = _integer(path, value, 0, 65535)
        elif key == "strategy":
            if value not in STRATEGIES:
                raise ConfigError(path, f"expected one of {', '.join(STRATEGIES)}, got {value!r}")
            out["strategy"] = value
        elif key == "origin":
            out["origin"] = RegionId(_text(path, value))
        elif key == "id":
            out["gateway_id"] = _text(path, value)
        else:
            gw_fields[key] = (path, _gateway_value(path, key, value))


def _gateway_value(path: str, name: str, value: Any) -> Any:
    """Type and range checks of one GatewayConfig field (the dataclass checks the rest)."""
    if name == "retry_delay":
        return _seconds(path, value, zero=True)
    if name in ("request_timeout", "stall_timeout", "monitor_interval"):
        return _seconds(path, value)
    if name == "retry_budget_ratio":
        return _finite(path, value, high=1.0)
    return _integer(path, value, 0)


def _retry_table(data: Any, gw_fields: dict[str, tuple[str, Any]]) -> None:
    table = _table("retry", data)
    for key, value in table.items():
        path = f"retry.{key}"
        name = _RETRY_FIELDS.get(key)
        if name is None:
            raise _unknown(path, list(_RETRY_FIELDS))
        if name in gw_fields:
            raise ConfigError(
                path, f"also set as {gw_fields[name][0]}; expected it in one place, got both"
            )
        gw_fields[name] = (path, _gateway_value(path, name, value))


def _regions_table(data: Any) -> tuple[Region, ...]:
    if not isinstance(data, list):
        raise ConfigError(
            "regions", f"expected an array of tables ([[regions]]), got {_typename(data)} {data!r}"
        )
    regions: list[Region] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(data):
        where = f"regions[{i}]"
        table = _table(where, row)
        for key in table:
            if key not in _REGION_KEYS:
                raise _unknown(f"{where}.{key}", _REGION_KEYS)
        if "id" not in table:
            raise ConfigError(f"{where}.id", "missing; every [[regions]] entry needs an id")
        rid = _text(f"{where}.id", table["id"])
        if rid in seen:
            raise ConfigError(
                f"{where}.id",
                f"expected distinct region ids, got {rid!r} again (regions[{seen[rid]}])",
            )
        seen[rid] = i
        clearance = PrivacyLevel.INTERNAL
        if "clearance" in table:
            raw = table["clearance"]
            names = ", ".join(m.name for m in PrivacyLevel)
            if not isinstance(raw, str):
                raise ConfigError(
                    f"{where}.clearance", f"expected one of {names}, got {_typename(raw)} {raw!r}"
                )
            try:
                clearance = PrivacyLevel.parse(raw)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}.clearance", f"expected one of {names}, got {raw!r}"
                ) from None
        zone = _text(f"{where}.zone", table["zone"]) if "zone" in table else None
        cost = _finite(f"{where}.cost", table["cost"]) if "cost" in table else None
        regions.append(Region(RegionId(rid), clearance, zone, cost))
    return tuple(regions)


def _policy_table(data: Any) -> CompositePolicy:
    table = _table("policy", data)
    preset = table.get("preset", "enterprise_default")
    if preset not in _PRESETS:
        raise ConfigError("policy.preset", f"expected one of {', '.join(_PRESETS)}, got {preset!r}")
    base = CompositePolicy.enterprise_default() if preset == "enterprise_default" else None
    merged: dict[str, Any] = base.to_mapping() if base is not None else {}
    allowed = ["preset", *_POLICY_KINDS]
    for key, value in table.items():
        if key == "preset":
            continue
        path = f"policy.{key}"
        kind = _POLICY_KINDS.get(key)
        if kind is None:
            raise _unknown(path, allowed)
        own = [f.name for f in fields(kind)]
        given = dict(_table(path, value)) if isinstance(value, Mapping) else {"weight": value}
        for name, v in given.items():
            if name not in own:
                raise _unknown(f"{path}.{name}", own)
            where = f"{path}.{name}"
            if name == "weight":
                _finite(where, v)
            elif name == "origin":
                _text(where, v)
            else:  # latency_scale, cost_scale
                if not _is_number(v) or not (math.isfinite(v) and v > 0):
                    raise ConfigError(where, f"expected a finite number > 0, got {v!r}")
        merged[key] = {**merged.get(key, {}), **given}
    try:
        return CompositePolicy.from_mapping(merged)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        # "policies.latency: LatencyPolicy.latency_scale: expected …"
        head, _, rest = text.partition(": ")
        if head.startswith("policies."):
            name = head.split(".", 1)[1]
            owner, sep, tail = rest.partition(": ")
            field_name = owner.rsplit(".", 1)[-1] if sep else ""
            path = f"policy.{name}.{field_name}" if field_name else f"policy.{name}"
            raise ConfigError(path, tail if sep else rest) from None
        raise ConfigError("policy", _reason(exc)) from None


def _simple_table(name: str, cls: Any, data: Any) -> Any:
    table = _table(name, data)
    allowed = [f.name for f in fields(cls)]
    given: dict[str, tuple[str, Any]] = {}
    for key, value in table.items():
        path = f"{name}.{key}"
        if key not in allowed:
            raise _unknown(path, allowed)
        default = next(f.default for f in fields(cls) if f.name == key)
        # Every float field of these configs is a duration, every other an int >= 1.
        value = _seconds(path, value) if isinstance(default, float) else _integer(path, value, 1)
        given[key] = (path, value)
    return _dataclass(cls, name, given)


def _worker_table(data: Any) -> dict[str, Any]:
    from fedgate.worker.process import WorkerConfig

    table = _table("worker", data)
    allowed = [f.name for f in fields(WorkerConfig) if f.name != "backend_options"] + ["options"]
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"worker.{key}"
        if key not in allowed:
            raise _unknown(path, allowed)
        if key == "options":
            out[key] = dict(_table(path, value))
            continue
        if key in ("gateways", "models", "capabilities"):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ConfigError(path, f"expected an array of strings, got {value!r}")
            value = (
                tuple(_endpoint(f"{path}[{i}]", v) for i, v in enumerate(items))
                if (key == "gateways")
                else tuple(items)
            )
        out[key] = value
    # Each key checked by WorkerConfig itself, the required ones it lacks filled in.
    given = {k: (f"worker.{k}", v) for k, v in out.items() if k != "options"}
    _dataclass(WorkerConfig, "worker", given, base=_WORKER_PLACEHOLDERS)
    return out


def parse_config(
    data: Mapping[str, Any], *, source: str | None = None, flags: Mapping[str, str] | None = None
) -> FedgateConfig:
    """Check parsed TOML data and build a :class:`FedgateConfig`.

    Parameters
    ----------
    data : mapping
        The document (``tomllib.loads`` output, or a dict of the same shape).
    source : str, optional
        Where it came from, prefixed to error messages.
    flags : mapping of str to str, optional
        Dotted key → command-line flag that set it, so an error about a value
        that came from a flag names the flag.

    Raises
    ------
    ConfigError
        The first invalid table, key or value, named by its dotted path.
    """
    try:
        return _parse(data, source)
    except ConfigError as exc:
        flag = (flags or {}).get(exc.key or "")
        if flag is not None:
            exc = ConfigError(exc.key, f"{exc.reason} (set by {flag})")
        raise exc.with_source(source) from None


def _parse(data: Mapping[str, Any], source: str | None) -> FedgateConfig:
    from fedgate.gateway import GatewayConfig

    if not isinstance(data, Mapping):
        raise ConfigError(None, f"expected a table of settings, got {_typename(data)}")
    for key, value in data.items():
        if key not in TABLES:
            what = "table" if isinstance(value, (Mapping, list)) else "key"
            raise ConfigError(
                key, f"unknown {what}; expected one of the tables {', '.join(TABLES)}"
            )
    out: dict[str, Any] = {"source": source}
    gw_fields: dict[str, tuple[str, Any]] = {}
    if "gateway" in data:
        _gateway_table(data["gateway"], out, gw_fields)
    if "retry" in data:
        _retry_table(data["retry"], gw_fields)
    out["gateway"] = _dataclass(GatewayConfig, "gateway", gw_fields)
    if "regions" in data:
        out["regions"] = _regions_table(data["regions"])
    if "policy" in data:
        out["policy"] = _policy_table(data["policy"])
    if "breaker" in data:
        out["breaker"] = _simple_table("breaker", BreakerConfig, data["breaker"])
    if "health" in data:
        out["health"] = _simple_table("health", HealthConfig, data["health"])
    if "worker" in data:
        out["worker"] = _worker_table(data["worker"])
        beat = out["worker"].get("heartbeat_interval")
        health: HealthConfig = out.get("health", HealthConfig())
        if beat is not None and "health" in data and beat >= health.liveness_timeout:
            raise ConfigError(
                "worker.heartbeat_interval",
                f"expected < health.heartbeat_interval × health.heartbeat_liveness "
                f"({health.liveness_timeout:g}s) or the gateway declares the worker dead "
                f"between heartbeats, got {beat!r}",
            )
    return FedgateConfig(**out)


def loads_config(
    text: str,
    *,
    source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> FedgateConfig:
    """Parse and check TOML ``text`` (see :func:`load_config`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, f"invalid TOML: {exc}", source=source) from None
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_config(data, source=source, flags=flags)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> FedgateConfig:
    """Read, check and return the configuration in ``path``.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file; None gives the defaults (with ``overrides``).
    overrides : mapping, optional
        Dotted keys set over the file's values (see :func:`apply_overrides`).
    flags : mapping, optional
        Dotted key → flag name, for error messages (see :func:`parse_config`).

    Raises
    ------
    ConfigError
        The file cannot be read, is not TOML, or has an invalid table, key or
        value (named by its dotted path).
    """
    if path is None:
        data: dict[str, Any] = {}
        if overrides:
            data = apply_overrides(data, overrides)
        return parse_config(data, flags=flags)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(None, f"cannot read: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(None, f"expected UTF-8 text: {exc}", source=source) from None
    return loads_config(text, source=source, overrides=overrides, flags=flags)


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with dotted keys set, as command-line flags do.

    ``"gateway.strategy"`` sets a key. ``"retry.max_retries"`` also removes
    ``gateway.max_retries`` (and the other way round), so a flag overrides the
    file wherever the file set it. ``"regions.ID"`` sets region ``ID``'s
    clearance, adding the region if the file has none of that id.
    ``"policy.NAME.weight"`` sets a policy's weight, also where the file gave
    the policy as a bare number.
    """
    out: dict[str, Any] = _copy(data)
    retry_twin = {f"retry.{k}": f"gateway.{v}" for k, v in _RETRY_FIELDS.items()}
    retry_twin.update({v: k for k, v in list(retry_twin.items())})
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] == "regions" and len(parts) == 2:
            rows = out.get("regions")
            if not isinstance(rows, list):
                rows = out["regions"] = []
            for row in rows:
                if isinstance(row, dict) and row.get("id") == parts[1]:
                    row["clearance"] = value
                    break
            else:
                rows.append({"id": parts[1], "clearance": value})
            continue
        twin = retry_twin.get(dotted)
        if twin is not None:
            table, key = twin.split(".")
            if isinstance(out.get(table), dict):
                out[table].pop(key, None)
        if parts[0] == "policy" and len(parts) == 3:
            policy = out.get("policy")
            if (
                isinstance(policy, dict)
                and parts[1] in policy
                and not isinstance(policy[parts[1]], dict)
            ):
                policy[parts[1]] = {"weight": policy[parts[1]]}
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def _copy(value: Any) -> Any:
    # Structural: TOML data may hold nan, inf, dates; a JSON round trip would not do.
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# ----------------------------------------------------------------- using it


def build_gateway(cfg: FedgateConfig) -> Gateway:
    """A :class:`~fedgate.gateway.gateway.Gateway` built from ``cfg`` (not started).

    The telemetry endpoint and Prometheus port are not the gateway's: serve
    them with ``TelemetryServer(gateway, cfg.telemetry, cfg.prometheus_port)``.
    """
    from fedgate.gateway import GatewayBuilder

    builder = (
        GatewayBuilder()
        .config(cfg.gateway)
        .health(HealthChecker(cfg.health))
        .circuit_breaker(CircuitBreaker(cfg.breaker))
        .policy(cfg.policy)
        .regions(*cfg.regions)
        .strategy(cfg.strategy)
        .origin(cfg.origin)
    )
    if cfg.gateway_id is not None:
        builder = builder.gateway_id(cfg.gateway_id)
    for endpoint in cfg.binds:
        builder = builder.bind(endpoint)
    return builder.build()


def reload_gateway(gateway: Gateway, current: FedgateConfig, new: FedgateConfig) -> list[str]:
    """Apply ``new`` to a running gateway built from ``current``; what changed, in words.

    Routing settings change in place: the policy, the strategy, the origin and
    region clearances (a region dropped from the file goes back to INTERNAL).
    Settings that need a restart (binds, telemetry, ingress, Prometheus, gateway id,
    GatewayConfig, breaker and health settings) are left as they are and
    reported as such. ``new`` is already fully checked, so applying it cannot
    fail half-way.

    Returns
    -------
    list of str
        One line per change applied or left for a restart.
    """
    notes: list[str] = []
    router = gateway.router
    if new.policy != router.policy:
        router.set_policy(new.policy)
        notes.append("policy: " + _describe_policy(new.policy))
    if new.strategy != router.strategy:
        router.set_strategy(new.strategy)
        notes.append(f"strategy: {new.strategy}")
    if new.origin != current.origin:
        router.set_origin(new.origin)
        notes.append(f"origin: {new.origin or 'none'}")
    new_ids = {r.id for r in new.regions}
    for region in new.regions:
        if current.region(region.id) != region:
            router.set_region(region)
            notes.append(f"region {region.id}: clearance {region.clearance.name}")
    for region in current.regions:
        if region.id not in new_ids:
            router.set_region(Region(region.id))
            notes.append(f"region {region.id}: removed (clearance INTERNAL)")
    for name in ("binds", "telemetry", "ingress", "prometheus_port", "gateway_id", "gateway",
                 "breaker", "health"):  # fmt: skip
        if getattr(new, name) != getattr(current, name):
            notes.append(f"{name}: changed in the file; takes effect after a restart")
    return notes


def _describe_policy(policy: CompositePolicy) -> str:
    return ", ".join(f"{p.name} {p.weight:g}" for p in policy.policies) or "none"


def worker_config(cfg: FedgateConfig, **overrides: Any) -> WorkerConfig:
    """The :class:`~fedgate.worker.process.WorkerConfig` of ``cfg``'s ``[worker]`` table.

    Keyword ``overrides`` (WorkerConfig field names, as flags give them) win
    over the file; ``options`` holds the backend's options.

    Raises
    ------
    ConfigError
        A required key is neither in the file nor given (``worker.node: missing``).
    """
    from fedgate.worker.process import WorkerConfig

    values = {**cfg.worker, **{k: v for k, v in overrides.items() if v is not None}}
    for key in _WORKER_REQUIRED:
        if key not in values:
            raise ConfigError(
                f"worker.{key}", "missing; set it in [worker] or with its flag", source=cfg.source
            )
    options = values.pop("options", {})
    given = {k: (f"worker.{k}", v) for k, v in values.items()}
    given["backend_options"] = ("worker.options", options)
    try:
        return _dataclass(WorkerConfig, "worker", given)
    except ConfigError as exc:
        raise exc.with_source(cfg.source) from None


# ----------------------------------------------------------------- TOML out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"expected a TOML value, got {value!r}")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def to_toml(cfg: FedgateConfig) -> str:
    """``cfg`` as a TOML document (every setting spelled out; ``loads_config`` reads it back)."""
    lines: list[str] = []
    data = cfg.to_mapping()
    for table, body in data.items():
        if isinstance(body, list):
            for row in body:
                lines.append(f"[[{table}]]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in row.items())
                lines.append("")
            continue
        lines.append(f"[{table}]")
        nested = {k: v for k, v in body.items() if isinstance(v, Mapping)}
        lines.extend(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items() if k not in nested
        )
        lines.append("")
        for key, sub in nested.items():
            lines.append(f"[{table}.{_toml_key(key)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sub.items())
            lines.append("")
    return "\n".join(lines)
