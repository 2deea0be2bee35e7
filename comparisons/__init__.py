"""Running one model several ways and judging: method runners, metrics, ArviZ conversion,
reports and the ``zoo`` command line.

Importing ``comparisons`` is light (the command line answers ``zoo list`` and argument errors
without torch or ArviZ); ``compare``, ``Preset`` and the rest are imported on first use.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from zoo.lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(__name__, _LAZY, functions=("compare",))
