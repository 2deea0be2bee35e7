"""What a comparison measures of each trained two-level (or one-layer sparse) VAE, on
held-out patches, in float64 copies of its networks.

- log p(x) per row by importance sampling with the guide as proposal (K = 5000 draws per
  row, a log-mean-exp per row, its standard error and PSIS k);
- the ELBO and its terms per layer: reconstruction E_q[log p(x | z1)], the V1 term
  E_q[log q(z1 | .) - log p(z1 | z2)] (KL(q(z1 | .) || p(z1 | z2)) averaged over the draws)
  and the V2 term E_q[log q(z2 | .) - log p(z2)], each a Monte Carlo average at the guide's
  own draws (valid for either order of the guide);
- per layer: active units (variance over rows of E_q[z] above 0.01) and collapsed ones;
- V1's sparseness: the excess kurtosis of each active unit's posterior mean over rows;
- arrays for the report: Phi (the V1 projective fields), log p(x) and its k per row, the
  layers' terms per row, the held-out ELBO of every epoch.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import numpy as np
import pyro.distributions as dist
import torch
from scipy.stats import kurtosis

from zoo.tensors import all_cores, cuda_devices, to_numpy
from zoo.two_level_vae.data import PATCH_SIZE
from zoo.two_level_vae.fields import fit_gabors
from zoo.two_level_vae.gold import (
    GOLD_ROWS,
    INPAINT_ROWS,
    against_nuts,
    central_mask,
    inpaint_gaussian,
    inpaint_guide,
    inpaint_nuts,
    nuts_posterior,
    rmse,
)
from zoo.two_level_vae.textures import texture_study
from zoo.vae.bounds import IW_SAMPLES, KHAT_BAD, chunks, summarize
from zoo.vae.data import ImageData

logger = logging.getLogger(__name__)

#: Held-out rows measured (5000 draws each through two perceptrons and Phi).
MEASURED_ROWS = 200
#: Draws per row for the ELBO's terms and the latent means.
ELBO_SAMPLES = 100
#: A unit is active when the variance over rows of its posterior mean exceeds this.
ACTIVE = 0.01
#: Numbers of (draws x rows) evaluated at once.
CHUNK = 50_000

#: Draws of every latent site for rows x: (x, num) -> (values by site, log q by site, the
#: mean of each site's conditional at the draws before it, by site).
Sampler = Callable[[torch.Tensor, int], tuple[dict, dict, dict]]


def _sampler(result, x: torch.Tensor) -> tuple[object, Sampler] | None:
    """The float64 decoder and a sampler of the fitted guide (None for a baseline)."""
    guide = result.guide
    if result.model is None or not hasattr(result.model, "keywords"):
        return None
    as64 = lambda m: copy.deepcopy(m).to(torch.float64).requires_grad_(False)  # noqa: E731
    decoder = as64(result.model.keywords["decoder"])
    if hasattr(guide, "conditionals"):  # the hierarchical guide
        nets = as64(guide.networks(x))  # built in training: x only says where
        return decoder, lambda rows, num: guide.sample(rows, num, nets)
    if not hasattr(guide, "encoder"):
        return None
    encoder = as64(guide.encoder(x.to(decoder.phi.dtype)))
    site = guide.local.site

    def sample(rows: torch.Tensor, num: int):
        q = encoder(rows)
        z = q.sample((num,))
        return {site: z}, {site: q.log_prob(z)}, {site: q.mean.expand_as(z)}

    return decoder, sample


def log_terms(decoder, x: torch.Tensor, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """log p(x | z1), log p(z1 | z2) and log p(z2) at draws ``z`` (by site, (S, rows, K))."""
    z2 = z.get("z2")
    out = {
        "x": decoder.likelihood(z["z1"]).log_prob(x),
        "z1": decoder.prior_z1(z2).log_prob(z["z1"]),
    }
    if z2 is not None:
        out["z2"] = dist.Normal(torch.zeros_like(z2), 1.0).to_event(1).log_prob(z2)
    return out


@torch.no_grad()
def importance_log_weights(decoder, sample: Sampler, x, samples: int, seed: int) -> np.ndarray:
    """log p(x, z) - log q(z | x) for ``samples`` draws per row, (samples, rows)."""
    out = []
    with torch.random.fork_rng(devices=cuda_devices(x)):
        torch.manual_seed(seed)
        for rows in chunks(len(x), samples, CHUNK):
            z, log_q, _ = sample(x[rows], samples)
            log_p = log_terms(decoder, x[rows], z)
            out.append(sum(log_p.values()) - sum(log_q.values()))
    return to_numpy(torch.cat(out, dim=1))


@torch.no_grad()
def layer_terms(decoder, sample: Sampler, x, samples: int = ELBO_SAMPLES, seed: int = 0):
    """Per row: the reconstruction, the V1 and V2 terms (0 without V2) and each layer's
    posterior mean (by site, (rows, K)): the mean of the site's conditional, averaged over
    the draws it is conditioned on (exact for the first, and far less noisy than the mean
    of the draws themselves, whose noise alone would make a collapsed unit look active)."""
    recon, kl1, kl2, means = [], [], [], {}
    with torch.random.fork_rng(devices=cuda_devices(x)):
        torch.manual_seed(seed)
        for rows in chunks(len(x), samples, CHUNK):
            z, log_q, conditional_means = sample(x[rows], samples)
            log_p = log_terms(decoder, x[rows], z)
            recon.append(log_p["x"].mean(0))
            kl1.append((log_q["z1"] - log_p["z1"]).mean(0))
            kl2.append((log_q["z2"] - log_p["z2"]).mean(0) if "z2" in z else 0 * recon[-1])
            for site, value in conditional_means.items():
                means.setdefault(site, []).append(value.mean(0))
    as_np = lambda parts: to_numpy(torch.cat(parts))  # noqa: E731
    return as_np(recon), as_np(kl1), as_np(kl2), {k: as_np(v) for k, v in means.items()}


def evaluate(posterior, run, *, images: ImageData, gold: str | None = "smoke") -> dict[str, dict]:
    """The comparison hook (``Posterior.evaluate``): on every core, as the VAE's. ``gold``:
    the preset of the NUTS runs (:data:`zoo.two_level_vae.gold.GOLD_DRAWS`), None for none."""
    x = posterior.test_data["x"][:MEASURED_ROWS].to(torch.float64)
    if run.method == "ml_gaussian":
        return _gaussian_inpainting(images, x)
    if run.fitted is None:
        return {}
    found = _sampler(run.fitted, posterior.test_data["x"])
    if found is None:
        return {}
    with all_cores():
        out = _measure(*found, x, run)
        extras = {
            "gabor": lambda: _fields(found[0], images),
            "texture": lambda: _textures(*found, images),
            "inpaint": lambda: _inpainting(*found, x, images),
            "gold": lambda: _gold(*found, x, gold, images),
        }
        for name, measure in extras.items():
            try:
                extra = measure()
            except Exception as exc:  # noqa: BLE001 - reported, and the other measures go on
                message = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: the %s measurement failed: %s", run.method, name, message)
                out["diagnostics"][f"{name}_error"] = message
                continue
            out["diagnostics"].update(extra.get("diagnostics", {}))
            out["arrays"].update(extra.get("arrays", {}))
        return out


def _side(images: ImageData) -> int | None:
    """The side of square patches of at least 3x3 (what the fields and inpainting need)."""
    shape = images.image_shape
    return shape[0] if len(shape) == 2 and shape[0] == shape[1] and shape[0] >= 3 else None


def _fields(decoder, images: ImageData) -> dict:
    """Gabor fits of Phi's columns (square patches only)."""
    side = _side(images)
    if side is None:
        return {}
    fits = fit_gabors(to_numpy(decoder.phi.double()), side)
    return {"diagnostics": fits.summary(), "arrays": fits.as_arrays()}


