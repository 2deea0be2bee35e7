"""The importance-weighted bound (IWAE, Burda, Grosse and Salakhutdinov 2016), per row.

For a model whose latents are all per-row (a VAE), with k draws z_1..z_k ~ q(z | x_n)::

    L_k(x_n) = log (1/k) sum_i p(x_n, z_i) / q(z_i | x_n)  <=  log p(x_n)

L_1 is the ELBO; L_k grows with k toward log p(x_n). The log-mean-exp is taken per row,
never over the sum of a batch's rows (which would be a far looser bound: importance sampling
in the joint space of every row's latents). Pyro's ``RenyiELBO(alpha=0)`` takes it over the
whole trace, hence this class.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import Trace_ELBO


class IWAE(Trace_ELBO):
    """The per-row importance-weighted bound with ``num_particles`` = k draws, as an ELBO
    object SVI can step (its negative is the loss). Every latent site must lie in the data
    plate (named ``plate``); the weight of a minibatch's rows (N / batch size) is read from
    the observed site's scale and multiplies the sum of the rows' bounds."""

    def __init__(self, num_particles: int, max_plate_nesting: int = 1, plate: str = "data"):
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.plate = plate

    def row_log_weights(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """log p(x_n, z_i) - log q(z_i | x_n), shape (k, rows), and the rows' weight."""
        model_trace, guide_trace = self._get_vectorized_trace(model, guide, args, kwargs)
        log_w, scale = 0.0, 1.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not any(f.name == self.plate for f in site["cond_indep_stack"]):
                    raise ValueError(
                        f"IWAE needs every sample site in the plate '{self.plate}'; '{name}'"
                        " is outside it (a global latent): use the ELBO"
                    )
                log_w = log_w + sign * site["unscaled_log_prob"]
                if site["is_observed"]:  # N / B of a minibatch, one number for every row
                    scale = float(torch.as_tensor(site["scale"]).reshape(-1)[0])
        return log_w.reshape(self.num_particles, -1), scale

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w, scale = self.row_log_weights(model, guide, *args, **kwargs)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())
