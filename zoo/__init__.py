"""What is inferred: the models of the zoo, their data and their closed forms.

Each model is a module (``zoo.linear_regression``, ...) exporting a Pyro ``model``,
``simulate(seed, ...)``, its closed forms and ``make_posterior``; ``zoo.registry.MODELS``
lists them.
"""

from zoo.errors import ZooInputError
from zoo.posterior import ClosedForm, LocalLatents, Posterior, Relabelled
from zoo.registry import MODELS, ModelSpec, get_model

__all__ = [
    "MODELS",
    "ClosedForm",
    "LocalLatents",
    "ModelSpec",
    "Posterior",
    "Relabelled",
    "ZooInputError",
    "get_model",
]
