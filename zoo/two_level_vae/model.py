"""The two-level (V1/V2) generative model of image patches.

For rows n = 1..N of D pixels, with K2 upper (V2) and K1 >= D lower (V1) units::

    z2_n        ~ Normal(0, I_K2)                              V2, small
    z1_n | z2_n ~ Laplace(loc(z2_n), scale(z2_n))  per unit    V1: sparse, heavy-tailed
    x_n  | z1_n ~ Normal(Phi z1_n, sigma^2 I_D)                 Phi: a linear dictionary

``scale`` (and, where asked, ``loc``; else 0) is a perceptron of z2: V2 sets how active each
V1 unit is likely to be, as in models where higher areas modulate the variance of lower ones
(Karklin and Lewicki 2009). The columns of Phi are the V1 units' projective fields. Phi, the
perceptron and sigma are parameters of the model (``pyro.module``), fitted by maximum
marginal likelihood through the ELBO; z1 and z2 are the per-row latent sites. With
``v2_units=0`` there is no V2: z1 ~ Laplace(0, b) with one learned scale per unit, the
one-layer sparse VAE (sparse coding with a probabilistic encoder).

x is independent of z2 given z1, so p(z1, z2 | x) = p(z1 | x) p(z2 | z1) = p(z2 | x)
p(z1 | z2, x): both factorizations of the guide (:mod:`guides.hierarchical`) can be exact.

References
----------
Olshausen and Field (1997), *Sparse coding with an overcomplete basis set*, Vision Research.
Karklin and Lewicki (2009), *Emergence of complex cell properties by learning to generalize
in natural scenes*, Nature 457.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

#: The perceptron from z2 to V1's scales, by default.
HIDDEN = (128,)
#: Floors of every scale (V1's Laplace scales, sigma), in the units of the data.
MIN_SCALE = 1e-3


def _inverse_softplus(value: float, **factory) -> torch.Tensor:
    return torch.log(torch.expm1(torch.tensor(value, **factory)))


class TwoLevelDecoder(nn.Module):
    """The model's parameters and its two conditionals: :meth:`prior_z1` p(z1 | z2) and
    :meth:`likelihood` p(x | z1).

    ``sigma`` None: learned (one for all pixels, ``softplus(raw) + min_scale``), else fixed.
    ``prior_loc``: V2 sets V1's locations too (else they are 0). ``v2_units=0``: no V2.
    Phi starts with independent N(0, 1 / K1) entries; V1's scales start at ``start_scale``.
    """

    def __init__(
        self,
        data_dim: int,
        v1_units: int,
        v2_units: int,
        hidden: Sequence[int] = HIDDEN,
        *,
        sigma: float | None = None,
        prior_loc: bool = False,
        start_scale: float = 0.5,
        min_scale: float = MIN_SCALE,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.data_dim, self.v1_units, self.v2_units = data_dim, v1_units, v2_units
        self.min_scale, self.prior_loc = min_scale, prior_loc
        self.phi = nn.Parameter(torch.randn(data_dim, v1_units, **factory) / v1_units**0.5)
        raw_start = _inverse_softplus(start_scale - min_scale, **factory)
        if v2_units:
            layers: list[nn.Module] = []
            width = v2_units
            for h in hidden:
                layers += [nn.Linear(width, h, **factory), nn.Softplus()]
                width = h
            out = nn.Linear(width, v1_units * (2 if prior_loc else 1), **factory)
            with torch.no_grad():  # start near a constant scale: V2 learns to modulate it
                out.weight.mul_(0.1)
                out.bias.fill_(0.0)
                out.bias[:v1_units] = raw_start
            self.top = nn.Sequential(*layers, out)
            self.raw_v1_scale = None
        else:
            self.top = None
            self.raw_v1_scale = nn.Parameter(raw_start.expand(v1_units).clone())
        self.fixed_sigma = sigma
        self.raw_sigma = (
            nn.Parameter(_inverse_softplus(0.5 - min_scale, **factory).reshape(1))
            if sigma is None
            else None
        )

    def sigma(self) -> torch.Tensor:
        """The noise scale of p(x | z1), shape (1,)."""
        if self.raw_sigma is None:
            return torch.tensor([self.fixed_sigma], dtype=self.phi.dtype, device=self.phi.device)
        return softplus(self.raw_sigma) + self.min_scale

    def prior_z1(self, z2: torch.Tensor | None) -> dist.Distribution:
        """p(z1 | z2): independent Laplace units, event shape (K1,)."""
        if self.top is None:
            scale = softplus(self.raw_v1_scale) + self.min_scale
            return dist.Laplace(torch.zeros_like(scale), scale).to_event(1)
        out = self.top(z2)
        raw_scale = out[..., : self.v1_units]
        loc = out[..., self.v1_units :] if self.prior_loc else torch.zeros_like(raw_scale)
        return dist.Laplace(loc, softplus(raw_scale) + self.min_scale).to_event(1)

    def mean(self, z1: torch.Tensor) -> torch.Tensor:
        """E[x | z1] = Phi z1."""
        return z1 @ self.phi.T

    def likelihood(self, z1: torch.Tensor) -> dist.Distribution:
        """p(x | z1) = N(Phi z1, sigma^2 I), event shape (D,)."""
        loc = self.mean(z1)
        return dist.Normal(loc, self.sigma().expand_as(loc)).to_event(1)


def model(
    x: torch.Tensor | None = None,
    *,
    decoder: TwoLevelDecoder,
    num_data: int | None = None,
    fixed: bool = False,
) -> torch.Tensor:
    """z2 ~ N(0, I); z1 | z2 ~ Laplace; x | z1 ~ N(Phi z1, sigma^2 I), for the rows of ``x``
    (or ``num_data`` rows drawn from the model). ``fixed``: the decoder's parameters are
    constants (the posterior p(z1, z2 | x) given them), else parameters of the model."""
    net = decoder if fixed else pyro.module("decoder", decoder)
    rows = x.shape[0] if x is not None else num_data
    phi = decoder.phi
    with pyro.plate("data", rows):
        z2 = None
        if decoder.v2_units:
            zeros = torch.zeros(decoder.v2_units, dtype=phi.dtype, device=phi.device)
            z2 = pyro.sample("z2", dist.Normal(zeros, 1.0).to_event(1))
        z1 = pyro.sample("z1", net.prior_z1(z2))
        return pyro.sample("x", net.likelihood(z1), obs=x)


def simulate(
    seed: int,
    *,
    num_data: int = 200,
    data_dim: int = 4,
    v1_units: int = 4,
    v2_units: int = 2,
    hidden: Sequence[int] = (8,),
    sigma: float = 0.2,
    test_fraction: float = 0.25,
):
    """Rows from the model with a random decoder (seeded), split into fitted and held-out
    rows: an :class:`~zoo.vae.data.ImageData` (each row a 1 x ``data_dim`` "patch") and the
    decoder that made them."""
    from zoo.tensors import to_numpy
    from zoo.vae.data import ImageData

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = TwoLevelDecoder(data_dim, v1_units, v2_units, hidden, sigma=sigma,
                                  start_scale=1.0)  # fmt: skip
        with torch.no_grad():
            x = to_numpy(pyro.poutine.uncondition(model)(decoder=decoder, num_data=num_data))
    cut = num_data - max(1, int(round(test_fraction * num_data)))
    data = ImageData(
        train=x[:cut], test=x[cut:], train_labels=None, test_labels=None,
        image_shape=(data_dim,), name="simulated",
        description=f"{num_data} rows from simulate({seed}): a random two-level decoder with"
        f" {v2_units} V2 and {v1_units} V1 units, noise sd {sigma}",
        levels=None, bounded=False,
    )  # fmt: skip
    return data, decoder
