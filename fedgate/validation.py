"""What every setting may be: one declared vocabulary for configs, TOML, flags and the wire.

A field says what it accepts once, in its annotation, with a named type of
this module::

    @dataclass(frozen=True, slots=True)
    class GatewayConfig:
        send_hwm: Hwm = 100_000                   # an integer in [1, 10000000]
        request_timeout: Timeout = 30.0           # seconds in (0, 86400]
        stall_timeout: Timeout | None = None      # the same, or None

        def __post_init__(self) -> None:
            validate(self)

and the declaration is used everywhere the value can come from::

    GatewayConfig(send_hwm=…)      validate(self)       InvalidParameterError names the field
    [gateway] send_hwm = …         fedgate.config       ConfigError names gateway.send_hwm
    --max-retries …                argument_type(…)     "argument --max-retries: expected …"
    Request.deadline on the wire   DEADLINE.meta        msgspec checks it on decode, in C

A declaration is ``Annotated[base, Rule]``. Its rule checks a value
(:meth:`Rule.check`), normalises it (``timedelta`` → float seconds, a list →
a tuple, ``tcp://host:0`` → ``tcp://host:*``) and says what it expects in
words, which every error message quotes: ``expected an integer in [1,
10000000], got 3000000000``. Numeric rules also carry the ``msgspec.Meta`` of
their bounds, so the wire structs declare the very same limits.

An error is an :class:`InvalidParameterError` (a ``ValueError``; a wrong
*type* is a :class:`ParameterTypeError`, a ``TypeError`` that is still a
``ValueError``, as scikit-learn's ``InvalidParameterError`` is) whose
attributes say which field, which item of a list and which value failed: the
TOML loader maps ``field`` to the dotted key it read, no message is parsed.

Why not ``msgspec.convert`` of the whole TOML document: the file's shape is
not the dataclasses' (``[retry]`` spells gateway fields differently,
``bind`` is ``binds``, flags override keys), a msgspec error carries its path
only inside its message text, and dataclasses built in Python must be checked
without msgspec in the loop. The bounds themselves are msgspec's ``Meta``.
"""

from __future__ import annotations

import builtins
import dataclasses
import numbers
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType, NoneType, UnionType
from typing import Annotated, Any, Final, TypeAlias

import msgspec

__all__ = [
    "API_KEY",
    "CAPABILITY",
    "CAPABILITY_PATTERN",
    "CONCURRENCY",
    "COST",
    "C_INT_MAX",
    "DAY",
    "DEADLINE",
    "HEARTBEAT",
    "IDENT",
    "MAX_CONCURRENCY",
    "MAX_COST",
    "MAX_DEADLINE",
    "MAX_FRAME_LIMIT",
    "MAX_HEARTBEAT_INTERVAL",
    "MAX_HWM",
    "MAX_ID",
    "MAX_RATE",
    "MAX_REQUEST_ID",
    "MAX_WEIGHT",
    "MIN_FRAME_LIMIT",
    "MIN_INTERVAL",
    "NODE_NAME",
    "NON_EMPTY",
    "ApiKeys",
    "Backoff",
    "BindEndpoint",
    "BindEndpoints",
    "Burst",
    "CapabilityNames",
    "Concurrency",
    "ConnectEndpoint",
    "ConnectEndpoints",
    "Cost",
    "Deadline",
    "Endpoint",
    "Flag",
    "Fraction",
    "FrameBytes",
    "Grace",
    "HeartbeatInterval",
    "Hwm",
    "Ident",
    "InputBytes",
    "Instance",
    "InvalidParameterError",
    "Items",
    "KeywordOptions",
    "Latency",
    "ModelNames",
    "NodeName",
    "NodeNames",
    "NonEmpty",
    "Number",
    "Options",
    "ParameterTypeError",
    "Parsed",
    "Payload",
    "Period",
    "Port",
    "Rate",
    "RequestIdent",
    "Rule",
    "Secrets",
    "ShareWeight",
    "Switch",
    "TenantConcurrency",
    "Text",
    "Timeout",
    "argument_type",
    "count",
    "rule_of",
    "seconds",
    "validate",
]

