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
    [http]         the OpenAI-compatible front door: listen, max_body_bytes, idle_timeout
    [aliases.NAME] models: the catalog models a public model name tries, in order
    [models.NAME]  context_window: a catalog model's context window in tokens (the
                   alias fallback moves a too-long request to a larger one)
    [worker]       one worker's settings (gateways, node, region, models, …)
    [worker.options]  its backend's options
    [trust]        key (the gateway's CURVE secret key file), trusted (the directory
                   of trusted worker public keys), clients and operators (the
                   directories of ingress client and dashboard keys), audit_log
                   (a file); paths relative to the file
    [trust.grants.NAME]  per worker key NAME (trusted/NAME.key): nodes, region,
                   gpu, min_cost, max_cost — what that key may announce
    [tenants.NAME] per tenant: api_keys (HTTP bearer keys), max_concurrent,
                   requests_per_s, request_burst, tokens_per_s, token_burst,
                   weight; [tenants.default] for tenants without a table

:func:`load_config` reads and checks everything and returns a
:class:`FedgateConfig`; nothing is bound or started until every key passed. An
unknown table or key, or a bad value, raises :class:`ConfigError` naming the
key by its dotted path and the value::

    policy.health.wieght: unknown key; expected one of weight
    breaker.open_timeout: expected seconds in [0.001, 86400], got -1.0
    gateway.bind[1]: expected a ZeroMQ endpoint like 'tcp://127.0.0.1:5555' (…), got 'tcp://h:99999'

Each value is checked by the rule its dataclass field declares
(:mod:`fedgate.validation`): the file, a flag and ``GatewayConfig(…)`` in
Python accept exactly the same values, and every number has real bounds, so
a file that passes ``fedgate gateway --check`` is one the gateway starts with.

Command-line flags override the file: :func:`apply_overrides` sets dotted keys
in the parsed TOML data before it is checked, so a flag's value passes the same
checks (its error names the flag). What a config does to a running gateway (build it, reload it) is
:mod:`fedgate.deploy`'s.

