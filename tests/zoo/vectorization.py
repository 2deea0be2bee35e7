"""The vectorization check of STYLE.md: a batched log joint of prior draws equals the unbatched
ones. A product between data and a global latent written ``x @ w`` counts the likelihood once
per draw when the globals carry a batch dim on the left (vectorized particles), which this
check catches (see test_vectorization_check_catches_matmul)."""

from __future__ import annotations

import inspect

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample


def latent_names(model, data) -> list[str]:
    trace = poutine.trace(model).get_trace(**data)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def prior_draws(
    model, data, num_draws: int, seed: int, *, obs: str
) -> list[dict[str, torch.Tensor]]:
    """Prior draws of every latent site (``obs`` left out of the data; a model of the
    observation alone, such as a mixture, is told how many rows to draw by ``num_data``)."""
    names = latent_names(model, data)
    prior_data = {k: v for k, v in data.items() if k != obs}
    if "num_data" in inspect.signature(model).parameters:
        prior_data["num_data"] = data[obs].shape[0]
    pyro.set_rng_seed(seed)
    draws = []
    for _ in range(num_draws):
        trace = poutine.trace(model).get_trace(**prior_data)
        draws.append({name: trace.nodes[name]["value"].detach() for name in names})
    return draws


def log_joint(model, data, values) -> torch.Tensor:
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(**data)
    return trace.log_prob_sum()


def log_joints(model, data, draws) -> tuple[torch.Tensor, torch.Tensor]:
    """Log joint of each draw, one at a time and all at once in a plate at dim -2."""
    unbatched = torch.stack([log_joint(model, data, d) for d in draws])
    # Global sites get the draws dim at -2 (left of the data plate's -1); per-row sites
    # already fill the data plate, so the draws dim goes just left of it.
    trace = poutine.trace(poutine.condition(model, data=draws[0])).get_trace(**data)
    stacked = {}
    for k in draws[0]:
        values = torch.stack([d[k] for d in draws])
        stacked[k] = values if trace.nodes[k]["cond_indep_stack"] else values.unsqueeze(1)
    with pyro.plate("draws", len(draws), dim=-2):
        trace = poutine.trace(poutine.condition(model, data=stacked)).get_trace(**data)
    trace.compute_log_prob()
    batched = torch.zeros(len(draws))
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["log_prob"]
        lp = lp.reshape((1,) * max(0, 2 - lp.dim()) + lp.shape)
        # Everything but the draws dim is summed: a site broadcast over an extra dim of size
        # NUM_DRAWS (a mis-placed batch dim) is then counted NUM_DRAWS times and shows up.
        batched = batched + lp.movedim(-2, 0).reshape(lp.shape[-2], -1).sum(-1)
    return unbatched, batched
