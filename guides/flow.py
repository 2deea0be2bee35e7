"""A normalizing-flow guide that starts where the other guides start."""

from __future__ import annotations

import torch
from pyro.distributions import Normal, TransformedDistribution
from pyro.distributions.transforms import AffineTransform, affine_autoregressive
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import constraints

from guides.whiten import Whitened


class _Flow(AutoContinuous):
    """Standard normal pushed through ``num_transforms`` affine autoregressive (IAF) layers
    and a final diagonal affine map ``loc + scale * v``."""

    def __init__(
        self, model, *, num_transforms: int = 2, init_loc_fn=None, init_scale: float = 0.1
    ):
        self._num_transforms = num_transforms
        self._init_scale = init_scale
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        dim = self.latent_dim
        init = self._init_loc()
        self.loc = nn.Parameter(init)
        self.scale = PyroParam(torch.full_like(init, self._init_scale), constraints.positive)
        self.layers = nn.ModuleList(
            [
                affine_autoregressive(dim, hidden_dims=[4 * dim + 4, 4 * dim + 4])
                for _ in range(self._num_transforms)
            ]
        ).to(dtype=init.dtype)

    def _loc_scale(self, *args, **kwargs):
        # The affine map's own location and scale (not the flow's moments), as
        # AutoContinuous.median needs.
        return self.loc, self.scale


class FlowGuide(Whitened, _Flow):
    """A normalizing flow over the unconstrained latent vector that starts where the other
    guides start.

    Pyro's :class:`~pyro.infer.autoguide.AutoIAFNormal` ignores ``init_loc_fn`` and starts at
    zero; on data whose scale is far from 1 (an intercept near 90, say) it spends most of its
    steps moving there and stops short. Here the final affine map starts at the model's
    initial point (in whitened coordinates, see :mod:`guides.whiten`); the autoregressive
    layers start as Pyro initializes them (a standard-normal draw moves by 0.1-1.2 per
    coordinate through them, seen), and the fit adds dependence from there.
    """

    def get_posterior(self, *args, **kwargs):
        base = Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc)).to_event(1)
        # cache_size=1: log q of a draw reuses the layers' forward pass; without it Pyro inverts
        # the autoregressive layers one coordinate at a time (and in the default dtype).
        affine = AffineTransform(self._to_u(self.loc), self.white_scale * self.scale, cache_size=1)
        return TransformedDistribution(base, [*self.layers, affine])
