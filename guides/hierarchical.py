"""Amortized guides for two layers of per-row latents, in either order of factorization
(the ``amortized`` family with ``encoder="chain"`` or ``"top_down"``).

For a model z2 -> z1 -> x (the two-level VAE, :mod:`zoo.two_level_vae`), the true posterior
factorizes both ways, p(z1, z2 | x) = p(z1 | x) p(z2 | z1) = p(z2 | x) p(z1 | z2, x) (x is
independent of z2 given z1), and a guide may follow either:

- ``chain`` (bottom-up): q(z1 | x) q(z2 | z1). q(z1 | x) is one diagonal Gaussian per row,
  while the true p(z1 | x) is a mixture over z2 of p(z1 | z2, x): the chain cannot carry
  correlations between V1 units given x.
- ``top_down``: q(z2 | x) q(z1 | z2, x). Its marginal q(z1 | x) is a mixture over z2 of
  diagonal Gaussians, which can carry such correlations.

Each conditional is a diagonal Gaussian from a perceptron (inputs standardized as in
:mod:`guides.encoders`). Both are fitted with Pyro's ``Trace_ELBO``, which estimates every
term by Monte Carlo at the guide's draws and so is valid for either order; an estimator
with an analytic KL(q(z1 | .) || p(z1 | z2)) is valid for top-down only (in the chain z2 is
drawn after z1, from q(z2 | z1)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from guides.encoders import MIN_SCALE, Standardize, _perceptron
from zoo import LocalLatents, ZooInputError
from zoo.tensors import cuda_devices, to_numpy

#: The orders of factorization.
ORDERS = ("chain", "top_down")
#: Hidden widths of every conditional's perceptron, by default.
HIDDEN = (256,)
#: Draws of the first conditional over which the second's means are averaged.
MEAN_DRAWS = 32


class GaussianHead(nn.Module):
    """(x, context) -> a diagonal Gaussian with event shape (``out_dim``,): x standardized
    by the data it was built on (when given), the context (an upper or lower latent) as it is,
    joined and passed through a perceptron."""

    def __init__(self, data: torch.Tensor | None, context_dim: int, out_dim: int,
                 hidden: Sequence[int]):  # fmt: skip
        super().__init__()
        self.standardize = Standardize(data) if data is not None else None
        width = (data.shape[-1] if data is not None else 0) + context_dim
        self.body, width = _perceptron(width, hidden)
        self.loc = nn.Linear(width, out_dim)
        self.raw_scale = nn.Linear(width, out_dim)
        with torch.no_grad():  # start narrow: wide draws of z1 drown a patch in noise
            self.raw_scale.bias.fill_(-2.0)

    def forward(self, x: torch.Tensor | None, context: torch.Tensor | None = None):
        parts = []
        if self.standardize is not None:
            parts.append(self.standardize(x))
        if context is not None:
            if parts:  # rows joined to each of their draws of the context
                parts[0] = parts[0].expand(*context.shape[:-1], parts[0].shape[-1])
            parts.append(context)
        h = self.body(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
        return dist.Normal(self.loc(h), softplus(self.raw_scale(h)) + MIN_SCALE).to_event(1)


class HierarchicalGuide(PyroModule):
    """q(z1, z2 | x) in the order ``order`` (:data:`ORDERS`) for the two per-row sites of
    ``local`` (the upper one first: ``(z2, z1)``), each reading the data keyword
    ``local[0].input``. ``hidden``: the perceptrons' widths. Takes (and ignores) the
    start and whitening arguments every guide family is built with; there are no globals."""

    def __init__(
        self,
        model: Callable[..., object],
        *,
        local: Sequence[LocalLatents],
        order: str = "top_down",
        hidden: Sequence[int] = HIDDEN,
        global_guide: str | None = None,
        init_loc_fn=None,
        shift=None,
        scale=None,
    ):
        super().__init__()
        if order not in ORDERS:
            raise ZooInputError(f"unknown order '{order}'; choose one of: {', '.join(ORDERS)}")
        if global_guide is not None:
            raise ZooInputError(
                f"the {order} encoders cover per-row latents only: use global_guide=None"
            )
        local = (local,) if isinstance(local, LocalLatents) else tuple(local)
        if len(local) != 2:
            raise ZooInputError(
                f"the {order} encoders need a model with two layers of per-row latents (as"
                " two_level_vae); use encoder mlp or linear for one"
            )
        self.upper, self.lower = local
        self.order, self.hidden = order, tuple(hidden)
        self.model = model
        self.globals = None  # no global sites: nothing to draw beside the rows' latents
        self.encoder_name = order
        self._nets: nn.ModuleDict | None = None

    @property
    def has_density(self) -> bool:
        return True

    def networks(self, x: torch.Tensor) -> nn.ModuleDict:
        """The two conditionals, keyed by the site each draws, built on first use from the
        rows ``x``."""
        if self._nets is None:
            lower, upper, h = self.lower, self.upper, self.hidden
            data = x.detach()
            if self.order == "chain":
                nets = {lower.site: GaussianHead(data, 0, lower.dim, h),
                        upper.site: GaussianHead(None, lower.dim, upper.dim, h)}  # fmt: skip
            else:
                nets = {upper.site: GaussianHead(data, 0, upper.dim, h),
                        lower.site: GaussianHead(data, upper.dim, lower.dim, h)}  # fmt: skip
            self._nets = nn.ModuleDict(nets).to(dtype=x.dtype, device=x.device)
        return self._nets

    def conditionals(self, x: torch.Tensor, nets: nn.ModuleDict | None = None):
        """The guide's two conditionals for rows ``x``, in its order: (site, q) pairs, each q
        a function of the draws so far (a dict by site) returning the site's Gaussian."""
        nets = nets if nets is not None else self.networks(x)
        lower, upper = self.lower.site, self.upper.site
        if self.order == "chain":
            return (
                (lower, lambda z: nets[lower](x)),
                (upper, lambda z: nets[upper](None, z[lower])),
            )
        return ((upper, lambda z: nets[upper](x)), (lower, lambda z: nets[lower](x, z[upper])))

    def forward(self, *args, **kwargs):
        x = kwargs[self.upper.input]
        nets = pyro.module(f"{self._pyro_name}.encoder", self.networks(x))
        subsample = kwargs.get("subsample_size")
        values: dict[str, torch.Tensor] = {}
        with pyro.plate(self.upper.plate, x.shape[-2], subsample_size=subsample) as idx:
            for site, q in self.conditionals(x[idx], nets):
                values[site] = pyro.sample(site, q(values))
        return values

    @torch.no_grad()
    def sample(self, x: torch.Tensor, num: int, nets: nn.ModuleDict | None = None):
        """``num`` draws of each site for every row of ``x`` (by site: (num, rows, K)), the
        log density of each draw under its conditional (by site: (num, rows)) and the mean of
        that conditional (by site, as the draws); ``nets``: the conditionals to draw from
        (default the guide's own)."""
        values: dict[str, torch.Tensor] = {}
        log_q: dict[str, torch.Tensor] = {}
        means: dict[str, torch.Tensor] = {}
        for site, q in self.conditionals(x, nets):
            qd = q(values)
            z = qd.sample((num,)) if qd.batch_shape == x.shape[:-1] else qd.sample()
            values[site], log_q[site], means[site] = z, qd.log_prob(z), qd.mean.expand_as(z)
        return values, log_q, means

    @torch.no_grad()
    def latent_means(self, x: torch.Tensor, site: LocalLatents | None = None) -> torch.Tensor:
        """E_q[z] of ``site`` (the lower, V1, by default) for every row of ``x``: the first
        conditional's mean, or for the second the mean of its means at
        :data:`MEAN_DRAWS` seeded draws of the first (rows taken a thousand at a time)."""
        key = (site or self.lower).site
        first, q = self.conditionals(x)[0]
        if first == key:
            return q({}).mean
        parts = []
        with torch.random.fork_rng(devices=cuda_devices(x)):
            torch.manual_seed(0)  # the same means every call; the fit's streams untouched
            for rows in x.split(1000):
                (_, q1), (_, q2) = self.conditionals(rows)
                parts.append(q2({first: q1({}).sample((MEAN_DRAWS,))}).mean.mean(0))
        return torch.cat(parts)

    def per_row(self, data) -> dict[str, tuple[object, tuple[str, ...]]]:
        """Each layer's latent means for every row of ``data``, for the report."""
        x = data[self.upper.input]
        return {
            f"{site.site}_mean": (
                to_numpy(self.latent_means(x, site)),
                ("obs", f"{site.site}_unit"),
            )
            for site in (self.lower, self.upper)
        }

    def describe(self) -> dict[str, object]:
        return {"encoder": f"hierarchical, {self.order.replace('_', '-')}"}