# ------------------------------------------------------------------ limits

C_INT_MAX: Final = 2**31 - 1
"""The largest C ``int``: what libzmq's integer socket options (high-water marks) take."""

DAY: Final = 86_400.0
"""Longest timeout a setting may ask for: a request or a drain that long is a mistake."""

MAX_DEADLINE: Final = 1e9
"""Largest deadline a Request may carry on the wire, in seconds (and so a request's own)."""

MAX_HEARTBEAT_INTERVAL: Final = 3600.0
"""Longest heartbeat interval a worker may announce on the wire."""

MIN_INTERVAL: Final = 0.001
"""Shortest period of anything that repeats (heartbeats, the gateway's monitor): 1 ms."""

MAX_COST: Final = 1e12
"""Largest cost a node or region may announce."""

MAX_WEIGHT: Final = 1e6
"""Largest routing-policy weight (weights are relative: their sum must stay finite)."""

MAX_CONCURRENCY: Final = 1_000_000
"""Most requests one worker may serve at once."""

MAX_HWM: Final = 10_000_000
"""Largest ZeroMQ high-water mark (messages queued per peer), well inside a C ``int``."""

MAX_RATE: Final = 1e9
"""Largest rate (requests or tokens per second) and bucket size a tenant's quota may name."""

MIN_FRAME_LIMIT: Final = 64
"""Smallest frame limit: every wire message but a large Request, Partial or Final fits."""

MAX_FRAME_LIMIT: Final = C_INT_MAX
"""Largest frame (and input) a peer may be allowed to send: 2 GiB - 1."""


# ------------------------------------------------------------------ errors


class InvalidParameterError(ValueError):
    """A value that does not meet its field's declaration.

    The message is ``"Owner.field: expected …, got …"`` (``field[i]`` for an
    item of a list).

    Attributes
    ----------
    owner, field : str
        The class and the field (``"GatewayConfig"``, ``"send_hwm"``).
    index : int or None
        Which item of a list field failed, None for the field itself.
    value : object
        The offending value (the item, for a list's item).
    reason : str
        The message without ``"Owner.field: "``: ``"expected …, got …"``.
    """

    def __init__(
        self, owner: str, field: str, value: Any, reason: str, index: int | None = None
    ) -> None:
        self.owner = owner
        self.field = field
        self.index = index
        self.value = value
        self.reason = reason
        where = field if index is None else f"{field}[{index}]"
        super().__init__(f"{owner}.{where}: {reason}" if owner else f"{where}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (to another process) with its attributes, not just its message.
        return (type(self), (self.owner, self.field, self.value, self.reason, self.index))


class ParameterTypeError(InvalidParameterError, TypeError):
    """A value of the wrong type (``"30s"`` for seconds, ``True`` for a count)."""


class _Reject(Exception):
    """Raised by a rule: what it expected (or a whole reason), and whether the type was wrong."""

    def __init__(
        self, reason: str, *, wrong_type: bool = False, index: int | None = None, value: Any = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wrong_type = wrong_type
        self.index = index
        self.value = value


def _got(expected: str, value: Any) -> str:
    return f"expected {expected}, got {value!r}"


def _fmt(x: float) -> str:
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e16):
        return str(int(x))
    return repr(float(x))


# ------------------------------------------------------------------ rules


class Rule:
    """What one value may be; subclasses check, normalise and describe it.

    ``check(value)`` returns the value to store (normalised) or raises;
    ``expected`` is the words every message quotes after ``expected``.
    """

    __slots__ = ()

    expected: str = "a value"

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """A command-line string as this rule's value (checked by :meth:`check` after)."""
        return text

    def reject(self, value: Any, *, wrong_type: bool = False) -> _Reject:
        return _Reject(_got(self.expected, value), wrong_type=wrong_type)


class Number(Rule):
    """An integer, a number or a duration within bounds (NaN never passes, nor ±inf).

    ``ge``/``gt`` and ``le`` are the bounds; a duration (``unit="seconds"``)
    also takes a ``timedelta``. :attr:`meta` is the same bounds as
    ``msgspec.Meta``, for the wire structs.
    """

    __slots__ = ("expected", "gt", "high", "integer", "low", "meta", "seconds")

    def __init__(
        self,
        *,
        integer: bool = False,
        seconds: bool = False,
        ge: float | None = None,
        gt: float | None = None,
        le: float,
        what: str | None = None,
    ) -> None:
        if (ge is None) == (gt is None):
            raise TypeError("Number: expected exactly one of ge= and gt=")
        self.integer = integer
        self.seconds = seconds
        self.gt = gt is not None
        low = gt if gt is not None else ge
        assert low is not None
        self.low = float(low)
        self.high = float(le)
        self.meta = msgspec.Meta(gt=gt, le=le) if gt is not None else msgspec.Meta(ge=ge, le=le)
        noun = what or ("an integer" if integer else "seconds" if seconds else "a number")
        self.expected = f"{noun} in {'(' if self.gt else '['}{_fmt(self.low)}, {_fmt(self.high)}]"

    def check(self, value: Any) -> Any:
        raw = value
        if isinstance(value, bool):
            raise self.reject(value, wrong_type=True)
        if self.integer:
            if not isinstance(value, numbers.Integral):
                raise self.reject(value, wrong_type=True)
            value = int(value)
        elif isinstance(value, (float, int)):
            value = float(value)
        elif self.seconds and isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, numbers.Real):
            value = float(value)
        else:
            what = "seconds as a number or timedelta" if self.seconds else self.expected
            raise _Reject(_got(what, value), wrong_type=True)
        # NaN fails both comparisons.
        if not ((value > self.low if self.gt else value >= self.low) and value <= self.high):
            raise self.reject(raw)
        return value

    def parse(self, text: str) -> Any:
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            noun = "an integer" if self.integer else "seconds" if self.seconds else "a number"
            raise _Reject(_got(noun, text), wrong_type=True) from None


