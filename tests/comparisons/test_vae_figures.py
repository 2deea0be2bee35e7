"""The VAE's figures, drawn from the files of a tiny comparison (simulated rows read as 2x2
images with two classes): each figure's file is written and its caption carries the numbers
of the arrays and metrics it draws, recomputed here; without those data no figure is drawn."""

from __future__ import annotations

import dataclasses
import json
import math

import arviz as az
import numpy as np
import pytest
from helpers import TINY, numerics
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from comparisons import compare
from comparisons.figures import MODEL_FIGURES
from comparisons.report import load
from comparisons.vae_figures import (
    NEIGHBOURS,
    VAE_FIGURES,
    plot_vae_gaps,
    plot_vae_images,
    plot_vae_latents,
    plot_vae_log_px,
    plot_vae_outliers,
    plot_vae_rate_distortion,
    plot_vae_training,
)
from guides import FitConfig
from zoo import MODELS
from zoo.vae import simulate

QUICK = dataclasses.replace(
    TINY, name="quick", num_draws=10, fit=FitConfig(num_steps=150, min_steps=100, window=50)
)
#: The variants' training settings made short, as in test_vae_compare.py (10 rows a batch).
SHORT = {"window": 50, "min_steps": 100, "patience": 5, "batch_size": 10}
METHODS = ["ml", "amortized", "amortized_beta2", "amortized_autoencoder", "ml_gaussian"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """A comparison of three training variants and both baselines, written to a folder."""
    images, _ = simulate(0, num_data=40, data_dim=4, latent_dim=2)
    # Two classes by the sign of the first pixel (a label the latent map can be coloured by).
    labels = (images.test[:, 0] > np.median(images.test[:, 0])).astype(int)
    images = dataclasses.replace(images, image_shape=(2, 2), test_labels=labels)
    with numerics():
        post = MODELS["vae"].make_posterior(images, latent_dim=2, hidden=(8,), encoder_hidden=(8,))
        # No follow-up (p(z | x) under NUTS): its report is not drawn by these figures.
        post = dataclasses.replace(
            post,
            follow_ups=None,
            methods=tuple(
                dataclasses.replace(m, options={**m.options, **SHORT})
                if m.family == "amortized"
                else m
                for m in post.methods
            ),
        )
        out = tmp_path_factory.mktemp("vae") / "out"
        compare(post, methods=METHODS, seed=0, preset=QUICK, out_dir=out)
    return out


def _caption(sections, name: str) -> str:
    (section,) = sections
    assert section[1] == name
    return section[2]


@pytest.mark.slow  # about 12 s (20 s on a busy machine): three short trainings, each measured
def test_every_figure_is_drawn_with_the_numbers_of_its_data(out_dir, tmp_path):
    results, idatas = load(out_dir)
    assert MODEL_FIGURES["vae"] == VAE_FIGURES
    met = {m: r["metrics"] for m, r in results["methods"].items()}
    cd = {m: i.constant_data for m, i in idatas.items() if "constant_data" in i.groups()}

    # Held-out log p(x): the baselines, each method's distance to PPCA, the PSIS k count.
    caption = _caption(plot_vae_log_px(results, idatas, tmp_path), "vae_log_px.png")
    assert f"PPCA (ml, exact) {met['ml']['lpd_test']:.4g}" in caption
    assert f"full Gaussian (ml_gaussian, exact) {met['ml_gaussian']['lpd_test']:.4g}" in caption
    for m in ("amortized", "amortized_beta2", "amortized_autoencoder"):
        assert f"{m} ({met[m]['lpd_test'] - met['ml']['lpd_test']:+.3g})" in caption
        bad = int(np.sum(cd[m]["log_px_khat"].values > 0.7))
        assert f"{m} {bad} of {results['num_test']}" in caption
    assert f"amortized {met['amortized']['lpd_test'] - met['amortized']['elbo_test']:.3g}" in (
        caption
    )

    # Reconstructions: the mean squared error per pixel of the shown rows.
    caption = _caption(plot_vae_images(results, idatas, tmp_path), "vae_images.png")
    x = cd["amortized"]["x_shown"].values
    for m in ("amortized", "amortized_autoencoder"):
        mse = np.mean((cd[m]["reconstruction"].values - x) ** 2)
        assert f"{m} {mse:.3g}" in caption

    # Latent map: the sds of the means, and a nearest-neighbour vote (sklearn as oracle).
    caption = _caption(plot_vae_latents(results, idatas, tmp_path), "vae_latents.png")
    z, labels = cd["amortized"]["z_test_mean"].values, cd["amortized"]["test_label"].values
    vote = cross_val_predict(KNeighborsClassifier(NEIGHBOURS), z, labels, cv=LeaveOneOut())
    sd = z.std(0)
    active = met["amortized"]["active_units"]
    assert f"amortized: sd {sd[0]:.2g} and {sd[1]:.2g} ({active} of 2 active), " in caption
    assert f"{NEIGHBOURS}-neighbour accuracy {np.mean(vote == labels):.0%}" in caption

    # Training curves: epochs read off the checks agree with the batches (10 of the rows).
    caption = _caption(plot_vae_training(results, idatas, tmp_path), "vae_training.png")
    for m in ("amortized", "amortized_beta2", "amortized_autoencoder"):
        valid = cd[m]["validation_elbo"].values
        steps = len(np.atleast_1d(idatas[m].attrs["elbo"]))
        epochs = steps / math.ceil(results["num_data"] / SHORT["batch_size"])
        best = int(np.argmax(valid))
        assert f"{m}: {steps} steps ({epochs:.3g} epochs), best validation ELBO" in caption
        assert f"{valid[best]:.4g} at epoch {best + 1}" in caption
    assert "the training curve weighs the KL by beta" in caption

    # Gaps: each method with a density, the means of its rows' gaps.
    caption = _caption(plot_vae_gaps(results, idatas, tmp_path), "vae_gaps.png")
    for m in ("amortized", "amortized_beta2"):
        amort, approx = cd[m]["amortization_gap_row"].values, cd[m]["approximation_gap_row"].values
        assert f"approximation {approx.mean():.3g}, amortization {amort.mean():.3g} over" in (
            caption
        )
        assert np.mean(amort) == pytest.approx(met[m]["amortization_gap"])
    assert "amortized_autoencoder" not in caption

    # Rate and distortion: two points, the line of equal ELBO through the best.
    sections = plot_vae_rate_distortion(results, idatas, tmp_path)
    caption = _caption(sections, "vae_rate_distortion.png")
    for m in ("amortized", "amortized_beta2"):
        rate = results["methods"][m]["diagnostics"]["kl_z"]
        assert f"{m}: R {rate:.3g}, D {-met[m]['reconstruction_test']:.4g}" in caption
    best = max(("amortized", "amortized_beta2"), key=lambda m: met[m]["elbo_test"])
    assert f"the same ELBO as the best ({best})" in caption

    # Outliers: the AUCs of the noise set; the baselines are not scored.
    caption = _caption(plot_vae_outliers(results, idatas, tmp_path), "vae_outliers.png")
    diag = {m: results["methods"][m]["diagnostics"] for m in met}
    best = max(
        diag[m][f"auc_{s}_noise"]
        for m in met
        for s in ("logpx", "kl")
        if f"auc_{s}_noise" in diag[m]
    )
    assert f"noise: best {best:.3f} (" in caption
    assert "Not scored: ml and ml_gaussian." in caption
    for name in (
        "vae_log_px",
        "vae_images",
        "vae_latents",
        "vae_training",
        "vae_gaps",
        "vae_rate_distortion",
        "vae_outliers",
    ):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name


def test_without_their_data_the_figures_draw_nothing(tmp_path):
    # Baselines alone (metrics, no arrays) and a failed variant, for rows that are images and
    # rows that are not.
    meta = {"method": "amortized", "zoo": json.dumps({"point": True, "sites": []})}
    bare = az.InferenceData(attrs=meta)
    results = {
        "model": "vae",
        "num_data": 30,
        "num_test": 10,
        "posterior": {"image_shape": "64"},
        "methods": {
            "ml": {"metrics": {"lpd_test": 1.0}, "diagnostics": {}},
            "ml_gaussian": {"metrics": {"lpd_test": 2.0}, "diagnostics": {}},
            "amortized": {"metrics": {}, "diagnostics": {"status": "failed"}},
        },
    }
    for shape in ("64", "8x8"):
        results["posterior"]["image_shape"] = shape
        for plot in VAE_FIGURES:
            assert plot(results, {"amortized": bare}, tmp_path) == [], plot.__name__
            assert plot(results, {}, tmp_path) == [], plot.__name__
    assert not list(tmp_path.iterdir())


def test_one_point_of_rate_and_distortion_is_said_to_show_no_trade_off(tmp_path):
    results = {
        "methods": {
            "amortized": {
                "metrics": {"reconstruction_test": -20.0},
                "diagnostics": {"kl_z": 3.0},
            },
            "ml": {"metrics": {"lpd_test": -25.0}},
        }
    }
    caption = _caption(plot_vae_rate_distortion(results, {}, tmp_path), "vae_rate_distortion.png")
    assert "amortized: R 3, D 20" in caption
    assert "one point shows no trade-off" in caption
