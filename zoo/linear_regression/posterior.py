"""``make_posterior``: the regression bound to data (centering, polynomial basis, held-out rows),
with ``exact`` as its closed-form method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from zoo.datasets import numeric_columns, resolve_data, split_rows
from zoo.errors import ZooInputError
from zoo.linear_regression.data import DATASETS, Builtin, load_dataset
from zoo.linear_regression.exact import ExactPosterior, exact_posterior
from zoo.linear_regression.model import Priors, default_priors, model
from zoo.methods import declare_methods
from zoo.posterior import ClosedForm, ModelForms, Posterior, PredictiveGrid, bind
from zoo.priors import draw_from_prior
from zoo.registry import get_model

#: The model's registry key, in its posteriors and messages.
NAME = "linear_regression"

#: What a replication of :func:`simulated_posterior` simulates, for the calibration page.
SIMULATION_DESIGN = (
    "parameters drawn from the prior and a response simulated from them on the {num_data}"
    " rows of predictors of {dataset}, under the priors that data set sets"
)


class _Rows(NamedTuple):
    """The design (after any polynomial expansion) and the response, split into fitted and
    held-out rows, with the design's column names."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    names: list[str]
    target: str


def make_posterior(
    data: pd.DataFrame | str | Path,
    *,
    target: str | None = None,
    features: Sequence[str] | None = None,
    degree: int = 1,
    prior: str = "weakly_informative",
    center: bool | None = None,
    intercept: bool | None = None,
    truth: dict[str, np.ndarray] | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    **prior_options: Any,
) -> Posterior:
    """Bind the regression model to data: the posterior every method is run on.

    Parameters
    ----------
    data : DataFrame, str or Path
        A table with a header (as :func:`simulate` returns), the name of a built-in data set
        (:data:`DATASETS`, which brings its response and options) or the path of a CSV file.
    target : str, optional
        Response column; default the built-in set's response, else ``y``.
    features : list of str, optional
        Predictor columns; default all other columns.
    degree : int
        Polynomial basis x, x^2, ..., x^degree of the single feature.
    prior : str
        ``weakly_informative`` (default), ``conjugate`` (normal-inverse-gamma; gives the method
        ``exact``) or ``flat`` (improper uniform intercept and coefficients; needs more rows
        than coefficients and a design of full rank, where the posterior is proper).
    center : bool, optional
        Sample the intercept at the predictor means (default True with an intercept).
    intercept : bool, optional
        False regresses through the origin (default True, or the built-in set's).
    truth : mapping, optional
        True ``intercept``, ``coef``, ``sigma`` of simulated data (as :func:`simulate` gives).
    test_fraction, seed : float, int
        Share of rows held out (seeded split) for the held-out log predictive density.
    dtype, device
        Of every tensor of the posterior, whatever torch's defaults; the model follows its data.
    **prior_options
        Keywords of :func:`default_priors` (``intercept_scale``, ``coef_scale``: one, or one
        per column of the design, ``sigma_prior``, ``sigma_scale``, ``sigma_known``,
        ``sigma_shape``); a built-in set's own apply where not given.
    """
    rows, priors, dataset, options = _resolved(
        data, target, features, degree, prior, center, intercept, test_fraction, seed,
        prior_options,
    )  # fmt: skip
    return _posterior(rows, priors, dataset, degree, options, truth, dtype, device)


def _resolved(data, target, features, degree, prior, center, intercept, test_fraction, seed,
              prior_options) -> tuple[_Rows, Priors, str, dict[str, bool]]:  # fmt: skip
    """The checked rows, the priors they set, the data set's name and the model options."""
    load = functools.partial(load_dataset, seed=seed)
    frame, dataset, builtin = resolve_data(data, NAME, DATASETS, load)
    target, intercept, prior_options = _options(builtin, target, intercept, prior_options)
    rows = _fit_rows(frame, target, features, degree, test_fraction, seed)
    options = {"center": _center(center, intercept), "intercept": intercept}
    _check_fit(rows, prior=prior, coef_scale=prior_options.get("coef_scale"), intercept=intercept)
    priors = default_priors(rows.x, rows.y, family=prior, **prior_options)
    return rows, priors, dataset, options


