"""The two-level VAE's gold-standard and inpainting figures (comparisons.two_level_figures):
drawn from arrays made by the evaluation's own code (``against_nuts`` on stand-in NUTS draws
and guides of known shape) or built with its dims, each figure's file is written, its caption
carries the numbers it shows, and without those arrays no figure is drawn."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch

from comparisons.two_level_figures import (
    TWO_LEVEL_FIGURES,
    plot_gabor_fits,
    plot_gold,
    plot_inpainting,
    plot_textures,
)
from zoo.two_level_vae.gold import GoldRun, against_nuts

K1, K2, ROWS, CHAINS, DRAWS = 12, 3, 2, 2, 600
#: The stand-in NUTS runs' diagnostics (ESS a little below the 1200 independent draws).
NUTS = {"gold_rows": ROWS, "gold_chains": CHAINS, "gold_draws": DRAWS, "gold_warmup": DRAWS,
        "gold_ess_bulk_min": 1100.0, "gold_divergences": 0, "gold_wall_s": 12.0}  # fmt: skip


def _idata(arrays: dict) -> az.InferenceData:
    return az.from_dict(
        constant_data={k: v for k, (v, _) in arrays.items()},
        dims={k: list(d) for k, (_, d) in arrays.items()},
    )


def _correlation(correlated: bool) -> np.ndarray:
    """Neighbouring V1 units correlated at -0.45 (explaining away), or none."""
    r = np.eye(K1)
    if correlated:
        i = np.arange(K1 - 1)
        r[i, i + 1] = r[i + 1, i] = -0.45
    return r


def _gold_run(rng, correlated: bool, rhat: float) -> tuple[GoldRun, dict]:
    """Stand-in NUTS draws, independent: z1 Gaussian with sds 0.2-1 and ``_correlation``, z2
    independent with sd 0.5, means drawn per row; and the posterior they are drawn from (means
    (rows, K) and covariance by site)."""
    sd1 = np.linspace(0.2, 1.0, K1)
    truth = {
        "z1": (rng.normal(0, 1, (ROWS, K1)), _correlation(correlated) * np.outer(sd1, sd1)),
        "z2": (rng.normal(0, 1, (ROWS, K2)), np.diag(np.full(K2, 0.25))),
    }
    z = {site: np.stack([rng.multivariate_normal(m, cov, size=(CHAINS, DRAWS)) for m in means])
         for site, (means, cov) in truth.items()}  # fmt: skip
    return GoldRun(z["z1"], z["z2"], None, {**NUTS, "gold_rhat_max": rhat}), truth


def _guide(truth: dict, *, diagonal: bool, sd_scale: float, shift: float, seed: int):
    """A sampler (as in zoo.two_level_vae.evaluate) whose draws have the posterior's means
    shifted by ``shift`` sds, its sds times ``sd_scale``, and its correlations unless
    ``diagonal``."""

    def sample(x: torch.Tensor, num: int):
        rng = np.random.default_rng(seed)
        z = {}
        for site, (means, cov) in truth.items():
            sd = np.sqrt(np.diag(cov))
            cov = np.diag(sd**2) if diagonal else cov
            draws = [rng.multivariate_normal(m + shift * sd, cov * sd_scale**2, size=num)
                     for m in means]  # fmt: skip
            z[site] = torch.as_tensor(np.stack(draws, 1))
        return z, {}, {}

    return sample


@pytest.fixture(scope="module")
def gold_study() -> tuple[dict, dict]:
    """Three methods measured by ``against_nuts``: a chain guide (diagonal, over-confident by
    2, shifted 0.3 sd) and a top-down guide (NUTS's correlations) on a decoder with correlated
    V1 units, and a top-down refit on a decoder without any, its NUTS reference rough."""
    rng = np.random.default_rng(0)
    correlated, plain = _gold_run(rng, True, 1.004), _gold_run(rng, False, 1.03)
    guides = {
        "amortized_chain": (correlated, dict(diagonal=True, sd_scale=0.5, shift=0.3, seed=1)),
        "amortized_top_down": (correlated, dict(diagonal=False, sd_scale=1.0, shift=0.0, seed=2)),
        "amortized_top_down_on_chain": (plain, dict(diagonal=False, sd_scale=1.0, shift=0, seed=3)),
    }
    results, idatas = {"methods": {}}, {}
    x = torch.zeros(ROWS, 16)
    for method, ((gold, truth), options) in guides.items():
        out = against_nuts(_guide(truth, **options), x, gold)
        results["methods"][method] = {"diagnostics": {**out["diagnostics"], **gold.diagnostics}}
        idatas[method] = _idata(out["arrays"])
    # A baseline without a V2 layer has no gold standard: it is left out.
    results["methods"]["ml"] = {"diagnostics": {}}
    idatas["ml"] = _idata({"phi": (np.eye(4), ("pixel", "v1_unit"))})
    return results, idatas


def test_every_figure_of_the_module_is_in_the_report():
    # A plot_ function defined here but left out of TWO_LEVEL_FIGURES would never be drawn.
    import comparisons.two_level_figures as module

    own = {
        f
        for name, f in vars(module).items()
        if name.startswith("plot_") and f.__module__ == module.__name__
    }
    assert own <= set(TWO_LEVEL_FIGURES)
    assert {plot_gold, plot_inpainting, plot_gabor_fits, plot_textures} <= own


def test_plot_gold_writes_its_figure_with_the_numbers(gold_study, tmp_path):
    results, idatas = gold_study
    sections = plot_gold(results, idatas, tmp_path)
    assert len(sections) == 1
    title, name, caption = sections[0]
    assert name == "gold.png" and (tmp_path / name).stat().st_size > 0
    diag = {m: r["diagnostics"] for m, r in results["methods"].items() if m != "ml"}
    for method, d in diag.items():
        assert f"{method}: V1 " in caption
        for key in ("gold_z1_mean_z_rms", "gold_z2_mean_z_rms"):
            assert f"{d[key]:.2f} " in caption
        assert f"{d['gold_z1_sd_ratio_median']:.2f}" in caption
        assert f"RMS {d['gold_z1_corr_nuts_rms']:.3f}" in caption
        assert f"max R-hat {d['gold_rhat_max']:.3f}" in caption
    assert "ml:" not in caption and "nan" not in caption and "None" not in caption
    assert f"noise floor of {1 / math.sqrt(1100):.3f}" in caption
    assert f"NUTS on {ROWS} rows, {CHAINS} chains x {DRAWS} draws after {DRAWS} warm-up" in caption
    assert "min bulk ESS 1100" in caption and f" {ROWS} patches only: an anecdote" in caption
    chain, top_down = diag["amortized_chain"], diag["amortized_top_down"]
    # The chain's sds are half NUTS's: over-confident by 2 (the ratio of 4000 guide draws
    # against 1200 of NUTS is within a few percent of 0.5), and it holds no correlation.
    ratio = chain["gold_z1_sd_ratio_median"]
    assert abs(ratio - 0.5) < 0.05
    assert f"over-confident, sds {1 / ratio:.1f} times too small" in caption
    assert f"carries almost none of them (slope {chain['gold_z1_corr_slope']:.2f}" in caption
    assert caption.count("as its diagonal q(z1 | x) must") == 1
    # The top-down guide has NUTS's correlations: its slope reaches the ceiling that NUTS's own
    # noise allows, 1 - (noise / RMS)^2 (0.97 here). Its slope's error is the guide's
    # correlation noise (1 / sqrt(4000) = 0.016 per pair) over sqrt(sum of NUTS's squared
    # correlations) (~0.9): about 0.02, so 0.08 is 4 of them.
    ceiling = 1 - (1 / math.sqrt(1100) / top_down["gold_z1_corr_nuts_rms"]) ** 2
    assert abs(top_down["gold_z1_corr_slope"] - ceiling) < 0.08
    assert f"would show about {ceiling:.2f}" in caption
    assert f"carries most of them (slope {top_down['gold_z1_corr_slope']:.2f}" in caption
    # Without correlations NUTS's are noise (RMS about 1 / sqrt(1200), below the floor), and
    # only that decoder's reference (R-hat 1.03) is called rough.
    assert caption.count("no more than noise") == 1
    assert caption.count("the reference itself is rough") == 1
    assert "R-hat 1.030, 12 s (R-hat above 1.01: its chains disagree" in caption


def test_plot_gold_draws_nothing_without_its_arrays(gold_study, tmp_path):
    results, idatas = gold_study
    assert plot_gold(results, {}, tmp_path) == []
    assert plot_gold({"methods": {"ml": results["methods"]["ml"]}}, idatas, tmp_path) == []
    assert plot_gold({}, {}, tmp_path) == [] and not list(tmp_path.iterdir())


PATCHES, HIDDEN, STEPS = 200, 16, 30


@pytest.fixture(scope="module")
def inpainting() -> tuple[dict, dict, np.ndarray]:
    """Three methods' predictions of 200 hidden blocks of unit-variance pixels: a chain guide
    worse than predicting 0, a top-down guide better, and the full Gaussian better still;
    the guides with their NUTS rows (one, one of them rough) and the top-down with a trace."""
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((PATCHES, HIDDEN))
    noise = lambda: rng.standard_normal(truth.shape)  # noqa: E731
    predicted = {
        "amortized_chain": 0.3 * truth + 0.9 * noise(),
        "amortized_top_down": 0.5 * truth + 0.5 * noise(),
        "ml_gaussian": 0.6 * truth + 0.3 * noise(),
    }
    rmse = lambda p: float(np.sqrt(np.mean((p - truth) ** 2)))  # noqa: E731
    results, idatas = {"methods": {"ml": {"diagnostics": {}}}}, {}
    for method, p in predicted.items():
        diag = {"inpaint_rmse": rmse(p)}
        arrays = {"inpaint": (np.stack([truth, p]), ("source", "test_row", "hidden"))}
        if method != "ml_gaussian":
            diag.update(inpaint_rmse_zero=rmse(0 * truth), inpaint_rows=PATCHES,
                        inpaint_hidden=HIDDEN, gold_rows=1, gold_inpaint_ess_bulk_min=350.0,
                        gold_inpaint_rmse_guide=rmse(p[:1]), gold_inpaint_rmse_nuts=0.61,
                        gold_inpaint_rhat_max=1.05 if "chain" in method else 1.002)  # fmt: skip
        results["methods"][method] = {"diagnostics": diag}
        idatas[method] = _idata(arrays)
    trace = np.geomspace(0.95, rmse(predicted["amortized_top_down"]), STEPS)
    idatas["amortized_top_down"] = _idata({
        "inpaint": (np.stack([truth, predicted["amortized_top_down"]]),
                    ("source", "test_row", "hidden")),
        "inpaint_trace": (trace, ("inpaint_step",)),
    })  # fmt: skip
    return results, idatas, truth


def test_plot_inpainting_writes_its_figures_with_the_numbers(inpainting, tmp_path):
    results, idatas, truth = inpainting
    sections = plot_inpainting(results, idatas, tmp_path)
    assert [s[1] for s in sections] == ["inpainting.png", "inpainting_examples.png"]
    for _, name, _ in sections:
        assert (tmp_path / name).stat().st_size > 0
    (_, _, caption), (_, _, examples) = sections
    rmse = {m: r["diagnostics"]["inpaint_rmse"] for m, r in results["methods"].items() if m != "ml"}
    zero = float(np.sqrt(np.mean(truth**2)))
    assert rmse["amortized_chain"] > zero > rmse["amortized_top_down"] > rmse["ml_gaussian"]
    for method, value in rmse.items():
        assert f"{method} {value:.3f}" in caption
    assert f"central 4x4 block (16 pixels) of each of {PATCHES} held-out" in caption
    assert f"(dashed, {zero:.3f})" in caption
    assert f"Best: ml_gaussian ({rmse['ml_gaussian']:.3f})" in caption
    over = rmse["amortized_chain"] / zero - 1
    assert f"chain {rmse['amortized_chain']:.3f} ({over:.0%} above predicting 0" in caption
    assert "Beating predicting 0: amortized_top_down of 2 guide(s)." in caption
    assert "No guide clears the best linear prediction." in caption
    assert "ml:" not in caption and "nan" not in caption and "None" not in caption
    # The fill-in from 0 (the start, at predicting 0's error) to its last step.
    trace = idatas["amortized_top_down"].constant_data["inpaint_trace"].values
    assert f"{zero:.3f} at the start, {trace[0]:.3f} after one step" in caption
    assert f"{trace[-1]:.3f} after {STEPS}." in caption
    # The NUTS row: guide against NUTS, the bars of the same row, one of them rough, and the
    # warning that one row proves nothing.
    guide = results["methods"]["amortized_top_down"]["diagnostics"]["gold_inpaint_rmse_guide"]
    assert f"amortized_top_down: guide {guide:.3f}, NUTS 0.610" in caption
    assert f"there predicting 0 gives {np.sqrt(np.mean(truth[0] ** 2)):.3f}" in caption
    linear = idatas["ml_gaussian"].constant_data["inpaint"].values[1, 0]
    assert f"best linear prediction {np.sqrt(np.mean((linear - truth[0]) ** 2)):.3f}" in caption
    assert caption.count("rough: the chains disagree") == 1
    assert "A single row is an anecdote" in caption
    for method in rmse:
        p = idatas[method].constant_data["inpaint"].values[1, :4]
        assert f"{method} {np.sqrt(np.mean((p - truth[:4]) ** 2)):.3f}" in examples
    assert f"{np.sqrt(np.mean(truth[:4] ** 2)):.3f} for predicting 0" in examples


def test_plot_inpainting_of_the_gaussian_alone_computes_predicting_0(inpainting, tmp_path):
    results, idatas, truth = inpainting
    alone = {"methods": {"ml_gaussian": results["methods"]["ml_gaussian"]}}
    (_, _, caption), _ = plot_inpainting(alone, idatas, tmp_path)
    assert f"(dashed, {np.sqrt(np.mean(truth**2)):.3f})" in caption
    assert "NUTS" not in caption and "guide(s)" not in caption


def test_plot_inpainting_draws_nothing_without_its_numbers(inpainting, tmp_path):
    results, idatas, _ = inpainting
    assert plot_inpainting({"methods": {"ml": {"diagnostics": {}}}}, idatas, tmp_path) == []
    assert plot_inpainting({}, {}, tmp_path) == [] and not list(tmp_path.iterdir())


def test_missing_numbers_are_left_out_of_the_captions(gold_study, inpainting, tmp_path):
    """Arrays without their diagnostics, and numbers without their arrays (a refit comparison:
    no full Gaussian, NUTS rows not counted): the captions say what is there and no more."""
    results, idatas = gold_study
    bare = {"methods": {m: {} for m in results["methods"]}}
    ((_, _, caption),) = plot_gold(bare, idatas, tmp_path)
    assert "amortized_chain: NUTS's V1 correlations RMS" not in caption
    assert "amortized_chain: no numbers stored" in caption
    results, _, _ = inpainting
    keep = ("inpaint_rmse", "gold_inpaint_rmse_guide", "gold_inpaint_rmse_nuts")
    numbers = {
        m: {"diagnostics": {k: v for k, v in r["diagnostics"].items() if k in keep}}
        for m, r in results["methods"].items()
        if m.startswith("amortized")
    }
    sections = plot_inpainting({"methods": numbers}, {}, tmp_path)
    assert [s[1] for s in sections] == ["inpainting.png"]
    caption = sections[0][2]
    assert "On the NUTS rows," in caption and "anecdote" not in caption
    assert "Best: amortized_top_down" in caption and "predicting 0 (" not in caption
    for text in (caption, *(s[2] for s in plot_gold(bare, idatas, tmp_path))):
        assert "nan" not in text and "n/a" not in text and "None" not in text


def test_plot_inpainting_reads_its_numbers_from_the_arrays_alone(inpainting, tmp_path):
    results, idatas, truth = inpainting
    bare = {"methods": {m: {} for m in results["methods"]}}
    (_, _, caption), _ = plot_inpainting(bare, idatas, tmp_path)
    for method, r in results["methods"].items():
        if method != "ml":
            assert f"{method} {r['diagnostics']['inpaint_rmse']:.3f}" in caption
    assert f"of each of {PATCHES} held-out patches" in caption and "NUTS" not in caption
