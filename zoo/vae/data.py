"""Data for the variational autoencoders: digits, natural image patches, user arrays, and
out-of-distribution inputs for outlier-detection curves. Nothing is downloaded.

Every built-in set is *dequantized*: integer pixel values ``v`` in ``0..L-1`` become
``x = (v + u) / L`` with ``u ~ Uniform(0, 1)`` drawn once from a fixed generator, so values lie
in (0, 1), ``floor(L x) = v`` recovers the integers, and a density on x is a lower bound on the
probability of the discrete image (Theis et al. 2016). The noise does not depend on the split
seed, so every tool that loads a set sees the same numbers.

References
----------
Theis, van den Oord and Bethge (2016). A note on the evaluation of generative models. ICLR.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from zoo.datasets import builtin_spec, split_rows
from zoo.errors import ZooInputError

DIGITS_SEED = 0
DIGITS_LEVELS = 17
PATCH_LEVELS = 256
PATCH_TEST_FRACTION = 0.2
NOISE_SEED = 1  # the dequantization noise of every built-in set; independent of split seeds
MIN_ROWS = 10
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel")
SAMPLE_IMAGES = ("china", "flower")


@dataclass(frozen=True, eq=False)
class ImageData:
    """A data set of rows of pixel (or feature) values, split into training and held-out rows.

    ``train`` (N, D) and ``test`` (M, D) are float64; ``train_labels`` and ``test_labels`` are
    integer classes of the rows or None; ``image_shape`` is the shape one row reshapes to
    (``(D,)`` for rows that are not images); ``levels`` is the number of quantization levels
    L of dequantized data, ``x = (v + u) / L`` (None for continuous data); ``bounded`` says
    every value lies in [0, 1].
    """

    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    test_labels: np.ndarray | None
    image_shape: tuple[int, ...]
    name: str
    description: str
    levels: int | None
    bounded: bool

    @property
    def dim(self) -> int:
        """Number of values in one row, D."""
        return int(self.train.shape[1])


# --------------------------------------------------------------------------- digits


def dequantize(values: np.ndarray, levels: int, seed: int = NOISE_SEED) -> np.ndarray:
    """``(v + u) / levels`` with ``u ~ Uniform(0, 1)`` from ``default_rng(seed)``, one draw per
    value in C order; integer values v in ``0..levels-1`` give x in (0, 1)."""
    values = np.asarray(values, dtype=float)
    noise = np.random.default_rng(seed).random(values.shape)
    return (values + noise) / levels


def load_digits(test_fraction: float = 0.2, seed: int = DIGITS_SEED) -> ImageData:
    """scikit-learn's 1797 handwritten digits, 8x8 pixels (integers 0-16), dequantized.

    ``x = (v + u) / 17`` with the noise of :func:`dequantize` (fixed, whatever ``seed``); the
    rows are split by :func:`zoo.datasets.split_rows` (``default_rng(seed).permutation``,
    ``round(test_fraction * 1797)`` held out, each part in the original row order).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = dequantize(bunch.data, DIGITS_LEVELS)
    train, test = split_rows(len(x), test_fraction, seed)
    labels = bunch.target.astype(np.int64)
    return ImageData(
        x[train],
        x[test],
        labels[train],
        labels[test],
        (8, 8),
        "digits",
        "scikit-learn digits: 1797 handwritten 8x8 digits (0-16), dequantized to (0, 1)",
        DIGITS_LEVELS,
        True,
    )


# --------------------------------------------------------------------------- natural patches


@dataclass(frozen=True, eq=False)
class PatchSample:
    """Square patches cut from the photos: ``values`` (n, size*size), and for each patch the
    photo it comes from (``image``, an index into :func:`photo_names`) and the ``row`` and
    ``col`` of its top-left pixel."""

    values: np.ndarray
    image: np.ndarray
    row: np.ndarray
    col: np.ndarray


def photo_names() -> tuple[str, ...]:
    """The photographs patches are cut from, in index order."""
    return PHOTOS + SAMPLE_IMAGES


