"""Relabelling mixture draws: sort by the first coordinate of ``locs``, or match components
(Hungarian) to a reference or to the draws' own mean (Stephens 2000).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from zoo.errors import ZooInputError
from zoo.gmm.model import SITES
from zoo.posterior import Relabelled

#: relabel: neighbouring components whose first coordinates are closer than this many sds of
#: their difference make the sort order ambiguous.
AMBIGUOUS_GAP_Z = 3.0


#: relabel without a reference: rounds of matching the draws to their own mean at most.
MAX_RELABEL_ROUNDS = 20


def _flat(values: np.ndarray, tail: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values.reshape((-1,) + values.shape[values.ndim - tail :])


def _min_gap_z(locs: np.ndarray) -> float:
    """Smallest separation of neighbouring components' first coordinates, as the gap of their
    means over the sd of the difference (draws (M, K, D) already in canonical order)."""
    if locs.shape[1] < 2:
        return math.inf
    first = locs[:, :, 0]
    gap = np.diff(first.mean(0))
    var = first.var(0)
    sd = np.sqrt(var[1:] + var[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, gap / sd, np.where(gap > 0, np.inf, 0.0))
    return float(z.min())


def _features_for_matching(draws: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Per-component quantities of each draw, (M, K) each: locs and log scales per feature,
    weights."""
    locs = _flat(draws["locs"], 2)
    out = [locs[:, :, j] for j in range(locs.shape[2])]
    if "scales" in draws:
        scales = _flat(draws["scales"], 2)
        out += [np.log(scales[:, :, j]) for j in range(scales.shape[2])]
    if "weights" in draws:
        out.append(_flat(draws["weights"], 1))
    return out


