"""How the posterior is approximated: guide families by name and one SVI fitting loop.

>>> from guides import fit_guide, GUIDES  # doctest: +SKIP

The guide table (``GUIDES``, ``ALIASES``, ``get_guide``) is light; the guide classes and the
fitting loop, which need torch, are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guides.registry import ALIASES, GUIDES, GuideSpec, get_guide
from zoo.lazy import lazy_names

if TYPE_CHECKING:
    from guides.amortized import AmortizedGuide
    from guides.checkpoint import Checkpoint
    from guides.encoders import ENCODERS
    from guides.fit import FitConfig, FitError, FitResult, Target, draw, fit, fit_guide
    from guides.laplace import LaplaceGuide

#: Names served from a submodule on first use, so that ``import guides`` stays light.
_LAZY = {
    "AmortizedGuide": "guides.amortized",
    "Checkpoint": "guides.checkpoint",
    "ENCODERS": "guides.encoders",
    "FitConfig": "guides.fit",
    "FitError": "guides.fit",
    "FitResult": "guides.fit",
    "LaplaceGuide": "guides.laplace",
    "Target": "guides.fit",
    "draw": "guides.fit",
    "fit": "guides.fit",
    "fit_guide": "guides.fit",
}

__all__ = [
    "ALIASES",
    "ENCODERS",
    "AmortizedGuide",
    "Checkpoint",
    "GUIDES",
    "FitConfig",
    "FitError",
    "FitResult",
    "GuideSpec",
    "LaplaceGuide",
    "Target",
    "draw",
    "fit",
    "fit_guide",
    "get_guide",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, functions=("fit",))