class Flag(Rule):
    """``True`` or ``False`` (not 1, not ``"yes"``)."""

    __slots__ = ()
    expected = "true or false"

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise self.reject(value, wrong_type=True)
        return value


class Text(Rule):
    """A string: non-blank, at most ``max_length`` characters, matching ``pattern`` if given.

    ``blank=True`` takes any non-empty string (an id of spaces is still an id).
    ``normalize`` (e.g. ``str.lower``) is applied before the pattern is matched.
    """

    __slots__ = ("blank", "expected", "max_length", "normalize", "pattern")

    def __init__(
        self,
        *,
        max_length: int = 1024,
        pattern: str | None = None,
        what: str | None = None,
        normalize: Callable[[str], str] | None = None,
        blank: bool = False,
    ) -> None:
        self.blank = blank
        self.max_length = max_length
        self.pattern = re.compile(pattern) if pattern is not None else None
        self.normalize = normalize
        self.expected = what or f"a non-empty string of at most {max_length} characters"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise self.reject(value, wrong_type=True)
        text = self.normalize(value) if self.normalize is not None else value
        if not (text if self.blank else text.strip()) or len(text) > self.max_length:
            raise self.reject(value)
        if self.pattern is not None and not self.pattern.match(text):
            raise self.reject(value)
        return text


