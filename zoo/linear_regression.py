"""Bayesian linear regression.

Model
-----
For rows n = 1..N with predictors x_n (D features) and response y_n::

    sigma            ~ Exponential(1 / s_y)                       (or HalfNormal, HalfCauchy)
    coef[d]          ~ Normal(0, 2.5 s_y / s_d)                   d = 1..D
    intercept_c      ~ Normal(mean(y), 2.5 s_y)                   intercept at the predictor means
    y_n              ~ Normal(intercept_c + (x_n - xbar) . coef, sigma)

    intercept = intercept_c - xbar . coef                         reported in original units

``s_y`` and ``s_d`` are the sample standard deviations of the response and of each
predictor, so the default priors are weakly informative whatever the units of the columns
(the rstanarm defaults, Gabry and Goodrich 2020). Shapes: ``x`` is (N, D), ``y`` is (N,),
``coef`` has dim ``feature``.

Parametrizations. With ``center=True`` (the default) the model samples ``intercept_c``, which
is nearly uncorrelated with ``coef``; with ``center=False`` it samples ``intercept`` directly
from the same prior (``intercept ~ Normal(mean(y) - xbar . coef, 2.5 s_y)``), so both define the
same posterior but the raw one has the strong intercept-slope correlation that slows NUTS and
makes a mean-field guide over-confident.

Conjugate option (``prior="conjugate"``): ``sigma^2 ~ InverseGamma(a0, b0)`` and the intercept
and coefficients are normal *given sigma* (scales multiplied by ``sigma / s_y``). The posterior
is normal-inverse-gamma, available in closed form as the method ``exact``. With a known noise
scale (``sigma_known``) the posterior is Gaussian and ``exact`` applies too.

References
----------
Gelman, Hill and Vehtari (2020), *Regression and Other Stories*, ch. 9 and 12.
Bishop (2006), *Pattern Recognition and Machine Learning*, section 3.3.
Gabry and Goodrich (2020), *Prior distributions for rstanarm models*.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from torch.distributions.transforms import PowerTransform

from zoo.datasets import numeric_columns, read_csv, split_rows, vendored_csv
from zoo.errors import ZooInputError
from zoo.posterior import ClosedForm, Posterior, PredictiveGrid

SIGMA_PRIORS = ("exponential", "half_normal", "half_cauchy")
PRIOR_FAMILIES = ("weakly_informative", "conjugate")


@dataclass(frozen=True)
class Priors:
    """Resolved prior of the regression, in the units of the data.

    ``intercept_loc``/``intercept_scale`` are for the intercept at the predictor means
    (``intercept_c``) when there is centering, else for the intercept at x = 0 given the
    coefficients. ``coef_scale`` has one entry per feature. ``sigma_scale`` is the mean of
    the exponential prior, the scale of the half-normal/half-Cauchy, or, for the conjugate
    family, the reference scale s such that ``sigma^2 ~ InverseGamma(a0, a0 s^2)`` and the
    intercept and coefficient scales are multiplied by ``sigma / s``.
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


