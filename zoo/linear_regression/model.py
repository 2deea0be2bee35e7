"""The regression's priors (scaled to the data, or conjugate), its Pyro model and ``simulate``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch

from zoo.errors import ZooInputError
from zoo.priors import SCALE_PRIORS, sigma_distribution

SIGMA_PRIORS = SCALE_PRIORS


PRIOR_FAMILIES = ("weakly_informative", "conjugate", "flat")


@dataclass(frozen=True)
class Priors:
    """Resolved prior of the regression, in the units of the data.

    ``intercept_loc``/``intercept_scale`` are for the intercept at the predictor means
    (``intercept_c``) when there is centering, else for the intercept at x = 0 given the
    coefficients. ``coef_scale`` has one entry per feature. ``sigma_scale`` is the mean of
    the exponential prior, the scale of the half-normal/half-Cauchy, or, for the conjugate
    family, the reference scale s such that ``sigma^2 ~ InverseGamma(a0, a0 s^2)`` and the
    intercept and coefficient scales are multiplied by ``sigma / s``. The ``flat`` family puts
    an improper uniform prior on the intercept and coefficients (``intercept_loc``,
    ``intercept_scale`` and ``coef_scale`` are then unused) and keeps ``sigma_prior`` on
    sigma; its posterior is proper only with more rows than coefficients and a design of full
    rank, which ``make_posterior`` checks.
    """

    family: str
    intercept_loc: float
    intercept_scale: float
    coef_scale: tuple[float, ...]
    sigma_prior: str
    sigma_scale: float
    sigma_shape: float = 2.0
    sigma_known: float | None = None

    def describe(self, feature_names: Sequence[str], intercept: bool) -> str:
        coefs = ", ".join(f"{n}: {s:.3g}" for n, s in zip(feature_names, self.coef_scale))
        given = " (x sigma/s)" if self.family == "conjugate" else ""
        parts = []
        if self.family == "flat":
            if self.sigma_known is not None:
                parts.append(f"sigma = {self.sigma_known:.4g} (known)")
            else:
                parts.append(f"sigma ~ {self.sigma_prior}({self.sigma_scale:.4g})")
            parts.append(("intercept and coef" if intercept else "coef") + " ~ flat (improper)")
            return "; ".join(parts)
        if self.sigma_known is not None:
            parts.append(f"sigma = {self.sigma_known:.4g} (known)")
        elif self.family == "conjugate":
            parts.append(
                f"sigma^2 ~ InverseGamma({self.sigma_shape:g}, {self.sigma_shape:g} * "
                f"{self.sigma_scale:.4g}^2)"
            )
        else:
            parts.append(f"sigma ~ {self.sigma_prior}({self.sigma_scale:.4g})")
        if intercept:
            parts.append(
                f"intercept ~ Normal({self.intercept_loc:.4g}, {self.intercept_scale:.4g}{given})"
            )
        parts.append(f"coef ~ Normal(0, [{coefs}]{given})")
        return "; ".join(parts)


def _flat(dtype: torch.dtype, event_shape: tuple[int, ...] = ()) -> dist.Distribution:
    """The improper uniform prior over the reals (log density 0; it cannot be sampled)."""
    return dist.ImproperUniform(dist.constraints.real, torch.Size(), torch.Size(event_shape))


def model(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    priors: Priors,
    x_mean: torch.Tensor | None = None,
    center: bool = True,
    intercept: bool = True,
) -> torch.Tensor:
    """Pyro model of Bayesian linear regression (see the module docstring).

    Parameters
    ----------
    x : tensor (N, D)
        Predictors (after any polynomial expansion).
    y : tensor (N,), optional
        Response; None draws from the prior predictive.
    priors : Priors
        Resolved priors (see :func:`default_priors`).
    x_mean : tensor (D,), optional
        Predictor means of the training rows, where the intercept prior is placed; None
        uses the means of ``x``. Pass the training means when ``x`` holds new rows.
    center : bool
        True samples the intercept at the predictor means (site ``intercept_centered``) and
        reports ``intercept`` as a deterministic site; False samples ``intercept`` directly.
        Both give the same posterior.
    intercept : bool
        False fits a regression through the origin.

    Returns
    -------
    tensor (N,)
        The mean of y for each row.
    """
    dtype = x.dtype
    sigma = _sample_sigma(priors, dtype)
    # In the conjugate family the scales of the intercept and coefficients grow with sigma.
    factor = (
        sigma / priors.sigma_scale if priors.family == "conjugate" else torch.ones((), dtype=dtype)
    )
    coef = _sample_coef(priors, factor, dtype)
    # Global latents keep their batch dims left of the data plate, so every product with the
    # data is written (x * coef).sum(-1), never x @ coef (STYLE.md, vectorized particles).
    if not intercept:
        mean = (x * coef).sum(-1)
    else:
        xbar = x.mean(0) if x_mean is None else x_mean
        mean = _sample_intercept(x, xbar, coef, priors=priors, factor=factor, center=center)
    with pyro.plate("data", x.shape[-2]):
        pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    return mean


def _sample_sigma(priors: Priors, dtype: torch.dtype) -> torch.Tensor:
    """The site ``sigma`` (sigma itself in the conjugate family), or the known sigma."""
    if priors.sigma_known is not None:
        return torch.tensor(priors.sigma_known, dtype=dtype)
    prior = sigma_distribution(
        priors.sigma_prior,
        priors.sigma_scale,
        dtype=dtype,
        conjugate_shape=priors.sigma_shape if priors.family == "conjugate" else None,
    )
    return pyro.sample("sigma", prior)


def _sample_coef(priors: Priors, factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The site ``coef`` (D,): flat, or Normal(0, factor * coef_scale)."""
    coef_scale = torch.as_tensor(priors.coef_scale, dtype=dtype)
    if priors.family == "flat":
        return pyro.sample("coef", _flat(dtype, coef_scale.shape))
    prior = dist.Normal(torch.zeros_like(coef_scale), factor.unsqueeze(-1) * coef_scale)
    return pyro.sample("coef", prior.to_event(1))


