"""Accuracy against a reference, diagnostics and cost (DESIGN.md section 3)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import arviz as az
import numpy as np
from scipy.special import logsumexp

from comparisons.runners import MethodRun

#: PSIS k above this: importance weights (and LOO) are unreliable (Vehtari et al. 2024).
KHAT_BAD = 0.7

#: DESIGN.md section 5: NUTS is a trustworthy reference only with R-hat below RHAT_MAX, no
#: divergences and bulk ESS above ESS_BULK_MIN.
RHAT_MAX = 1.01
ESS_BULK_MIN = 400


def labelled(idata: az.InferenceData, sites: Sequence[str]) -> dict[str, np.ndarray]:
    """Flat draws of every scalar of the reported sites, keyed by ArviZ labels such as
    ``coef[mom_iq]``; each value has shape (chain * draw,)."""
    out: dict[str, np.ndarray] = {}
    post = idata.posterior
    for site in sites:
        da = post[site]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        values = da.values.reshape(-1, *da.shape[2:])
        if not extra:
            out[site] = values
            continue
        for index in np.ndindex(*da.shape[2:]):
            names = ",".join(str(da.coords[d].values[i]) for d, i in zip(extra, index))
            out[f"{site}[{names}]"] = values[(slice(None),) + index]
    return out


def moments_by_label(
    moments: Mapping[str, tuple[np.ndarray, np.ndarray]],
    idata: az.InferenceData,
    sites: Sequence[str],
) -> dict[str, tuple[float, float]]:
    """Exact site moments mapped onto ArviZ labels (same order as :func:`labelled`)."""
    labels = labelled(idata, sites)
    out: dict[str, tuple[float, float]] = {}
    flat = {site: (np.ravel(m), np.ravel(s)) for site, (m, s) in moments.items()}
    counters = dict.fromkeys(flat, 0)
    for label in labels:
        site = label.split("[")[0]
        i = counters[site]
        out[label] = (float(flat[site][0][i]), float(flat[site][1][i]))
        counters[site] += 1
    return out


def summary(idata: az.InferenceData, sites: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and sd of each reported scalar (sd 0 for a point estimate)."""
    out = {}
    for label, v in labelled(idata, sites).items():
        out[label] = {
            "mean": float(np.mean(v)),
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
        }
    return out


def reference_moments(
    idata: az.InferenceData, run: MethodRun, sites: Sequence[str]
) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Reference mean and sd by label, and the Monte Carlo standard error of each mean
    (zero for exact moments)."""
    if run.moments is not None and all(site in run.moments for site in sites):
        return moments_by_label(run.moments, idata, sites), {}
    stats = summary(idata, sites)
    mcse: dict[str, float] = {}
    if idata.posterior.sizes["draw"] > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            errors = labelled(
                _as_idata(az.mcse(idata, var_names=list(sites), method="mean")), sites
            )
        mcse = {k: float(np.ravel(v)[0]) for k, v in errors.items()}
    return {k: (v["mean"], v["sd"]) for k, v in stats.items()}, mcse


def _as_idata(dataset) -> az.InferenceData:
    # az.mcse returns a Dataset without chain/draw dims; give it back one draw to reuse labels.
    return az.InferenceData(posterior=dataset.expand_dims(chain=1, draw=1))


def accuracy(
    stats: Mapping[str, Mapping[str, float]],
    ref: Mapping[str, tuple[float, float]],
    ref_mcse: Mapping[str, float],
) -> dict[str, float]:
    """Mean z and sd ratio against the reference, with the reference's own MC error on the
    z scale (``ref_mcse_z_max``: a |mean z| below about twice it is noise); empty against a
    point reference, which has no sd."""
    z, ratio, noise = [], [], []
    for label, (m_ref, s_ref) in ref.items():
        if label not in stats or not s_ref > 0:
            continue
        z.append(abs(stats[label]["mean"] - m_ref) / s_ref)
        ratio.append(stats[label]["sd"] / s_ref)
        if label in ref_mcse:
            noise.append(ref_mcse[label] / s_ref)
    if not z:  # a point reference (ml, em) has no sd to measure against
        return {}
    out = {
        "max_abs_mean_z": float(max(z)),
        "sd_ratio_min": float(min(ratio)),
        "sd_ratio_max": float(max(ratio)),
    }
    if noise:
        out["ref_mcse_z_max"] = float(max(noise))
    return out


def lpd(log_lik: np.ndarray) -> float:
    """Mean over data points of the log of the posterior mean likelihood (per datapoint)."""
    flat = log_lik.reshape(-1, log_lik.shape[-1])
    return float(np.mean(logsumexp(flat, axis=0) - math.log(flat.shape[0])))


def psis_khat(log_weights: np.ndarray) -> tuple[float, float]:
    """PSIS Pareto k of the importance weights p/q, and the PSIS effective sample size."""
    flat = np.ravel(log_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed, k = az.psislw(flat)
    w = np.exp(smoothed - logsumexp(smoothed))
    return float(k), float(1.0 / np.sum(w**2))


def loo(idata: az.InferenceData, obs: str) -> dict[str, float | int]:
    """PSIS-LOO; the Pareto k of the worst point is reported, never silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = az.loo(idata, pointwise=True, var_name=obs)
    k = np.asarray(result.pareto_k)
    return {
        "elpd_loo": float(result.elpd_loo),
        "elpd_loo_se": float(result.se),
        "loo_khat_max": float(np.max(k)),
        "loo_khat_bad": int(np.sum(k > KHAT_BAD)),
    }


