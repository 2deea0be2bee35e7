"""Choosing the number of mixture components: one comparison per K, judged by ELPD (PSIS-LOO
with ArviZ's ``compare``), by the ELBO and by BIC.

>>> result = select_components(make, [1, 2, 3, 4], out_dir="reports/k")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import arviz as az

from comparisons.compare import Comparison, OnMethod, compare
from comparisons.inputs import check_seed, check_writable, parse_ks
from comparisons.metrics import KHAT_BAD, reference_status
from comparisons.runners import Preset
from zoo import Posterior, ZooInputError

logger = logging.getLogger(__name__)

# parse_ks lives in comparisons.inputs (the command line reads --num-components without
# importing ArviZ) and is kept here too, where it was.
__all__ = ["SELECTION_METHODS", "criteria", "method_key", "parse_ks", "select_components"]

#: What a K-selection runs by default: NUTS for ELPD, mean-field for the ELBO, EM for BIC.
SELECTION_METHODS = ("em", "nuts", "mean_field")


def method_key(method: str, k: int) -> str:
    """The name of a method fitted with K components in a selection's results."""
    return f"{method}-k{k}"


def select_components(
    make_posterior: Callable[[int], Posterior],
    ks: Sequence[int],
    *,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    preset: str | Preset = "full",
    out_dir: str | Path | None = None,
    on_method: OnMethod | None = None,
    progress: bool = False,
) -> Comparison:
    """Compare numbers of components K by three criteria, one comparison per K.

    Parameters
    ----------
    make_posterior : callable
        ``make_posterior(k)``: the posterior with K components (same data for every K).
    ks : sequence of int
        The K to compare, each at least 1, no repeats.
    methods : sequence of str, optional
        Methods run for every K (default ``em``, ``nuts``, ``mean_field``: what the
        criteria need). NUTS is each K's reference.
    on_method : callable, optional
        ``on_method(method, info)`` as each method of each K finishes, ``info`` as in
        :func:`~comparisons.compare.compare` plus ``k``.

    ``seed``, ``preset``, ``out_dir`` and ``progress`` are as in
    :func:`~comparisons.compare.compare`.

    Returns
    -------
    Comparison
        ``results["methods"]`` holds every method as ``<method>-k<K>``; ``results["selection"]``
        the criteria per K (``elpd_loo`` with its standard error from NUTS, ``elbo`` of
        mean-field, ``bic`` of EM), the K each prefers and ArviZ's ``compare`` table.
    """
    ks, seed = _check_inputs(ks, seed, out_dir)
    methods = list(methods or SELECTION_METHODS)
    posteriors = {k: make_posterior(k) for k in ks}  # bad input fails before any fit
    start = time.perf_counter()
    per_k: dict[int, Comparison] = {}
    for k, post in posteriors.items():
        logger.info("K = %d", k)
        per_k[k] = compare(
            post,
            methods=methods,
            reference="nuts" if "nuts" in methods else "none",
            seed=seed,
            preset=preset,
            progress=progress,
            on_method=None if on_method is None else _with_k(on_method, k),
        )
    comparison = _merge(per_k, ks, methods, seed, start)
    return comparison.save(out_dir) if out_dir is not None else comparison


def _check_inputs(
    ks: Sequence[int], seed: int, out_dir: str | Path | None
) -> tuple[list[int], int]:
    """The K as whole numbers (each listed once, at least two) and the checked seed; the
    output folder, when given, must be writable."""
    ks = [int(k) for k in ks]
    if len(set(ks)) != len(ks):
        raise ZooInputError("a number of components is listed twice; list each K once")
    if len(ks) < 2:
        raise ZooInputError("choosing K needs at least two values, e.g. --num-components 1,2,3")
    seed = check_seed(seed)
    if out_dir is not None:
        check_writable(Path(out_dir))
    return ks, seed