def _gray_levels(image: np.ndarray) -> np.ndarray:
    """Integer gray levels 0-255 (ITU-R 601 luma weights of RGB, rounded)."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = np.rint(image[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114]))
    return np.clip(image, 0, 255).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The photos in gray, dequantized with 256 levels (noise seeded by photo index)."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    raw = [getattr(skimage.data, name)() for name in PHOTOS]
    raw += [load_sample_image(f"{name}.jpg") for name in SAMPLE_IMAGES]
    return tuple(
        dequantize(_gray_levels(image), PATCH_LEVELS, seed=NOISE_SEED + 1 + i)
        for i, image in enumerate(raw)
    )


def patch_columns(width: int, size: int, region: Literal["train", "test"]) -> tuple[int, int]:
    """Smallest and largest top-left column of a patch inside a photo's region.

    The left ``1 - PATCH_TEST_FRACTION`` of the columns (``col < b``, ``b = round(0.8 W)``)
    are the training region, the rest the test region; a patch never crosses ``b``.
    """
    boundary = int(round((1 - PATCH_TEST_FRACTION) * width))
    return (0, boundary - size) if region == "train" else (boundary, width - size)


def sample_patches(
    num: int,
    *,
    size: int = 8,
    region: Literal["train", "test"] = "train",
    seed: int | np.random.SeedSequence = 0,
) -> PatchSample:
    """``num`` patches of ``size`` x ``size`` from one region of the photos, seeded.

    Each patch picks a photo uniformly, then its top-left pixel uniformly among the positions
    whose patch lies inside that photo's region (:func:`patch_columns`).
    """
    if region not in ("train", "test"):
        raise ZooInputError(f"region must be 'train' or 'test', got {region!r}")
    photos = _photos()
    _check_patch_size(size, photos)
    rng = np.random.default_rng(seed)
    image = rng.integers(len(photos), size=num)
    row, col = np.empty(num, dtype=np.int64), np.empty(num, dtype=np.int64)
    values = np.empty((num, size, size))
    offsets = np.arange(size)
    for i, photo in enumerate(photos):
        rows = np.flatnonzero(image == i)
        low, high = patch_columns(photo.shape[1], size, region)
        row[rows] = rng.integers(0, photo.shape[0] - size + 1, size=len(rows))
        col[rows] = rng.integers(low, high + 1, size=len(rows))
        r = row[rows, None, None] + offsets[None, :, None]
        c = col[rows, None, None] + offsets[None, None, :]
        values[rows] = photo[r, c]
    return PatchSample(values.reshape(num, size * size), image, row, col)


def _check_patch_size(size: int, photos: tuple[np.ndarray, ...]) -> None:
    widths = [p.shape[1] - patch_columns(p.shape[1], 0, "test")[0] for p in photos]
    largest = min(min(widths), min(p.shape[0] for p in photos))
    if isinstance(size, bool) or int(size) != size or not 2 <= size <= largest:
        raise ZooInputError(f"patch size must be a whole number from 2 to {largest}, got {size}")


def load_patches(
    size: int = 8, num_train: int = 20_000, num_test: int = 4_000, seed: int = 0
) -> ImageData:
    """Grayscale patches of ten photographs (scikit-image and scikit-learn), dequantized.

    Gray levels v (0-255) become ``(v + u) / 256``; training patches come from the left 80%
    of every photo and held-out patches from the right 20%, so no pixel is in both. The labels
    are the index of the photo (:func:`photo_names`).
    """
    train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    train = sample_patches(num_train, size=size, region="train", seed=train_seed)
    test = sample_patches(num_test, size=size, region="test", seed=test_seed)
    return ImageData(
        train.values,
        test.values,
        train.image,
        test.image,
        (size, size),
        "patches",
        f"{size}x{size} gray patches of {len(photo_names())} photographs, dequantized to"
        " (0, 1); held-out patches from the right 20% of each photo",
        PATCH_LEVELS,
        True,
    )


# --------------------------------------------------------------------------- user arrays


def load_array(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """User data from ``.npy``, ``.npz`` or ``.csv``, checked, then split by rows.

    ``.npy``: a 2-D array (rows x values) or 3-D images (N, H, W), flattened with
    ``image_shape = (H, W)``. ``.npz``: the array ``x`` (with ``x_test``, the held-out rows
    are those and nothing is split off), or the file's only array. ``.csv``: numeric columns,
    with or without a header row. Values are used as they are (no dequantization:
    ``levels`` is None); ``bounded`` says whether all lie in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise ZooInputError(f"data file '{path}' does not exist; give an existing .npy/.npz/.csv")
    readers = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv}
    if path.suffix.lower() not in readers:
        raise ZooInputError(
            f"'{path.name}' has an unknown extension '{path.suffix}'; give a .npy, .npz or .csv"
        )
    x, x_test, columns = readers[path.suffix.lower()](path)
    x, image_shape = _as_rows(x, path.name, "x")
    _check_finite(x, path.name, "x", image_shape, columns)
    if x_test is None:
        train_rows, test_rows = split_rows(len(x), test_fraction, seed)
        x, x_test = x[train_rows], x[test_rows]
    else:
        x_test, test_shape = _as_rows(x_test, path.name, "x_test", min_rows=1)
        if test_shape != image_shape:
            raise ZooInputError(
                f"'{path.name}': x_test rows have shape {test_shape} but x rows {image_shape};"
                " give both the same shape"
            )
        _check_finite(x_test, path.name, "x_test", image_shape, columns)
    bounded = bool(min(x.min(), x_test.min()) >= 0 and max(x.max(), x_test.max()) <= 1)
    description = f"{len(x) + len(x_test)} rows of {x.shape[1]} values from {path.name}"
    return ImageData(x, x_test, None, None, image_shape, path.stem, description, None, bounded)