def _sample_intercept(
    x: torch.Tensor,
    xbar: torch.Tensor,
    coef: torch.Tensor,
    *,
    priors: Priors,
    factor: torch.Tensor,
    center: bool,
) -> torch.Tensor:
    """The intercept's site (at the predictor means ``xbar`` when ``center``, with
    ``intercept`` then deterministic) and the mean of y for each row."""
    flat = priors.family == "flat"
    if center:
        a = pyro.sample(
            "intercept_centered",
            _flat(x.dtype)
            if flat
            else dist.Normal(priors.intercept_loc, factor * priors.intercept_scale),
        )
        pyro.deterministic("intercept", a - (xbar * coef).sum(-1))
        return a + ((x - xbar) * coef).sum(-1)
    loc = priors.intercept_loc - (xbar * coef).sum(-1)
    b = pyro.sample(
        "intercept",
        _flat(x.dtype) if flat else dist.Normal(loc, factor * priors.intercept_scale),
    )
    return b + (x * coef).sum(-1)


def default_priors(
    x: np.ndarray,
    y: np.ndarray,
    *,
    family: str = "weakly_informative",
    intercept_scale: float | None = None,
    coef_scale: float | Sequence[float] | None = None,
    sigma_prior: str = "exponential",
    sigma_scale: float | None = None,
    sigma_known: float | None = None,
    sigma_shape: float | None = None,
) -> Priors:
    """Weakly informative priors scaled to the data, as rstanarm sets them.

    Unset scales default to ``2.5 sd(y)`` (intercept), ``2.5 sd(y) / sd(x_d)`` (coefficients)
    and ``sd(y)`` (sigma); given ones are used as they are, in the units of the data.
    ``coef_scale`` is one scale for every coefficient or one per column of ``x``.
    ``sigma_shape`` is the conjugate family's a0 (default 2): ``sigma^2 ~ InverseGamma(a0,
    a0 s^2)``, s the sigma scale. ``family="flat"``: improper uniform intercept and
    coefficients (no scales for them may be given).
    """
    _check_prior_options(
        family,
        sigma_prior,
        intercept_scale=intercept_scale,
        coef_scale=coef_scale,
        sigma_scale=sigma_scale,
        sigma_known=sigma_known,
        sigma_shape=sigma_shape,
    )
    sd_y = float(np.std(y, ddof=1)) if len(y) > 1 else 1.0
    if not sd_y > 0:
        raise ZooInputError("the response is constant; a regression needs a response that varies")
    return Priors(
        family=family,
        intercept_loc=float(np.mean(y)),
        intercept_scale=float(2.5 * sd_y if intercept_scale is None else intercept_scale),
        coef_scale=_coef_scales(x, sd_y, coef_scale),
        sigma_prior=sigma_prior,
        sigma_scale=float(sd_y if sigma_scale is None else sigma_scale),
        sigma_shape=float(2.0 if sigma_shape is None else sigma_shape),
        sigma_known=sigma_known,
    )


