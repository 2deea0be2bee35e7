"""Replications per minute of ``zoo calibrate`` with 1 and 2 Dask workers (the scaling ratio).

Prints a table (``make bench``); nothing here is a timed test. The job: simulation-based
calibration of ``exact`` and ``mean_field`` on the regression of diabetes' s1 and s2 (442
rows, conjugate prior, smoke preset), 12 replications, each worker a single-thread process
of a LocalCluster. Each run starts its own cluster in a fresh folder; the wall time is the
whole ``calibrate`` call (cluster start, replications, report), as a user waits for it.
"""

from __future__ import annotations

import sys
import tempfile
import time

from comparisons.calibration import calibrate
from zoo.tensors import cores

REPLICATIONS = 12


def main() -> int:
    print(f"\nzoo calibrate, {REPLICATIONS} replications of exact and mean_field on diabetes"
          f" (s1, s2), smoke preset; this machine has {cores()} cores")  # fmt: skip
    print(f"{'workers':>8} {'wall s':>8} {'replications/min':>17} {'mean_field s/replication':>25}")
    rates = {}
    for workers in (1, 2):
        if workers > cores():
            print(f"{workers:>8} skipped: fewer cores")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            results = calibrate(
                "linear_regression", "diabetes", {"features": ["s1", "s2"], "prior": "conjugate"},
                ["exact", "mean_field"], replications=REPLICATIONS, seed=0, preset="smoke",
                out_dir=tmp, workers=workers, progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
        rates[workers] = REPLICATIONS / wall * 60
        per = results["calibration"]["methods"]["mean_field"]["wall_s_mean"]
        print(f"{workers:>8} {wall:8.1f} {rates[workers]:17.2f} {per:25.2f}")
    if len(rates) == 2:
        print(f"replications/min, 2 workers / 1 worker: {rates[2] / rates[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
