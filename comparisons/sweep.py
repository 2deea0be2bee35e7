"""``zoo sweep FILE.toml``: a grid of comparisons (runs x seeds, each run a model, its data
and options, and its methods) on the Dask engine (:mod:`comparisons.engine`), each cell's
own report beside one summary across them (accuracy and cost per method per run).

The file::

    [sweep]
    preset = "smoke"            # default smoke
    seeds = [0, 1, 2]           # default [0]
    methods = ["nuts", "mean_field", "full_rank"]   # default: each model's default set

    [[run]]
    model = "linear_regression"
    dataset = "kidiq"           # or data = "my.csv" (relative to the file)
    options = { features = ["mom_iq"], prior = "conjugate" }

    [[run]]
    model = "gmm"
    dataset = "iris"
    options = { num_components = 3 }
    methods = ["nuts", "em", "mean_field"]          # this run's own

A cell runs ``compare`` on a worker in a folder of its own there; its files come back to the
client with its result and land in ``OUT/cells/<run>-seed<S>/`` (a full report: index.html,
results.json, one .nc per method, figures). ``OUT/summary.json`` and ``OUT/index.html`` hold
the table across cells. A cell's result is written when it arrives, so an interrupted sweep
resumes where it stopped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooInputError

_SWEEP_KEYS = {"preset", "seeds", "methods"}
_RUN_KEYS = {"model", "dataset", "data", "options", "methods", "name"}


@dataclass(frozen=True)
class Run:
    """One row of the grid: a model on its data with its options and methods."""

    name: str
    model: str
    data: str
    options: Mapping[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Sweep:
    """A checked sweep file: its runs, seeds and preset, and the file it came from."""

    runs: tuple[Run, ...]
    seeds: tuple[int, ...]
    preset: str
    path: Path

    def keys(self, run: Run) -> list[str]:
        """The keys of a run's cells (one per seed): their task and folder names."""
        return [f"{run.name}-seed{seed}" for seed in self.seeds]


def load_sweep(path: str | Path) -> Sweep:
    """The sweep of a TOML file, checked: a clear one-line error for a key, model, data set,
    option or method it does not know."""
    from comparisons.cli import PRESET_NAMES, _check_methods
    from comparisons.inputs import check_seed
    from zoo import get_model

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ZooInputError(f"cannot read the sweep file {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ZooInputError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(doc) - {"sweep", "run"}
    if unknown:
        raise ZooInputError(f"{path}: unknown table(s) {', '.join(sorted(unknown))};"
                            " a sweep has [sweep] and [[run]]")  # fmt: skip
    head = doc.get("sweep", {})
    _known(head, _SWEEP_KEYS, f"{path} [sweep]")
    preset = head.get("preset", "smoke")
    if preset not in PRESET_NAMES:
        raise ZooInputError(f"{path}: unknown preset '{preset}'; choose one of:"
                            f" {', '.join(PRESET_NAMES)}")  # fmt: skip
    seeds = head.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ZooInputError(f"{path}: seeds must be a list of whole numbers, as [0, 1, 2]")
    seeds = tuple(check_seed(s) for s in seeds)
    if len(set(seeds)) != len(seeds):
        raise ZooInputError(f"{path}: seeds repeat: {seeds}")
    runs = []
    entries = doc.get("run", [])
    if not isinstance(entries, list) or not entries:
        raise ZooInputError(f"{path}: no [[run]] tables; add one per model and data set")
    for i, entry in enumerate(entries, 1):
        where = f"{path} run {i}"
        _known(entry, _RUN_KEYS, where)
        if "model" not in entry:
            raise ZooInputError(f'{where}: no model; add model = "linear_regression", say')
        spec = get_model(entry["model"])
        if "data" in entry and "dataset" in entry:
            raise ZooInputError(f"{where}: give dataset or data, not both")
        if "data" in entry:
            data = str((path.parent / entry["data"]).resolve())
            if not Path(data).is_file():
                raise ZooInputError(f"{where}: no file {data}")
        else:
            data = entry.get("dataset", spec.default_dataset)
            if data not in spec.datasets:
                raise ZooInputError(f"{where}: unknown dataset '{data}' for {spec.name};"
                                    f" choose one of: {', '.join(spec.datasets)}")  # fmt: skip
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ZooInputError(f'{where}: options must be a table, as {{ features = ["a"] }}')
        bad = sorted(set(options) - set(spec.options) - {"test_fraction"})
        if bad:
            raise ZooInputError(f"{where}: option(s) {', '.join(bad)} do not apply to"
                                f" {spec.name}; it takes: {', '.join(spec.options)}")  # fmt: skip
        methods = entry.get("methods", head.get("methods"))
        if methods is not None:
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise ZooInputError(f"{where}: methods must be a list of names")
            _check_methods(spec, methods, "methods")
            methods = tuple(methods)
        name = entry.get("name", f"{spec.name}-{Path(data).stem}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ZooInputError(f"{where}: name '{name}' must be letters, digits, - _ or .")
        runs.append(Run(name, spec.name, data, dict(options), methods))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ZooInputError(f'{path}: two runs share a name; give them name = "..."')
    return Sweep(tuple(runs), seeds, preset, path)


def _known(table: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = set(table) - keys
    if unknown:
        raise ZooInputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))};"
                            f" known: {', '.join(sorted(keys))}")  # fmt: skip