def _sigma_distribution(priors: Priors, dtype: torch.dtype) -> dist.Distribution:
    scale = torch.tensor(priors.sigma_scale, dtype=dtype)
    if priors.family == "conjugate":
        shape = torch.tensor(priors.sigma_shape, dtype=dtype)
        variance = dist.InverseGamma(shape, shape * scale**2)
        return dist.TransformedDistribution(
            variance, [PowerTransform(torch.tensor(0.5, dtype=dtype))]
        )
    if priors.sigma_prior == "exponential":
        return dist.Exponential(1.0 / scale)
    if priors.sigma_prior == "half_normal":
        return dist.HalfNormal(scale)
    return dist.HalfCauchy(scale)


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
    if priors.sigma_known is None:
        sigma = pyro.sample("sigma", _sigma_distribution(priors, dtype))
    else:
        sigma = torch.tensor(priors.sigma_known, dtype=dtype)
    # In the conjugate family the scales of the intercept and coefficients grow with sigma.
    factor = (
        sigma / priors.sigma_scale if priors.family == "conjugate" else torch.ones((), dtype=dtype)
    )
    coef_scale = torch.as_tensor(priors.coef_scale, dtype=dtype)
    coef = pyro.sample(
        "coef",
        dist.Normal(torch.zeros_like(coef_scale), factor.unsqueeze(-1) * coef_scale).to_event(1),
    )
    # Global latents keep their batch dims left of the data plate, so every product with the
    # data is written (x * coef).sum(-1), never x @ coef (STYLE.md, vectorized particles).
    if not intercept:
        mean = (x * coef).sum(-1)
    else:
        xbar = x.mean(0) if x_mean is None else x_mean
        if center:
            a = pyro.sample(
                "intercept_centered",
                dist.Normal(priors.intercept_loc, factor * priors.intercept_scale),
            )
            pyro.deterministic("intercept", a - (xbar * coef).sum(-1))
            mean = a + ((x - xbar) * coef).sum(-1)
        else:
            loc = priors.intercept_loc - (xbar * coef).sum(-1)
            b = pyro.sample("intercept", dist.Normal(loc, factor * priors.intercept_scale))
            mean = b + (x * coef).sum(-1)
    with pyro.plate("data", x.shape[-2]):
        pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    return mean


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
) -> Priors:
    """Weakly informative priors scaled to the data, as rstanarm sets them.

    Unset scales default to ``2.5 sd(y)`` (intercept), ``2.5 sd(y) / sd(x_d)`` (coefficients)
    and ``sd(y)`` (sigma); given ones are used as they are, in the units of the data.
    """
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
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ZooInputError(f"{name} must be a positive number, got {value}")
    sd_y = float(np.std(y, ddof=1)) if len(y) > 1 else 1.0
    if not sd_y > 0:
        raise ZooInputError("the response is constant; a regression needs a response that varies")
    sd_x = np.std(x, axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
    if coef_scale is None:
        scales = tuple(float(2.5 * sd_y / s) for s in sd_x)
    else:
        given = np.broadcast_to(np.asarray(coef_scale, dtype=float), (x.shape[1],))
        if not np.all(np.isfinite(given) & (given > 0)):
            raise ZooInputError(
                f"coefficient prior scales must be positive numbers, got {coef_scale}"
            )
        scales = tuple(float(s) for s in given)
    return Priors(
        family=family,
        intercept_loc=float(np.mean(y)),
        intercept_scale=float(2.5 * sd_y if intercept_scale is None else intercept_scale),
        coef_scale=scales,
        sigma_prior=sigma_prior,
        sigma_scale=float(sd_y if sigma_scale is None else sigma_scale),
        sigma_known=sigma_known,
    )


# --------------------------------------------------------------------------- closed form


@dataclass(frozen=True)
class ExactPosterior:
    """Closed-form posterior of the conjugate (or known-sigma) regression.

    ``mean`` and ``cov`` are those of the vector (intercept, coef...) in original units
    (coef only without an intercept). ``cov`` is the covariance of the marginal multivariate
    t (or Gaussian when sigma is known); ``scale``/``df`` give that t: the coefficients are
    ``mean + sqrt(bn/an) * chol(vn) z / sqrt(chi2_df / df)``. For unknown sigma,
    ``sigma^2 ~ InverseGamma(an, bn)``.
    """

    mean: np.ndarray
    cov: np.ndarray
    vn: np.ndarray
    an: float | None
    bn: float | None
    sigma_known: float | None

    def sigma_moments(self) -> tuple[float, float]:
        """Exact mean and sd of sigma (sigma^2 is inverse gamma)."""
        an, bn = self.an, self.bn
        mean = math.exp(0.5 * math.log(bn) + math.lgamma(an - 0.5) - math.lgamma(an))
        return mean, math.sqrt(bn / (an - 1.0) - mean**2)

    def sample(self, seed: int, num_draws: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Draws of (intercept, coef...) and of sigma (None when sigma is known)."""
        rng = np.random.default_rng(seed)
        chol = np.linalg.cholesky(self.vn)
        z = rng.standard_normal((num_draws, len(self.mean))) @ chol.T
        if self.sigma_known is not None:
            return self.mean + z, None
        sigma2 = self.bn / rng.gamma(self.an, 1.0, size=num_draws)
        sigma = np.sqrt(sigma2)
        return self.mean + sigma[:, None] * z, sigma


def exact_posterior(
    x: np.ndarray,
    y: np.ndarray,
    priors: Priors,
    *,
    intercept: bool = True,
    x_mean: np.ndarray | None = None,
) -> ExactPosterior:
    """Normal-inverse-gamma (or, with known sigma, Gaussian) posterior in closed form.

    Works in the centered coordinates of the model, beta_c = (intercept_c, coef), with design
    Z = [1, x - xbar]; the prior is beta_c ~ N(m0, sigma^2 V0) (conjugate) or N(m0, V0) with
    known sigma. The result is mapped to (intercept, coef) by intercept = intercept_c - xbar.coef.
    (Bishop 2006, eqs. 3.53-3.54; Murphy 2012, section 7.6.3.)
    """
    if priors.family != "conjugate" and priors.sigma_known is None:
        raise ZooInputError(
            "the exact posterior needs --prior conjugate or a known sigma (--sigma-known)"
        )
    n, d = x.shape
    if intercept:
        xbar = x.mean(0) if x_mean is None else np.asarray(x_mean)
        z = np.column_stack([np.ones(n), x - xbar])
        m0 = np.concatenate([[priors.intercept_loc], np.zeros(d)])
        s0 = np.concatenate([[priors.intercept_scale], priors.coef_scale])
        transform = np.eye(d + 1)
        transform[0, 1:] = -xbar
    else:
        z, m0, s0, transform = x, np.zeros(d), np.asarray(priors.coef_scale), np.eye(d)
    if priors.family == "conjugate":
        s0 = s0 / priors.sigma_scale  # beta_c | sigma ~ N(m0, sigma^2 diag(s0^2))
    prec0 = np.diag(1.0 / s0**2)
    if priors.sigma_known is not None:
        noise = priors.sigma_known**2
        if priors.family == "conjugate":
            prec0 = prec0 / noise
        prec = prec0 + z.T @ z / noise
        cov_c = np.linalg.inv(prec)
        mean_c = cov_c @ (prec0 @ m0 + z.T @ y / noise)
        vn = transform @ cov_c @ transform.T
        return ExactPosterior(transform @ mean_c, vn, vn, None, None, priors.sigma_known)
    prec = prec0 + z.T @ z
    vn_c = np.linalg.inv(prec)
    mean_c = vn_c @ (prec0 @ m0 + z.T @ y)
    a0 = priors.sigma_shape
    b0 = a0 * priors.sigma_scale**2
    an = a0 + n / 2.0
    bn = b0 + 0.5 * float(y @ y + m0 @ prec0 @ m0 - mean_c @ prec @ mean_c)
    vn = transform @ vn_c @ transform.T
    return ExactPosterior(transform @ mean_c, bn / (an - 1.0) * vn, vn, an, bn, None)


# --------------------------------------------------------------------------- data


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


def _sine(seed: int) -> pd.DataFrame:
    # Bishop (2006), section 1.1: sin(2 pi x) plus Gaussian noise of sd 0.3 at uniform x.
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 1.0, 30))
    return pd.DataFrame({"x": x, "y": np.sin(2 * np.pi * x) + 0.3 * rng.standard_normal(30)})


def _diabetes(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    frame = bunch.frame.rename(columns={"target": "progression"})
    return frame


def _log_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    out = frame.copy()
    for col in columns:
        out[f"log_{col}"] = np.log(out[col])
    return out.drop(columns=list(columns))


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: how to load it, its response, and options that fit its source."""

    description: str
    load: object  # Callable[[int], pd.DataFrame]
    target: str
    defaults: tuple[tuple[str, object], ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "simulated": DatasetSpec(
        "200 rows from simulate(seed): 3 standard-normal features correlated at 0.5, sigma = 1",
        lambda seed: simulate(seed, 200, 3, correlation=0.5)[0],
        "y",
    ),
    "sine": DatasetSpec(
        "30 noisy points of sin(2 pi x) (Bishop 2006, section 1.1); use with --degree 3", _sine, "y"
    ),
    "diabetes": DatasetSpec(
        "scikit-learn diabetes: 442 patients, 10 baseline variables, disease progression",
        _diabetes,
        "progression",
    ),
    "kidiq": DatasetSpec(
        "posteriordb kidiq: child test score on mother's high school (0/1) and IQ, 434 rows",
        lambda seed: vendored_csv("kidiq.csv"),
        "kid_score",
    ),
    "earnings": DatasetSpec(
        "posteriordb earnings: log earnings on height and sex (male 0/1), 1192 rows",
        lambda seed: _log_columns(vendored_csv("earnings.csv"), ["earn"]),
        "log_earn",
    ),
    "mesquite": DatasetSpec(
        "posteriordb mesquite: log leaf weight on log shrub dimensions and group, 46 rows",
        lambda seed: _log_columns(
            vendored_csv("mesquite.csv"),
            ["weight", "diam1", "diam2", "canopy_height", "total_height", "density"],
        ),
        "log_weight",
    ),
    "sblri": DatasetSpec(
        "posteriordb sblri: 100 rows, 5 independent features, no intercept,"
        " N(0,10) and HalfNormal(10) priors",
        lambda seed: vendored_csv("sblri.csv"),
        "y",
        (
            ("intercept", False),
            ("coef_scale", 10.0),
            ("sigma_prior", "half_normal"),
            ("sigma_scale", 10.0),
        ),
    ),
    "sblrc": DatasetSpec(
        "posteriordb sblrc: as sblri with strongly correlated features",
        lambda seed: vendored_csv("sblrc.csv"),
        "y",
        (
            ("intercept", False),
            ("coef_scale", 10.0),
            ("sigma_prior", "half_normal"),
            ("sigma_scale", 10.0),
        ),
    ),
}


def load_dataset(name: str, seed: int = 0) -> tuple[pd.DataFrame, str, dict[str, object]]:
    """A built-in data set as (frame, response column, default options)."""
    if name not in DATASETS:
        raise ZooInputError(
            f"unknown dataset '{name}' for linear_regression; choose one of: {', '.join(DATASETS)}"
        )
    spec = DATASETS[name]
    frame = spec.load(seed)
    frame.attrs["source"] = name
    return frame, spec.target, dict(spec.defaults)


# --------------------------------------------------------------------------- posterior


def _design(
    frame: pd.DataFrame, features: Sequence[str], degree: int
) -> tuple[np.ndarray, list[str]]:
    x = numeric_columns(frame, features, what="feature")
    if degree == 1:
        return x, list(features)
    return np.column_stack([x[:, 0] ** k for k in range(1, degree + 1)]), [
        features[0] if k == 1 else f"{features[0]}^{k}" for k in range(1, degree + 1)
    ]


def make_posterior(
    data: pd.DataFrame | str,
    *,
    target: str | None = None,
    features: Sequence[str] | None = None,
    degree: int = 1,
    prior: str = "weakly_informative",
    center: bool | None = None,
    intercept: bool = True,
    intercept_scale: float | None = None,
    coef_scale: float | Sequence[float] | None = None,
    sigma_prior: str = "exponential",
    sigma_scale: float | None = None,
    sigma_known: float | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    truth: dict[str, np.ndarray] | None = None,
) -> Posterior:
    """Bind the regression model to data: the posterior every method is run on.

    Parameters
    ----------
    data : DataFrame or str
        A table with a header (as :func:`simulate` returns), a built-in data set name, or the
        path of a CSV file.
    target : str
        Response column (defaults: the built-in set's response, else ``y``).
    features : list of str, optional
        Predictor columns; default all other columns.
    degree : int
        Polynomial basis x, x^2, ..., x^degree of the single feature.
    prior, intercept_scale, coef_scale, sigma_prior, sigma_scale, sigma_known
        See :func:`default_priors`.
    center : bool, optional
        Sample the intercept at the predictor means (default True with an intercept).
    intercept : bool
        False regresses through the origin.
    test_fraction : float
        Share of rows held out (seeded split) for the held-out log predictive density.
    """
    dataset_name = "data"
    if isinstance(data, str):
        if data in DATASETS:
            frame, default_target, defaults = load_dataset(data, seed)
            dataset_name = data
            target = target or default_target
            given = {
                "intercept": intercept,
                "coef_scale": coef_scale,
                "sigma_prior": sigma_prior,
                "sigma_scale": sigma_scale,
            }
            # A built-in set's defaults (e.g. the posteriordb priors) apply unless overridden.
            for key, value in defaults.items():
                unset = {"intercept": True, "sigma_prior": "exponential"}.get(key)
                if given[key] is None or given[key] == unset:
                    given[key] = value
            intercept, coef_scale = given["intercept"], given["coef_scale"]
            sigma_prior, sigma_scale = given["sigma_prior"], given["sigma_scale"]
        else:
            path = Path(data)
            if not path.exists() and path.suffix == "" and len(path.parts) == 1:
                load_dataset(data)  # a name, not a file: the unknown data set, listing them
            frame = read_csv(path)
            dataset_name = frame.attrs.get("source", str(data))
    else:
        frame = data
        dataset_name = frame.attrs.get("source", "data")
    target = target or "y"
    if target not in frame.columns:
        raise ZooInputError(
            f"target column '{target}' is not in the data; columns are:"
            f" {', '.join(map(str, frame.columns))}"
            " (choose one with --target)"
        )
    if features is None:
        features = [c for c in frame.columns if c != target]
    features = list(features)
    if not features:
        raise ZooInputError("no feature columns; pass --features a,b or add predictor columns")
    if target in features:
        raise ZooInputError(f"'{target}' is both the target and a feature; drop it from --features")
    if len(set(features)) != len(features):
        raise ZooInputError("a feature is listed twice in --features")
    if int(degree) != degree or degree < 1:
        raise ZooInputError(f"degree must be a whole number >= 1, got {degree}")
    if degree > 1 and len(features) != 1:
        raise ZooInputError(
            f"--degree {degree} expands one feature; pass exactly one with --features NAME"
        )
    if center and not intercept:
        raise ZooInputError(
            "centering needs an intercept; drop --center or the no-intercept option"
        )
    center = intercept if center is None else center

    x_all, names = _design(frame, features, degree)
    y_all = numeric_columns(frame, [target], what="target")[:, 0]
    train, test = split_rows(len(y_all), test_fraction, seed)
    x, y = x_all[train], y_all[train]
    num_coef = x.shape[1] + int(intercept)
    if len(y) <= num_coef:
        raise ZooInputError(
            f"{len(y)} rows to fit but {num_coef} coefficients; a regression needs more rows than"
            " coefficients (use fewer --features, a lower --degree or a smaller --test-fraction)"
        )
    constant = [n for n, s in zip(names, np.std(x, axis=0)) if not s > 0]
    if constant:
        raise ZooInputError(
            f"feature '{constant[0]}' is constant in the fitted rows; drop it from --features"
        )

    priors = default_priors(
        x,
        y,
        family=prior,
        intercept_scale=intercept_scale,
        coef_scale=coef_scale,
        sigma_prior=sigma_prior,
        sigma_scale=sigma_scale,
        sigma_known=sigma_known,
    )
    x_mean = x.mean(0)
    tensor = functools.partial(torch.as_tensor, dtype=torch.get_default_dtype())
    bound = functools.partial(
        model, priors=priors, x_mean=tensor(x_mean), center=center, intercept=intercept
    )
    functools.update_wrapper(bound, model)

    sites = (
        (("intercept",) if intercept else ())
        + ("coef",)
        + (("sigma",) if sigma_known is None else ())
    )
    closed_forms = {}
    if prior == "conjugate" or sigma_known is not None:
        closed_forms["exact"] = functools.partial(
            _exact_method,
            exact_posterior(x, y, priors, intercept=intercept, x_mean=x_mean),
            intercept,
            x_mean if center else None,
        )

    # Posterior predictive bands along the feature with the largest standardized slope
    # (the others held at their means); for a polynomial, along the expanded feature.
    axis = 0 if degree > 1 else int(np.argmax(np.abs(_ols_slopes(x, y)) * np.std(x, axis=0)))
    base = numeric_columns(frame, [features[axis if degree == 1 else 0]], what="feature")[:, 0]
    lo, hi = base[train].min(), base[train].max()
    pad = 0.05 * (hi - lo)
    grid_values = np.linspace(lo - pad, hi + pad, 60)
    grid_x = np.tile(x_mean, (len(grid_values), 1))
    if degree > 1:
        grid_x = np.column_stack([grid_values**k for k in range(1, degree + 1)])
    else:
        grid_x[:, axis] = grid_values
    grid = PredictiveGrid(
        label=features[axis if degree == 1 else 0],
        values=grid_values,
        data={"x": tensor(grid_x)},
        observed_x=base[train],
        observed_y=y,
    )

    description = {
        "response": target,
        "features": ", ".join(names),
        "prior": priors.describe(names, intercept),
        "parametrization": (
            "intercept sampled at the predictor means (centered)"
            if center
            else "raw: intercept sampled at x = 0"
            if intercept
            else "no intercept"
        ),
        "rows": f"{len(train)} fitted, {len(test)} held out",
    }
    return Posterior(
        model_name="linear_regression",
        dataset=dataset_name,
        model=bound,
        data={"x": tensor(x), "y": tensor(y)},
        test_data={"x": tensor(x_all[test]), "y": tensor(y_all[test])} if len(test) else None,
        obs_site="y",
        sites=sites,
        dims={"coef": ["feature"]},
        coords={"feature": names},
        closed_forms=closed_forms,
        grid=grid,
        truth=truth,
        description=description,
    )


def _ols_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(x)), x])
    return np.linalg.lstsq(design, y, rcond=None)[0][1:]


def _exact_method(
    post: ExactPosterior, intercept: bool, x_mean: np.ndarray | None, seed: int, num_draws: int
) -> ClosedForm:
    beta, sigma = post.sample(seed, num_draws)
    sd = np.sqrt(np.diag(post.cov))
    draws: dict[str, np.ndarray] = {}
    moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if intercept:
        draws["intercept"] = beta[:, 0]
        moments["intercept"] = (post.mean[0], sd[0])
        beta_c, mean_c, sd_c = beta[:, 1:], post.mean[1:], sd[1:]
    else:
        beta_c, mean_c, sd_c = beta, post.mean, sd
    draws["coef"] = beta_c
    moments["coef"] = (mean_c, sd_c)
    if x_mean is not None:  # the centered model's own latent site
        draws["intercept_centered"] = draws["intercept"] + beta_c @ x_mean
    if sigma is not None:
        draws["sigma"] = sigma
        moments["sigma"] = tuple(np.asarray(v) for v in post.sigma_moments())
    return ClosedForm(draws=draws, moments=moments)


def with_options(posterior: Posterior, **changes: object) -> Posterior:
    """A copy of ``posterior`` with some fields replaced (e.g. another description)."""
    return replace(posterior, **changes)
