"""Cost of fitting a Gaussian mixture as the data grow: full-batch against minibatch SVI.

Prints a table (``make bench``); nothing here is a timed test. For N = 10^3, 10^4, 10^5 rows
of a simulated 3-component mixture in 2-D, the mean-field guide is fitted on the enumerated
model (TraceEnum_ELBO) for a fixed number of steps, on every row and on minibatches of
``BATCH`` rows, after the same MAP start. Reported: seconds per SVI step, the whole fit's
seconds (the MAP start sees every row, so it grows with N in both), the final ELBO per row
(every row, 64 particles, both fits alike) and the fit's seconds per 1000 rows.
Pass ``--rows 1000000`` (a comma list) for larger N: the full-batch fit needs about
particles x K x N x D numbers per intermediate, which the minibatch fit does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

import pyro
import torch
from bench_linear_regression import svi_section

from guides import FitConfig, fit_guide
from guides.fit import make_elbo
from zoo import gmm

BATCH = 1000
STEPS = 300


def elbo_per_row(result, post, num_particles: int = 64) -> float:
    """A full-data ELBO estimate of the fitted guide, per row."""
    elbo = make_elbo(num_particles, 1, enumerate=True)
    with torch.no_grad():
        return -elbo.loss(post.model, result.guide, **post.data) / post.num_data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1000,10000,100000")
    args = parser.parse_args()
    logging.getLogger("guides").setLevel(logging.ERROR)  # fixed work: never "converged"
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(False)
    base = FitConfig(num_steps=STEPS, min_steps=10**9, num_particles=8)
    print(
        f"gmm, K=3, D=2, mean_field on the enumerated model, {STEPS} SVI steps after one MAP"
        f" start, minibatch {BATCH} rows, torch threads 1"
    )
    print(
        f"{'rows':>8} {'fit':>10} {'s/step':>9} {'fit s':>8} {'ELBO/row':>10} {'s / 1000 rows':>14}"
    )
    # A first fit pays for one-time set-up (imports, JIT caches) outside the table.
    warm, _ = gmm.simulate(0, num_components=3, num_data=200, num_features=2)
    fit_guide(
        "mean_field",
        gmm.make_posterior(warm, num_components=3, num_starts=1),
        seed=0,
        config=dataclasses.replace(base, num_steps=20),
    )
    for rows in (int(r) for r in args.rows.split(",")):
        frame, _ = gmm.simulate(0, num_components=3, num_data=rows, num_features=2, separation=5.0)
        post = gmm.make_posterior(frame, num_components=3, num_starts=1)
        for label, size in (("full", None), ("minibatch", min(BATCH, rows))):
            config = dataclasses.replace(base, subsample_size=size)
            start = time.perf_counter()
            result = fit_guide("mean_field", post, seed=0, config=config)
            wall = time.perf_counter() - start
            svi_s = result.wall_s - result.start_wall_s
            print(
                f"{rows:>8} {label:>10} {svi_s / result.steps:9.4f} {wall:8.1f}"
                f" {elbo_per_row(result, post):10.4f} {1000 * wall / rows:14.3f}"
            )
    # Every guide's steps per second with the plain and the JIT-compiled ELBO (issue 13's
    # mixture: K=3, N=500, 2-D).
    frame, _ = gmm.simulate(0, num_components=3, num_data=500, num_features=2)
    print("\ngmm, K=3, N=500, D=2")
    svi_section(gmm.make_posterior(frame, num_components=3), "gmm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
