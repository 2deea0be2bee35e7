"""Textures against spectrally matched noise (zoo.two_level_vae.textures) and their figure:
the scramble keeps the amplitude spectrum, texture patches of training photos come from
held-out columns only, the modulation index and the decoder behave on known inputs, and the
study and its figure run on a stand-in for a trained model."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest

from comparisons.two_level_figures import plot_textures
from zoo.two_level_vae.data import whitened_photos
from zoo.two_level_vae.textures import (
    ACTIVE,
    TEXTURES,
    decode,
    modulation_index,
    phase_scramble,
    texture_patches,
    texture_study,
    whitened_textures,
)
from zoo.vae.data import patch_columns, photo_names

SIZE = 12
#: Patches per texture in the study of the stand-in (a fifth of the default, for speed).
STUDY_PATCHES = 100


def fake_means(seed: int = 0):
    """A stand-in for a model's posterior means: z1 a fixed random linear map of the pixels
    (144 units), z2 the mean |z1| of groups of 9 (16 units; phase-sensitive)."""
    w = np.random.default_rng(100 + seed).standard_normal((SIZE * SIZE, SIZE * SIZE)) / SIZE

    def posterior_means(x: np.ndarray) -> dict[str, np.ndarray]:
        z1 = x @ w
        return {"z1": z1, "z2": np.abs(z1).reshape(len(x), 16, 9).mean(-1)}

    return posterior_means


@pytest.fixture(scope="module")
def study() -> dict:
    return texture_study(fake_means(), num_per_texture=STUDY_PATCHES, size=SIZE, seed=0)


@pytest.mark.parametrize("index", range(len(TEXTURES)))
def test_scramble_keeps_the_amplitude_spectrum_and_is_real(index):
    region, _ = whitened_textures()[index]
    scrambled = phase_scramble(region, seed=index)
    assert np.isrealobj(scrambled) and scrambled.shape == region.shape
    # The real part is all that is kept: had the scrambled spectrum not been Hermitian, the
    # imaginary part dropped would have changed the amplitudes checked here.
    amplitude = np.abs(np.fft.fft2(region))
    np.testing.assert_allclose(
        np.abs(np.fft.fft2(scrambled)), amplitude, rtol=0, atol=1e-9 * amplitude.max()
    )
    assert region.std() == pytest.approx(1.0) and scrambled.std() == pytest.approx(1.0)
    assert scrambled.mean() == pytest.approx(region.mean(), abs=1e-12)
    # Random phases leave almost no pixel-wise likeness (|r| ~ 1 / sqrt(pixels) ~ 0.002).
    assert abs(np.corrcoef(region.ravel(), scrambled.ravel())[0, 1]) < 0.05


def test_patches_have_their_shapes_and_are_deterministic():
    a, b = texture_patches(20, SIZE, seed=3), texture_patches(20, SIZE, seed=3)
    n = 20 * len(TEXTURES)
    assert a.natural.shape == a.scrambled.shape == (n, SIZE * SIZE)
    assert a.names == TEXTURES and np.array_equal(np.bincount(a.labels), [20] * len(TEXTURES))
    for field in ("natural", "scrambled", "labels", "row", "col"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    other = texture_patches(20, SIZE, seed=4)
    assert not np.array_equal(a.natural, other.natural)
    assert not np.array_equal(a.scrambled, other.scrambled)


def test_training_photos_give_patches_from_held_out_columns_only():
    patches = texture_patches(250, SIZE, seed=0)
    photos = photo_names()
    offsets = np.arange(SIZE)
    for label, name in enumerate(TEXTURES):
        rows = patches.labels == label
        row, col = patches.row[rows], patches.col[rows]
        region, start = whitened_textures()[label]
        width = start + region.shape[1]
        if name in photos:
            low, high = patch_columns(width, SIZE, "test")
            assert start == low and col.min() >= low and col.max() <= high
            # The pixels are the whitened photo's, scaled as its held-out region.
            photo = whitened_photos()[photos.index(name)]
            cut = photo[row[:, None, None] + offsets[:, None], col[:, None, None] + offsets]
            scale = photo[:, low:].std()
            np.testing.assert_allclose(patches.natural[rows] * scale, cut.reshape(len(cut), -1))
        else:  # moon: all of it, so patches also left of where a photo's held-out part starts
            assert start == 0 and col.min() < patch_columns(width, SIZE, "test")[0]


def test_modulation_index_on_known_responses():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    r = rng.standard_normal((120, 5))
    np.testing.assert_array_equal(modulation_index(r, r, labels), np.zeros((3, 5)))
    # Natural responses twice the scrambled ones: (2 - 1) / (2 + 1) for every unit.
    np.testing.assert_allclose(modulation_index(2 * r, r, labels), np.full((3, 5), 1 / 3))
    mi = modulation_index(r, 3 * rng.standard_normal((120, 5)), labels)
    assert np.all((mi >= -1) & (mi <= 1))
    silent = np.zeros((120, 1))
    assert np.isnan(modulation_index(silent, silent, labels)).all()
    assert np.all(modulation_index(r[:, :1], silent, labels) == 1)


def test_decode_separated_features_and_random_labels():
    rng = np.random.default_rng(1)
    n, families = 400, 4
    labels = np.repeat(np.arange(families), n // families)
    centres = 10.0 * np.eye(families, 6)
    separated = centres[labels] + rng.standard_normal((n, 6))
    mean, sd = decode(separated, labels, seed=0)
    # Means 10 sd apart: an error needs a 5-sd excursion (p ~ 3e-7 per row).
    assert mean >= 0.99 and 0 <= sd < 0.05
    # With random labels each of the n held-out predictions is right with probability 1/4,
    # so the accuracy's sd is the binomial sqrt(p (1 - p) / n) = 0.022; allow 4 of them.
    # Seen over seeds 0-5 of another draw: 0.225 to 0.300.
    chance = 1 / families
    tolerance = 4 * math.sqrt(chance * (1 - chance) / n)
    noise = rng.standard_normal((n, 10))
    for seed in range(3):
        mean, _ = decode(noise, rng.permutation(labels), seed=seed)
        assert abs(mean - chance) <= tolerance


def test_texture_study_of_a_stand_in(study):
    diag, arrays = study["diagnostics"], study["arrays"]
    for site in ("z1", "z2"):
        for key in ("texture_mi_{}", "texture_mi_{}_positive", "texture_decoding_{}"):
            assert math.isfinite(diag[key.format(site)])
        assert 0 <= diag[f"texture_mi_{site}_positive"] <= 1
    assert diag["texture_active_z1"] == 144 and diag["texture_active_z2"] == 16
    for key in ("pixels", "z1", "z1_pca", "z2"):
        assert 0 <= diag[f"texture_decoding_{key}"] <= 1
    assert diag["texture_chance"] == 1 / len(TEXTURES)
    assert diag["texture_patches"] == STUDY_PATCHES
    mi, dims = arrays["texture_mi_z1"]
    assert mi.shape == (len(TEXTURES), 144) and dims == ("texture", "z1_unit")
    mi, dims = arrays["texture_mi_z2"]
    assert mi.shape == (len(TEXTURES), 16) and dims == ("texture", "z2_unit")
    assert arrays["texture_variance_z1"][1] == ("z1_unit",)
    # A linear z1 responds to a whole image through its amplitude spectrum alone, which the
    # scramble keeps, so its MI is 0 up to sampling. Median z1 MI seen at 100 patches per
    # texture, stand-ins and seeds 0-5: -0.020, 0.012, 0.020, 0.019, -0.016, -0.000.
    assert abs(diag["texture_mi_z1"]) < 0.1


def test_active_threshold_matches_the_evaluation():
    from zoo.two_level_vae.evaluate import ACTIVE as EVALUATED

    assert ACTIVE == EVALUATED


def _idata(arrays: dict) -> az.InferenceData:
    return az.from_dict(
        constant_data={k: v for k, (v, _) in arrays.items()},
        dims={k: list(d) for k, (_, d) in arrays.items()},
    )


def test_plot_textures_writes_its_figure_with_the_numbers(study, tmp_path):
    one_layer = {k: v for k, v in study["arrays"].items() if "z2" not in k}
    diag = study["diagnostics"]
    results = {
        "methods": {
            "two-level": {"diagnostics": diag},
            "one-layer": {"diagnostics": {k: v for k, v in diag.items() if "z2" not in k}},
            # No V2 to compare with: its stray z1-on-K2-PCs number must not be shown.
            "ppca": {"diagnostics": {}},
        }
    }
    idatas = {"two-level": _idata(study["arrays"]), "one-layer": _idata(one_layer)}
    sections = plot_textures(results, idatas, tmp_path)
    assert len(sections) == 1
    title, name, caption = sections[0]
    assert (tmp_path / name).stat().st_size > 0 and name.endswith(".png")
    for key in ("texture_mi_z1", "texture_mi_z2"):
        assert f"{diag[key]:+.3f}" in caption
    for key in ("z1", "z2", "z1_pca", "pixels"):
        assert f"{diag[f'texture_decoding_{key}']:.2f}" in caption
    assert f"{diag['texture_mi_z2_positive']:.0%} of 16 active" in caption
    assert "z1 on 16 PCs" in caption and "chance 0.25" in caption
    assert "one-layer: V1 median MI" in caption and "ppca" not in caption
    assert "None" not in caption and "nan" not in caption
    assert plot_textures({"methods": {"ppca": {}}}, {}, tmp_path) == []
