"""PPCA: vectorization of both forms, their agreement, closed forms against scikit-learn and
brute force, the linear autoencoder baseline, simulation, metrics, data sets, input errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from sklearn.decomposition import PCA
from vectorization import log_joint, log_joints, prior_draws

from zoo import ppca
from zoo.errors import ZooInputError
from zoo.posterior import ClosedForm
from zoo.ppca.model import _global_sites

NUM_DRAWS = 4

# --------------------------------------------------------------------------- helpers


def _frame(seed: int = 0, num_data: int = 30, num_features: int = 5, latent_dim: int = 2):
    return ppca.simulate(seed, num_data, num_features, latent_dim)[0]


def _x(seed: int = 0, num_data: int = 500, num_features: int = 10, latent_dim: int = 2):
    return _frame(seed, num_data, num_features, latent_dim).to_numpy()


def _draws(model, data, num_draws: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Prior draws of the latents (z included) with the shared helper of the zoo tests."""
    return prior_draws(model, data, num_draws, seed, obs="x")


def _site_log_probs(model, data, values) -> dict[str, torch.Tensor]:
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(**data)
    trace.compute_log_prob()
    return {
        name: site["log_prob"] for name, site in trace.nodes.items() if site["type"] == "sample"
    }


# --------------------------------------------------------------------------- vectorization


@pytest.mark.parametrize("form", ["fit", "likelihood", "local"])
def test_every_form_vectorizes(form):
    # STYLE.md pitfall: a batched log joint of 4 prior draws equals the 4 unbatched ones.
    post = ppca.make_posterior(_frame())
    fn = getattr(post.forms, form)
    draws = _draws(fn, post.data, NUM_DRAWS, seed=1)
    expected = {"loadings", "mean", "sigma"} | ({"z"} if form == "local" else set())
    assert set(draws[0]) == expected
    unbatched, batched = log_joints(fn, post.data, draws)
    assert torch.isfinite(unbatched).all()
    assert len(set(unbatched.tolist())) == NUM_DRAWS  # distinct draws, not one repeated
    # Seen: bitwise equal for both forms, on log joints of -325 to -45000; the margin allows
    # the rounding of a batched Cholesky in LowRankMultivariateNormal on another machine.
    torch.testing.assert_close(batched, unbatched, rtol=0, atol=1e-9)


def _matmul_local_model(x=None, *, latent_dim, priors, num_data=None):
    """local_model with the pitfall: z @ W^T instead of (W * z[..., None, :]).sum(-1)."""
    loadings, mean, sigma = _global_sites(priors, latent_dim, torch.float64, None)
    with pyro.plate("data", x.shape[-2] if x is not None else num_data):
        z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
        loc = mean + z @ loadings.transpose(-1, -2)  # (P, N, K) @ (P, 1, K, D) -> (P, P, N, D)
        return pyro.sample("x", dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1), obs=x)


def test_vectorization_check_catches_matmul_in_local_model():
    post = ppca.make_posterior(_frame())
    options = {"latent_dim": 2, "priors": post.forms.likelihood.keywords["priors"]}

    def buggy(x=None, num_data=None):
        return _matmul_local_model(x, num_data=num_data, **options)

    draws = _draws(buggy, post.data, NUM_DRAWS, seed=1)
    unbatched, batched = log_joints(buggy, post.data, draws)
    # Unbatched, the matmul gives the same log joints as the real local model...
    reference = torch.stack([log_joint(post.forms.local, post.data, d) for d in draws])
    torch.testing.assert_close(unbatched, reference, rtol=0, atol=1e-9)  # seen bitwise equal
    # ...but batched, each row's likelihood mixes the particles and is counted P times
    # (seen: off by 1.2e3 to 9.4e4 on log joints of -1e3 to -4.5e4).
    assert not torch.allclose(batched, unbatched, rtol=0, atol=1e-3)


def test_prior_predictive_draws():
    post = ppca.make_posterior(_frame())
    for fn in (post.model, post.forms.likelihood, post.forms.local):
        x = fn(num_data=7)
        assert x.shape == (7, 5) and x.dtype == torch.float64
    with pytest.raises(ValueError, match="num_data"):
        post.model()


# --------------------------------------------------------------------------- the two forms


