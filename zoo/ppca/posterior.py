"""``make_posterior``: PPCA bound to data, with ML and EM as its closed-form methods."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo.datasets import numeric_columns, read_csv, split_rows
from zoo.errors import ZooInputError
from zoo.posterior import ClosedForm, LocalLatents, Posterior, bind
from zoo.ppca.closed_forms import PPCAFit, fit_em, fit_ml
from zoo.ppca.data import DATASETS, _check_numeric, _feature_text, _looks_like_path, load_dataset
from zoo.ppca.metrics import cov_entries, cov_entry_names, covariance_metrics, identified
from zoo.ppca.model import SITES, default_priors, local_model, model, summary_model
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

#: Latent parameters above which NUTS is left out of the default methods (it is left out too
#: wherever W has rotations, K >= 2: see :func:`_nuts_left_out`).
NUTS_MAX_PARAMETERS = 100


def _nuts_left_out(latent_dim: int, num_latent: int) -> str:
    """Why NUTS is not among the default methods. With K >= 2 NUTS wanders along the
    rotations of W, which only the prior bounds, with trees of depth 7 to 8 (160 to 260
    gradient evaluations an iteration): seen with 2 chains of 500 + 500, iris (13
    parameters) needed 325,000 gradient evaluations, simulated (31) 513,000, more than the
    smoke budget (then 200,000, which stopped it after 3 to 4 minutes with nothing judged;
    300,000 today, for 2400 iterations); digits (385) takes about 7 minutes for 2 x 1000
    iterations and 30 for the full preset."""
    why = f"{num_latent} parameters"
    if latent_dim >= 2:
        why += f", W identified only up to rotations of its K = {latent_dim} columns"
    return (
        f"nuts left out of the defaults ({why}: it needs minutes to tens of minutes, often"
        " more than a preset's NUTS budget); ask for it with --methods nuts,... and judge the"
        " others against ml meanwhile"
    )


def make_posterior(
    data: pd.DataFrame | str,
    *,
    latent_dim: int | None = None,
    features: Sequence[str] | None = None,
    labels: str | None = None,
    loadings_scale: float | Sequence[float] | None = None,
    mean_scale: float | Sequence[float] | None = None,
    sigma_prior: str = "exponential",
    sigma_scale: float | None = None,
    scale_floor: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    truth: Mapping[str, np.ndarray] | None = None,
) -> Posterior:
    """Bind PPCA to data: the posterior every method is run on.

    Parameters
    ----------
    data : DataFrame or str
        A table with a header (as :func:`simulate` returns), a built-in data set name
        (:data:`DATASETS`) or the path of a CSV file.
    latent_dim : int, optional
        K, with 1 <= K < number of features; default the built-in set's, else min(2, D - 1).
    features : list of str, optional
        Feature columns; default every column but the label column.
    labels : str, optional
        A column of known row classes (digit, species) used only to colour plots and kept
        out of the features; the built-in sets name theirs.
    loadings_scale, mean_scale, sigma_prior, sigma_scale, scale_floor
        See :func:`default_priors`.
    test_fraction : float
        Share of rows held out (seeded split) for the held-out log predictive density.
    seed : int
        Seed of the split, of a simulated built-in set and of EM's start.
    truth : mapping, optional
        True ``loadings``, ``mean``, ``sigma`` (as :func:`simulate` returns); the built-in
        ``simulated`` set supplies its own.

    Closed forms: ``ml`` (:func:`fit_ml`, ddof 0) and ``em`` (:func:`fit_em`) are point
    estimates. ``ml`` is offered only when there are more fitted rows than features (N > D):
    with fewer the sample covariance is singular, the eigenvalues that set sigma^2 are partly
    exact zeros of the sample, not estimates of the noise, and the closed form is a
    degenerate fit to the span of the rows. ``em`` is offered while the centered rows span
    more than K dimensions, where the likelihood still has a finite maximum (sigma > 0); at
    K or fewer it grows without bound as sigma -> 0. :data:`CLOSED_FORM_HINTS` says so.
    """
    dataset_name = "data"
    default_dim = None
    if isinstance(data, (str, Path)):
        name = str(data)
        if name in DATASETS:
            loaded = load_dataset(name, seed)
            frame, dataset_name, default_dim = loaded.frame, name, loaded.latent_dim
            labels = labels if labels is not None else loaded.labels
            truth = truth if truth is not None else loaded.truth
        elif _looks_like_path(name):
            frame = read_csv(name)
            dataset_name = frame.attrs.get("source", name)
        else:
            load_dataset(name)  # raises: unknown data set, listing the built-in ones
    else:
        frame = data
        dataset_name = frame.attrs.get("source", "data")
    if labels is not None and labels not in frame.columns:
        raise ZooInputError(
            f"label column '{labels}' is not in the data; columns are:"
            f" {', '.join(map(str, frame.columns))}"
        )
    explicit = features is not None
    features = [c for c in frame.columns if c != labels] if features is None else list(features)
    if labels is not None and labels in features:
        raise ZooInputError(f"'{labels}' is both the label column and a feature; drop one")
    if len(set(features)) != len(features):
        raise ZooInputError("a feature is listed twice in --features")
    if len(features) < 2:
        raise ZooInputError(
            f"{len(features)} feature column(s); PPCA needs at least 2 (give more --features)"
        )
    _check_numeric(frame, features, explicit)
    x_all = numeric_columns(frame, features, what="feature")
    names = [str(c) for c in features]
    num_features = len(names)

    if latent_dim is None:
        latent_dim = min(default_dim or 2, num_features - 1)
    if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim:
        raise ZooInputError(f"latent dim must be a whole number, got {latent_dim!r}")
    latent_dim = int(latent_dim)
    if not 1 <= latent_dim < num_features:
        raise ZooInputError(
            f"latent dim {latent_dim} with {num_features} features; choose 1 <= K <"
            f" {num_features} with --latent-dim"
        )
    train, test = split_rows(len(x_all), test_fraction, seed)
    x = x_all[train]
    if len(x) < 2:
        raise ZooInputError(
            f"{len(x)} row(s) to fit; PPCA needs at least 2 (give more rows or a smaller"
            " --test-fraction)"
        )
    if truth is not None:
        truth = {k: np.asarray(v, dtype=float) for k, v in truth.items()}
        if set(truth) != set(SITES) or truth["loadings"].ndim != 2:
            raise ZooInputError("truth needs loadings (D, K), mean (D,) and sigma")
        if truth["loadings"].shape[0] != num_features or truth["mean"].shape != (num_features,):
            raise ZooInputError(f"truth does not have {num_features} features like the data")

    priors = default_priors(
        x,
        latent_dim,
        loadings_scale=loadings_scale,
        mean_scale=mean_scale,
        sigma_prior=sigma_prior,
        sigma_scale=sigma_scale,
        scale_floor=scale_floor,
    )
    tensor = functools.partial(torch.as_tensor, dtype=torch.get_default_dtype())
    bound = bind(model, latent_dim=latent_dim, priors=priors)
    bound_summary = bind(summary_model, latent_dim=latent_dim, priors=priors)
    bound_local = bind(local_model, latent_dim=latent_dim, priors=priors)

    closed_forms: dict[str, Callable[[int, int], ClosedForm]] = {}
    if len(x) > num_features:
        closed_forms["ml"] = functools.partial(_ml_method, x, latent_dim)
    else:
        logger.info("ml left out: %d fitted rows, %d features", len(x), num_features)
    if np.linalg.matrix_rank(x - x.mean(0)) > latent_dim:
        closed_forms["em"] = functools.partial(_em_method, x, latent_dim)
    else:
        logger.info("em left out: the fitted rows span at most K = %d dimensions", latent_dim)

    row_labels = np.asarray(frame[labels])[train] if labels is not None else None
    description = {
        "features": _feature_text(names),
        "latent_dim": f"K = {latent_dim}",
        "prior": priors.describe(names),
        "rows": f"{len(train)} fitted, {len(test)} held out",
    }
    default_methods = None
    num_latent = num_features * latent_dim + num_features + 1
    if latent_dim >= 2 or num_latent > NUTS_MAX_PARAMETERS:
        spec = get_model("ppca")  # every method of the model but NUTS
        default_methods = (*spec.closed_forms, *spec.guides)
        description["methods"] = _nuts_left_out(latent_dim, num_latent)
    return Posterior(
        model_name="ppca",
        dataset=dataset_name,
        model=bound_summary,
        data={"x": tensor(x)},
        test_data={"x": tensor(x_all[test])} if len(test) else None,
        obs_site="x",
        sites=SITES,
        dims={
            "loadings": ["feature", "latent"],
            "mean": ["feature"],
            "cov": ["cov_entry"],
            "eigenvalues": ["latent"],
        },
        coords={
            "feature": names,
            "latent": list(range(latent_dim)),
            "cov_entry": cov_entry_names(names),
        },
        closed_forms=closed_forms,
        truth=truth,
        description=description,
        max_plate_nesting=1,
        marginal_model=bound,
        local_model=bound_local,
        local=LocalLatents(site="z", dim=latent_dim, input="x", plate="data"),
        # Judged on what the data identify (W only up to rotation): C's spectrum, sigma,
        # entries of C, the mean. They are kept in every method's draws (Posterior.identified).
        accuracy_sites=IDENTIFIED_SITES,
        row_labels=row_labels,
        extra_metrics=functools.partial(covariance_metrics, latent_dim=latent_dim, truth=truth),
        default_methods=default_methods,
        identified=functools.partial(identified, entries=cov_entries(names), latent_dim=latent_dim),
    )


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
