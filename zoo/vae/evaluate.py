"""What a comparison measures of each trained VAE, on the held-out rows: log p(x) by
importance weighting, the ELBO and its terms, active units, the inference gaps and how well
log p(x) and the KL tell held-out images from inputs unlike them (outlier detection)."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from guides.encoders import ENCODERS
from zoo.tensors import to_numpy
from zoo.vae.baselines import bits_per_dim
from zoo.vae.bounds import (
    IW_SAMPLES,
    KHAT_BAD,
    defensive,
    elbo_parts,
    from_encoder,
    log_evidence,
    widened,
)
from zoo.vae.data import ImageData, out_of_distribution
from zoo.vae.gaps import inference_gaps

#: A unit is active when the variance over x of its posterior mean exceeds this (Burda et
#: al. 2016).
ACTIVE = 0.01
#: Held-out rows whose gaps are measured (a per-row fit each), and samples per row of the
#: outlier scores (a ranking needs fewer than the reported log p(x)).
GAP_ROWS, OUTLIER_SAMPLES = 200, 500
#: Test images shown with their reconstructions, and images drawn from the prior.
SHOWN = 10


def trained(run) -> tuple[torch.nn.Module, object] | None:
    """The decoder and the guide a run trained (None for a baseline without them)."""
    result = run.fitted
    if result is None or not hasattr(result.guide, "encoder"):
        return None
    return result.model.keywords["decoder"], result.guide


def proposal(guide, x: torch.Tensor):
    """The proposal of the importance-weighted log p(x), and whether the encoder has a
    density: the encoder's q mixed with a wider copy (:func:`zoo.vae.bounds.widened`); for an
    encoder without a density, a mixture around its point and the prior
    (:func:`zoo.vae.bounds.defensive`)."""
    encoder = guide.encoder(x)
    if ENCODERS[guide.encoder_name].density:
        return widened(encoder), True
    return (lambda xs, rows: defensive(encoder(xs).mean)), False


def evaluate(posterior, run, *, images: ImageData) -> dict[str, dict]:
    """The comparison hook (``Posterior.evaluate``) of the VAE."""
    found = trained(run)
    if found is None:
        return {}
    decoder, guide = found
    x = posterior.test_data["x"]
    q, density = proposal(guide, x)
    evidence = log_evidence(decoder, q, x, seed=1)
    metrics = {
        "lpd_test": float(np.mean(evidence.log_px)),
        "bits_per_dim": float(bits_per_dim(np.mean(evidence.log_px), x.shape[1], images.levels)),
    }
    diagnostics = {
        "iw_samples": IW_SAMPLES,
        "iw_se": float(math.sqrt(np.sum(evidence.se**2)) / len(x)),
        "iw_khat_max": float(np.max(evidence.khat)),
        "iw_khat_bad": int(np.sum(evidence.khat > KHAT_BAD)),
    }
    arrays = {
        "log_px": (evidence.log_px, ("test_row",)),
        "log_px_khat": (evidence.khat, ("test_row",)),
    }
    with torch.no_grad():
        means = guide.encoder(x)(x).mean
    variance = to_numpy(means.var(0).double())
    metrics["active_units"] = int(np.sum(variance > ACTIVE))
    diagnostics["collapsed_units"] = int(np.sum(variance <= ACTIVE))  # means blind to x
    arrays["z_test_mean"] = (to_numpy(means.double()), ("test_row", "latent"))
    arrays.update(_pictures(decoder, means))
    arrays["x_shown"] = (to_numpy(x[:SHOWN].double()), ("shown_row", "pixel"))
    if images.test_labels is not None:
        arrays["test_label"] = (np.asarray(images.test_labels), ("test_row",))
    held_out = run.fitted.held_out_elbo
    if held_out is not None and len(held_out):
        arrays["validation_elbo"] = (np.asarray(held_out, dtype=float), ("check",))
    if density:
        encoder = from_encoder(guide.encoder(x))
        objective = run.fitted.info.get("objective", "elbo")
        _with_density(decoder, encoder, x, evidence, metrics, diagnostics, arrays, objective)
    diagnostics.update(_outliers(decoder, guide, images, x, density, evidence.log_px))
    return {"metrics": metrics, "diagnostics": diagnostics, "arrays": arrays}


@torch.no_grad()
def _pictures(decoder, means: torch.Tensor) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """What the report draws as images: E[x | z] at the encoder's mean of the first
    :data:`SHOWN` test rows (reconstructions), and at z drawn from the prior (seeded)."""
    generator = torch.Generator(device=means.device).manual_seed(0)
    z = torch.randn(SHOWN, means.shape[1], generator=generator, dtype=means.dtype,
                    device=means.device)  # fmt: skip
    as_np = lambda t: to_numpy(t.double())  # noqa: E731
    return {
        "reconstruction": (as_np(decoder.mean(means[:SHOWN])), ("shown_row", "pixel")),
        "prior_sample": (as_np(decoder.mean(z)), ("sample", "pixel")),
    }


def _with_density(decoder, encoder, x, evidence, metrics, diagnostics, arrays, objective):
    """The ELBO's terms and the gaps, for an encoder with a density."""
    parts = elbo_parts(decoder, encoder, x, seed=2)
    metrics.update(
        elbo_test=float(parts.elbo.mean()),
        reconstruction_test=float(parts.reconstruction.mean()),
    )
    diagnostics["kl_z"] = float(parts.kl.mean())  # DESIGN.md: kl_<site> in diagnostics
    arrays["elbo_row"] = (parts.elbo, ("test_row",))
    arrays["kl_row"] = (parts.kl, ("test_row",))
    if objective != "elbo":  # the gaps split an ELBO-trained encoder's loss; IWAE's is not
        diagnostics["gaps"] = f"not measured: the encoder was trained on the {objective} bound"
        return
    rows = min(GAP_ROWS, len(x))
    gaps = inference_gaps(decoder, encoder, x[:rows], evidence.log_px[:rows], seed=3)
    metrics["amortization_gap"] = float(gaps.amortization.mean())
    metrics["approximation_gap"] = float(gaps.approximation.mean())
    diagnostics["gap_rows"] = rows
    diagnostics["gap_fits_converged"] = gaps.converged
    arrays["amortization_gap_row"] = (gaps.amortization, ("gap_row",))
    arrays["approximation_gap_row"] = (gaps.approximation, ("gap_row",))


def _outliers(decoder, guide, images, x, density: bool, log_px) -> dict[str, float]:
    """ROC AUC of -log p(x) (and of the KL, where q has a density) as outlier scores:
    held-out images against each set of inputs unlike them."""
    out: dict[str, float] = {}
    if density:
        kl_in = elbo_parts(decoder, from_encoder(guide.encoder(x)), x, samples=1, seed=5).kl
    for name, values in out_of_distribution(images, seed=0).items():
        other = torch.as_tensor(values, dtype=x.dtype, device=x.device)
        q, _ = proposal(guide, other)
        other_lp = log_evidence(decoder, q, other, samples=OUTLIER_SAMPLES, seed=4).log_px
        labels = np.r_[np.zeros(len(log_px)), np.ones(len(other_lp))]
        out[f"auc_logpx_{name}"] = float(roc_auc_score(labels, -np.r_[log_px, other_lp]))
        if density:
            encoder = from_encoder(guide.encoder(other))
            kl_out = elbo_parts(decoder, encoder, other, samples=1, seed=5).kl
            out[f"auc_kl_{name}"] = float(roc_auc_score(labels, np.r_[kl_in, kl_out]))
    return out