def test_local_and_marginal_forms_agree_per_row():
    # log p(x_n, z_n | g) - log p(z_n | x_n, g) = log p(x_n | g) for any z_n: the local model,
    # posterior_z and the marginal model are the same joint Gaussian.
    post = ppca.make_posterior(_frame(num_data=40))
    x = post.data["x"]
    for seed in range(3):
        g = _draws(post.model, post.data, 1, seed=seed)[0]
        z = 2.0 * torch.randn(x.shape[0], 2, generator=torch.Generator().manual_seed(seed))
        local = _site_log_probs(post.forms.local, post.data, {**g, "z": z})
        marginal = _site_log_probs(post.forms.likelihood, post.data, g)
        loc, cov = ppca.posterior_z(
            x.numpy(), g["loadings"].numpy(), g["mean"].numpy(), float(g["sigma"])
        )
        log_post = dist.MultivariateNormal(torch.tensor(loc), torch.tensor(cov)).log_prob(z)
        assert local["x"].shape == local["z"].shape == marginal["x"].shape == (40,)
        # Seen: 4e-13 at most, on per-row log densities of -7 to -50.
        torch.testing.assert_close(
            local["x"] + local["z"] - log_post, marginal["x"], rtol=0, atol=1e-9
        )
        # log_likelihood (numpy, from sample moments) is the marginal model's total.
        total = ppca.log_likelihood(
            x.numpy(), g["loadings"].numpy(), g["mean"].numpy(), g["sigma"].numpy()
        )
        assert abs(total - float(marginal["x"].sum())) <= 1e-10 * abs(total)  # seen 1.4e-15


def test_summary_form_is_the_per_row_form_summed():
    """The form NUTS and the global guides run (one factor from the data's mean and
    scatter) has the log joint of the per-row marginal form, draw by draw and batched."""
    post = ppca.make_posterior(_frame(num_data=40))
    draws = _draws(post.forms.likelihood, post.data, NUM_DRAWS, seed=2)
    per_row = torch.stack([log_joint(post.forms.likelihood, post.data, d) for d in draws])
    summed = torch.stack([log_joint(post.model, post.data, d) for d in draws])
    # Seen: 2.5e-11 apart on log joints of -490 to -13106 (different rounding orders).
    torch.testing.assert_close(summed, per_row, rtol=1e-12, atol=1e-9)
    _, batched = log_joints(post.model, post.data, draws)
    torch.testing.assert_close(batched, per_row, rtol=1e-12, atol=1e-9)


def test_posterior_z_matches_gaussian_conditioning():
    # Brute force: (z, x) jointly Gaussian with Cov(z) = I, Cov(z, x) = W^T, Cov(x) = C, so
    # z | x ~ N(W^T C^-1 (x - mu), I - W^T C^-1 W) (Bishop 2006, eqs. 2.81-2.82).
    rng = np.random.default_rng(3)
    w, mu, sigma = rng.standard_normal((6, 3)), rng.standard_normal(6), 0.7
    x = rng.standard_normal((20, 6)) * 2.0
    c = ppca.covariance(w, sigma)
    loc, cov = ppca.posterior_z(x, w, mu, sigma)
    # Seen: 5e-15 (means), 3e-16 (covariance) absolute: rounding only.
    np.testing.assert_allclose(loc, (x - mu) @ np.linalg.solve(c, w), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, np.eye(3) - w.T @ np.linalg.solve(c, w), rtol=1e-10)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("latent_dim", [1, 2, 3])
