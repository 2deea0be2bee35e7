"""VAE data: the dequantized digits and patches, user arrays and their errors, outlier sets,
and the classical baselines (PPCA, full-covariance Gaussian) in nats per image and bits/dim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.model_selection import train_test_split

from zoo.datasets import split_rows
from zoo.errors import ZooInputError
from zoo.ppca.closed_forms import fit_ml
from zoo.vae import baselines, data


@pytest.fixture(scope="module")
def digits() -> data.ImageData:
    return data.load_digits()


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


# --------------------------------------------------------------------------- digits


def test_digits_split_is_deterministic_and_disjoint(digits):
    again = data.load_digits()
    np.testing.assert_array_equal(digits.train, again.train)
    np.testing.assert_array_equal(digits.test, again.test)
    assert digits.train.shape == (1438, 64) and digits.test.shape == (359, 64)
    assert not _rows(digits.train) & _rows(digits.test)
    everything = data.load_digits(test_fraction=0.0).train
    assert _rows(digits.train) | _rows(digits.test) == _rows(everything)
    # The noise does not depend on the split seed: another split has the same rows.
    other = data.load_digits(seed=1)
    assert _rows(other.train) | _rows(other.test) == _rows(everything)
    assert not np.array_equal(other.test, digits.test)


def test_digits_values_recover_the_integers(digits):
    bunch = sklearn_digits()
    train, test = split_rows(1797, 0.2, data.DIGITS_SEED)
    assert 0 < digits.train.min() and digits.train.max() < 1
    np.testing.assert_array_equal(np.floor(digits.train * 17), bunch.data[train])
    np.testing.assert_array_equal(np.floor(digits.test * 17), bunch.data[test])
    np.testing.assert_array_equal(digits.test_labels, bunch.target[test])
    assert digits.image_shape == (8, 8) and digits.levels == 17 and digits.bounded
    assert digits.dim == 64


def test_builtin_registry():
    assert set(data.DATASETS) == {"digits", "patches"}
    assert all("\n" not in spec.description for spec in data.DATASETS.values())
    assert data.load_dataset("digits").name == "digits"
    default = data.DATASETS["digits"].load()  # the default seed, as load(DIGITS_SEED)
    np.testing.assert_array_equal(default.test, data.load_digits().test)
    with pytest.raises(ZooInputError, match="unknown dataset 'mnist'.*digits, patches"):
        data.load_dataset("mnist")


# --------------------------------------------------------------------------- patches


def test_patches_shapes_levels_and_determinism():
    patches = data.load_patches(size=8, num_train=500, num_test=100, seed=3)
    assert patches.train.shape == (500, 64) and patches.test.shape == (100, 64)
    assert patches.image_shape == (8, 8) and patches.levels == 256 and patches.bounded
    assert 0 < patches.train.min() and patches.train.max() < 1
    camera = data._photos()[data.photo_names().index("camera")]
    np.testing.assert_array_equal(np.floor(camera * 256), skimage.data.camera())
    assert set(np.unique(patches.train_labels)) <= set(range(len(data.photo_names())))
    again = data.load_patches(size=8, num_train=500, num_test=100, seed=3)
    np.testing.assert_array_equal(patches.test, again.test)
    assert data.load_patches(size=4, num_train=10, num_test=10).train.shape == (10, 16)


def test_patches_train_and_test_regions_are_disjoint():
    size = 8
    train = data.sample_patches(3000, size=size, region="train", seed=0)
    test = data.sample_patches(3000, size=size, region="test", seed=1)
    photos = data._photos()
    for i, photo in enumerate(photos):
        height, width = photo.shape
        right_of_train = train.col[train.image == i] + size  # one past the last column
        left_of_test = test.col[test.image == i]
        assert right_of_train.max() <= left_of_test.min()
        assert left_of_test.min() >= round(0.8 * width) and left_of_test.max() <= width - size
        assert (train.row[train.image == i] <= height - size).all()
    first = test.image[0], test.row[0], test.col[0]
    pixels = photos[first[0]][first[1] : first[1] + size, first[2] : first[2] + size]
    np.testing.assert_array_equal(test.values[0], pixels.ravel())


def test_patch_size_is_checked():
    with pytest.raises(ZooInputError, match="patch size must be a whole number from 2 to"):
        data.load_patches(size=500, num_train=1, num_test=1)


# --------------------------------------------------------------------------- user arrays


def _save(tmp_path, name, value):
    """Write ``value`` to ``tmp_path / name``: text or bytes as they are, else by extension."""
    path = tmp_path / name
    if isinstance(value, str):
        path.write_text(value)
    elif isinstance(value, bytes):
        path.write_bytes(value)
    elif name.endswith(".npz"):
        np.savez(path, **value)
    else:
        np.save(path, value)
    return path


def test_load_array_reads_npy_npz_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((20, 4, 5))
    loaded = data.load_array(_save(tmp_path, "img.npy", images))
    assert loaded.image_shape == (4, 5) and loaded.train.shape == (16, 20)
    assert loaded.test.shape == (4, 20) and loaded.bounded and loaded.levels is None
    pair = {"x": rng.normal(size=(12, 3)), "x_test": rng.normal(size=(5, 3))}
    loaded = data.load_array(_save(tmp_path, "pair.npz", pair))
    np.testing.assert_array_equal(loaded.test, pair["x_test"])
    assert loaded.train.shape == (12, 3) and not loaded.bounded and loaded.image_shape == (3,)
    only = data.load_array(_save(tmp_path, "only.npz", {"pixels": images}))
    assert only.image_shape == (4, 5)
    body = "\n".join(f"{i},{i / 10}" for i in range(12))
    plain = data.load_array(_save(tmp_path, "plain.csv", body + "\n"))
    headed = data.load_array(_save(tmp_path, "headed.csv", "a,b\n" + body + "\n"))
    np.testing.assert_array_equal(plain.train, headed.train)
    assert plain.train.shape == (10, 2) and plain.test.shape == (2, 2)


BODY = "\n".join(f"{i},{i}" for i in range(12))
BAD_FILES = {
    "missing": ("absent.npy", None, "does not exist"),
    "extension": ("data.txt", "1,2\n", "unknown extension '.txt'"),
    "non-numeric": (
        "words.csv",
        f"a,b\n{BODY}\n1,seven\n",
        "column 'b' has a non-numeric .*row 13",
    ),
    "nan-csv": (
        "nan.csv",
        f"a,b\n{BODY}\n,2\nnan,3\n",
        "2 NaN or infinite .*data row 13, column 'a'",
    ),
    "inf-npy": (
        "inf.npy",
        np.where(np.eye(12) > 0, np.inf, 0.0),
        "12 NaN or infinite .*x\\[0, 0\\]",
    ),
    "few-rows": ("few.npy", np.zeros((5, 3)), "5 row\\(s\\); give at least 10"),
    "one-d": ("flat.npy", np.zeros(50), "1-D array .*give a 2-D array"),
    "strings": ("text.npy", np.array([["a", "b"]] * 12), "non-numeric dtype"),
    "ambiguous-npz": ("two.npz", {"a": np.zeros((12, 2)), "b": np.ones(3)}, "none is named 'x'"),
    "mismatched-test": (
        "shapes.npz",
        {"x": np.zeros((12, 2)), "x_test": np.zeros((3, 3))},
        "x_test rows have shape",
    ),
    "corrupt-npy": ("broken.npy", b"not an array", "could not read 'broken.npy' as npy"),
    "empty-csv": ("empty.csv", "", "could not read 'empty.csv' as csv"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_load_array_errors_are_one_clear_line(tmp_path, case):
    name, value, message = BAD_FILES[case]
    path = tmp_path / name if value is None else _save(tmp_path, name, value)
    with pytest.raises(ZooInputError, match=message) as info:
        data.load_array(path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- outliers


def test_out_of_distribution_sets(digits):
    sets = data.out_of_distribution(digits, seed=0)
    assert set(sets) == {"noise", "patches", "shifted", "inverted"}
    assert all(x.shape == digits.test.shape for x in sets.values())
    assert all(0 <= x.min() and x.max() <= 1 for x in sets.values())
    np.testing.assert_array_equal(sets["inverted"], 1 - digits.test)
    shifted = sets["shifted"].reshape(-1, 8, 8)
    images = digits.test.reshape(-1, 8, 8)
    np.testing.assert_array_equal(shifted[:, 2:, 2:], images[:, :-2, :-2])
    padded = np.concatenate([shifted[:, :2].ravel(), shifted[:, 2:, :2].ravel()])
    assert padded.min() > 0 and padded.max() < 1 / 17  # zeros, dequantized
    np.testing.assert_array_equal(sets["noise"], data.out_of_distribution(digits)["noise"])


def test_out_of_distribution_skips_what_does_not_apply(tmp_path):
    images = np.random.default_rng(0).normal(size=(20, 4, 4))
    loaded = data.load_array(_save(tmp_path, "img.npy", images))
    sets = data.out_of_distribution(loaded)
    assert set(sets) == {"noise", "shifted"}  # not 8x8, not bounded
    assert sets["shifted"].reshape(-1, 4, 4)[:, :2].max() == 0  # no levels: plain zeros


# --------------------------------------------------------------------------- baselines


def test_gaussian_rows_match_scipy(digits):
    fit = baselines.gaussian_log_density(digits.train, digits.test)
    mean = digits.train.mean(0)
    cov = np.cov(digits.train.T, bias=True)
    expected = multivariate_normal(mean, cov).logpdf(digits.test)
    np.testing.assert_allclose(fit.test, expected, rtol=1e-10)
    assert fit.train.shape == (1438,)


def test_ppca_rows_sum_to_the_ml_log_likelihood(digits):
    fit = baselines.ppca_log_density(digits.train, digits.test, 8)
    assert fit.test.shape == (359,)
    np.testing.assert_allclose(fit.train.sum(), fit_ml(digits.train, 8).log_likelihood, rtol=1e-10)


def test_baselines_on_the_issue_split():
    """The issue's numbers (PPCA-8 16-17, full Gaussian 49-50 nats/image held out) hold on
    scikit-learn's ``train_test_split(test_size=0.2, random_state=0)`` of these rows. Across
    seeded 80/20 splits they vary by about 0.5 (PPCA) and 0.9 (Gaussian) nats (sd over 20
    splits), more than the width of those ranges."""
    x = data.load_digits(test_fraction=0.0).train
    train, test = train_test_split(x, test_size=0.2, random_state=0)
    assert 16 < baselines.ppca_log_density(train, test, 8).test.mean() < 17
    assert 49 < baselines.gaussian_log_density(train, test).test.mean() < 50


def test_baselines_on_the_default_split(digits):
    """Regression values of the default split (DIGITS_SEED), a deterministic computation: the
    tolerance only absorbs rounding in linear algebra."""
    ppca = baselines.ppca_log_density(digits.train, digits.test, 8).test.mean()
    gauss = baselines.gaussian_log_density(digits.train, digits.test).test.mean()
    assert ppca == pytest.approx(17.829, abs=1e-3)
    assert gauss == pytest.approx(49.839, abs=1e-3)
    assert baselines.bits_per_dim(ppca, 64, 17) == pytest.approx(3.6856, abs=1e-4)


def test_bits_per_dim_by_hand():
    assert baselines.bits_per_dim(-10.0, 2) == pytest.approx(10 / (2 * math.log(2)))
    # -(-10 - 2 log 4) / (2 log 2) = 10 / (2 log 2) + 2
    assert baselines.bits_per_dim(-10.0, 2, levels=4) == pytest.approx(10 / (2 * math.log(2)) + 2)
    assert baselines.bits_per_dim(0.0, 64, levels=256) == pytest.approx(8.0)  # uniform
    values = baselines.bits_per_dim(np.array([0.0, -64 * math.log(2)]), 64)
    np.testing.assert_allclose(values, [0.0, 1.0])


def test_natural_patches_get_noise_as_their_only_outliers():
    # Other patches, shifted or inverted patches are natural image patches too.
    patches = data.load_patches(num_train=200, num_test=50)
    sets = data.out_of_distribution(patches, seed=0)
    assert list(sets) == ["noise"] and sets["noise"].shape == patches.test.shape
