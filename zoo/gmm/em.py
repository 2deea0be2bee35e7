"""Expectation-maximization for the diagonal mixture (Bishop 2006, section 9.2), with k-means++
restarts.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp

from zoo.errors import ZooInputError
from zoo.gmm.model import _log_joint_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EMResult:
    """Maximum-likelihood fit of a diagonal Gaussian mixture by EM (best of the restarts).

    ``scales`` are standard deviations; components are in canonical order (sorted by
    ``locs[:, 0]``). ``log_likelihood`` is the total log-likelihood at the parameters
    returned; ``trace[i]`` the total log-likelihood after i EM iterations of the best restart
    (``trace[0]`` at its start, ``trace[-1] == log_likelihood``). ``num_iter`` counts the M
    steps; ``restart_log_likelihoods`` holds the final log-likelihood of each restart.
    ``bic = -2 log_likelihood + p log N`` with ``p = (K - 1) + 2 K D``.
    """

    weights: np.ndarray
    locs: np.ndarray
    scales: np.ndarray
    log_likelihood: float
    trace: np.ndarray
    converged: bool
    num_iter: int
    restart_log_likelihoods: np.ndarray
    bic: float


def _em_run(
    x: np.ndarray,
    weights: np.ndarray,
    locs: np.ndarray,
    variances: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
):
    """EM from one start (Bishop 2006, section 9.2.2), iterations as scikit-learn counts them.

    Iteration i: E step at the current parameters (giving their log-likelihood L), M step;
    stop when L/N changed by less than ``tol`` since the previous iteration.
    """
    n = len(x)
    trace = []
    converged = False
    num_iter = 0
    previous = -np.inf
    for iteration in range(1, max_iter + 1):
        num_iter = iteration
        log_joint = _log_joint_rows(x, weights, locs, variances)
        log_norm = logsumexp(log_joint, axis=1)
        total = float(log_norm.sum())
        trace.append(total)
        resp = np.exp(log_joint - log_norm[:, None])
        nk = resp.sum(0) + 10 * np.finfo(float).eps
        locs = resp.T @ x / nk[:, None]
        variances = (resp[:, :, None] * (x[:, None, :] - locs[None]) ** 2).sum(0) / nk[
            :, None
        ] + reg_covar
        weights = nk / nk.sum()
        if abs(total / n - previous) < tol:
            converged = True
            break
        previous = total / n
    final = float(logsumexp(_log_joint_rows(x, weights, locs, variances), axis=1).sum())
    trace.append(final)
    return weights, locs, variances, np.asarray(trace), converged, num_iter


def _kmeans_pp_start(x: np.ndarray, num_components: int, rng: np.random.Generator, reg_covar):
    """k-means++ seeding on standardized rows: the first mean a random row, each next one a
    row drawn with probability proportional to its squared distance to the nearest mean so
    far; every component starts with the overall variance of each feature and equal weight.
    """
    n = len(x)
    sd = x.std(0)
    z = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    chosen = [int(rng.integers(n))]
    nearest = ((z - z[chosen[0]]) ** 2).sum(1)
    for _ in range(1, num_components):
        total = nearest.sum()
        p = nearest / total if total > 0 else np.full(n, 1.0 / n)
        chosen.append(int(rng.choice(n, p=p)))
        nearest = np.minimum(nearest, ((z - z[chosen[-1]]) ** 2).sum(1))
    locs = x[chosen].copy()
    variances = np.tile(x.var(0) + reg_covar, (num_components, 1))
    return np.full(num_components, 1.0 / num_components), locs, variances


def init_values(
    x: np.ndarray,
    num_components: int,
    seed: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A starting point for an optimizer or sampler, as EM's restarts start: k-means++ rows
    as component means (:func:`_kmeans_pp_start`), every component sd that of its feature,
    equal weights. Constrained values, tensors of ``dtype`` on ``device``."""
    weights, locs, variances = _kmeans_pp_start(
        np.asarray(x, dtype=float), num_components, np.random.default_rng(seed), 0.0
    )
    tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    return {"weights": tensor(weights), "locs": tensor(locs), "scales": tensor(np.sqrt(variances))}


