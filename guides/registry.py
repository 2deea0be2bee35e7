"""Guide families by name: a table of frozen specs, each building a Pyro autoguide."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from pyro.infer.autoguide import AutoDelta

from guides.amortized import AmortizedGuide
from guides.flow import FlowGuide
from guides.laplace import LaplaceGuide
from guides.whiten import (
    WhitenedDiagonalNormal,
    WhitenedLowRankNormal,
    WhitenedMultivariateNormal,
)
from zoo.errors import ZooInputError


@dataclass(frozen=True)
class GuideSpec:
    """A guide family.

    ``build(model, init_loc_fn=...)`` returns the (unfitted) guide of ``model``.
    ``has_density``: draws come with log q, so importance weights and PSIS k apply.
    ``point``: the guide is a point estimate (no spread). ``num_particles``: ELBO particles
    per step that the family needs. ``optimizer``: ``"lbfgs"`` for a deterministic
    objective (a point: the log joint), ``"adam"`` for a stochastic ELBO. ``whiten``: the
    guide takes ``shift`` and ``scale`` and is fitted in whitened coordinates
    (:mod:`guides.whiten`). ``amortized``: the guide covers per-datapoint latents with an
    encoder and needs the model's ``LocalLatents``.
    """

    name: str
    summary: str
    build: Callable[[Callable[..., object], Callable], object]
    has_density: bool = True
    point: bool = False
    num_particles: int = 8
    optimizer: str = "adam"
    whiten: bool = False
    amortized: bool = False


#: How a guide's location is initialized (see ``FitConfig.init``).
INITS = ("map", "median")


GUIDES: dict[str, GuideSpec] = {
    "delta": GuideSpec(
        "delta",
        "MAP: a point mass at the posterior mode (AutoDelta); no uncertainty at all",
        AutoDelta,
        has_density=False,
        point=True,
        num_particles=1,
        optimizer="lbfgs",
    ),
    "laplace": GuideSpec(
        "laplace",
        "Laplace: Gaussian at the mode, inverse Hessian as covariance (unconstrained space)",
        LaplaceGuide,
        num_particles=1,
        optimizer="lbfgs",
    ),
    "mean_field": GuideSpec(
        "mean_field",
        "mean-field: independent normals per coordinate; misses correlations",
        WhitenedDiagonalNormal,
        whiten=True,
    ),
    "low_rank": GuideSpec(
        "low_rank",
        "low-rank: normal with diagonal plus rank-r covariance, r ~ sqrt(dim)",
        WhitenedLowRankNormal,
        whiten=True,
    ),
    "full_rank": GuideSpec(
        "full_rank",
        "full-rank: multivariate normal with a dense covariance",
        WhitenedMultivariateNormal,
        whiten=True,
    ),
    "flow": GuideSpec(
        "flow",
        "flow: normal through 2 affine autoregressive (IAF) layers and an affine map",
        functools.partial(FlowGuide, num_transforms=2),
        whiten=True,
    ),
    "amortized": GuideSpec(
        "amortized",
        "amortized: an encoder network q(z | x) for per-row latents, a point for the globals",
        AmortizedGuide,
        # One particle, as variational autoencoders are fitted: the per-row terms already
        # average over every row. On PPCA of digits 8 particles cost 9x the time a step.
        num_particles=1,
        whiten=True,
        amortized=True,
    ),
}

ALIASES: dict[str, str] = {"map": "delta"}


def get_guide(name: str) -> GuideSpec:
    """The spec of a guide by name or alias, or a clear error listing the names."""
    key = ALIASES.get(name, name)
    try:
        return GUIDES[key]
    except KeyError:
        names = ", ".join(list(GUIDES) + [f"{a} (= {k})" for a, k in ALIASES.items()])
        raise ZooInputError(f"unknown guide '{name}'; choose one of: {names}") from None
