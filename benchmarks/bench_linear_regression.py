"""Cost of the zoo on linear regression with N=1000 rows and D=10 features.

Prints a table (run with `make bench`); nothing here is a timed test. Figures:
1. NUTS bulk ESS per second through `zoo` (comparisons.compare: `nuts`, the zoo's sampler
   with its chains batched, and `nuts_pyro`, Pyro's kernel with its chains in turn and in
   parallel) and
   through a bare Pyro NUTS call on the same model, data, chains and seeds;
2. steps per second of each guide's fit (SVI steps; L-BFGS iterations for delta and
   laplace), with the plain ELBO and with the JIT-compiled one;
3. the zoo's own overhead (conversion, log-likelihood, metrics, report) as a share of the
   wall time of a whole comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time

import arviz as az
import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_median

from comparisons import Preset, compare
from comparisons.runners import PRESETS
from guides import FitConfig, fit_guide
from zoo import MODELS
from zoo import linear_regression as lr

CHAINS, WARMUP, SAMPLES = 2, 500, 500


def bare_pyro_nuts(post) -> tuple[float, float]:
    """Wall time and min bulk ESS of bare Pyro NUTS, chains run as the zoo runs them."""
    samples = []
    start = time.perf_counter()
    for chain in range(CHAINS):
        pyro.set_rng_seed(chain)
        kernel = NUTS(
            post.model,
            jit_compile=True,
            ignore_jit_warnings=True,
            init_strategy=init_to_median(num_samples=15),
        )
        mcmc = MCMC(kernel, num_samples=SAMPLES, warmup_steps=WARMUP, disable_progbar=True)
        mcmc.run(**post.data)
        samples.append({k: v.numpy() for k, v in mcmc.get_samples().items()})
    wall = time.perf_counter() - start
    draws = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    ess = az.ess(az.from_dict(posterior=draws), method="bulk")
    return wall, float(min(np.min(ess[v].values) for v in ess.data_vars))


def svi_section(post, model: str) -> None:
    """Steps per second of each guide's fit, with the plain ELBO and with the JIT-compiled
    one (FitConfig.jit), in one run."""
    print(
        "\nguide        steps  grad evals   steps/s plain   steps/s JIT   JIT / plain  elbo_jit"
        "   (SVI: 400 steps from the prior median, no early stop;"
        " delta, laplace: L-BFGS iterations to convergence, Hessian rows as 2 evals)"
    )
    # Fixed work: every SVI fit runs all its steps, so its "not converged" warning is expected.
    logging.getLogger("guides").setLevel(logging.ERROR)
    for name in MODELS[model].guides:
        rates, res = [], None
        for jit in (False, True):
            fixed = FitConfig(num_steps=400, min_steps=10**9, init="median", jit=jit)
            res = fit_guide(name, post.model, seed=0, config=fixed, **post.data)
            rates.append(res.steps / res.wall_s)
        state = res.info.get("elbo_jit", "n/a (L-BFGS)")
        ratio = f"{rates[1] / rates[0]:11.2f}" if state == "on" else f"{'-':>11}"
        print(
            f"{name:<11} {res.steps:6d}  {res.grad_evals:10d}  {rates[0]:14.1f}  {rates[1]:12.1f}"
            f"  {ratio}  {state}"
        )


def dense_mass_section() -> None:
    """NUTS with a diagonal and with a dense mass matrix on kidiq with the interaction
    mom_hs x mom_iq (its coefficients correlated at 0.99 after centering), the smoke preset."""
    frame = lr.DATASETS["kidiq"].load(0).copy()
    frame["mom_hs_x_mom_iq"] = frame["mom_hs"] * frame["mom_iq"]
    post = lr.make_posterior(
        frame, target="kid_score", features=["mom_hs", "mom_iq", "mom_hs_x_mom_iq"]
    )
    print("\nkidiq with mom_hs x mom_iq, smoke preset (4 chains x 300 + 300), nuts")
    print("mass matrix   wall s (whole run)   min bulk ESS   ESS/s   grad evals")
    rates = {}
    for up_to, label in ((0, "diagonal"), (50, "dense")):
        preset = dataclasses.replace(PRESETS["smoke"], dense_mass_up_to=up_to)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = compare(post, methods=["nuts"], preset=preset, out_dir=tmp, seed=0)
            wall = time.perf_counter() - start
        rec = result.results["methods"]["nuts"]
        assert rec["diagnostics"]["mass_matrix"] == label
        ess = rec["diagnostics"]["ess_bulk_min"]
        rates[label] = ess / wall
        print(f"{label:<12} {wall:18.1f}   {ess:12.0f}   {ess / wall:5.1f}"
              f"   {rec['cost']['grad_evals']:10d}")  # fmt: skip
    print(f"whole-run ESS/s, dense / diagonal: {rates['dense'] / rates['diagonal']:.2f}")


def main() -> int:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(False)
    frame, _ = lr.simulate(0, num_data=1000, num_features=10, correlation=0.3)
    post = lr.make_posterior(frame, target="y")
    preset = Preset(
        "bench",
        num_chains=CHAINS,
        num_warmup=WARMUP,
        num_samples=SAMPLES,
        num_draws=2000,
        fit=FitConfig(num_steps=3000),
    )
    print(
        f"linear_regression, N=1000, D=10, torch threads 1, NUTS {CHAINS} chains x "
        f"{WARMUP}+{SAMPLES}"
    )

    print("\nNUTS                                         wall s   min bulk ESS   ESS/s")
    rates = {}
    runs = (("nuts_pyro", False, "Pyro's, one after another"),
            ("nuts_pyro", True, "Pyro's, chains in parallel"),
            ("nuts", None, "zoo's, chains batched"))  # fmt: skip
    for method, parallel, label in runs:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = compare(
                post,
                methods=[method],
                out_dir=tmp,
                seed=0,
                preset=dataclasses.replace(preset, chains_in_parallel=parallel),
            )
            zoo_wall = time.perf_counter() - start  # fmt: skip
        rec = result.results["methods"][method]
        zoo_ess = rec["diagnostics"]["ess_bulk_min"]
        rates[label] = zoo_ess / zoo_wall
        print(
            f"{label:<28} (sampling)   {rec['cost']['wall_s']:8.1f}   {zoo_ess:12.0f}   "
            f"{zoo_ess / rec['cost']['wall_s']:5.1f}"
        )
        print(
            f"{label:<28} (whole run)  {zoo_wall:8.1f}   {zoo_ess:12.0f}   "
            f"{zoo_ess / zoo_wall:5.1f}"
        )
    base = rates["Pyro's, one after another"]
    for label, rate in rates.items():
        print(f"whole-run ESS/s, {label} / Pyro's one after another: {rate / base:.2f}")
    bare_wall, bare_ess = bare_pyro_nuts(post)
    bare_rate = bare_ess / bare_wall
    print(
        f"bare Pyro NUTS, one after another              {bare_wall:8.1f}   {bare_ess:12.0f}   "
        f"{bare_rate:5.1f}"
    )

    dense_mass_section()
    svi_section(post, "linear_regression")

    with tempfile.TemporaryDirectory() as tmp:
        result = compare(post, preset=preset, out_dir=tmp, seed=0)
    t = dict(result.results["timings"], write_s=result.write_s)
    overhead = t["conversion_s"] + t["metrics_s"] + t["write_s"]
    print("\nwhole comparison (all methods)      s")
    for key in ("methods_s", "conversion_s", "metrics_s", "total_s", "write_s"):
        print(f"  {key:<30} {t[key]:7.1f}")
    whole = t["total_s"] + t["write_s"]
    print(f"  zoo overhead share of wall time  {overhead / whole:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