def _textures(decoder, sample: Sampler, images: ImageData) -> dict:
    """V1's and V2's responses to textures and to their phase-scrambled copies (12x12 whitened
    patches only: the textures are cut and whitened as the built-in patches are)."""
    if images.name != "whitened_patches" or _side(images) != PATCH_SIZE:
        return {}
    phi = decoder.phi

    def means(rows: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.as_tensor(rows, dtype=phi.dtype, device=phi.device)
        return layer_terms(decoder, sample, x, seed=3)[3]

    return texture_study(means, size=PATCH_SIZE)


def _inpainting(decoder, sample: Sampler, x: torch.Tensor, images: ImageData) -> dict:
    """The guide's prediction of the central block of held-out patches (square ones)."""
    if _side(images) is None:
        return {}
    visible = central_mask(x.shape[1])
    rows = x[:INPAINT_ROWS]
    predicted, trace = inpaint_guide(decoder, sample, rows, visible, seed=4)
    truth = to_numpy(rows)[:, ~visible]
    return {
        "diagnostics": {
            "inpaint_rmse": rmse(predicted, truth),
            "inpaint_rmse_first": float(trace[0]),
            "inpaint_rmse_zero": rmse(0 * truth, truth),
            "inpaint_rows": len(rows),
            "inpaint_hidden": int((~visible).sum()),
        },
        "arrays": {
            "inpaint": (np.stack([truth, predicted]), ("source", "test_row", "hidden")),
            "inpaint_trace": (trace, ("inpaint_step",)),
        },
    }


def _gaussian_inpainting(images: ImageData, x: torch.Tensor) -> dict:
    """The full Gaussian's conditional mean of the central block, for the same rows."""
    if _side(images) is None:
        return {}
    visible = central_mask(x.shape[1])
    rows = to_numpy(x[:INPAINT_ROWS])
    predicted = inpaint_gaussian(images.train, rows, visible)
    return {
        "diagnostics": {"inpaint_rmse": rmse(predicted, rows[:, ~visible])},
        "arrays": {
            "inpaint": (np.stack([rows[:, ~visible], predicted]), ("source", "test_row", "hidden"))
        },  # fmt: skip
    }


def _gold(decoder, sample: Sampler, x: torch.Tensor, preset: str | None, images) -> dict:
    """The guide against NUTS on the first held-out rows (two-level models only), and NUTS's
    inpainting of the same rows' central block beside the guide's."""
    if preset is None or not decoder.v2_units:
        return {}
    rows = x[: GOLD_ROWS[preset]]
    gold = nuts_posterior(decoder, rows, preset=preset)
    out = against_nuts(sample, rows, gold)
    out["diagnostics"].update(gold.diagnostics)
    if _side(images) is not None:
        visible = central_mask(x.shape[1])
        masked = nuts_posterior(decoder, rows, preset=preset, mask=visible)
        truth = to_numpy(rows)[:, ~visible]
        guide, _ = inpaint_guide(decoder, sample, rows, visible, seed=4)
        out["diagnostics"].update({
            "gold_inpaint_rmse_nuts": rmse(inpaint_nuts(decoder, masked), truth),
            "gold_inpaint_rmse_guide": rmse(guide, truth),
            "gold_inpaint_rhat_max": masked.diagnostics["gold_rhat_max"],
            "gold_inpaint_ess_bulk_min": masked.diagnostics["gold_ess_bulk_min"],
            "gold_inpaint_wall_s": masked.diagnostics["gold_wall_s"],
        })  # fmt: skip
    return out


def _measure(decoder, sample: Sampler, x: torch.Tensor, run) -> dict[str, dict]:
    evidence = summarize(importance_log_weights(decoder, sample, x, IW_SAMPLES, seed=1))
    recon, kl1, kl2, means = layer_terms(decoder, sample, x, seed=2)
    elbo = recon - kl1 - kl2
    metrics = {
        "lpd_test": float(np.mean(evidence.log_px)),
        "elbo_test": float(np.mean(elbo)),
        "reconstruction_test": float(np.mean(recon)),
    }
    diagnostics: dict[str, float | int | str] = {
        "measured_rows": len(x),
        "iw_samples": IW_SAMPLES,
        "iw_se": float(math.sqrt(np.sum(evidence.se**2)) / len(x)),
        "iw_khat_max": float(np.max(evidence.khat)),
        "iw_khat_bad": int(np.sum(evidence.khat > KHAT_BAD)),
        "kl_z1": float(np.mean(kl1)),
        "sigma": float(decoder.sigma()[0]),
    }
    if "z2" in means:
        diagnostics["kl_z2"] = float(np.mean(kl2))
    for site, m in means.items():
        variance = m.var(axis=0)
        diagnostics[f"active_{site}"] = int(np.sum(variance > ACTIVE))
        diagnostics[f"collapsed_{site}"] = int(np.sum(variance <= ACTIVE))
    active = means["z1"][:, means["z1"].var(axis=0) > ACTIVE]
    if active.shape[1]:
        diagnostics["v1_kurtosis"] = float(np.median(kurtosis(active, axis=0)))
    arrays = {
        "phi": (to_numpy(decoder.phi), ("pixel", "v1_unit")),
        "log_px": (evidence.log_px, ("test_row",)),
        "log_px_khat": (evidence.khat, ("test_row",)),
        "elbo_row": (elbo, ("test_row",)),
        "reconstruction_row": (recon, ("test_row",)),
        "kl_z1_row": (kl1, ("test_row",)),
        "kl_z2_row": (kl2, ("test_row",)),
    }
    held_out = run.fitted.held_out_elbo
    if held_out is not None and len(held_out):
        arrays["validation_elbo"] = (np.asarray(held_out, dtype=float), ("check",))
    return {"metrics": metrics, "diagnostics": diagnostics, "arrays": arrays}
