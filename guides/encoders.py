"""Encoder networks of amortized guides: x (..., D) -> location and scale of q(z | x) (..., K).

Registered by name in :data:`ENCODERS`. Each is a ``torch.nn.Module`` whose ``forward(x)``
returns ``(loc, scale)`` with ``scale > 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import softplus

#: Added to every scale so that q never collapses to a point.
MIN_SCALE = 1e-5


class LinearEncoder(nn.Module):
    """loc = A x + b, scale = softplus(c): a location linear in x and one diagonal scale
    shared by every row.

    For probabilistic PCA this family holds the exact posterior of z given x whenever the
    loadings have orthogonal columns (as the ML solution with rotation R = I does):
    N(M^-1 W^T (x - mean), sigma^2 M^-1) with M = W^T W + sigma^2 I diagonal (Bishop 2006,
    eq. 12.42).
    """

    def __init__(self, input_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, latent_dim)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, 0.01)
            self.linear.bias.zero_()
        self.raw_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.linear(x)
        return loc, (softplus(self.raw_scale) + MIN_SCALE).expand_as(loc)


class MLPEncoder(nn.Module):
    """loc and scale from a multilayer perceptron with ``hidden_dims`` and softplus
    activations; the scale through a softplus."""

    def __init__(self, input_dim: int, latent_dim: int, hidden_dims: Sequence[int] = (128, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.Softplus()]
            width = h
        self.body = nn.Sequential(*layers)
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), softplus(self.raw_scale(h)) + MIN_SCALE


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder family: ``build(input_dim, latent_dim)`` returns the module."""

    name: str
    summary: str
    build: Callable[[int, int], nn.Module]


ENCODERS: dict[str, EncoderSpec] = {
    "linear": EncoderSpec(
        "linear", "location linear in x, one diagonal scale for all rows", LinearEncoder
    ),
    "mlp": EncoderSpec(
        "mlp", "location and scale from a two-layer perceptron (128 units each)", MLPEncoder
    ),
}
