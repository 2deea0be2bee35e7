"""The ``zoo`` command line (DESIGN.md section 3): one subprocess run of the console script,
everything else in-process through ``comparisons.cli.main``.

Bad input ends in exit status 2 and one line on stderr, with no traceback and nothing
written; a small compare, fit and report write what they announce.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import validate

import comparisons.cli as cli_module
import comparisons.runners as runners
from comparisons import Preset
from comparisons.cli import main
from guides import GUIDES, FitConfig
from zoo import MODELS
from zoo.linear_regression import DATASETS

#: Stands in for the smoke preset (about 2 minutes) in the in-process runs.
TINY = Preset(
    "smoke",
    num_chains=2,
    num_warmup=50,
    num_samples=50,
    num_draws=200,
    fit=FitConfig(num_steps=200, min_steps=100, window=50),
)

CSV = {
    "ok.csv": "a,b,y\n1,2,3\n2,3,4\n3,5,5\n4,4,1\n5,2,3\n6,1,2\n",
    "nonnumeric.csv": "a,b,y\n1,2,3\n2,x,4\n3,5,5\n4,4,1\n",
    "nan.csv": "a,b,y\n1,2,3\n2,NaN,4\n3,5,5\n4,4,1\n",
    "inf.csv": "a,b,y\n1,2,3\n2,3,4\n3,inf,5\n4,4,1\n",
    "few.csv": "a,b,y\n1,2,3\n2,3,4\n3,5,5\n",  # 3 rows, 3 coefficients with the intercept
    "one.csv": "a,b\n1,2\n",
    "const.csv": "a,b\n1,2\n2,2\n3,2\n4,2\n",
    "wide.csv": "a,b,c,d,e\n1,2,3,4,5\n2,3,1,5,4\n3,1,2,4,6\n",  # 3 rows, 5 features
}


def _zoo(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``zoo ARGV`` in-process: exit status, stdout, stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``root`` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working folder holding the test CSV files."""
    monkeypatch.chdir(tmp_path)
    for name, text in CSV.items():
        (tmp_path / name).write_text(text)
    return tmp_path


# --------------------------------------------------------------------------- zoo list


