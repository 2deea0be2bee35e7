"""How the posterior is approximated: guide families by name and one SVI fitting loop.

>>> from guides import fit_guide, GUIDES  # doctest: +SKIP
"""

from guides.amortized import AmortizedGuide
from guides.encoders import ENCODERS
from guides.fit import FitConfig, FitError, FitResult, draw, fit, fit_guide
from guides.laplace import LaplaceGuide
from guides.registry import ALIASES, GUIDES, GuideSpec, get_guide

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
