"""Running one model several ways and judging: method runners, metrics, ArviZ conversion,
reports and the ``zoo`` command line."""

import warnings

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.x refactor once a day on import; 1.x needs Python 3.12 and
    # cannot apply here, so the notice would only confuse a user of the zoo command.
    warnings.filterwarnings("ignore", message="\nArviZ is undergoing", category=FutureWarning)
    import arviz  # noqa: F401

from comparisons.compare import Comparison, compare
from comparisons.runners import PRESETS, MethodRun, Preset, available_methods

__all__ = ["PRESETS", "Comparison", "MethodRun", "Preset", "available_methods", "compare"]
