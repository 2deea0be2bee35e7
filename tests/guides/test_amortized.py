"""The amortized guide against its known optimum (DESIGN.md section 5): on probabilistic PCA
at the maximum-likelihood solution, a linear encoder holds the exact posterior of z given x
(mean linear in x, one covariance for every row), so its ELBO reaches the exact log evidence
log p(x | W, mean, sigma); it does so for any rotation of the loadings."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from guides import FitConfig, fit_guide
from zoo import ZooInputError, ppca
from zoo import linear_regression as lr

LATENT_DIM = 2
FIT = FitConfig(num_steps=4000, lr=0.05, num_particles=16, min_steps=300, window=100)


@pytest.fixture(scope="module")
def data():
    frame, _ = ppca.simulate(0, num_data=300, num_features=6, latent_dim=LATENT_DIM)
    return frame


def _fixed_at_ml(post, angle: float = 0.0):
    """The local model with its globals fixed at the ML solution, its loadings rotated by
    ``angle`` (radians; 0: R = I, orthogonal columns), and that solution."""
    ml = ppca.fit_ml(post.data["x"].numpy(), LATENT_DIM)
    c, s = math.cos(angle), math.sin(angle)
    ml = dataclasses.replace(ml, loadings=ml.loadings @ np.array([[c, -s], [s, c]]))
    values = {
        "loadings": torch.as_tensor(ml.loadings),
        "mean": torch.as_tensor(ml.mean),
        "sigma": torch.as_tensor(ml.sigma),
    }
    return poutine.condition(post.forms.local, data=values), ml


def _log_prior(model, data) -> float:
    """log p(globals) at the values ``model`` is conditioned on: poutine.condition keeps
    the prior density of a conditioned site in the joint, so the ELBO of the fixed model is
    log p(globals) + log p(x | globals) - KL(q || p(z | x))."""
    trace = poutine.trace(model).get_trace(**data)
    return sum(
        float(trace.nodes[site]["fn"].log_prob(trace.nodes[site]["value"]).sum())
        for site in ("loadings", "mean", "sigma")
    )


def _elbo(model, guide, data, num_particles: int) -> torch.Tensor:
    """Eight ELBO estimates, each the mean of log p(x, z) - log q(z | x) over particles."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return torch.tensor([-elbo.loss(model, guide, **data) for _ in range(8)])


@pytest.mark.parametrize(
    ("encoder", "angle"),
    # The perceptron's fit takes 1000-1300 steps of 16 particles on 300 rows (30-90 s).
    [
        ("linear", 0.0),
        pytest.param("linear", 0.5, marks=pytest.mark.slow),  # 13 s
        pytest.param("mlp", 0.0, marks=pytest.mark.slow),
    ],
)
def test_linear_encoder_reaches_the_exact_log_evidence(data, encoder, angle):
    post = ppca.make_posterior(data, latent_dim=LATENT_DIM)
    fixed, ml = _fixed_at_ml(post, angle)
    loadings = ml.loadings
    gram = loadings.T @ loadings
    # R = I: orthogonal columns (M diagonal); rotated by 0.5 rad they are not, and the
    # exact posterior covariance sigma^2 M^-1 has a correlation the encoder must hold.
    assert (abs(gram[0, 1]) < 1e-8 * gram[0, 0]) == (angle == 0.0)
    result = fit_guide(
        "amortized",
        fixed,
        seed=0,
        config=FIT,
        local=post.locals[0],
        options={"encoder": encoder, "global_guide": None},
        **post.data,
    )
    assert result.converged
    log_evidence = ml.log_likelihood
    elbos = _elbo(fixed, result.guide, post.data, num_particles=64) - _log_prior(fixed, post.data)
    gap = float(log_evidence - elbos.mean())
    if encoder == "linear":
        # KL(q || p) summed over 300 rows: 0 at the optimum, where log p(x, z) - log q(z | x)
        # is the same for every z (the estimator has no variance). Seen on seeds 0-2: gap
        # 0.004-0.007 nats at R = I; -0.001-0.006 rotated by 0.5 rad with every initial
        # weight perturbed by 1e-7 (as another machine's rounding would); 3e-5 a row at most,
        # the stochastic fit's distance from its optimum, which its plateau rule cannot
        # resolve further. (Earlier runs saw the means within 0.08 posterior sd of the exact.)
        assert gap > -0.05  # the ELBO never exceeds the evidence (beyond estimator noise)
        assert gap < 0.1
        loc, cov = ppca.posterior_z(post.data["x"].numpy(), loadings, ml.mean, ml.sigma)
        fitted = result.guide.latent_means(post.data["x"]).numpy()
        np.testing.assert_array_less(np.abs(fitted - loc) / np.sqrt(np.diag(cov)), 0.2)
    else:
        # The perceptron holds a linear map only approximately (softplus units): close, not
        # exact. Seen on seeds 0-2: gap 0.13-0.19 nats over 300 rows; 0.14-0.20 with every
        # initial weight perturbed by 1e-7; 0.161 on seed 0 with two torch threads (as with one).
        # Before the network learning rate (Adam at 0.05 for every weight) it was 0.35-0.75
        # here and 5938 on seed 0 (the ELBO fell from -8.7e3 to -1.2e6 at step 2, reached
        # -2.1e3 and collapsed to -7.9e3, "converged"), 5938 on an AVX-512 machine too.
        assert -0.05 < gap < 1.0


@pytest.mark.slow  # MAP start, encoder warm-up and joint fit: over a minute on 2 busy cores
def test_amortized_on_a_posterior_fits_globals_and_encoder(data):
    post = ppca.make_posterior(data, latent_dim=LATENT_DIM)
    result = fit_guide("amortized", post, seed=0, config=FIT)
    assert result.info["global_guide"] == "delta" and result.info["encoder"] == "linear"
    assert result.info["init"].startswith("MAP")
    point = result.guide.globals.median()
    ml = ppca.fit_ml(post.data["x"].numpy(), LATENT_DIM)
    # The point estimate of the globals is near the ML solution (weak priors): same noise
    # scale and the same principal subspace. Seen: sigma 0.07% off, largest angle 0.05 deg.
    assert float(point["sigma"]) == pytest.approx(ml.sigma, rel=0.03)
    angles = ppca.principal_angles(point["loadings"].numpy(), ml.loadings)
    assert angles.max() < 3.0
    # Draws are of the globals (a point here), through the form with z summed out.
    draws = result.sample(5, seed=1)
    assert set(draws) == {"loadings", "mean", "sigma"}
    np.testing.assert_array_equal(draws["sigma"], np.full(5, float(point["sigma"])))


def test_amortized_needs_local_latents():
    post = lr.make_posterior(lr.simulate(0, 30, 2)[0])
    with pytest.raises(ZooInputError, match="needs per-datapoint latents"):
        fit_guide("amortized", post, seed=0)
    with pytest.raises(ZooInputError, match="local=LocalLatents"):
        fit_guide("amortized", post.model, seed=0, **post.data)


def test_unknown_encoder_lists_the_names(data):
    post = ppca.make_posterior(data, latent_dim=LATENT_DIM)
    pyro.clear_param_store()
    with pytest.raises(ZooInputError, match="unknown encoder 'cnn'; choose one of: linear, mlp"):
        fit_guide("amortized", post, seed=0, options={"encoder": "cnn"})