def _hungarian(draws: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> np.ndarray:
    """perm (M, K): perm[m, j] is the component of draw m matched to reference component j."""
    keys = [k for k in SITES if k in draws and k in reference]
    ours = _features_for_matching({k: draws[k] for k in keys})
    theirs = _features_for_matching({k: reference[k] for k in keys})
    m, k = ours[0].shape
    cost = np.zeros((m, k, k))  # [draw, reference component, draw component]
    for q, r in zip(ours, theirs):
        unit = r.std()
        unit = unit if unit > 0 else 1.0
        cost += ((q[:, None, :] - r.mean(0)[None, :, None]) / unit) ** 2
    perm = np.empty((m, k), dtype=int)
    for i in range(m):
        rows, cols = linear_sum_assignment(cost[i])
        perm[i, rows] = cols
    return perm


def _permuted(draws: Mapping[str, np.ndarray], perm: np.ndarray) -> dict[str, np.ndarray]:
    """The mixture sites of ``draws`` with component ``perm[c, s, j]`` of each draw put at
    position j."""
    out = {}
    for site in SITES:
        if site in draws:
            index = perm if site == "weights" else perm[..., None]
            out[site] = np.take_along_axis(np.asarray(draws[site]), index, axis=2)
    return out


def relabel(
    draws: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None = None
) -> Relabelled:
    """Put the components of every draw in canonical order.

    Parameters
    ----------
    draws : mapping
        Site -> array (chain, draw, *site shape): ``weights`` (C, S, K), ``locs`` and
        ``scales`` (C, S, K, D). Other keys pass through unchanged.
    reference : mapping, optional
        Draws of a reference method in the same form, already canonical.

    Returns
    -------
    Relabelled
        ``draws`` with ``weights``, ``locs`` and ``scales`` permuted consistently, and
        ``info``: ``relabel_method`` ("sort", "hungarian" or "hungarian to own mean"),
        ``label_swaps`` (the number of
        consecutive draw pairs within a chain whose permutation to the canonical order
        differs: the label switches the method made), ``label_swaps_per_chain``
        (comma-separated) and ``relabel_min_gap_z`` (the smallest gap z below; absent when
        infinite: one component, or point estimates whose first coordinates differ).

    Notes
    -----
    By default each draw's components are sorted by ``locs[..., 0]``. The sort is
    *ambiguous* when two neighbouring components' first coordinates are not well separated:
    their mean gap is at most ``AMBIGUOUS_GAP_Z = 3`` sds of the difference (posterior sds,
    over draws), in the reference or in the sorted draws (so a sort would flip their order
    in more than about 0.1% of draws; exact ties count as ambiguous). Then, when a
    ``reference`` is given, each draw is matched to the reference's mean components by a
    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) minimizing the squared
    distance over locs, log scales and weights, each standardized by its spread in the
    reference. Without a reference (the reference method's own draws), each draw is matched
    the same way to the mean of all the draws, starting from the sorted labels and repeated
    until no draw changes (at most ``MAX_RELABEL_ROUNDS`` rounds; Stephens 2000): the labels
    are then consistent across draws, in the order of the sorted start.
    """
    locs = _checked_locs(draws)
    chains, num_draws, k, _ = locs.shape
    perm = np.argsort(locs[..., 0], axis=-1, kind="stable")
    method = "sort"
    sorted_locs = np.take_along_axis(locs, perm[..., None], axis=-2).reshape(-1, k, locs.shape[3])
    gap_z = _min_gap_z(sorted_locs)
    if reference is not None and "locs" in reference:
        gap_z = min(gap_z, _min_gap_z(_flat(reference["locs"], 2)))
        if gap_z <= AMBIGUOUS_GAP_Z:
            perm = _hungarian(draws, reference).reshape(chains, num_draws, k)
            method = "hungarian"
    elif gap_z <= AMBIGUOUS_GAP_Z and chains * num_draws > 1:
        perm = _match_own_mean(draws, perm)
        method = "hungarian to own mean"
    out = {**dict(draws), **_permuted(draws, perm)}
    return Relabelled(draws=out, info=_relabel_info(method, perm, gap_z))


def sorted_components(draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mixture sites of ``draws`` (any leading axes: ``weights`` (..., K), ``locs`` and
    ``scales`` (..., K, D)) with each draw's components in increasing order of their first
    coordinate. A function of each draw alone that no relabelling changes: what calibration
    by simulation ranks (a sort that uses other draws, as :func:`relabel` may, would rank
    the truth against draws relabelled with knowledge of the draws)."""
    locs = np.asarray(draws["locs"], dtype=float)
    order = np.argsort(locs[..., 0], axis=-1, kind="stable")
    out = {}
    for site in SITES:
        value = np.asarray(draws[site], dtype=float)
        index = order if site == "weights" else order[..., None]
        out[site] = np.take_along_axis(value, index, axis=order.ndim - 1)
    return out


def _checked_locs(draws: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``locs`` draws as an array (chain, draw, component, feature), or a ZooInputError."""
    if "locs" not in draws:
        raise ZooInputError("relabel needs the 'locs' draws (chain, draw, component, feature)")
    locs = np.asarray(draws["locs"])
    if locs.ndim != 4:
        raise ZooInputError(
            f"relabel needs locs of shape (chain, draw, component, feature), got {locs.shape}"
        )
    return locs


def _match_own_mean(draws: Mapping[str, np.ndarray], perm: np.ndarray) -> np.ndarray:
    """No reference (the reference method itself): match every draw to the mean of the draws,
    from the labels ``perm`` (C, S, K), until no draw changes (Stephens 2000's relabelling
    with a squared-distance loss). A sort would split a component whose first coordinate
    overlaps another's between the two."""
    for _ in range(MAX_RELABEL_ROUNDS):
        matched = _hungarian(draws, _permuted(draws, perm)).reshape(perm.shape)
        if np.array_equal(matched, perm):
            break
        perm = matched
    return perm


def _relabel_info(method: str, perm: np.ndarray, gap_z: float) -> dict[str, float | int | str]:
    """The ``info`` of :func:`relabel`: its method, label swaps and smallest gap z."""
    swaps = np.any(perm[:, 1:] != perm[:, :-1], axis=-1).sum(axis=1)
    info: dict[str, float | int | str] = {
        "relabel_method": method,
        "label_swaps": int(swaps.sum()),
        "label_swaps_per_chain": ",".join(str(int(s)) for s in swaps),
    }
    if math.isfinite(gap_z):  # absent for one component or point estimates a gap apart
        info["relabel_min_gap_z"] = float(gap_z)
    return info
