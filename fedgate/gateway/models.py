"""Public model names: aliases with ordered fallbacks, and each model's context window (SPEC §6).

The gateway TOML declares them::

    [aliases.chat]                      # what clients ask for
    models = ["llama-8b", "llama-70b"]  # catalog models, in order of preference

    [models.llama-8b]
    context_window = 8192               # tokens
    [models.llama-70b]
    context_window = 131072

A request naming an alias tries its models in order (:class:`Fallback`):

* a model with no live worker is skipped without an attempt;
* a model that has nodes but cannot take the request (no capacity, every
  node unhealthy, cooling down or refusing the privacy) passes the request
  on to the next model;
* a context-length error (the worker's ``context_length`` code: an upstream's
  ``context_length_exceeded``, or a synthetic worker's declared window)
  moves to the next model whose declared context window is LARGER than that
  of every model that was too short: never the same model again, and never
  a model whose window is not declared (nothing says it is larger). When
  no such model is left the caller gets OpenAI's ``context_length_exceeded``;
  when one is left but cannot take the request now, that model's error (a
  503: the request would fit, later);
* anything else (bad input, a deadline, a node's failure after the gateway's
  own retries) is the answer: another model would not fix it.

A name that is not an alias is a catalog model on its own (a one-model
fallback). Every model of an alias shares the request's one deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fedgate.errors import NO_NODE_NOW, PrivacyViolationError, WorkerError
from fedgate.transport.protocol import ERR_CONTEXT_LENGTH, ERR_OVERLOADED
from fedgate.validation import ModelNames, Text, count, validate

__all__ = ["Alias", "Fallback", "ModelSpec", "ModelTable", "is_context_error"]

MAX_CONTEXT_WINDOW = 1 << 30
"""Largest context window a model may declare, in tokens."""

_MODEL_NAME = Text(
    max_length=256,
    pattern=r"^\S(?:.*\S)?$",
    what="1-256 characters without surrounding spaces",
)
ModelName = Annotated[str, _MODEL_NAME]

# "This model cannot take the request now" (not "this request is bad"): no node of
# it, or none cleared for the request's privacy level.
_UNAVAILABLE = (*NO_NODE_NOW, PrivacyViolationError)


@dataclass(frozen=True, slots=True)
class Alias:
    """``[aliases.NAME]``: a public model name and the catalog models behind it, in order."""

    name: ModelName
    models: ModelNames

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """``[models.NAME]``: what the gateway knows of a catalog model."""

    name: ModelName
    context_window: Annotated[int, count(1, MAX_CONTEXT_WINDOW)] | None = None

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ModelTable:
    """The aliases and model declarations of a gateway (empty: every name is a catalog model)."""

    aliases: tuple[Alias, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    _alias: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _window: Mapping[str, int | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        aliases: dict[str, tuple[str, ...]] = {}
        for a in self.aliases:
            if not isinstance(a, Alias):
                raise TypeError(f"aliases: expected Alias entries, got {a!r}")
            if a.name in aliases:
                raise ValueError(f"aliases: expected distinct names, got {a.name!r} twice")
            if a.name in a.models:
                raise ValueError(
                    f"aliases.{a.name}.models: expected catalog models, not the alias "
                    f"itself, got {list(a.models)}"
                )
            aliases[a.name] = tuple(a.models)
        windows: dict[str, int | None] = {}
        for m in self.models:
            if not isinstance(m, ModelSpec):
                raise TypeError(f"models: expected ModelSpec entries, got {m!r}")
            if m.name in windows:
                raise ValueError(f"models: expected distinct names, got {m.name!r} twice")
            if m.name in aliases:
                raise ValueError(f"models.{m.name}: {m.name!r} is an alias, not a catalog model")
            windows[m.name] = m.context_window
        for name, models in aliases.items():
            for model in models:
                if model in aliases:
                    raise ValueError(
                        f"aliases.{name}.models: expected catalog models, got the alias {model!r}"
                    )
        object.__setattr__(self, "_alias", aliases)
        object.__setattr__(self, "_window", windows)

    def is_alias(self, name: str) -> bool:
        return name in self._alias

    def candidates(self, name: str) -> tuple[str, ...]:
        """The catalog models a request for ``name`` tries, in order."""
        return self._alias.get(name, (name,))

    def window(self, model: str) -> int | None:
        """The declared context window of ``model`` in tokens (None: not declared)."""
        return self._window.get(model)

    def alias_names(self) -> list[str]:
        return sorted(self._alias)


def is_context_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the request is longer than the model's context window."""
    return isinstance(exc, WorkerError) and exc.code == ERR_CONTEXT_LENGTH


class Fallback:
    """The models one request tries, in order (see the module docstring).

    ``live(model)`` says whether the catalog has a live worker for it now.
    Call :meth:`next` for the model to try, and :meth:`failed` with its error:
    True means try :meth:`next` again, False means the error is the answer.
    """

    __slots__ = ("_live", "_table", "errors", "floor", "name", "tried")

    def __init__(self, table: ModelTable, name: str, live: Callable[[str], bool]) -> None:
        self._table = table
        self._live = live
        self.name = name
        self.tried: list[str] = []
        self.errors: list[tuple[str, BaseException]] = []
        # The largest window found too short so far (0: a model without a
        # declared window was too short); None: no context error yet.
        self.floor: int | None = None

    def next(self) -> str | None:
        """The next model to try; None when none is left."""
        window = self._table.window
        for model in self._table.candidates(self.name):
            if model in self.tried:
                continue
            if self.floor is not None:
                w = window(model)
                if w is None or w <= self.floor:
                    continue
            if not self._live(model):
                continue
            self.tried.append(model)
            return model
        return None

    def failed(self, model: str, exc: BaseException) -> bool:
        """Book ``model``'s error; whether another model may still answer."""
        self.errors.append((model, exc))
        if is_context_error(exc):
            w = self._table.window(model) or 0
            self.floor = w if self.floor is None else max(self.floor, w)
            return True
        if isinstance(exc, WorkerError):
            return exc.code == ERR_OVERLOADED
        return isinstance(exc, _UNAVAILABLE)

    def final_error(self, exc: BaseException) -> BaseException:
        """The caller's error once no model is left (``exc``: the last model's)."""
        if not (is_context_error(exc) and self._table.is_alias(self.name)):
            return exc
        window = self._table.window
        tried = ", ".join(f"{m} ({window(m) or 'window not declared'})" for m in self.tried)
        return WorkerError(
            f"model {self.name!r}: the request is longer than the context window of every "
            f"model that could take it (tried {tried}); no model with a larger declared "
            f"context window is left: {exc}",
            code=ERR_CONTEXT_LENGTH,
            node_caused=False,
        )
