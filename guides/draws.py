"""Draws from a fitted guide pushed through the model, with their importance weights, and
the model's enumerated sites."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.importance import vectorized_importance_weights

from zoo.tensors import to_numpy


def _sample_or_placeholder(site: Mapping[str, object]) -> torch.Tensor:
    """A draw from the site's distribution or, where it has none (ImproperUniform), the
    image of zeros in its support."""
    fn = site["fn"]
    try:
        return fn.sample()
    except NotImplementedError:
        return biject_to(fn.support)(torch.zeros(fn.shape()))


def enumerated_sites(model: Callable[..., object], data: Mapping[str, torch.Tensor]) -> list[str]:
    """Latent sites that ``model`` marks for parallel enumeration (``config_enumerate``).

    Only the structure is read: a site whose prior cannot be sampled (an improper flat prior)
    gets a placeholder value."""
    with torch.no_grad(), poutine.block(), InitMessenger(_sample_or_placeholder):
        trace = poutine.trace(model).get_trace(**data)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and site["infer"].get("enumerate") == "parallel"
    ]


#: Numbers per vectorized pass of :func:`draw` (draws x data values): bounds its memory
#: and keeps buffers small enough to be reused (see comparisons.convert.BUDGET).
DRAW_BUDGET = 500_000


def draw(
    guide: object,
    model: Callable[..., object],
    data: Mapping[str, torch.Tensor],
    num_draws: int,
    *,
    seed: int,
    max_plate_nesting: int = 1,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draws of every latent and deterministic site of ``model`` under ``guide``, with the
    log importance weights log p(x, z) - log q(z) of each draw.

    Vectorized, in as few passes as keep draws x data values under :data:`DRAW_BUDGET`.
    Global sites (outside every plate, as the zoo's are) are returned with the draw axis
    first; per-row sites inside a plate are left out. ``log_w`` is right only for a model
    whose local latents are summed out (``Posterior.sampler_model``): an enumerated or local
    site is drawn from its prior, not summed.
    """
    size = max(1, sum(int(v.numel()) for v in data.values() if torch.is_tensor(v)))
    chunk = max(1, min(num_draws, DRAW_BUDGET // size))
    pyro.set_rng_seed(seed)
    pieces: dict[str, list[np.ndarray]] = {}
    weights = []
    for lo in range(0, num_draws, chunk):
        num = min(chunk, num_draws - lo)
        with torch.no_grad():
            log_w, model_trace, _ = vectorized_importance_weights(
                model,
                guide,
                **data,
                num_samples=num,
                max_plate_nesting=max_plate_nesting,
                normalized=False,
            )
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or (site["is_observed"] and not _is_deterministic(site)):
                continue
            if any(f.name != "num_particles_vectorized" for f in site["cond_indep_stack"]):
                continue  # a per-row site (in a data plate): not a global latent
            value = site["value"].reshape(
                (num,) + tuple(site["value"].shape[1 + max_plate_nesting :])
            )
            pieces.setdefault(name, []).append(to_numpy(value))
        weights.append(to_numpy(log_w.reshape(num)))
    return {k: np.concatenate(v) for k, v in pieces.items()}, np.concatenate(weights)


def _is_deterministic(site: Mapping[str, object]) -> bool:
    return bool(site.get("infer", {}).get("_deterministic"))
