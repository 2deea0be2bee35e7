"""From a method's draws to ArviZ InferenceData, with a log_likelihood group built here.

``az.from_pyro`` drops the log_likelihood group for models whose vector latents sit outside
a plate (DESIGN.md section 4), so the pointwise log-likelihood is computed from one
vectorized trace of the model with every draw at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import arviz as az
import numpy as np
import pyro
import torch
from pyro import poutine

from comparisons.runners import MethodRun
from zoo import Posterior
from zoo.tensors import to_numpy

#: Numbers per vectorized trace (draws x data values). Small passes are faster, not only
#: leaner: on PPCA of digits (2000 draws x 1438 rows x 64) 2e7 a pass took 8.7 s, 6.1 of
#: them in the kernel mapping large buffers, and 5e5 took 3.6 s (seen).
BUDGET = 500_000


def flatten(draws: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """Draws (chain, draw, *shape) as (chain * draw, *shape), and the (chain, draw) shape."""
    if not draws:
        return {}, (0, 0)
    chains, num = next(iter(draws.values())).shape[:2]
    return {k: v.reshape((chains * num,) + v.shape[2:]) for k, v in draws.items()}, (chains, num)


def _num_draws(latent: Mapping[str, np.ndarray]) -> int:
    if not latent:
        raise ValueError(
            "no draws of global latent sites to push through the model; a model without"
            " global latents is evaluated by its own hook (Posterior.evaluate)"
        )
    return len(next(iter(latent.values())))


def _trace_chunk(
    posterior: Posterior, latent: Mapping[str, np.ndarray], data: Mapping[str, torch.Tensor]
) -> pyro.poutine.Trace:
    num = _num_draws(latent)
    m = posterior.max_plate_nesting
    values = {
        k: torch.as_tensor(v, dtype=posterior.dtype, device=posterior.device).reshape(
            (num,) + (1,) * m + v.shape[1:]
        )
        for k, v in latent.items()
    }
    model = poutine.condition(posterior.forms.likelihood, data=values)
    with torch.no_grad(), pyro.plate("_draws", num, dim=-(m + 1)):
        return poutine.trace(model).get_trace(**data)


def push_forward(
    posterior: Posterior,
    latent: Mapping[str, np.ndarray],
    data: Mapping[str, torch.Tensor],
    *,
    seed: int = 0,
    mean: bool = False,
) -> dict[str, np.ndarray]:
    """Run the likelihood form (``posterior.forms.likelihood``: every local latent summed
    or integrated out) vectorized over draws of its global latent sites.

    ``latent`` maps latent sites to arrays (S, *shape). Returns, each with S first:
    the deterministic sites, ``log_lik`` (S, N) of the observed site given ``data``, and,
    where ``data`` lacks the observation, its predictive draws as ``<obs>`` and, with
    ``mean``, the model's return value (the regression's mean, (S, N)) as ``_mean``.
    """
    pyro.set_rng_seed(seed)
    total = _num_draws(latent)
    m = posterior.max_plate_nesting
    pieces: dict[str, list[np.ndarray]] = {}
    size = max(1, sum(int(v.numel()) for v in data.values() if torch.is_tensor(v)))
    step = max(1, min(total, BUDGET // size))
    for lo in range(0, total, step):
        chunk = {k: v[lo : lo + step] for k, v in latent.items()}
        num = _num_draws(chunk)
        tr = _trace_chunk(posterior, chunk, data)
        out: dict[str, np.ndarray] = {}
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or name == "_draws":
                continue
            value = site["value"]
            if site.get("infer", {}).get("_deterministic"):
                out[name] = to_numpy(value.reshape((num,) + tuple(value.shape[1 + m :])))
            elif name == posterior.obs_site:
                lp = site["fn"].log_prob(value)
                out["log_lik"] = to_numpy(lp.expand(site["fn"].batch_shape).reshape(num, -1))
                if posterior.obs_site not in data:
                    event = value.shape[value.dim() - site["fn"].event_dim :]
                    out[name] = to_numpy(value.reshape((num, -1, *event)))
        if mean:
            ret = tr.nodes["_RETURN"]["value"]
            out["_mean"] = to_numpy(ret.expand(num, ret.shape[-1]))
        for k, v in out.items():
            pieces.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in pieces.items()}


def _unflat(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return values.reshape(shape + values.shape[1:])


def attach_log_lik(posterior: Posterior, run: MethodRun, *, seed: int = 0) -> None:
    """Push a run's draws of the global sites through the likelihood form: its
    deterministic sites join ``run.draws`` and its pointwise log-likelihood, (chain, draw,
    rows), is ``run.log_lik[<obs>]`` (and ``<obs>_test`` on held-out rows). A run without
    such draws (a model without global latents) is left as it is, as is one of a posterior
    whose rows' log-likelihood does not measure prediction (``Posterior.pointwise``)."""
    if not run.draws or not posterior.pointwise:
        return
    latent, shape = flatten(run.draws)
    pushed = push_forward(posterior, latent, posterior.data, seed=seed)
    for k, v in pushed.items():
        if k not in ("log_lik", "_mean") and k not in run.draws:
            run.draws[k] = _unflat(v, shape)
            run.pushed += (k,)
    obs = posterior.obs_site
    run.log_lik = {obs: _unflat(pushed["log_lik"], shape)}
    if posterior.test_data is not None:
        test = push_forward(posterior, latent, posterior.test_data, seed=seed)
        run.log_lik[f"{obs}_test"] = _unflat(test["log_lik"], shape)