class Endpoint(Rule):
    """A ZeroMQ endpoint: ``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``.

    The port must be one TCP has (1-65535): ZeroMQ would silently take a
    larger one modulo 65536. A *bind* endpoint may also ask for any free port
    with 0 or ``*`` (stored as ``*``, ZeroMQ's spelling).
    """

    __slots__ = ("bind", "expected")

    _TCP = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5}|\*)$")
    _LOCAL = re.compile(r"^(?:ipc|inproc)://\S+$")

    def __init__(self, *, bind: bool) -> None:
        self.bind = bind
        port = "PORT 1-65535, or 0 or * for any free one" if bind else "PORT 1-65535"
        self.expected = (
            f"a ZeroMQ endpoint like 'tcp://127.0.0.1:5555' (tcp://HOST:PORT with {port}), "
            "'ipc://PATH' or 'inproc://NAME'"
        )

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise self.reject(value, wrong_type=True)
        if self._LOCAL.match(value):
            return value
        m = self._TCP.match(value)
        if m is None:
            raise self.reject(value)
        port = m.group(2)
        if port == "*" or int(port) == 0:
            if not self.bind:
                raise self.reject(value)
            return value[: m.start(2)] + "*"
        if int(port) > 65535:
            raise self.reject(value)
        return value


class Parsed(Rule):
    """Whatever ``parse`` accepts (its ``TypeError``/``ValueError`` is the rejection)."""

    __slots__ = ("expected", "parse_value")

    def __init__(self, parse: Callable[[Any], Any], *, what: str) -> None:
        self.parse_value = parse
        self.expected = what

    def check(self, value: Any) -> Any:
        try:
            return self.parse_value(value)
        except TypeError:
            raise self.reject(value, wrong_type=True) from None
        except ValueError:
            raise self.reject(value) from None


class Instance(Rule):
    """An instance of ``cls`` (a nested config)."""

    __slots__ = ("cls", "expected")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.expected = f"a {cls.__name__}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, self.cls):
            raise self.reject(value, wrong_type=True)
        return value


class Payload(Rule):
    """Bytes (a ``bytearray`` or ``memoryview`` is copied into ``bytes``)."""

    __slots__ = ()
    expected = "bytes"

    def check(self, value: Any) -> Any:
        if type(value) is bytes:
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise _Reject(f"expected bytes, got {type(value).__name__}", wrong_type=True)


class Items(Rule):
    """A non-empty list of distinct items, each checked by ``item``; stored as a tuple.

    A single string is not a list of strings (``"abc"`` would be three items).
    """

    __slots__ = ("expected", "item", "max_items", "noun")

    def __init__(self, item: Rule, *, noun: str, max_items: int = 1024) -> None:
        self.item = item
        self.noun = noun
        self.max_items = max_items
        self.expected = f"a list of 1 to {max_items} distinct {noun}"

    def check(self, value: Any) -> Any:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise self.reject(value, wrong_type=True)
        if not value:
            raise self.reject(value)
        if len(value) > self.max_items:
            raise self.reject(value)
        out = []
        for i, raw in enumerate(value):
            try:
                item = self.item.check(raw)
            except _Reject as r:
                raise _Reject(r.reason, wrong_type=r.wrong_type, index=i, value=raw) from None
            if item in out:
                raise _Reject(
                    f"expected distinct {self.noun}, got {raw!r} twice", index=i, value=raw
                )
            out.append(item)
        return tuple(out)


class Secrets(Items):
    """:class:`Items` whose items are secrets (API keys), possibly none: an error says
    which item and why, never the item itself (a config error is logged and shown)."""

    __slots__ = ()

    def __init__(self, item: Rule, *, noun: str, max_items: int = 1024) -> None:
        super().__init__(item, noun=noun, max_items=max_items)
        self.expected = f"a list of at most {max_items} distinct {noun}"

    def check(self, value: Any) -> Any:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _Reject(f"expected {self.expected}, got {_typename(value)}", wrong_type=True)
        if len(value) > self.max_items:
            raise _Reject(f"expected {self.expected}, got {len(value)} items")
        out: list[str] = []
        for i, raw in enumerate(value):
            try:
                item = self.item.check(raw)
            except _Reject as r:
                what = f"a string of {len(raw)} characters" if isinstance(raw, str) else (
                    _typename(raw))
                raise _Reject(
                    f"expected {self.item.expected}, got {what}",
                    wrong_type=r.wrong_type, index=i, value="<secret>",
                ) from None
            if item in out:
                raise _Reject(
                    f"expected distinct {self.noun}, got item {out.index(item)} again",
                    index=i, value="<secret>",
                )
            out.append(item)
        return tuple(out)


