"""Guide families by name: a table of frozen specs, each building a Pyro autoguide."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyro.infer.autoguide import (
    AutoDelta,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_median,
)

from guides.flow import FlowGuide
from guides.laplace import LaplaceGuide
from zoo.errors import ZooInputError


@dataclass(frozen=True)
class GuideSpec:
    """A guide family.

    ``has_density``: draws come with log q, so importance weights and PSIS k apply.
    ``point``: the guide is a point estimate (no spread). ``num_particles``: ELBO particles
    per step that the family needs. ``optimizer``: ``"lbfgs"`` for a deterministic
    objective (a point: the log joint), ``"adam"`` for a stochastic ELBO.
    """

    name: str
    summary: str
    build: Callable[..., object]
    has_density: bool = True
    point: bool = False
    num_particles: int = 8
    optimizer: str = "adam"


def _init():
    return init_to_median(num_samples=15)


GUIDES: dict[str, GuideSpec] = {
    "delta": GuideSpec(
        "delta",
        "MAP: a point mass at the posterior mode (AutoDelta); no uncertainty at all",
        lambda model: AutoDelta(model, init_loc_fn=_init()),
        has_density=False,
        point=True,
        num_particles=1,
        optimizer="lbfgs",
    ),
    "laplace": GuideSpec(
        "laplace",
        "Laplace: Gaussian at the mode with the inverse Hessian as covariance (unconstrained space)",
        lambda model: LaplaceGuide(model, init_loc_fn=_init()),
        num_particles=1,
        optimizer="lbfgs",
    ),
    "mean_field": GuideSpec(
        "mean_field",
        "mean-field: independent normals per coordinate (AutoNormal); misses correlations",
        lambda model: AutoNormal(model, init_loc_fn=_init()),
    ),
    "low_rank": GuideSpec(
        "low_rank",
        "low-rank: normal with diagonal plus rank-r covariance (AutoLowRankMultivariateNormal)",
        lambda model: AutoLowRankMultivariateNormal(model, init_loc_fn=_init()),
    ),
    "full_rank": GuideSpec(
        "full_rank",
        "full-rank: multivariate normal with a dense covariance (AutoMultivariateNormal)",
        lambda model: AutoMultivariateNormal(model, init_loc_fn=_init()),
    ),
    "flow": GuideSpec(
        "flow",
        "flow: normal through 2 affine autoregressive (IAF) layers and an affine map",
        lambda model: FlowGuide(model, num_transforms=2, init_loc_fn=_init()),
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