def test_ml_with_ddof_1_is_scikit_learn(latent_dim):
    x = _x()
    fit = ppca.fit_ml(x, latent_dim, ddof=1)
    pca = PCA(n_components=latent_dim, svd_solver="full").fit(x)
    # Seen (relative): 7e-16 (sigma^2), 4e-16 (log-likelihood of -7e3); 1e-14 absolute on C
    # (entries up to 10): rounding only.
    assert abs(fit.sigma**2 - pca.noise_variance_) <= 1e-12 * pca.noise_variance_
    assert abs(fit.log_likelihood - pca.score(x) * len(x)) <= 1e-12 * abs(fit.log_likelihood)
    np.testing.assert_allclose(
        ppca.covariance(fit.loadings, fit.sigma), pca.get_covariance(), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(fit.mean, x.mean(0), rtol=1e-12)


def test_ml_with_ddof_0_is_the_maximum():
    x = _x(seed=1)
    fit = ppca.fit_ml(x, 2)
    pca = PCA(n_components=2, svd_solver="full").fit(x)
    assert fit.log_likelihood > pca.score(x) * len(x)  # seen: higher by 5e-3
    # The gradient of the log-likelihood (Pyro's marginal density, torch autograd) vanishes.
    w = torch.tensor(fit.loadings, requires_grad=True)
    mu = torch.tensor(fit.mean, requires_grad=True)
    log_sigma = torch.tensor(math.log(fit.sigma), requires_grad=True)
    density = dist.LowRankMultivariateNormal(mu, w, torch.exp(2 * log_sigma) * torch.ones(10))
    density.log_prob(torch.tensor(x)).sum().backward()
    grads = torch.cat([w.grad.ravel(), mu.grad, log_sigma.grad.reshape(1)])
    # Seen: 9e-15 per row (max abs entry / N); moving W by 1e-3 off the ML gives 5e-3.
    assert grads.abs().max() / len(x) < 1e-7
    # And no random perturbation of (W, mean, sigma) raises it (vectorized log_likelihood).
    rng = np.random.default_rng(0)
    for size in (1e-4, 1e-2, 1e-1):
        num = 200
        lls = ppca.log_likelihood(
            x,
            fit.loadings + size * rng.standard_normal((num, 10, 2)),
            fit.mean + size * rng.standard_normal((num, 10)),
            fit.sigma * np.exp(size * rng.standard_normal(num)),
        )
        assert lls.shape == (num,)
        assert np.all(lls < fit.log_likelihood)


def test_covariance_is_invariant_to_rotations_of_the_loadings():
    fit = ppca.fit_ml(_x(), 3)
    rng = np.random.default_rng(5)
    rotations = np.linalg.qr(rng.standard_normal((8, 3, 3)))[0]  # 8 orthogonal matrices
    rotated = fit.loadings @ rotations  # (8, D, K)
    assert not np.allclose(rotated[0], fit.loadings, atol=1e-3)
    cov = ppca.covariance(rotated, np.full(8, fit.sigma))
    assert cov.shape == (8, 10, 10)
    np.testing.assert_allclose(
        cov, np.broadcast_to(ppca.covariance(fit.loadings, fit.sigma), cov.shape), atol=1e-12
    )  # seen 3e-15 on entries up to 10
    lls = ppca.log_likelihood(_x(), rotated, fit.mean, fit.sigma)
    np.testing.assert_allclose(lls, fit.log_likelihood, rtol=1e-12)  # seen 2e-16


def test_em_reaches_the_ml_solution():
    x = _x(seed=2)
    ml = ppca.fit_ml(x, 2)
    em = ppca.fit_em(x, 2, seed=0)
    assert em.converged and em.num_iter == len(em.trace) - 1 < 10_000
    # Non-decreasing: seen smallest step +5e-7 (no decrease at all); rounding allowance only.
    assert np.all(np.diff(em.trace) >= -1e-10 * abs(ml.log_likelihood))
    assert em.trace[-1] == em.fit.log_likelihood
    # EM stops when a step gains < 1e-10 relative; at a linear rate r the gap left is at most
    # step * r / (1 - r), so 1e-8 allows r up to 0.99. Seen: 1.1e-9 below the ML value.
    gap = (ml.log_likelihood - em.fit.log_likelihood) / abs(ml.log_likelihood)
    assert -1e-12 <= gap <= 1e-8
    assert ppca.principal_angles(em.fit.loadings, ml.loadings).max() < 1e-3  # seen 5e-14 deg
    assert abs(em.fit.sigma - ml.sigma) < 1e-4 * ml.sigma  # seen 3e-7 relative
    np.testing.assert_array_equal(em.fit.mean, ml.mean)
    # Seeded: the same start gives the same path, another seed another path.
    np.testing.assert_array_equal(ppca.fit_em(x, 2, seed=0).trace, em.trace)
    assert ppca.fit_em(x, 2, seed=1).trace[0] != em.trace[0]


def test_em_reports_no_convergence_within_max_iter():
    result = ppca.fit_em(_x(), 2, seed=0, max_iter=3)
    assert not result.converged and result.num_iter == 3


def test_linear_autoencoder_spans_the_principal_subspace():
    x = _x(seed=4)
    ml = ppca.fit_ml(x, 2)
    w_ae = ppca.linear_autoencoder(x, 2, seed=0)
    assert w_ae.shape == (10, 2)
    assert ppca.principal_angles(w_ae, ml.loadings).max() < 1e-3  # seen 6e-13 degrees
    np.testing.assert_allclose(w_ae.T @ w_ae, np.eye(2), atol=1e-6)  # seen 2e-15
    # The ML loadings span the same subspace with lengths (lambda_k - sigma^2)^1/2: their Gram
    # matrix is diag(lambda - sigma^2), far from I.
    evals = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1][:2]
    gram = ml.loadings.T @ ml.loadings
    np.testing.assert_allclose(gram, np.diag(evals - ml.sigma**2), atol=1e-9)  # seen 4e-15
    assert np.abs(gram - np.eye(2)).max() > 1.0  # seen 17: eigenvalues 18.6 and 8.3
    np.testing.assert_array_equal(ppca.linear_autoencoder(x, 2, seed=0), w_ae)


def test_principal_angles_in_degrees():
    a = np.array([[1.0], [0.0], [0.0]])
    b = np.array([[1.0], [1.0], [0.0]])
    np.testing.assert_allclose(ppca.principal_angles(a, b), [45.0])
    np.testing.assert_allclose(ppca.principal_angles(np.eye(3)[:, :2], np.eye(3)[:, 1:]), [90, 0])


# --------------------------------------------------------------------------- simulate


