"""Binding the two-level VAE to patches: the posterior a comparison trains and measures."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ZooInputError
from zoo.methods import CLOSED_FORM, MethodSpec, declare_methods
from zoo.posterior import LocalLatents, ModelForms, Posterior, bind
from zoo.two_level_vae.data import DATASETS, load_user_patches
from zoo.two_level_vae.gold import GOLD_ROWS
from zoo.two_level_vae.model import HIDDEN, MIN_SCALE, TwoLevelDecoder, model
from zoo.vae.baselines import baseline_forms
from zoo.vae.data import ImageData
from zoo.vae.posterior import validation_split

NAME = "two_level_vae"
#: V2 units by default (V1 has one unit per pixel unless asked for more).
V2_UNITS = 16
#: Hidden widths of the guides' perceptrons by default.
ENCODER_HIDDEN = (256,)
#: Rows per minibatch; epochs without a better validation ELBO before stopping; epochs of
#: KL warm-up (hierarchical VAEs collapse the upper layer without one).
BATCH_SIZE, PATIENCE, WARMUP_EPOCHS = 128, 20, 5


def training_methods(
    encoder_hidden: Sequence[int], num_rows: int, one_level=None
) -> tuple[MethodSpec, ...]:
    """The comparison's methods: PPCA (``ml``) and a full Gaussian (``ml_gaussian``) by
    maximum likelihood; the two-level model trained with each order of encoders
    (``amortized_chain``, ``amortized_top_down``); the one-layer sparse VAE
    (``amortized_sparse``: Laplace prior, linear decoder, an ``mlp`` encoder) where
    ``one_level`` builds its model."""
    per_epoch = -(-num_rows // BATCH_SIZE)
    common = {
        "hidden": tuple(encoder_hidden),
        "batch_size": BATCH_SIZE,
        "patience": PATIENCE,
        "held_out_repeats": 4,
        "num_particles": 1,
        "window": 4 * per_epoch,
        "min_steps": 8 * per_epoch,
        "network_lr": 0.001,
        "kl_warmup": WARMUP_EPOCHS * per_epoch,
        "global_guide": None,
    }
    variants = [
        MethodSpec("amortized_chain", "amortized", {**common, "encoder": "chain"}),
        MethodSpec("amortized_top_down", "amortized", {**common, "encoder": "top_down"}),
    ]
    if one_level is not None:
        variants.append(
            MethodSpec(
                "amortized_sparse",
                "amortized",
                {**common, "encoder": "mlp"},
                build_forms=one_level,
            )
        )
    variants.append(MethodSpec("ml_gaussian", CLOSED_FORM, {"form": "gaussian"}))
    return declare_methods(("ml",), (), nuts=False, variants=variants)


def make_posterior(
    data: str | Path | ImageData = "whitened_patches",
    *,
    latent_dim: int = V2_UNITS,
    v1_units: int | None = None,
    hidden: Sequence[int] = HIDDEN,
    encoder_hidden: Sequence[int] = ENCODER_HIDDEN,
    sigma: float | None = None,
    prior_loc: bool = False,
    ppca_dim: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    gold: str | None = "smoke",
) -> Posterior:
    """Bind the two-level VAE to patches.

    Parameters
    ----------
    data : str, Path or ImageData
        ``whitened_patches`` (:data:`zoo.two_level_vae.data.DATASETS`), a
        ``.npy``/``.npz``/``.csv`` file of rows (whitened already), or an ``ImageData``.
    latent_dim : int
        K2, the units of V2 (the top latent z2; ``--latent-dim``).
    v1_units : int, optional
        K1, the units of V1 (default: one per pixel; at least as many as pixels).
    hidden, encoder_hidden : sequence of int
        Widths of the perceptron from z2 to V1's scales, and of the guides' perceptrons.
    sigma : float, optional
        The noise sd of p(x | z1); None: learned.
    prior_loc : bool
        V2 sets V1's locations as well as its scales.
    ppca_dim : int, optional
        K of the PPCA baseline (default: half the pixels).
    test_fraction, seed, dtype, device
        As for :func:`zoo.vae.make_posterior`.
    gold : {"smoke", "full"} or None
        How long NUTS samples p(z1, z2 | x) of the first held-out rows under each trained
        two-level decoder, the gold standard the guides are judged against
        (:data:`zoo.two_level_vae.gold.GOLD_ROWS` and ``GOLD_DRAWS``; the command line
        passes its preset); None: no NUTS.
    """
    images = _images(data, test_fraction, seed)
    pixels = images.train.shape[1]
    v1_units = pixels if v1_units is None else v1_units
    _check(images, v1_units, latent_dim, sigma, ppca_dim)
    if gold is not None and gold not in GOLD_ROWS:
        raise ZooInputError(
            f"unknown gold '{gold}'; choose one of: {', '.join(GOLD_ROWS)}, or None for no NUTS"
        )
    fit_rows, validation = validation_split(images.train, seed)
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    x, x_valid, x_test = as_tensor(fit_rows), as_tensor(validation), as_tensor(images.test)
    options = {
        "data_dim": pixels, "v1_units": int(v1_units), "v2_units": int(latent_dim),
        "hidden": tuple(hidden), "sigma": sigma, "prior_loc": prior_loc,
        "start_scale": _start_scale(fit_rows, v1_units), "dtype": dtype, "device": device,
    }  # fmt: skip
    build_forms = functools.partial(_forms, options=options)
    one_level = functools.partial(_forms, options={**options, "v2_units": 0})
    from zoo.two_level_vae.evaluate import evaluate

    post = Posterior(
        model_name=NAME,
        dataset=images.name,
        forms=build_forms(seed),
        build_forms=build_forms,
        data={"x": x},
        test_data={"x": x_test},
        validation_data={"x": x_valid},
        obs_site="x",
        sites=(),
        dims={},
        coords={},
        methods=training_methods(encoder_hidden, len(fit_rows), one_level),
        closed_forms=baseline_forms(fit_rows, images.test, ppca_dim or pixels // 2),
        description=_description(images, options, encoder_hidden, len(validation)),
        evaluate=functools.partial(evaluate, images=images, gold=gold),
    )
    refit = functools.partial(_refits, base=post)
    return dataclasses.replace(post, follow_ups=refit)


#: The two-level methods whose trained decoders each guide order is refitted on.
TRAINED = {"chain": "amortized_chain", "top_down": "amortized_top_down"}


def _frozen_forms(seed: int, *, decoder: TwoLevelDecoder) -> ModelForms:
    """The two-level model with ``decoder`` fixed (its parameters constants)."""
    local = bind(model, decoder=decoder, fixed=True)
    upper = LocalLatents("z2", decoder.v2_units, "x")
    return ModelForms(local=local, locals=(upper, LocalLatents("z1", decoder.v1_units, "x",
                                                               parent="z2")))  # fmt: skip


def _refits(runs, *, base: Posterior) -> dict[str, Posterior]:
    """To separate learning from inference: each guide order fitted afresh on each trained
    decoder, frozen (``amortized_<order>_on_<decoder's order>``); none unless both trained."""
    decoders = {}
    for order, name in TRAINED.items():
        run = runs.get(name)
        if run is None or run.error is not None or run.fitted is None:
            return {}
        decoder = copy.deepcopy(run.fitted.model.keywords["decoder"]).requires_grad_(False)
        decoders[order] = decoder
    train = next(m for m in base.methods if m.name == TRAINED["chain"]).options
    methods = tuple(
        MethodSpec(
            f"amortized_{order}_on_{trained}",
            "amortized",
            {**train, "encoder": order},
            build_forms=functools.partial(_frozen_forms, decoder=decoder),
        )
        for order in TRAINED
        for trained, decoder in decoders.items()
    )
    return {
        "refit": dataclasses.replace(
            base,
            dataset=f"{base.dataset} (each guide order refitted on each trained decoder, frozen)",
            methods=methods,
            closed_forms={},
            follow_ups=None,
        )
    }


def _start_scale(rows: np.ndarray, v1_units: int) -> float:
    """V1's first Laplace scale b: with Phi's entries of variance 1 / K1, each pixel's
    variance is about 2 b^2 (a Laplace unit's variance), so b = sd(x) / sqrt(2) starts
    the model at the data's scale."""
    return max(float(rows.std()) / np.sqrt(2.0), 10 * MIN_SCALE)


def _forms(seed: int, *, options: dict) -> ModelForms:
    """The model with fresh parameters from ``seed`` (the random streams left as they were)."""
    device = torch.device(options["device"])
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        decoder = TwoLevelDecoder(**options)
    local = bind(model, decoder=decoder)
    lower = LocalLatents("z1", decoder.v1_units, "x", parent="z2" if decoder.v2_units else None)
    if not decoder.v2_units:
        return ModelForms(local=local, locals=(lower,))
    return ModelForms(local=local, locals=(LocalLatents("z2", decoder.v2_units, "x"), lower))


def _images(data, test_fraction: float, seed: int) -> ImageData:
    if isinstance(data, ImageData):
        return data
    if isinstance(data, str) and data in DATASETS:
        return DATASETS[data].load()
    if isinstance(data, str | Path) and Path(data).suffix:
        return load_user_patches(data, test_fraction=test_fraction, seed=seed)
    raise ZooInputError(
        f"unknown data '{data}' for two_level_vae; give a built-in set ({', '.join(DATASETS)})"
        " or a .npy/.npz/.csv file of patches"
    )


def _check(images: ImageData, v1_units, v2_units, sigma, ppca_dim) -> None:
    pixels = images.train.shape[1]
    if not isinstance(v1_units, int | np.integer) or v1_units < pixels:
        raise ZooInputError(
            f"--v1-units must be a whole number at least the number of pixels ({pixels}), got"
            f" {v1_units}: give {pixels} or more"
        )
    if not isinstance(v2_units, int | np.integer) or v2_units < 1:
        raise ZooInputError(
            f"--latent-dim (V2's units) must be a whole number >= 1, got {v2_units}"
        )
    if sigma is not None and not sigma > 0:
        raise ZooInputError(f"sigma must be > 0 (or None: learned), got {sigma}")
    if ppca_dim is not None and not 1 <= ppca_dim < pixels:
        raise ZooInputError(f"ppca_dim must be from 1 to {pixels - 1}, got {ppca_dim}")
    if len(images.test) < 2:
        raise ZooInputError(
            "the two-level VAE is measured on held-out rows and these data hold out none:"
            " give a test share (--test-fraction 0.2)"
        )


def _description(images: ImageData, options: dict, encoder_hidden, validation: int) -> dict:
    sigma = "learned" if options["sigma"] is None else f"{options['sigma']:g}"
    return {
        "data": images.description,
        "model": f"z2 ~ N(0, I_{options['v2_units']}) (V2); z1 | z2 ~ Laplace, scale"
        f" {'and location ' if options['prior_loc'] else ''}from a perceptron"
        f" {'-'.join(map(str, options['hidden']))} of z2 ({options['v1_units']} V1 units);"
        f" x | z1 ~ N(Phi z1, sigma^2 I), sigma {sigma}",
        "guides": "chain q(z1 | x) q(z2 | z1) and top-down q(z2 | x) q(z1 | z2, x), diagonal"
        " Gaussians from perceptrons " + "-".join(map(str, encoder_hidden)),
        "split": f"{validation} of the training rows stop the fits early; the test rows are"
        " measured only",
        "image_shape": "x".join(map(str, images.image_shape)),
    }