def _typename(value: Any) -> str:
    return "a string" if isinstance(value, str) else type(value).__name__


class Options(Rule):
    """A table of keyword options (names to values), stored read-only."""

    __slots__ = ()
    expected = "a table of options"

    def check(self, value: Any) -> Any:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.reject(value, wrong_type=True)
        return MappingProxyType(dict(value))


# ------------------------------------------------------------------ the vocabulary

CAPABILITY_PATTERN: Final = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
"""A capability name: lower-case, 1-64 characters ``[a-z0-9_.-]`` (the wire's pattern too)."""

DEADLINE: Final = Number(seconds=True, gt=0.0, le=MAX_DEADLINE)
"""A request's deadline: what the wire's ``Request.deadline`` accepts (``DEADLINE.meta``)."""
HEARTBEAT: Final = Number(seconds=True, ge=MIN_INTERVAL, le=MAX_HEARTBEAT_INTERVAL)
"""A worker's heartbeat interval, in its config and in its Ready on the wire."""
COST: Final = Number(ge=0.0, le=MAX_COST)
"""A node's (or region's) cost, in config and in Ready on the wire."""
CONCURRENCY: Final = Number(integer=True, ge=1, le=MAX_CONCURRENCY)
"""A worker's concurrency limit, in config and in Ready on the wire."""
CAPABILITY: Final = Text(
    max_length=64,
    pattern=CAPABILITY_PATTERN,
    normalize=lambda s: s.strip().lower(),
    what="a capability name: lower-case, 1-64 characters [a-z0-9_.-]",
)

# The wire's id lengths (fedgate.transport.protocol declares its fields with these).
MAX_ID: Final = 256
MAX_REQUEST_ID: Final = 1024
IDENT: Final = Text(
    max_length=MAX_ID, blank=True, what=f"a non-empty string of at most {MAX_ID} characters"
)
"""An id (node, region, model, tenant): what the wire's ``Id`` fields accept."""
Ident: TypeAlias = Annotated[str, IDENT]
RequestIdent: TypeAlias = Annotated[
    str,
    Text(
        max_length=MAX_REQUEST_ID,
        blank=True,
        what=f"a non-empty string of at most {MAX_REQUEST_ID} characters",
    ),
]
Deadline: TypeAlias = Annotated[float, DEADLINE]

# Durations (float seconds; a timedelta is accepted and converted).
Timeout: TypeAlias = Annotated[float, Number(seconds=True, gt=0.0, le=DAY)]
Backoff: TypeAlias = Annotated[float, Number(seconds=True, ge=0.0, le=DAY)]
Grace: TypeAlias = Annotated[float, Number(seconds=True, ge=0.0, le=DAY)]
Period: TypeAlias = Annotated[float, Number(seconds=True, ge=MIN_INTERVAL, le=60.0)]
Latency: TypeAlias = Annotated[float, Number(seconds=True, gt=0.0, le=DAY)]
HeartbeatInterval: TypeAlias = Annotated[float, HEARTBEAT]

# Counts and sizes.
Hwm: TypeAlias = Annotated[int, Number(integer=True, ge=1, le=MAX_HWM)]
FrameBytes: TypeAlias = Annotated[
    int, Number(integer=True, ge=MIN_FRAME_LIMIT, le=MAX_FRAME_LIMIT)
]
InputBytes: TypeAlias = Annotated[int, Number(integer=True, ge=1, le=MAX_FRAME_LIMIT)]
Concurrency: TypeAlias = Annotated[int, CONCURRENCY]
Port: TypeAlias = Annotated[int, Number(integer=True, ge=0, le=65535)]

