"""The zoo's NUTS side by side with NumPyro's, on the same models, data and priors.

Prints a table (``make bench``); nothing here is a timed test. Needs the optional ``bench``
extra (``pip install -e '.[bench]'``: NumPyro and JAX on the CPU); without it the section is
skipped with a one-line note.

Two posteriors, each written once as the zoo's Pyro model and once as a NumPyro model with
the same priors (``default_priors`` of the zoo):
- the regression of issue 13: N=1000 rows, D=10 correlated features (simulated, seed 0),
  the zoo's weakly informative priors, centered predictors;
- a Gaussian mixture: K=3 components, N=500 rows in 2-D (simulated, seed 0), the assignment
  summed out (MixtureSameFamily), each chain started from the zoo's k-means++ values.

Two run lengths: 2 chains x 500 warm-up + 500 draws, and the command line's default (the
``full`` preset: 4 chains x 1000 + 1000). Figures: wall time of the whole run (NumPyro's
compilation included, the zoo's set-up included), min bulk ESS over every scalar of the
sampled sites (mixture draws relabelled by the zoo's rule first, for both), ESS per second,
and the ratio to NumPyro with its chains one after another (NumPyro's default: a diagonal
mass matrix; the zoo adapts a dense one for posteriors this small, so NumPyro runs once
more with ``dense_mass=True``). The zoo runs ``nuts`` (its own sampler,
every chain in one batched evaluation of the compiled potential) and ``nuts_pyro`` (Pyro's
kernel, chains in processes of their own); NumPyro runs its chains one after another
("sequential"), as one batched computation ("vectorized") and, where the machine has a core
per chain, in parallel ("parallel").
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

import arviz as az
import numpy as np
import pyro
import torch

from comparisons import compare
from comparisons.runners import PRESETS
from zoo import gmm
from zoo import linear_regression as lr

RUNS = (("2 x 500+500", 2, 500, 500), ("full: 4 x 1000+1000", 4, 1000, 1000))


def _numpyro():
    """numpyro and jax set up for float64 on every core, or None when not installed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={cores}")
    try:
        import jax
        import numpyro
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return numpyro


def min_bulk_ess(post, draws: dict[str, np.ndarray]) -> float:
    """Min bulk ESS over every scalar of the sampled sites, after the model's relabelling."""
    if post.relabel is not None:
        draws = post.relabel(draws).draws
    ess = az.ess(az.from_dict(posterior=draws), method="bulk")
    return float(min(np.min(ess[v].values) for v in ess.data_vars))


def regression():
    frame, _ = lr.simulate(0, num_data=1000, num_features=10, correlation=0.3)
    post = lr.make_posterior(frame, target="y")
    x = frame.drop(columns="y").to_numpy()
    y = frame["y"].to_numpy()
    priors = lr.default_priors(x, y)

    def model(xc, y):
        import numpyro
        import numpyro.distributions as nd

        sigma = numpyro.sample("sigma", nd.Exponential(1.0 / priors.sigma_scale))
        coef = numpyro.sample("coef", nd.Normal(0.0, np.asarray(priors.coef_scale)).to_event(1))
        a = numpyro.sample(
            "intercept_centered", nd.Normal(priors.intercept_loc, priors.intercept_scale)
        )
        with numpyro.plate("data", len(y)):
            numpyro.sample("y", nd.Normal(a + xc @ coef, sigma), obs=y)

    data = {"xc": x - x.mean(0), "y": y}
    return "regression N=1000 D=10", post, model, data, ("sigma", "coef", "intercept_centered")