def test_simulate_is_deterministic_and_returns_truth():
    a, truth_a = ppca.simulate(7, 50, 6, 3, sigma=0.2)
    b, truth_b = ppca.simulate(7, 50, 6, 3, sigma=0.2)
    pd.testing.assert_frame_equal(a, b)
    for key in ("loadings", "mean", "sigma"):
        np.testing.assert_array_equal(truth_a[key], truth_b[key])
    c, _ = ppca.simulate(8, 50, 6, 3, sigma=0.2)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    assert list(a.columns) == [f"x{j}" for j in range(1, 7)]
    assert truth_a["loadings"].shape == (6, 3) and truth_a["mean"].shape == (6,)
    assert float(truth_a["sigma"]) == 0.2
    # Without noise the rows lie exactly in the affine span of the true loadings.
    frame, truth = ppca.simulate(1, 20, 5, 2, sigma=0.0)
    resid = frame.to_numpy() - truth["mean"]
    coef = np.linalg.lstsq(truth["loadings"], resid.T, rcond=None)[0]
    np.testing.assert_allclose(truth["loadings"] @ coef, resid.T, atol=1e-10)  # seen 3e-15


def test_ml_on_a_large_simulated_set_recovers_the_truth():
    num_data, d, k = 20_000, 10, 2
    frame, truth = ppca.simulate(0, num_data, d, k)
    fit = ppca.fit_ml(frame.to_numpy(), k)
    c_true = ppca.covariance(truth["loadings"], truth["sigma"])
    # For Gaussian rows E|S - C|_F^2 = (tr(C)^2 + |C|_F^2) / N; the ML C is S projected onto
    # the PPCA family, no farther. Seen 0.54 of that rms (at most 1.48 over seeds 0-9).
    rms = math.sqrt((np.trace(c_true) ** 2 + np.linalg.norm(c_true) ** 2) / num_data)
    assert np.linalg.norm(ppca.covariance(fit.loadings, fit.sigma) - c_true) < 3 * rms
    # sigma^2 averages D - K noise eigenvalues: relative sd of sigma is about
    # 1 / sqrt(2 N (D - K)). Seen 1.0 of that sd.
    sd = float(truth["sigma"]) / math.sqrt(2 * num_data * (d - k))
    assert abs(fit.sigma - float(truth["sigma"])) < 5 * sd
    assert ppca.principal_angles(fit.loadings, truth["loadings"]).max() < 1.0  # seen 0.34 deg


# --------------------------------------------------------------------------- metrics


def _point_draws(fit: ppca.PPCAFit) -> dict[str, np.ndarray]:
    return {"loadings": fit.loadings[None], "mean": fit.mean[None], "sigma": np.array([fit.sigma])}


def test_extra_metrics_zero_against_itself_and_rotation_invariant():
    frame, truth = ppca.simulate(0, 300, 8, 2)
    post = ppca.make_posterior(frame, truth=truth)
    draws = post.closed_forms["ml"](0, 1).draws
    own = post.extra_metrics(draws, draws)
    assert set(own) == {
        "cov_rel_error",
        "subspace_angle_max_deg",
        "truth_cov_rel_error",
        "truth_subspace_angle_max_deg",
        "truth_sigma_rel_error",
    }
    assert all(isinstance(v, float) for v in own.values())
    assert own["cov_rel_error"] == 0.0 and own["subspace_angle_max_deg"] < 1e-5  # seen 3e-14
    # Rotating W in every draw (a different R per draw) changes no metric.
    rng = np.random.default_rng(1)
    many = {
        "loadings": draws["loadings"] + 0.05 * rng.standard_normal((50, 8, 2)),
        "mean": np.repeat(draws["mean"], 50, axis=0),
        "sigma": draws["sigma"] * np.exp(0.05 * rng.standard_normal(50)),
    }
    rotations = np.linalg.qr(rng.standard_normal((50, 2, 2)))[0]
    rotated = {**many, "loadings": many["loadings"] @ rotations}
    a, b = post.extra_metrics(many, draws), post.extra_metrics(rotated, draws)
    # The mean of C over draws, written out with the batched covariance.
    cbar = ppca.covariance(many["loadings"], many["sigma"]).mean(0)
    cref = ppca.covariance(draws["loadings"][0], draws["sigma"][0])
    direct = np.linalg.norm(cbar - cref) / np.linalg.norm(cref)
    assert a["cov_rel_error"] == pytest.approx(direct, rel=1e-10)  # seen 2e-15
    assert a["cov_rel_error"] > 1e-3  # the draws differ from the reference (seen 9e-3)
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(a[key])), key  # seen 7e-15
    # The truth scores itself perfectly.
    exact = post.extra_metrics({k: np.asarray(v)[None] for k, v in truth.items()}, None)
    assert set(exact) == {
        "truth_cov_rel_error",
        "truth_subspace_angle_max_deg",
        "truth_sigma_rel_error",
    }
    assert exact["truth_sigma_rel_error"] == 0.0
    assert exact["truth_cov_rel_error"] < 1e-12  # seen 5e-17 (einsum vs matmul rounding)
    assert exact["truth_subspace_angle_max_deg"] < 1e-5  # seen 6e-14


