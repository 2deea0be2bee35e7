"""p(z | x, decoder) for a few held-out rows: the posterior that a trained VAE's encoder
approximates, where NUTS is the reference and every guide of the zoo can be fitted per row.

With the decoder fixed, the rows' latents are independent given their images, so the
posterior of the (rows x K) block ``z`` factorizes over rows. It is bound as a posterior of
one global site ``z`` (dims ``row``, ``latent``): NUTS, delta, laplace, mean_field,
full_rank and flow then run on it unchanged (a full-rank Gaussian over all the rows has the
per-row full Gaussians as its optimum, since the target factorizes). Beside them: the
trained encoder's q(z | x) (``amortized``) and importance resampling with the encoder as
proposal (``amortized_is``), closed forms here.
"""

from __future__ import annotations

import copy

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from zoo.methods import CLOSED_FORM, MethodSpec, declare_methods
from zoo.posterior import ClosedForm, Posterior, bind
from zoo.tensors import to_numpy
from zoo.vae.bounds import KHAT_BAD, log_weights, pareto_k

#: Held-out rows whose posterior NUTS samples (each adds K dimensions to the target).
NUTS_ROWS = 10
#: At least this many NUTS draws per chain: with 300 (the smoke preset's) the largest
#: R-hat of 96 coordinates was 1.018 with chain means 0.05 sd apart and a bulk ESS of 1660
#: or more everywhere, noise that the reference check (1.01) flags; with 1000, on 80
#: coordinates of digits and of patches, it passed (1.005 on digits).
NUTS_DRAWS = 1000
#: The per-row guides fitted with the decoder fixed.
GUIDES = ("delta", "laplace", "mean_field", "full_rank", "flow")


def conditional_model(x: torch.Tensor, *, decoder) -> None:
    """z (rows x K) ~ N(0, I); x_n | z_n ~ decoder(z_n), the decoder's weights constants."""
    p = next(decoder.parameters())
    zeros = torch.zeros(x.shape[0], decoder.latent_dim, dtype=p.dtype, device=p.device)
    z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(2))
    if z.dim() > 2:  # batched draws (..., 1, rows, K): the rows onto the plate's dim
        z = z.squeeze(-3)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", decoder(z), obs=x)


def conditional_posterior(decoder, encoder, x: torch.Tensor, *, dataset: str, rows=None):
    """The posterior of z given ``x`` (a few held-out rows) and a trained ``decoder``;
    ``encoder`` is the trained q(z | x) (with a density), ``rows`` the rows' indices."""
    from zoo.posterior import ModelForms

    fixed = copy.deepcopy(decoder).requires_grad_(False)
    rows = list(range(len(x))) if rows is None else [int(r) for r in rows]
    k = decoder.latent_dim
    form = bind(conditional_model, decoder=fixed)
    variants = [
        MethodSpec("nuts", "nuts", {"num_samples": NUTS_DRAWS}),
        MethodSpec("amortized", CLOSED_FORM, {"form": "encoder"}),
        MethodSpec("amortized_is", CLOSED_FORM, {"form": "encoder_is"}),
    ]
    return Posterior(
        model_name="vae",
        dataset=dataset,
        forms=ModelForms(fit=form),
        data={"x": x},
        test_data=None,
        obs_site="x",
        sites=("z",),
        dims={"z": ["row", "latent"]},
        coords={"row": rows, "latent": list(range(k))},
        methods=declare_methods((), GUIDES, nuts=False, variants=variants),
        closed_forms=_encoder_forms(fixed, encoder, x),
        description={
            "posterior": f"p(z | x, decoder) of {len(x)} held-out rows, the decoder fixed",
            "rows": ", ".join(map(str, rows)),
        },
        extra_metrics=within_row_correlation,
        pointwise=False,
    )


def _encoder_forms(decoder, encoder, x: torch.Tensor) -> dict:
    """The encoder's q(z | x), and importance resampling from it (weights p(x, z) / q)."""

    def from_q(seed: int, num_draws: int) -> ClosedForm:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = encoder(x).sample((num_draws,))
        return ClosedForm(draws={"z": to_numpy(z.double())})

    def resampled(seed: int, num_draws: int) -> ClosedForm:
        proposal = lambda xs, rows: encoder(xs)  # noqa: E731
        samples = max(num_draws, 1000)
        lw = log_weights(decoder, proposal, x, samples, seed=seed, keep=True)
        k = pareto_k(lw.log_w)
        rng = np.random.default_rng(seed)
        w = np.exp(lw.log_w - lw.log_w.max(0))
        w /= w.sum(0)
        pick = np.stack([rng.choice(samples, num_draws, p=w[:, n]) for n in range(len(x))], 1)
        z = np.take_along_axis(lw.z, pick[..., None], axis=0)
        info = {"is_samples_per_row": samples, "is_khat_max": float(k.max()),
                "is_khat_bad": int(np.sum(k > KHAT_BAD))}  # fmt: skip
        return ClosedForm(draws={"z": z}, info=info)

    return {"encoder": from_q, "encoder_is": resampled}


def within_row_correlation(draws, reference) -> dict[str, float]:
    """The correlation between latents of the same row: the largest NUTS sees (what a
    diagonal q cannot hold) and the largest error of a method's against it."""
    z = np.asarray(draws["z"])  # (S, rows, K)
    if len(z) < 3:  # a point has no correlations
        return {}
    corr = _row_corr(z)
    out = {"corr_within_row_max": float(np.nanmax(np.abs(corr)))}
    if reference is not None:
        ref = _row_corr(np.asarray(reference["z"]))
        out["corr_error_max"] = float(np.nanmax(np.abs(corr - ref)))
    return out


def _row_corr(z: np.ndarray) -> np.ndarray:
    """Off-diagonal correlations of each row's K latents over the draws: (rows, K, K) with
    NaN on the diagonal (and everywhere for a point)."""
    centred = z - z.mean(0)
    cov = np.einsum("srk,srl->rkl", centred, centred) / max(len(z) - 1, 1)
    sd = np.sqrt(np.einsum("rkk->rk", cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / (sd[:, :, None] * sd[:, None, :])
    k = z.shape[-1]
    corr[:, np.arange(k), np.arange(k)] = np.nan
    return corr
