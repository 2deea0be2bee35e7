"""Gaussian mixture: vectorization, enumeration, EM against scikit-learn, MAP against EM,
simulation, relabelling, data sets and input errors."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample
from scipy import stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture

from zoo import gmm
from zoo.errors import ZooInputError
from zoo.gmm.model import _log_joint_rows
from zoo.posterior import ClosedForm, ModelForms, Posterior

NUM_DRAWS = 4

# --------------------------------------------------------------------------- helpers


def _post(seed: int = 0, k: int = 3, n: int = 40, d: int = 2, **options) -> Posterior:
    frame, _ = gmm.simulate(seed, k, n, d, separation=3.0)
    return gmm.make_posterior(frame, num_components=k, **options)


def _prior_draws(post, num_draws: int, seed: int) -> list[dict[str, torch.Tensor]]:
    pyro.set_rng_seed(seed)
    draws = []
    for _ in range(num_draws):
        trace = poutine.trace(post.forms.sample).get_trace(num_data=1)
        draws.append({name: trace.nodes[name]["value"].detach() for name in gmm.SITES})
    return draws


def _stack(draws: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Draws stacked in a batch dim at -2 (left of the data plate), as vectorized particles."""
    return {k: torch.stack([d[k] for d in draws]).unsqueeze(1) for k in draws[0]}


def _log_joint(model, data, values) -> torch.Tensor:
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(**data)
    return trace.log_prob_sum()


def _per_draw(lp: torch.Tensor, num_draws: int) -> torch.Tensor:
    """Sum everything but the draws dim (-2): a site broadcast over a mis-placed batch dim of
    size NUM_DRAWS is then counted NUM_DRAWS times and shows up."""
    lp = lp.reshape((1,) * max(0, 2 - lp.dim()) + lp.shape)
    return lp.movedim(-2, 0).reshape(num_draws, -1).sum(-1)


def _no_guide(*args, **kwargs) -> None:
    """A guide that samples nothing: with the globals conditioned, TraceEnum_ELBO's loss is
    -log p(x, globals) with the assignments summed out."""


def _scipy_log_joint(post, values: dict[str, torch.Tensor]) -> tuple[float, np.ndarray]:
    """log prior of the globals and log p(x_n | globals) per row, written out with scipy."""
    pri = gmm.default_priors(post.data["x"].numpy())
    w, locs, scales = (values[k].numpy() for k in gmm.SITES)
    k = len(w)
    log_prior = (
        stats.dirichlet(np.full(k, pri.concentration)).logpdf(w)
        + stats.norm(pri.loc_loc, pri.loc_scale).logpdf(locs).sum()
        + stats.lognorm(s=pri.scale_spread, scale=pri.scale_median).logpdf(scales).sum()
    )
    x = post.data["x"].numpy()
    per_component = stats.norm(locs[None], scales[None]).logpdf(x[:, None, :]).sum(-1)
    return float(log_prior), logsumexp(np.log(w)[None] + per_component, axis=1)


# --------------------------------------------------------------------------- vectorization

SHAPES = {"K1_D1": (1, 1), "K2_D1": (2, 1), "K3_D2": (3, 2), "K2_D4": (2, 4)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_marginal_model_vectorizes(shape):
    # STYLE.md pitfall: a batched log joint of 4 prior draws equals the 4 unbatched ones.
    k, d = shape
    post = _post(k=k, d=d)
    draws = _prior_draws(post, NUM_DRAWS, seed=1)
    unbatched = torch.stack([_log_joint(post.forms.sample, post.data, v) for v in draws])
    assert torch.isfinite(unbatched).all()
    assert len(set(unbatched.tolist())) == NUM_DRAWS  # distinct draws, not one repeated
    with pyro.plate("draws", NUM_DRAWS, dim=-2):
        trace = poutine.trace(poutine.condition(post.forms.sample, data=_stack(draws))).get_trace(
            **post.data
        )
    trace.compute_log_prob()
    batched = sum(
        _per_draw(site["log_prob"], NUM_DRAWS)
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
    )
    # Seen: bitwise equal (log joints of prior draws from -64 to -6e4).
    torch.testing.assert_close(batched, unbatched, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 1), (3, 2)], ids=["K2_D1", "K3_D2"])
