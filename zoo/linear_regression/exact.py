"""The exact normal-inverse-gamma posterior of the conjugate regression."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zoo.errors import ZooInputError
from zoo.linear_regression.model import Priors


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
    known sigma (a flat prior, with known sigma only: zero prior precision). The result is
    mapped to (intercept, coef) by intercept = intercept_c - xbar.coef.
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
    # A flat prior is the limit of infinite prior scales: zero prior precision.
    prec0 = np.zeros((len(s0), len(s0))) if priors.family == "flat" else np.diag(1.0 / s0**2)
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
