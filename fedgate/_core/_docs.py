"""Hand a spec module's docstrings to both twins of a compiled component.

A compiled class cannot take a new docstring (its type is immutable), but its
``def`` methods are Cython function objects whose ``__doc__`` can be set, and
so are a pure class's methods and properties. The compiled class keeps the
docstrings Cython can only take from source (the class itself, its
properties); ``tests/test_twins.py`` holds them equal to the spec's text.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["document"]


def document(cls: type, docs: Mapping[str, str]) -> None:
    """Set the docstring of each attribute of ``cls`` named in ``docs``.

    The key ``""`` stands for the class itself. Attributes whose docstring is
    fixed at compile time (a compiled class, its properties) are left alone.
    """
    for name, text in docs.items():
        target = cls if name == "" else cls.__dict__[name]
        try:
            target.__doc__ = text
        except (AttributeError, TypeError):
            continue