def simulated_posterior(
    data: pd.DataFrame | str | Path,
    replication_seed: int,
    *,
    target: str | None = None,
    features: Sequence[str] | None = None,
    degree: int = 1,
    prior: str = "weakly_informative",
    center: bool | None = None,
    intercept: bool | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **prior_options: Any,
) -> tuple[dict[str, np.ndarray], Posterior]:
    """One replication of simulation-based calibration: the true parameters drawn from the
    prior (seeded ``replication_seed``) and the posterior of a response simulated from them
    on the predictors of ``data``.

    The priors are those :func:`make_posterior` sets on ``data`` (scaled to its response),
    fixed for every replication: they must not move with the simulated response, or the
    ranks of even the exact posterior would not be uniform. Same options as
    :func:`make_posterior`. Returns the truth (``intercept``, ``coef``, ``sigma``, as the
    model's sites hold them) and the Posterior of (x, simulated y), every row fitted.
    """
    if prior == "flat":
        raise ZooInputError(
            "calibration draws the parameters from the prior; a flat prior has no draws:"
            " choose --prior weakly_informative or conjugate"
        )
    rows, priors, dataset, options = _resolved(
        data, target, features, degree, prior, center, intercept, 0.0, seed, prior_options
    )
    intercept = options["intercept"]
    x = torch.as_tensor(rows.x, dtype=dtype)
    x_mean = x.mean(0)
    sites = (("intercept",) if intercept else ()) + ("coef",)
    sites += () if priors.sigma_known is not None else ("sigma",)
    truth, y = draw_from_prior(
        model,
        replication_seed,
        sites,
        "y",
        x,
        None,
        dtype=dtype,
        priors=priors,
        x_mean=x_mean,
        **options,
    )
    simulated = rows._replace(y=y, y_test=y[:0])
    return truth, _posterior(simulated, priors, dataset, degree, options, truth, dtype, "cpu")


def _options(
    builtin: Builtin | None, target: str | None, intercept: bool | None, prior_options: dict
) -> tuple[str, bool, dict[str, Any]]:
    """The response column, ``intercept`` and the prior options, where not given those of the
    built-in set (posteriordb's priors), else the defaults."""
    if builtin is not None:
        given = {"intercept": intercept, **prior_options}
        given.update({k: v for k, v in builtin.defaults.items() if given.get(k) is None})
        intercept, prior_options = given.pop("intercept"), given
        target = target or builtin.target
    return target or "y", True if intercept is None else intercept, prior_options


def _center(center: bool | None, intercept: bool) -> bool:
    """Whether the model samples the intercept at the predictor means (default: with one)."""
    if center and not intercept:
        raise ZooInputError(
            "centering needs an intercept; drop --center or the no-intercept option"
        )
    return intercept if center is None else center


def _fit_rows(
    frame: pd.DataFrame,
    target: str,
    features: Sequence[str] | None,
    degree: int,
    test_fraction: float,
    seed: int,
) -> _Rows:
    """The checked columns as numbers: the design and response, split (seeded)."""
    named = features is not None
    features = _features(frame, target, features, degree)
    x = numeric_columns(frame, features, what="feature", named=named)
    names = list(features)
    if degree > 1:
        x = np.column_stack([x[:, 0] ** k for k in range(1, degree + 1)])
        names = [features[0] if k == 1 else f"{features[0]}^{k}" for k in range(1, degree + 1)]
    y = numeric_columns(frame, [target], what="target")[:, 0]
    train, test = split_rows(len(y), test_fraction, seed)
    return _Rows(x[train], y[train], x[test], y[test], names, target)


def _features(
    frame: pd.DataFrame, target: str, features: Sequence[str] | None, degree: int
) -> list[str]:
    """The feature columns (default: every column but the target), checked with the target
    and the degree."""
    if target not in frame.columns:
        raise ZooInputError(
            f"target column '{target}' is not in the data; columns are:"
            f" {', '.join(map(str, frame.columns))}"
            " (choose one with --target)"
        )
    features = [c for c in frame.columns if c != target] if features is None else list(features)
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
    return features


def _check_fit(rows: _Rows, *, prior: str, coef_scale: object, intercept: bool) -> None:
    """Raise a ZooInputError where the fitted rows cannot identify the regression."""
    num_coef = rows.x.shape[1] + int(intercept)
    if len(rows.y) <= num_coef:
        raise ZooInputError(
            f"{len(rows.y)} rows to fit but {num_coef} coefficients; a regression needs more"
            " rows than coefficients (use fewer --features, a lower --degree or a smaller"
            " --test-fraction)"
        )
    constant = [n for n, s in zip(rows.names, np.std(rows.x, axis=0)) if not s > 0]
    if constant:
        raise ZooInputError(
            f"feature '{constant[0]}' is constant in the fitted rows; drop it from --features"
        )
    if coef_scale is not None and not np.isscalar(coef_scale):
        scales = list(coef_scale)
        if len(scales) not in (1, len(rows.names)):
            raise ZooInputError(
                f"{len(scales)} coefficient prior scales for {len(rows.names)} coefficients"
                f" ({', '.join(rows.names)}); give one for all, or one per coefficient in that"
                " order"
            )
    if prior == "flat":
        design = np.column_stack([np.ones(len(rows.y)), rows.x]) if intercept else rows.x
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ZooInputError(
                "with a flat prior the posterior is improper: the features are collinear in"
                " the fitted rows (the design is not of full rank); drop a feature or choose"
                " another --prior"
            )


