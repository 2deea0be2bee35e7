"""What a comparison measures of each trained VAE, on the held-out rows: log p(x) by
importance weighting, the ELBO and its terms, active units, the inference gaps and how well
log p(x) and the KL tell held-out images from inputs unlike them (outlier detection)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from guides.encoders import ENCODERS
from zoo.tensors import all_cores, to_numpy
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
#: At most this many held-out rows are measured (the first ones): 5000 draws a row on all
#: 4000 held-out patches would take several minutes a method on 2 cores; digits has 359.
MEASURED_ROWS = 1000


@dataclass(frozen=True)
class Trained:
    """What a run trained, copied in float64 for measuring (a network trained in float32
    gave NaN log weights on inputs far from the data with a full-covariance encoder; NUTS
    needs the potential's digits): the decoder, the encoder module for rows like the data's,
    and whether q(z | x) has a density (not a point)."""

    decoder: torch.nn.Module
    encoder: torch.nn.Module
    density: bool

    def proposal(self):
        """The proposal of the importance-weighted log p(x): the encoder's q mixed with a
        wider copy (:func:`zoo.vae.bounds.widened`); for an encoder without a density, a
        mixture around its point and the prior (:func:`zoo.vae.bounds.defensive`)."""
        if self.density:
            return widened(self.encoder)
        return lambda xs, rows: defensive(self.encoder(xs).mean)


def trained(run, x: torch.Tensor) -> Trained | None:
    """The float64 copies of what a run trained, its encoder built for rows like ``x``
    (None for a baseline without networks)."""
    result = run.fitted
    if result is None or not hasattr(result.guide, "encoder"):
        return None
    decoder = result.model.keywords["decoder"]  # the local form binds the model's decoder
    as64 = lambda m: copy.deepcopy(m).to(torch.float64).requires_grad_(False)  # noqa: E731
    density = ENCODERS[result.guide.encoder_name].density
    return Trained(as64(decoder), as64(result.guide.encoder(x)), density)


def evaluate(posterior, run, *, images: ImageData) -> dict[str, dict]:
    """The comparison hook (``Posterior.evaluate``) of the VAE. It runs on every core: its
    batches (thousands of draws of z for each row through the decoder) are large enough for
    threads to pay (on 2 cores, log p(x) of 359 digits took 19.2 s on two threads against
    28.6 s on one, the gaps 9.8 against 15.8)."""
    x = posterior.test_data["x"][:MEASURED_ROWS].to(torch.float64)
    nets = trained(run, x)
    if nets is None:
        return {}
    with all_cores():
        return _measure(nets, x, run, images)


def _measure(nets: Trained, x: torch.Tensor, run, images: ImageData) -> dict[str, dict]:
    evidence = log_evidence(nets.decoder, nets.proposal(), x, seed=1)
    metrics = {
        "lpd_test": float(np.mean(evidence.log_px)),
        "bits_per_dim": float(bits_per_dim(np.mean(evidence.log_px), x.shape[1], images.levels)),
    }
    diagnostics = {
        "measured_rows": len(x),
        "iw_samples": IW_SAMPLES,
        "iw_se": float(math.sqrt(np.sum(evidence.se**2)) / len(x)),
        "iw_khat_max": float(np.max(evidence.khat)),
        "iw_khat_bad": int(np.sum(evidence.khat > KHAT_BAD)),
    }
    if nets.decoder.likelihood == "bernoulli":
        diagnostics["lpd_note"] = (
            "the Bernoulli likelihood is not a density on values between 0 and 1: its log p(x)"
            " compares with no other model's"
        )
    arrays = {
        "log_px": (evidence.log_px, ("test_row",)),
        "log_px_khat": (evidence.khat, ("test_row",)),
    }
    with torch.no_grad():
        means = nets.encoder(x).mean
    variance = to_numpy(means.var(0))
    metrics["active_units"] = int(np.sum(variance > ACTIVE))
    diagnostics["collapsed_units"] = int(np.sum(variance <= ACTIVE))  # means blind to x
    arrays["z_test_mean"] = (to_numpy(means), ("test_row", "latent"))
    arrays.update(_pictures(nets.decoder, means))
    arrays["x_shown"] = (to_numpy(x[:SHOWN]), ("shown_row", "pixel"))
    if images.test_labels is not None:
        arrays["test_label"] = (np.asarray(images.test_labels)[: len(x)], ("test_row",))
    held_out = run.fitted.held_out_elbo
    if held_out is not None and len(held_out):
        arrays["validation_elbo"] = (np.asarray(held_out, dtype=float), ("check",))
    if nets.density:
        objective = run.fitted.info.get("objective", "elbo")
        _with_density(nets, x, evidence, metrics, diagnostics, arrays, objective)
    diagnostics.update(_outliers(nets, images, x, evidence.log_px))
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


def _with_density(nets: Trained, x, evidence, metrics, diagnostics, arrays, objective):
    """The ELBO's terms and the gaps, for an encoder with a density."""
    decoder, encoder = nets.decoder, from_encoder(nets.encoder)
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


def _outliers(nets: Trained, images, x, log_px) -> dict[str, float]:
    """ROC AUC of -log p(x) (and of the KL, where q has a density) as outlier scores:
    held-out images against each set of inputs unlike them. A score that is not finite
    (none seen in float64) ranks as the most outlying, and is counted."""
    out: dict[str, float | int] = {}
    encoder = from_encoder(nets.encoder)
    if nets.density:
        kl_in = elbo_parts(nets.decoder, encoder, x, samples=1, seed=5).kl
    for name, values in out_of_distribution(images, seed=0).items():
        other = torch.as_tensor(values[: len(x)], dtype=x.dtype, device=x.device)
        other_lp = log_evidence(
            nets.decoder, nets.proposal(), other, samples=OUTLIER_SAMPLES, seed=4
        ).log_px
        labels = np.r_[np.zeros(len(log_px)), np.ones(len(other_lp))]
        out[f"auc_logpx_{name}"] = _auc(labels, -np.r_[log_px, other_lp], name, out)
        if nets.density:
            kl_out = elbo_parts(nets.decoder, encoder, other, samples=1, seed=5).kl
            out[f"auc_kl_{name}"] = _auc(labels, np.r_[kl_in, kl_out], name, out)
    return out


def _auc(labels: np.ndarray, scores: np.ndarray, name: str, out: dict) -> float:
    bad = ~np.isfinite(scores)
    if bad.any():
        out[f"outlier_scores_not_finite_{name}"] = int(bad.sum())
    return float(roc_auc_score(labels, np.where(bad, np.inf, scores).clip(max=np.finfo(float).max)))
