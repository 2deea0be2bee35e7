"""Probabilistic principal component analysis (PPCA).

Model
-----
For rows n = 1..N of D features x_n and a latent dimension K (1 <= K < D)::

    loadings[d, k]   ~ Normal(0, tau_d)                            W, shape (D, K)
    mean[d]          ~ Normal(xbar_d, m_d)                         mu, shape (D,)
    sigma            ~ Exponential(1 / s)                          (or HalfNormal, HalfCauchy)
    z_n              ~ Normal(0, I_K)                              shape (K,), local
    x_n | z_n        ~ Normal(W z_n + mu, sigma^2 I_D)

    x_n              ~ Normal(mu, C),   C = W W^T + sigma^2 I_D    z_n integrated out

Two Pyro forms share the global sites ``loadings``, ``mean`` and ``sigma`` (in that order,
outside every plate): :func:`model` is the marginal form (``x`` is a low-rank multivariate
normal), which NUTS and the global guides use; :func:`local_model` keeps ``z`` explicit for
amortized guides. Products of a per-row latent with a global are written
``(loadings * z.unsqueeze(-2)).sum(-1)``, never ``z @ W.T``, so extra batch dims on the left
of the globals (vectorized particles) broadcast correctly (STYLE.md).

Priors (:func:`default_priors`), in the units of the data: with ``s_d`` the sample sd of
feature d, ``s = sqrt(mean_d s_d^2)`` the overall (root-mean-square) scale and the floored
``s~_d = max(s_d, floor * s)`` (floor 0.1: digits has pixels that are always 0, whose sd would
give an invalid prior scale of 0):

- ``tau_d = 2.5 s~_d / sqrt(K)``: the loadings' contribution to the prior variance of x_d is
  ``K tau_d^2 = (2.5 s~_d)^2``, the rstanarm factor 2.5 around the observed scale, whatever K;
- ``m_d = 2.5 s~_d`` around the sample mean (as rstanarm's intercept prior);
- ``sigma`` has prior mean ``s``: the ML noise variance (mean of the smallest eigenvalues of
  the covariance) never exceeds ``s^2`` (their overall mean), so this allows any plausible
  noise level without favouring one.

Every scale is proportional to the data's, so multiplying all columns by c multiplies the
posterior of (loadings, mean, sigma) by c. PPCA itself (isotropic noise) is not invariant to
rescaling *one* column: standardize columns measured in different units first.

Identifiability. p(x) depends on W only through ``C``, which is unchanged by ``W -> W R`` for
any orthogonal R (and the prior is invariant too), so the posterior of ``loadings`` is a ring
of rotations: compare methods on ``mean``, ``sigma`` and on C (:func:`covariance_metrics`),
never on raw loadings.

Closed forms (Tipping and Bishop 1999): the maximum-likelihood solution (:func:`fit_ml`)
``mu = xbar``, ``sigma^2`` = mean of the D - K smallest eigenvalues of the sample covariance,
``W = U_K (Lambda_K - sigma^2 I)^1/2 R``; EM (:func:`fit_em`, Bishop 2006 section 12.2.2)
reaches the same likelihood. ``ml`` is offered only with more rows than features, ``em`` while
the rows span more than K dimensions (see :func:`make_posterior`).

References
----------
Tipping and Bishop (1999), *Probabilistic principal component analysis*, JRSS B 61(3).
Bishop (2006), *Pattern Recognition and Machine Learning*, sections 12.1-12.2.
Gabry and Goodrich (2020), *Prior distributions for rstanarm models*.
Baldi and Hornik (1989), *Neural networks and principal component analysis*, Neural Networks 2.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import scipy.linalg
import torch

from zoo.datasets import numeric_columns, read_csv, split_rows
from zoo.errors import ZooInputError
from zoo.posterior import ClosedForm, LocalLatents, Posterior

logger = logging.getLogger(__name__)

SIGMA_PRIORS = ("exponential", "half_normal", "half_cauchy")
SITES = ("loadings", "mean", "sigma")

#: Why ``ml``/``em`` may be missing from a posterior, for the registry's closed_form_hints.
CLOSED_FORM_HINTS = {
    "ml": "'ml' needs more fitted rows than features (a full-rank sample covariance); use em,"
    " fewer --features or a smaller --test-fraction",
    "em": "'em' needs fitted rows that span more than K dimensions (else the noise variance"
    " is 0); use a smaller --latent-dim or more rows",
}


#: Latent parameters above which NUTS is left out of the default methods.
NUTS_MAX_PARAMETERS = 100

# --------------------------------------------------------------------------- priors


@dataclass(frozen=True)
class Priors:
    """Resolved prior of PPCA, in the units of the data (see the module docstring).

    ``loadings_scale`` (tau_d), ``mean_loc`` and ``mean_scale`` have one entry per feature;
    ``sigma_scale`` is the mean of the exponential prior, or the scale of the
    half-normal/half-Cauchy. ``data_scale`` is the overall scale s, ``floor`` the smallest
    per-feature scale allowed (``scale_floor * s``) and ``floored`` the number of features
    whose sd was raised to it.
    """

    mean_loc: tuple[float, ...]
    mean_scale: tuple[float, ...]
    loadings_scale: tuple[float, ...]
    sigma_prior: str
    sigma_scale: float
    data_scale: float = 1.0
    floor: float = 0.0
    floored: int = 0

    @property
    def num_features(self) -> int:
        return len(self.mean_loc)

    def describe(self, feature_names: Sequence[str] | None = None) -> str:
        """One line for a report, per feature when there are few, else as a range."""
        names = list(feature_names) if feature_names is not None else None

        def values(scales: tuple[float, ...]) -> str:
            if names is not None and len(scales) <= 6:
                return "[" + ", ".join(f"{n}: {v:.3g}" for n, v in zip(names, scales)) + "]"
            lo, mid, hi = np.quantile(scales, [0.0, 0.5, 1.0])
            return f"{lo:.3g}..{hi:.3g} (median {mid:.3g})"

        parts = [
            f"loadings[d, k] ~ Normal(0, {values(self.loadings_scale)})",
            f"mean[d] ~ Normal(sample mean, {values(self.mean_scale)})",
            f"sigma ~ {self.sigma_prior}({self.sigma_scale:.4g})",
        ]
        if self.floored:
            parts.append(
                f"{self.floored} near-constant feature(s) given the floor sd of {self.floor:.3g}"
            )
        return "; ".join(parts)


def default_priors(
    x: np.ndarray,
    latent_dim: int,
    *,
    loadings_scale: float | Sequence[float] | None = None,
    mean_scale: float | Sequence[float] | None = None,
    sigma_prior: str = "exponential",
    sigma_scale: float | None = None,
    scale_floor: float = 0.1,
) -> Priors:
    """Weakly informative priors scaled to the data (module docstring, *Priors*).

    Unset scales default to ``2.5 s~_d / sqrt(K)`` (loadings), ``2.5 s~_d`` (mean) and ``s``
    (sigma), with ``s~_d = max(s_d, scale_floor * s)``; given ones (a number for every feature,
    or one per feature) are used as they are, in the units of the data.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or len(x) < 2:
        raise ZooInputError("priors need at least 2 rows of data; give more rows")
    if sigma_prior not in SIGMA_PRIORS:
        raise ZooInputError(
            f"unknown sigma prior '{sigma_prior}'; choose one of: {', '.join(SIGMA_PRIORS)}"
        )
    if not (math.isfinite(scale_floor) and 0 < scale_floor <= 1):
        raise ZooInputError(f"scale floor must be in (0, 1], got {scale_floor}")
    if sigma_scale is not None and not (math.isfinite(sigma_scale) and sigma_scale > 0):
        raise ZooInputError(f"sigma scale must be a positive number, got {sigma_scale}")
    num_features = x.shape[1]
    sd = np.std(x, axis=0, ddof=1)
    overall = float(np.sqrt(np.mean(sd**2)))
    if not overall > 0:
        raise ZooInputError(
            "every feature is constant in the fitted rows; PPCA needs data that vary"
        )
    floored = np.maximum(sd, scale_floor * overall)

    def given(value: float | Sequence[float], what: str) -> tuple[float, ...]:
        arr = np.asarray(value, dtype=float)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != num_features):
            raise ZooInputError(
                f"{what} prior scale needs one number or {num_features} (one per feature),"
                f" got {arr.size}"
            )
        arr = np.broadcast_to(arr, (num_features,))
        if not np.all(np.isfinite(arr) & (arr > 0)):
            raise ZooInputError(f"{what} prior scales must be positive numbers, got {value}")
        return tuple(float(v) for v in arr)

    return Priors(
        mean_loc=tuple(float(v) for v in x.mean(0)),
        mean_scale=(
            tuple(float(v) for v in 2.5 * floored)
            if mean_scale is None
            else given(mean_scale, "mean")
        ),
        loadings_scale=(
            tuple(float(v) for v in 2.5 * floored / math.sqrt(latent_dim))
            if loadings_scale is None
            else given(loadings_scale, "loadings")
        ),
        sigma_prior=sigma_prior,
        sigma_scale=float(overall if sigma_scale is None else sigma_scale),
        data_scale=overall,
        floor=float(scale_floor * overall),
        floored=int(np.sum(sd < scale_floor * overall)),
    )