def test_enumerated_model_equals_marginal(shape):
    k, d = shape
    post = _post(k=k, d=d)
    draws = _prior_draws(post, NUM_DRAWS, seed=2)
    marginal = torch.stack([_log_joint(post.forms.sample, post.data, v) for v in draws])
    # Per draw: TraceEnum_ELBO with the globals fixed sums the assignments out.
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    enumerated = torch.tensor(
        [-elbo.loss(poutine.condition(post.model, data=v), _no_guide, **post.data) for v in draws]
    )
    # Seen: 6e-14 apart (2e-16 relative; log joints -110 to -880 summed in another order).
    torch.testing.assert_close(enumerated, marginal, rtol=1e-13, atol=1e-10)

    # Vectorized particles (a plate at dim -2, enumeration at -3): the ELBO averages them.
    stacked = _stack(draws)
    vec = TraceEnum_ELBO(max_plate_nesting=1, num_particles=NUM_DRAWS, vectorize_particles=True)
    mean = -vec.loss(poutine.condition(post.model, data=stacked), _no_guide, **post.data)
    assert abs(mean - float(marginal.mean())) < 1e-9 * abs(float(marginal.mean()))  # seen 3e-14

    # Per draw, batched and enumerated at once: contract the enumerated dim by hand.
    with pyro.plate("draws", NUM_DRAWS, dim=-2), poutine.enum(first_available_dim=-3):
        trace = poutine.trace(poutine.condition(post.model, data=stacked)).get_trace(**post.data)
    trace.compute_log_prob()
    assert trace.nodes["assignment"]["value"].shape == (k, 1, 1)
    local = trace.nodes["assignment"]["log_prob"] + trace.nodes["x"]["log_prob"]  # (K, P, N)
    assert local.shape == (k, NUM_DRAWS, post.num_data)
    batched = torch.logsumexp(local, 0).sum(-1)
    for name in gmm.SITES:
        batched = batched + _per_draw(trace.nodes[name]["log_prob"], NUM_DRAWS)
    torch.testing.assert_close(batched, marginal, rtol=0, atol=1e-9)  # seen 6e-14


def test_log_density_matches_explicit_mixture():
    post = _post(seed=4, k=3, d=2, n=60)
    values = _prior_draws(post, 1, seed=5)[0]
    log_prior, per_row = _scipy_log_joint(post, values)
    trace = poutine.trace(poutine.condition(post.forms.sample, data=values)).get_trace(**post.data)
    trace.compute_log_prob()
    # Seen: 4e-15 per row (values -24 to -6); 0 for the prior (-28.5) and the total (-610).
    np.testing.assert_allclose(trace.nodes["x"]["log_prob"].numpy(), per_row, rtol=0, atol=1e-10)
    prior_sites = sum(float(trace.nodes[k]["log_prob"].sum()) for k in gmm.SITES)
    assert abs(prior_sites - log_prior) < 1e-10
    enum = -TraceEnum_ELBO(max_plate_nesting=1).loss(
        poutine.condition(post.model, data=values), _no_guide, **post.data
    )
    assert abs(enum - (log_prior + per_row.sum())) < 1e-10 * (1 + abs(enum))
    # The numpy helper used by EM and the report agrees too.
    np.testing.assert_allclose(
        gmm.mixture_log_likelihood(post.data["x"].numpy(), *(values[k].numpy() for k in gmm.SITES)),
        per_row,
        rtol=0,
        atol=1e-10,
    )


def test_prior_predictive_and_subsampling():
    post = _post(k=3, d=2, n=40)
    # Vectorized prior predictive draws of new rows, from both forms.
    for fn in (post.model, post.forms.sample):
        pred = Predictive(fn, num_samples=5, parallel=True, return_sites=["x", "locs"])
        out = pred(num_data=7)
        assert out["x"].shape == (5, 7, 2)
        assert out["locs"].shape[-2:] == (3, 2)
    # Subsampling (minibatch SVI passes subsample_size on each step): the observed rows are
    # those of the subsample, scaled by N / size.
    sub = _post(k=3, d=2, n=40)
    for fn in (sub.model, sub.forms.sample):
        trace = poutine.trace(fn).get_trace(**sub.data, subsample_size=10)
        idx = trace.nodes["data"]["value"]
        assert trace.nodes["x"]["value"].shape == (10, 2)
        torch.testing.assert_close(trace.nodes["x"]["value"], sub.data["x"][idx])
        assert trace.nodes["x"]["scale"] == pytest.approx(4.0)


def test_priors_scale_with_the_data():
    x = gmm.simulate(0, 2, 50, 2)[0].to_numpy()
    base = gmm.default_priors(x)
    shifted = gmm.default_priors(x * np.array([10.0, 0.1]) + np.array([3.0, -1.0]))
    np.testing.assert_allclose(shifted.loc_loc, np.array(base.loc_loc) * [10, 0.1] + [3, -1])
    np.testing.assert_allclose(shifted.loc_scale, np.array(base.loc_scale) * [10, 0.1])
    np.testing.assert_allclose(shifted.scale_median, np.array(base.scale_median) * [10, 0.1])
    sd = x.std(0, ddof=1)
    np.testing.assert_allclose(base.loc_scale, 2.5 * sd)
    np.testing.assert_allclose(base.scale_median, 0.5 * sd)
    assert (base.scale_spread, base.concentration) == (1.0, 2.0)
    weak = gmm.default_priors(x, prior="weak", concentration=1.5)
    assert (weak.scale_spread, weak.concentration) == (3.0, 1.5)
    assert "x1" in base.describe(["x1", "x2"]) and "Dirichlet(2)" in base.describe(["x1", "x2"])


