"""The regression's priors from the command line: per-coefficient scales, the conjugate
prior's shape, a flat prior; bad values end in one line and exit status 2."""

from __future__ import annotations

import pytest

from comparisons.cli import _posterior, build_parser, main

KIDIQ = ["fit", "linear_regression", "--dataset", "kidiq", "--method", "delta"]


def _prior(*flags: str) -> str:
    args = build_parser().parse_args([*KIDIQ, *flags])
    _, post = _posterior(args)
    return post.description["prior"]


def test_one_prior_scale_per_feature_in_features_order():
    text = _prior("--features", "mom_iq,mom_hs", "--prior-coef-scale", "0.5,10")
    assert "coef ~ Normal(0, [mom_iq: 0.5, mom_hs: 10])" in text
    assert "[mom_iq: 2, mom_hs: 2]" in _prior(
        "--features", "mom_iq,mom_hs", "--prior-coef-scale", "2"
    )


def test_conjugate_shape_and_flat_prior():
    assert "InverseGamma(5, 5 *" in _prior("--prior", "conjugate", "--prior-sigma-shape", "5")
    assert _prior("--prior", "flat").endswith("intercept and coef ~ flat (improper)")


ERRORS = {
    "count": (["--prior-coef-scale", "1,2,3"], "3 coefficient prior scales for 2 coefficients"),
    "negative": (["--prior-coef-scale", "1,-2"], "coefficient prior scales must be positive"),
    "not_a_number": (["--prior-coef-scale", "1,x"], "'1,x' is not a number"),
    "flat_scale": (["--prior", "flat", "--prior-coef-scale", "2"], "a flat prior has no scale"),
    "shape_alone": (["--prior-sigma-shape", "3"], "use it with --prior conjugate"),
    "shape_zero": (
        ["--prior", "conjugate", "--prior-sigma-shape", "0"],
        "sigma shape (a0) must be a positive number",
    ),
}


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code)


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_bad_priors_are_one_line_errors(case, tmp_path, capsys):
    flags, expected = case
    out_dir = tmp_path / "out"
    assert _exit_code([*KIDIQ, "--out-dir", str(out_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not out_dir.exists()
