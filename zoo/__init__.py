"""What is inferred: the models of the zoo, their data and their closed forms.

Each model is a module (``zoo.linear_regression``, ...) exporting a Pyro ``model``,
``simulate(seed, ...)``, its closed forms and ``make_posterior``; ``zoo.registry.MODELS``
lists them.

Importing ``zoo`` imports neither torch nor a model: the registry and the errors are light,
and the posterior types (which need torch) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from zoo.errors import ZooInputError
from zoo.methods import MethodSpec
from zoo.registry import MODELS, ModelSpec, get_model

if TYPE_CHECKING:
    from zoo.posterior import ClosedForm, LocalLatents, ModelForms, Posterior, Relabelled

#: Names served from a submodule on first use, so that ``import zoo`` stays light.
_LAZY = {
    "ClosedForm": "zoo.posterior",
    "LocalLatents": "zoo.posterior",
    "ModelForms": "zoo.posterior",
    "Posterior": "zoo.posterior",
    "Relabelled": "zoo.posterior",
}

__all__ = [
    "MODELS",
    "ClosedForm",
    "LocalLatents",
    "MethodSpec",
    "ModelForms",
    "ModelSpec",
    "Posterior",
    "Relabelled",
    "ZooInputError",
    "get_model",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in MODELS:  # zoo.gmm after a bare ``import zoo``, as before the lazy registry
        value = importlib.import_module(f"zoo.{name}")
    else:
        raise AttributeError(f"module 'zoo' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