def _posterior(
    rows: _Rows,
    priors: Priors,
    dataset: str,
    degree: int,
    options: dict[str, bool],
    truth: dict[str, np.ndarray] | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Posterior:
    """The Posterior of the checked rows under ``priors``, with the model ``options``
    (``center``, ``intercept``) bound; every tensor of ``dtype`` on ``device``."""
    tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    x_mean = rows.x.mean(0)
    closed_forms = {}
    if priors.family == "conjugate" or priors.sigma_known is not None:  # flat, sigma known
        exact = exact_posterior(
            rows.x, rows.y, priors, intercept=options["intercept"], x_mean=x_mean
        )
        centered_at = x_mean if options["center"] else None
        closed_forms["exact"] = functools.partial(
            _exact_method, exact, options["intercept"], centered_at
        )
    sigma = () if priors.sigma_known is not None else ("sigma",)
    held_out = {"x": tensor(rows.x_test), "y": tensor(rows.y_test)}
    return Posterior(
        model_name=NAME,
        dataset=dataset,
        forms=ModelForms(fit=bind(model, priors=priors, x_mean=tensor(x_mean), **options)),
        data={"x": tensor(rows.x), "y": tensor(rows.y)},
        test_data=held_out if len(rows.y_test) else None,
        obs_site="y",
        sites=(("intercept",) if options["intercept"] else ()) + ("coef",) + sigma,
        dims={"coef": ["feature"]},
        coords={"feature": rows.names},
        methods=declare_methods(closed_forms, get_model(NAME).guides),
        closed_forms=closed_forms,
        grid=_grid(rows, degree, x_mean, tensor),
        truth=truth,
        description=_description(rows, priors, **options),
        init_values=functools.partial(
            least_squares_start,
            rows.x,
            rows.y,
            sigma_known=priors.sigma_known is not None,
            x_mean=x_mean,
            dtype=dtype,
            device=device,
            **options,
        ),
    )


def _grid(
    rows: _Rows, degree: int, x_mean: np.ndarray, tensor: Callable[..., torch.Tensor]
) -> PredictiveGrid:
    """Posterior predictive bands along the feature with the largest standardized slope (the
    others held at their means); for a polynomial, along the expanded feature."""
    x = rows.x
    axis = 0 if degree > 1 else int(np.argmax(np.abs(_ols_slopes(x, rows.y)) * np.std(x, axis=0)))
    lo, hi = x[:, axis].min(), x[:, axis].max()
    pad = 0.05 * (hi - lo)
    values = np.linspace(lo - pad, hi + pad, 60)
    if degree > 1:
        grid_x = np.column_stack([values**k for k in range(1, degree + 1)])
    else:
        grid_x = np.tile(x_mean, (len(values), 1))
        grid_x[:, axis] = values
    return PredictiveGrid(
        label=rows.names[axis],
        values=values,
        data={"x": tensor(grid_x)},
        observed_x=x[:, axis],
        observed_y=rows.y,
    )


def _description(rows: _Rows, priors: Priors, *, center: bool, intercept: bool) -> dict[str, str]:
    return {
        "response": rows.target,
        "features": ", ".join(rows.names),
        "prior": priors.describe(rows.names, intercept),
        "parametrization": (
            "intercept sampled at the predictor means (centered)"
            if center
            else "raw: intercept sampled at x = 0"
            if intercept
            else "no intercept"
        ),
        "rows": f"{len(rows.y)} fitted, {len(rows.y_test)} held out",
    }


def least_squares_start(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    *,
    center: bool = True,
    intercept: bool = True,
    sigma_known: bool = False,
    x_mean: np.ndarray | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A data-informed start: least squares for the intercept and coefficients, the residual
    sd for sigma (in the sites of the model's parametrization), moved by one standard error
    of each, in a direction drawn with ``seed``; tensors of ``dtype`` on ``device``.

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
    tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
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
