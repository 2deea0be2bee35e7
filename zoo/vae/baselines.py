"""Classical density models as baselines for the autoencoders, on the same preprocessed rows:
PPCA by maximum likelihood and a full-covariance Gaussian, with held-out log densities in nats
per row (image) and their conversion to bits per dimension.

A VAE's held-out ELBO (or importance-sampled log-likelihood) in nats per image is comparable to
these numbers only on the same rows and the same dequantization (:mod:`zoo.vae.data`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg

from zoo.errors import ZooInputError
from zoo.ppca.closed_forms import covariance, fit_ml


class LogDensity(NamedTuple):
    """Per-row log densities ``log p(x_n)`` in nats of the held-out rows (M,) and of the
    training rows (N,) under a model fitted to the training rows."""

    test: np.ndarray
    train: np.ndarray


def gaussian_rows(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``log N(x_n | mean, cov)`` of each row of x (N, D), through the Cholesky factor of cov."""
    x = np.asarray(x, dtype=float)
    try:
        chol = scipy.linalg.cholesky(cov, lower=True)
    except np.linalg.LinAlgError:
        raise ZooInputError(
            "the covariance is singular (a feature is constant or features are collinear);"
            " dequantize or drop such features, or use PPCA"
        ) from None
    white = scipy.linalg.solve_triangular(chol, (x - mean).T, lower=True)
    logdet = 2.0 * np.log(np.diag(chol)).sum()
    return -0.5 * (x.shape[1] * math.log(2 * math.pi) + logdet + (white**2).sum(0))


def ppca_log_density(train: np.ndarray, test: np.ndarray, latent_dim: int) -> LogDensity:
    """Per-row log densities under maximum-likelihood PPCA fitted to ``train``.

    :func:`zoo.ppca.fit_ml` (Tipping and Bishop 1999): ``mu`` the sample mean, ``sigma^2`` the
    mean of the D - K smallest eigenvalues of the ML sample covariance (normalised by N),
    ``W = U_K (Lambda_K - sigma^2 I)^1/2``; then ``x ~ N(mu, W W^T + sigma^2 I)``.
    """
    fit = fit_ml(train, latent_dim)
    cov = covariance(fit.loadings, fit.sigma)
    return LogDensity(gaussian_rows(test, fit.mean, cov), gaussian_rows(train, fit.mean, cov))


def gaussian_log_density(train: np.ndarray, test: np.ndarray) -> LogDensity:
    """Per-row log densities under the full-covariance Gaussian fitted to ``train`` by maximum
    likelihood: the sample mean and the sample covariance normalised by N."""
    train = np.asarray(train, dtype=float)
    mean = train.mean(0)
    centered = train - mean
    cov = centered.T @ centered / len(train)
    return LogDensity(gaussian_rows(test, mean, cov), gaussian_rows(train, mean, cov))


def bits_per_dim(
    log_density_nats: float | np.ndarray, dim: int, levels: int | None = None
) -> float | np.ndarray:
    """Negative log-likelihood in bits per dimension of a log density in nats per row.

    Without ``levels``, on the scale of the data::

        bits/dim = -log p(x) / (D log 2)

    With ``levels`` L, for data dequantized to [0, 1] as ``x = (v + u) / L``: the density of
    ``y = L x`` on [0, L)^D is ``p(x) / L^D``, so, as usual for images (bits/dim of 8-bit
    images use L = 256)::

        bits/dim = -(log p(x) - D log L) / (D log 2)

    which bounds ``-log2 P(v) / D`` of the discrete values from above. A uniform density on
    [0, 1]^D gives ``log2 L``.
    """
    nats = np.asarray(log_density_nats, dtype=float)
    if levels is not None:
        nats = nats - dim * math.log(levels)
    bits = -nats / (dim * math.log(2))
    return float(bits) if bits.ndim == 0 else bits


def baseline_forms(train: np.ndarray, test: np.ndarray, latent_dim: int) -> dict:
    """The closed forms of an autoencoder's comparison: PPCA by maximum likelihood with
    ``latent_dim`` latents (``ml``, where that is fewer than the columns) and a
    full-covariance Gaussian (``gaussian``), fitted on ``train``, measured on ``test``
    (nats per row)."""
    from zoo.posterior import ClosedForm

    def baseline(fn, **kw):
        def run(seed: int, num_draws: int) -> ClosedForm:
            density = fn(train, test, **kw)
            metrics = {
                "lpd_test": float(np.mean(density.test)),
                "lpd_train": float(np.mean(density.train)),
            }
            return ClosedForm(draws={}, point=True, metrics=metrics)

        return run

    forms = {"gaussian": baseline(gaussian_log_density)}
    if latent_dim < train.shape[1]:
        forms["ml"] = baseline(ppca_log_density, latent_dim=latent_dim)
    return forms