def _as_rows(
    array: np.ndarray, source: str, what: str, min_rows: int = MIN_ROWS
) -> tuple[np.ndarray, tuple[int, ...]]:
    """A float64 matrix of rows and the shape one row came from; errors for bad shapes."""
    if array.dtype.kind not in "biuf":
        raise ZooInputError(
            f"'{source}': {what} has non-numeric dtype {array.dtype}; save numbers only"
        )
    if array.ndim not in (2, 3):
        raise ZooInputError(
            f"'{source}': {what} is a {array.ndim}-D array of shape {array.shape}; give a 2-D"
            " array (rows x values) or 3-D images (N, H, W)"
        )
    if len(array) < min_rows:
        raise ZooInputError(
            f"'{source}': {what} has {len(array)} row(s); give at least {min_rows} rows"
        )
    shape = tuple(int(s) for s in array.shape[1:])
    return array.reshape(len(array), -1).astype(np.float64), shape


def _check_finite(
    x: np.ndarray, source: str, what: str, shape: tuple[int, ...], columns: list[str] | None
) -> None:
    """Fail naming how many values are NaN or infinite and where the first one is: the data
    row and column of a CSV file, else the 0-based index into the array."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    if columns is not None:
        where = f"data row {row + 1}, column {columns[col]}"
    else:
        where = f"{what}[{', '.join(map(str, (row, *np.unravel_index(col, shape))))}]"
    subject = f"'{source}'" if columns is not None else f"'{source}': {what}"
    raise ZooInputError(
        f"{subject} has {int(bad.sum())} NaN or infinite value(s), the first at"
        f" {where}; drop or impute them first"
    )


def _unreadable(path: Path, kind: str, exc: Exception) -> ZooInputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "pickle" in first:  # numpy reads a file without the array header as a pickle
        first = "not an array of numbers; pickled or object arrays are not read"
    return ZooInputError(f"could not read '{path.name}' as {kind} ({first}); {_SAVE_HINT[kind]}")


_SAVE_HINT = {
    "npy": "save it with numpy.save(path, array) of numbers",
    "npz": "save it with numpy.savez(path, x=array)",
    "csv": "give a comma-separated file of numbers, with or without a header row",
}
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def _read_npy(path: Path) -> tuple[np.ndarray, None, None]:
    try:
        return np.load(path, allow_pickle=False), None, None
    except _READ_ERRORS as exc:
        raise _unreadable(path, "npy", exc) from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except _READ_ERRORS as exc:
        raise _unreadable(path, "npz", exc) from None
    if "x" in arrays:
        return arrays["x"], arrays.get("x_test"), None
    if len(arrays) == 1:
        return next(iter(arrays.values())), None, None
    held = ", ".join(arrays) if arrays else "no arrays"
    raise ZooInputError(
        f"'{path.name}' holds {held} and none is named 'x'; save the rows as x (and held-out"
        " rows as x_test): numpy.savez(path, x=array)"
    )


def _read_csv(path: Path) -> tuple[np.ndarray, None, list[str]]:
    """Numbers of a CSV file and the display names of its columns (header or position)."""
    try:
        frame = pd.read_csv(path, header=None, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _unreadable(path, "csv", exc) from None
    first = frame.iloc[0]
    if (pd.to_numeric(first, errors="coerce").isna() & first.notna()).any():
        names = [f"'{name}'" for name in first.fillna("")]
        frame = frame.iloc[1:].reset_index(drop=True)
    else:
        names = [str(j + 1) for j in range(frame.shape[1])]
    values = np.empty(frame.shape, dtype=np.float64)
    for j, name in enumerate(names):
        column = frame.iloc[:, j]
        numbers = pd.to_numeric(column, errors="coerce")
        bad = np.flatnonzero((numbers.isna() & column.notna()).to_numpy())
        if len(bad):
            raise ZooInputError(
                f"'{path.name}': column {name} has a non-numeric value {column.iloc[bad[0]]!r}"
                f" in data row {bad[0] + 1}; drop that column or encode it as numbers"
            )
        values[:, j] = numbers.to_numpy(dtype=np.float64)
    return values, None, names


# --------------------------------------------------------------------------- outliers


def shift_images(
    x: np.ndarray,
    image_shape: tuple[int, int],
    pixels: int = 2,
    levels: int | None = None,
    *,
    seed: int | np.random.SeedSequence = 0,
) -> np.ndarray:
    """Images moved ``pixels`` right and down; the uncovered top rows and left columns are 0,
    dequantized as ``u / levels`` (``u ~ Uniform(0, 1)``, seeded) when ``levels`` is given."""
    images = np.asarray(x, dtype=float).reshape(len(x), *image_shape)
    fill = np.zeros_like(images)
    if levels is not None:
        fill = np.random.default_rng(seed).random(images.shape) / levels
    fill[:, pixels:, pixels:] = images[:, :-pixels, :-pixels]
    return fill.reshape(len(x), -1)


def out_of_distribution(data: ImageData, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs unlike the data, each with as many rows and columns as ``data.test``.

    ``noise``: uniform on [0, 1] (on [min, max] of the training values for unbounded data);
    ``patches``: natural image patches from the held-out region of the photos
    (:func:`sample_patches`; only for 8x8 images); ``shifted``: the held-out images moved 2
    pixels right and down (:func:`shift_images`; images only); ``inverted``: ``1 - x`` (bounded
    data only). The sets are seeded independently, so one does not change with another.
    Natural patches themselves get noise only: other patches, shifted or inverted ones are
    natural image patches too, not outliers.
    """
    x = data.test
    seeds = np.random.SeedSequence(seed).spawn(3)
    low, high = (0.0, 1.0) if data.bounded else (float(data.train.min()), float(data.train.max()))
    sets = {"noise": np.random.default_rng(seeds[0]).uniform(low, high, size=x.shape)}
    if data.name == "patches":
        return sets
    if tuple(data.image_shape) == (8, 8):
        sets["patches"] = sample_patches(len(x), size=8, region="test", seed=seeds[1]).values
    if len(data.image_shape) == 2 and min(data.image_shape) > 2:
        sets["shifted"] = shift_images(x, data.image_shape, 2, data.levels, seed=seeds[2])
    if data.bounded:
        sets["inverted"] = 1.0 - x
    return sets


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: a one-line description and how to load it: ``load(seed)``, the
    seed of the split or of the sampled positions (``load()`` uses the default seed)."""

    description: str
    load: Callable[..., ImageData]


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "scikit-learn digits: 1797 handwritten 8x8 digits (0-16), dequantized to (0, 1);"
        " 80/20 row split",
        lambda seed=DIGITS_SEED: load_digits(seed=seed),
    ),
    "patches": DatasetSpec(
        "8x8 gray patches of ten photographs (scikit-image, scikit-learn), dequantized;"
        " 20000 from the left 80% of each photo to train, 4000 from the right 20% held out",
        lambda seed=0: load_patches(seed=seed),
    ),
}


def load_dataset(name: str, seed: int = 0) -> ImageData:
    """A built-in data set by name (see :data:`DATASETS`)."""
    return builtin_spec(DATASETS, name, "vae").load(seed)