def test_extra_metrics_detect_known_perturbations():
    post = ppca.make_posterior(_frame(num_data=200, num_features=6))
    ref = post.closed_forms["ml"](0, 1).draws
    fit_c = ppca.covariance(ref["loadings"][0], ref["sigma"][0])
    # Doubling sigma moves C by 3 sigma^2 I exactly.
    doubled = {**ref, "sigma": 2 * ref["sigma"]}
    expected = 3 * float(ref["sigma"][0]) ** 2 * math.sqrt(6) / np.linalg.norm(fit_c)
    metrics = post.extra_metrics(doubled, ref)
    assert metrics["cov_rel_error"] == pytest.approx(expected, rel=1e-12)  # seen 4e-16
    assert metrics["subspace_angle_max_deg"] < 1e-5  # same eigenvectors (seen 4e-14)
    assert "truth_cov_rel_error" not in metrics  # no truth for a plain frame
    # Turning the first loading 30 degrees out of the principal plane into the next
    # eigenvector of C moves the estimated subspace by 30 degrees.
    evecs = np.linalg.eigh(fit_c)[1][:, ::-1]
    w = ref["loadings"][0]
    lengths = np.linalg.norm(w, axis=0)
    w_turned = np.column_stack(
        [
            lengths[0]
            * (math.cos(math.pi / 6) * evecs[:, 0] + math.sin(math.pi / 6) * evecs[:, 2]),
            w[:, 1],
        ]
    )
    turned = post.extra_metrics({**ref, "loadings": w_turned[None]}, ref)
    assert turned["subspace_angle_max_deg"] == pytest.approx(30.0, abs=1e-6)  # seen 4e-15 off
    assert post.extra_metrics(ref, None) == {}


def test_identified_quantities_are_entries_and_spectrum_of_c_and_rotation_free():
    frame, _ = ppca.simulate(0, 80, 5, 2)
    post = ppca.make_posterior(frame, latent_dim=2)
    rng = np.random.default_rng(0)
    draws = {
        "loadings": rng.standard_normal((2, 3, 5, 2)),
        "mean": rng.standard_normal((2, 3, 5)),
        "sigma": np.exp(0.3 * rng.standard_normal((2, 3))),
    }
    got = post.identified(draws)
    assert set(got) == set(post.accuracy_sites)
    c = ppca.covariance(draws["loadings"], draws["sigma"])
    rows, cols = np.triu_indices(5)
    np.testing.assert_array_equal(got["cov"], c[..., rows, cols])  # row by row, as the coords
    assert got["cov"].shape == (2, 3, len(post.coords["cov_entry"]))
    assert post.coords["cov_entry"][1] == "x1,x2"
    # The top K eigenvalues of C, largest first; the D - K others are sigma^2.
    eig = np.linalg.eigvalsh(c)
    np.testing.assert_allclose(got["eigenvalues"], eig[..., ::-1][..., :2], rtol=1e-12)
    np.testing.assert_allclose(eig[..., :3], np.repeat(draws["sigma"][..., None] ** 2, 3, -1))
    # A different rotation of W in every draw changes none of them.
    turns = np.linalg.qr(rng.standard_normal((2, 3, 2, 2)))[0]
    turned = post.identified({**draws, "loadings": draws["loadings"] @ turns})
    for key in got:
        np.testing.assert_allclose(turned[key], got[key], rtol=1e-10, atol=1e-12)  # seen 4e-15


def test_many_features_keep_the_diagonal_of_c_only():
    # 12 features: 78 pairs would exceed MAX_COV_ENTRIES; the 12 variances are kept.
    assert ppca.MAX_COV_ENTRIES < 78
    frame, _ = ppca.simulate(0, 40, 12, 2)
    post = ppca.make_posterior(frame, latent_dim=2)
    assert post.coords["cov_entry"] == [f"x{i},x{i}" for i in range(1, 13)]
    draws = post.closed_forms["ml"](0, 1).draws
    got = post.identified(draws)["cov"]
    c = ppca.covariance(draws["loadings"], draws["sigma"])
    np.testing.assert_array_equal(got, np.diagonal(c, axis1=-2, axis2=-1))