def _check_prior_options(
    family: str,
    sigma_prior: str,
    *,
    intercept_scale: float | None,
    coef_scale: float | Sequence[float] | None,
    sigma_scale: float | None,
    sigma_known: float | None,
    sigma_shape: float | None,
) -> None:
    """Raise a ZooInputError for an unknown family or an option :func:`default_priors` cannot
    take (the coefficient scales are checked against the data by :func:`_coef_scales`)."""
    if family not in PRIOR_FAMILIES:
        raise ZooInputError(f"unknown prior '{family}'; choose one of: {', '.join(PRIOR_FAMILIES)}")
    if sigma_prior not in SIGMA_PRIORS:
        raise ZooInputError(
            f"unknown sigma prior '{sigma_prior}'; choose one of: {', '.join(SIGMA_PRIORS)}"
        )
    for name, value in (
        ("intercept scale", intercept_scale),
        ("sigma scale", sigma_scale),
        ("known sigma", sigma_known),
        ("sigma shape (a0)", sigma_shape),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ZooInputError(f"{name} must be a positive number, got {value}")
    if sigma_shape is not None and family != "conjugate":
        raise ZooInputError(
            "the sigma shape a0 (--prior-sigma-shape) is the conjugate prior's:"
            " sigma^2 ~ InverseGamma(a0, a0 s^2); use it with --prior conjugate"
        )
    if family == "flat" and (intercept_scale is not None or coef_scale is not None):
        raise ZooInputError(
            "a flat prior has no scale; drop --prior-intercept-scale and --prior-coef-scale,"
            " or choose another --prior"
        )


def _coef_scales(
    x: np.ndarray, sd_y: float, coef_scale: float | Sequence[float] | None
) -> tuple[float, ...]:
    """One prior scale per column of ``x``: ``2.5 sd(y) / sd(x_d)``, or the given ones (one
    for all, or one per column)."""
    if coef_scale is None:
        sd_x = np.std(x, axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
        return tuple(float(2.5 * sd_y / s) for s in sd_x)
    given = np.atleast_1d(np.asarray(coef_scale, dtype=float))
    if given.ndim != 1 or len(given) not in (1, x.shape[1]):
        raise ZooInputError(
            f"{len(given)} coefficient prior scales for {x.shape[1]} coefficients; give one"
            " for all, or one per feature in the order of --features"
        )
    given = np.broadcast_to(given, (x.shape[1],))
    if not np.all(np.isfinite(given) & (given > 0)):
        raise ZooInputError(f"coefficient prior scales must be positive numbers, got {coef_scale}")
    return tuple(float(s) for s in given)


def simulate(
    seed: int,
    num_data: int = 100,
    num_features: int = 3,
    *,
    correlation: float = 0.0,
    intercept: float = 1.0,
    coef: Sequence[float] | None = None,
    sigma: float = 1.0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Simulate a regression data set with known parameters.

    Features are standard normal with pairwise ``correlation``; ``coef`` defaults to
    1, -0.5, 0.25, ... Returns a DataFrame with columns ``x1..xD`` and ``y``, and the true
    ``intercept``, ``coef`` and ``sigma``.
    """
    if num_data < 2 or num_features < 1:
        raise ZooInputError("simulate needs num_data >= 2 and num_features >= 1")
    if not -1.0 / max(num_features - 1, 1) < correlation < 1.0:
        raise ZooInputError(f"correlation {correlation} does not give a valid correlation matrix")
    rng = np.random.default_rng(seed)
    corr = np.full((num_features, num_features), correlation) + (1 - correlation) * np.eye(
        num_features
    )
    x = rng.standard_normal((num_data, num_features)) @ np.linalg.cholesky(corr).T
    true_coef = (
        np.asarray(coef, dtype=float)
        if coef is not None
        else np.array([(-0.5) ** j for j in range(num_features)])
    )
    if true_coef.shape != (num_features,):
        raise ZooInputError(f"coef must have {num_features} entries, got {true_coef.shape[0]}")
    y = intercept + x @ true_coef + sigma * rng.standard_normal(num_data)
    frame = pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(num_features)])
    frame["y"] = y
    frame.attrs["source"] = "simulated"
    truth = {"intercept": np.array(intercept), "coef": true_coef, "sigma": np.array(sigma)}
    return frame, truth