def _sigma_distribution(priors: Priors, dtype: torch.dtype, device) -> dist.Distribution:
    scale = torch.tensor(priors.sigma_scale, dtype=dtype, device=device)
    if priors.sigma_prior == "exponential":
        return dist.Exponential(1.0 / scale)
    if priors.sigma_prior == "half_normal":
        return dist.HalfNormal(scale)
    return dist.HalfCauchy(scale)


# --------------------------------------------------------------------------- Pyro models


def _num_rows(x: torch.Tensor | None, num_data: int | None, priors: Priors) -> tuple:
    if x is None:
        if num_data is None:
            raise ValueError("give x, or num_data for draws from the prior predictive")
        return num_data, torch.get_default_dtype(), None
    if x.shape[-1] != priors.num_features:
        raise ValueError(f"x has {x.shape[-1]} features but the priors {priors.num_features}")
    return x.shape[-2], x.dtype, x.device


def _global_sites(
    priors: Priors, latent_dim: int, dtype: torch.dtype, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tensor = functools.partial(torch.as_tensor, dtype=dtype, device=device)
    tau = tensor(priors.loadings_scale).unsqueeze(-1).expand(priors.num_features, latent_dim)
    loadings = pyro.sample("loadings", dist.Normal(torch.zeros_like(tau), tau).to_event(2))
    mean = pyro.sample(
        "mean", dist.Normal(tensor(priors.mean_loc), tensor(priors.mean_scale)).to_event(1)
    )
    sigma = pyro.sample("sigma", _sigma_distribution(priors, dtype, device))
    return loadings, mean, sigma


def model(
    x: torch.Tensor | None = None,
    *,
    latent_dim: int,
    priors: Priors,
    num_data: int | None = None,
) -> torch.Tensor:
    """Marginal Pyro model of PPCA: ``x_n ~ Normal(mean, W W^T + sigma^2 I)`` (z integrated out).

    Parameters
    ----------
    x : tensor (N, D), optional
        Observations; None draws ``num_data`` rows from the prior predictive.
    latent_dim : int
        K, the number of columns of ``loadings``.
    priors : Priors
        Resolved priors (see :func:`default_priors`).
    num_data : int, optional
        Number of rows drawn when ``x`` is None.

    Returns
    -------
    tensor (N, D)
        The observations (or the draws).
    """
    num_rows, dtype, device = _num_rows(x, num_data, priors)
    loadings, mean, sigma = _global_sites(priors, latent_dim, dtype, device)
    # (sigma^2)[..., None] keeps any batch dims of sigma left of the feature dim.
    cov_diag = (sigma**2).unsqueeze(-1) * torch.ones_like(mean)
    with pyro.plate("data", num_rows):
        return pyro.sample("x", dist.LowRankMultivariateNormal(mean, loadings, cov_diag), obs=x)


def summary_model(
    x: torch.Tensor | None = None,
    *,
    latent_dim: int,
    priors: Priors,
    num_data: int | None = None,
) -> None:
    """The marginal model of :func:`model` with the likelihood summed over rows in closed
    form: the same density, from the data's mean and scatter.

    ``log p(X | W, mean, sigma) = -1/2 [N D log 2 pi + N log|C| + tr(C^-1 S_mean)]`` with
    ``C = W W^T + sigma^2 I`` and ``S_mean = S + N (xbar - mean)(xbar - mean)^T``, S the
    scatter about the sample mean (Tipping and Bishop 1999, eq. 4). One data product per
    call (S does not depend on the parameters) and a D x D Cholesky per draw, instead of the
    per-row form's work on every row for every draw: a gradient on digits (1438 x 64, K = 5)
    takes a fraction of the per-row form's time. The likelihood enters as one factor
    ``x_loglik``: per-row log-likelihoods (LOO) come from :func:`model`. Without data it
    draws from the prior predictive as :func:`model` does.
    """
    if x is None:
        return model(x, latent_dim=latent_dim, priors=priors, num_data=num_data)
    num_rows, dtype, device = _num_rows(x, num_data, priors)
    loadings, mean, sigma = _global_sites(priors, latent_dim, dtype, device)
    num_features = x.shape[-1]
    xbar = x.mean(-2)
    centered = x - xbar
    scatter = centered.transpose(-1, -2) @ centered  # data only: no latent in this product
    # loadings may carry batch dims on the left (P, 1, D, K): the product is per draw.
    eye = torch.eye(num_features, dtype=dtype, device=device)
    cov = loadings @ loadings.transpose(-1, -2) + (sigma**2)[..., None, None] * eye
    chol = torch.linalg.cholesky(cov)
    log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    delta = xbar - mean
    scatter_mean = scatter + num_rows * delta.unsqueeze(-1) * delta.unsqueeze(-2)
    trace = torch.cholesky_solve(scatter_mean, chol).diagonal(dim1=-2, dim2=-1).sum(-1)
    log_lik = -0.5 * (num_rows * num_features * math.log(2 * math.pi) + num_rows * log_det + trace)
    pyro.factor("x_loglik", log_lik)


def local_model(
    x: torch.Tensor | None = None,
    *,
    latent_dim: int,
    priors: Priors,
    num_data: int | None = None,
) -> torch.Tensor:
    """PPCA with explicit latents ``z`` (shape (N, K)), for amortized guides.

    Same arguments, global sites and marginal distribution of ``x`` as :func:`model`.
    """
    num_rows, dtype, device = _num_rows(x, num_data, priors)
    loadings, mean, sigma = _global_sites(priors, latent_dim, dtype, device)
    zeros = torch.zeros(latent_dim, dtype=dtype, device=device)
    with pyro.plate("data", num_rows):
        z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
        # Not z @ loadings.T: under vectorized particles loadings is (P, 1, D, K) and z
        # (P, N, K); the broadcast product below gives (P, N, D), a matmul (P, P, N, D).
        loc = mean + (loadings * z.unsqueeze(-2)).sum(-1)
        return pyro.sample("x", dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1), obs=x)


