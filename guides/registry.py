"""Guide families by name: a table of frozen specs, each building a Pyro autoguide."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from zoo.errors import ZooInputError
from zoo.methods import METHOD_ALIASES


@dataclass(frozen=True)
class _Deferred:
    """A guide class named by ``module:attr``, imported when the guide is first built, so
    that the table (names, summaries) can be read without importing torch (``zoo list``)."""

    target: str
    kwargs: dict = field(default_factory=dict)

    def __call__(self, *args, **kwargs) -> object:
        module, attr = self.target.split(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(*args, **self.kwargs, **kwargs)


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
    encoder and needs the model's ``LocalLatents``. ``dense_start``: with ``init="map"``
    the guide starts at the Laplace approximation (a dense covariance) rather than at a
    diagonal whitening.
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
    dense_start: bool = False


#: How a guide's location is initialized (see ``FitConfig.init``).
INITS = ("map", "median")


GUIDES: dict[str, GuideSpec] = {
    "delta": GuideSpec(
        "delta",
        "MAP: a point mass at the posterior mode (AutoDelta); no uncertainty at all",
        _Deferred("pyro.infer.autoguide:AutoDelta"),
        has_density=False,
        point=True,
        num_particles=1,
        optimizer="lbfgs",
    ),
    "laplace": GuideSpec(
        "laplace",
        "Laplace: Gaussian at the mode, inverse Hessian as covariance (unconstrained space)",
        _Deferred("guides.laplace:LaplaceGuide"),
        num_particles=1,
        optimizer="lbfgs",
    ),
    "mean_field": GuideSpec(
        "mean_field",
        "mean-field: independent normals per coordinate; misses correlations",
        _Deferred("guides.whiten:WhitenedDiagonalNormal"),
        whiten=True,
    ),
    "low_rank": GuideSpec(
        "low_rank",
        "low-rank: normal with diagonal plus rank-r covariance, r ~ sqrt(dim)",
        _Deferred("guides.whiten:WhitenedLowRankNormal"),
        whiten=True,
    ),
    "full_rank": GuideSpec(
        "full_rank",
        "full-rank: multivariate normal with a dense covariance",
        _Deferred("guides.whiten:WhitenedMultivariateNormal"),
        whiten=True,
        dense_start=True,
    ),
    "flow": GuideSpec(
        "flow",
        "flow: normal through 2 affine autoregressive (IAF) layers and an affine map",
        _Deferred("guides.flow:FlowGuide", {"num_transforms": 2}),
        whiten=True,
    ),
    "amortized": GuideSpec(
        "amortized",
        "amortized: an encoder network q(z | x) for per-row latents, a point for the globals;"
        " for two layers of them, the chain or top-down encoders",
        _Deferred("guides.amortized:build_amortized"),
        # One particle, as variational autoencoders are fitted: the per-row terms already
        # average over every row. On PPCA of digits 8 particles cost 9x the time a step.
        num_particles=1,
        whiten=True,
        amortized=True,
    ),
}

#: Other names of guide families: the one alias table of methods (``zoo.methods``).
ALIASES: dict[str, str] = METHOD_ALIASES


def get_guide(name: str) -> GuideSpec:
    """The spec of a guide by name or alias, or a clear error listing the names."""
    key = ALIASES.get(name, name)
    try:
        return GUIDES[key]
    except KeyError:
        names = ", ".join(list(GUIDES) + [f"{a} (= {k})" for a, k in ALIASES.items()])
        raise ZooInputError(f"unknown guide '{name}'; choose one of: {names}") from None
