"""Binding the VAE to data: the posterior a comparison trains and measures."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from zoo.errors import ZooInputError
from zoo.methods import CLOSED_FORM, MethodSpec, declare_methods
from zoo.posterior import LocalLatents, ModelForms, Posterior, bind
from zoo.tensors import to_numpy
from zoo.vae.baselines import baseline_forms
from zoo.vae.data import DATASETS, ImageData, load_array
from zoo.vae.model import HIDDEN, LIKELIHOODS, MIN_SCALE, SCALES, Decoder, model

NAME = "vae"
#: The latent dimension by default (PPCA with 8 latents is the classical baseline).
LATENT_DIM = 8
#: Share of the training rows kept out of the fit to stop it early (validation rows).
VALIDATION_FRACTION = 0.1
#: Rows per minibatch, and epochs without a better validation ELBO before stopping.
BATCH_SIZE, PATIENCE = 128, 50
#: Epochs over which the KL's weight ramps from 0 to beta (KL warm-up). On digits (seed 0,
#: one run each) the full-covariance encoder's VAE held out 36.1 nats per image without it,
#: 49.3 with it, 53.0 with it and a patience of 50 epochs instead of 20.
WARMUP_EPOCHS = 20
#: Held-out rows on which the inference gaps are measured (per-row fits on each).
GAP_ROWS = 200


def training_methods(encoder_hidden: Sequence[int], num_rows: int) -> tuple[MethodSpec, ...]:
    """The training variants of one comparison (each trains its own decoder) on
    ``num_rows`` fitted rows, the classical baselines first: PPCA by maximum likelihood with
    the same latent dimension (``ml``) and a full-covariance Gaussian (``ml_gaussian``)."""
    warmup = {"kl_warmup": WARMUP_EPOCHS * -(-num_rows // BATCH_SIZE)}
    common = {
        "global_guide": None,
        "hidden": tuple(encoder_hidden),
        "batch_size": BATCH_SIZE,
        "patience": PATIENCE,
        # One single-draw estimate of the validation ELBO is too noisy to stop on: a lucky
        # epoch set the best and stopped a fit 2 nats short; the mean of 8 is steadier.
        "held_out_repeats": 8,
        "num_particles": 1,
        # A minibatch ELBO is noisy: its plateau test looks at windows of about 20 epochs
        # of digits, from about 90 epochs on (a window of 100 steps stopped the standard VAE
        # at 150 epochs, held out 1-2 nats below a longer fit).
        "window": 250,
        "min_steps": 1000,
        # Adam at the zoo's network rate (0.003) trained the standard VAE to a validation
        # ELBO of 48 per row by epoch 120, then collapsed (to 13 by epoch 168); at 0.001 it
        # reached 54.7 without a collapse in the smoke preset's 3000 steps, and the held-out
        # log p(x) rose from 50.3 to 57.3 nats (the full-covariance encoder's 50.4 to 57.9).
        "network_lr": 0.001,
    }
    variant = [
        MethodSpec("amortized", "amortized", {**common, **warmup, "encoder": "mlp"}),
        MethodSpec("amortized_full", "amortized", {**common, **warmup, "encoder": "mlp_full"}),
        MethodSpec(
            "amortized_iwae",
            "amortized",
            {**common, "encoder": "mlp", "objective": "iwae", "num_particles": 8},
        ),
        MethodSpec(
            "amortized_autoencoder", "amortized", {**common, **warmup, "encoder": "mlp_delta"}
        ),
    ]
    variant += [
        MethodSpec(
            f"amortized_beta{beta:g}",
            "amortized",
            {**common, **warmup, "encoder": "mlp", "beta": beta},
            default=False,
        )
        for beta in (0.25, 0.5, 2.0, 4.0)
    ]
    variant.append(MethodSpec("ml_gaussian", CLOSED_FORM, {"form": "gaussian"}))
    return declare_methods(("ml",), (), nuts=False, variants=variant)


def make_posterior(
    data: str | Path | ImageData = "digits",
    *,
    latent_dim: int = LATENT_DIM,
    hidden: Sequence[int] = HIDDEN,
    encoder_hidden: Sequence[int] | None = None,
    likelihood: str = "gaussian",
    scale: str = "pixel",
    min_scale: float = MIN_SCALE,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Posterior:
    """Bind the VAE to image data: the posterior a comparison trains and measures.

    Parameters
    ----------
    data : str, Path or ImageData
        A built-in set (``digits``, ``patches``: :data:`zoo.vae.data.DATASETS`), a
        ``.npy``/``.npz``/``.csv`` file, or an :class:`~zoo.vae.data.ImageData`.
    latent_dim : int
        K, the size of z.
    hidden, encoder_hidden : sequence of int
        Hidden layer widths of the decoder (``()``: a linear decoder) and of the encoders
        (default: the decoder's, at least one layer).
    likelihood, scale, min_scale
        p(x | z): a key of :data:`~zoo.vae.model.LIKELIHOODS`; for the Gaussian, one scale
        per pixel or one ``shared``, floored at ``min_scale``.
    test_fraction, seed
        The held-out share of a user file (built-in sets have their own fixed split); the
        seed of that split and of the decoder's first weights.
    dtype, device
        Of every tensor and network. float32 by default, as networks are trained (the other
        models' default is float64): on 2 cores it trains and measures about 1.6 times as
        fast, and the numbers reported do not need more digits than it keeps (log weights
        are summed in float64).
    """
    images = _images(data, test_fraction, seed)
    _check_options(images, latent_dim, likelihood, scale, min_scale)
    fit_rows, validation = validation_split(images.train, seed)
    as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    x, x_valid, x_test = as_tensor(fit_rows), as_tensor(validation), as_tensor(images.test)
    encoder_hidden = tuple(encoder_hidden if encoder_hidden is not None else hidden or (256,))
    decoder_options = {
        "latent_dim": int(latent_dim),
        "data_dim": x.shape[1],
        "hidden": tuple(hidden),
        "likelihood": likelihood,
        "scale": scale,
        "min_scale": min_scale,
        "data_mean": x.mean(0),
        "data_sd": float(x.std()),
        "dtype": dtype,
        "device": device,
    }
    build_forms = functools.partial(_forms, decoder_options=decoder_options)
    from zoo.vae.evaluate import evaluate

    return Posterior(
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
        methods=training_methods(encoder_hidden, len(fit_rows)),
        closed_forms=baseline_forms(fit_rows, images.test, int(latent_dim)),
        description=_description(images, decoder_options, encoder_hidden, len(validation)),
        evaluate=functools.partial(evaluate, images=images),
        follow_ups=functools.partial(_follow_ups, x_test=x_test, dataset=images.name),
    )


def _forms(seed: int, *, decoder_options: dict) -> ModelForms:
    """The model with a fresh decoder whose first weights come from ``seed`` (the process's
    random streams left as they were)."""
    device = torch.device(decoder_options["device"])
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        decoder = Decoder(**decoder_options)
    local = bind(model, decoder=decoder)
    return ModelForms(local=local, locals=(LocalLatents("z", decoder.latent_dim, "x"),))


#: The method whose trained decoder the per-row posterior p(z | x) is studied under.
STANDARD = "amortized"


def _follow_ups(runs, *, x_test: torch.Tensor, dataset: str) -> dict[str, Posterior]:
    """p(z | x, decoder) of the first :data:`~zoo.vae.conditional.NUTS_ROWS` test rows under
    the standard VAE's trained decoder (in float64, as NUTS needs), where NUTS is the
    reference (none if that VAE did not run)."""
    from zoo.vae.conditional import NUTS_ROWS, conditional_posterior
    from zoo.vae.evaluate import trained

    run = runs.get(STANDARD)
    x = x_test[:NUTS_ROWS].to(torch.float64)
    nets = None if run is None or run.error is not None else trained(run, x)
    if nets is None:
        return {}
    name = f"{dataset}: p(z | x) of test rows 0-{len(x) - 1} under the decoder {STANDARD} trained"
    return {"posterior_z": conditional_posterior(nets.decoder, nets.encoder, x, dataset=name)}


def _images(data, test_fraction: float, seed: int) -> ImageData:
    if isinstance(data, ImageData):
        return data
    if isinstance(data, str) and data in DATASETS:
        return DATASETS[data].load()  # a fixed split, whatever the seed
    if isinstance(data, str | Path) and Path(data).suffix:
        return load_array(data, test_fraction=test_fraction, seed=seed)
    raise ZooInputError(
        f"unknown data '{data}' for vae; give a built-in set ({', '.join(DATASETS)}) or a"
        " .npy/.npz/.csv file"
    )


def _check_options(images: ImageData, latent_dim, likelihood, scale, min_scale) -> None:
    if likelihood not in LIKELIHOODS:
        raise ZooInputError(
            f"unknown likelihood '{likelihood}'; choose one of: {', '.join(LIKELIHOODS)}"
        )
    if scale not in SCALES:
        raise ZooInputError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
    if likelihood != "gaussian" and not images.bounded:
        raise ZooInputError(
            f"the {likelihood} likelihood needs values in [0, 1]; these data are not: rescale"
            " them or use --likelihood gaussian"
        )
    if not isinstance(latent_dim, int | np.integer) or latent_dim < 1:
        raise ZooInputError(f"--latent-dim must be a whole number >= 1, got {latent_dim}")
    if len(images.test) < 2:
        raise ZooInputError(
            "the VAE is measured on held-out rows and these data hold out none: give a test"
            " share (--test-fraction 0.2) or an x_test array in the .npz"
        )
    if not min_scale > 0:
        raise ZooInputError(f"min_scale must be > 0, got {min_scale}")


def validation_split(train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows fitted and the validation rows that stop the fit early (a seeded
    :data:`VALIDATION_FRACTION` of the training rows; the test rows are never seen)."""
    order = np.random.default_rng(seed).permutation(len(train))
    cut = max(1, int(round(VALIDATION_FRACTION * len(train))))
    return train[np.sort(order[cut:])], train[np.sort(order[:cut])]


def _description(images: ImageData, decoder: dict, encoder_hidden, validation: int) -> dict:
    hidden = decoder["hidden"]
    net = "linear" if not hidden else "perceptron " + "-".join(map(str, hidden))
    return {
        "data": images.description,
        "model": f"z ~ N(0, I_{decoder['latent_dim']}); x | z ~ {decoder['likelihood']}"
        f" likelihood from a {net} decoder",
        "encoders": "perceptron " + "-".join(map(str, encoder_hidden)),
        "split": f"{validation} of the training rows stop the fit early; the test rows are"
        " measured only",
        "image_shape": "x".join(map(str, images.image_shape)),
    }


#: Rows per replication of ``zoo calibrate vae``: their latents are what is ranked.
CALIBRATION_ROWS = 10

#: What a replication of :func:`simulated_posterior` simulates, for the calibration page.
SIMULATION_DESIGN = (
    "the latents z of {num_data} rows drawn from N(0, I) and their images from the decoder"
    " that the standard VAE (amortized) trained on {dataset}; the posterior is p(z | x) with"
    " that decoder fixed"
)


def simulated_posterior(
    data: str | Path,
    replication_seed: int,
    *,
    seed: int = 0,
    rows: int = CALIBRATION_ROWS,
    training: str = "smoke",
    **options,
) -> tuple[dict[str, np.ndarray], Posterior]:
    """One replication of simulation-based calibration of p(z | x, decoder): the latents of
    ``rows`` rows drawn from the prior N(0, I) (seeded ``replication_seed``), their images
    drawn from the decoder, and the posterior of the latents given those images with the
    decoder fixed (:func:`~zoo.vae.conditional.conditional_posterior`: NUTS, the per-row
    guides, the trained encoder's q(z | x) as ``amortized`` and importance resampling from it
    as ``amortized_is``).

    The decoder and the encoder are those the standard VAE (``amortized``) trains on
    ``data`` under the ``training`` preset with ``seed`` and ``options`` (those of
    :func:`make_posterior`), trained once per process and kept for every replication it runs
    (:func:`trained_networks`). A replication is valid whichever decoder it had, since its
    truth and its posterior share it. Returns the truth ``{"z": (rows, K)}`` and the
    Posterior.
    """
    from zoo.vae.conditional import conditional_posterior

    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ZooInputError(f"rows must be a whole number >= 1, got {rows!r}")
    nets = trained_networks(data, seed=seed, training=training, **options)
    k = nets.decoder.latent_dim
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(replication_seed)
        z = torch.randn(rows, k, dtype=torch.float64)
        x = nets.decoder(z).sample()
    post = conditional_posterior(nets.decoder, nets.encoder, x, dataset=nets.dataset)
    return {"z": to_numpy(z)}, post


def simulation_design(
    data: str | Path | ImageData,
    *,
    seed: int = 0,
    rows: int = CALIBRATION_ROWS,
    training: str = "smoke",
    **options,
) -> Posterior:
    """What :func:`simulated_posterior` returns but for the draws, without training: the
    posterior's methods, sites and data set, for checking a calibration's options and
    naming its methods before any worker trains (the networks untrained, the images 0)."""
    from zoo.vae.conditional import conditional_posterior

    post = make_posterior(data, seed=seed, **options)
    decoder = post.forms.local.keywords["decoder"].to(torch.float64)
    x = torch.zeros(rows, post.data["x"].shape[1], dtype=torch.float64)
    return conditional_posterior(decoder, None, x, dataset=post.dataset)


class _Networks(NamedTuple):
    decoder: torch.nn.Module
    encoder: torch.nn.Module
    dataset: str


@functools.lru_cache(maxsize=2)
def _trained(data: str, content: str, seed: int, training: str, options: tuple):
    """The networks, or the error of a training that failed (kept, so that a worker does not
    train again for every replication only to fail again); ``content`` keys a file's
    bytes, so that a file changed between two calibrations is trained on anew."""
    from comparisons.runners import PRESETS, run_method
    from zoo.vae.evaluate import trained

    post = make_posterior(data, seed=seed, **dict(options))
    method = next(m for m in post.methods if m.name == STANDARD)
    run = run_method(post, method, seed=seed, preset=PRESETS[training])
    if run.error is not None:
        return f"training the VAE to calibrate failed: {run.error}"
    x = post.test_data["x"][:1].to(torch.float64)
    nets = trained(run, x)
    return _Networks(nets.decoder, nets.encoder, post.dataset)


def trained_networks(data, *, seed: int = 0, training: str = "smoke", **options) -> _Networks:
    """The float64 decoder and encoder of the standard VAE (``amortized``) trained on
    ``data`` with ``seed`` under the preset ``training``: trained on the first call in a
    process and kept for the next calls with the same arguments and, for a file, the same
    bytes. Training with one thread on one machine gives the same networks in every
    process."""
    from comparisons.runners import PRESETS

    if training not in PRESETS:
        raise ZooInputError(
            f"unknown training preset '{training}'; choose one of: {', '.join(PRESETS)}"
        )
    if not isinstance(data, str | Path):
        raise ZooInputError(
            "calibration trains the VAE on a built-in data set or a file: give its name or path"
        )
    content = ""
    if isinstance(data, Path) or data not in DATASETS:
        import hashlib

        content = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    nets = _trained(str(data), content, seed, training, key)
    if isinstance(nets, str):
        raise RuntimeError(nets)
    return nets
