"""``make_posterior``: PPCA bound to data, with ML and EM as its closed-form methods."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from zoo.datasets import numeric_columns, resolve_data, split_rows
from zoo.errors import ZooInputError
from zoo.methods import declare_methods
from zoo.posterior import ClosedForm, LocalLatents, ModelForms, Posterior, bind
from zoo.ppca.closed_forms import PPCAFit, _check_fit_input, fit_em, fit_ml
from zoo.ppca.data import DATASETS, Dataset, _feature_text, load_dataset
from zoo.ppca.metrics import cov_entries, cov_entry_names, covariance_metrics, identified
from zoo.ppca.model import SITES, Priors, default_priors, local_model, model, summary_model
from zoo.priors import draw_from_prior
from zoo.registry import get_model

logger = logging.getLogger(__name__)

#: Why ``ml``/``em`` may be missing from a posterior, for the registry's closed_form_hints.
CLOSED_FORM_HINTS = {
    "ml": "'ml' needs more fitted rows than features (a full-rank sample covariance); use em,"
    " fewer --features or a smaller --test-fraction",
    "em": "'em' needs fitted rows that span more than K dimensions (else the noise variance"
    " is 0); use a smaller --latent-dim or more rows",
}


#: The identified quantities (:func:`zoo.ppca.metrics.identified`) on which methods are
#: judged and whose marginals the report draws, in that order: the top-K eigenvalues of
#: C = W W^T + sigma^2 I, sigma, entries of C (``cov[a,b]``) and the mean.
IDENTIFIED_SITES = ("eigenvalues", "sigma", "cov", "mean")

#: The ArviZ dims of the sites and identified quantities.
DIMS = {
    "loadings": ["feature", "latent"],
    "mean": ["feature"],
    "cov": ["cov_entry"],
    "eigenvalues": ["latent"],
}

#: Latent parameters above which NUTS is left out of the default methods (it is left out too
#: wherever W has rotations, K >= 2: see :func:`_description`).
NUTS_MAX_PARAMETERS = 100


#: The model's registry key, in its posteriors and messages.
NAME = "ppca"

#: What a replication of :func:`simulated_posterior` simulates, for the calibration page.
SIMULATION_DESIGN = (
    "loadings, mean and sigma drawn from the prior and {num_data} rows simulated from them"
    " (as many as {dataset} has), under the priors that data set sets; ranked on what the"
    " data identify (the top eigenvalues and the entries of C = W W^T + sigma^2 I, its"
    " diagonal alone from 11 features on; sigma; the mean), which no rotation of the"
    " loadings changes"
)


class _Rows(NamedTuple):
    """The fitted and held-out rows of the features, their names, and the known class of
    each fitted row (only to colour plots) or None."""

    x: np.ndarray
    x_test: np.ndarray
    names: list[str]
    labels: np.ndarray | None


def make_posterior(
    data: pd.DataFrame | str | Path,
    *,
    latent_dim: int | None = None,
    features: Sequence[str] | None = None,
    labels: str | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    truth: Mapping[str, np.ndarray] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    **prior_options: Any,
) -> Posterior:
    """Bind PPCA to data: the posterior every method is run on.

    Closed forms: ``ml`` (:func:`fit_ml`, ddof 0) and ``em`` (:func:`fit_em`), points, where
    they apply (:func:`_closed_forms`; :data:`CLOSED_FORM_HINTS` says why one is missing).

    Parameters
    ----------
    data : DataFrame, str or Path
        A table with a header (as :func:`simulate` returns), or a built-in data set's name
        (:data:`DATASETS`; it names its label column), or a CSV file's path.
    latent_dim : int, optional
        K, with 1 <= K < number of features; default the built-in set's, else min(2, D - 1).
    features : list of str, optional
        Feature columns; default every column but the label column.
    labels : str, optional
        A column of known row classes (digit, species) used only to colour plots and kept
        out of the features; the built-in sets name theirs.
    test_fraction, seed : float, int
        Share of rows held out (seeded split) for the held-out log predictive density; the
        seed of the split, of a simulated built-in set and of EM's start.
    truth : mapping, optional
        True ``loadings``, ``mean``, ``sigma`` (as :func:`simulate` returns); the built-in
        ``simulated`` set supplies its own.
    dtype, device
        Of every tensor of the posterior, whatever torch's defaults; the model follows its data.
    **prior_options
        Keywords of :func:`default_priors`: ``loadings_scale``, ``mean_scale``,
        ``sigma_prior``, ``sigma_scale``, ``scale_floor``.
    """
    load = functools.partial(load_dataset, seed=seed)
    frame, dataset, builtin = resolve_data(data, NAME, DATASETS, load)
    if builtin is not None:
        labels = labels if labels is not None else builtin.labels
        truth = truth if truth is not None else builtin.truth
    rows = _fit_rows(frame, features, labels, test_fraction, seed)
    latent_dim = _latent_dim(latent_dim, builtin, rows.x)
    priors = default_priors(rows.x, latent_dim, **prior_options)
    truth = _truth(truth, len(rows.names))
    return _posterior(rows, priors, latent_dim, dataset, truth, dtype, device)


def simulated_posterior(
    data: pd.DataFrame | str | Path,
    replication_seed: int,
    *,
    latent_dim: int | None = None,
    features: Sequence[str] | None = None,
    labels: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **prior_options: Any,
) -> tuple[dict[str, np.ndarray], Posterior]:
    """One replication of simulation-based calibration: loadings, mean and sigma drawn from
    the prior (seeded ``replication_seed``) and the posterior of as many rows as ``data``
    fits, simulated from them.

    The priors are those :func:`make_posterior` sets on ``data`` and K is its K, both fixed
    for every replication. The loadings are identified only up to a rotation, so what
    calibration ranks is what the Posterior's ``identified`` gives, as the comparisons judge
    methods on it: the top K eigenvalues and the entries of C = W W^T + sigma^2 I, sigma
    and the mean, functions of one draw that no rotation changes. Returns the truth (as the
    model's sites hold it) and the Posterior.
    """
    load = functools.partial(load_dataset, seed=seed)
    frame, dataset, builtin = resolve_data(data, NAME, DATASETS, load)
    if builtin is not None:
        labels = labels if labels is not None else builtin.labels
    rows = _fit_rows(frame, features, labels, 0.0, seed)
    latent_dim = _latent_dim(latent_dim, builtin, rows.x)
    priors = default_priors(rows.x, latent_dim, **prior_options)
    options = {"latent_dim": latent_dim, "priors": priors, "num_data": len(rows.x)}
    truth, x = draw_from_prior(model, replication_seed, SITES, "x", None, dtype=dtype, **options)
    simulated = rows._replace(x=x, x_test=x[:0], labels=None)
    return truth, _posterior(simulated, priors, latent_dim, dataset, None, dtype, "cpu")


def _latent_dim(latent_dim: object, builtin: Dataset | None, x: np.ndarray) -> int:
    """K: the given one, else the built-in set's or 2, at most D - 1; checked as the closed
    forms check it (a whole number, 1 <= K < D)."""
    if latent_dim is None:
        latent_dim = min(builtin.latent_dim if builtin else 2, x.shape[1] - 1)
    _check_fit_input(x, latent_dim)
    return int(latent_dim)


def _fit_rows(
    frame: pd.DataFrame,
    features: Sequence[str] | None,
    labels: str | None,
    test_fraction: float,
    seed: int,
) -> _Rows:
    """The feature columns (default: every column but the labels) as numbers, split
    (seeded), with the labels of the fitted rows."""
    if labels is not None and labels not in frame.columns:
        raise ZooInputError(
            f"label column '{labels}' is not in the data; columns are:"
            f" {', '.join(map(str, frame.columns))}"
        )
    named = features is not None
    features = [c for c in frame.columns if c != labels] if features is None else list(features)
    if labels is not None and labels in features:
        raise ZooInputError(f"'{labels}' is both the label column and a feature; drop one")
    if len(set(features)) != len(features):
        raise ZooInputError("a feature is listed twice in --features")
    if len(features) < 2:
        raise ZooInputError(
            f"{len(features)} feature column(s); PPCA needs at least 2 (give more --features)"
        )
    x = numeric_columns(frame, features, what="feature", named=named)
    train, test = split_rows(len(x), test_fraction, seed)
    if len(train) < 2:
        raise ZooInputError(
            f"{len(train)} row(s) to fit; PPCA needs at least 2 (give more rows or a smaller"
            " --test-fraction)"
        )
    row_labels = np.asarray(frame[labels])[train] if labels is not None else None
    return _Rows(x[train], x[test], [str(c) for c in features], row_labels)


def _truth(truth: Mapping[str, np.ndarray] | None, num_features: int) -> dict | None:
    """The true parameters as arrays, checked against the features (None: none)."""
    if truth is None:
        return None
    truth = {k: np.asarray(v, dtype=float) for k, v in truth.items()}
    if set(truth) != set(SITES) or truth["loadings"].ndim != 2:
        raise ZooInputError("truth needs loadings (D, K), mean (D,) and sigma")
    if truth["loadings"].shape[0] != num_features or truth["mean"].shape != (num_features,):
        raise ZooInputError(f"truth does not have {num_features} features like the data")
    return truth


def _posterior(
    rows: _Rows,
    priors: Priors,
    latent_dim: int,
    dataset: str,
    truth: dict[str, np.ndarray] | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Posterior:
    """The Posterior of the checked rows with K = ``latent_dim``; tensors of ``dtype`` on
    ``device``."""
    tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    options = {"latent_dim": latent_dim, "priors": priors}
    closed_forms = _closed_forms(rows.x, latent_dim)
    description = _description(rows, priors, latent_dim)
    return Posterior(
        model_name=NAME,
        dataset=dataset,
        # Guides of the globals fit (and NUTS runs) the form with z integrated out and C's
        # summaries as deterministic sites; amortized guides fit the form with z explicit.
        forms=ModelForms(
            fit=bind(summary_model, **options),
            likelihood=bind(model, **options),
            local=bind(local_model, **options),
            locals=(LocalLatents(site="z", dim=latent_dim, input="x", plate="data"),),
        ),
        data={"x": tensor(rows.x)},
        test_data={"x": tensor(rows.x_test)} if len(rows.x_test) else None,
        obs_site="x",
        sites=SITES,
        dims=DIMS,
        coords={
            "feature": rows.names,
            "latent": list(range(latent_dim)),
            "cov_entry": cov_entry_names(rows.names),
        },
        methods=declare_methods(
            closed_forms,
            get_model(NAME).guides,
            not_by_default=("nuts",) if "methods" in description else (),
        ),
        closed_forms=closed_forms,
        truth=truth,
        description=description,
        max_plate_nesting=1,
        # Judged on what the data identify (W only up to rotation): C's spectrum, sigma,
        # entries of C, the mean. They are kept in every method's draws (Posterior.identified).
        accuracy_sites=IDENTIFIED_SITES,
        row_labels=rows.labels,
        extra_metrics=functools.partial(covariance_metrics, latent_dim=latent_dim, truth=truth),
        identified=functools.partial(
            identified, entries=cov_entries(rows.names), latent_dim=latent_dim
        ),
    )


def _closed_forms(x: np.ndarray, latent_dim: int) -> dict[str, Callable[[int, int], ClosedForm]]:
    """``ml`` where there are more fitted rows than features (N > D): with fewer the sample
    covariance is singular, the eigenvalues that set sigma^2 are partly exact zeros of the
    sample, not estimates of the noise, and the closed form is a degenerate fit to the span
    of the rows. ``em`` while the centered rows span more than K dimensions, where the
    likelihood still has a finite maximum (sigma > 0); at K or fewer it grows without bound
    as sigma -> 0."""
    closed_forms: dict[str, Callable[[int, int], ClosedForm]] = {}
    num_rows, num_features = x.shape
    if num_rows > num_features:
        closed_forms["ml"] = functools.partial(_ml_method, x, latent_dim)
    else:
        logger.info("ml left out: %d fitted rows, %d features", num_rows, num_features)
    if np.linalg.matrix_rank(x - x.mean(0)) > latent_dim:
        closed_forms["em"] = functools.partial(_em_method, x, latent_dim)
    else:
        logger.info("em left out: the fitted rows span at most K = %d dimensions", latent_dim)
    return closed_forms


def _description(rows: _Rows, priors: Priors, latent_dim: int) -> dict[str, str]:
    """The posterior's description; with ``methods`` where NUTS is left out of the default
    methods: wherever W has rotations (K >= 2), or above :data:`NUTS_MAX_PARAMETERS`.

    With K >= 2 NUTS wanders along the rotations of W, which only the prior bounds, with
    trees of depth 7 to 8 (160 to 260 gradient evaluations an iteration): seen with 2 chains
    of 500 + 500, iris (13 parameters) needed 325,000 gradient evaluations, simulated (31)
    513,000, more than the smoke budget (then 200,000, which stopped it after 3 to 4 minutes
    with nothing judged; 300,000 today, for 2400 iterations); digits (385) takes about 7
    minutes for 2 x 1000 iterations and 30 for the full preset."""
    num_features = len(rows.names)
    description = {
        "features": _feature_text(rows.names),
        "latent_dim": f"K = {latent_dim}",
        "prior": priors.describe(rows.names),
        "rows": f"{len(rows.x)} fitted, {len(rows.x_test)} held out",
    }
    num_latent = num_features * latent_dim + num_features + 1
    if latent_dim >= 2 or num_latent > NUTS_MAX_PARAMETERS:
        why = f"{num_latent} parameters"
        if latent_dim >= 2:
            why += f", W identified only up to rotations of its K = {latent_dim} columns"
        description["methods"] = (
            f"nuts left out of the defaults ({why}: it needs minutes to tens of minutes, often"
            " more than a preset's NUTS budget); ask for it with --methods nuts,... and judge"
            " the others against ml meanwhile"
        )
    return description


def _num_params(num_features: int, latent_dim: int) -> int:
    # W up to rotation, the mean and sigma (Tipping and Bishop 1999, section 3.3; Bishop 12.2.1).
    return num_features * latent_dim - latent_dim * (latent_dim - 1) // 2 + num_features + 1


def _point(fit: PPCAFit, num_rows: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    draws = {
        "loadings": fit.loadings[None],
        "mean": fit.mean[None],
        "sigma": np.array([fit.sigma]),
    }
    num_features = fit.loadings.shape[0]
    info = {
        "log_likelihood": fit.log_likelihood,
        "bic": -2.0 * fit.log_likelihood
        + _num_params(num_features, fit.latent_dim) * math.log(num_rows),
    }
    return draws, info


def _ml_method(x: np.ndarray, latent_dim: int, seed: int, num_draws: int) -> ClosedForm:
    # A point estimate: one draw whatever num_draws; seed is not used.
    draws, info = _point(fit_ml(x, latent_dim), len(x))
    return ClosedForm(draws=draws, point=True, info=info)


def _em_method(x: np.ndarray, latent_dim: int, seed: int, num_draws: int) -> ClosedForm:
    result = fit_em(x, latent_dim, seed=seed)
    draws, info = _point(result.fit, len(x))
    info.update(num_iter=result.num_iter, converged=result.converged)
    return ClosedForm(draws=draws, point=True, info=info, trace=result.trace)