# Others.
Fraction: TypeAlias = Annotated[float, Number(ge=0.0, le=1.0)]
Cost: TypeAlias = Annotated[float, COST]
BindEndpoint: TypeAlias = Annotated[str, Endpoint(bind=True)]
ConnectEndpoint: TypeAlias = Annotated[str, Endpoint(bind=False)]
Switch: TypeAlias = Annotated[bool, Flag()]
NON_EMPTY: Final = Text(what="a non-empty string")
NonEmpty: TypeAlias = Annotated[str, NON_EMPTY]
NODE_NAME: Final = Text(
    max_length=128,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$",
    what="1-128 characters [A-Za-z0-9_.:@-] starting with a letter or digit",
)
NodeName: TypeAlias = Annotated[str, NODE_NAME]
NodeNames: TypeAlias = Annotated[
    Sequence[str], Items(NODE_NAME, noun="node ids", max_items=4096)
]
ModelNames: TypeAlias = Annotated[
    Sequence[str],
    Items(
        Text(max_length=256, pattern=r"^\S(?:.*\S)?$",
             what="1-256 characters without surrounding spaces"),
        noun="model names",
    ),
]
CapabilityNames: TypeAlias = Annotated[Sequence[str], Items(CAPABILITY, noun="capabilities")]
ConnectEndpoints: TypeAlias = Annotated[
    Sequence[str], Items(Endpoint(bind=False), noun="endpoints", max_items=64)
]
BindEndpoints: TypeAlias = Annotated[
    tuple[str, ...], Items(Endpoint(bind=True), noun="endpoints", max_items=64)
]
KeywordOptions: TypeAlias = Annotated[Mapping[str, Any], Options()]

# Tenants (fedgate/gateway/tenants.py).
API_KEY: Final = Text(
    max_length=256, pattern=r"^[\x21-\x7e]+$",
    what="an API key: 1-256 printable ASCII characters, no spaces",
)
ApiKeys: TypeAlias = Annotated[
    Sequence[str], Secrets(API_KEY, noun="API keys", max_items=4096)
]
Rate: TypeAlias = Annotated[float, Number(gt=0.0, le=MAX_RATE, what="a rate per second")]
Burst: TypeAlias = Annotated[float, Number(ge=1.0, le=MAX_RATE)]
ShareWeight: TypeAlias = Annotated[float, Number(gt=0.0, le=MAX_WEIGHT)]
TenantConcurrency: TypeAlias = Annotated[int, Number(integer=True, ge=1, le=C_INT_MAX)]


def count(low: int, high: int) -> Number:
    """An integer in ``[low, high]``: ``Annotated[int, count(0, 100)]``."""
    return Number(integer=True, ge=low, le=high)


def seconds(*, ge: float | None = None, gt: float | None = None, le: float) -> Number:
    """A duration in seconds within bounds: ``Annotated[float, seconds(ge=0.001, le=60)]``."""
    return Number(seconds=True, ge=ge, gt=gt, le=le)


# ------------------------------------------------------------------ checking


_Plan = tuple[tuple[str, Rule, bool], ...]
_PLANS: dict[type, _Plan] = {}