# --------------------------------------------------------------------------- EM


def _sklearn_from(x: np.ndarray, start: dict[str, np.ndarray], **kwargs) -> GaussianMixture:
    k = len(start["weights"])
    return GaussianMixture(
        k,
        covariance_type="diag",
        weights_init=start["weights"],
        means_init=start["locs"],
        precisions_init=1.0 / start["variances"],
        init_params="random",
        random_state=0,
        **kwargs,
    ).fit(x)


def test_em_matches_sklearn_from_the_same_start():
    frame, _ = gmm.simulate(3, 3, 200, 2, separation=2.5)
    x = frame.to_numpy()
    start = {
        "weights": np.array([0.2, 0.3, 0.5]),
        "locs": x[[0, 1, 2]],
        "variances": np.tile(x.var(0), (3, 1)),
    }
    options = {"reg_covar": 1e-6, "tol": 1e-10, "max_iter": 2000}
    ours = gmm.fit_em(x, 3, seed=0, init=start, **options)
    ref = _sklearn_from(x, start, **options)
    assert ours.converged and ref.converged_
    assert ours.num_iter == ref.n_iter_  # seen 273 == 273
    # Seen: 1e-13 apart in the log-likelihood (-724.6), parameters 2e-14 apart or less (the
    # same iteration computed with other roundings; EM contracts, so they do not grow).
    assert ours.log_likelihood == pytest.approx(ref.score(x) * len(x), rel=1e-12)
    order = np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(ours.weights, ref.weights_[order], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.locs, ref.means_[order], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.scales**2, ref.covariances_[order], rtol=1e-10)
    # BIC with p = (K - 1) + 2 K D free parameters, as scikit-learn counts them.
    p = (3 - 1) + 2 * 3 * 2
    assert ours.bic == pytest.approx(-2 * ours.log_likelihood + p * math.log(len(x)), rel=1e-14)
    assert ours.bic == pytest.approx(ref.bic(x), rel=1e-12)  # seen 2e-13 apart (1.5e3)
    # The final log-likelihood is that of the parameters returned, in canonical order.
    assert np.all(np.diff(ours.locs[:, 0]) > 0)
    assert gmm.mixture_log_likelihood(x, ours.weights, ours.locs, ours.scales).sum() == (
        pytest.approx(ours.log_likelihood, rel=1e-12)
    )


