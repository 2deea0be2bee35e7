"""Whitened natural image patches for the two-level VAE. Nothing is downloaded.

Each of the photographs scikit-image and scikit-learn ship (:func:`zoo.vae.data.photo_names`,
dequantized gray levels) is whitened whole, as in sparse-coding work (Olshausen and Field
1997): its Fourier transform is multiplied by ``R(f) = |f| exp(-(|f| / f0)^4)``, which
flattens the 1/f amplitude spectrum of natural images (the ``|f|``) and rolls off before
the highest frequencies, where noise and aliasing live (``f0 = 0.4`` cycles per pixel, 0.8
of the Nyquist frequency, as Olshausen and Field's 200 cycles per 512-pixel picture). Each
whitened photo is then scaled to unit variance. (A roll-off at half that frequency left
half the directions of 12x12 patches with a variance below 1e-4: any Gaussian density then
wins by modelling the filter, not the images.) Patches for training come from the left 80%
of every photo and held-out patches from the right 20% (:func:`zoo.vae.data.patch_columns`),
so no pixel is in both. Patches keep their means: removing each patch's mean would leave the
rows on a hyperplane, where no density on all the pixels (PPCA's, a full Gaussian's) is
finite.

References
----------
Olshausen and Field (1997), *Sparse coding with an overcomplete basis set: a strategy
employed by V1?*, Vision Research 37.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from zoo.datasets import builtin_spec
from zoo.errors import ZooInputError
from zoo.vae.data import ImageData, _photos, load_array, patch_columns, photo_names

#: Patch side, and numbers of training and held-out patches, by default.
PATCH_SIZE, NUM_TRAIN, NUM_TEST = 12, 20_000, 2_000
#: The roll-off frequency f0 of the whitening filter, in cycles per pixel.
ROLL_OFF = 0.4


def whiten(image: np.ndarray, roll_off: float = ROLL_OFF) -> np.ndarray:
    """``image`` (H, W) whitened by ``R(f) = |f| exp(-(|f| / f0)^4)``, f0 = ``roll_off``
    cycles per pixel, and scaled to unit variance (its mean is removed)."""
    image = np.asarray(image, dtype=float)
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    f = np.hypot(fy, fx)
    spectrum = np.fft.fft2(image - image.mean()) * (f * np.exp(-((f / roll_off) ** 4)))
    out = np.real(np.fft.ifft2(spectrum))
    return out / out.std()


@functools.lru_cache(maxsize=2)
def whitened_photos(roll_off: float = ROLL_OFF) -> tuple[np.ndarray, ...]:
    """Every photo of :func:`zoo.vae.data.photo_names`, whitened (:func:`whiten`)."""
    return tuple(whiten(p, roll_off) for p in _photos())


def sample_whitened(
    num: int,
    *,
    size: int = PATCH_SIZE,
    region: Literal["train", "test"] = "train",
    seed: int | np.random.SeedSequence = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` whitened patches (num, size * size) from one region of the
    photos, and the index of the photo of each (seeded; a photo is picked uniformly, then a
    position inside its region)."""
    photos = whitened_photos()
    largest = min(min(p.shape[0], p.shape[1] - patch_columns(p.shape[1], 0, "test")[0])
                  for p in photos)  # fmt: skip
    if isinstance(size, bool) or int(size) != size or not 2 <= size <= largest:
        raise ZooInputError(f"patch size must be a whole number from 2 to {largest}, got {size}")
    rng = np.random.default_rng(seed)
    image = rng.integers(len(photos), size=num)
    values = np.empty((num, size, size))
    offsets = np.arange(size)
    for i, photo in enumerate(photos):
        rows = np.flatnonzero(image == i)
        low, high = patch_columns(photo.shape[1], size, region)
        top = rng.integers(0, photo.shape[0] - size + 1, size=len(rows))
        left = rng.integers(low, high + 1, size=len(rows))
        r = top[:, None, None] + offsets[None, :, None]
        c = left[:, None, None] + offsets[None, None, :]
        values[rows] = photo[r, c]
    return values.reshape(num, size * size), image


def load_whitened_patches(
    size: int = PATCH_SIZE, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST, seed: int = 0
) -> ImageData:
    """Whitened patches of the ten photos: training patches from the left 80% of each photo,
    held-out ones from the right 20%; labels are the photo's index (:func:`photo_names`)."""
    train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    train, train_image = sample_whitened(num_train, size=size, region="train", seed=train_seed)
    test, test_image = sample_whitened(num_test, size=size, region="test", seed=test_seed)
    return ImageData(
        train, test, train_image, test_image, (size, size), "whitened_patches",
        f"{size}x{size} patches of {len(photo_names())} photographs whitened (1/f, roll-off at"
        f" {ROLL_OFF} cycles per pixel, unit variance per photo); {num_train}"
        f" from the left 80% of each photo to train, {num_test} from the right 20% held out",
        None, False,
    )  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: a one-line description and ``load(seed)``."""

    description: str
    load: Callable[..., ImageData]


DATASETS: dict[str, DatasetSpec] = {
    "whitened_patches": DatasetSpec(
        f"{PATCH_SIZE}x{PATCH_SIZE} whitened patches (1/f with a roll-off) of ten photographs"
        f" (scikit-image, scikit-learn); {NUM_TRAIN} from the left 80% of"
        f" each photo to train, {NUM_TEST} from the right 20% held out",
        lambda seed=0: load_whitened_patches(seed=seed),
    ),
}


def load_dataset(name: str, seed: int = 0) -> ImageData:
    """A built-in data set by name (see :data:`DATASETS`)."""
    return builtin_spec(DATASETS, name, "two_level_vae").load(seed)


def load_user_patches(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """Your patches: a ``.npy``/``.npz``/``.csv`` array of rows (see
    :func:`zoo.vae.data.load_array`), used as they are (whiten them first)."""
    return load_array(path, test_fraction=test_fraction, seed=seed)
