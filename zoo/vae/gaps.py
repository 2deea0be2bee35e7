"""The inference gaps of Cremer, Li and Duvenaud (2018), per row, with the decoder fixed.

    log p(x) - ELBO(encoder) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(encoder)]
                                approximation gap       amortization gap

q* is the best member of the encoder's own family for each row on its own (a Gaussian with
a diagonal or a full covariance, as the encoder's), found here by Adam on every row's ELBO at
once (rows do not interact once the decoder is fixed), started at the encoder's q(z | x).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from torch.nn.functional import softplus

from zoo.vae.bounds import ElboParts, as_mvn, elbo_parts, prior

#: Adam's settings for the per-row Gaussians: steps, draws per step and the learning rate.
#: Seen on digits (standard VAE, 100 rows): 1500 steps of 16 draws gave gaps of 1.91 and
#: 0.08 nats, 500 of 8 gave 1.87 and 0.12, in half the time; both converged.
STEPS, PARTICLES, LR = 500, 8, 0.02


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """The module's weights as constants while the block runs (no gradient kept for them)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class RowGaussians(torch.nn.Module):
    """One free Gaussian N(m_n, L_n L_n^T) per row, as a proposal over all rows; with
    ``full`` False, L_n is diagonal (the family of a mean-field encoder)."""

    def __init__(self, start: dist.MultivariateNormal, full: bool = True):
        super().__init__()
        self.full = full
        tril = start.scale_tril.detach()
        diag = torch.diagonal(tril, dim1=-2, dim2=-1)
        self.loc = torch.nn.Parameter(start.loc.detach().clone())
        self.raw_diag = torch.nn.Parameter(torch.log(torch.expm1(diag.clamp_min(1e-6))))
        lower = torch.tril(tril, diagonal=-1).clone()
        self.lower = torch.nn.Parameter(lower) if full else None

    def q(self, rows=slice(None)) -> dist.MultivariateNormal:
        diag = softplus(self.raw_diag[rows]) + 1e-6
        tril = torch.diag_embed(diag)
        if self.full:
            tril = tril + torch.tril(self.lower[rows], diagonal=-1)
        return dist.MultivariateNormal(self.loc[rows], scale_tril=tril)

    def proposal(self, x: torch.Tensor, rows: slice) -> dist.MultivariateNormal:
        """q of the rows ``rows`` (a :data:`~zoo.vae.bounds.Proposal`; ``x`` unused)."""
        return self.q(rows)


@dataclass(frozen=True)
class Gaps:
    """Per-row bounds and gaps on the rows measured; ``steps`` of the per-row fits and
    whether their last window still improved (``converged`` False)."""

    log_px: np.ndarray
    encoder: ElboParts
    best: ElboParts
    steps: int
    converged: bool

    @property
    def amortization(self) -> np.ndarray:
        return self.best.elbo - self.encoder.elbo

    @property
    def approximation(self) -> np.ndarray:
        return self.log_px - self.best.elbo


def fit_row_gaussians(decoder, encoder, x, *, seed=0, steps=STEPS) -> tuple[RowGaussians, bool]:
    """Adam on the sum of the rows' ELBOs (reparameterized, ``PARTICLES`` draws per step),
    from the encoder's q; converged when the mean of the last 100 steps no longer beats the
    100 before by more than twice their standard error."""
    with torch.no_grad():
        start = encoder(x, slice(None))
        rows = RowGaussians(as_mvn(start), full=isinstance(start, dist.MultivariateNormal))
    optim = torch.optim.Adam(rows.parameters(), lr=LR)
    p_z, trace = prior(decoder), []
    with frozen(decoder), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            q = rows.q()
            z = q.rsample((PARTICLES,))
            elbo = (decoder(z).log_prob(x) + p_z.log_prob(z) - q.log_prob(z)).mean(0).sum()
            optim.zero_grad()
            (-elbo).backward()
            optim.step()
            trace.append(float(elbo.detach()))
    last, prev = np.asarray(trace[-100:]), np.asarray(trace[-200:-100])
    se = math.sqrt((last.var() + prev.var()) / 100)
    return rows, bool(last.mean() - prev.mean() < 2 * se)


def inference_gaps(decoder, encoder, x, log_px: np.ndarray, *, seed=0, samples=500) -> Gaps:
    """Both gaps for the rows of ``x``, given their importance-weighted ``log_px``."""
    rows, converged = fit_row_gaussians(decoder, encoder, x, seed=seed)
    with torch.no_grad():
        enc = elbo_parts(decoder, encoder, x, samples=samples, seed=seed + 1)
        best = elbo_parts(decoder, rows.proposal, x, samples=samples, seed=seed + 1)
    return Gaps(log_px, enc, best, STEPS, converged)