# --------------------------------------------------------------------------- closed forms


@dataclass(frozen=True)
class PPCAFit:
    """A point estimate of PPCA: loadings (D, K), mean (D,), sigma, and the total
    log-likelihood of the data it was fitted to."""

    loadings: np.ndarray
    mean: np.ndarray
    sigma: float
    log_likelihood: float

    @property
    def latent_dim(self) -> int:
        return int(self.loadings.shape[1])


@dataclass(frozen=True)
class EMFit:
    """What :func:`fit_em` returns: the fit, the log-likelihood at the start and after each
    iteration (``trace``, length ``num_iter + 1``) and whether the tolerance was reached."""

    fit: PPCAFit
    trace: np.ndarray
    converged: bool

    @property
    def num_iter(self) -> int:
        return len(self.trace) - 1


def _check_fit_input(x: np.ndarray, latent_dim: int) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ZooInputError(f"x must be a matrix (rows x features), got shape {x.shape}")
    num_rows, num_features = x.shape
    if num_rows < 2:
        raise ZooInputError(f"{num_rows} row(s); PPCA needs at least 2 rows")
    if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim:
        raise ZooInputError(f"latent dim must be a whole number, got {latent_dim!r}")
    if not 1 <= latent_dim < num_features:
        raise ZooInputError(
            f"latent dim {latent_dim} with {num_features} features; choose 1 <= K <"
            f" {num_features} with --latent-dim"
        )
    return x


