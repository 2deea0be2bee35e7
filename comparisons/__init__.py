"""Running one model several ways and judging: method runners, metrics, ArviZ conversion,
reports and the ``zoo`` command line.

Importing ``comparisons`` is light (the command line answers ``zoo list`` and argument errors
without torch or ArviZ); ``compare``, ``Preset`` and the rest are imported on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import TYPE_CHECKING

# ArviZ 0.23 announces its 1.x refactor once a day on import; 1.x needs Python 3.12 and cannot
# apply here, so the notice would only confuse a user of the zoo command. The filter is set
# here, before any submodule imports ArviZ, and matches that one notice only.
warnings.filterwarnings("ignore", message="\nArviZ is undergoing", category=FutureWarning)

if TYPE_CHECKING:
    from comparisons.compare import Comparison, compare
    from comparisons.runners import PRESETS, MethodRun, Preset, available_methods
    from comparisons.schema import results_schema, validate_results

#: Names served from a submodule on first use.
_LAZY = {
    "Comparison": "comparisons.compare",
    "compare": "comparisons.compare",
    "PRESETS": "comparisons.runners",
    "MethodRun": "comparisons.runners",
    "Preset": "comparisons.runners",
    "available_methods": "comparisons.runners",
    "results_schema": "comparisons.schema",
    "validate_results": "comparisons.schema",
}

__all__ = [
    "PRESETS",
    "Comparison",
    "MethodRun",
    "Preset",
    "available_methods",
    "compare",
    "results_schema",
    "validate_results",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'comparisons' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package ``comparisons``, whose name ``compare`` is the function
    :func:`comparisons.compare.compare`: importing the submodule binds the submodule to that
    name, and the binding keeps the function instead (as the eager import used to)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "compare" and isinstance(value, types.ModuleType):
            value = value.compare
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
