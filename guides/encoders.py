"""Encoder networks of amortized guides: x (..., D) -> q(z | x), a Gaussian over K latents.

Registered by name in :data:`ENCODERS`. Each is a ``torch.nn.Module`` whose ``forward(x)``
returns the distribution q(z | x) with event shape (K,) and batch shape that of the rows.
Their weights are stepped at ``FitConfig.network_lr``, not at the rate of the globals'
variational parameters (see :class:`guides.FitConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

#: Added to every scale so that q never collapses to a point.
MIN_SCALE = 1e-5


class Standardize(nn.Module):
    """A fixed map x -> (x - loc) / scale, set from the data the encoder is built on (the
    mean and sd of each input; a constant input keeps scale 1). Every encoder starts with it,
    so that its learning rate means the same for pixels of sd 0.1 and of sd 6; for a linear
    encoder it changes the parametrization, not the family."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        flat = x.reshape(-1, x.shape[-1])
        sd = flat.std(0) if len(flat) > 1 else torch.ones_like(flat[0])
        self.register_buffer("loc", flat.mean(0))
        self.register_buffer("scale", torch.where(sd > 0, sd, torch.ones_like(sd)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale


class LinearEncoder(nn.Module):
    """q(z | x) = N(A x + b, L L^T): a location linear in x and one full covariance shared by
    every row (L lower triangular with a positive diagonal).

    For probabilistic PCA this family holds the exact posterior of z given x for any
    loadings W: N(M^-1 W^T (x - mean), sigma^2 M^-1) with M = W^T W + sigma^2 I (Bishop
    2006, eq. 12.42), a mean linear in x and a covariance that does not depend on x. (With a
    diagonal covariance it would hold it only for loadings with orthogonal columns, as the
    ML solution with R = I has, and the fit would be pulled toward that rotation.)
    """

    def __init__(self, data: torch.Tensor, latent_dim: int):
        super().__init__()
        self.standardize = Standardize(data)
        self.linear = nn.Linear(data.shape[-1], latent_dim)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, 0.01)
            self.linear.bias.zero_()
        self.raw_diag = nn.Parameter(torch.zeros(latent_dim))
        self.off_diag = nn.Parameter(torch.zeros(latent_dim, latent_dim))

    def scale_tril(self) -> torch.Tensor:
        diag = softplus(self.raw_diag) + MIN_SCALE
        return torch.tril(self.off_diag, diagonal=-1) + torch.diag_embed(diag)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc = self.linear(self.standardize(x))
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril().expand(*loc.shape, -1))


def _perceptron(width: int, hidden_dims: Sequence[int]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers += [nn.Linear(width, h), nn.Softplus()]
        width = h
    return nn.Sequential(*layers), width


class MLPEncoder(nn.Module):
    """q(z | x) = N(loc(x), diag(scale(x)^2)) from a multilayer perceptron with
    ``hidden_dims`` and softplus activations (the encoder of a variational autoencoder)."""

    def __init__(
        self, data: torch.Tensor, latent_dim: int, hidden_dims: Sequence[int] = (128, 128)
    ):
        super().__init__()
        self.standardize = Standardize(data)
        self.body, width = _perceptron(data.shape[-1], hidden_dims)
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        h = self.body(self.standardize(x))
        return dist.Normal(self.loc(h), softplus(self.raw_scale(h)) + MIN_SCALE).to_event(1)


class FullCovarianceEncoder(MLPEncoder):
    """q(z | x) = N(loc(x), L(x) L(x)^T): as :class:`MLPEncoder`, with a lower-triangular
    factor L(x) (positive diagonal) from the same body, so q can carry correlations between
    latents that differ from row to row."""

    def __init__(
        self, data: torch.Tensor, latent_dim: int, hidden_dims: Sequence[int] = (128, 128)
    ):
        super().__init__(data, latent_dim, hidden_dims)
        self.off_diag = nn.Linear(self.loc.in_features, latent_dim * latent_dim)
        with torch.no_grad():
            self.off_diag.weight.mul_(0.01)
            self.off_diag.bias.zero_()

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        h = self.body(self.standardize(x))
        k = self.loc.out_features
        lower = torch.tril(self.off_diag(h).unflatten(-1, (k, k)), diagonal=-1)
        diag = softplus(self.raw_scale(h)) + MIN_SCALE
        return dist.MultivariateNormal(self.loc(h), scale_tril=lower + torch.diag_embed(diag))


class PointEncoder(MLPEncoder):
    """q(z | x) = a point mass at loc(x): with it the ELBO is log p(x | z) + log p(z) at
    z = loc(x), a regularized autoencoder, not a bound on log p(x)."""

    def __init__(
        self, data: torch.Tensor, latent_dim: int, hidden_dims: Sequence[int] = (128, 128)
    ):
        super().__init__(data, latent_dim, hidden_dims)
        del self.raw_scale  # a point has no scale: no parameter that nothing trains

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return dist.Delta(self.loc(self.body(self.standardize(x))), event_dim=1)


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder family: ``build(data, latent_dim)`` returns the module for inputs like
    ``data`` (N, D), standardized by their mean and sd; ``hidden`` says whether it takes
    ``hidden_dims``; ``density``, whether q(z | x) has one (not a point)."""

    name: str
    summary: str
    build: Callable[..., nn.Module]
    hidden: bool = False
    density: bool = True


ENCODERS: dict[str, EncoderSpec] = {
    "linear": EncoderSpec(
        "linear", "location linear in x, one full covariance for all rows", LinearEncoder
    ),
    "mlp": EncoderSpec(
        "mlp",
        "location and diagonal scale from a perceptron (two layers of 128 units by default)",
        MLPEncoder,
        hidden=True,
    ),
    "mlp_full": EncoderSpec(
        "mlp_full",
        "location and a full covariance factor from a perceptron",
        FullCovarianceEncoder,
        hidden=True,
    ),
    "mlp_delta": EncoderSpec(
        "mlp_delta",
        "a point z = f(x) from a perceptron (an autoencoder's encoder)",
        PointEncoder,
        hidden=True,
        density=False,
    ),
}
