"""The two-level VAE's gold standard and inpainting (zoo.two_level_vae.gold): NUTS on a
decoder's p(z1, z2 | x), the comparison of a guide's moments against NUTS's draws, and the
masks and predictors of inpainting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.two_level_vae.gold import (
    GoldRun,
    against_nuts,
    central_mask,
    inpaint_gaussian,
    nuts_posterior,
)
from zoo.two_level_vae.model import TwoLevelDecoder


def test_the_central_block_is_hidden():
    visible = central_mask(144).reshape(12, 12)
    assert (~visible).sum() == 16
    assert not visible[4:8, 4:8].any() and visible[:4].all() and visible[8:].all()
    assert (~central_mask(9)).sum() == 1 and not central_mask(9)[4]
    with pytest.raises(ValueError, match="square"):
        central_mask(10)


def test_the_gaussian_prediction_is_the_least_squares_one_on_its_own_rows():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 9)) @ rng.normal(size=(9, 9))
    visible = central_mask(9)
    predicted = inpaint_gaussian(train, train, visible)
    residual = train[:, ~visible] - predicted
    centred = train[:, visible] - train[:, visible].mean(0)
    # The conditional mean of the fitted Gaussian is the linear regression of the hidden
    # pixels on the visible ones: its residuals are orthogonal to them (to rounding).
    assert np.abs(centred.T @ residual).max() < 1e-8 * np.abs(centred).sum()
    assert abs(residual.mean()) < 1e-10


def _gold(draws: np.ndarray) -> GoldRun:
    """A 'NUTS' run of one row whose z1 draws are ``draws`` (2 chains)."""
    z1 = draws.reshape(1, 2, -1, draws.shape[-1])
    return GoldRun(z1, None, None, {"gold_ess_bulk_min": float(len(draws))})


def _sampler(draws: np.ndarray):
    def sample(rows, num):
        z = torch.as_tensor(draws[:num, None, :])
        return {"z1": z}, {}, {}

    return sample


def test_a_guide_is_judged_by_its_moments_and_correlations_against_nuts():
    rng = np.random.default_rng(1)
    k, n = 6, 4000
    corr = 0.6 ** np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
    chol = np.linalg.cholesky(corr)
    reference = _gold(rng.normal(size=(n, k)) @ chol.T)
    x = torch.zeros(1, 3)
    same = against_nuts(_sampler(rng.normal(size=(n, k)) @ chol.T), x, reference)["diagnostics"]
    diagonal = against_nuts(_sampler(rng.normal(size=(n, k))), x, reference)["diagnostics"]
    narrow = against_nuts(_sampler(0.5 * rng.normal(size=(n, k)) @ chol.T), x, reference)
    narrow = narrow["diagnostics"]
    # Monte Carlo error of 4000 independent draws each: a z-score of the mean has sd
    # sqrt(2 / 4000) = 0.022, an sd ratio about the same, a correlation at most 0.016 each
    # (0.022 between two estimates); the bounds below are 5 of those.
    assert same["gold_z1_mean_z_rms"] < 0.11
    assert same["gold_z1_sd_ratio_median"] == pytest.approx(1.0, abs=0.11)
    assert narrow["gold_z1_sd_ratio_median"] == pytest.approx(0.5, abs=0.06)
    assert same["gold_z1_corr_error_rms"] < 0.11
    assert same["gold_z1_corr_slope"] == pytest.approx(1.0, abs=0.11)
    # A diagonal guide carries none of the correlations, which here are far above noise.
    assert diagonal["gold_z1_corr_slope"] == pytest.approx(0.0, abs=0.11)
    assert diagonal["gold_z1_corr_nuts_rms"] > 0.3
    assert same["gold_noise"] == pytest.approx(1 / np.sqrt(n))


def test_nuts_with_every_pixel_hidden_samples_the_prior():
    torch.manual_seed(0)
    decoder = TwoLevelDecoder(4, 4, 2, (4,), sigma=0.2, start_scale=1.0)
    x = torch.zeros(1, 4, dtype=torch.float64)
    run = nuts_posterior(decoder, x, preset="smoke", mask=np.zeros(4, dtype=bool))
    z2 = run.z2.reshape(-1, 2)
    ess = run.diagnostics["gold_ess_bulk_min"]
    # Nothing is seen, so p(z2 | x) = N(0, I): each mean within 5 Monte Carlo sds of 0
    # (sd 1 / sqrt(ESS), the smallest ESS of the run), each sd within 5 of its own error.
    # NUTS seeds 0-2 gave z-scores of the means of 0.63, 0.18; 0.62, -0.34; 1.09, -0.21, of
    # the sds 1.29, -0.83; -0.87, -0.46; -0.47, -0.39, smallest ESS 262-377 of 600 draws, and
    # R-hat 1.019, 1.025, 1.020 (2 chains of 300: R-hat is rough; 1.05 is the bound).
    assert np.all(np.abs(z2.mean(0)) < 5 / np.sqrt(ess))
    assert np.all(np.abs(z2.std(0) - 1.0) < 5 * np.sqrt(1.0 / (2 * ess)))
    assert run.diagnostics["gold_rhat_max"] < 1.05
    # The same decoder and rows again: the memoized run, not a new one.
    assert nuts_posterior(decoder, x, preset="smoke", mask=np.zeros(4, dtype=bool)) is run


def test_chains_in_parallel_processes_give_the_draws_of_a_run_one_after_another(monkeypatch):
    import zoo.two_level_vae.gold as gold

    torch.manual_seed(1)
    decoder = TwoLevelDecoder(4, 4, 2, (4,), sigma=0.2, start_scale=1.0)
    x = torch.randn(1, 4, dtype=torch.float64)
    monkeypatch.setattr(gold, "cores", lambda: 2)
    parallel = nuts_posterior(decoder, x, seed=5, draws=(60, 40))
    gold._CACHE.clear()
    monkeypatch.setattr(gold, "cores", lambda: 1)
    sequential = nuts_posterior(decoder, x, seed=5, draws=(60, 40))
    assert parallel is not sequential
    assert np.array_equal(parallel.z1, sequential.z1)
    assert np.array_equal(parallel.z2, sequential.z2)


def test_a_measurement_that_fails_is_reported_and_the_others_go_on(monkeypatch, caplog):
    from types import SimpleNamespace

    import zoo.two_level_vae.evaluate as ev

    def broken(*args):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(ev, "_sampler", lambda fitted, x: ("decoder", "sample"))
    monkeypatch.setattr(ev, "_measure", lambda *a: {"metrics": {}, "diagnostics": {}, "arrays": {}})
    monkeypatch.setattr(ev, "_fields", broken)
    monkeypatch.setattr(ev, "_textures", lambda *a: {"diagnostics": {"texture_mi_z1": 0.0}})
    monkeypatch.setattr(ev, "_inpainting", lambda *a: {})
    monkeypatch.setattr(ev, "_gold", lambda *a: {})
    post = SimpleNamespace(test_data={"x": torch.zeros(3, 4)})
    run = SimpleNamespace(method="amortized_chain", fitted=object())
    out = ev.evaluate(post, run, images=None, gold=None)
    assert out["diagnostics"] == {
        "gabor_error": "LinAlgError: Singular matrix",
        "texture_mi_z1": 0.0,
    }
    assert "amortized_chain: the gabor measurement failed" in caplog.text