def _merge(
    per_k: dict[int, Comparison], ks: list[int], methods: list[str], seed: int, start: float
) -> Comparison:
    """One comparison holding every K's fits as ``<method>-k<K>``, with the criteria and the
    time since ``start`` (``time.perf_counter``)."""
    records, idatas = {}, {}
    for k, comparison in per_k.items():
        for method, record in comparison.results["methods"].items():
            records[method_key(method, k)] = record
        for method, idata in comparison.idata.items():
            idatas[method_key(method, k)] = idata
    first = per_k[ks[0]].results
    results = {
        **{key: first[key] for key in ("schema", "model", "dataset", "num_data", "num_test")},
        "seed": seed,
        "preset": first["preset"],
        "reference": "nuts" if "nuts" in methods else None,
        "versions": first["versions"],
        "posterior": {
            **{k: v for k, v in first["posterior"].items() if k != "components"},
            "components": ", ".join(str(k) for k in ks),
            "selection": "each <method>-k<K> is judged against nuts-k<K>",
        },
        "reference_status": _reference_status(per_k),
        "methods": records,
        "selection": criteria(per_k),
        "timings": {"total_s": time.perf_counter() - start},
    }
    if "truth" in first:
        results["truth"] = first["truth"]
    return Comparison(results=results, idata=idatas)


def _with_k(on_method: OnMethod, k: int) -> OnMethod:
    """``on_method`` told which K the method ran with."""
    return lambda method, info: on_method(method, {**info, "k": k})


def _reference_status(per_k: dict[int, Comparison]) -> dict | None:
    """Each K's reference status merged into one (results.json's ``reference_status``):
    reliable only if every K's is; ``problems`` names the K of each failed check."""
    statuses = {k: c.results.get("reference_status") for k, c in per_k.items()}
    statuses = {k: v for k, v in statuses.items() if v}
    if not statuses:
        return None
    return {
        "method": next(iter(statuses.values()))["method"],
        "reliable": all(v["reliable"] for v in statuses.values()),
        "problems": "; ".join(
            f"K = {k}: {v['problems']}" for k, v in statuses.items() if v["problems"]
        ),
    }


def _flags(records: dict) -> dict[str, str]:
    """What is wrong with one K's fits, by the criterion it weakens: ``elpd_loo`` (PSIS-LOO's
    Pareto k above 0.7, NUTS failing its own checks), ``elbo`` (mean-field not converged),
    ``bic`` (EM not converged)."""
    out: dict[str, list[str]] = {}
    nuts = records.get("nuts")
    if nuts is not None:
        diag = nuts.get("diagnostics", {})
        khat, bad = diag.get("loo_khat_max"), diag.get("loo_khat_bad", 0)
        if isinstance(khat, float | int) and (khat > KHAT_BAD or bad):
            out.setdefault("elpd_loo", []).append(
                f"PSIS-LOO k {khat:.2f}, {bad} point(s) above {KHAT_BAD}"
            )
        status = reference_status("nuts", nuts)
        if not status["reliable"]:
            out.setdefault("elpd_loo", []).append(status["problems"])
    for method, key, name in (("mean_field", "elbo", "mean-field"), ("em", "bic", "EM")):
        diag = records.get(method, {}).get("diagnostics", {})
        if diag.get("status") == "failed":
            out.setdefault(key, []).append(f"{name} failed")
        elif diag.get("converged") is False:
            out.setdefault(key, []).append(f"{name} did not converge")
    return {key: ", ".join(notes) for key, notes in out.items()}


