"""Prior families shared by the models."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions.transforms import PowerTransform

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


def sigma_distribution(
    kind: str,
    scale: float,
    *,
    dtype: torch.dtype,
    device: torch.device | None = None,
    conjugate_shape: float | None = None,
) -> dist.Distribution:
    """The prior of a model's noise sd ``sigma``, as a distribution on sigma.

    Without ``conjugate_shape``, :func:`scale_prior` of family ``kind`` at ``scale``; with it
    (a0, the conjugate regression's), ``sigma^2 ~ InverseGamma(a0, a0 scale^2)`` and sigma its
    square root (``kind`` is then unused).
    """
    scale_t = torch.tensor(scale, dtype=dtype, device=device)
    if conjugate_shape is None:
        return scale_prior(kind, scale_t)
    shape = torch.tensor(conjugate_shape, dtype=dtype, device=device)
    variance = dist.InverseGamma(shape, shape * scale_t**2)
    half = torch.tensor(0.5, dtype=dtype, device=device)
    return dist.TransformedDistribution(variance, [PowerTransform(half)])


def draw_from_prior(
    model,
    seed: int,
    sites: tuple[str, ...],
    obs_site: str,
    *args,
    dtype: torch.dtype = torch.float64,
    **kwargs,
) -> tuple[dict, np.ndarray]:
    """One run of ``model(*args, **kwargs)`` with no data, seeded ``seed``, in ``dtype``
    (the process's random streams and default dtype left as they were): the values of
    ``sites`` (the truth of a calibration replication) and of ``obs_site`` (the data
    simulated from them), as float arrays."""
    from pyro import poutine

    from zoo.tensors import to_numpy

    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)  # the models draw without data in the default dtype
        try:
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        finally:
            torch.set_default_dtype(default)
    truth = {s: to_numpy(trace.nodes[s]["value"]).astype(float) for s in sites}
    return truth, to_numpy(trace.nodes[obs_site]["value"]).astype(float)
