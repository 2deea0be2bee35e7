"""Run one posterior under several methods, judge them against a reference, write the report.

>>> result = compare(post, methods=["nuts", "mean_field"], out_dir="reports/x")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import arviz as az
import numpy as np

from comparisons import metrics as M
from comparisons.convert import attach_log_lik, flatten, to_inference_data
from comparisons.engine import write_atomic
from comparisons.inputs import check_seed, check_writable
from comparisons.runners import (
    PRESETS,
    MethodRun,
    Preset,
    available_methods,
    resolve_methods,
    run_method,
)
from zoo import MethodSpec, Posterior, ZooInputError
from zoo.methods import NUTS_METHOD

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Numbers in a method's pointwise log-likelihood (draws x rows) above which its draws are
#: thinned: 5e7 float64 are 400 MB.
LOG_LIK_BUDGET = 50_000_000

#: The file in an out-dir that lists the files the zoo wrote there (one path a line, relative
#: to the out-dir): the next run into the folder removes those it does not write again, and
#: never touches any other file.
MANIFEST = ".zoo-manifest"

#: ``on_method(method, info)``: called as each method finishes, with ``info`` holding
#: ``wall_s`` (seconds), ``status`` (``"ok"`` or ``"failed"``) and, on failure, ``error``.
OnMethod = Callable[[str, dict], None]


@dataclass
class Comparison:
    """The outcome of :func:`compare`: results.json as a dict and one InferenceData per method."""

    results: dict
    idata: dict[str, az.InferenceData]
    out_dir: Path | None = None
    #: The comparisons of the posteriors these runs led to (``Posterior.follow_ups``), by
    #: name; each is written to a sub-folder of that name.
    follow_ups: dict[str, Comparison] = field(default_factory=dict)
    #: Seconds spent writing ``out_dir`` (netCDF, figures, page); not in results.json, which
    #: is written once, before this is known, and agrees with the page rendered from it.
    write_s: float | None = None

    def save(self, out_dir: str | Path) -> Comparison:
        """Write the comparison's files into ``out_dir`` (see :func:`write`), timed."""
        tick = time.perf_counter()
        self.out_dir = write(self, Path(out_dir))
        self.write_s = time.perf_counter() - tick
        return self


def default_reference(posterior: Posterior, methods: list[MethodSpec]) -> str | None:
    """The best reference at hand (DESIGN.md section 5): ``exact`` where the posterior has
    it, else NUTS unless the methods leave it out (PPCA on digits), then the first closed
    form (``ml``); None for a posterior with none of them (a model without global latents
    is judged by its own evaluation hook, not against a reference)."""
    if not posterior.sites:
        return None
    if "exact" in posterior.closed_forms:
        return "exact"
    available = available_methods(posterior)
    nuts = [m.name for m in methods if m.family == NUTS_METHOD.family]
    if nuts or (not posterior.closed_forms and NUTS_METHOD.name in available):
        return nuts[0] if nuts else NUTS_METHOD.name
    return next(iter(posterior.closed_forms), None)


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        **{name: metadata.version(name) for name in ("torch", "pyro-ppl", "arviz")},
    }


