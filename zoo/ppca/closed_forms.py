"""Closed forms for PPCA: maximum likelihood and EM (Tipping and Bishop 1999), the posterior of the
latents, and a linear autoencoder baseline.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from zoo.errors import ZooInputError
from zoo.tensors import to_numpy

logger = logging.getLogger(__name__)


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
    x: np.ndarray, latent_dim: int, *, seed: int, num_steps: int = 1000, lr: float = 0.05
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
    return to_numpy(w).copy()