def test_console_script_runs():
    """The one subprocess test: the installed ``zoo`` script reaches comparisons.cli.main."""
    script = Path(sys.executable).parent / "zoo"
    assert script.is_file(), f"no console script at {script}; run pip install -e ."
    proc = subprocess.run(
        [str(script), "list"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "linear_regression" in proc.stdout and "mean_field" in proc.stdout


def test_list_names_models_guides_datasets_and_presets(capsys):
    code, out, err = _zoo(["list"], capsys)
    assert (code, err) == (0, "")
    for name in [*MODELS, *GUIDES, *DATASETS, *runners.PRESETS, "map = delta"]:
        assert name in out, name


# --------------------------------------------------------------------------- bad input

LR = ["compare", "linear_regression"]
BAD_INPUT = {
    "unknown model": (["compare", "linear_regresion"], "unknown model 'linear_regresion'"),
    "unknown guide": ([*LR, "--methods", "nuts,mean_feild"], "unknown method 'mean_feild'"),
    "unknown guide to fit": (
        ["fit", "linear_regression", "--method", "ful_rank"],
        "unknown method 'ful_rank'",
    ),
    "unknown method": ([*LR, "--methods", "gibbs"], "unknown method 'gibbs'; choose from: nuts"),
    # Every global guide applies to linear_regression; amortized needs per-row latents.
    "amortized for regression": ([*LR, "--methods", "amortized"], "guide 'amortized' does not"),
    "exact needs the conjugate prior": ([*LR, "--methods", "exact"], "--prior conjugate"),
    "exact as reference": ([*LR, "--reference", "exact"], "--prior conjugate"),
    "missing data file": (
        [*LR, "--data", "missing.csv", "--target", "y"],
        "data file 'missing.csv' does not exist",
    ),
    "missing target column": (
        [*LR, "--data", "ok.csv", "--target", "z"],
        "target column 'z' is not in the data",
    ),
    "missing feature column": (
        [*LR, "--data", "ok.csv", "--target", "y", "--features", "a,c"],
        "feature column 'c' is not in the data",
    ),
    "non-numeric value": (
        [*LR, "--data", "nonnumeric.csv", "--target", "y"],
        "column 'b' has a non-numeric value 'x' in data row 2",
    ),
    "NaN": (
        [*LR, "--data", "nan.csv", "--target", "y"],
        "column 'b' has a missing or infinite value (empty) in data row 2",
    ),
    "inf": (
        [*LR, "--data", "inf.csv", "--target", "y"],
        "column 'b' has a missing or infinite value (inf) in data row 3",
    ),
    "fewer rows than coefficients": (
        [*LR, "--data", "few.csv", "--target", "y", "--test-fraction", "0"],
        "3 rows to fit but 3 coefficients",
    ),
    "num components": (
        [*LR, "--num-components", "3"],
        "--num-components does not apply to linear_regression",
    ),
    "unknown preset": ([*LR, "--preset", "fast"], "unknown preset 'fast'; choose one of: smoke"),
    "cuda": ([*LR, "--device", "cuda"], "--device cuda is for the neural models"),
    "unknown dataset": ([*LR, "--dataset", "kidq"], "unknown dataset 'kidq'"),
    # The mixture and PPCA.
    "K below 1": (["compare", "gmm", "--num-components", "0"], "whole numbers >= 1"),
    "K not a number": (["compare", "gmm", "--num-components", "1,x"], "takes whole numbers"),
    "K above the rows": (
        ["compare", "gmm", "--data", "few.csv", "--num-components", "5", "--test-fraction", "0"],
        "5 components but only 3 rows",
    ),
    "one row": (
        ["compare", "gmm", "--data", "one.csv", "--test-fraction", "0"],
        "a mixture needs at least 2",
    ),
    "constant column": (["compare", "gmm", "--data", "const.csv"], "feature 'b' is constant"),
    "NaN for a mixture": (["compare", "gmm", "--data", "nan.csv"], "missing or infinite value"),
    "several K to fit": (
        ["fit", "gmm", "--num-components", "1,2", "--method", "em"],
        "zoo fit takes one --num-components",
    ),
    "batch size 0": (["compare", "gmm", "--batch-size", "0"], "--batch-size must be between 1"),
    "batch size for regression": ([*LR, "--batch-size", "10"], "--batch-size does not apply"),
    "latent dim too large": (
        ["compare", "ppca", "--data", "few.csv", "--latent-dim", "3"],
        "latent dim 3 with 3 features",
    ),
    "ml with fewer rows than features": (
        ["compare", "ppca", "--data", "wide.csv", "--latent-dim", "1", "--methods", "ml"],
        "'ml' needs more fitted rows than features",
    ),
    "guide that does not apply": (
        ["compare", "gmm", "--methods", "flow"],
        "guide 'flow' does not apply to gmm; it takes: delta, laplace, mean_field, full_rank",
    ),
    "encoder for regression": ([*LR, "--encoder", "mlp"], "--encoder is for the amortized"),
    "unknown encoder": (
        ["compare", "ppca", "--encoder", "cnn"],
        "unknown --encoder 'cnn'; choose one of: linear, mlp",
    ),
    # argparse's own errors keep to one line too.
    "fit without a method": (["fit", "linear_regression"], "--method"),
    "dataset and data": ([*LR, "--dataset", "kidiq", "--data", "ok.csv"], "not allowed with"),
    # Seeds: 0 <= seed < 2**31, so that every offset of a run (seed + chain) is one NumPy takes.
    "negative seed": ([*LR, "--seed", "-3"], "the seed must be a whole number from 0 to"),
    "huge seed": ([*LR, "--seed", "99999999999999999999999"], "from 0 to 2147483647"),
    "seed at the limit": ([*LR, "--seed", str(2**31)], "from 0 to 2147483647"),
    "seed not a number": ([*LR, "--seed", "1.5"], "the seed must be a whole number, as 0"),
    "closed form of another model": (
        ["compare", "gmm", "--methods", "exact"],
        "method 'exact' is not available for gmm",
    ),
    "unknown reference": ([*LR, "--reference", "gibbs"], "unknown method 'gibbs'"),
    # The VAE.
    "too few rows for the vae": (["compare", "vae", "--data", "ok.csv"], "give at least 10 rows"),
    "unknown likelihood": (["compare", "vae", "--likelihood", "poisson"], "unknown likelihood"),
    "unknown scale": (["compare", "vae", "--scale", "row"], "unknown scale 'row'"),
    "zero width": (["compare", "vae", "--hidden", "64,0"], "layer widths are positive"),
    "hidden for regression": ([*LR, "--hidden", "8"], "--hidden does not apply"),
    "unknown vae variant": (["compare", "vae", "--methods", "amortized_vq"], "unknown method"),
    "nuts for the vae": (["compare", "vae", "--methods", "nuts"], "choose from: ml, amortized"),
    "vae on cuda without a gpu": (["compare", "vae", "--device", "cuda"], "sees no CUDA GPU"),
    "two-level V1 smaller than the patch": (
        ["compare", "two_level_vae", "--v1-units", "10"],
        "--v1-units must be a whole number at least the number of pixels (144)",
    ),
    "two-level V2 of no units": (
        ["compare", "two_level_vae", "--latent-dim", "0"],
        "--latent-dim (V2's units) must be a whole number >= 1",
    ),
    "v1 units for the vae": (["compare", "vae", "--v1-units", "200"], "--v1-units does not apply"),
    "checkpoint dir a file": (
        ["compare", "vae", "--checkpoint-dir", "ok.csv"],
        "--checkpoint-dir 'ok.csv' is a file",
    ),
    "checkpoints of several K": (
        ["compare", "gmm", "--num-components", "1,2", "--checkpoint-dir", "ckpt"],
        "--checkpoint-dir is for one K at a time",
    ),
}


@pytest.mark.parametrize("existing", [False, True], ids=["new-out-dir", "existing-out-dir"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, existing, workdir, capsys):
    argv, expected = BAD_INPUT[case]
    out_dir = workdir / "out"
    if existing:
        (out_dir / "figures").mkdir(parents=True)
        (out_dir / "results.json").write_text('{"old": true}')
        (out_dir / "index.html").write_text("<p>old report</p>")
        (out_dir / "figures" / "marginals.png").write_bytes(b"old")
    before = _snapshot(workdir)
    code, out, err = _zoo([*argv, "--out-dir", str(out_dir)], capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("zoo"), err
    assert expected in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(workdir) == before  # nothing created, nothing touched


@pytest.mark.parametrize("content", [None, "{not json"], ids=["no-results", "bad-json"])
def test_report_of_a_folder_without_results_is_one_line_exit_2(content, workdir, capsys):
    folder = workdir / "folder"
    folder.mkdir()
    if content is not None:
        (folder / "results.json").write_text(content)
    before = _snapshot(workdir)
    code, out, err = _zoo(["report", str(folder)], capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("zoo report: error: "), err
    assert "results.json" in err
    assert _snapshot(workdir) == before


# --------------------------------------------------------------------------- success


@pytest.fixture
def tiny_smoke(monkeypatch):
    monkeypatch.setitem(runners.PRESETS, "smoke", TINY)


def test_compare_fit_and_report_write_what_they_announce(workdir, capsys, tiny_smoke):
    code, out, err = _zoo(
        [
            *LR,
            "--dataset",
            "simulated",
            "--prior",
            "conjugate",
            "--methods",
            "map,mean_field",
            "--preset",
            "smoke",
            "--out-dir",
            "cmp",
        ],
        capsys,
    )
    assert code == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[-1] == f"report: {Path('cmp') / 'index.html'}"
    assert [line.split()[0] for line in lines[:-1]] == ["exact", "delta", "mean_field"]
    assert "reference" in lines[0]
    assert (workdir / "cmp" / "index.html").is_file()
    results = json.loads((workdir / "cmp" / "results.json").read_text())
    validate(results)
    assert (results["preset"], results["reference"]) == ("smoke", "exact")
    assert (results["num_data"], results["num_test"]) == (200, 0)  # every row is fitted
    assert {p.name for p in (workdir / "cmp").glob("*.nc")} == {
        "exact.nc",
        "delta.nc",
        "mean_field.nc",
    }

    code, out, err = _zoo(
        [
            "fit",
            "linear_regression",
            "--dataset",
            "simulated",
            "--method",
            "mean_field",
            "--preset",
            "smoke",
            "--out-dir",
            "fit",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.splitlines()[-1] == f"report: {Path('fit') / 'index.html'}"
    results = json.loads((workdir / "fit" / "results.json").read_text())
    validate(results)
    assert list(results["methods"]) == ["mean_field"] and results["reference"] is None
    assert sorted(p.name for p in (workdir / "fit").iterdir()) == [
        ".zoo-manifest",
        "figures",
        "index.html",
        "mean_field.nc",
        "results.json",
    ]

    # zoo report redraws the page and figures from the files of the folder.
    (workdir / "cmp" / "index.html").unlink()
    for figure in (workdir / "cmp" / "figures").iterdir():
        figure.unlink()
    code, out, err = _zoo(["report", "cmp"], capsys)
    assert (code, err) == (0, "")
    assert out == f"report: {Path('cmp') / 'index.html'}\n"
    assert "mean_field" in (workdir / "cmp" / "index.html").read_text()
    assert {p.name for p in (workdir / "cmp" / "figures").iterdir()} >= {"marginals.png"}


def test_fit_of_a_point_estimate_writes_a_report(workdir, capsys, tiny_smoke):
    code, out, err = _zoo(
        [
            "fit",
            "linear_regression",
            "--dataset",
            "simulated",
            "--method",
            "map",
            "--preset",
            "smoke",
            "--out-dir",
            "fit",
        ],
        capsys,
    )
    assert code == 0, err
    assert (workdir / "fit" / "index.html").is_file()


@pytest.mark.slow  # three small comparisons and an amortized fit: 12 s
def test_choosing_k_and_fitting_an_amortized_guide(workdir, capsys, tiny_smoke):
    code, out, err = _zoo(
        [
            "compare",
            "gmm",
            "--num-components",
            "1-2",
            "--methods",
            "em,mean_field",
            "--preset",
            "smoke",
            "--out-dir",
            "k",
        ],
        capsys,
    )
    assert code == 0, err
    # One line a method of each K as it finishes, on stderr; the table at the end on stdout.
    assert [line.split(" finished")[0] for line in err.splitlines() if " finished in " in line] == [
        f"zoo: K={k} {method}" for k in (1, 2) for method in ("em", "mean_field")
    ]
    lines = out.splitlines()
    results = json.loads((workdir / "k" / "results.json").read_text())
    validate(results)
    chosen = next(i for i, line in enumerate(lines) if line.startswith("chosen K: "))
    assert "bic" in lines[chosen]
    # A choice resting on flagged fits is said on the terminal too, one line a warning.
    cautions = [f"caution: {w}" for w in results["selection"]["warnings"].values()]
    assert lines[chosen + 1 : -1] == cautions
    assert set(results["methods"]) == {"em-k1", "em-k2", "mean_field-k1", "mean_field-k2"}
    assert [r["k"] for r in results["selection"]["criteria"]] == [1, 2]

    code, out, err = _zoo(
        [
            "fit",
            "ppca",
            "--dataset",
            "iris",
            "--method",
            "amortized",
            "--encoder",
            "mlp",
            "--amortized-globals",
            "mean_field",
            "--preset",
            "smoke",
        ],
        capsys,
    )
    assert code == 0, err
    report = Path("reports") / "ppca-iris-amortized"
    assert out.splitlines()[-1] == f"report: {report / 'index.html'}"
    assert (workdir / report / "figures" / "latents.png").is_file()
    diagnostics = json.loads((workdir / report / "results.json").read_text())["methods"][
        "amortized"
    ]["diagnostics"]
    assert (diagnostics["encoder"], diagnostics["global_guide"]) == ("mlp", "mean_field")
    assert "khat" in diagnostics  # mean-field globals have a density


# --------------------------------------------------------------------------- out-dir

#: Out-dirs that cannot be written: found before any work, one line, exit 2, nothing left.
BAD_OUT_DIR = {
    # /proc refuses new entries whatever the permissions say (os.access says yes to root).
    "under /proc": lambda root: Path("/proc/zoo-out"),
    # A path through a file: os.access on the file says it is writable.
    "under a file": lambda root: root / "ok.csv" / "out",
    "a file": lambda root: root / "ok.csv",
    "read-only folder": lambda root: _read_only(root / "ro") / "out",
}


def _read_only(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("case", list(BAD_OUT_DIR))
def test_an_out_dir_that_cannot_be_written_is_one_line_before_any_work(case, workdir, capsys):
    if case == "read-only folder" and os.geteuid() == 0:
        pytest.skip(reason="root writes into a read-only folder; the other cases run as root")
    out_dir = BAD_OUT_DIR[case](workdir)
    before = _snapshot(workdir)
    # A reference that needs work (NUTS on kidiq) if the check came after it.
    code, out, err = _zoo([*LR, "--methods", "nuts", "--out-dir", str(out_dir)], capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and f"--out-dir '{out_dir}'" in err, err
    assert _snapshot(workdir) == before
    assert "torch" not in err


# --------------------------------------------------------------------------- no torch

#: Commands that answer without importing torch (or ArviZ): help, list and argument errors.
LIGHT = {
    "help": (["--help"], 0),
    "list": (["list"], 0),
    "compare help": (["compare", "--help"], 0),
    "fit help": (["fit", "--help"], 0),
    "unknown model": (["compare", "linear_regresion"], 2),
    "unknown preset": ([*LR, "--preset", "fast"], 2),
    "negative seed": ([*LR, "--seed", "-3"], 2),
    "unknown method": ([*LR, "--methods", "nuts,gibbs"], 2),
    "guide that does not apply": (["compare", "gmm", "--methods", "flow"], 2),
    "unknown method to fit": (["fit", "ppca", "--method", "ful_rank"], 2),
    "cuda": ([*LR, "--device", "cuda"], 2),
    "unknown dataset": (["compare", "gmm", "--dataset", "irs"], 2),
    "flag of another model": (["compare", "gmm", "--degree", "3"], 2),
    "K for regression": ([*LR, "--num-components", "3"], 2),
    "K not a number": (["compare", "gmm", "--num-components", "x"], 2),
    "batch size for regression": ([*LR, "--batch-size", "10"], 2),
    "encoder for a mixture": (["compare", "gmm", "--encoder", "mlp"], 2),
    "out-dir under /proc": ([*LR, "--out-dir", "/proc/zoo-out"], 2),
}

_LIGHT_SCRIPT = """
import contextlib, io, json, sys
from comparisons.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    heavy = [m for m in ("torch", "pyro", "arviz", "pandas") if m in sys.modules]
    codes.append([code, heavy])
print(json.dumps(codes))
"""


def test_help_list_and_argument_errors_do_not_import_torch(tmp_path):
    """One fresh interpreter runs every command of LIGHT in turn and lists, after each, the
    heavy modules imported so far: none (each answers in a fraction of a second)."""
    cases = list(LIGHT.values())
    proc = subprocess.run(
        [sys.executable, "-c", _LIGHT_SCRIPT, json.dumps([argv for argv, _ in cases])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    for name, (code, heavy), (_, expected) in zip(LIGHT, seen, cases, strict=True):
        assert (code, heavy) == (expected, []), name
    assert list(tmp_path.iterdir()) == []


def test_the_light_tables_match_the_modules_they_stand_for():
    """The registry's data set descriptions and the CLI's preset names are kept beside the
    modules (which import torch) that load and define them."""
    import importlib

    from comparisons.cli import PRESET_NAMES

    for name, spec in MODELS.items():
        module = importlib.import_module(f"zoo.{name}")
        assert dict(spec.datasets) == {k: v.description for k, v in module.DATASETS.items()}
    assert PRESET_NAMES == tuple(runners.PRESETS)


def test_list_columns_line_up(capsys):
    code, out, _ = _zoo(["list"], capsys)
    assert code == 0
    lines = out.splitlines()
    # Each data set line: name, spaces, description; every description in the same column.
    data_lines = [
        line
        for spec in MODELS.values()
        for name in spec.datasets
        for line in lines
        if line.strip().startswith(f"{name} ") and spec.datasets[name] in line
    ]
    assert len(data_lines) >= sum(len(spec.datasets) for spec in MODELS.values())
    columns = {line.index(desc) for line in data_lines for desc in _descriptions() if desc in line}
    assert len(columns) == 1, columns
    summaries = {
        line.index(spec.summary)
        for spec in [*MODELS.values(), *GUIDES.values()]
        for line in lines
        if spec.summary in line
    }
    assert len(summaries) == 1, summaries


def _descriptions() -> list[str]:
    return [text for spec in MODELS.values() for text in spec.datasets.values()]


# --------------------------------------------------------------------------- seeds


def test_the_largest_seed_runs_every_offset():
    """A run offsets the seed (NUTS chain c: seed + c; pyro seeds NumPy, which takes values
    below 2**32): the largest seed the CLI takes runs two chains."""
    from comparisons.inputs import SEED_LIMIT
    from comparisons.runners import run_nuts

    post = MODELS["linear_regression"].example(0)
    few = Preset("few", num_chains=2, num_warmup=5, num_samples=5, num_draws=5, fit=TINY.fit)
    run = run_nuts(post, seed=SEED_LIMIT - 1, preset=few)
    assert run.error is None and run.draws["sigma"].shape == (2, 5)


# --------------------------------------------------------------------------- reruns


def test_a_rerun_leaves_only_its_own_files_with_the_umask(workdir, capsys, monkeypatch):
    """A second run into the same out-dir removes the first run's files it does not write
    again, keeps files the zoo did not write, writes every file with the umask's mode, and
    prints one line a method as it finishes; a run that fails while writing leaves the
    out-dir as it was."""
    import importlib

    cmp = importlib.import_module("comparisons.compare")  # the package's `compare` is the function

    events = []
    real_run = cmp.run_method

    def run_method(posterior, method, **kwargs):
        events.append(("run", method.name))
        return real_run(posterior, method, **kwargs)

    monkeypatch.setattr(cmp, "run_method", run_method)
    real_print = cli_module._print_finished
    monkeypatch.setattr(
        cli_module,
        "_print_finished",
        lambda method, info: (events.append(("done", method)), real_print(method, info)),
    )
    sim = [*LR, "--dataset", "simulated", "--prior", "conjugate", "--out-dir", "out"]
    old_mask = os.umask(0o027)
    try:
        code, out, err = _zoo([*sim, "--methods", "exact,map", "--no-progress"], capsys)
        assert code == 0, err
        assert events == [("run", "exact"), ("done", "exact"), ("run", "delta"), ("done", "delta")]
        assert [line.split()[:2] for line in err.splitlines() if " finished in " in line] == [
            ["zoo:", "exact"],
            ["zoo:", "delta"],
        ]
        out_dir = workdir / "out"
        assert (out_dir / "delta.nc").is_file()
        first_figures = {p.name for p in (out_dir / "figures").iterdir()}
        (out_dir / "notes.txt").write_text("mine")
        (out_dir / "figures" / "mine.png").write_bytes(b"mine")
        # A run that fails while writing its files leaves the folder as it was.
        before = _snapshot(workdir)

        def broken(folder):
            raise RuntimeError("disk full")

        with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="disk"):
            patch.setattr("comparisons.report.render", broken)
            _zoo([*sim, "--methods", "exact"], capsys)
        assert _snapshot(workdir) == before

        code, out, err = _zoo([*sim, "--methods", "exact"], capsys)
        assert code == 0, err
    finally:
        os.umask(old_mask)
    names = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    written = set((out_dir / ".zoo-manifest").read_text().splitlines())
    assert "delta.nc" not in names and "exact.nc" in names
    assert names == written | {".zoo-manifest", "notes.txt", "figures/mine.png"}
    assert {p.name for p in (out_dir / "figures").iterdir()} - {"mine.png"} <= first_figures
    for name in written | {".zoo-manifest"}:
        assert (out_dir / name).stat().st_mode & 0o777 == 0o640, name


def test_progress_bars_follow_the_terminal(monkeypatch):
    import argparse

    class Terminal:
        def isatty(self):
            return True

    assert cli_module._progress(argparse.Namespace(progress=None)) is False  # tests: no TTY
    assert cli_module._progress(argparse.Namespace(progress=True)) is True
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli_module._progress(argparse.Namespace(progress=None)) is True
    assert cli_module._progress(argparse.Namespace(progress=False)) is False
    parser = cli_module.build_parser()
    assert parser.parse_args([*LR, "--no-progress"]).progress is False
    assert parser.parse_args([*LR, "--progress"]).progress is True


def test_the_command_leaves_the_default_dtype_alone_and_computes_in_float64(workdir, capsys):
    # The library never changes process-wide defaults: zoo used to set float64 for the whole
    # process. Run under a float32 default, the same command gives the same numbers as under
    # float64 (the posterior is float64 by construction) and leaves float32 in place.
    argv = [*LR, "--dataset", "simulated", "--prior", "conjugate", "--methods", "map,laplace"]
    argv.append("--no-progress")
    found = {}
    for dtype in (torch.float64, torch.float32):
        torch.set_default_dtype(dtype)  # the autouse fixture restores float64 afterwards
        code, _, err = _zoo([*argv, "--out-dir", f"out-{dtype}"], capsys)
        assert code == 0, err
        assert torch.get_default_dtype() == dtype
        results = json.loads((workdir / f"out-{dtype}" / "results.json").read_text())
        found[dtype] = {m: r["summary"] for m, r in results["methods"].items()}
    assert found[torch.float32] == found[torch.float64]


@pytest.mark.parametrize(
    "model, preset", [("two_level_vae", "smoke"), ("vae", "full"), ("linear_regression", "full")]
)
def test_a_run_naming_no_preset_takes_the_models_default(model, preset, tmp_path):
    # The two-level VAE's default trains in minutes on 2 cores; its full preset is for a GPU.
    args = cli_module.build_parser().parse_args(["compare", model, "--out-dir", str(tmp_path)])
    cli_module._check(args)
    assert args.preset == preset == MODELS[model].default_preset


@pytest.mark.parametrize(
    "flag, expected",
    [([], None), (["--chains-in-parallel"], True), (["--no-chains-in-parallel"], False)],
)
def test_the_chains_run_in_parallel_as_asked(flag, expected, tmp_path):
    argv = ["compare", "linear_regression", "--out-dir", str(tmp_path), *flag]
    args = cli_module.build_parser().parse_args(argv)
    cli_module._check(args)
    preset = cli_module._preset(args, MODELS["linear_regression"], 100)
    assert preset.chains_in_parallel is expected