CASES = {
    "overlapping": (lambda: gmm.simulate(5, 3, 300, 2, separation=2.0)[0], 3),
    "iris": (lambda: gmm.load_dataset("iris").frame, 3),
    "too_many_components": (lambda: gmm.simulate(6, 2, 200, 1, separation=4.0)[0], 4),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_em_log_likelihood_never_decreases(case):
    load, k = case
    x = load().to_numpy()
    fit = gmm.fit_em(x, k, seed=1, num_restarts=3)
    steps = np.diff(fit.trace)
    # EM cannot lower the likelihood; reg_covar (1e-6 added to each variance after the M step)
    # and rounding may, by a hair. Seen: no decrease at all (smallest step +1e-6, at the end).
    assert steps.min() > -1e-9
    assert len(fit.trace) == fit.num_iter + 1 and fit.trace[-1] == fit.log_likelihood
    assert fit.trace[-1] > fit.trace[0] + 1.0  # it did climb (seen: by 97 to 395 nats)


def test_em_restarts_keep_the_best():
    x = gmm.load_dataset("iris").frame.to_numpy()
    fit = gmm.fit_em(x, 3, seed=0, num_restarts=5)
    finals = fit.restart_log_likelihoods
    assert len(finals) == 5
    # Iris has several EM optima: seen -341.10, -307.18, -306.86, -307.18, -306.86.
    assert np.ptp(finals) > 1.0
    assert fit.log_likelihood == finals.max()
    # Same seed, one restart: the same first start, hence the first restart's result.
    first = gmm.fit_em(x, 3, seed=0, num_restarts=1)
    assert first.log_likelihood == finals[0]
    # Deterministic per seed.
    again = gmm.fit_em(x, 3, seed=0, num_restarts=5)
    np.testing.assert_array_equal(again.locs, fit.locs)


def test_em_closed_form_method():
    post = gmm.make_posterior("low_dim_gauss_mix")
    closed = post.closed_forms["em"](0, 100)
    assert isinstance(closed, ClosedForm) and closed.point
    assert closed.draws["weights"].shape == (1, 2)
    assert closed.draws["locs"].shape == closed.draws["scales"].shape == (1, 2, 1)
    for key in ("log_likelihood", "bic", "num_iter", "converged", "num_restarts"):
        assert isinstance(closed.info[key], int | float | str | bool)
    assert closed.info["converged"] is True and closed.info["num_restarts"] == 5
    assert closed.trace[-1] == closed.info["log_likelihood"]
    # posteriordb's mixture has means near -2.75 and 2.75, sds near 1 (seen: -2.73, 2.87,
    # sds 1.03, 1.02, weights 0.62, 0.38).
    assert closed.draws["locs"][0, 0, 0] < -2 and closed.draws["locs"][0, 1, 0] > 2


# --------------------------------------------------------------------------- MAP vs EM


def _delta_point(post) -> tuple[float, dict[str, np.ndarray]]:
    from guides import fit_guide

    result = fit_guide("delta", post, seed=0)
    # Read the point now: the next fit clears the param store the guide reads from.
    point = {k: v.detach().numpy()[None, None] for k, v in result.guide.median(**post.data).items()}
    canonical = gmm.relabel(point).draws
    return result, {k: canonical[k][0, 0] for k in gmm.SITES}


@pytest.fixture(scope="module")
def _map_case():
    # A module fixture runs before the autouse set-up of conftest.py: the same set-up here.
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    try:
        frame, _ = gmm.simulate(1, 3, 300, 2, separation=6.0)
        post = gmm.make_posterior(frame, num_components=3, prior="weak")
        x = post.data["x"].numpy()
        em = gmm.fit_em(x, 3, seed=0, tol=1e-12)
        # As users do, the delta fit tries several starts (5 k-means++ points, as EM's
        # restarts) and keeps the best log joint: with alpha = 1 an emptied component is a
        # stationary point, and a single start from prior draws found it in 3 of 6 seeds.
        result, point = _delta_point(post)
        marginal = dataclasses.replace(post, forms=ModelForms(fit=post.forms.sample))
        _, marginal_point = _delta_point(marginal)
        return post, em, point, marginal_point, result
    finally:
        pyro.clear_param_store()
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def test_map_matches_em_with_weak_priors(_map_case):
    post, em, point, _, result = _map_case
    assert result.info["init"].startswith("best of 5 MAP starts")
    x = post.data["x"].numpy()
    pri = gmm.default_priors(x, prior="weak")
    resp = _log_joint_rows(x, em.weights, em.locs, em.scales**2)
    nk = np.exp(resp - logsumexp(resp, axis=1, keepdims=True)).sum(0)[:, None]
    sd = em.scales
    # How far the weak prior moves the mode from the ML point, to first order (per component,
    # information n_k / sd^2 for a mean and 2 n_k / sd^2 for an sd; see the module docstring):
    shift_locs = sd**2 / nk * (np.array(pri.loc_loc) - em.locs) / np.array(pri.loc_scale) ** 2
    log_ratio = np.log(sd / np.array(pri.scale_median))
    shift_scales = -sd * (1 + log_ratio / pri.scale_spread**2) / (2 * nk)
    # Seen: max |shift| 1.1e-3 (locs) and 7.2e-3 (scales); MAP - EM 1.2e-3 and 7.2e-3. The
    # neglected terms (coupling of neighbouring components through the rows between them,
    # second order) are of the same order as the shift, hence a margin of 3x.
    assert np.abs(point["locs"] - em.locs).max() < 3 * np.abs(shift_locs).max()
    assert np.abs(point["scales"] - em.scales).max() < 3 * np.abs(shift_scales).max()
    # The sds move as predicted, not just by little: seen residual 9e-4 = 0.13 of the shift.
    residual = np.abs(point["scales"] - em.scales - shift_scales).max()
    assert residual < 0.3 * np.abs(shift_scales).max()
    # A Dirichlet(1) prior does not move the weights; they move only through the
    # responsibilities, second order: seen 5e-5 against a relative sd shift of 6.5e-3.
    assert np.abs(point["weights"] - em.weights).max() < np.abs(shift_scales / sd).max()
    # EM's log-likelihood is the maximum; the MAP is below it by about the quadratic form of
    # the shift, sum n_k (d_loc^2 / (2 sd^2) + d_sd^2 / sd^2): predicted 0.0149, seen 0.0151.
    map_ll = gmm.mixture_log_likelihood(x, *(point[k] for k in gmm.SITES)).sum()
    drop = float((nk * (shift_locs**2 / (2 * sd**2) + shift_scales**2 / sd**2)).sum())
    assert 0 < em.log_likelihood - map_ll < 2 * drop


def test_draws_of_a_guide_on_the_enumerated_model_are_of_the_globals():
    from guides import FitConfig, fit_guide

    post = _post(k=2, n=30)
    quick = FitConfig(num_steps=100, min_steps=50, window=25)
    draws = fit_guide("mean_field", post, seed=0, config=quick).sample(7, seed=1)
    assert {k: v.shape for k, v in draws.items()} == {
        "weights": (7, 2),
        "locs": (7, 2, 2),
        "scales": (7, 2, 2),
    }


def test_map_of_the_enumerated_model_is_that_of_the_marginal_one(_map_case):
    _, _, point, marginal_point, _ = _map_case
    for k in gmm.SITES:  # one objective (see test_enumerated_model_equals_marginal)
        np.testing.assert_allclose(point[k], marginal_point[k], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- simulate


def test_simulate_is_deterministic_sorted_and_sized():
    a, truth_a = gmm.simulate(7, 4, 123, 3, separation=1.0)
    b, truth_b = gmm.simulate(7, 4, 123, 3, separation=1.0)
    pd.testing.assert_frame_equal(a, b)
    for key in gmm.SITES:
        np.testing.assert_array_equal(truth_a[key], truth_b[key])
    c, _ = gmm.simulate(8, 4, 123, 3, separation=1.0)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    assert a.shape == (123, 3) and list(a.columns) == ["x1", "x2", "x3"]
    assert truth_a["weights"].shape == (4,) and truth_a["locs"].shape == (4, 3)
    assert truth_a["scales"].shape == (4, 3) and np.all(truth_a["scales"] > 0)
    assert np.all(np.diff(truth_a["locs"][:, 0]) > 0)
    assert truth_a["weights"].sum() == pytest.approx(1.0)


def test_simulate_draws_from_the_truth():
    n = 4000
    frame, truth = gmm.simulate(0, 2, n, 1, separation=20.0, weights=[0.3, 0.7])
    np.testing.assert_allclose(truth["weights"], [0.3, 0.7])
    x = frame["x1"].to_numpy()
    left = x < 0  # means 20 sds apart: no row lands on the wrong side
    # Standard errors: of a share sqrt(w (1 - w) / n), of a mean sd / sqrt(n_k), of an sd
    # sd / sqrt(2 n_k); 5 of them.
    assert abs(left.mean() - 0.3) < 5 * math.sqrt(0.21 / n)
    for j, rows in enumerate((x[left], x[~left])):
        loc, sd = truth["locs"][j, 0], truth["scales"][j, 0]
        assert abs(rows.mean() - loc) < 5 * sd / math.sqrt(len(rows))
        assert abs(rows.std() - sd) < 5 * sd / math.sqrt(2 * len(rows))


# --------------------------------------------------------------------------- relabel


def _canonical_draws(seed: int, chains: int = 2, draws: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = 3
    locs = np.array([[-5.0, 1.0], [0.0, -2.0], [5.0, 0.5]]) + 0.1 * rng.standard_normal(
        (chains, draws, k, 2)
    )
    scales = np.exp(
        np.log([[1.0, 2.0], [0.5, 1.0], [1.5, 0.8]])
        + 0.05 * rng.standard_normal((chains, draws, k, 2))
    )
    weights = rng.dirichlet([30.0, 50.0, 20.0], size=(chains, draws))
    return {"weights": weights, "locs": locs, "scales": scales}


def _permute(draws: dict[str, np.ndarray], perms: np.ndarray) -> dict[str, np.ndarray]:
    """Put component perms[c, s, j] of each draw at position j."""
    return {
        "weights": np.take_along_axis(draws["weights"], perms, axis=2),
        "locs": np.take_along_axis(draws["locs"], perms[..., None], axis=2),
        "scales": np.take_along_axis(draws["scales"], perms[..., None], axis=2),
    }


def _count_changes(perms: np.ndarray) -> np.ndarray:
    return np.any(perms[:, 1:] != perms[:, :-1], axis=-1).sum(1)


def test_relabel_sort_undoes_a_random_permutation():
    truth = _canonical_draws(0)
    rng = np.random.default_rng(1)
    perms = np.argsort(rng.random((2, 50, 3)), axis=-1)
    scrambled = _permute(truth, perms)
    scrambled["other"] = np.arange(10.0)
    out = gmm.relabel(scrambled)
    for k in gmm.SITES:
        np.testing.assert_array_equal(out.draws[k], truth[k])
    assert out.draws["other"] is scrambled["other"]
    assert out.info["relabel_method"] == "sort"
    expected = _count_changes(perms)
    assert out.info["label_swaps"] == expected.sum()
    assert out.info["label_swaps_per_chain"] == ",".join(map(str, expected))
    # With a well-separated reference the sort is kept (first coordinates 35 sds apart).
    with_ref = gmm.relabel(scrambled, reference=truth)
    assert with_ref.info["relabel_method"] == "sort"
    assert with_ref.info["relabel_min_gap_z"] > gmm.AMBIGUOUS_GAP_Z  # seen 35
    np.testing.assert_array_equal(with_ref.draws["locs"], truth["locs"])


def test_relabel_matches_a_reference_when_first_coordinates_tie():
    truth = _canonical_draws(2)
    truth["locs"][..., 0] = 0.1 * np.random.default_rng(3).standard_normal((2, 50, 3))
    reference = _canonical_draws(4, chains=4, draws=100)
    reference["locs"][..., 0] = 0.1 * np.random.default_rng(5).standard_normal((4, 100, 3))
    perms = np.argsort(np.random.default_rng(6).random((2, 50, 3)), axis=-1)
    scrambled = _permute(truth, perms)
    out = gmm.relabel(scrambled, reference=reference)
    assert out.info["relabel_method"] == "hungarian"
    assert out.info["relabel_min_gap_z"] < gmm.AMBIGUOUS_GAP_Z
    for k in gmm.SITES:
        np.testing.assert_array_equal(out.draws[k], truth[k])
    assert out.info["label_swaps"] == _count_changes(perms).sum()
    # Sorting alone cannot recover it (the check above can fail)...
    sort_only = np.argsort(scrambled["locs"][..., 0], axis=-1)
    assert not np.array_equal(_permute(scrambled, sort_only)["locs"], truth["locs"])
    # ...but matching the draws to their own mean, without a reference, gives labels that
    # agree across draws: the truth up to one permutation for every draw.
    alone = gmm.relabel(scrambled)
    assert alone.info["relabel_method"] == "hungarian to own mean"
    order = np.argsort(alone.draws["locs"][0, 0, :, 1])
    expected = np.argsort(truth["locs"][0, 0, :, 1])
    for k in gmm.SITES:
        relabelled = np.take_along_axis(
            alone.draws[k], (order if k == "weights" else order[:, None])[None, None], axis=2
        )
        in_truth = np.take_along_axis(
            truth[k], (expected if k == "weights" else expected[:, None])[None, None], axis=2
        )
        np.testing.assert_array_equal(relabelled, in_truth)
    # A point reference (EM, one draw) with tied first coordinates works the same way.
    point = {k: v.mean((0, 1), keepdims=True) for k, v in reference.items()}
    point["locs"][..., 0] = 0.0
    by_point = gmm.relabel(scrambled, reference=point)
    assert by_point.info["relabel_method"] == "hungarian"
    np.testing.assert_array_equal(by_point.draws["locs"], truth["locs"])


def test_relabel_counts_label_swaps_exactly():
    truth = _canonical_draws(7, chains=3, draws=12)
    identity, swap01, cycle = [0, 1, 2], [1, 0, 2], [2, 0, 1]
    sequences = [
        [identity] * 5 + [swap01] * 3 + [identity] * 4,  # 2 swaps
        [identity] * 12,  # none
        [cycle, swap01, swap01, identity] * 3,  # 2 per block + 2 between blocks = 8
    ]
    perms = np.array(sequences)
    out = gmm.relabel(_permute(truth, perms))
    assert out.info["label_swaps_per_chain"] == "2,0,8"
    assert out.info["label_swaps"] == 10
    np.testing.assert_array_equal(out.draws["weights"], truth["weights"])


def test_relabel_point_estimate():
    point = {
        "weights": np.array([[[0.5, 0.2, 0.3]]]),
        "locs": np.array([[[[3.0, 0.0], [-1.0, 1.0], [0.0, 2.0]]]]),
        "scales": np.array([[[[1.0, 1.1], [2.0, 2.1], [3.0, 3.1]]]]),
    }
    out = gmm.relabel(point)
    np.testing.assert_array_equal(out.draws["weights"], [[[0.2, 0.3, 0.5]]])
    np.testing.assert_array_equal(out.draws["locs"][0, 0, :, 0], [-1.0, 0.0, 3.0])
    np.testing.assert_array_equal(out.draws["scales"][0, 0, :, 0], [2.0, 3.0, 1.0])
    assert out.info["label_swaps"] == 0 and out.info["label_swaps_per_chain"] == "0"
    assert "relabel_min_gap_z" not in out.info  # infinite for one draw a gap apart: absent


def test_relabel_runs_on_thousands_of_draws():
    # 4 chains x 1000 draws through the Hungarian path.
    truth = _canonical_draws(8, chains=4, draws=1000)
    truth["locs"][..., 0] = 0.0
    perms = np.array(list(itertools.permutations(range(3))))[
        np.random.default_rng(9).integers(6, size=(4, 1000))
    ]
    out = gmm.relabel(_permute(truth, perms), reference=truth)
    assert out.info["relabel_method"] == "hungarian"
    np.testing.assert_array_equal(out.draws["locs"], truth["locs"])


# --------------------------------------------------------------------------- data sets

EXPECTED = {
    "separated": ((300, 2), 3, True),
    "overlapping": ((300, 2), 3, True),
    "iris": ((150, 4), 3, False),
    "low_dim_gauss_mix": ((1000, 1), 2, False),
}


def test_every_dataset_has_an_expected_shape():
    assert set(gmm.DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_datasets_load(name):
    shape, k, simulated = EXPECTED[name]
    post = gmm.make_posterior(name)
    assert post.dataset == name and post.model_name == "gmm"
    assert tuple(post.data["x"].shape) == shape
    assert post.data["x"].dtype == torch.float64 and torch.isfinite(post.data["x"]).all()
    assert (
        post.coords["component"] == list(range(k)) == list(range(gmm.DATASETS[name].num_components))
    )
    assert len(post.coords["feature"]) == shape[1]
    assert (post.truth is not None) == simulated
    if simulated:
        assert np.all(np.diff(post.truth["locs"][:, 0]) > 0)
    assert (post.row_labels is not None) == (name == "iris")


def test_posterior_fields():
    frame, truth = gmm.simulate(0, 2, 50, 2)
    post = gmm.make_posterior(frame, num_components=2, truth=truth, test_fraction=0.2, seed=3)
    assert post.sites == ("weights", "locs", "scales")
    assert post.obs_site == "x" and post.max_plate_nesting == 1
    assert post.dims == {
        "weights": ["component"],
        "locs": ["component", "feature"],
        "scales": ["component", "feature"],
    }
    assert post.coords == {"component": [0, 1], "feature": ["x1", "x2"]}
    assert post.num_data == 40 and post.num_test == 10
    assert post.relabel is gmm.relabel and post.forms.sample is not None
    assert post.model.__name__ == "model" and post.forms.sample.__name__ == "marginal_model"
    assert set(post.description) >= {"features", "prior", "rows", "components"}
    # extra_metrics: the posterior mean against the truth, in documented units.
    flat = {k: np.repeat(truth[k][None], 5, axis=0) for k in gmm.SITES}
    assert post.extra_metrics(flat, None) == {
        "truth_locs_max_abs_z": 0.0,
        "truth_scales_max_abs_log_ratio": 0.0,
        "truth_weights_max_abs_error": 0.0,
    }
    flat["locs"] = flat["locs"] + np.array([0.0, 1.0])
    flat["scales"] = flat["scales"] * 1.1
    flat["weights"] = flat["weights"] + np.array([0.05, -0.05])
    sd = post.data["x"].numpy().std(0, ddof=1)
    got = post.extra_metrics(flat, None)
    assert got["truth_locs_max_abs_z"] == pytest.approx(1.0 / sd[1])
    assert got["truth_scales_max_abs_log_ratio"] == pytest.approx(math.log(1.1))
    assert got["truth_weights_max_abs_error"] == pytest.approx(0.05)
    assert gmm.make_posterior(frame).extra_metrics is None
    # A given truth is put in canonical order.
    swapped = {k: v[::-1] for k, v in truth.items()}
    np.testing.assert_array_equal(
        gmm.make_posterior(frame, truth=swapped).truth["locs"], truth["locs"]
    )


def test_csv_files_and_features(tmp_path):
    frame, _ = gmm.simulate(0, 2, 30, 2)
    frame["kind"] = ["a", "b", "c"] * 10
    path = tmp_path / "mix.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ZooInputError) as info:
        gmm.make_posterior(str(path))
    message = str(info.value)
    assert "column 'kind' has a non-numeric value" in message and "--features" in message
    post = gmm.make_posterior(path, features="x2,x1", num_components=3)
    assert post.dataset == "mix.csv" and post.coords["feature"] == ["x2", "x1"]
    np.testing.assert_array_equal(post.data["x"].numpy(), frame[["x2", "x1"]].to_numpy())
    assert post.description["components"] == "3"
    assert gmm.make_posterior(path, features=["x1"]).description["components"] == "2 (default)"


def _frame(n: int = 10) -> pd.DataFrame:
    return gmm.simulate(0, 2, n, 2)[0]


def _with(column: str, row: int, value) -> pd.DataFrame:
    frame = _frame().astype(object)
    frame.loc[row, column] = value
    return frame


ERROR_CASES = {
    "zero_components": (lambda: gmm.make_posterior(_frame(), num_components=0), ">= 1, got 0"),
    "fractional_components": (
        lambda: gmm.make_posterior(_frame(), num_components=2.5),
        "whole number >= 1, got 2.5",
    ),
    "more_components_than_rows": (
        lambda: gmm.make_posterior(_frame(), num_components=11),
        "11 components but only 10 rows",
    ),
    "one_row": (lambda: gmm.make_posterior(_frame().iloc[:1], num_components=1), "1 row(s)"),
    "no_rows": (lambda: gmm.make_posterior(_frame().iloc[:0]), "0 row(s)"),
    "held_out_too_much": (
        lambda: gmm.make_posterior(_frame(), test_fraction=0.9, num_components=1),
        "smaller --test-fraction",
    ),
    "constant_column": (
        lambda: gmm.make_posterior(_frame().assign(x2=1.5)),
        "feature 'x2' is constant",
    ),
    "nan": (lambda: gmm.make_posterior(_with("x1", 4, float("nan"))), "data row 5"),
    "inf": (lambda: gmm.make_posterior(_with("x2", 2, float("inf"))), "infinite value (inf)"),
    "non_numeric": (
        lambda: gmm.make_posterior(_with("x2", 3, "abc")),
        "column 'x2' has a non-numeric value 'abc' in data row 4; drop that column",
    ),
    "unknown_dataset": (lambda: gmm.make_posterior("irises"), "unknown dataset 'irises'"),
    "missing_file": (lambda: gmm.make_posterior("nothere.csv"), "does not exist"),
    "missing_feature": (
        lambda: gmm.make_posterior(_frame(), features=["x1", "w"]),
        "feature column 'w'",
    ),
    "duplicate_feature": (
        lambda: gmm.make_posterior(_frame(), features=["x1", "x1"]),
        "listed twice",
    ),
    "unknown_prior": (
        lambda: gmm.make_posterior(_frame(), prior="flat"),
        "unknown prior 'flat'; choose one of: weakly_informative, weak",
    ),
    "negative_prior_option": (
        lambda: gmm.make_posterior(_frame(), scale_spread=-1.0),
        "scale spread must be a positive number",
    ),
    "bad_num_starts": (
        lambda: gmm.make_posterior(_frame(), num_starts=0),
        "num_starts must be a whole number >= 1",
    ),
    "bad_truth": (
        lambda: gmm.make_posterior(_frame(), truth={"weights": np.ones(3)}),
        "truth must give",
    ),
    "em_too_few_rows": (lambda: gmm.fit_em(np.zeros((2, 1)), 3, seed=0), "at least 3 rows"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_input_errors(case):
    build, expected = case
    with pytest.raises(ZooInputError) as info:
        build()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.strip() == message


def test_the_diagonal_normal_mixture_is_mixture_same_family():
    from zoo.gmm.model import DiagonalNormalMixture

    pyro.set_rng_seed(0)
    gen = torch.Generator().manual_seed(0)
    # Parameters with a batch dim of 4 on the left (chains, particles), K=3, D=2.
    weights = torch.distributions.Dirichlet(torch.ones(4, 1, 3)).sample()
    locs = torch.randn(4, 1, 3, 2, generator=gen, dtype=torch.float64)
    scales = torch.rand(4, 1, 3, 2, generator=gen, dtype=torch.float64) + 0.2
    weights = weights.to(torch.float64)
    x = 2 * torch.randn(50, 2, generator=gen, dtype=torch.float64)
    ours = DiagonalNormalMixture(weights, locs, scales).expand((4, 50))
    theirs = dist.MixtureSameFamily(
        dist.Categorical(weights), dist.Normal(locs, scales).to_event(1)
    ).expand((4, 50))
    assert ours.batch_shape == theirs.batch_shape and ours.event_shape == theirs.event_shape
    # Seen: at most 1.4e-14 apart (log densities from -41 to -0.15).
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.mean, theirs.mean)
    pyro.set_rng_seed(1)
    a = ours.sample((2,))
    pyro.set_rng_seed(1)
    b = theirs.sample((2,))
    assert a.shape == (2, 4, 50, 2) and torch.equal(a, b)


def test_the_diagonal_normal_mixture_checks_its_data_under_a_plate():
    from zoo.gmm.model import DiagonalNormalMixture

    mixture = DiagonalNormalMixture(
        torch.tensor([0.3, 0.7]), torch.zeros(2, 2), torch.ones(2, 2), validate_args=True
    )
    with pytest.raises(ValueError):  # a plate expands it: its checks go with it
        mixture.expand((5,)).log_prob(torch.zeros(5, 1))  # one feature of two
    with pytest.raises(ValueError, match="cannot expand"):
        mixture.expand((3,)).expand((4,))
    # A weight of 0 is clamped as Categorical clamps it: finite, as MixtureSameFamily.
    edge = DiagonalNormalMixture(torch.tensor([0.0, 1.0]), torch.zeros(2, 2), torch.ones(2, 2))
    same = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.0, 1.0])), dist.Normal(torch.zeros(2, 2), 1.0).to_event(1)
    )
    x = torch.ones(3, 2)
    torch.testing.assert_close(edge.log_prob(x), same.log_prob(x))
