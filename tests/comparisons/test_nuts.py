"""The zoo's NUTS (comparisons.nuts, issue 13): its potential is Pyro's and its compiled
gradient the eager one, its draws have the target's moments within their Monte Carlo error,
a run is reproducible and a chain's draws are its own whatever it is batched with, and a
model that does not vectorize over chains runs under Pyro's sampler instead, saying so."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import TINY
from pyro.infer.mcmc.util import initialize_model

from comparisons.nuts import (
    BatchedPotential,
    Gradient,
    NotVectorized,
    Sampler,
    _checkpoints,
    _value_and_grad,
)
from comparisons.runners import NutsBudget, run_nuts
from zoo import ModelForms, gmm, ppca
from zoo import linear_regression as lr
from zoo.methods import NUTS_METHOD


def _posteriors():
    frame, _ = lr.simulate(0, num_data=40, num_features=3, correlation=0.5)
    mix, _ = gmm.simulate(0, num_components=2, num_data=40)
    pca, _ = ppca.simulate(0, num_data=30, num_features=4, latent_dim=2)
    return {
        "regression": lr.make_posterior(frame, target="y"),
        "mixture": gmm.make_posterior(mix, num_components=2),
        "ppca": ppca.make_posterior(pca, latent_dim=2),
    }


@pytest.mark.parametrize("name", ["regression", "mixture", "ppca"])
def test_the_batched_potential_is_pyros_potential_for_each_chain(name):
    post = _posteriors()[name]
    model = post.forms.sample
    potential = BatchedPotential(model, post.data, post.max_plate_nesting)
    pyro.set_rng_seed(0)
    _, pyro_potential, _, _ = initialize_model(
        model, model_kwargs=post.data, max_plate_nesting=post.max_plate_nesting
    )
    z = 0.3 * torch.randn(3, potential.dim, generator=torch.Generator().manual_seed(1))
    ours = potential(z)
    for c in range(3):
        params = {s.name: z[c, s.start : s.stop].reshape(s.unconstrained) for s in potential.sites}
        assert torch.allclose(ours[c], pyro_potential(params), rtol=1e-12, atol=1e-9), c
    potential.check_vectorized(z)  # and each chain alone gives the same


def test_checkpoints_are_the_subtrees_a_leaf_closes():
    # Leaf n (from 0) closes a subtree for every run of trailing 1 bits: leaf 1 closes the
    # pair (0, 1) against checkpoint 0; leaf 3 the pair (2, 3) and the four (0..3); leaf 7
    # three subtrees; an even leaf (0, 6) closes none (lo > hi).
    assert _checkpoints(1) == (0, 0)
    assert _checkpoints(3) == (0, 1)
    assert _checkpoints(5) == (1, 1)
    assert _checkpoints(7) == (0, 2)
    for n in (0, 2, 6):
        lo, hi = _checkpoints(n)
        assert lo > hi


COV = torch.tensor(
    [[1.0, 0.9 * 5, 0.0], [0.9 * 5, 25.0, 0.0], [0.0, 0.0, 0.01]], dtype=torch.float64
)
ZEROS = torch.zeros(4, 3, dtype=torch.float64)


def _gaussian(z: torch.Tensor) -> torch.Tensor:
    """Potential of N(0, COV): sds 1, 5, 0.1, the first two correlated at 0.9."""
    return 0.5 * (z @ torch.linalg.inv(COV) * z).sum(-1)


@pytest.mark.parametrize("dense", [False, True])
def test_draws_have_the_gaussians_moments_within_their_monte_carlo_error(dense):
    sampler = Sampler(_gaussian, seed=0, dense_mass=dense)
    run = sampler.run(ZEROS, num_warmup=300, num_samples=500)
    draws = run.z
    assert not run.diverging[:, 300:].any()
    sd = np.sqrt(np.diag(COV.numpy()))
    # Means and second moments, each against its own Monte Carlo standard error (ArviZ,
    # from the chains' ESS): 4 standard errors, a 6e-5 chance of a false alarm each.
    for values, target in ((draws, np.zeros(3)), (draws**2, sd**2)):
        data = az.convert_to_dataset(values[..., None].transpose(0, 1, 3, 2)[..., 0, :])
        mcse = az.mcse(data)["x"].values
        estimate = values.mean((0, 1))
        assert np.all(np.abs(estimate - target) < 4 * mcse), (estimate, target, mcse)
    corr = np.corrcoef(draws.reshape(-1, 3).T)[0, 1]
    # Seen: 0.899-0.908 over seeds 0-2 with either mass matrix (its sampling sd is about
    # (1 - 0.81) / sqrt(ESS ~ 1000) = 0.006).
    assert abs(corr - 0.9) < 0.05
    if dense:  # the adapted M^-1 is the covariance, up to its window's noise and shrinkage
        # Seen (mean over chains, seeds 0-2): 0.73-0.95 for 1, 3.2-4.1 for 4.5, 17.9-23.0
        # for 25, 0.008-0.011 for 0.01; the last window holds 100 correlated draws.
        minv = run.inverse_mass_matrix.mean(0)
        assert np.allclose(minv, COV.numpy(), rtol=0.5, atol=0.6)


def test_a_run_is_reproducible_and_every_iteration_is_reported():
    seen = []
    first = Sampler(_gaussian, seed=3, on_iteration=lambda s, c, it: seen.append((c, it)))
    a = first.run(ZEROS[:3], num_warmup=30, num_samples=20)
    b = Sampler(_gaussian, seed=3).run(ZEROS[:3], num_warmup=30, num_samples=20)
    assert np.array_equal(a.z, b.z) and np.array_equal(a.n_steps, b.n_steps)
    assert sorted(seen) == [(c, it) for c in range(3) for it in range(50)]
    # A chain's gradients are its own trees' leapfrog steps plus its set-up's.
    assert (a.grad_evals >= a.n_steps.sum(1)).all()
    assert a.batched_evals >= int(a.n_steps.sum(1).max())


def _target(model, **data) -> SimpleNamespace:
    """What run_nuts reads of a zoo Posterior."""
    return SimpleNamespace(
        forms=ModelForms(fit=model), init_values=None, max_plate_nesting=1, data=data
    )


def _matmul_model(x, y):
    coef = pyro.sample("coef", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(x @ coef, 1.0), obs=y)  # fails with a chain dim


def _pooled_model(y):
    coef = pyro.sample("coef", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(coef.sum(), 1.0), obs=y)  # sums over the chains too


def test_a_model_that_does_not_vectorize_over_chains_runs_under_pyros_sampler():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=gen)
    targets = [_target(_matmul_model, x=x, y=x.sum(-1)), _target(_pooled_model, y=torch.ones(5))]
    preset = dataclasses.replace(TINY, num_warmup=30, num_samples=20, nuts_budget=NutsBudget())
    for target in targets:
        with pytest.warns(UserWarning, match="Pyro's sampler ran it instead"):
            run = run_nuts(target, NUTS_METHOD, seed=0, preset=preset)
        assert run.diagnostics["sampler"] == "pyro" and not run.stopped
        assert "sampler_fallback" in run.diagnostics
        assert run.draws["coef"].shape[:2] == (2, 20)
    potential = BatchedPotential(_pooled_model, {"y": torch.ones(5)}, 1)
    with pytest.raises(NotVectorized, match="differs from each chain's alone"):
        potential.check_vectorized(torch.randn(2, 2, generator=gen))


def test_the_batched_run_reports_its_sampler_and_its_evaluations():
    post = _posteriors()["regression"]
    preset = dataclasses.replace(TINY, num_warmup=40, num_samples=30)
    run = run_nuts(post, NUTS_METHOD, seed=0, preset=preset)
    assert run.diagnostics["sampler"] == "zoo" and not run.stopped
    assert run.diagnostics["potential"] == "aten graph"
    assert run.draws["coef"].shape == (2, 30, 3)
    # Every batched evaluation moves both chains; each chain uses most of them.
    evals = run.diagnostics["batched_evals"]
    assert evals * 2 >= run.cost["grad_evals"] > evals
    assert run.diagnostics["mass_matrix"] == "dense"  # 5 coordinates: at most 50


def _fragile(z: torch.Tensor) -> torch.Tensor:
    """N(0, 0.5^2) whose evaluation fails (a Cholesky factor of [[1, z], [z, 1]]) at |z| >= 1,
    two sds out: where it fails, Pyro's NUTS takes the step for a divergence."""
    one = torch.ones_like(z[:, 0])
    matrix = torch.stack([torch.stack([one, z[:, 0]], -1), torch.stack([z[:, 0], one], -1)], -2)
    chol = torch.linalg.cholesky(matrix)
    return 2.0 * (z**2).sum(-1) + 0.0 * chol.sum((-1, -2))