def cell(model: str, data: str, options: Mapping[str, Any], methods: Sequence[str] | None,
         seed: int, preset: str) -> dict[str, Any]:  # fmt: skip
    """One cell of the sweep (a Dask task): ``compare`` in a temporary folder, its files
    (base64, to travel back to the client) and its methods' key numbers."""
    import tempfile

    import torch

    from comparisons.compare import compare
    from comparisons.runners import PRESETS
    from zoo import get_model

    torch.set_default_dtype(torch.float64)
    post = get_model(model).make_posterior(data, seed=seed, **options)
    with tempfile.TemporaryDirectory() as tmp:
        result = compare(post, methods=None if methods is None else list(methods), seed=seed,
                         preset=PRESETS[preset], out_dir=tmp, progress=False)  # fmt: skip
        files = {
            str(p.relative_to(tmp)): base64.b64encode(p.read_bytes()).decode()
            for p in sorted(Path(tmp).rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
    results = result.results
    return {"reference": results.get("reference"), "num_data": results.get("num_data"),
            "methods": {m: _key_numbers(m, rec, results) for m, rec in results["methods"].items()},
            "files": files}  # fmt: skip


def _key_numbers(method: str, rec: Mapping[str, Any], results: Mapping[str, Any]) -> dict:
    from comparisons.metrics import verdict

    m, c, d = rec.get("metrics", {}), rec.get("cost", {}), rec.get("diagnostics", {})
    keep = ("max_abs_mean_z", "sd_ratio_min", "sd_ratio_max", "lpd_train", "lpd_test",
            "elpd_loo", "khat")  # fmt: skip
    out = {k: m[k] for k in keep if k in m}
    out.update({k: c[k] for k in ("wall_s", "grad_evals") if k in c})
    for k in ("ess_bulk_min", "r_hat_max", "divergences", "khat"):
        if k in d:
            out[k] = d[k]
    try:
        out["verdict"] = verdict(method, rec, reference=results.get("reference"))
    except Exception:  # noqa: BLE001 (a verdict the summary cannot form is left out)
        pass
    return out


def run_sweep(sweep: Sweep | str | Path, out_dir: str | Path | None = None, *,
              scheduler: str | None = None, workers: int | None = None,
              progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run every cell of the sweep (a file's path, or what :func:`load_sweep` made of it) not
    yet done in ``out_dir``, then write the summary. Returns it."""
    from comparisons.engine import Task, run_tasks, write_atomic

    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    out = Path(out_dir) if out_dir is not None else Path("reports") / f"sweep-{sweep.path.stem}"
    cells = out / "cells"
    tasks = [
        Task(
            key,
            cell,
            {
                "model": run.model,
                "data": run.data,
                "options": dict(run.options),
                "methods": None if run.methods is None else list(run.methods),
                "seed": seed,
                "preset": sweep.preset,
            },
        )  # fmt: skip
        for run in sweep.runs
        for key, seed in zip(sweep.keys(run), sweep.seeds)
    ]

    def unpack(task, result):
        """The cell's files into OUT/cells/<key>/; what is kept of it: its numbers."""
        folder = cells / task.key
        for rel, data in result.pop("files", {}).items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, base64.b64decode(data))
        return result

    job = run_tasks(tasks, out / "tasks", scheduler=scheduler, workers=workers,
                    progress=progress, label="sweep", on_result=unpack)  # fmt: skip
    summary = _summary(sweep, job.results, job.failed)
    summary["engine"] = {"scheduler": job.scheduler, "workers": job.workers, "ran": job.ran,
                         "resumed": job.resumed, "wall_s": job.wall_s}  # fmt: skip
    write_atomic(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    write_atomic(out / "index.html", _page(summary).encode())
    return summary


def _summary(sweep: Sweep, results: Mapping[str, Any], failed: Mapping[str, str]) -> dict:
    """Per run and method, each number's mean over the seeds that finished (and the cells)."""
    rows = []
    for run in sweep.runs:
        done = [results[k] for k in sweep.keys(run) if k in results]
        methods = list(dict.fromkeys(m for r in done for m in r["methods"]))
        for m in methods:
            recs = [r["methods"][m] for r in done if m in r["methods"]]
            row = {"run": run.name, "model": run.model, "method": m, "seeds": len(recs),
                   "reference": done[0]["reference"] if done else None}  # fmt: skip
            for k in sorted({k for rec in recs for k in rec if k != "verdict"}):
                values = [rec[k] for rec in recs if isinstance(rec.get(k), int | float)]
                finite = [v for v in values if math.isfinite(v)]
                if finite:
                    row[k] = sum(finite) / len(finite)
            row["verdicts"] = [rec.get("verdict", "") for rec in recs]
            rows.append(row)
    return {
        "preset": sweep.preset,
        "seeds": list(sweep.seeds),
        "cells": {
            key: "done" if key in results else "failed: " + failed.get(key, "not run")
            for run in sweep.runs
            for key in sweep.keys(run)
        },
        "rows": rows,
    }


def _page(summary: Mapping[str, Any]) -> str:
    from comparisons.report import _fmt

    cols = [("max |mean z|", "max_abs_mean_z"), ("sd ratio min", "sd_ratio_min"),
            ("sd ratio max", "sd_ratio_max"), ("elpd LOO", "elpd_loo"), ("PSIS k", "khat"),
            ("wall s", "wall_s"), ("grad evals", "grad_evals"),
            ("min bulk ESS", "ess_bulk_min")]  # fmt: skip
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in cols)
    body = []
    for row in summary["rows"]:
        cells = "".join(f"<td>{_fmt(row[k]) if k in row else ''}</td>" for _, k in cols)
        verdicts = "<br>".join(html.escape(v) for v in row["verdicts"])
        body.append(f"<tr><th>{html.escape(row['run'])}</th><th>{html.escape(row['method'])}"
                    f"</th><td>{row['seeds']}</td>{cells}<td class=v>{verdicts}"
                    "</td></tr>")  # fmt: skip
    links = "".join(
        f'<li><a href="cells/{html.escape(k)}/index.html">{html.escape(k)}</a></li>'
        if v == "done" else f"<li>{html.escape(k)}: {html.escape(v)}</li>"
        for k, v in summary["cells"].items()
    )  # fmt: skip
    engine = summary["engine"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zoo sweep</title>
<style>
body {{ font-family: sans-serif; max-width: 1250px; margin: 2em auto; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td.v {{ text-align: left; }}
.small {{ font-size: 0.9em; color: #444; }}
</style></head><body>
<h1>Sweep: {len(summary["cells"])} comparisons</h1>
<p>Preset {html.escape(summary["preset"])}, seeds {", ".join(map(str, summary["seeds"]))}.
Each number is the mean over the seeds whose comparison finished; each comparison judges its
methods against its own reference (its report says which). The verdicts are each seed's, in
the order of the seeds.</p>
<table><tr><th>run</th><th>method</th><th>seeds</th>{head}<th>verdicts</th></tr>
{"".join(body)}</table>
<h2>Each comparison's report</h2><ul>{links}</ul>
<p class=small>Engine: {html.escape(str(engine["scheduler"]))}; {engine["ran"]} comparisons run
now, {engine["resumed"]} read back from an earlier run; {engine["wall_s"]:.1f} s.</p>
</body></html>
"""