``[policy]`` overlays a preset: ``preset = "enterprise_default"`` (the
default: Health 2, Latency, Privacy, Locality, Cost 1) or ``"none"`` (start
empty); each policy named replaces the preset's fields it sets, and a weight
of 0 switches a policy off. ``retry_delay`` may be 0 (retry at once); every
other duration must be > 0, and none may exceed a day.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fedgate.federation.breaker import BreakerConfig
from fedgate.federation.health import HealthConfig
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
from fedgate.validation import (
    NON_EMPTY,
    BindEndpoint,
    BindEndpoints,
    InvalidParameterError,
    NonEmpty,
    Port,
    validate,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from fedgate.gateway import GatewayConfig
    from fedgate.gateway.config import HttpConfig
    from fedgate.gateway.models import ModelTable
    from fedgate.gateway.tenants import Tenants
    from fedgate.gateway.trust import Trust
    from fedgate.worker.process import WorkerConfig

__all__ = [
    "DEFAULT_BIND",
    "TABLES",
    "ConfigError",
    "FedgateConfig",
    "apply_overrides",
    "load_config",
    "loads_config",
    "parse_config",
    "to_toml",
    "worker_config",
]

DEFAULT_BIND = "tcp://127.0.0.1:5555"
"""Where a gateway binds when neither the file nor ``--bind`` says."""

TABLES = (
    "gateway",
    "retry",
    "regions",
    "policy",
    "breaker",
    "health",
    "http",
    "aliases",
    "models",
    "worker",
    "trust",
    "tenants",
)
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
_WORKER_LISTS = ("gateways", "models", "capabilities")
_WORKER_PATHS = {"backend_options": "worker.options"}  # the others: worker.<field>
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
#
# Every value is checked by the rule its field declares (fedgate.validation);
# an InvalidParameterError says which field (and list item) failed, and the
# tables below know which dotted key each field was read from.


def _typename(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, got {_typename(value)} {value!r}")
    return value


def _unknown(key: str, allowed: Sequence[str]) -> ConfigError:
    return ConfigError(key, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _only(where: str, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Raise for the first key of ``table`` (at ``where``) that is not in ``allowed``."""
    for key in table:
        if key not in allowed:
            raise _unknown(f"{where}.{key}", allowed)


def _at(path: str, exc: InvalidParameterError) -> ConfigError:
    return ConfigError(path if exc.index is None else f"{path}[{exc.index}]", exc.reason)


def _build(cls: Any, paths: Mapping[str, str], values: Mapping[str, Any], table: str) -> Any:
    """``cls(**values)``; a field's error names the key it was read from (``paths[field]``)."""
    try:
        return cls(**values)
    except InvalidParameterError as exc:
        raise _at(paths.get(exc.field, f"{table}.{exc.field}"), exc) from None


# ----------------------------------------------------------------- the config


def _default_gateway_config() -> GatewayConfig:
    from fedgate.gateway import GatewayConfig

    return GatewayConfig()


def _default_model_table() -> ModelTable:
    from fedgate.gateway.models import ModelTable

    return ModelTable()


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
    http : HttpConfig or None
        The OpenAI-compatible HTTP front door (None: not served).
    models : ModelTable
        ``[aliases.*]`` and ``[models.*]``: public model names with their
        fallbacks, and the catalog models' context windows.
    worker : mapping
        The ``[worker]`` keys given (checked), for :func:`worker_config`.
    trust : Trust or None
        ``[trust]``: CURVE on the worker link and the worker keys' grants
        (None: no authentication, and the gateway binds loopback only).
    tenants : Tenants or None
        ``[tenants]``: API keys, quotas and fair-share weights per tenant
        (None: no API keys, no quotas, every tenant weight 1).
    source : str or None
        The file it was read from.
    """

    binds: BindEndpoints = (DEFAULT_BIND,)
    telemetry: BindEndpoint | None = DEFAULT_ENDPOINT
    ingress: BindEndpoint | None = None
    prometheus_port: Port | None = None
    strategy: str = "least-latency"
    origin: Annotated[RegionId, NON_EMPTY] | None = None
    gateway_id: NonEmpty | None = None
    gateway: GatewayConfig = field(default_factory=_default_gateway_config)
    regions: tuple[Region, ...] = ()
    policy: CompositePolicy = field(default_factory=CompositePolicy.enterprise_default)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    http: HttpConfig | None = None
    models: ModelTable = field(default_factory=_default_model_table)
    worker: Mapping[str, Any] = field(default_factory=dict)
    trust: Trust | None = None
    tenants: Tenants | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        validate(self)

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
        if self.http is not None:
            out["http"] = {f.name: getattr(self.http, f.name) for f in fields(self.http)}
        if self.models.aliases:
            out["aliases"] = {a.name: {"models": list(a.models)} for a in self.models.aliases}
        if self.models.models:
            out["models"] = {
                m.name: {} if m.context_window is None else {"context_window": m.context_window}
                for m in self.models.models
            }
        if self.worker:
            worker = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.worker.items()}
            if "options" in worker:
                worker["options"] = dict(worker["options"])
            out["worker"] = worker
        if self.trust is not None:
            out["trust"] = {
                "key": self.trust.key,
                "trusted": self.trust.workers,
                "grants": {
                    name: {
                        "nodes": list(g.nodes), "region": g.region, "gpu": g.gpu,
                        "min_cost": g.min_cost, "max_cost": g.max_cost,
                    }
                    for name, g in self.trust.grants.items()
                },
            }
            for key in ("clients", "operators", "audit_log"):
                value = getattr(self.trust, key)
                if value is not None:
                    out["trust"][key] = value
        if self.tenants is not None:
            out["tenants"] = {
                name: {
                    f.name: (list(v) if isinstance(v, tuple) else v)
                    for f in fields(lim)
                    if (v := getattr(lim, f.name)) is not None
                }
                for name, lim in self.tenants.tenants.items()
            }
        return out


# FedgateConfig field → the [gateway] key it is read from.
_OWN_PATHS = {
    "binds": "gateway.bind",
    "telemetry": "gateway.telemetry",
    "ingress": "gateway.ingress",
    "prometheus_port": "gateway.prometheus_port",
    "origin": "gateway.origin",
    "gateway_id": "gateway.id",
}
_OWN_FIELDS = {path.split(".")[1]: name for name, path in _OWN_PATHS.items()}


def _gateway_table(
    data: Any, out: dict[str, Any], gw: dict[str, Any], paths: dict[str, str]
) -> None:
    from fedgate.gateway import GatewayConfig
    from fedgate.routing.router import STRATEGIES

    table = _table("gateway", data)
    allowed = [*_GATEWAY_OWN, *(f.name for f in fields(GatewayConfig))]
    for key, value in table.items():
        path = f"gateway.{key}"
        if key not in allowed:
            raise _unknown(path, allowed)
        if key == "strategy":
            if value not in STRATEGIES:
                raise ConfigError(path, f"expected one of {', '.join(STRATEGIES)}, got {value!r}")
            out["strategy"] = value
        elif key == "bind":
            out["binds"] = [value] if isinstance(value, str) else value
        elif key == "telemetry" and value is False:
            out["telemetry"] = None
        elif key == "telemetry" and value is True:
            raise ConfigError(path, f"expected an endpoint or false, got {value!r}")
        elif key in _OWN_FIELDS:
            out[_OWN_FIELDS[key]] = value
        else:
            gw[key] = value
            paths[key] = path


def _retry_table(data: Any, gw: dict[str, Any], paths: dict[str, str]) -> None:
    table = _table("retry", data)
    for key, value in table.items():
        path = f"retry.{key}"
        name = _RETRY_FIELDS.get(key)
        if name is None:
            raise _unknown(path, list(_RETRY_FIELDS))
        if name in gw:
            raise ConfigError(
                path, f"also set as {paths[name]}; expected it in one place, got both"
            )
        gw[name] = value
        paths[name] = path


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
        _only(where, table, _REGION_KEYS)
        if "id" not in table:
            raise ConfigError(f"{where}.id", "missing; every [[regions]] entry needs an id")
        if isinstance(table.get("clearance"), int):
            # The dataclass takes a level's number; a file spells the name.
            names = ", ".join(m.name for m in PrivacyLevel)
            raw = table["clearance"]
            raise ConfigError(
                f"{where}.clearance", f"expected one of {names}, got {_typename(raw)} {raw!r}"
            )
        region = _build(Region, {k: f"{where}.{k}" for k in table}, table, where)
        if region.id in seen:
            raise ConfigError(
                f"{where}.id",
                f"expected distinct region ids, got {region.id!r} again "
                f"(regions[{seen[region.id]}])",
            )
        seen[region.id] = i
        regions.append(region)
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
        for name in given:
            if name not in own:
                raise _unknown(f"{path}.{name}", own)
        merged[key] = {**merged.get(key, {}), **given}
    built = [
        _build(_POLICY_KINDS[key], {f: f"policy.{key}.{f}" for f in given}, given, f"policy.{key}")
        for key, given in merged.items()
    ]
    composite = CompositePolicy(built)
    try:
        composite.validate()
    except ValueError as exc:
        # Every policy is valid on its own: what is left is the rule across them.
        raise ConfigError("policy", str(exc)) from None
    return composite


def _simple_table(name: str, cls: Any, data: Any) -> Any:
    table = _table(name, data)
    _only(name, table, [f.name for f in fields(cls)])
    return _build(cls, {k: f"{name}.{k}" for k in table}, table, name)


def _trust_table(data: Any, source: str | None) -> Trust:
    from fedgate.gateway.trust import Trust, WorkerGrant

    table = _table("trust", data)
    allowed = ["key", "trusted", "grants", "clients", "operators", "audit_log"]
    _only("trust", table, allowed)
    for key in ("key", "trusted"):
        if key not in table:
            raise ConfigError(f"trust.{key}", "missing; [trust] needs key and trusted")
    base = Path(source).parent if source else Path.cwd()

    def path(key: str) -> str:
        value = table[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"trust.{key}", f"expected a file path, got {value!r}")
        return str(base / value)

    grants = {}
    for name, grant in _table("trust.grants", table.get("grants", {})).items():
        where = f"trust.grants.{name}"
        row = dict(_table(where, grant))
        known = [f.name for f in fields(WorkerGrant)]
        _only(where, row, known)
        if "nodes" in row:
            row["nodes"] = _listed(row["nodes"])
        for key in ("nodes", "region"):
            if key not in row:
                raise ConfigError(f"{where}.{key}", "missing; a grant names nodes and region")
        try:
            grants[name] = _build(WorkerGrant, {k: f"{where}.{k}" for k in known}, row, where)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
    key, trusted = path("key"), path("trusted")
    extra = {k: path(k) for k in ("clients", "operators", "audit_log") if k in table}
    try:
        return Trust(key=key, workers=trusted, grants=grants, **extra)
    except ValueError as exc:
        where, _, why = str(exc).partition(": ")
        raise ConfigError(f"trust.{where}", why) from None


def _model_tables(aliases: Any, models: Any) -> ModelTable:
    """``[aliases.NAME] models = [...]`` and ``[models.NAME] context_window = N``."""
    from fedgate.gateway.models import Alias, ModelSpec, ModelTable

    rows: list[Alias] = []
    for name, row in _table("aliases", aliases).items():
        where = f"aliases.{name}"
        table = _table(where, row)
        _only(where, table, ["models"])
        if "models" not in table:
            raise ConfigError(f"{where}.models", "missing; an alias lists its catalog models")
        values = {"name": name, "models": _listed(table["models"])}
        rows.append(_build(Alias, {"name": where, "models": f"{where}.models"}, values, where))
    specs: list[ModelSpec] = []
    for name, row in _table("models", models).items():
        where = f"models.{name}"
        table = _table(where, row)
        _only(where, table, ["context_window"])
        paths = {"name": where, "context_window": f"{where}.context_window"}
        specs.append(_build(ModelSpec, paths, {"name": name, **table}, where))
    try:
        return ModelTable(tuple(rows), tuple(specs))
    except ValueError as exc:
        where, _, why = str(exc).partition(": ")
        raise ConfigError(where, why) from None


def _tenants_table(data: Any) -> Tenants:
    from fedgate.gateway.tenants import TenantLimits, Tenants

    table = _table("tenants", data)
    known = [f.name for f in fields(TenantLimits)]
    tenants = {}
    for name, row in table.items():
        where = f"tenants.{name}"
        row = dict(_table(where, row))
        _only(where, row, known)
        if "api_keys" in row:
            row["api_keys"] = _listed(row["api_keys"])
        tenants[name] = _build(TenantLimits, {k: f"{where}.{k}" for k in known}, row, where)
    try:
        return Tenants(tenants)
    except ValueError as exc:
        where, _, why = str(exc).partition(": ")
        raise ConfigError(f"tenants.{where}", why) from None


def _listed(value: Any) -> Any:
    # TOML lets a one-item list be a bare string.
    return [value] if isinstance(value, str) else value


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
        else:
            out[key] = _listed(value) if key in _WORKER_LISTS else value
    # Checked by WorkerConfig itself, the required fields the table leaves to flags filled in.
    values = {k: v for k, v in out.items() if k != "options"}
    checked = _build(WorkerConfig, _WORKER_PATHS, {**_WORKER_PLACEHOLDERS, **values}, "worker")
    # Stored normalised (tuples, ``tcp://…:*``) as WorkerConfig holds them.
    out.update({k: getattr(checked, k) for k in values})
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
    gw: dict[str, Any] = {}
    paths: dict[str, str] = {}
    if "gateway" in data:
        _gateway_table(data["gateway"], out, gw, paths)
    if "retry" in data:
        _retry_table(data["retry"], gw, paths)
    out["gateway"] = _build(GatewayConfig, paths, gw, "gateway")
    if "regions" in data:
        out["regions"] = _regions_table(data["regions"])
    if "policy" in data:
        out["policy"] = _policy_table(data["policy"])
    if "breaker" in data:
        out["breaker"] = _simple_table("breaker", BreakerConfig, data["breaker"])
    if "health" in data:
        out["health"] = _simple_table("health", HealthConfig, data["health"])
    if "http" in data:
        from fedgate.gateway.config import HttpConfig

        out["http"] = _simple_table("http", HttpConfig, data["http"])
    if "aliases" in data or "models" in data:
        out["models"] = _model_tables(data.get("aliases", {}), data.get("models", {}))
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
    if "trust" in data:
        out["trust"] = _trust_table(data["trust"], source)
    if "tenants" in data:
        out["tenants"] = _tenants_table(data["tenants"])
    return _build(FedgateConfig, _OWN_PATHS, out, "gateway")


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
    values["backend_options"] = values.pop("options", {})
    try:
        return _build(WorkerConfig, _WORKER_PATHS, values, "worker")
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
