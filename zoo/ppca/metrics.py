"""Rotation-free comparisons of PPCA fits: covariance errors, principal angles and identified
quantities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    principal angle between the top-K eigenvectors of the two; where the reference has more
    than one draw, ``cov_ref_spread`` = ``sqrt(E_ref |C - Cbar_ref|_F^2) / |Cbar_ref|_F``, the
    reference posterior's own spread of C on the same scale (an error well below it is
    within the posterior's uncertainty, one above it is not). Against a truth:
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
        if len(reference["loadings"]) > 1:
            spread = covariance(reference["loadings"], np.ravel(reference["sigma"])) - cref
            out["cov_ref_spread"] = float(
                np.sqrt(np.mean(np.sum(spread**2, axis=(-2, -1)))) / np.linalg.norm(cref)
            )
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


#: Entries of C = W W^T + sigma^2 I kept per draw: every pair (i <= j) while there are at most
#: this many, else the diagonal (digits, D = 64: 2080 pairs a draw would swell every .nc file).
MAX_COV_ENTRIES = 64


def cov_entries(feature_names: Sequence[str]) -> list[tuple[int, int]]:
    """The (i, j) entries of C that :func:`identified` reports: the upper triangle row by row
    when it has at most :data:`MAX_COV_ENTRIES` entries, else the diagonal."""
    d = len(feature_names)
    if d * (d + 1) // 2 <= MAX_COV_ENTRIES:
        return [(i, j) for i in range(d) for j in range(i, d)]
    return [(i, i) for i in range(d)]


def cov_entry_names(feature_names: Sequence[str]) -> list[str]:
    """Coordinate values of :func:`cov_entries`: ``"a,b"``, so ArviZ labels read ``cov[a,b]``."""
    names = [str(f) for f in feature_names]
    return [f"{names[i]},{names[j]}" for i, j in cov_entries(names)]


def identified(
    draws: Mapping[str, np.ndarray],
    *,
    entries: Sequence[tuple[int, int]] | None = None,
    latent_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """What the data identify, from draws with any leading axes (``Posterior.identified``).

    ``cov``: entries of the covariance C = W W^T + sigma^2 I (``entries``, default its
    upper triangle row by row); ``eigenvalues``: the top ``latent_dim`` eigenvalues of C in
    decreasing order (default all; the others equal sigma^2), the variance along each
    principal axis; ``mean`` and ``sigma`` as they are. W itself is identified only up to
    rotation; none of these changes when W is rotated.
    """
    cov = covariance(draws["loadings"], draws["sigma"])
    if entries is None:
        rows, cols = np.triu_indices(cov.shape[-1])
    else:
        rows, cols = (np.array(v, dtype=int) for v in zip(*entries))
    eigenvalues = np.linalg.eigvalsh(cov)[..., ::-1]
    if latent_dim is not None:
        eigenvalues = eigenvalues[..., :latent_dim]
    return {
        "cov": cov[..., rows, cols],
        "eigenvalues": np.ascontiguousarray(eigenvalues),
        "mean": draws["mean"],
        "sigma": draws["sigma"],
    }