def test_cov_ref_spread_is_the_reference_posteriors_own_spread_of_c():
    post = ppca.make_posterior(_frame(num_data=200, num_features=6))
    ml = post.closed_forms["ml"](0, 1).draws
    # Two reference draws that differ in sigma only (1 and 2): C_s - Cbar = +-1.5 I.
    ref = {
        "loadings": np.repeat(ml["loadings"], 2, axis=0),
        "mean": np.repeat(ml["mean"], 2, axis=0),
        "sigma": np.array([1.0, 2.0]),
    }
    cbar = ppca.covariance(ml["loadings"][0], 1.0) + 1.5 * np.eye(6)
    metrics = post.extra_metrics(ml, ref)
    expected = 1.5 * math.sqrt(6) / np.linalg.norm(cbar)
    assert metrics["cov_ref_spread"] == pytest.approx(expected, rel=1e-12)  # seen 2e-16
    assert "cov_ref_spread" not in post.extra_metrics(ref, ml)  # a point has no spread


# --------------------------------------------------------------------------- priors


def test_default_priors_scale_with_the_data_and_floor_constant_columns():
    x = _x(num_data=40, num_features=4).copy()
    x[:, 3] = 7.0  # a constant column, as digits' border pixels
    priors = ppca.default_priors(x, 2)
    sd = np.std(x, axis=0, ddof=1)
    overall = math.sqrt(np.mean(sd**2))
    floored = np.maximum(sd, 0.1 * overall)
    np.testing.assert_allclose(priors.loadings_scale, 2.5 * floored / math.sqrt(2))
    np.testing.assert_allclose(priors.mean_scale, 2.5 * floored)
    np.testing.assert_allclose(priors.mean_loc, x.mean(0))
    assert priors.sigma_scale == pytest.approx(overall) and priors.floored == 1
    assert priors.floor == pytest.approx(0.1 * overall)
    assert min(priors.loadings_scale) > 0
    # Units: multiplying the data by c multiplies every scale by c.
    scaled = ppca.default_priors(1000.0 * x, 2)
    np.testing.assert_allclose(scaled.loadings_scale, 1000.0 * np.array(priors.loadings_scale))
    np.testing.assert_allclose(scaled.mean_scale, 1000.0 * np.array(priors.mean_scale))
    assert scaled.sigma_scale == pytest.approx(1000.0 * priors.sigma_scale)
    # Given scales are used as they are.
    given = ppca.default_priors(x, 2, loadings_scale=3.0, sigma_prior="half_normal", sigma_scale=2)
    assert given.loadings_scale == (3.0,) * 4 and given.sigma_scale == 2.0
    assert "half_normal(2)" in given.describe(["a", "b", "c", "d"])
    assert "near-constant" in priors.describe()


@pytest.mark.parametrize("sigma_prior", ppca.SIGMA_PRIORS)
def test_sigma_priors_are_proper(sigma_prior):
    post = ppca.make_posterior(_frame(), sigma_prior=sigma_prior)
    draws = _draws(post.model, post.data, 3, seed=0)
    assert all(float(d["sigma"]) > 0 for d in draws)
    assert sigma_prior in post.description["prior"]


# --------------------------------------------------------------------------- posterior


def test_posterior_fields():
    frame, truth = ppca.simulate(0, 60, 5, 2)
    post = ppca.make_posterior(frame, latent_dim=3, test_fraction=0.25, seed=1, truth=truth)
    assert post.model_name == "ppca"
    assert post.forms.likelihood is not post.forms.fit  # per-row densities: LOO
    assert post.sites == ("loadings", "mean", "sigma")
    # Judged on what the data identify, never on the rotatable loadings.
    assert post.accuracy_sites == ("eigenvalues", "sigma", "cov", "mean")
    assert post.obs_site == "x" and post.max_plate_nesting == 1
    local = post.locals[0]
    assert len(post.locals) == 1
    assert (local.site, local.dim, local.input, local.plate) == (
        "z",
        3,
        "x",
        "data",
    )
    assert post.dims == {
        "loadings": ["feature", "latent"],
        "mean": ["feature"],
        "cov": ["cov_entry"],
        "eigenvalues": ["latent"],
    }
    names = ["x1", "x2", "x3", "x4", "x5"]
    pairs = [f"{a},{b}" for i, a in enumerate(names) for b in names[i:]]
    assert post.coords == {"feature": names, "latent": [0, 1, 2], "cov_entry": pairs}
    assert post.num_data == 45 and post.num_test == 15
    assert post.data["x"].dtype == torch.float64 == post.test_data["x"].dtype == post.dtype
    assert post.row_labels is None and post.truth is not None
    assert post.description["rows"] == "45 fitted, 15 held out"
    trace = poutine.trace(post.forms.likelihood).get_trace(**post.data)
    sample_sites = [
        n for n, site in trace.nodes.items() if site["type"] == "sample" and n != "data"
    ]
    assert sample_sites == [
        "loadings",
        "mean",
        "sigma",
        "x",
    ]
    assert trace.nodes["loadings"]["value"].shape == (5, 3)
    assert not trace.nodes["loadings"]["cond_indep_stack"]  # globals sit outside every plate
    assert post.model.__name__ == "summary_model" and post.forms.likelihood.__name__ == "model"
    assert post.forms.local.__name__ == "local_model"