def covariance(loadings: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    """``C = W W^T + sigma^2 I``, batched over leading dims: (..., D, K), (...) -> (..., D, D)."""
    w = np.asarray(loadings, dtype=float)
    s = np.asarray(sigma, dtype=float)
    eye = np.eye(w.shape[-2])
    return w @ np.swapaxes(w, -1, -2) + (s**2)[..., None, None] * eye


def log_likelihood(
    x: np.ndarray, loadings: np.ndarray, mean: np.ndarray, sigma: np.ndarray | float
) -> np.ndarray:
    """Total log-likelihood ``sum_n log N(x_n | mean, C)`` of the rows of x.

    Vectorized over leading batch dims of the parameters: loadings (..., D, K), mean (..., D),
    sigma (...) give an array (...). Computed from the sample moments,
    ``-N/2 [D log 2 pi + log|C| + tr(C^-1 S) + (xbar - mean)^T C^-1 (xbar - mean)]`` with
    ``S`` the sample covariance normalised by N.
    """
    x = np.asarray(x, dtype=float)
    num_rows, num_features = x.shape
    xbar = x.mean(0)
    centered = x - xbar
    scatter = centered.T @ centered / num_rows
    cov = covariance(loadings, sigma)
    chol = np.linalg.cholesky(cov)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    delta = xbar - np.asarray(mean, dtype=float)
    trace = np.trace(np.linalg.solve(cov, np.broadcast_to(scatter, cov.shape)), axis1=-2, axis2=-1)
    quad = (delta * np.linalg.solve(cov, delta[..., None])[..., 0]).sum(-1)
    return -0.5 * num_rows * (num_features * math.log(2 * math.pi) + logdet + trace + quad)


def fit_ml(x: np.ndarray, latent_dim: int, *, ddof: int = 0) -> PPCAFit:
    """Maximum-likelihood PPCA (Tipping and Bishop 1999, eqs. 7-8; Bishop 2006, 12.45-12.46).

    ``mean`` is the sample mean; with ``S`` the sample covariance normalised by
    ``N - ddof`` and eigenvalues ``lambda_1 >= ... >= lambda_D`` (eigenvectors U),
    ``sigma^2 = mean(lambda_{K+1..D})`` and ``W = U_K (Lambda_K - sigma^2 I)^1/2`` (rotation
    R = I; each column's sign is fixed so that its largest entry is positive).

    ``ddof=0`` is the maximum-likelihood solution. ``ddof=1`` reproduces scikit-learn's
    ``PCA(n_components=K)``, which normalises by N - 1: its ``noise_variance_`` is
    ``sigma^2`` and ``PCA.score(x) * N`` the log-likelihood. ``log_likelihood`` is always
    that of x under the returned parameters.
    """
    x = _check_fit_input(x, latent_dim)
    num_rows = x.shape[0]
    if not 0 <= ddof < num_rows:
        raise ZooInputError(f"ddof must be in [0, {num_rows}), got {ddof}")
    mean = x.mean(0)
    centered = x - mean
    scatter = centered.T @ centered / (num_rows - ddof)
    evals, evecs = np.linalg.eigh(scatter)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    noise = float(np.mean(evals[latent_dim:]))
    if not noise > 0:
        raise ZooInputError(
            f"the data span at most {latent_dim} dimensions, so the noise variance is 0; use a"
            " smaller --latent-dim or more rows"
        )
    basis = evecs[:, :latent_dim]
    signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(latent_dim)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    loadings = basis * np.sqrt(np.maximum(evals[:latent_dim] - noise, 0.0))
    sigma = math.sqrt(noise)
    return PPCAFit(loadings, mean, sigma, float(log_likelihood(x, loadings, mean, sigma)))


def fit_em(
    x: np.ndarray,
    latent_dim: int,
    *,
    seed: int,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> EMFit:
    """EM for PPCA (Bishop 2006, section 12.2.2, eqs. 12.54-12.57).

    ``mean`` is the sample mean (its ML value whatever W and sigma); W and sigma start from a
    seeded random W (entries N(0, s^2 / K)) and ``sigma^2 = s^2``, with ``s^2`` the mean
    variance of the features. Each iteration with centered rows ``x~_n``::

        E:  M = W^T W + sigma^2 I,  E[z_n] = M^-1 W^T x~_n,
            E[z_n z_n^T] = sigma^2 M^-1 + E[z_n] E[z_n]^T
        M:  W' = [sum_n x~_n E[z_n]^T] [sum_n E[z_n z_n^T]]^-1
            sigma'^2 = 1/(N D) sum_n {|x~_n|^2 - 2 E[z_n]^T W'^T x~_n + tr(E[z_n z_n^T] W'^T W')}

    Stops when an iteration raises the log-likelihood by less than ``tol * |log-likelihood|``
    (``converged``) or after ``max_iter`` iterations. The log-likelihood never decreases
    (up to rounding) and converges to that of :func:`fit_ml` with ``ddof=0``; W to the same
    principal subspace, in an arbitrary rotation.
    """
    x = _check_fit_input(x, latent_dim)
    num_rows, num_features = x.shape
    mean = x.mean(0)
    centered = x - mean
    sq_norm = float((centered**2).sum())
    var = sq_norm / (num_rows * num_features)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((num_features, latent_dim)) * math.sqrt(var / latent_dim)
    noise = var
    eye = np.eye(latent_dim)
    trace = [float(log_likelihood(x, w, mean, math.sqrt(noise)))]
    converged = False
    for _ in range(max_iter):
        m_inv = np.linalg.inv(w.T @ w + noise * eye)
        ez = centered @ w @ m_inv  # rows are E[z_n] (M is symmetric)
        sum_ezz = num_rows * noise * m_inv + ez.T @ ez
        w = np.linalg.solve(sum_ezz, ez.T @ centered).T  # sum_ezz is symmetric
        noise = (
            sq_norm - 2.0 * float(np.sum((centered @ w) * ez)) + float(np.sum(sum_ezz * (w.T @ w)))
        ) / (num_rows * num_features)
        trace.append(float(log_likelihood(x, w, mean, math.sqrt(noise))))
        if trace[-1] - trace[-2] <= tol * abs(trace[-1]):
            converged = True
            break
    if not converged:
        logger.warning("EM for PPCA stopped after %d iterations without converging", max_iter)
    fit = PPCAFit(w, mean, math.sqrt(noise), trace[-1])
    return EMFit(fit, np.asarray(trace), converged)


def posterior_z(
    x: np.ndarray, loadings: np.ndarray, mean: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior of z given x and the globals (Bishop 2006, eq. 12.42).

    ``M = W^T W + sigma^2 I``; ``z_n | x_n ~ N(M^-1 W^T (x_n - mean), sigma^2 M^-1)``.
    Returns the means (N, K) and the covariance (K, K), the same for every row.
    """
    w = np.asarray(loadings, dtype=float)
    m_inv = np.linalg.inv(w.T @ w + sigma**2 * np.eye(w.shape[1]))
    loc = (np.asarray(x, dtype=float) - mean) @ w @ m_inv
    return loc, sigma**2 * m_inv


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles in degrees (largest first) between the column spaces of a and b."""
    return np.degrees(scipy.linalg.subspace_angles(np.asarray(a), np.asarray(b)))


def linear_autoencoder(
    x: np.ndarray,
    latent_dim: int,
    *,
    seed: int,
    num_steps: int = 1000,
    lr: float = 0.05,
) -> np.ndarray:
    """A tied-weight linear autoencoder trained by gradient descent; its weights (D, K).

    Encoder ``h = W^T x~`` and decoder ``x^ = W h`` of centered rows ``x~``; full-batch Adam
    (float64, learning rate decaying exponentially to ``lr / 1000``) on the mean squared
    reconstruction error, from seeded random weights. The data are divided by their overall
    scale first, which changes neither the optimum nor anything but the step size.

    Its optima are ``W_ae = U_K R`` (Baldi and Hornik 1989): the principal subspace, with
    ``W_ae^T W_ae = I`` (an orthonormal basis in any rotation R). The ML loadings of PPCA span
    the same subspace but have lengths set by the variance they explain:
    ``W_ml = U_K (Lambda_K - sigma^2 I)^1/2 R``, so ``W_ml^T W_ml = R^T (Lambda_K - sigma^2 I)
    R``, and ``W_ml -> W_ae (Lambda_K)^1/2`` only as sigma -> 0.
    """
    x = _check_fit_input(x, latent_dim)
    centered = x - x.mean(0)
    scale = float(np.sqrt(np.mean(centered**2)))
    data = torch.as_tensor(centered / (scale if scale > 0 else 1.0), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    num_features = x.shape[1]
    w = torch.randn(num_features, latent_dim, generator=generator, dtype=torch.float64)
    w = (w / math.sqrt(num_features)).requires_grad_()
    optimizer = torch.optim.Adam([w], lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=1e-3 ** (1.0 / max(num_steps, 1))
    )
    for _ in range(num_steps):
        optimizer.zero_grad()
        # A plain matmul is right here: no Pyro particles, w has no batch dims.
        recon = data @ w @ w.T
        loss = ((data - recon) ** 2).sum(-1).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
    logger.debug("linear autoencoder: final loss %.6g", loss.item())
    return w.detach().numpy().copy()


# --------------------------------------------------------------------------- metrics


def _mean_covariance(loadings: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Mean of C over draws (S, D, K), (S,) without forming the S matrices."""
    w = np.asarray(loadings, dtype=float)
    s = np.asarray(sigma, dtype=float).reshape(len(w))
    return np.einsum("sdk,sek->de", w, w) / len(w) + np.mean(s**2) * np.eye(w.shape[1])


def _top_eigenvectors(cov: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.eigh(cov)[1][:, ::-1][:, :k]


def covariance_metrics(
    draws: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray] | None,
    *,
    latent_dim: int,
    truth: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Rotation-invariant accuracy of PPCA draws (``Posterior.extra_metrics``).

    ``draws`` and ``reference`` map sites to arrays (S, *shape); ``Cbar`` is the mean of
    ``C = W W^T + sigma^2 I`` over draws. Against the reference: ``cov_rel_error`` =
    ``|Cbar - Cbar_ref|_F / |Cbar_ref|_F`` and ``subspace_angle_max_deg``, the largest
    principal angle between the top-K eigenvectors of the two. Against a truth:
    ``truth_cov_rel_error``, ``truth_subspace_angle_max_deg`` (top eigenvectors of Cbar
    against the true loadings' columns; min(K, K_true) of them) and
    ``truth_sigma_rel_error`` (posterior mean of sigma). None of them changes when W is
    rotated.
    """
    out: dict[str, float] = {}
    cbar = _mean_covariance(draws["loadings"], draws["sigma"])
    if reference is not None:
        cref = _mean_covariance(reference["loadings"], reference["sigma"])
        out["cov_rel_error"] = float(np.linalg.norm(cbar - cref) / np.linalg.norm(cref))
        angles = principal_angles(
            _top_eigenvectors(cbar, latent_dim), _top_eigenvectors(cref, latent_dim)
        )
        out["subspace_angle_max_deg"] = float(np.max(angles))
    if truth is not None:
        true_w = np.asarray(truth["loadings"], dtype=float)
        ctrue = covariance(true_w, truth["sigma"])
        out["truth_cov_rel_error"] = float(np.linalg.norm(cbar - ctrue) / np.linalg.norm(ctrue))
        k = min(latent_dim, true_w.shape[1])
        out["truth_subspace_angle_max_deg"] = float(
            np.max(principal_angles(_top_eigenvectors(cbar, k), true_w))
        )
        true_sigma = float(truth["sigma"])
        mean_sigma = float(np.mean(draws["sigma"]))
        out["truth_sigma_rel_error"] = abs(mean_sigma - true_sigma) / true_sigma
    return out


# --------------------------------------------------------------------------- data


def simulate(
    seed: int,
    num_data: int = 500,
    num_features: int = 10,
    latent_dim: int = 2,
    *,
    sigma: float = 0.5,
    loadings: np.ndarray | None = None,
    mean: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Simulate PPCA data with known parameters.

    ``loadings`` default to independent standard normal entries and ``mean`` to standard
    normal entries, both drawn from the seed. Returns a DataFrame with columns ``x1..xD`` and
    the truth ``{"loadings": (D, K), "mean": (D,), "sigma": ()}``.
    """
    if num_data < 2 or num_features < 2 or not 1 <= latent_dim < num_features:
        raise ZooInputError("simulate needs num_data >= 2 and 1 <= latent_dim < num_features")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ZooInputError(f"sigma must be a non-negative number, got {sigma}")
    rng = np.random.default_rng(seed)
    w = (
        rng.standard_normal((num_features, latent_dim))
        if loadings is None
        else np.asarray(loadings, dtype=float)
    )
    mu = rng.standard_normal(num_features) if mean is None else np.asarray(mean, dtype=float)
    if w.shape != (num_features, latent_dim) or mu.shape != (num_features,):
        raise ZooInputError(
            f"loadings must be ({num_features}, {latent_dim}) and mean ({num_features},)"
        )
    z = rng.standard_normal((num_data, latent_dim))
    x = mu + z @ w.T + sigma * rng.standard_normal((num_data, num_features))
    frame = pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(num_features)])
    frame.attrs["source"] = "simulated"
    return frame, {"loadings": w, "mean": mu, "sigma": np.array(float(sigma))}


def _digits(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.rename(columns={"target": "digit"})
    pixels = [c for c in frame.columns if c != "digit"]
    frame[pixels] = frame[pixels].astype(float)
    return frame


def _iris(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return frame


SIMULATED = {"num_data": 500, "num_features": 10, "latent_dim": 2, "sigma": 0.5}


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: how to load it (``load(seed)``), its default latent dim, the
    column of known row classes (kept out of the features) and, for simulated data, its
    truth (``truth(seed)``)."""

    description: str
    load: Callable[[int], pd.DataFrame]
    latent_dim: int
    labels: str | None = None
    truth: Callable[[int], dict[str, np.ndarray]] | None = None


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "scikit-learn digits: 1797 handwritten digits, 8x8 pixels (0-16) as 64 features,"
        " K = 5; the digit class colours plots",
        _digits,
        5,
        "digit",
    ),
    "iris": DatasetSpec(
        "scikit-learn iris: 150 flowers, 4 measurements in cm, K = 2; species colours plots",
        _iris,
        2,
        "species",
    ),
    "simulated": DatasetSpec(
        "500 rows from simulate(seed): 10 features, true K = 2, standard normal loadings,"
        " sigma = 0.5",
        lambda seed: simulate(seed, **SIMULATED)[0],
        SIMULATED["latent_dim"],
        None,
        lambda seed: simulate(seed, **SIMULATED)[1],
    ),
}


class Dataset(NamedTuple):
    """A loaded built-in data set."""

    frame: pd.DataFrame
    latent_dim: int
    labels: str | None
    truth: dict[str, np.ndarray] | None


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A built-in data set with its default latent dim, label column and truth (or None)."""
    if name not in DATASETS:
        raise ZooInputError(
            f"unknown dataset '{name}' for ppca; choose one of: {', '.join(DATASETS)}"
            " (or give the path of a CSV file)"
        )
    spec = DATASETS[name]
    frame = spec.load(seed)
    frame.attrs["source"] = name
    truth = spec.truth(seed) if spec.truth is not None else None
    return Dataset(frame, spec.latent_dim, spec.labels, truth)


# --------------------------------------------------------------------------- posterior


def _looks_like_path(text: str) -> bool:
    path = Path(text)
    return path.exists() or bool(path.suffix) or "/" in text or "\\" in text


def _check_numeric(frame: pd.DataFrame, features: Sequence[str], explicit: bool) -> None:
    for col in features:
        if col not in frame.columns:
            continue  # numeric_columns names a missing column
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = (values.isna() & frame[col].notna()).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            todo = (
                f"drop '{col}' from --features"
                if explicit
                else "drop that column or choose the numeric columns with --features a,b"
            )
            raise ZooInputError(
                f"column '{col}' is not numeric (value {frame[col].iloc[row]!r} in data row"
                f" {row + 1}); {todo}"
            )


def _feature_text(names: Sequence[str]) -> str:
    if len(names) <= 10:
        return ", ".join(names)
    return f"{len(names)} columns: {', '.join(names[:3])}, ..., {names[-1]}"


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
    bound = functools.partial(model, latent_dim=latent_dim, priors=priors)
    functools.update_wrapper(bound, model)
    bound_summary = functools.partial(summary_model, latent_dim=latent_dim, priors=priors)
    functools.update_wrapper(bound_summary, summary_model)
    bound_local = functools.partial(local_model, latent_dim=latent_dim, priors=priors)
    functools.update_wrapper(bound_local, local_model)

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
    if num_latent > NUTS_MAX_PARAMETERS:
        # NUTS wanders over the rotations of W with trees of depth 6-7; seen on digits
        # (385 parameters, 2 cores): 0.2 s an iteration, about 7 minutes for the smoke
        # preset and 30 for the full one. It stays available by name.
        default_methods = (
            "ml",
            "em",
            "delta",
            "laplace",
            "mean_field",
            "low_rank",
            "full_rank",
            "amortized",
        )
        description["methods"] = (
            f"nuts left out of the defaults ({num_latent} parameters: minutes to tens of"
            " minutes); ask for it with --methods nuts,..."
        )
    return Posterior(
        model_name="ppca",
        dataset=dataset_name,
        model=bound_summary,
        data={"x": tensor(x)},
        test_data={"x": tensor(x_all[test])} if len(test) else None,
        obs_site="x",
        sites=SITES,
        dims={"loadings": ["feature", "latent"], "mean": ["feature"]},
        coords={"feature": names, "latent": list(range(latent_dim))},
        closed_forms=closed_forms,
        truth=truth,
        description=description,
        max_plate_nesting=1,
        marginal_model=bound,
        local_model=bound_local,
        local=LocalLatents(site="z", dim=latent_dim, input="x", plate="data"),
        accuracy_sites=("mean", "sigma"),
        row_labels=row_labels,
        extra_metrics=functools.partial(covariance_metrics, latent_dim=latent_dim, truth=truth),
        default_methods=default_methods,
        identified=identified,
    )


def identified(draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the data identify, from draws with any leading axes: the covariance
    C = W W^T + sigma^2 I (its upper triangle, as ``cov``), the mean and sigma; W itself only
    up to rotation."""
    cov = covariance(draws["loadings"], draws["sigma"])
    upper = np.triu_indices(cov.shape[-1])
    return {"cov": cov[..., upper[0], upper[1]], "mean": draws["mean"], "sigma": draws["sigma"]}


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
