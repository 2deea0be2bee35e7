"""The mixture's priors, its Pyro models (enumerated and summed out) and ``simulate``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from scipy.special import logsumexp

from zoo.errors import ZooInputError

SITES = ("weights", "locs", "scales")


#: Prior presets: each number is a default that a given option overrides.
#: ``loc_scale`` and ``scale_median`` are in units of each feature's sd; ``scale_spread`` is
#: the sd of log(scale); ``concentration`` the Dirichlet alpha.
PRIOR_PRESETS: dict[str, dict[str, float]] = {
    "weakly_informative": {
        "loc_scale": 2.5,
        "scale_median": 0.5,
        "scale_spread": 1.0,
        "concentration": 2.0,
    },
    "weak": {"loc_scale": 2.5, "scale_median": 0.5, "scale_spread": 3.0, "concentration": 1.0},
}


@dataclass(frozen=True)
class Priors:
    """Resolved prior of the mixture, in the units of the data.

    ``loc_loc``, ``loc_scale`` and ``scale_median`` have one entry per feature:
    ``locs[k, d] ~ Normal(loc_loc[d], loc_scale[d])`` and
    ``scales[k, d] ~ LogNormal(log(scale_median[d]), scale_spread)``;
    ``weights ~ Dirichlet(concentration, ..., concentration)``.
    """

    family: str
    concentration: float
    loc_loc: tuple[float, ...]
    loc_scale: tuple[float, ...]
    scale_median: tuple[float, ...]
    scale_spread: float

    def describe(self, feature_names: Sequence[str]) -> str:
        def per_feature(values: Sequence[float]) -> str:
            return ", ".join(f"{n}: {v:.4g}" for n, v in zip(feature_names, values))

        return (
            f"weights ~ Dirichlet({self.concentration:g}); "
            f"locs[k, d] ~ Normal(mean_d, sd_d) with mean = [{per_feature(self.loc_loc)}], "
            f"sd = [{per_feature(self.loc_scale)}]; "
            f"scales[k, d] ~ LogNormal(log median_d, {self.scale_spread:g}) with median = "
            f"[{per_feature(self.scale_median)}] ({self.family})"
        )


def default_priors(
    x: np.ndarray,
    *,
    prior: str = "weakly_informative",
    loc_scale: float | None = None,
    scale_median: float | None = None,
    scale_spread: float | None = None,
    concentration: float | None = None,
) -> Priors:
    """Priors scaled to the data (see the module docstring).

    Parameters
    ----------
    x : array (N, D)
        The rows fitted.
    prior : {"weakly_informative", "weak"}
        Preset of the four numbers below; a given number overrides the preset's.
    loc_scale : float, optional
        Prior sd of every component mean, in units of the feature's sd.
    scale_median : float, optional
        Prior median of every component sd, in units of the feature's sd.
    scale_spread : float, optional
        Prior sd of log(component sd).
    concentration : float, optional
        Dirichlet alpha of the weights.
    """
    if prior not in PRIOR_PRESETS:
        raise ZooInputError(f"unknown prior '{prior}'; choose one of: {', '.join(PRIOR_PRESETS)}")
    given = {
        "loc_scale": loc_scale,
        "scale_median": scale_median,
        "scale_spread": scale_spread,
        "concentration": concentration,
    }
    values = dict(PRIOR_PRESETS[prior])
    for name, value in given.items():
        if value is None:
            continue
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (real and math.isfinite(value) and value > 0):
            raise ZooInputError(
                f"prior option {name.replace('_', ' ')} must be a positive number, got {value!r}"
            )
        values[name] = float(value)
    x = np.asarray(x, dtype=float)
    mean = x.mean(0)
    sd = x.std(0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
    return Priors(
        family=prior,
        concentration=values["concentration"],
        loc_loc=tuple(float(v) for v in mean),
        loc_scale=tuple(float(values["loc_scale"] * s) for s in sd),
        scale_median=tuple(float(values["scale_median"] * s) for s in sd),
        scale_spread=values["scale_spread"],
    )


def _globals(num_components: int, priors: Priors, dtype: torch.dtype):
    """Sample the global sites (outside every plate) in their fixed order."""
    k = num_components
    d = len(priors.loc_loc)
    alpha = torch.full((k,), priors.concentration, dtype=dtype)
    weights = pyro.sample("weights", dist.Dirichlet(alpha))
    loc_loc = torch.as_tensor(priors.loc_loc, dtype=dtype).expand(k, d)
    loc_scale = torch.as_tensor(priors.loc_scale, dtype=dtype).expand(k, d)
    locs = pyro.sample("locs", dist.Normal(loc_loc, loc_scale).to_event(2))
    log_median = torch.as_tensor(priors.scale_median, dtype=dtype).log().expand(k, d)
    spread = torch.full((k, d), priors.scale_spread, dtype=dtype)
    scales = pyro.sample("scales", dist.LogNormal(log_median, spread).to_event(2))
    return weights, locs, scales


def _num_rows(x: torch.Tensor | None, num_data: int | None) -> int:
    if x is not None:
        return int(x.shape[-2])
    if num_data is None:
        raise ZooInputError("the gmm model needs the data x or, for prior draws, num_data")
    return int(num_data)


def model(
    x: torch.Tensor | None = None,
    *,
    num_components: int,
    priors: Priors,
    num_data: int | None = None,
    subsample_size: int | None = None,
) -> torch.Tensor:
    """Pyro model with an explicit discrete ``assignment`` per row, marked for parallel
    enumeration (fit it with ``TraceEnum_ELBO``, or NUTS, which sums it out).

    Parameters
    ----------
    x : tensor (N, D), optional
        Observed rows; None draws ``num_data`` rows from the prior predictive.
    num_components : int
        K.
    priors : Priors
        Resolved priors (:func:`default_priors`).
    num_data : int, optional
        Number of rows to draw when ``x`` is None.
    subsample_size : int, optional
        Rows per step (data subsampling); None uses every row.

    Returns
    -------
    tensor
        The assignments (enumerated values under enumeration).
    """
    dtype = torch.get_default_dtype() if x is None else x.dtype
    weights, locs, scales = _globals(num_components, priors, dtype)
    with pyro.plate("data", _num_rows(x, num_data), subsample_size=subsample_size) as idx:
        assignment = pyro.sample(
            "assignment", dist.Categorical(weights), infer={"enumerate": "parallel"}
        )
        # Vindex: the global sites may carry batch dims on the left (vectorized particles,
        # predictive draws) and the assignment may be enumerated; plain locs[assignment]
        # indexes the batch dim instead once locs has one.
        loc = Vindex(locs)[..., assignment, :]
        scale = Vindex(scales)[..., assignment, :]
        pyro.sample(
            "x",
            dist.Normal(loc, scale).to_event(1),
            obs=None if x is None else x.index_select(-2, idx),
        )
    return assignment


class DiagonalNormalMixture(dist.TorchDistribution):
    """p(x) = sum_k w_k N(x; loc_k, diag(scale_k^2)): ``MixtureSameFamily(Categorical(w),
    Normal(locs, scales).to_event(1))`` with the same batch and event shapes, samples and
    log density (to rounding: a test; the weights are normalized and clamped away from 0 and
    1 as ``Categorical`` does), whose ``log_prob`` takes about half the tensor passes.

    Its parameters stay as given when a plate expands it (``MixtureSameFamily`` expands every
    parameter to the plate's size and works on the copies): the per-component constant
    log w_k - sum_d log scale_kd - D/2 log 2 pi is computed once, and the rows meet the
    parameters only in (x - loc) / scale. NUTS's potential and the ELBO on the summed-out
    mixture spend nearly all their time here.
    """

    arg_constraints = {
        "weights": dist.constraints.simplex,
        "locs": dist.constraints.real,
        "scales": dist.constraints.positive,
    }
    support = dist.constraints.real_vector
    has_rsample = False

    def __init__(self, weights, locs, scales, batch_shape=None, validate_args=None):
        locs, scales = torch.broadcast_tensors(locs, scales)
        self.weights, self.locs, self.scales = weights, locs, scales
        own = torch.broadcast_shapes(weights.shape[:-1], locs.shape[:-2])
        batch_shape = own if batch_shape is None else torch.Size(batch_shape)
        if not _expands_to(own, batch_shape):
            raise ValueError(f"cannot expand a mixture of batch shape {own} to {batch_shape}")
        super().__init__(batch_shape, locs.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if not _expands_to(self.batch_shape, batch_shape):
            raise ValueError(f"cannot expand a mixture of batch shape {self.batch_shape} to"
                             f" {batch_shape}")  # fmt: skip
        new = DiagonalNormalMixture(self.weights, self.locs, self.scales, batch_shape,
                                    validate_args=False)  # fmt: skip
        new._validate_args = self._validate_args  # its parameters were checked here
        return new

    def _same_family(self) -> dist.MixtureSameFamily:
        mixture = dist.MixtureSameFamily(
            dist.Categorical(self.weights), dist.Normal(self.locs, self.scales).to_event(1)
        )
        return mixture.expand(self.batch_shape)

    def sample(self, sample_shape=()):
        return self._same_family().sample(torch.Size(sample_shape))

    @property
    def mean(self):
        return self._same_family().mean

    @property
    def variance(self):
        return self._same_family().variance

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        d = self.locs.shape[-1]
        probs = self.weights / self.weights.sum(-1, keepdim=True)
        eps = torch.finfo(probs.dtype).eps
        log_w = probs.clamp(min=eps, max=1 - eps).log()
        const = (log_w - self.scales.log().sum(-1)) - 0.5 * d * math.log(2 * math.pi)
        z = (value.unsqueeze(-2) - self.locs) / self.scales
        log_prob = torch.logsumexp(const - 0.5 * (z * z).sum(-1), -1)
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))


def _expands_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` expands to ``target`` (its dims 1 or equal, from the right)."""
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(target)))