def test_closed_forms_are_points_with_info():
    post = ppca.make_posterior(_frame(num_data=100))
    assert set(post.closed_forms) == {"ml", "em"}
    x = post.data["x"].numpy()
    ml = post.closed_forms["ml"](0, 1000)
    em = post.closed_forms["em"](0, 1000)
    for result in (ml, em):
        assert isinstance(result, ClosedForm) and result.point
        assert result.draws["loadings"].shape == (1, 5, 2)
        assert result.draws["mean"].shape == (1, 5) and result.draws["sigma"].shape == (1,)
        assert result.info["log_likelihood"] <= ml.info["log_likelihood"] + 1e-9  # ML is max
        assert np.isfinite(result.info["bic"])
    assert ml.info["log_likelihood"] == ppca.fit_ml(x, 2).log_likelihood  # the same computation
    assert em.info["converged"] is True and em.info["num_iter"] == len(em.trace) - 1
    # As in test_em_reaches_the_ml_solution; seen 4e-10 relative.
    assert em.info["log_likelihood"] == pytest.approx(ml.info["log_likelihood"], rel=1e-8)


def test_ml_needs_more_rows_than_features_and_em_a_positive_noise():
    assert set(ppca.make_posterior(_frame(num_data=6, num_features=5)).closed_forms) == {
        "ml",
        "em",
    }
    # 5 rows span 4 dimensions > K = 2: EM still has a finite maximum to reach.
    post = ppca.make_posterior(_frame(num_data=5, num_features=5))
    assert set(post.closed_forms) == {"em"}
    assert np.isfinite(post.closed_forms["em"](0, 1).info["log_likelihood"])
    # 3 rows span 2 = K dimensions: the likelihood is unbounded (sigma -> 0), no closed form.
    assert ppca.make_posterior(_frame(num_data=3, num_features=5)).closed_forms == {}
    assert "more fitted rows than features" in ppca.CLOSED_FORM_HINTS["ml"]
    assert "more than K dimensions" in ppca.CLOSED_FORM_HINTS["em"]


EXPECTED = {  # rows, features, default latent dim, label column
    "digits": (1797, 64, 5, "digit"),
    "iris": (150, 4, 2, "species"),
    "simulated": (500, 10, 2, None),
}


