"""``make_posterior``: the regression bound to data (centering, polynomial basis, held-out rows),
with ``exact`` as its closed-form method.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo.datasets import numeric_columns, read_csv, split_rows
from zoo.errors import ZooInputError
from zoo.linear_regression.data import DATASETS, load_dataset
from zoo.linear_regression.exact import ExactPosterior, exact_posterior
from zoo.linear_regression.model import default_priors, model
from zoo.posterior import ClosedForm, Posterior, PredictiveGrid, bind


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
    sigma_shape: float | None = None,
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
    prior : str
        ``weakly_informative`` (default), ``conjugate`` (normal-inverse-gamma; gives the
        method ``exact``) or ``flat`` (improper uniform intercept and coefficients; needs more
        rows than coefficients and a design of full rank, where the posterior is proper).
    coef_scale : float or list of float, optional
        One prior scale for every coefficient, or one per column of the design (per feature,
        in the order of ``features``; per power with ``degree``).
    intercept_scale, sigma_prior, sigma_scale, sigma_known, sigma_shape
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
    if coef_scale is not None and not np.isscalar(coef_scale):
        scales = list(coef_scale)
        if len(scales) not in (1, len(names)):
            raise ZooInputError(
                f"{len(scales)} coefficient prior scales for {len(names)} coefficients"
                f" ({', '.join(names)}); give one for all, or one per coefficient in that order"
            )
    if prior == "flat":
        design = np.column_stack([np.ones(len(y)), x]) if intercept else x
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ZooInputError(
                "with a flat prior the posterior is improper: the features are collinear in"
                " the fitted rows (the design is not of full rank); drop a feature or choose"
                " another --prior"
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
        sigma_shape=sigma_shape,
    )
    x_mean = x.mean(0)
    tensor = functools.partial(torch.as_tensor, dtype=torch.get_default_dtype())
    bound = bind(model, priors=priors, x_mean=tensor(x_mean), center=center, intercept=intercept)

    sites = (
        (("intercept",) if intercept else ())
        + ("coef",)
        + (("sigma",) if sigma_known is None else ())
    )
    closed_forms = {}
    if prior == "conjugate" or sigma_known is not None:  # flat too, with sigma known
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
        init_values=functools.partial(
            least_squares_start,
            x,
            y,
            center=center,
            intercept=intercept,
            sigma_known=sigma_known is not None,
            x_mean=x_mean,
        ),
    )


def least_squares_start(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    *,
    center: bool = True,
    intercept: bool = True,
    sigma_known: bool = False,
    x_mean: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """A data-informed start: least squares for the intercept and coefficients, the residual
    sd for sigma (in the sites of the model's parametrization), moved by one standard error
    of each, in a direction drawn with ``seed``.

    Under any prior that is not sharply informative the posterior mode lies within a few
    posterior sds of this point, where the median of prior draws can lie thousands away
    (earnings in dollars). The move, of about a posterior sd, gives NUTS chains (one seed a
    chain) different starts; an optimizer goes to the mode from any of them.
    """
    n = len(y)
    design = np.column_stack([np.ones(n), x]) if intercept else x
    beta = np.linalg.lstsq(design, y, rcond=None)[0]
    residual = y - design @ beta
    dof = max(n - design.shape[1], 1)
    sd_y = float(np.std(y)) if n > 1 else 1.0
    # An exact fit has no residual; a small positive sigma keeps log sigma finite.
    sigma = max(float(np.sqrt(residual @ residual / dof)), 1e-6 * max(sd_y, 1e-300))
    rng = np.random.default_rng(seed)
    se = sigma * np.sqrt(np.clip(np.diag(np.linalg.pinv(design.T @ design)), 0.0, None))
    beta = beta + se * rng.standard_normal(len(beta))
    sigma = sigma * float(np.exp(rng.standard_normal() / np.sqrt(2.0 * dof)))
    tensor = functools.partial(torch.as_tensor, dtype=torch.get_default_dtype())
    values = {"coef": tensor(beta[1:] if intercept else beta)}
    if intercept:
        if center:
            xbar = x.mean(0) if x_mean is None else x_mean
            values["intercept_centered"] = tensor(beta[0] + xbar @ beta[1:])
        else:
            values["intercept"] = tensor(beta[0])
    if not sigma_known:
        values["sigma"] = tensor(sigma)
    return values


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
