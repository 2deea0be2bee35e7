"""Prior families shared by the models."""

from __future__ import annotations

import pyro.distributions as dist
import torch

#: The families of a positive scale's prior (``sigma``), by name.
SCALE_PRIORS = ("exponential", "half_normal", "half_cauchy")


def scale_prior(kind: str, scale: torch.Tensor) -> dist.Distribution:
    """A prior on a positive scale: ``exponential`` (mean ``scale``), ``half_normal`` or
    ``half_cauchy`` (scale ``scale``)."""
    if kind == "exponential":
        return dist.Exponential(1.0 / scale)
    if kind == "half_normal":
        return dist.HalfNormal(scale)
    if kind == "half_cauchy":
        return dist.HalfCauchy(scale)
    raise ValueError(f"unknown scale prior '{kind}'; choose from: {', '.join(SCALE_PRIORS)}")
