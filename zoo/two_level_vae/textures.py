"""Natural textures against spectrally matched noise: do the model's layers tell them apart?

V2 neurons of macaques respond more to natural textures than to noise with the same Fourier
amplitude spectrum (phase-scrambled copies), while V1 neurons respond to both alike (Freeman
et al. 2013); and the family of a texture is decoded better from V2's responses than from
V1's (Ziemba et al. 2016). The same two questions are asked here of a trained model's
posterior means: the modulation index of each unit of each layer (:func:`modulation_index`)
and the cross-validated accuracy of decoding the family (:func:`decode`), by
:func:`texture_study`.

The textures are four gray images scikit-image ships (nothing is downloaded):
:data:`TEXTURES`. Brick, grass and gravel are also training photos
(:func:`zoo.vae.data.photo_names`), so their texture patches come only from each photo's
held-out right 20% (the ``"test"`` region of :func:`zoo.vae.data.patch_columns`): no texture
pixel was seen in training. Moon is not a training photo, and all of it is used. Each texture
is whitened as the photos are (:func:`zoo.two_level_vae.data.whiten`, the whole photo, so the
held-out pixels are those of the held-out patches), its region is scaled to unit variance,
and a phase-scrambled copy of that whitened region (:func:`phase_scramble`) has exactly its
Fourier amplitude. Patches are cut at the same seeded positions from both.

References
----------
Freeman, Ziemba, Heeger, Simoncelli and Movshon (2013), *A functional and perceptual
signature of the second visual area in primates*, Nature Neuroscience 16.

Ziemba, Freeman, Movshon and Simoncelli (2016), *Selectivity and tolerance for visual texture
in macaque V2*, PNAS 113.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from zoo.errors import ZooInputError
from zoo.two_level_vae.data import PATCH_SIZE, whiten, whitened_photos
from zoo.vae.data import (
    NOISE_SEED,
    PATCH_LEVELS,
    _gray_levels,
    dequantize,
    patch_columns,
    photo_names,
)

#: The texture families, in label order (scikit-image's images of these names).
TEXTURES = ("brick", "grass", "gravel", "moon")
#: Patches per texture, by default.
NUM_PER_TEXTURE = 250
#: A unit is active when the variance over natural texture patches of its posterior mean
#: exceeds this (the threshold of :data:`zoo.two_level_vae.evaluate.ACTIVE`, kept here so
#: that module can import this one).
ACTIVE = 0.01
#: Folds of the cross-validated decoding.
FOLDS = 5

#: A block of patches (rows, D) -> each latent layer's posterior means by site, (rows, K).
PosteriorMeans = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class TexturePatches:
    """Patches of the textures and of their phase-scrambled copies.

    ``natural`` and ``scrambled`` are (n, size * size), row i of both cut at the same
    position; ``labels`` (n,) is each row's index in ``names``; ``row`` and ``col`` (n,) are
    the top-left pixel of each patch in the whole source image (for brick, grass and gravel
    the photo, of which only the held-out columns are used).
    """

    natural: np.ndarray
    scrambled: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    row: np.ndarray
    col: np.ndarray


def phase_scramble(image: np.ndarray, seed: int | np.random.SeedSequence = 0) -> np.ndarray:
    """``image`` (H, W) with its Fourier phases replaced by random ones, amplitudes kept.

    The image's FFT is multiplied by ``exp(i * angle(FFT(noise)))`` for real white noise of
    the same shape: the noise's phases are odd under ``f -> -f``, so the product stays
    Hermitian and its inverse transform is real (the imaginary part dropped is rounding
    error), with exactly the image's amplitude spectrum. The zero frequency keeps its phase,
    so the mean is kept too; the result is scaled to unit variance (a no-op, up to rounding,
    for an image of unit variance).
    """
    image = np.asarray(image, dtype=float)
    noise = np.random.default_rng(seed).standard_normal(image.shape)
    phase = np.angle(np.fft.fft2(noise))
    phase[0, 0] = 0.0
    out = np.real(np.fft.ifft2(np.fft.fft2(image) * np.exp(1j * phase)))
    return out / out.std()


@functools.lru_cache(maxsize=1)
def whitened_textures() -> tuple[tuple[np.ndarray, int], ...]:
    """Per texture of :data:`TEXTURES`: its whitened region scaled to unit variance, and the
    column of the source image where that region starts (the held-out region of a training
    photo; all of moon)."""
    out = []
    photos = photo_names()
    for name in TEXTURES:
        if name in photos:
            image = whitened_photos()[photos.index(name)]
            start = patch_columns(image.shape[1], 0, "test")[0]
        else:
            import skimage.data

            seed = NOISE_SEED + 1 + len(photos) + TEXTURES.index(name)  # not a photo's seed
            gray = dequantize(_gray_levels(getattr(skimage.data, name)()), PATCH_LEVELS, seed)
            image, start = whiten(gray), 0
        region = image[:, start:]
        out.append((region / region.std(), start))
    return tuple(out)


def texture_patches(
    num_per_texture: int = NUM_PER_TEXTURE, size: int = PATCH_SIZE, seed: int = 0
) -> TexturePatches:
    """``num_per_texture`` patches of ``size`` x ``size`` of every texture and of its
    phase-scrambled copy, at the same positions (seeded: the scrambles and the positions)."""
    textures = whitened_textures()
    largest = min(min(region.shape) for region, _ in textures)
    if isinstance(size, bool) or int(size) != size or not 2 <= size <= largest:
        raise ZooInputError(f"patch size must be a whole number from 2 to {largest}, got {size}")
    if isinstance(num_per_texture, bool) or int(num_per_texture) != num_per_texture:
        raise ZooInputError(f"num_per_texture must be a whole number, got {num_per_texture}")
    if num_per_texture < 1:
        raise ZooInputError(f"num_per_texture must be at least 1, got {num_per_texture}")
    num, size = int(num_per_texture), int(size)
    offsets = np.arange(size)
    natural, scrambled, rows, cols = [], [], [], []
    for (region, start), child in zip(textures, np.random.SeedSequence(seed).spawn(len(textures))):
        scramble_seed, position_seed = child.spawn(2)
        noise = phase_scramble(region, scramble_seed)
        rng = np.random.default_rng(position_seed)
        top = rng.integers(0, region.shape[0] - size + 1, size=num)
        left = rng.integers(0, region.shape[1] - size + 1, size=num)
        r = top[:, None, None] + offsets[None, :, None]
        c = left[:, None, None] + offsets[None, None, :]
        natural.append(region[r, c].reshape(num, size * size))
        scrambled.append(noise[r, c].reshape(num, size * size))
        rows.append(top)
        cols.append(left + start)
    return TexturePatches(
        np.concatenate(natural),
        np.concatenate(scrambled),
        np.repeat(np.arange(len(TEXTURES)), num),
        TEXTURES,
        np.concatenate(rows),
        np.concatenate(cols),
    )


def modulation_index(
    natural_means: np.ndarray, scrambled_means: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Per texture family and unit, ``MI = (r_nat - r_scr) / (r_nat + r_scr)``, (families,
    units), in [-1, 1]; NaN where both responses are 0.

    ``r`` is the root-mean-square over the family's patches of the unit's posterior mean
    (natural_means and scrambled_means are (n, units), row i of both at the same position).
    RMS about 0, the prior's centre, rather than a mean: a unit may respond to a texture by
    shifting its mean or by varying more from patch to patch (``RMS^2 = mean^2 + variance``),
    and a signed code such as V1's has a mean response near 0 to either stimulus. MI > 0:
    the unit responds more to the natural texture than to its spectrally matched noise.
    """
    natural_means, scrambled_means = np.asarray(natural_means), np.asarray(scrambled_means)
    labels = np.asarray(labels)
    families = np.unique(labels)
    rms = lambda m: np.sqrt(np.stack([np.mean(m[labels == f] ** 2, axis=0) for f in families]))  # noqa: E731
    r_nat, r_scr = rms(natural_means), rms(scrambled_means)
    total = r_nat + r_scr
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (r_nat - r_scr) / np.where(total > 0, total, 1.0), np.nan)


