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
    if run.moments is not None:
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


def verdict(method: str, record: Mapping[str, Mapping], *, reference: str | None) -> str:
    """One line a reader can act on."""
    diag, met = record["diagnostics"], record["metrics"]
    if diag.get("status") == "failed":
        return f"failed: {diag.get('error', '')}"
    notes = []
    if method == "nuts":
        # Where raw parameters are not identified (rotations of PPCA's loadings), NUTS is
        # judged on the identified quantities, and the raw R-hat is said beside them.
        suffix = "_identified" if "r_hat_max_identified" in diag else ""
        rhat = _number(diag.get(f"r_hat_max{suffix}", math.nan))
        ess = _number(diag.get(f"ess_bulk_min{suffix}", 0))
        ok = rhat < 1.01 and diag.get("divergences", 1) == 0 and ess > 400
        on = " of identified quantities" if suffix else ""
        notes.append(
            f"converged (R-hat{on} < 1.01, no divergences, bulk ESS > 400)"
            if ok
            else f"check convergence: R-hat{on} {rhat:.3f}, "
            f"{diag.get('divergences', 0)} divergences, bulk ESS {ess:.0f}"
        )
        if suffix:
            notes.append(
                f"raw parameters R-hat {_number(diag.get('r_hat_max')):.3f} (not"
                " identified: the sampler wanders over their symmetry)"
            )
    if "hessian" in diag and diag["hessian"] != "positive definite":
        notes.append(f"Hessian {diag['hessian'].split(':')[0]}")
    if diag.get("converged") is False:
        notes.append("optimizer did not converge")
    if method == reference:
        notes.insert(0, "reference")
    elif (
        "max_abs_mean_z" not in met
        and record.get("summary")
        and all(s["sd"] == 0 for s in record["summary"].values())
    ):
        notes.append("point estimate: no uncertainty")
    elif "max_abs_mean_z" in met:
        z, lo, hi = met["max_abs_mean_z"], met["sd_ratio_min"], met["sd_ratio_max"]
        if hi == 0:
            notes.append(f"point estimate: no uncertainty; means off by up to {z:.2f} sd")
        elif z < 0.1 and 0.9 < lo and hi < 1.1:
            notes.append(f"matches the reference (|z| <= {z:.2f}, sd ratio {lo:.2f}-{hi:.2f})")
        elif lo < 0.9:
            notes.append(f"over-confident: sd down to {lo:.2f} x reference (|z| <= {z:.2f})")
        elif hi > 1.1:
            notes.append(f"too wide: sd up to {hi:.2f} x reference (|z| <= {z:.2f})")
        else:
            notes.append(f"means off by up to {z:.2f} sd (sd ratio {lo:.2f}-{hi:.2f})")
    khat = diag.get("khat")
    if khat is not None:
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
