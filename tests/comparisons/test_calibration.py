"""Simulation-based calibration (comparisons.calibration): the judgement of ranks has its
stated false-alarm rate on uniform ranks and names each kind of departure; a replication
ranks the truth among each method's draws; on the conjugate regression with correlated
features, run on a 2-worker Dask cluster, exact is calibrated and mean-field over-confident."""

from __future__ import annotations

import numpy as np
import pytest

from comparisons.calibration import NUM_RANK_DRAWS, judge, replication

L = NUM_RANK_DRAWS


def _ranks(rng, n: int, sd: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Ranks of n true values theta ~ N(0, 1) among L draws of a 'posterior' N(shift, sd^2)
    (the exact one is N(0, 1) itself: the truth is then one more draw)."""
    truth = rng.normal(size=n)
    draws = rng.normal(shift, sd, size=(n, L))
    return (draws < truth[:, None]).sum(1)


def test_uniform_ranks_are_flagged_at_the_stated_rate():
    # A calibrated method with 4 parameters: each band at 1 - 0.05/4, so any flag in at most
    # about 5% of calibrations (less: the ranks are discrete). 400 calibrations of 30
    # replications: the rate's Monte Carlo sd is at most 0.011.
    rng = np.random.default_rng(0)
    flagged = [
        any(not judge(rng.integers(0, L + 1, 30), L, False, 4)["inside_band"] for _ in range(4))
        for _ in range(400)
    ]
    assert np.mean(flagged) <= 0.05 + 3 * 0.011


@pytest.mark.parametrize(
    ("sd", "shift", "n", "verdict"),
    [
        (0.44, 0.0, 30, "over-confident"),  # mean-field's sd ratio at a correlation of 0.9
        (2.0, 0.0, 60, "under-confident"),
        (1.0, -0.8, 60, "biased (the posterior sits below the truth)"),
    ],
)
def test_each_kind_of_departure_is_named(sd, shift, n, verdict):
    rng = np.random.default_rng(1)
    verdicts = [judge(_ranks(rng, n, sd, shift), L, True)["verdict"] for _ in range(50)]
    # Named in 50 of 50 calibrations for each case over seeds 1-3. The U of an over-confident
    # posterior is found in 30 replications; the hump of an under-confident one (sd x 2) is
    # harder: 30 replications named it in 34, 37 and 41 of 50, hence 60 here.
    assert sum(verdict in v for v in verdicts) >= 48, verdicts


def test_coverage_and_vsbc_of_an_over_confident_posterior():
    j = judge(_ranks(np.random.default_rng(2), 200, 0.44), L, True)
    # q's central 90% interval covers the truth with probability 2 Phi(1.645 x 0.44) - 1
    # = 0.53, and 50%: 2 Phi(0.674 x 0.44) - 1 = 0.23; binomial sds 0.035 and 0.030.
    assert abs(j["coverage_90"] - 0.53) < 3 * 0.035 and abs(j["coverage_50"] - 0.23) < 3 * 0.030
    assert j["vsbc_p"] > 0.01  # symmetric about the truth: VSBC sees no asymmetry
    biased = judge(_ranks(np.random.default_rng(2), 200, 1.0, 0.5), L, True)
    assert biased["vsbc_p"] < 1e-3


def test_a_replication_ranks_the_truth_among_each_methods_draws():
    rep = replication(
        "linear_regression",
        "diabetes",
        {"features": ["s1", "s2"], "prior": "conjugate"},
        ["exact", "mean_field"],
        seed=0,
        replication=1,
        preset="smoke",
    )
    assert rep["seed"] == 1 and set(rep["truth"]) == {"intercept", "coef[s1]", "coef[s2]", "sigma"}
    for method in ("exact", "mean_field"):
        ranks = rep["methods"][method]["ranks"]
        assert set(ranks) == set(rep["truth"])
        assert all(0 <= r <= L for r in ranks.values())
    # The same replication again: the same truth and ranks (its seed is its own).
    again = replication("linear_regression", "diabetes",
                        {"features": ["s1", "s2"], "prior": "conjugate"}, ["exact"], seed=0,
                        replication=1, preset="smoke")  # fmt: skip
    assert again["truth"] == rep["truth"]
    assert again["methods"]["exact"]["ranks"] == rep["methods"]["exact"]["ranks"]
