"""The two-level VAE: its whitened patches, its model and one comparison of both guide
orders end to end on a small simulated posterior."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyro
import pytest
import torch
from helpers import TINY, validate

from comparisons import compare
from guides import FitConfig
from zoo import MODELS
from zoo.two_level_vae import TwoLevelDecoder, model, whiten
from zoo.two_level_vae.data import load_whitened_patches


def _radial_amplitude(image: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Mean Fourier amplitude of ``image`` in rings of radial frequency (cycles per pixel)."""
    amp = np.abs(np.fft.fft2(image))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]),
                              indexing="ij"))  # fmt: skip
    return np.array([amp[(f >= lo) & (f < hi)].mean() for lo, hi in zip(bands, bands[1:])])


def test_whitening_flattens_a_one_over_f_spectrum_below_the_roll_off():
    # An image with amplitude 1/f and random phases, as natural images have on average.
    rng = np.random.default_rng(0)
    n = 256
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    spectrum = np.where(f > 0, 1 / np.maximum(f, 1e-9), 0) * np.exp(2j * np.pi * rng.random((n, n)))
    image = np.real(np.fft.ifft2(spectrum))
    bands = np.linspace(0.02, 0.2, 7)  # below f0 / 2, where the roll-off is at most 1.6%
    before = _radial_amplitude(image, bands)
    after = _radial_amplitude(whiten(image), bands)
    # 1/f: the amplitude falls 5.1-5.3-fold over these bands; whitened it is flat, the rings'
    # means within 4.8-6.1% of each other (noise in the phases; both seen for phase seeds
    # 0-2).
    assert before[0] / before[-1] > 4
    assert after.max() / after.min() < 1.15
    assert whiten(image).std() == pytest.approx(1.0)


def test_patches_are_split_by_image_region_and_seeded():
    a = load_whitened_patches(size=6, num_train=50, num_test=20, seed=3)
    b = load_whitened_patches(size=6, num_train=50, num_test=20, seed=3)
    assert a.train.shape == (50, 36) and a.test.shape == (20, 36)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert np.all(np.isfinite(a.train))


def test_the_upper_layer_sets_the_lower_layers_scales():
    torch.manual_seed(0)
    decoder = TwoLevelDecoder(4, 5, 2, (8,), dtype=torch.float64)
    z2 = torch.randn(3, 2)
    p = decoder.prior_z1(z2)
    assert p.batch_shape == (3,) and p.event_shape == (5,)
    assert not torch.allclose(p.base_dist.scale[0], p.base_dist.scale[1])  # it depends on z2
    trace = pyro.poutine.trace(model).get_trace(torch.zeros(3, 4, dtype=torch.float64),
                                                decoder=decoder)  # fmt: skip
    assert _sample_sites(trace) == ["z2", "z1", "x"]
    one = TwoLevelDecoder(4, 5, 0, dtype=torch.float64)  # the one-layer sparse model
    trace = pyro.poutine.trace(model).get_trace(torch.zeros(3, 4, dtype=torch.float64),
                                                decoder=one)  # fmt: skip
    assert _sample_sites(trace) == ["z1", "x"]


def _sample_sites(trace) -> list[str]:
    return [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]


QUICK = dataclasses.replace(
    TINY, name="quick", num_draws=10, fit=FitConfig(num_steps=150, min_steps=100, window=50)
)


@pytest.mark.slow  # about 30 s: three short trainings, four refits and two NUTS runs
def test_both_orders_and_the_one_layer_model_are_measured_per_layer(tmp_path):
    post = MODELS["two_level_vae"].example(0, hidden=(8,), encoder_hidden=(8,))
    short = {"window": 50, "min_steps": 100, "patience": 5, "batch_size": 10, "kl_warmup": 20}
    post = dataclasses.replace(
        post, methods=tuple(dataclasses.replace(m, options={**m.options, **short})
                            if m.family != "closed_form" else m for m in post.methods),
    )  # fmt: skip
    result = compare(post, seed=0, preset=QUICK, out_dir=tmp_path / "out")
    results = result.results
    validate(results)
    assert list(results["methods"]) == [
        "ml", "amortized_chain", "amortized_top_down", "amortized_sparse", "ml_gaussian",
    ]  # fmt: skip
    for name in ("amortized_chain", "amortized_top_down", "amortized_sparse"):
        met, diag = results["methods"][name]["metrics"], results["methods"][name]["diagnostics"]
        assert diag.get("status") != "failed", (name, diag)
        # The ELBO is the reconstruction less each layer's term (no V2 in the sparse VAE).
        v2 = diag.get("kl_z2", 0.0)
        assert met["elbo_test"] == pytest.approx(met["reconstruction_test"] - diag["kl_z1"] - v2)
        assert ("kl_z2" in diag) == (name != "amortized_sparse")
        # log p(x) >= ELBO, up to the IW estimate's error (5 of its standard errors).
        assert met["lpd_test"] > met["elbo_test"] - 5 * diag["iw_se"], name
        assert diag["active_z1"] + diag["collapsed_z1"] == 4
        phi = result.idata[name].constant_data["phi"]
        assert phi.shape == (4, 4)
        # The gold standard: NUTS on p(z1, z2 | x) of a held-out row under the method's
        # own decoder, and the guide's moments against it (two-level models only).
        assert ("gold_z1_sd_ratio_median" in diag) == (name != "amortized_sparse"), name
        if name != "amortized_sparse":
            assert diag["gold_rows"] == 1 and np.isfinite(diag["gold_z1_corr_error_rms"])
            assert result.idata[name].constant_data["gold_z1_moments"].shape == (1, 4, 4)
    # The follow-up: each order refitted on each trained decoder, frozen; a frozen decoder
    # is the one its own method trained (Phi equal), and only the guide's networks move.
    refit = result.follow_ups["refit"]
    validate(refit.results)
    assert sorted(refit.results["methods"]) == sorted(
        f"amortized_{a}_on_{b}" for a in ("chain", "top_down") for b in ("chain", "top_down")
    )
    for name, record in refit.results["methods"].items():
        assert np.isfinite(record["metrics"]["elbo_test"]), name
        # Judged against the NUTS run of its decoder, the one the trained method met.
        trained_diag = results["methods"]["amortized_" + name.split("_on_")[1]]["diagnostics"]
        assert record["diagnostics"]["gold_wall_s"] == trained_diag["gold_wall_s"], name
        trained = "amortized_" + name.split("_on_")[1]
        phi = refit.idata[name].constant_data["phi"].values
        assert np.array_equal(phi, result.idata[trained].constant_data["phi"].values), name
    assert (tmp_path / "out" / "refit" / "index.html").is_file()
