"""Running one model several ways and judging: method runners, metrics, ArviZ conversion,
reports and the ``zoo`` command line."""

from comparisons.compare import Comparison, compare
from comparisons.runners import PRESETS, MethodRun, Preset, available_methods

__all__ = ["PRESETS", "Comparison", "MethodRun", "Preset", "available_methods", "compare"]
