"""Packages whose heavy names (torch, Pyro, ArviZ behind them) are imported on first use, so
that ``import guides`` or ``import comparisons`` and the ``zoo`` command's ``--help``, ``list``
and argument errors stay light."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping


def lazy_names(
    package: str, table: Mapping[str, str], *, functions: tuple[str, ...] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` serving each name of ``table`` (name ->
    submodule) on first use. ``functions`` are names that are both a submodule and the
    function it defines (``guides.fit``, ``comparisons.compare``): importing the submodule
    binds it to the package's name, and the package keeps the function there instead."""
    module = sys.modules[package]

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *table})

    if functions:

        class _Package(types.ModuleType):
            def __setattr__(self, name: str, value: object) -> None:
                if name in functions and isinstance(value, types.ModuleType):
                    value = getattr(value, name)
                super().__setattr__(name, value)

        module.__class__ = _Package
    return __getattr__, __dir__