def test_every_dataset_has_an_expected_shape():
    assert set(ppca.DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_datasets_load(name):
    rows, features, latent_dim, labels = EXPECTED[name]
    post = ppca.make_posterior(name)
    assert post.dataset == name and post.num_data == rows
    assert post.data["x"].shape == (rows, features) and torch.isfinite(post.data["x"]).all()
    assert post.locals[0].dim == latent_dim == len(post.coords["latent"])
    assert len(post.coords["feature"]) == features
    assert set(post.closed_forms) == {"ml", "em"}
    if labels is None:
        assert post.row_labels is None
    else:
        assert len(post.row_labels) == rows and labels not in post.coords["feature"]
    assert (post.truth is not None) == (name == "simulated")


def test_builtin_dataset_details():
    digits = ppca.make_posterior("digits", latent_dim=2, test_fraction=0.1)
    assert digits.coords["feature"][:2] == ["pixel_0_0", "pixel_0_1"]
    assert set(np.unique(digits.row_labels)) == set(range(10))
    assert len(digits.row_labels) == digits.num_data == 1617
    iris = ppca.make_posterior("iris")
    assert iris.coords["feature"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert set(iris.row_labels) == {"setosa", "versicolor", "virginica"}
    sim = ppca.make_posterior("simulated", seed=3)
    frame, truth = ppca.simulate(3, **ppca.SIMULATED)
    np.testing.assert_array_equal(sim.data["x"].numpy(), frame.to_numpy())
    np.testing.assert_array_equal(sim.truth["loadings"], truth["loadings"])
    # A subset of features caps the default latent dim below the feature count.
    assert ppca.make_posterior("iris", features=["sepal_length", "petal_width"]).locals[0].dim == 1


def test_csv_data(tmp_path):
    frame = _frame(num_data=20, num_features=4)
    frame.insert(0, "kind", ["a", "b"] * 10)
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    post = ppca.make_posterior(str(path), labels="kind")
    assert post.dataset == "table.csv" and post.coords["feature"] == ["x1", "x2", "x3", "x4"]
    np.testing.assert_allclose(post.data["x"].numpy(), frame[["x1", "x2", "x3", "x4"]].to_numpy())
    assert list(post.row_labels[:2]) == ["a", "b"]
    sub = ppca.make_posterior(str(path), features=["x2", "x4", "x1"])
    assert sub.coords["feature"] == ["x2", "x4", "x1"] and sub.locals[0].dim == 2
    with pytest.raises(ZooInputError, match="column 'kind' has a non-numeric value.*--features"):
        ppca.make_posterior(str(path))


# --------------------------------------------------------------------------- input errors


def _errors_frame() -> pd.DataFrame:
    return _frame(num_data=10, num_features=4)


def _with(column: str, row: int, value) -> pd.DataFrame:
    frame = _errors_frame().astype(object)
    frame.loc[row, column] = value
    return frame


ERROR_CASES = {
    "latent_dim_zero": (
        lambda: ppca.make_posterior(_errors_frame(), latent_dim=0),
        "latent dim 0 with 4 features; choose 1 <= K < 4",
    ),
    "latent_dim_too_big": (
        lambda: ppca.make_posterior(_errors_frame(), latent_dim=4),
        "latent dim 4 with 4 features",
    ),
    "latent_dim_fraction": (
        lambda: ppca.make_posterior(_errors_frame(), latent_dim=1.5),
        "latent dim must be a whole number",
    ),
    "nan": (lambda: ppca.make_posterior(_with("x2", 4, float("nan"))), "data row 5"),
    "inf": (lambda: ppca.make_posterior(_with("x1", 2, float("inf"))), "infinite value (inf)"),
    "one_row": (
        lambda: ppca.make_posterior(_errors_frame().iloc[:1]),
        "1 row(s) to fit; PPCA needs at least 2",
    ),
    "one_row_after_split": (
        lambda: ppca.make_posterior(_errors_frame().iloc[:2], test_fraction=0.5),
        "smaller --test-fraction",
    ),
    "unknown_dataset": (lambda: ppca.make_posterior("digitz"), "unknown dataset 'digitz'"),
    "missing_csv": (lambda: ppca.make_posterior("nope/table.csv"), "does not exist"),
    "non_numeric_column": (
        lambda: ppca.make_posterior(_with("x3", 3, "abc")),
        "column 'x3' has a non-numeric value 'abc' in data row 4; drop that column",
    ),
    "non_numeric_feature": (
        lambda: ppca.make_posterior(_with("x3", 3, "abc"), features=["x1", "x3"]),
        "drop 'x3' from --features",
    ),
    "missing_feature": (
        lambda: ppca.make_posterior(_errors_frame(), features=["x1", "w"]),
        "feature column 'w' is not in the data",
    ),
    "one_feature": (
        lambda: ppca.make_posterior(_errors_frame(), features=["x1"]),
        "PPCA needs at least 2",
    ),
    "duplicate_feature": (
        lambda: ppca.make_posterior(_errors_frame(), features=["x1", "x1"]),
        "listed twice",
    ),
    "missing_label": (
        lambda: ppca.make_posterior(_errors_frame(), labels="cls"),
        "label column 'cls'",
    ),
    "all_constant": (
        lambda: ppca.make_posterior(pd.DataFrame({"a": [1.0] * 5, "b": [2.0] * 5})),
        "every feature is constant",
    ),
    "unknown_sigma_prior": (
        lambda: ppca.make_posterior(_errors_frame(), sigma_prior="flat"),
        "unknown sigma prior 'flat'; choose one of: exponential, half_normal, half_cauchy",
    ),
    "negative_sigma_scale": (
        lambda: ppca.make_posterior(_errors_frame(), sigma_scale=-1.0),
        "sigma scale must be a positive number",
    ),
    "wrong_number_of_scales": (
        lambda: ppca.make_posterior(_errors_frame(), loadings_scale=[1.0, 2.0]),
        "needs one number or 4",
    ),
    "zero_mean_scale": (
        lambda: ppca.make_posterior(_errors_frame(), mean_scale=0.0),
        "mean prior scales must be positive",
    ),
    "bad_floor": (
        lambda: ppca.make_posterior(_errors_frame(), scale_floor=0.0),
        "scale floor must be in (0, 1]",
    ),
    "bad_test_fraction": (
        lambda: ppca.make_posterior(_errors_frame(), test_fraction=1.0),
        "test fraction must be in [0, 1)",
    ),
    "truth_shape": (
        lambda: ppca.make_posterior(_errors_frame(), truth=ppca.simulate(0, 5, 3, 1)[1]),
        "truth does not have 4 features",
    ),
    "fit_ml_latent_dim": (lambda: ppca.fit_ml(_x(), 10), "latent dim 10 with 10 features"),
    "fit_em_one_row": (lambda: ppca.fit_em(_x()[:1], 2, seed=0), "PPCA needs at least 2 rows"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_input_errors(case):
    build, expected = case
    with pytest.raises(ZooInputError) as info:
        build()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.strip() == message