def _rule_in(hint: Any) -> tuple[Rule | None, bool]:
    """The rule an annotation declares and whether None is allowed."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, UnionType):
        args = typing.get_args(hint)
        optional = NoneType in args
        rest = [a for a in args if a is not NoneType]
        if len(rest) != 1:
            return None, optional
        hint = rest[0]
    if typing.get_origin(hint) is Annotated:
        for extra in hint.__metadata__:
            if isinstance(extra, Rule):
                return extra, optional
    return None, optional


class _Unknown:
    """A name imported only for type checking: it declares no rule, whatever is done to it."""

    def __call__(self, *args: Any, **kwargs: Any) -> _Unknown:
        return self

    def __getitem__(self, key: Any) -> _Unknown:
        return self

    def __or__(self, other: Any) -> _Unknown:
        return self

    __ror__ = __or__


_UNKNOWN = _Unknown()


class _Names(dict):
    """A module's names for evaluating its string annotations.

    A name the module imports only for type checking (``if TYPE_CHECKING:``)
    reads as unknown: such a field declares no rule, and the others still
    resolve. So declare rules with names imported at run time, in a class
    defined at module level (as ``typing.get_type_hints`` needs too).
    """

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = vars(module) if module is not None else {}

    def __missing__(self, key: str) -> Any:
        if key in self.module:
            return self.module[key]
        if hasattr(builtins, key) or key.startswith("__"):
            # Dunders too: a debugger's (or pytest's) look-up of __tracebackhide__
            # in this frame must not read as a type.
            return getattr(builtins, key)
        return _UNKNOWN


def _hint(cls: type, annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    return eval(annotation, {}, _Names(sys.modules.get(cls.__module__)))


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        rows = []
        for f in dataclasses.fields(cls):
            rule, optional = _rule_in(_hint(cls, f.type))
            if rule is not None:
                rows.append((f.name, rule, optional))
        plan = _PLANS[cls] = tuple(rows)
    return plan


def rule_of(cls: type, field: str) -> Rule:
    """The rule ``cls`` declares for ``field`` (KeyError when it declares none)."""
    for name, rule, _ in _plan(cls):
        if name == field:
            return rule
    raise KeyError(f"{cls.__name__}.{field}: no declared rule")


def _error(owner: str, field: str, value: Any, r: _Reject) -> InvalidParameterError:
    shown = r.value if r.index is not None else value
    kind = ParameterTypeError if r.wrong_type else InvalidParameterError
    return kind(owner, field, shown, r.reason, r.index)


_CHECKERS: dict[type, Callable[[Any], None]] = {}


def _checker(cls: type) -> Callable[[Any], None]:
    """One straight-line function checking ``cls``'s declared fields in order.

    Generated once per class: requests are built per call, and a loop over
    the plan costs about twice the checks themselves.
    """
    plan = _plan(cls)
    env: dict[str, Any] = {"_Reject": _Reject, "_error": _error, "_set": object.__setattr__}
    lines = ["def check(obj):", "    name = value = None", "    try:"]
    for i, (name, rule, optional) in enumerate(plan):
        env[f"r{i}"] = rule.check
        pad = "        "
        lines.append(f"{pad}name = {name!r}")
        lines.append(f"{pad}value = obj.{name}")
        if optional:
            lines.append(f"{pad}if value is not None:")
            pad += "    "
        lines.append(f"{pad}new = r{i}(value)")
        lines.append(f"{pad}if new is not value:")
        lines.append(f"{pad}    _set(obj, {name!r}, new)")
    lines.append("        pass")
    lines.append("    except _Reject as r:")
    lines.append(f"        raise _error({cls.__name__!r}, name, value, r) from None")
    exec("\n".join(lines), env)  # as dataclasses writes __init__: from field names only
    fn: Callable[[Any], None] = env["check"]
    _CHECKERS[cls] = fn
    return fn


def validate(obj: Any) -> None:
    """Check every declared field of the dataclass ``obj``, storing normalised values.

    Call it from ``__post_init__``; frozen dataclasses are supported.

    Raises
    ------
    InvalidParameterError
        The first field, in declaration order, that does not meet its rule.
    """
    cls = type(obj)
    (_CHECKERS.get(cls) or _checker(cls))(obj)


def argument_type(cls: type, field: str, *, check: bool = True) -> Callable[[str], Any]:
    """An argparse ``type=`` for a flag that sets ``cls.field``: parsed and checked as declared.

    Its ``ArgumentTypeError`` is the declaration's message, so argparse prints
    ``argument --cost: expected a number in [0, 1000000000000], got '-1'``.
    With ``check=False`` only the syntax is the flag's (an integer, seconds):
    the value is checked later where it is used, like the same key in a file.
    """
    import argparse

    rule = rule_of(cls, field)

    def convert(text: str) -> Any:
        try:
            value = rule.parse(text)
            return rule.check(value) if check else value
        except _Reject as r:
            raise argparse.ArgumentTypeError(
                r.reason if r.wrong_type else _got(rule.expected, text)
            ) from None

    convert.__name__ = field  # argparse names the converter in some messages
    return convert
