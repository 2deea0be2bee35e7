"""Rotation-free comparisons of PPCA fits: covariance errors, principal angles and identified
quantities.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from zoo.ppca.closed_forms import covariance, principal_angles


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


def identified(draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the data identify, from draws with any leading axes: the covariance
    C = W W^T + sigma^2 I (its upper triangle, as ``cov``), the mean and sigma; W itself only
    up to rotation."""
    cov = covariance(draws["loadings"], draws["sigma"])
    upper = np.triu_indices(cov.shape[-1])
    return {"cov": cov[..., upper[0], upper[1]], "mean": draws["mean"], "sigma": draws["sigma"]}
