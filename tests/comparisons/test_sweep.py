"""``zoo sweep FILE.toml`` (comparisons.sweep): the file is checked before anything runs, each
cell's report comes back beside one summary, and an interrupted sweep resumes: finished cells
are read back, not rerun, to the summary an uninterrupted sweep gives."""

from __future__ import annotations

import json

import pytest

from comparisons.cli import main
from comparisons.sweep import load_sweep, run_sweep

GOOD = """
[sweep]
preset = "smoke"
seeds = [0, 1]
methods = ["exact", "mean_field"]

[[run]]
model = "linear_regression"
dataset = "kidiq"
options = { features = ["mom_iq"], prior = "conjugate" }
"""


def test_a_sweep_file_is_read_into_runs_and_seeds(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GOOD)
    sweep = load_sweep(path)
    assert sweep.seeds == (0, 1) and sweep.preset == "smoke"
    (run,) = sweep.runs
    assert run.name == "linear_regression-kidiq" and run.methods == ("exact", "mean_field")
    assert run.options == {"features": ["mom_iq"], "prior": "conjugate"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[[run]]", "[[runs]]"), "unknown table(s) runs"),
        (('preset = "smoke"', 'preset = "fast"'), "unknown preset 'fast'"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds repeat"),
        (('model = "linear_regression"', 'model = "nope"'), "unknown model 'nope'"),
        (('dataset = "kidiq"', 'dataset = "nope"'), "unknown dataset 'nope'"),
        (('prior = "conjugate"', 'colour = "red"'), "option(s) colour do not apply"),
        (('"mean_field"]', '"mean_feld"]'), "unknown method 'mean_feld'"),
        (("seeds = [0, 1]", "seeds = [0, 1"), "is not valid TOML"),
    ],
)
def test_a_bad_sweep_file_ends_in_one_line_and_exit_2(change, message, tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text(GOOD.replace(*change))
    code = main(["sweep", str(path), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_sweep_writes_each_report_and_a_summary_and_resumes(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GOOD)
    out = tmp_path / "out"
    summary = run_sweep(path, out, workers=2, progress=False)
    assert set(summary["cells"].values()) == {"done"} and summary["engine"]["workers"] == 2
    for seed in (0, 1):
        cell = out / "cells" / f"linear_regression-kidiq-seed{seed}"
        results = json.loads((cell / "results.json").read_text())
        assert results["seed"] == seed and set(results["methods"]) == {"exact", "mean_field"}
        assert (cell / "index.html").is_file() and (cell / "mean_field.nc").is_file()
    rows = {row["method"]: row for row in summary["rows"]}
    assert rows["exact"]["max_abs_mean_z"] == 0.0 and rows["mean_field"]["seeds"] == 2
    assert "mean_field" in (out / "index.html").read_text()
    # Interrupted after one cell: the other is lost. Run again: one cell runs, the same
    # numbers come out (wall times aside).
    (out / "tasks" / "linear_regression-kidiq-seed1.json").unlink()
    again = run_sweep(path, out, workers=2, progress=False)
    assert again["engine"]["ran"] == 1 and again["engine"]["resumed"] == 1

    def same(rows):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert same(again["rows"]) == same(summary["rows"])