def _clean(values: dict, *, numbers_only: bool) -> dict:
    """JSON has no NaN: drop non-finite metrics, spell out non-finite diagnostics."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool | str):
            if not numbers_only:
                out[k] = v
        elif isinstance(v, int | np.integer):
            out[k] = int(v)
        elif isinstance(v, float | np.floating):
            if math.isfinite(v):
                out[k] = float(v)
            elif not numbers_only:
                out[k] = str(float(v))
    return out


def _loo(run: MethodRun, idata: az.InferenceData, obs: str, met: dict, diagnostics: dict):
    """PSIS-LOO, once, for a run with a pointwise log-likelihood and a spread of draws."""
    if obs not in run.log_lik or run.point:
        return
    found = M.loo(idata, obs)
    met.update({k: v for k, v in found.items() if k in ("elpd_loo", "elpd_loo_se")})
    diagnostics.update({k: v for k, v in found.items() if k.startswith("loo_")})


def _failed_record(run: MethodRun, cost: dict) -> dict:
    diagnostics = {"status": "failed", "error": run.error or "no draws"}
    if run.stopped:  # stopped at its budget, or by a rule of runners.NutsBudget
        diagnostics = {**run.diagnostics, "status": "stopped", "reason": run.error}
    return {
        "cost": cost,
        "summary": {},
        "metrics": {},
        "diagnostics": _clean(diagnostics, numbers_only=False),
    }


def _summary(posterior: Posterior, run: MethodRun, idata: az.InferenceData) -> dict:
    """Mean and sd of the global sites, then the identified quantities judged (PPCA's C) as
    derived entries; a closed form with exact moments is summarized by them."""
    if not run.draws:
        return {}
    reported = list(dict.fromkeys((*posterior.sites, *(posterior.accuracy_sites or ()))))
    stats = M.summary(idata, reported)
    if run.moments is not None:
        exact = M.moments_by_label(run.moments, idata, [s for s in reported if s in run.moments])
        stats.update({k: {"mean": m, "sd": s} for k, (m, s) in exact.items()})
    return stats


def _record(posterior: Posterior, run: MethodRun, idata, ref, ref_draws) -> dict:
    """A method's entry of results.json; what is measured follows from what the run holds."""
    cost = {k: (float(v) if k == "wall_s" else int(v)) for k, v in run.cost.items()}
    if run.error is not None or idata is None:
        return _failed_record(run, cost)
    stats = _summary(posterior, run, idata)
    diagnostics, met = dict(run.diagnostics), dict(run.metrics)
    if ref is not None and stats:
        met.update(M.accuracy({k: v for k, v in stats.items() if k in ref[0]}, *ref))
    if posterior.extra_metrics is not None and run.draws:
        met.update(posterior.extra_metrics(flatten(run.draws)[0], ref_draws))
    for name, values in run.log_lik.items():
        met["lpd_test" if name.endswith("_test") else "lpd_train"] = M.lpd(values)
    _loo(run, idata, posterior.obs_site, met, diagnostics)
    if "diverging" in run.sample_stats:  # several chains of a sampler: MCMC diagnostics
        diagnostics.update(M.nuts_diagnostics(idata, posterior.sites))
        if posterior.identified is not None:
            diagnostics.update(M.identified_diagnostics(posterior.identified(run.draws)))
        met["ess_per_s"] = diagnostics["ess_bulk_min"] / max(cost["wall_s"], 1e-9)
    if run.log_weights is not None:
        khat, ess = M.psis_khat(run.log_weights)
        diagnostics["khat"] = khat
        met["ess_per_s"] = ess / max(cost["wall_s"], 1e-9)
    return {
        "cost": cost,
        "summary": stats,
        "diagnostics": _clean(diagnostics, numbers_only=False),
        "metrics": _clean(met, numbers_only=True),
    }


def get_preset(preset: str | Preset) -> Preset:
    """A preset by name (``smoke``, ``full``), or your own :class:`Preset` as it is."""
    if isinstance(preset, Preset):
        return preset
    if preset in PRESETS:
        return PRESETS[preset]
    raise ZooInputError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")


def _plan(posterior: Posterior, methods, reference: str | None):
    """The methods to run, the reference first (the others' labels are matched against its
    draws), and the reference's name (None: nothing is judged)."""
    chosen = resolve_methods(posterior, methods)
    if reference == "none":  # zoo fit: one method, judged against nothing
        return chosen, None
    name = reference or default_reference(posterior, chosen)
    if name is None:
        return chosen, None
    ref = resolve_methods(posterior, [name])[0]
    return [ref, *(m for m in chosen if m.name != ref.name)], ref.name


def _finished(method: str, run: MethodRun, on_method: OnMethod | None) -> None:
    info = {"wall_s": float(run.cost["wall_s"]), "status": "failed" if run.error else "ok"}
    if run.error is not None:
        info["error"] = run.error
        logger.warning("%s %s", method, run.error if run.stopped else f"failed: {run.error}")
    logger.info("%s %s in %.1f s", method, info["status"], info["wall_s"])
    if on_method is not None:
        on_method(method, info)


def _evaluate(posterior: Posterior, run: MethodRun) -> None:
    """The model's own evaluation hook (numbers that need the fitted guide)."""
    if posterior.evaluate is None:
        return
    found = posterior.evaluate(posterior, run)
    run.metrics.update(found.get("metrics", {}))
    run.diagnostics.update(found.get("diagnostics", {}))
    run.per_row.update(found.get("arrays", {}))


def _convert(posterior: Posterior, run: MethodRun, ref_run: MethodRun | None, seed: int):
    """Thin, relabel, push forward, evaluate, then the InferenceData of a run that worked."""
    _thin(run, LOG_LIK_BUDGET // max(1, posterior.num_data + posterior.num_test))
    if posterior.relabel is not None and run.draws:
        reference = ref_run.draws if ref_run is not None and ref_run.draws else None
        relabelled = posterior.relabel(run.draws, reference)
        run.draws = dict(relabelled.draws)
        run.diagnostics.update(relabelled.info)
    attach_log_lik(posterior, run, seed=seed)
    _evaluate(posterior, run)
    return to_inference_data(posterior, run, seed=seed)


def _run_all(
    posterior, chosen, reference, *, seed, settings, progress, on_method, timings, checkpoint_dir
):
    runs: dict[str, MethodRun] = {}
    idatas: dict[str, az.InferenceData] = {}
    for method in chosen:
        logger.info("running %s", method.name)
        run = run_method(posterior, method, seed=seed, preset=settings, progress=progress,
                         checkpoint_dir=checkpoint_dir)  # fmt: skip
        timings["methods_s"] += run.cost["wall_s"]
        _finished(method.name, run, on_method)
        runs[method.name] = run
        if run.error is None:
            tick = time.perf_counter()
            ref_run = runs.get(reference) if method.name != reference else None
            idatas[method.name] = _convert(posterior, run, ref_run, seed)
            timings["conversion_s"] += time.perf_counter() - tick
    return runs, idatas


def _judge(posterior: Posterior, runs, idatas, reference: str | None):
    """Every method's record with its verdict, and the reference's own status."""
    ref, ref_draws = None, None
    if reference is not None and reference in idatas and runs[reference].draws:
        judged = posterior.accuracy_sites or posterior.sites
        ref = M.reference_moments(idatas[reference], runs[reference], judged)
        ref_draws = flatten(runs[reference].draws)[0]
    records = {m: _record(posterior, runs[m], idatas.get(m), ref, ref_draws) for m in runs}
    # A reference that fails its own checks (DESIGN.md section 5) is said, never used silently.
    status = M.reference_status(reference, records[reference]) if ref else None
    problem = status["problems"] if status and not status["reliable"] else None
    for m, rec in records.items():
        rec["verdict"] = M.verdict(
            m, rec, reference=reference if ref else None, reference_problem=problem
        )
    if reference is not None and ref is None:  # the reference failed or was stopped
        how = records[reference]["diagnostics"].get("status", "failed")
        for m, rec in records.items():
            if m != reference:
                note = f"not judged: the reference {reference} {how} (see its line)"
                rec["verdict"] = "; ".join(v for v in (rec["verdict"], note) if v)
    return records, status, reference if ref else None


def _validation_rows(posterior: Posterior) -> int:
    return int(posterior.validation_data[posterior.obs_site].shape[0])


def _results(posterior, settings, seed, judged, records, status, timings) -> dict:
    results = {
        "schema": SCHEMA_VERSION,
        "model": posterior.model_name,
        "dataset": posterior.dataset,
        "num_data": posterior.num_data,
        "num_test": posterior.num_test,
        **({"num_validation": _validation_rows(posterior)} if posterior.validation_data else {}),
        "seed": seed,
        "preset": settings.name,
        "reference": judged,
        "reference_status": status,
        "versions": versions(),
        "posterior": dict(posterior.description),
        "methods": records,
        "timings": timings,
    }
    if posterior.truth is not None:
        results["truth"] = {k: np.asarray(v).tolist() for k, v in posterior.truth.items()}
    return results


def compare(
    posterior: Posterior,
    *,
    methods: list[str | MethodSpec] | None = None,
    reference: str | None = None,
    seed: int = 0,
    preset: str | Preset = "full",
    out_dir: str | Path | None = None,
    progress: bool = False,
    on_method: OnMethod | None = None,
    follow_ups: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> Comparison:
    """Run ``posterior`` under each method and measure accuracy and cost.

    Parameters
    ----------
    posterior : Posterior
        A model bound to data (e.g. ``zoo.linear_regression.make_posterior``).
    methods : list of str, optional
        Method names (``nuts``, guide names, ``exact``...); default all that apply.
    reference : str, optional
        The method others are judged against; default ``exact`` where it exists, else
        ``nuts`` when it runs, else the first closed form (:func:`default_reference`). It is
        run even when not listed in ``methods``; ``"none"`` judges nothing.
    seed : int
        Seed of every random choice: same seed, same results (timings aside).
    preset : {"smoke", "full"} or Preset
        How much work each method gets (a :class:`~comparisons.runners.Preset` for your own).
    out_dir : path, optional
        Where to write index.html, results.json, <method>.nc and figures/ (see :func:`write`);
        checked before any work.
    progress : bool
        Show the progress bars of NUTS and of the fits.
    on_method : callable, optional
        ``on_method(method, info)`` as each method finishes (:data:`OnMethod`), e.g. to print
        a line; the verdicts come once every method has run.
    follow_ups : bool
        Also compare the posteriors the runs lead to (``Posterior.follow_ups``: a VAE's
        p(z | x) under its trained decoder), each in a sub-folder of ``out_dir``.
    checkpoint_dir : path, optional
        Where each SVI fit keeps its checkpoint (``<method>.pt``; a follow-up's in a
        sub-folder of its name): the same call run again resumes an interrupted fit and
        reads a finished one back. A file written by another fit (other data, options or
        seed) is refused.
    """
    seed = check_seed(seed)
    settings = get_preset(preset)
    chosen, reference = _plan(posterior, methods, reference)
    if out_dir is not None:
        check_writable(Path(out_dir))
    timings = {"methods_s": 0.0, "conversion_s": 0.0, "metrics_s": 0.0}
    start = time.perf_counter()
    runs, idatas = _run_all(
        posterior, chosen, reference, seed=seed, settings=settings, progress=progress,
        on_method=on_method, timings=timings, checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    tick = time.perf_counter()
    records, status, judged = _judge(posterior, runs, idatas, reference)
    timings["metrics_s"] = time.perf_counter() - tick
    results = _results(posterior, settings, seed, judged, records, status, timings)
    studies = (
        _follow_ups(posterior, runs, seed=seed, preset=settings, progress=progress,
                    on_method=on_method, checkpoint_dir=checkpoint_dir) if follow_ups else {}
    )  # fmt: skip
    if studies:
        results["follow_ups"] = {
            name: {"dataset": c.results["dataset"], "page": f"{name}/index.html"}
            for name, c in studies.items()
        }
    timings["total_s"] = time.perf_counter() - start
    comparison = Comparison(results=results, idata=idatas, follow_ups=studies)
    return comparison.save(out_dir) if out_dir is not None else comparison


def _follow_ups(posterior: Posterior, runs, checkpoint_dir, **settings) -> dict[str, Comparison]:
    """The comparisons of the posteriors the runs lead to (a VAE: p(z | x) given the decoder
    one method trained), with the same seed and preset."""
    if posterior.follow_ups is None:
        return {}
    found = posterior.follow_ups(runs)
    out = {}
    for name, follow_up in found.items():
        logger.info("comparing %s", name)
        folder = None if checkpoint_dir is None else Path(checkpoint_dir) / name
        out[name] = compare(follow_up, checkpoint_dir=folder, **settings)
    return out


def _thin(run: MethodRun, limit: int) -> None:
    """Keep every k-th draw of each chain so that at most ``limit`` remain (the pointwise
    log-likelihood holds draws x rows numbers); says so in the diagnostics."""
    if not run.draws:
        return
    chains, num = next(iter(run.draws.values())).shape[:2]
    if chains * num <= limit:
        return
    step = math.ceil(chains * num / max(1, limit))
    run.draws = {k: v[:, ::step] for k, v in run.draws.items()}
    run.sample_stats = {k: v[:, ::step] for k, v in run.sample_stats.items()}
    if run.log_weights is not None:
        run.log_weights = run.log_weights[:, ::step]
    run.diagnostics["thinned_by"] = step
    logger.warning(
        "%s: every %d-th draw kept (at most %d: draws x rows must fit in memory)",
        run.method,
        step,
        limit,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (:func:`comparisons.engine.write_atomic`)."""
    write_atomic(path, text.encode())


def _read_manifest(out_dir: Path) -> set[str]:
    """The files an earlier run of the zoo wrote to ``out_dir`` (none if it has no manifest).

    Only plain relative paths inside the folder are taken: a damaged or edited manifest
    cannot make a run remove anything outside it."""
    try:
        lines = (out_dir / MANIFEST).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return set()
    names = set()
    for line in lines:
        rel = Path(line.strip())
        if line.strip() and not rel.is_absolute() and ".." not in rel.parts:
            names.add(rel.as_posix())
    return names


def _stage(comparison: Comparison, folder: Path) -> None:
    """A comparison's files in ``folder``: one .nc per method, results.json, the follow-ups'
    in sub-folders, then the figures and index.html."""
    from comparisons.report import render

    for method, idata in comparison.idata.items():
        idata.to_netcdf(str(folder / f"{method}.nc"), engine="h5netcdf")
    (folder / "results.json").write_text(json.dumps(comparison.results, indent=2))
    for name, nested in comparison.follow_ups.items():
        (folder / name).mkdir()
        _stage(nested, folder / name)
    render(folder)


def write(comparison: Comparison, out_dir: Path) -> Path:
    """Write a run's files into ``out_dir``, which then holds that run's outputs only.

    Every file is written into a temporary folder beside ``out_dir`` first; a failure there
    leaves ``out_dir`` as it was. The files are then moved into place one atomic rename each
    (index.html last), and the files that an earlier run wrote (listed in :data:`MANIFEST`)
    and this one did not are removed; files the zoo did not write are never touched. The
    manifest lists the union of old and new while the files move, so an interruption at any
    point leaves whole files and a manifest that names every file the zoo wrote.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        _stage(comparison, staging)
        new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        out_dir.mkdir(parents=True, exist_ok=True)
        old = _read_manifest(out_dir)
        _atomic_write_text(out_dir / MANIFEST, "".join(f"{n}\n" for n in sorted(old | set(new))))
        for name in new:
            if name != "index.html":
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, out_dir / name)
        os.replace(staging / "index.html", out_dir / "index.html")
        for name in sorted(old - set(new)):
            stale = out_dir / name
            if stale.is_file() or stale.is_symlink():
                stale.unlink()
                logger.info("removed %s of an earlier run", stale)
            if (
                stale.parent != out_dir
                and stale.parent.is_dir()
                and not any(stale.parent.iterdir())
            ):
                stale.parent.rmdir()
        _atomic_write_text(out_dir / MANIFEST, "".join(f"{n}\n" for n in new))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
