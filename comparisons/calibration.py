"""Simulation-based calibration (SBC; Talts, Betancourt, Simpson, Vehtari and Gelman 2018)
of the zoo's methods, one replication per Dask task (:mod:`comparisons.engine`).

A replication draws the parameters from the prior, simulates a data set of the chosen design
from them (the regression keeps the data set's predictors; each model's ``SIMULATION_DESIGN``
says what it draws), runs each method on it, and
records, for every scalar parameter, the rank of the true value among ``L`` of the method's
posterior draws (NUTS's thinned evenly over its chains). If a method's posterior is the
posterior, the true value is a draw from it as much as any other, and its rank is uniform on
0..L over replications. Its departures have shapes:

- over-confident (intervals too narrow): ranks pile up at both ends (a U);
- under-confident (too wide): ranks pile up in the middle;
- biased: ranks lean to one end (the posterior sits above or below the truth).

The test of uniformity is the ECDF of the ranks against the uniform one, inside the
simultaneous band of Säilynoja, Bürkner and Vehtari (2022) (ArviZ's optimized band): a
parameter is flagged when any point of its ECDF leaves the band. The band's level is 95% for
the method as a whole: with P parameters each band is at 1 - 0.05 / P (Bonferroni), so a
calibrated method is flagged on any parameter in at most 5% of calibrations. The coverage of
the central 50% and 90% intervals (the share of replications whose truth falls inside) and,
for variational methods, the symmetry check of Yao, Vehtari, Simpson and Gelman (2018) (VSBC:
the truth's quantile u under q is as likely to be below 0.5 as above it, by as much, where q
is centred on the posterior; tested with Wilcoxon's signed-rank test of u - 0.5, which is
exact for a sample's symmetry about a point, where a two-sample test of u against 1 - u is
not, the two samples being one) name the departure.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

#: Draws each method's posterior is ranked among (L): ranks run from 0 to L.
NUM_RANK_DRAWS = 99

#: The level of the ECDF bands of one method, over all its parameters (Säilynoja et al.
#: 2022, Bonferroni across parameters).
BAND_PROB = 0.95

#: Methods whose draws come from a fitted q (the VSBC symmetry test applies to them).
VARIATIONAL = ("mean_field", "low_rank", "full_rank", "flow", "laplace", "amortized")


def replication(
    model: str,
    data: str,
    options: Mapping[str, Any],
    methods: Sequence[str],
    *,
    seed: int,
    replication: int,
    preset: str | Any,
    num_rank_draws: int = NUM_RANK_DRAWS,
) -> dict[str, Any]:
    """One SBC replication (a Dask task; plain arguments, a JSON-ready result).

    Replication r draws its truth with its own seed and runs its methods with another, both
    drawn from (``seed``, r) (:func:`replication_seeds`: calibrations of seeds 0 and 1 share
    no replication, and no method's draws reuse the random numbers of the truth, which
    would tie a draw to the truth it is ranked against). Returns the
    truth per scalar parameter (ArviZ labels, ``coef[mom_iq]``), and per method the rank of
    each truth among ``num_rank_draws`` posterior draws, its wall time and diagnostics (a
    method that fails or is stopped has ``error`` instead of ranks)."""
    import torch

    from comparisons.runners import PRESETS, resolve_methods, run_method
    from zoo import get_model

    torch.set_default_dtype(torch.float64)
    spec = get_model(model)
    simulate = getattr(spec.module, "simulated_posterior", None)
    if simulate is None:
        raise ValueError(f"{model} has no simulated_posterior: calibration does not run on it")
    rep_seed, method_seed = replication_seeds(seed, replication)
    if "training" in inspect.signature(simulate).parameters and isinstance(preset, str):
        options = {"training": preset, **options}  # a VAE's networks trained as its methods run
    truth, post = simulate(data, rep_seed, seed=seed, **options)
    true_values = _ranked({k: np.asarray(v)[None] for k, v in truth.items()}, post)
    settings = PRESETS[preset] if isinstance(preset, str) else preset
    out: dict[str, Any] = {}
    for method in resolve_methods(post, list(methods)):
        start = time.perf_counter()
        try:
            run = run_method(post, method, seed=method_seed, preset=settings)
        except Exception as exc:  # noqa: BLE001 (a method's failure is its record, not the task's)
            out[method.name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        wall = time.perf_counter() - start
        if run.stopped or not run.draws:
            out[method.name] = {"error": run.error or "no draws", "wall_s": wall}
            continue
        if run.point:
            out[method.name] = {"error": POINT_ERROR, "wall_s": wall}
            continue
        draws = _ranked(_thinned(post, run.draws, num_rank_draws), post)
        ranks = {
            label: int(np.sum(draws[label] < float(value.ravel()[0])))
            for label, value in true_values.items()
        }
        keep = ("divergences", "r_hat_max", "ess_bulk_min", "converged", "khat")
        out[method.name] = {
            "ranks": ranks,
            "wall_s": wall,
            "diagnostics": {k: run.diagnostics[k] for k in keep if k in run.diagnostics},
        }
    return {
        "replication": replication,
        "seed": rep_seed,
        "method_seed": method_seed,
        "truth": {k: float(v.ravel()[0]) for k, v in true_values.items()},
        "methods": out,
    }


#: The record of a method that gave one point, not draws (a guard: ``zoo calibrate`` leaves
#: such methods out, :func:`point_methods`).
POINT_ERROR = (
    "a point estimate (one draw): it has no intervals, and SBC ranks the truth among draws"
)


def point_methods(post, methods: Sequence[Any]) -> list[str]:
    """The names among ``methods`` (MethodSpecs of ``post``) that give a point, not draws:
    guides that are points (``delta``), amortized guides whose globals are a delta (their
    default), and closed forms that are points (EM, ML: run once on the posterior's own data
    to ask; one that cannot run on a design, such as the VAE's encoder before training, is
    counted as draws, and a replication that finds a point records it as such)."""
    from guides import GUIDES

    points = []
    for m in methods:
        if m.family in GUIDES and GUIDES[m.family].point:
            points.append(m.name)
        elif m.family == "amortized" and post.sites:
            if m.options.get("global_guide", "delta") in (None, "delta"):
                points.append(m.name)
        elif m.family == "closed_form":
            try:
                point = post.closed_forms[m.options.get("form", m.name)](0, 2).point
            except Exception:  # noqa: BLE001 (a design without trained networks: the
                continue  # replication's own guard records a point that slips through)
            if point:
                points.append(m.name)
    return points


#: How a replication's seeds are drawn (:func:`replication_seeds`), kept in the job's
#: settings so that a folder of replications seeded otherwise is not resumed into this job.
SEED_SCHEME = "truth and methods apart"


def _thinned(post, draws: Mapping[str, np.ndarray], num: int) -> dict[str, np.ndarray]:
    """``num`` draws (num, *shape) of every site of the posterior, evenly spaced over the
    chains' draws (chain, draw, *shape) in chain order; a reported site the method does not
    sample (the regression's ``intercept``, from ``intercept_centered``) pushed through the
    model from them."""
    from comparisons.convert import push_forward

    total = int(np.prod(next(iter(draws.values())).shape[:2]))
    if total < num:
        raise ValueError(f"{total} draws to rank among, fewer than {num}")
    pick = np.linspace(0, total - 1, num).round().astype(int)
    kept = {k: np.asarray(v).reshape(total, *v.shape[2:])[pick] for k, v in draws.items()}
    missing = [s for s in post.sites if s not in kept]
    if missing:
        pushed = push_forward(post, kept, post.data)
        kept.update({s: pushed[s] for s in missing})
    return kept


def replication_seeds(seed: int, replication: int) -> tuple[int, int]:
    """The seeds of replication r of a calibration seeded ``seed``, of its truth and of its
    methods: two numbers from 0 to 2**31 - 1 that NumPy's SeedSequence draws from the pair,
    so two calibrations' seeds meet only by chance, and the methods' random numbers are not
    the truth's (a guide or an encoder reseeded with the truth's seed drew, as its first
    draw, the truth's own normals pushed through q)."""
    state = np.random.SeedSequence([seed, replication]).generate_state(2, dtype=np.uint32)
    return int(state[0] >> 1), int(state[1] >> 1)


def _ranked(draws: Mapping[str, np.ndarray], post) -> dict[str, np.ndarray]:
    """What is ranked, from draws (draw, *shape) of the sites: each scalar of the sites as
    (draw,) under its ArviZ label; where the posterior says what the data identify
    (``Posterior.identified``: PPCA's covariance and spectrum, a mixture's components in a
    fixed order), those quantities instead, as the comparisons judge the model on them
    (``accuracy_sites`` where given). They are functions of one draw, applied to the truth
    and to every draw alike."""
    if post.identified is None:
        return _scalars(draws, post, post.sites)
    identified = post.identified(draws)
    return _scalars({**draws, **identified}, post, post.accuracy_sites or tuple(identified))


def _scalars(draws: Mapping[str, np.ndarray], post, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each scalar of ``names`` in ``draws`` as (draw,), under its ArviZ label."""
    out = {}
    for site in names:
        value = np.asarray(draws[site])
        shape = value.shape[1:]
        dims = post.dims.get(site, [])
        for index in np.ndindex(*shape):
            if not index:
                out[site] = value
                continue
            coords = [
                str(post.coords[dims[i]][j]) if i < len(dims) and dims[i] in post.coords else str(j)
                for i, j in enumerate(index)
            ]
            out[f"{site}[{', '.join(coords)}]"] = value[(slice(None), *index)]
    return out


# --------------------------------------------------------------------------- summaries


@cache
def ecdf_band(num: int, num_rank_draws: int, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper simultaneous ``prob`` bands of the ECDF of ``num`` uniform ranks on
    0..L, at the ranks 0..L-1 (Säilynoja et al. 2022, ArviZ's optimized band)."""
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    points = np.arange(num_rank_draws)
    cdf = (points + 1) / (num_rank_draws + 1)
    lower, upper = ecdf_confidence_band(num, points, cdf, prob=prob, method="optimized")
    return np.asarray(lower), np.asarray(upper)


def judge(
    ranks: Sequence[int], num_rank_draws: int, variational: bool, num_params: int = 1
) -> dict[str, Any]:
    """The calibration of one method on one of its ``num_params`` parameters from its ranks
    over replications: whether their ECDF stays in the simultaneous band (at level
    1 - 0.05 / num_params), the coverage of the central 50% and 90% intervals, the mean
    fractional rank, VSBC's symmetry p-value (variational methods) and a verdict in words."""
    from scipy import stats

    r = np.asarray(ranks, dtype=float)
    n, L = len(r), num_rank_draws
    u = (r + 0.5) / (L + 1)  # the truth's quantile under the method's posterior
    points = np.arange(L)
    ecdf = (r[None, :] <= points[:, None]).mean(1)
    prob = round(1 - (1 - BAND_PROB) / num_params, 6)
    lower, upper = ecdf_band(n, L, prob)
    inside = bool(np.all((ecdf >= lower) & (ecdf <= upper)))
    cover50 = float(np.mean(np.abs(u - 0.5) < 0.25))
    cover90 = float(np.mean(np.abs(u - 0.5) < 0.45))
    mean_u = float(u.mean())
    out = {
        "n": n,
        "band_prob": prob,
        "inside_band": inside,
        "coverage_50": cover50,
        "coverage_90": cover90,
        "mean_rank_fraction": mean_u,
        "max_ecdf_diff": float(np.max(np.abs(ecdf - (points + 1) / (L + 1)))),
    }
    if variational:  # symmetric about 0.5 where q's centre is right (Yao et al. 2018)
        centred = u - 0.5
        out["vsbc_p"] = float(stats.wilcoxon(centred).pvalue) if np.any(centred) else 1.0
    out["verdict"] = _verdict(out, n)
    return out


def _verdict(j: Mapping[str, Any], n: int) -> str:
    """Words for a judgement: calibrated, or which way it departs (two binomial or uniform
    standard errors away from the nominal coverage or the middle rank)."""
    if j["inside_band"]:
        return "calibrated"
    se90, se50 = math.sqrt(0.09 / n), math.sqrt(0.25 / n)
    z90 = (j["coverage_90"] - 0.9) / se90
    z50 = (j["coverage_50"] - 0.5) / se50
    z_mean = (j["mean_rank_fraction"] - 0.5) / math.sqrt(1 / 12 / n)
    words = []
    if z90 < -2 or z50 < -2:
        words.append("over-confident")
    elif z90 > 2 or z50 > 2:
        words.append("under-confident")
    if abs(z_mean) > 2:
        side = "below" if z_mean > 0 else "above"
        words.append(f"biased (the posterior sits {side} the truth)")
    return ", ".join(words) if words else "miscalibrated (ranks not uniform)"


def summarize(results: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
              num_rank_draws: int) -> dict[str, Any]:  # fmt: skip
    """Per method and parameter, every replication's rank (in replication order) and the
    judgement of :func:`judge`; failed replications counted per method."""
    reps = sorted(results.values(), key=lambda r: r["replication"])
    out: dict[str, Any] = {}
    for m in methods:
        ok = [r for r in reps if "ranks" in r["methods"].get(m, {})]
        failed = [r["replication"] for r in reps if "error" in r["methods"].get(m, {})]
        params: dict[str, Any] = {}
        if ok:
            labels = list(ok[0]["methods"][m]["ranks"])
            for label in labels:
                ranks = [r["methods"][m]["ranks"][label] for r in ok]
                judged = judge(ranks, num_rank_draws, m in VARIATIONAL, len(labels))
                params[label] = {"ranks": ranks, **judged}
        out[m] = {
            "replications": [r["replication"] for r in ok],
            "failed_replications": failed,
            "wall_s_mean": float(np.mean([r["methods"][m]["wall_s"] for r in ok])) if ok else None,
            "parameters": params,
        }
    return out


# --------------------------------------------------------------------------- the job


def calibrate(
    model: str,
    data: Any,
    options: Mapping[str, Any],
    methods: Sequence[str],
    *,
    replications: int,
    seed: int,
    preset: str | Any,
    out_dir: str | Path,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    num_rank_draws: int = NUM_RANK_DRAWS,
) -> dict[str, Any]:
    """Calibrate ``methods`` of ``model`` by ``replications`` SBC replications on Dask
    (:func:`comparisons.engine.run_tasks`): each replication's result lands in
    ``out_dir/replications/rep-NNNN.json`` as it finishes, and a rerun of the same job
    resumes. Then ``results.json`` (schema 1 with a ``calibration`` section), the figures
    and ``index.html`` are written. Returns the results."""
    from comparisons.compare import versions
    from comparisons.engine import Task, run_tasks

    out_dir = Path(out_dir)
    preset_name = preset if isinstance(preset, str) else preset.name
    settings = {"model": model, "data": _data_key(data), "options": dict(options),
                "methods": list(methods), "seed": seed, "preset": preset_name,
                "num_rank_draws": num_rank_draws, "seeds": SEED_SCHEME}  # fmt: skip
    job = out_dir / "replications"
    _check_job(job, settings)
    where = _design(model, data, options, seed)  # the options' errors before any worker starts
    tasks = [
        Task(
            f"rep-{r:04d}",
            replication,
            {
                "model": model,
                "data": data,
                "options": dict(options),
                "methods": list(methods),
                "seed": seed,
                "replication": r,
                "preset": preset,
                "num_rank_draws": num_rank_draws,
            },
        )  # fmt: skip
        for r in range(replications)
    ]
    run = run_tasks(tasks, job, scheduler=scheduler, workers=workers, progress=progress,
                    label="calibrate")  # fmt: skip
    summary = summarize(run.results, methods, num_rank_draws)
    truth = [run.results[t.key]["truth"] for t in tasks if t.key in run.results]
    results = {
        "schema": 1,
        "model": model,
        "dataset": where["dataset"],
        "num_data": where["num_data"],
        "seed": seed,
        "preset": preset_name,
        "reference": None,
        "versions": versions(),
        "methods": {m: _method_record(summary[m]) for m in methods},
        "calibration": {
            "replications": replications,
            "finished": len(run.results),
            "failed": dict(run.failed),
            "num_rank_draws": num_rank_draws,
            "band_prob": BAND_PROB,
            "design": where["design"],
            "engine": {
                "scheduler": run.scheduler,
                "workers": run.workers,
                "ran": run.ran,
                "resumed": run.resumed,
                "wall_s": run.wall_s,
            },  # fmt: skip
            "truth": truth,
            "methods": summary,
        },
    }
    from comparisons.calibration_report import write_report

    write_report(out_dir, results)
    return results


def _check_job(job: Path, settings: Mapping[str, Any]) -> None:
    """The job folder holds replications of these settings only: a folder of another job's
    (other methods, seed, preset...) is refused rather than mixed in."""
    import json

    from comparisons.engine import _write
    from zoo.errors import ZooInputError

    path = job / "job.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise ZooInputError(
                f"{job} holds the replications of another calibration (it differs in"
                f" {', '.join(changed)}); choose another --out-dir or remove that folder"
            )
        return
    job.mkdir(parents=True, exist_ok=True)
    _write(path, settings)


def _data_key(data: Any) -> str:
    """The data as the job's settings name it: a name or path, or a table's content hash."""
    if isinstance(data, str | Path):
        return str(data)
    import hashlib

    import pandas as pd

    digest = hashlib.sha256(pd.util.hash_pandas_object(data, index=True).values.tobytes())
    return f"table {digest.hexdigest()[:16]}"


def design(model: str, data: Any, options: Mapping[str, Any], seed: int):
    """A Posterior with a replication's methods, sites and data set, to check options and
    name methods before the replications run: the model's ``simulation_design`` where it
    has one (the VAE's, which would otherwise train its networks here), else one
    replication's posterior."""
    from zoo import get_model

    module = get_model(model).module
    if hasattr(module, "simulation_design"):
        return module.simulation_design(data, seed=seed, **options)
    return module.simulated_posterior(data, seed, seed=seed, **options)[1]


def _design(model: str, data: Any, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The data set's name and rows, as a replication's posterior has them."""
    from zoo import get_model

    post = design(model, data, options, seed)
    num_data = int(len(post.data[post.obs_site]))
    template = getattr(get_model(model).module, "SIMULATION_DESIGN", "data simulated from them")
    text = template.format(num_data=num_data, dataset=post.dataset)
    return {"dataset": post.dataset, "num_data": num_data, "design": text}


def _method_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The method's line of results.json (schema 1): total wall time over replications,
    its verdict counts as diagnostics, its worst coverages as metrics."""
    params = summary["parameters"]
    verdicts = [p["verdict"] for p in params.values()]
    flagged = sorted({v for v in verdicts if v != "calibrated"})
    diagnostics: dict[str, Any] = {
        "replications": len(summary["replications"]),
        "failed_replications": len(summary["failed_replications"]),
        "parameters_calibrated": sum(v == "calibrated" for v in verdicts),
        "parameters": len(verdicts),
        "verdict": "; ".join(flagged) or ("calibrated" if verdicts else "no replications"),
    }
    metrics = {}
    if params:
        metrics["coverage_90_min"] = min(p["coverage_90"] for p in params.values())
        metrics["coverage_50_min"] = min(p["coverage_50"] for p in params.values())
        metrics["max_ecdf_diff"] = max(p["max_ecdf_diff"] for p in params.values())
    wall = summary["wall_s_mean"]
    return {
        "cost": {"wall_s": 0.0 if wall is None else wall * len(summary["replications"])},
        "summary": {},
        "diagnostics": diagnostics,
        "metrics": metrics,
    }