def decode(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    folds: int = FOLDS,
    components: int | None = None,
) -> tuple[float, float]:
    """Cross-validated accuracy of predicting ``labels`` from ``features`` (n, F): its mean
    and standard deviation over ``folds`` stratified, shuffled folds (seeded).

    The classifier is a multinomial logistic regression (L2, C = 1) on standardized
    features; with ``components``, the features are first projected on their first
    ``components`` principal components, fitted inside each training fold (a pipeline), so
    that layers of different widths can be compared on as many dimensions. BLAS runs on one
    thread here (these fits are small).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    steps = [] if components is None else [PCA(components, random_state=seed)]
    steps += [StandardScaler(), LogisticRegression(max_iter=2000)]
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with threadpool_limits(1):  # small fits: two BLAS threads ran 3-6x slower on 2 busy cores
        scores = cross_val_score(make_pipeline(*steps), np.asarray(features), labels, cv=split)
    return float(np.mean(scores)), float(np.std(scores))


def _unit_mi(mi: np.ndarray) -> np.ndarray:
    """Each unit's MI averaged over families (NaN families skipped; NaN if all are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit silent in every family
        return np.nanmean(mi, axis=0)


def texture_study(
    posterior_means: PosteriorMeans,
    *,
    num_per_texture: int = NUM_PER_TEXTURE,
    size: int = PATCH_SIZE,
    seed: int = 0,
) -> dict:
    """Modulation indices and texture decoding of every latent layer of a model.

    ``posterior_means(x)`` maps patches (rows, size * size) to each layer's posterior means
    by site (``"z1"`` (rows, K1), and ``"z2"`` (rows, K2) for a model with V2). Returns
    ``{"diagnostics": ..., "arrays": ...}`` as :mod:`zoo.two_level_vae.evaluate` does. Per
    site ``s``:

    - ``texture_mi_<s>``: the median over active units (variance of the mean over natural
      patches above :data:`ACTIVE`) of each unit's MI averaged over families;
      ``texture_mi_<s>_positive``: the share of active units whose average MI is above 0;
      ``texture_active_<s>``: how many units are active;
    - ``texture_decoding_<s>`` (and ``_sd`` over folds): the accuracy of decoding the
      family from the layer's means of the natural patches (:func:`decode`).

    Also ``texture_decoding_pixels`` (from the whitened pixels, a reference),
    ``texture_chance`` (1 / families) and ``texture_patches`` (per texture). With V2,
    ``texture_decoding_z1_pca`` decodes from z1's means on their first K2 principal
    components: a classifier on 144 features can fit more than one on 16, so z1 against z2
    is not like for like; on K2 components each has as many dimensions, and V2 decoding
    better than z1's best K2-dimensional linear summary says more than V2 beating all of z1.

    Arrays: ``texture_mi_<s>`` (MI per family and unit, dims ``("texture", "<s>_unit")``)
    and ``texture_variance_<s>`` (each unit's variance over natural patches,
    ``("<s>_unit",)``).
    """
    patches = texture_patches(num_per_texture, size, seed)
    natural, scrambled = posterior_means(patches.natural), posterior_means(patches.scrambled)
    labels = patches.labels
    diagnostics: dict[str, float | int] = {
        "texture_patches": int(num_per_texture),
        "texture_chance": 1.0 / len(patches.names),
    }
    arrays: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    accuracy = {"pixels": decode(patches.natural, labels, seed=seed)}
    for site, means in natural.items():
        means = np.asarray(means, dtype=float)
        mi = modulation_index(means, np.asarray(scrambled[site], dtype=float), labels)
        variance = means.var(axis=0)
        active = _unit_mi(mi)[variance > ACTIVE]
        active = active[np.isfinite(active)]
        diagnostics[f"texture_mi_{site}"] = float(np.median(active)) if active.size else np.nan
        diagnostics[f"texture_mi_{site}_positive"] = (
            float(np.mean(active > 0)) if active.size else np.nan
        )
        diagnostics[f"texture_active_{site}"] = int(np.sum(variance > ACTIVE))
        accuracy[site] = decode(means, labels, seed=seed)
        arrays[f"texture_mi_{site}"] = (mi, ("texture", f"{site}_unit"))
        arrays[f"texture_variance_{site}"] = (variance, (f"{site}_unit",))
    if "z1" in natural and "z2" in natural:
        k2 = int(np.shape(natural["z2"])[1])
        accuracy["z1_pca"] = decode(natural["z1"], labels, seed=seed, components=k2)
    for name, (mean, sd) in accuracy.items():
        diagnostics[f"texture_decoding_{name}"] = mean
        diagnostics[f"texture_decoding_{name}_sd"] = sd
    return {"diagnostics": diagnostics, "arrays": arrays}
