"""``make_posterior``: the mixture bound to data, with EM as its closed-form method."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from zoo.datasets import numeric_columns, resolve_data, split_rows
from zoo.errors import ZooInputError
from zoo.gmm.data import DATASETS, BuiltinData, _check_truth, load_dataset, truth_errors
from zoo.gmm.em import fit_em, init_values
from zoo.gmm.model import SITES, Priors, default_priors, marginal_model, model
from zoo.gmm.relabel import relabel, sorted_components
from zoo.methods import declare_methods
from zoo.posterior import ClosedForm, ModelForms, Posterior, bind
from zoo.priors import draw_from_prior
from zoo.registry import get_model

#: The model's registry key, in its posteriors and messages.
NAME = "gmm"

#: What a replication of :func:`simulated_posterior` simulates, for the calibration page.
SIMULATION_DESIGN = (
    "weights, locs and scales drawn from the prior and {num_data} rows simulated from them"
    " (as many as {dataset} has), under the priors that data set sets; each draw's"
    " components, and the truth's, sorted by their first coordinate, so that the labels a"
    " method chose do not matter"
)


class _Rows(NamedTuple):
    """The fitted and held-out rows of the features, their names, and the known class of
    each fitted row (a built-in set's, only to colour plots) or None."""

    x: np.ndarray
    x_test: np.ndarray
    names: list[str]
    labels: np.ndarray | None


def _em_method(x: np.ndarray, num_components: int, seed: int, num_draws: int) -> ClosedForm:
    """EM as a closed-form method: a point (one draw), whatever ``num_draws``."""
    fit = fit_em(x, num_components, seed=seed)
    return ClosedForm(
        draws={"weights": fit.weights[None], "locs": fit.locs[None], "scales": fit.scales[None]},
        point=True,
        info={
            "log_likelihood": fit.log_likelihood,
            "bic": fit.bic,
            "num_iter": fit.num_iter,
            "converged": fit.converged,
            "num_restarts": len(fit.restart_log_likelihoods),
            "restart_log_likelihoods": ", ".join(f"{v:.6g}" for v in fit.restart_log_likelihoods),
        },
        trace=fit.trace,
    )


def make_posterior(
    data: pd.DataFrame | str | Path,
    *,
    num_components: int | None = None,
    features: Sequence[str] | str | None = None,
    prior: str = "weakly_informative",
    test_fraction: float = 0.0,
    seed: int = 0,
    truth: Mapping[str, np.ndarray] | None = None,
    num_starts: int = 5,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    **prior_options: Any,
) -> Posterior:
    """Bind the mixture to data: the posterior every method is run on.

    Minibatch SVI needs nothing here: the models take ``subsample_size`` per call, which
    ``FitConfig(subsample_size=...)`` passes on each step.

    Parameters
    ----------
    data : DataFrame, str or Path
        Rows to cluster: a table with a header (as :func:`simulate` returns), a built-in
        data set's name (:data:`DATASETS`) or a CSV path. Every column is a feature unless
        ``features`` names some.
    num_components : int, optional
        K; default the built-in set's, else 2.
    features : list of str, optional
        Feature columns (or one string, comma-separated).
    prior : str
        A preset of :func:`default_priors`.
    test_fraction : float
        Share of rows held out (seeded split) for the held-out log predictive density.
    seed : int
        Seeds the simulated data sets and the split.
    truth : mapping, optional
        True ``weights``, ``locs``, ``scales`` (simulated built-in sets fill it).
    num_starts : int
        Starting points an optimizer tries (MAP and the starts of the guides), the best
        kept, as users of mixtures do: each from :func:`init_values` with its own seed.
    dtype, device
        Of every tensor of the posterior, whatever torch's defaults; the model follows its data.
    **prior_options
        Keywords of :func:`default_priors`: ``loc_scale``, ``scale_median``,
        ``scale_spread``, ``concentration``.
    """
    load = functools.partial(load_dataset, seed=seed)
    frame, dataset, builtin = resolve_data(data, NAME, DATASETS, load)
    k = _num_components(num_components, builtin)
    rows = _fit_rows(frame, features, builtin, test_fraction, seed)
    _check_fit(rows, k, num_starts)
    priors = default_priors(rows.x, prior=prior, **prior_options)
    truth = _truth(truth, builtin, k, rows.x.shape[1])
    components = f"{k}" + (" (default)" if num_components is None else "")
    return _posterior(rows, priors, k, dataset, components, truth, num_starts, dtype, device)


def simulated_posterior(
    data: pd.DataFrame | str | Path,
    replication_seed: int,
    *,
    num_components: int | None = None,
    features: Sequence[str] | str | None = None,
    prior: str = "weakly_informative",
    seed: int = 0,
    num_starts: int = 5,
    dtype: torch.dtype = torch.float64,
    **prior_options: Any,
) -> tuple[dict[str, np.ndarray], Posterior]:
    """One replication of simulation-based calibration: weights, locs and scales drawn from
    the prior (seeded ``replication_seed``) and the posterior of as many rows as ``data``
    fits, simulated from them.

    The priors are those :func:`make_posterior` sets on ``data`` (scaled to its features)
    and K is its K, both fixed for every replication. The labels of a mixture's components
    are arbitrary, so the Posterior's ``identified`` sorts each draw's components by their
    first coordinate (:func:`sorted_components`): a function of one draw that a relabelling
    does not change, applied to the truth and to every method's draws alike, whose ranks
    are therefore uniform under the exact posterior whichever labelling a method settled
    in. Returns the truth (as the model's sites hold it) and the Posterior.
    """
    load = functools.partial(load_dataset, seed=seed)
    frame, dataset, builtin = resolve_data(data, NAME, DATASETS, load)
    k = _num_components(num_components, builtin)
    rows = _fit_rows(frame, features, builtin, 0.0, seed)
    _check_fit(rows, k, num_starts)
    priors = default_priors(rows.x, prior=prior, **prior_options)
    truth, x = draw_from_prior(model, replication_seed, SITES, "x", None, num_components=k,
                               priors=priors, num_data=len(rows.x), dtype=dtype)  # fmt: skip
    simulated = rows._replace(x=x, x_test=x[:0], labels=None)
    post = _posterior(simulated, priors, k, dataset, str(k), None, num_starts, dtype, "cpu")
    return truth, dataclasses.replace(post, identified=sorted_components)


def _truth(
    truth: Mapping[str, np.ndarray] | None, builtin: BuiltinData | None, k: int, d: int
) -> dict[str, np.ndarray] | None:
    """The true parameters, checked and in canonical order: those given, else a simulated
    built-in set's where it has K components, else None."""
    if truth is None and builtin is not None and builtin.truth is not None:
        truth = builtin.truth if len(builtin.truth["weights"]) == k else None
    return None if truth is None else _check_truth(truth, k, d)


def _num_components(num_components: object, builtin: BuiltinData | None) -> int:
    """K: the given number, else the built-in set's, else 2; a whole number >= 1."""
    k = builtin.num_components if num_components is None and builtin else num_components
    k = 2 if k is None else k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ZooInputError(
            f"the number of components must be a whole number >= 1, got {k!r}; "
            "pass --num-components K"
        )
    return int(k)


def _fit_rows(
    frame: pd.DataFrame,
    features: Sequence[str] | str | None,
    builtin: BuiltinData | None,
    test_fraction: float,
    seed: int,
) -> _Rows:
    """The feature columns (default: every column) as numbers, split (seeded)."""
    named = features is not None
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    features = list(frame.columns) if features is None else list(features)
    if not features:
        raise ZooInputError("no feature columns; pass --features a,b or give a table with columns")
    if len(set(features)) != len(features):
        raise ZooInputError("a feature is listed twice in --features; list each once")
    x = numeric_columns(frame, features, what="feature", named=named)
    train, test = split_rows(len(x), test_fraction, seed)
    labels = None if builtin is None or builtin.row_labels is None else builtin.row_labels[train]
    return _Rows(x[train], x[test], [str(c) for c in features], labels)


def _check_fit(rows: _Rows, k: int, num_starts: int) -> None:
    """Raise a ZooInputError where the fitted rows cannot take K components."""
    n = len(rows.x)
    if n < 2:
        raise ZooInputError(
            f"{n} row(s) to fit; a mixture needs at least 2 (give more rows or a smaller"
            " --test-fraction)"
        )
    if k > n:
        raise ZooInputError(
            f"{k} components but only {n} rows to fit; pass a smaller --num-components"
        )
    constant = [c for c, s in zip(rows.names, rows.x.std(0)) if not s > 0]
    if constant:
        raise ZooInputError(
            f"feature '{constant[0]}' is constant in the fitted rows; drop it from --features"
        )
    if isinstance(num_starts, bool) or not isinstance(num_starts, int) or num_starts < 1:
        raise ZooInputError(f"num_starts must be a whole number >= 1, got {num_starts!r}")


def _posterior(
    rows: _Rows,
    priors: Priors,
    k: int,
    dataset: str,
    components: str,
    truth: dict[str, np.ndarray] | None,
    num_starts: int,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Posterior:
    """The Posterior of the checked rows with K components (``components`` says K and
    whether it is the default); tensors of ``dtype`` on ``device``."""
    tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    options = {"num_components": k, "priors": priors}
    extra = None
    if truth is not None:
        extra = functools.partial(truth_errors, truth=truth, feature_sd=rows.x.std(0, ddof=1))
    description = {
        "features": ", ".join(rows.names),
        "components": components,
        "prior": priors.describe(rows.names),
        "rows": f"{len(rows.x)} fitted, {len(rows.x_test)} held out",
    }
    return Posterior(
        model_name=NAME,
        dataset=dataset,
        # Guides fit the enumerated form (TraceEnum_ELBO sums the assignments out); NUTS,
        # importance weights and the log-likelihood use the mixture form: the same density
        # as enumeration (tested) at 1.7x fewer seconds per gradient.
        forms=ModelForms(fit=bind(model, **options), sample=bind(marginal_model, **options)),
        data={"x": tensor(rows.x)},
        test_data={"x": tensor(rows.x_test)} if len(rows.x_test) else None,
        obs_site="x",
        sites=SITES,
        dims={
            "weights": ["component"],
            "locs": ["component", "feature"],
            "scales": ["component", "feature"],
        },
        coords={"component": list(range(k)), "feature": rows.names},
        methods=declare_methods(["em"], get_model(NAME).guides),
        closed_forms={"em": functools.partial(_em_method, rows.x, k)},
        relabel=relabel,
        truth=truth,
        description=description,
        row_labels=rows.labels,
        max_plate_nesting=1,
        extra_metrics=extra,
        init_values=functools.partial(init_values, rows.x, k, dtype=dtype, device=device),
        num_starts=num_starts,
    )
