"""A posterior is a (model, data) pair: what every method of a comparison is run on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class ClosedForm:
    """What a closed-form method returns.

    ``draws`` maps each latent site (and deterministic site) to an array whose first axis
    indexes draws; ``moments`` optionally gives the exact mean and standard deviation of each
    site, which comparisons prefer over the draws when this method is the reference.
    """

    draws: Mapping[str, np.ndarray]
    moments: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    point: bool = False
    info: Mapping[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictiveGrid:
    """Inputs on which the report draws posterior predictive bands.

    ``values`` are the points of the x axis (named ``label``); ``data`` are the model keyword
    arguments (without the observation) that put the model at those points.
    """

    label: str
    values: np.ndarray
    data: Mapping[str, torch.Tensor]
    observed_x: np.ndarray
    observed_y: np.ndarray


@dataclass(frozen=True)
class Posterior:
    """One model on one data set, ready for any method.

    Attributes
    ----------
    model : callable
        The Pyro model with its options bound; call it as ``model(**data)``.
    data, test_data : mapping
        Keyword arguments of the model on the fitted and on the held-out rows (the
        observation included). ``test_data`` is None when nothing is held out.
    obs_site : str
        Name of the observed site whose pointwise log-likelihood LOO uses.
    sites : tuple of str
        The global latent quantities reported (ArviZ variables, results.json keys), in
        constrained space and original units; some may be deterministic sites.
    dims, coords : mapping
        ArviZ dims of each reported site and coordinate values of each dim.
    closed_forms : mapping
        Method name (``exact``, ``ml``, ``em``) to ``fn(seed, num_draws) -> ClosedForm``.
    """

    model_name: str
    dataset: str
    model: Callable[..., object]
    data: Mapping[str, torch.Tensor]
    test_data: Mapping[str, torch.Tensor] | None
    obs_site: str
    sites: tuple[str, ...]
    dims: Mapping[str, list[str]]
    coords: Mapping[str, list]
    closed_forms: Mapping[str, Callable[[int, int], ClosedForm]] = field(default_factory=dict)
    grid: PredictiveGrid | None = None
    truth: Mapping[str, np.ndarray] | None = None
    description: Mapping[str, str] = field(default_factory=dict)
    max_plate_nesting: int = 1

    @property
    def num_data(self) -> int:
        return int(self.data[self.obs_site].shape[0])

    @property
    def num_test(self) -> int:
        return 0 if self.test_data is None else int(self.test_data[self.obs_site].shape[0])