def marginal_model(
    x: torch.Tensor | None = None,
    *,
    num_components: int,
    priors: Priors,
    num_data: int | None = None,
    subsample_size: int | None = None,
) -> torch.Tensor:
    """The same model with the assignment summed out: ``x`` holds p(x_n | globals) per row.

    Same arguments, global sites and priors as :func:`model`.
    """
    dtype = torch.get_default_dtype() if x is None else x.dtype
    weights, locs, scales = _globals(num_components, priors, dtype)
    mixture = DiagonalNormalMixture(weights, locs, scales)
    with pyro.plate("data", _num_rows(x, num_data), subsample_size=subsample_size) as idx:
        return pyro.sample("x", mixture, obs=None if x is None else x.index_select(-2, idx))


def mixture_log_likelihood(
    x: np.ndarray, weights: np.ndarray, locs: np.ndarray, scales: np.ndarray
) -> np.ndarray:
    """log p(x_n | weights, locs, scales) per row (numpy, log-sum-exp over components)."""
    log_joint = _log_joint_rows(np.asarray(x, float), weights, locs, np.asarray(scales) ** 2)
    return logsumexp(log_joint, axis=1)


def simulate(
    seed: int,
    num_components: int = 3,
    num_data: int = 300,
    num_features: int = 2,
    *,
    separation: float = 4.0,
    scale: float = 1.0,
    weights: Sequence[float] | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Simulate rows from a diagonal Gaussian mixture with known parameters.

    Component means are ``separation * scale`` apart along x1 (evenly spaced, centred at 0);
    their other coordinates are drawn from Normal(0, separation * scale / 2). Component sds
    are ``scale`` times Uniform(0.7, 1.3) draws; weights are Dirichlet(5, ..., 5) draws unless
    given. Returns a DataFrame with columns ``x1..xD`` and the truth ``weights`` (K,),
    ``locs`` and ``scales`` (K, D), components sorted by ``locs[:, 0]``.
    """
    k, n, d = num_components, num_data, num_features
    if int(k) != k or k < 1 or int(n) != n or n < 2 or int(d) != d or d < 1:
        raise ZooInputError(
            "simulate needs num_components >= 1, num_data >= 2 and num_features >= 1"
        )
    if not (math.isfinite(separation) and separation >= 0):
        raise ZooInputError(f"separation must be a number >= 0, got {separation}")
    if not (math.isfinite(scale) and scale > 0):
        raise ZooInputError(f"scale must be a positive number, got {scale}")
    rng = np.random.default_rng(seed)
    locs = np.zeros((k, d))
    locs[:, 0] = separation * scale * (np.arange(k) - (k - 1) / 2)
    if d > 1:
        locs[:, 1:] = rng.normal(0.0, 0.5 * separation * scale, size=(k, d - 1))
    scales = scale * rng.uniform(0.7, 1.3, size=(k, d))
    if weights is None:
        w = rng.dirichlet(np.full(k, 5.0))
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape != (k,) or not np.all(np.isfinite(w) & (w > 0)):
            raise ZooInputError(f"weights must be {k} positive numbers, got {weights}")
        w = w / w.sum()
    z = rng.choice(k, size=n, p=w)
    x = locs[z] + scales[z] * rng.standard_normal((n, d))
    frame = pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(d)])
    frame.attrs["source"] = "simulated"
    order = np.argsort(locs[:, 0], kind="stable")
    return frame, {"weights": w[order], "locs": locs[order], "scales": scales[order]}


def _log_joint_rows(
    x: np.ndarray, weights: np.ndarray, locs: np.ndarray, variances: np.ndarray
) -> np.ndarray:
    """log(weights_k N(x_n | locs_k, diag variances_k)), shape (N, K)."""
    d = x.shape[1]
    sq = ((x[:, None, :] - locs[None]) ** 2 / variances[None]).sum(-1)
    log_norm = -0.5 * (d * math.log(2 * math.pi) + np.log(variances).sum(-1))
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    return log_w[None] + log_norm[None] - 0.5 * sq
