"""How the posterior is approximated: guide families by name and one SVI fitting loop.

>>> from guides import fit_guide, GUIDES  # doctest: +SKIP

The guide table (``GUIDES``, ``ALIASES``, ``get_guide``) is light; the guide classes and the
fitting loop, which need torch, are imported on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from guides.registry import ALIASES, GUIDES, GuideSpec, get_guide

if TYPE_CHECKING:
    from guides.amortized import AmortizedGuide
    from guides.encoders import ENCODERS
    from guides.fit import FitConfig, FitError, FitResult, draw, fit, fit_guide
    from guides.laplace import LaplaceGuide

#: Names served from a submodule on first use, so that ``import guides`` stays light.
_LAZY = {
    "AmortizedGuide": "guides.amortized",
    "ENCODERS": "guides.encoders",
    "FitConfig": "guides.fit",
    "FitError": "guides.fit",
    "FitResult": "guides.fit",
    "LaplaceGuide": "guides.laplace",
    "draw": "guides.fit",
    "fit": "guides.fit",
    "fit_guide": "guides.fit",
}

__all__ = [
    "ALIASES",
    "ENCODERS",
    "AmortizedGuide",
    "GUIDES",
    "FitConfig",
    "FitError",
    "FitResult",
    "GuideSpec",
    "LaplaceGuide",
    "draw",
    "fit",
    "fit_guide",
    "get_guide",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'guides' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package ``guides``, whose name ``fit`` is the function :func:`guides.fit.fit`.

    Importing the submodule ``guides.fit`` binds the submodule to the package's ``fit``; an
    eager ``from guides.fit import fit`` here used to rebind it, a lazy import cannot, so the
    binding itself keeps the function.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name == "fit" and isinstance(value, types.ModuleType):
            value = value.fit
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