def mixture():
    frame, _ = gmm.simulate(0, num_components=3, num_data=500, num_features=2)
    post = gmm.make_posterior(frame, num_components=3)
    x = frame.to_numpy()
    priors = gmm.default_priors(x)

    def model(x):
        import numpyro
        import numpyro.distributions as nd

        k, d = 3, x.shape[1]
        weights = numpyro.sample("weights", nd.Dirichlet(np.full(k, priors.concentration)))
        loc_loc = np.broadcast_to(np.asarray(priors.loc_loc), (k, d))
        loc_scale = np.broadcast_to(np.asarray(priors.loc_scale), (k, d))
        locs = numpyro.sample("locs", nd.Normal(loc_loc, loc_scale).to_event(2))
        log_median = np.broadcast_to(np.log(np.asarray(priors.scale_median)), (k, d))
        scales = numpyro.sample("scales", nd.LogNormal(log_median, priors.scale_spread).to_event(2))
        mix = nd.MixtureSameFamily(nd.Categorical(weights), nd.Normal(locs, scales).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", mix, obs=x)

    return "mixture K=3 N=500 2-D", post, model, {"x": x}, ("weights", "locs", "scales")


def run_zoo(post, method, chains, warmup, samples, sites) -> tuple[float, float]:
    preset = dataclasses.replace(
        PRESETS["full"], num_chains=chains, num_warmup=warmup, num_samples=samples
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = compare(post, methods=[method], preset=preset, out_dir=tmp, seed=0)
        wall = time.perf_counter() - start
    draws = result.idata[method].posterior
    return wall, min_bulk_ess(post, {k: draws[k].values for k in sites})


def run_numpyro(numpyro, post, model, data, chains, warmup, samples, method, sites,
                dense=False):  # fmt: skip
    import jax
    from numpyro.distributions import biject_to, constraints
    from numpyro.infer import MCMC, NUTS

    init = None
    if post.init_values is not None:  # each chain from the zoo's start for it
        support = {"weights": constraints.simplex, "scales": constraints.positive,
                   "sigma": constraints.positive}  # fmt: skip
        starts = [dict(post.init_values(c)) for c in range(chains)]
        init = {
            k: np.stack(
                [
                    np.asarray(biject_to(support.get(k, constraints.real)).inv(np.asarray(s[k])))
                    for s in starts
                ]
            )
            for k in starts[0]
        }
    start = time.perf_counter()
    mcmc = MCMC(NUTS(model, dense_mass=dense), num_warmup=warmup, num_samples=samples,
                num_chains=chains, chain_method=method, progress_bar=False)  # fmt: skip
    mcmc.run(jax.random.PRNGKey(0), init_params=init, **data)
    draws = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    return wall, min_bulk_ess(post, {k: np.asarray(draws[k]) for k in sites})


def main() -> int:
    numpyro = _numpyro()
    if numpyro is None:
        print("zoo vs NumPyro: skipped (NumPyro not installed; pip install -e '.[bench]')")
        return 0
    import jax

    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(False)
    print(f"\nzoo NUTS vs NumPyro {numpyro.__version__} NUTS, float64, whole-run wall time")
    print(f"{'posterior':<24} {'run':<20} {'system':<22} {'wall s':>7} {'min ESS':>8}"
          f" {'ESS/s':>7} {'/ NumPyro seq':>14}")  # fmt: skip
    for build in (regression, mixture):
        name, post, model, data, sites = build()
        for label, chains, warmup, samples in RUNS:
            rows = {
                f"zoo {method}": run_zoo(post, method, chains, warmup, samples, sites)
                for method in ("nuts", "nuts_pyro")
            }
            for method in ("sequential", "vectorized", "parallel"):
                if method == "parallel" and jax.local_device_count() < chains:
                    continue  # NumPyro would run them in turn: one device per chain
                rows[f"NumPyro {method}"] = run_numpyro(
                    numpyro, post, model, data, chains, warmup, samples, method, sites
                )
            # NumPyro with a dense mass matrix too, as the zoo adapts one here.
            rows["NumPyro seq., dense"] = run_numpyro(
                numpyro, post, model, data, chains, warmup, samples, "sequential", sites,
                dense=True,
            )  # fmt: skip
            base = rows["NumPyro sequential"][1] / rows["NumPyro sequential"][0]
            for system, (wall, ess) in rows.items():
                print(f"{name:<24} {label:<20} {system:<22} {wall:7.1f} {ess:8.0f}"
                      f" {ess / wall:7.1f} {ess / wall / base:14.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