def criteria(per_k: dict[int, Comparison]) -> dict:
    """ELPD (PSIS-LOO of NUTS), ELBO (mean-field) and BIC (EM) per K, and the K each picks.

    ELPD: the largest, with ArviZ's ``compare`` giving each K's difference from the best
    and its standard error (``dse``); the smallest K within one ``dse`` of the best is also
    given, the usual parsimonious reading. ELBO: the largest (a lower bound on log evidence,
    so differences below its gap to the evidence are not decisive). BIC: the smallest.

    A choice that rests on flagged diagnostics says so: each row's ``flags`` maps a criterion
    to what weakens it at that K (PSIS-LOO k above 0.7, NUTS failing R-hat/divergence/ESS
    checks, an optimizer not converged), and ``warnings`` maps each chosen criterion whose
    K values carry flags to a sentence naming them, the chosen K first.
    """
    rows = []
    loo_inputs = {}
    for k, comparison in per_k.items():
        rows.append(_criteria_row(k, comparison.results["methods"]))
        if "elpd_loo" in rows[-1]:
            loo_inputs[f"k{k}"] = comparison.idata["nuts"]
    chosen: dict[str, int] = {}
    for key, best in (("elpd_loo", max), ("elbo", max), ("bic", min)):
        have = [r for r in rows if key in r]
        if have:
            chosen[key] = int(best(have, key=lambda r: r[key])["k"])
    table = _loo_table(loo_inputs)
    if table:
        within = [t["k"] for t in table if t["elpd_diff"] <= t["dse"]]
        chosen["elpd_loo_one_se"] = int(min(within))
    warned = {}
    for key, k in chosen.items():
        text = _warning(key, k, rows)
        if text:
            warned[key] = text
    return {"criteria": rows, "chosen": chosen, "warnings": warned, "loo_compare": table}


def _criteria_row(k: int, recs: dict) -> dict:
    """One K's criteria from its methods' records: ``elpd_loo`` (and its ``_se``) of NUTS,
    ``elbo`` of mean-field, ``bic`` of EM, and ``flags`` when any fit is flagged."""
    row: dict[str, float | int] = {"k": k}
    nuts = recs.get("nuts", {})
    if "elpd_loo" in nuts.get("metrics", {}):
        row["elpd_loo"] = nuts["metrics"]["elpd_loo"]
        row["elpd_loo_se"] = nuts["metrics"].get("elpd_loo_se", math.nan)
    mean_field = recs.get("mean_field", {}).get("diagnostics", {})
    if isinstance(mean_field.get("final_elbo"), float | int):
        row["elbo"] = float(mean_field["final_elbo"])
    em = recs.get("em", {}).get("diagnostics", {})
    if isinstance(em.get("bic"), float | int):
        row["bic"] = float(em["bic"])
    flags = _flags(recs)
    if flags:
        row["flags"] = flags
    return row


def _loo_table(loo_inputs: dict) -> list[dict]:
    """ArviZ's ``compare`` of the NUTS fits by PSIS-LOO, one entry per K ([] under two)."""
    if len(loo_inputs) < 2:
        return []
    # The fitted rows' log-likelihood; held-out rows (<obs>_test) are not LOO's.
    obs = next(iter(list(loo_inputs.values())[-1].observed_data.data_vars))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings: loo_khat_* say it per method
        frame = az.compare(loo_inputs, ic="loo", var_name=obs)
    return [
        {
            "k": int(str(name)[1:]),
            "rank": int(entry["rank"]),
            "elpd_loo": float(entry["elpd_loo"]),
            "elpd_diff": float(entry["elpd_diff"]),
            "dse": float(entry["dse"]),
            "weight": float(entry["weight"]),
        }
        for name, entry in frame.iterrows()
    ]


def _warning(key: str, k: int, rows: list[dict]) -> str:
    """The sentence that says a choice rests on flagged fits ("" when none is flagged)."""
    flag = "elpd_loo" if key.startswith("elpd_loo") else key
    flagged = sorted(
        ((r["k"], r["flags"][flag]) for r in rows if flag in r.get("flags", {})),
        key=lambda item: item[0] != k,
    )
    if not flagged:
        return ""
    said = "; ".join(f"K = {kk}{' (chosen)' if kk == k else ''}: {text}" for kk, text in flagged)
    return f"{key} chose K = {k} from flagged fits, treat it with caution: {said}"