def nuts_diagnostics(idata: az.InferenceData, sites: Sequence[str]) -> dict[str, float]:
    """R-hat (rank-normalized), bulk and tail ESS over the reported scalars."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = labelled(_as_idata(az.rhat(idata, var_names=list(sites))), sites)
        bulk = labelled(_as_idata(az.ess(idata, var_names=list(sites), method="bulk")), sites)
        tail = labelled(_as_idata(az.ess(idata, var_names=list(sites), method="tail")), sites)
    return {
        "r_hat_max": _over(np.nanmax, rhat),
        "ess_bulk_min": _over(np.nanmin, bulk),
        "ess_tail_min": _over(np.nanmin, tail),
    }


def _over(reduce, values: Mapping[str, np.ndarray]) -> float:
    """``reduce`` over scalars, leaving out those a constant makes NaN (the one weight of a
    mixture with K = 1); NaN if every one is."""
    flat = np.array([np.ravel(v)[0] for v in values.values()], dtype=float)
    return float(reduce(flat)) if np.isfinite(flat).any() else math.nan


def identified_diagnostics(draws: Mapping[str, np.ndarray]) -> dict[str, float]:
    """R-hat and bulk ESS over functions of the parameters that the data identify, given as
    arrays (chain, draw, *shape)."""
    dataset = az.convert_to_dataset({k: np.asarray(v) for k, v in draws.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(dataset)
        bulk = az.ess(dataset, method="bulk")
    return {
        "r_hat_max_identified": _over(np.nanmax, {v: np.nanmax(rhat[v].values) for v in rhat}),
        "ess_bulk_min_identified": _over(np.nanmin, {v: np.nanmin(bulk[v].values) for v in bulk}),
    }


def _number(value) -> float:
    """A diagnostic as a float; results.json spells non-finite ones as strings."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def nuts_checks(diag: Mapping) -> list[str]:
    """The checks of DESIGN.md section 5 that a NUTS run fails, each with its value (e.g.
    ``"R-hat 1.026 >= 1.01"``); empty when it passes. Judged on the identified quantities
    (``r_hat_max_identified``...) where the diagnostics have them."""
    suffix = "_identified" if "r_hat_max_identified" in diag else ""
    on = " of identified quantities" if suffix else ""
    rhat = _number(diag.get(f"r_hat_max{suffix}", math.nan))
    ess = _number(diag.get(f"ess_bulk_min{suffix}", math.nan))
    divergences = diag.get("divergences")
    failed = []
    if not rhat < RHAT_MAX:
        failed.append(f"R-hat{on} {rhat:.3f} >= {RHAT_MAX}")
    if not isinstance(divergences, int | float) or divergences != 0:
        failed.append(f"{divergences if divergences is not None else 'unknown'} divergences")
    if not ess > ESS_BULK_MIN:
        failed.append(f"bulk ESS {ess:.0f} <= {ESS_BULK_MIN}")
    return failed


def reference_status(method: str, record: Mapping[str, Mapping]) -> dict:
    """Whether the reference passes its own checks: ``{"method", "reliable", "problems"}``.

    NUTS must pass :func:`nuts_checks` (DESIGN.md section 5); an iterative closed form (EM)
    must have converged. ``problems`` names the method and each failed check with its value
    (``"nuts: R-hat 1.026 >= 1.01, bulk ESS 91 <= 400"``; "" when none).
    A comparison records this as ``results["reference_status"]`` and says it in the verdict
    of every method judged against an unreliable reference.
    """
    diag = record["diagnostics"]
    problems: list[str] = []
    if diag.get("status") == "failed":
        problems.append(f"failed: {diag.get('error', '')}")
    elif "r_hat_max" in diag:  # a sampler's chains: judged by their own checks
        problems += nuts_checks(diag)
    elif diag.get("converged") is False:
        problems.append("did not converge")
    said = f"{method}: {', '.join(problems)}" if problems else ""
    return {"method": method, "reliable": not problems, "problems": said}