def _predictive(posterior: Posterior, run: MethodRun, seed: int, num: int):
    """Posterior predictive draws on the report's grid, with their dims and coords."""
    grid, obs = posterior.grid, posterior.obs_site
    latent, shape = flatten({k: run.draws[k] for k in run.draws if k in _latent(run)})
    total = shape[0] * shape[1]
    pick = np.random.default_rng(seed).choice(total, size=num, replace=total < num)
    grid_draws = push_forward(
        posterior, {k: v[pick] for k, v in latent.items()}, grid.data, seed=seed, mean=True
    )
    predictive = {f"{obs}_grid": grid_draws[obs][None], "mean_grid": grid_draws["_mean"][None]}
    dims = {f"{obs}_grid": ["grid"], "mean_grid": ["grid"]}
    return predictive, dims, {"grid": grid.values.tolist()}


def _latent(run: MethodRun) -> set[str]:
    """The sites a method drew (not those pushed forward from them)."""
    return set(run.draws) - set(run.pushed)


def _constant(posterior: Posterior, run: MethodRun) -> tuple[dict, dict]:
    """constant_data: the grid's x values, known row labels, per-row outputs of a method."""
    constant: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    if posterior.grid is not None:
        constant["plot_x"] = np.asarray(posterior.grid.observed_x)
        dims["plot_x"] = ["obs"]
    if posterior.row_labels is not None:
        constant["row_label"] = np.asarray(posterior.row_labels)
        dims["row_label"] = ["obs"]
    for name, (values, value_dims) in run.per_row.items():
        constant[name] = np.asarray(values)
        dims[name] = list(value_dims)
    return constant, dims


def _observed(posterior: Posterior, coords: Mapping[str, list]) -> az.InferenceData:
    """The observation in a group of its own: its dims ((obs, feature) for a table of
    features) cannot be told apart by ArviZ from those of the log-likelihood of that name."""
    obs = posterior.obs_site
    observed = to_numpy(posterior.data[obs])
    obs_dims = ["obs"]
    if observed.ndim == 2:
        named = "feature" in coords and len(coords["feature"]) == observed.shape[1]
        obs_dims.append("feature" if named else "obs_feature")
    return az.from_dict(observed_data={obs: observed}, dims={obs: obs_dims}, coords=coords)


def _metadata(posterior: Posterior, run: MethodRun) -> dict[str, object]:
    """What the report reads of a method besides its groups (the InferenceData's attrs)."""
    meta = {
        "method": run.method,
        "model": posterior.model_name,
        "dataset": posterior.dataset,
        "zoo": json.dumps(
            {
                "point": run.point,
                "sites": list(posterior.sites),
                "accuracy_sites": list(posterior.accuracy_sites or posterior.sites),
                "description": dict(posterior.description),
                "grid_label": posterior.grid.label if posterior.grid is not None else "",
                "trace_label": run.trace_label,
            }
        ),
    }
    if run.elbo is not None:
        meta["elbo"] = np.asarray(run.elbo, dtype=float)
    return meta


def to_inference_data(
    posterior: Posterior, run: MethodRun, *, seed: int = 0, num_predictive: int = 500
) -> az.InferenceData:
    """ArviZ InferenceData of one method: posterior (reported and latent sites, and the
    identified quantities of ``posterior.identified``), log_likelihood (``run.log_lik``,
    computed here by :func:`attach_log_lik` where the run has none yet), sample_stats,
    observed_data, posterior_predictive on the report grid, and constant_data (the grid's
    x values, known row labels, per-row outputs of the method such as an encoder's latent
    means); the method's metadata and objective trace in the InferenceData's attrs.

    VI is one chain of draws from q; a point estimate is one chain of one draw. A method
    on a model without global latents has no posterior group, only what it measured.
    """
    if run.draws and not run.log_lik:
        attach_log_lik(posterior, run, seed=seed)
    post = dict(run.draws)
    if posterior.identified is not None and run.draws:
        # What the data identify (PPCA's C = W W^T + sigma^2 I), beside the raw sites.
        for k, v in posterior.identified(run.draws).items():
            post.setdefault(k, np.asarray(v))
    obs = posterior.obs_site
    dims = {k: list(v) for k, v in posterior.dims.items()}
    dims.update({obs: ["obs"], f"{obs}_test": ["test_obs"]})
    coords = {k: list(v) for k, v in posterior.coords.items()}
    predictive = None
    if posterior.grid is not None and run.draws:
        predictive, grid_dims, grid_coords = _predictive(posterior, run, seed, num_predictive)
        dims.update(grid_dims)
        coords.update(grid_coords)
    sample_stats = dict(run.sample_stats)
    if run.log_weights is not None:
        sample_stats["log_weight"] = run.log_weights
    constant, constant_dims = _constant(posterior, run)
    dims.update(constant_dims)
    idata = az.from_dict(
        posterior=post or None,
        log_likelihood=run.log_lik or None,
        sample_stats=sample_stats or None,
        posterior_predictive=predictive,
        constant_data=constant or None,
        dims=dims,
        coords=coords,
    )
    idata.extend(_observed(posterior, coords))
    idata.attrs.update(_metadata(posterior, run))
    return idata