def test_a_potential_that_fails_numerically_is_a_divergence_not_a_crash():
    run = Sampler(_fragile, seed=0).run(ZEROS[:2, :1], num_warmup=100, num_samples=200)
    assert run.diverging.any()  # steps beyond |z| = 1 were refused
    assert (np.abs(run.z) < 1).all()


def test_a_chains_draws_are_its_own_whatever_it_is_batched_with():
    start = torch.tensor([[0.5, -2.0, 0.05], [-1.0, 3.0, -0.1], [0.0, 1.0, 0.0]],
                         dtype=torch.float64)  # fmt: skip
    together = Sampler(_gaussian, seed=3, dense_mass=True).run(
        start, num_warmup=200, num_samples=100
    )
    alone = Sampler(_gaussian, seed=3, chains=[1], dense_mass=True).run(
        start[1:2], num_warmup=200, num_samples=100
    )
    # Chain 1's random numbers are its own: alone it takes the same trees to the same draws
    # (this potential is a row-wise product, so a batch computes each row as alone).
    assert np.array_equal(alone.n_steps[0], together.n_steps[1])
    assert np.allclose(alone.z[0], together.z[1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(together.z[0], together.z[1])


@pytest.mark.parametrize("name", ["regression", "mixture", "ppca"])
def test_the_compiled_gradient_is_the_eager_one(name):
    post = _posteriors()[name]
    potential = BatchedPotential(post.forms.sample, post.data, post.max_plate_nesting)
    z = 0.3 * torch.randn(2, potential.dim, generator=torch.Generator().manual_seed(2))
    gradient = Gradient(potential, z)
    assert gradient.how == "aten graph"
    far = z + torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    u, g = gradient(far)  # away from the point it was compiled at
    u0, g0 = _value_and_grad(potential, far)
    # The graph runs autograd's own operations in its order: seen bitwise equal on all three.
    assert torch.allclose(u, u0, rtol=1e-12, atol=1e-12)
    assert torch.allclose(g, g0, rtol=1e-10, atol=1e-10)


def _reads_a_value(z: torch.Tensor) -> torch.Tensor:
    """A potential whose scale is read out of its argument as a Python number: a trace would
    keep the number it saw."""
    scale = 1.0 + float(z.detach().abs().max())
    return 0.5 * (z**2).sum(-1) * scale


def _branches(z: torch.Tensor) -> torch.Tensor:
    """A potential that takes one branch or the other by the sign of its argument: a trace
    near a positive point would keep the first branch everywhere."""
    if z.sum() > 0:
        return 0.5 * (z**2).sum(-1)
    return 0.25 * (z**4).sum(-1)


def _keeps_the_positive(z: torch.Tensor) -> torch.Tensor:
    """A potential whose intermediate shape depends on the values (the positive entries)."""
    return 0.5 * (z[z > 0] ** 2).sum().expand(z.shape[0]) + 0.5 * (z**2).sum(-1)


@pytest.mark.parametrize("potential", [_reads_a_value, _branches])
def test_a_potential_that_reads_its_own_values_stays_eager(potential):
    z = torch.full((1, 3), 0.5, dtype=torch.float64)
    gradient = Gradient(potential, z)
    assert gradient.how == "eager"  # make_fx refuses it; the JIT's trace is not tried
    for point in (2 * z, -z):  # -z: the other branch
        u, g = gradient(point)
        u0, g0 = _value_and_grad(potential, point)
        assert torch.equal(u, u0) and torch.equal(g, g0)


def test_a_compiled_potential_that_fails_in_the_run_is_dropped_for_the_eager_one():
    z = torch.full((1, 3), 0.5, dtype=torch.float64)
    gradient = Gradient(_keeps_the_positive, z)
    assert gradient.how == "aten graph"  # the same three entries are positive near z
    point = torch.tensor([[0.5, -0.5, 0.5]], dtype=torch.float64)  # two positive
    u, g = gradient(point)
    u0, g0 = _value_and_grad(_keeps_the_positive, point)
    assert torch.equal(u, u0) and torch.equal(g, g0)
    assert gradient.how.startswith("eager (the aten graph failed during the run: ")