def fit_em(
    x: np.ndarray,
    num_components: int,
    *,
    seed: int,
    num_restarts: int = 5,
    max_iter: int = 1000,
    tol: float = 1e-8,
    reg_covar: float = 1e-6,
    init: Mapping[str, np.ndarray] | None = None,
) -> EMResult:
    """Maximum likelihood by expectation-maximization (Bishop 2006, section 9.2.2).

    E step: responsibilities by log-sum-exp. M step: weighted means, weighted variances plus
    ``reg_covar`` (which keeps a component from collapsing onto one row), mixing weights.
    Convergence rule (scikit-learn's): stop when the mean log-likelihood per row changes by
    less than ``tol`` between two iterations; ``max_iter`` caps the M steps.

    Parameters
    ----------
    x : array (N, D)
    num_components : int
    seed : int
        Seeds the random starts.
    num_restarts : int
        Random k-means++ starts (see :func:`_kmeans_pp_start`); the fit with the largest
        final log-likelihood is kept.
    init : mapping, optional
        A fixed start ``{"weights": (K,), "locs": (K, D), "variances": (K, D)}``; EM then runs
        once from it (``num_restarts`` is ignored), e.g. to give scikit-learn the same start.
    """
    x = np.asarray(x, dtype=float)
    _check_em_options(x, num_components, num_restarts=num_restarts, max_iter=max_iter)
    if init is not None:
        starts = [_check_init(init, num_components, x.shape[1])]
    else:
        rng = np.random.default_rng(seed)
        starts = [_kmeans_pp_start(x, num_components, rng, reg_covar) for _ in range(num_restarts)]
    runs = [
        _em_run(x, weights, locs, variances, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
        for weights, locs, variances in starts
    ]
    best = runs[0]
    for run in runs[1:]:
        if run[3][-1] > best[3][-1]:
            best = run
    return _em_result(x, best, restart_log_likelihoods=[run[3][-1] for run in runs])


def _em_result(x: np.ndarray, run: tuple, *, restart_log_likelihoods: list) -> EMResult:
    """The EMResult of the best restart ``run`` (as :func:`_em_run` returns it), components
    sorted by ``locs[:, 0]``."""
    weights, locs, variances, trace, converged, num_iter = run
    if not converged:
        logger.warning("EM: best restart not converged after %d iterations", num_iter)
    n, d = x.shape
    k = len(weights)
    order = np.argsort(locs[:, 0], kind="stable")
    log_lik = float(trace[-1])
    num_params = (k - 1) + 2 * k * d
    return EMResult(
        weights=weights[order],
        locs=locs[order],
        scales=np.sqrt(variances[order]),
        log_likelihood=log_lik,
        trace=trace,
        converged=converged,
        num_iter=num_iter,
        restart_log_likelihoods=np.asarray(restart_log_likelihoods),
        bic=-2.0 * log_lik + num_params * math.log(n),
    )


def _check_em_options(x: np.ndarray, k: int, *, num_restarts: int, max_iter: int) -> None:
    """Raise a ZooInputError for data or options :func:`fit_em` cannot take."""
    if x.ndim != 2:
        raise ZooInputError(f"EM needs a table of rows (N, D), got an array of shape {x.shape}")
    n = x.shape[0]
    if int(k) != k or k < 1:
        raise ZooInputError(f"the number of components must be a whole number >= 1, got {k}")
    if n < max(2, k):
        raise ZooInputError(f"EM with {k} components needs at least {max(2, k)} rows, got {n}")
    if num_restarts < 1 or max_iter < 1:
        raise ZooInputError("EM needs num_restarts >= 1 and max_iter >= 1")


def _check_init(init: Mapping[str, np.ndarray], k: int, d: int):
    shapes = {"weights": (k,), "locs": (k, d), "variances": (k, d)}
    out = []
    for key, shape in shapes.items():
        if key not in init:
            raise ZooInputError(f"an EM start needs '{key}' of shape {shape}")
        value = np.asarray(init[key], dtype=float)
        if value.shape != shape or not np.all(np.isfinite(value)):
            raise ZooInputError(f"EM start '{key}' must be finite with shape {shape}")
        if key != "locs" and not np.all(value > 0):
            raise ZooInputError(f"EM start '{key}' must be positive")
        out.append(value)
    out[0] = out[0] / out[0].sum()
    return tuple(out)