def _accuracy_note(record: Mapping[str, Mapping]) -> str | None:
    """Mean z and sd ratios in words; None where nothing was measured."""
    met = record["metrics"]
    if "max_abs_mean_z" not in met:
        summary = record.get("summary")
        if summary and all(s["sd"] == 0 for s in summary.values()):
            return "point estimate: no uncertainty"
        return None
    z, lo, hi = met["max_abs_mean_z"], met["sd_ratio_min"], met["sd_ratio_max"]
    if hi == 0:
        return f"point estimate: no uncertainty; means off by up to {z:.2f} sd"
    if z < 0.1 and 0.9 < lo and hi < 1.1:
        return f"matches the reference (|z| <= {z:.2f}, sd ratio {lo:.2f}-{hi:.2f})"
    if lo < 0.9:
        return f"over-confident: sd down to {lo:.2f} x reference (|z| <= {z:.2f})"
    if hi > 1.1:
        return f"too wide: sd up to {hi:.2f} x reference (|z| <= {z:.2f})"
    return f"means off by up to {z:.2f} sd (sd ratio {lo:.2f}-{hi:.2f})"


def _covariance_note(error: float, spread: float | None, met: Mapping) -> str:
    """The rotation-free accuracy of a factor model: the relative error of its mean
    covariance against the reference's own spread of it, and the largest principal angle."""
    if spread is None or not spread > 0:
        note = f"covariance error {error:.3g}"
    elif error <= spread:
        note = f"covariance error {error:.3g}, within the reference's own spread {spread:.2g}"
    else:
        note = (
            f"covariance error {error:.3g} = {error / spread:.3g} x the reference's own spread"
            f" {spread:.2g}"
        )
    angle = met.get("subspace_angle_max_deg")
    if angle is not None:
        note += f"; principal subspace {angle:.2g} deg from the reference's"
    return note


def verdict(
    method: str,
    record: Mapping[str, Mapping],
    *,
    reference: str | None,
    reference_problem: str | None = None,
) -> str:
    """One line a reader can act on.

    ``reference_problem``: why the reference is unreliable (``reference_status``'s
    ``problems``), said first in the verdict of the reference and of every method judged
    against it; None when it passed its checks.
    """
    diag, met = record["diagnostics"], record["metrics"]
    if diag.get("status") == "failed":
        return f"failed: {diag.get('error', '')}"
    if diag.get("status") == "stopped":  # the reason starts with "stopped"
        return str(diag.get("reason", "stopped"))
    notes = []
    if "r_hat_max" in diag:  # chains of a sampler (NUTS): its convergence first
        # Where raw parameters are not identified (rotations of PPCA's loadings), NUTS is
        # judged on the identified quantities, and the raw R-hat is said beside them.
        suffix = "_identified" if "r_hat_max_identified" in diag else ""
        on = " of identified quantities" if suffix else ""
        failed = nuts_checks(diag)
        notes.append(
            f"converged (R-hat{on} < {RHAT_MAX}, no divergences, bulk ESS > {ESS_BULK_MIN})"
            if not failed
            else f"check convergence: {', '.join(failed)}"
        )
        if suffix:
            notes.append(
                f"raw parameters R-hat {_number(diag.get('r_hat_max')):.3f} (not"
                " identified: the sampler wanders over their symmetry)"
            )
    if "hessian" in diag and diag["hessian"] != "positive definite":
        notes.append(f"Hessian {diag['hessian'].split(':')[0]}")
    if "budget" in diag:  # a fit stopped at its preset's max_seconds
        notes.append(f"stopped at its budget: {diag['budget']}")
    elif diag.get("converged") is False:
        notes.append("optimizer did not converge")
    if method == reference:
        notes.insert(0, "reference" if reference_problem is None else "unreliable reference")
    else:
        if reference_problem is not None:
            notes.insert(0, f"judged against an unreliable reference ({reference_problem})")
        accuracy_note = _accuracy_note(record)
        if accuracy_note:
            notes.append(accuracy_note)
        if "cov_rel_error" in met:
            notes.append(_covariance_note(met["cov_rel_error"], met.get("cov_ref_spread"), met))
    khat = diag.get("khat")
    if isinstance(khat, str):  # not finite (spelled out for JSON)
        notes.append(f"PSIS k {khat}: importance correction unreliable")
    elif khat is not None:
        notes.append(
            f"PSIS k {khat:.2f}"
            + (" > 0.7: importance correction unreliable" if khat > KHAT_BAD else "")
        )
    return "; ".join(notes + loo_warning(diag))


def loo_warning(diagnostics: Mapping) -> list[str]:
    """The verdict's note when PSIS-LOO's Pareto k exceeds :data:`KHAT_BAD` at some rows
    (their leave-one-out densities, and elpd LOO, are unreliable); empty otherwise."""
    k = _number(diagnostics.get("loo_khat_max", math.nan))
    if not k > KHAT_BAD:
        return []
    bad = diagnostics.get("loo_khat_bad")
    rows = f" at {bad} row{'s' if bad != 1 else ''}" if bad else ""
    return [f"PSIS-LOO k {k:.2f} > {KHAT_BAD}{rows}: elpd LOO unreliable"]
