"""The VAE's bounds and gaps on a linear-Gaussian decoder, where log p(x) and the exact
posterior of z are known in closed form (the model is then probabilistic PCA)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyro
import pytest
import torch

from guides import FitConfig
from guides.iwae import IWAE
from guides.weights import weighted
from zoo import ZooInputError
from zoo.vae import make_posterior, simulate
from zoo.vae.bounds import elbo_parts, from_encoder, log_evidence, prior
from zoo.vae.gaps import inference_gaps
from zoo.vae.model import Decoder, model

K, D, ROWS = 2, 5, 30


@pytest.fixture(scope="module")
def linear():
    """A linear decoder with a shared Gaussian scale (PPCA), its data and exact posterior."""
    torch.manual_seed(0)
    decoder = Decoder(K, D, (), scale="shared")
    with torch.no_grad():
        decoder.net[0].weight.copy_(torch.randn(D, K, dtype=torch.float64))
        decoder.net[0].bias.copy_(torch.randn(D, dtype=torch.float64))
        decoder.raw_scale.fill_(math.log(math.expm1(0.5)))
    w, b = decoder.net[0].weight.detach(), decoder.net[0].bias.detach()
    sigma2 = float(decoder.scale().detach()) ** 2
    cov = w @ w.T + sigma2 * torch.eye(D, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(b, cov)
    x = marginal.sample((ROWS,))
    # p(z | x) = N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I (Bishop 2006, 12.42)
    m = w.T @ w + sigma2 * torch.eye(K, dtype=torch.float64)
    m_inv = torch.linalg.inv(m)
    tril = torch.linalg.cholesky(sigma2 * m_inv)

    def exact(xs):
        loc = (xs - b) @ w @ m_inv.T
        return pyro.distributions.MultivariateNormal(loc, scale_tril=tril.expand(len(xs), K, K))

    return decoder, x, marginal.log_prob(x).numpy(), exact


def test_iwae_with_the_exact_posterior_is_log_px_for_any_k(linear):
    # With q(z | x) = p(z | x) every weight equals p(x): the bound is log p(x), for k = 1 (the
    # ELBO) as for k = 7, up to rounding.
    decoder, x, log_px, exact = linear

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", exact(x))

    for k in (1, 7):
        loss = IWAE(k).loss(lambda x: model(x, decoder=decoder, fixed=True), guide, x)
        assert loss == pytest.approx(-log_px.sum(), rel=1e-10)


def test_iwae_is_per_row_and_weights_a_minibatch(linear):
    # A bad q: the per-row bound lies below log p(x) row by row and grows with k; scaled by
    # N / B as the fit loop weighs a minibatch.
    decoder, x, log_px, exact = linear

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            q = exact(x)
            pyro.sample("z", pyro.distributions.Normal(q.loc + 0.5, 1.0).to_event(1))

    fixed = lambda x: model(x, decoder=decoder, fixed=True)  # noqa: E731
    pyro.set_rng_seed(0)
    small = -IWAE(4).loss(fixed, guide, x)
    pyro.set_rng_seed(0)
    large = -IWAE(400).loss(fixed, guide, x)
    # Seen (seeds 0-2): k = 4 below log p(x) by 29-47 nats over the 30 rows, k = 400 within
    # 0.81 of it (either side: the estimate is random).
    assert small < large - 10.0 and abs(large - log_px.sum()) < 2.0
    pyro.set_rng_seed(0)
    with weighted(plate="data", rows=3.0, local_sites=("z",), beta=1.0):
        scaled = -IWAE(4).loss(fixed, guide, x)
    assert scaled == pytest.approx(3.0 * small, rel=1e-10)


def test_importance_weighted_log_px_and_its_error(linear):
    decoder, x, log_px, exact = linear
    # The exact posterior as proposal: every weight is p(x), the estimate exact, its se 0.
    best = log_evidence(decoder, from_encoder(exact), x, samples=50, seed=0)
    np.testing.assert_allclose(best.log_px, log_px, rtol=1e-10)
    assert best.se.max() < 1e-8
    # The prior as proposal: unbiased weights, so log p-hat is within 4 of its own se of
    # log p(x) on every row (a 1-in-15,000 event per row; plus the Jensen bias, se^2 / 2).
    broad = log_evidence(
        decoder, lambda xs, rows: prior(decoder).expand((len(xs),)), x, samples=20_000, seed=1
    )
    assert np.all(np.abs(broad.log_px - log_px) < 4 * broad.se + broad.se**2)
    assert broad.se.max() < 0.2 and broad.khat.shape == (ROWS,)


def test_elbo_terms_add_up_and_equal_log_px_at_the_exact_posterior(linear):
    decoder, x, log_px, exact = linear
    parts = elbo_parts(decoder, from_encoder(exact), x, samples=4000, seed=0)
    np.testing.assert_allclose(parts.elbo, parts.reconstruction - parts.kl)
    # The ELBO's Monte Carlo error: the reconstruction term is a mean of 4000 draws of a
    # quadratic form whose sd is below 3 nats here; 0.2 is over 4 of its standard errors.
    np.testing.assert_allclose(parts.elbo, log_px, atol=0.2)


def test_gaps_vanish_at_the_exact_posterior_and_see_a_poor_encoder(linear):
    decoder, x, log_px, exact = linear

    def shifted(xs, rows):  # the right covariance, every mean 1 off
        q = exact(xs)
        return pyro.distributions.MultivariateNormal(q.loc + 1.0, scale_tril=q.scale_tril)

    gaps = inference_gaps(decoder, shifted, x, log_px, seed=0, samples=4000)
    # The best per-row Gaussian is the exact posterior (a Gaussian): no approximation gap;
    # the shifted encoder loses KL(q || p) = 1/2 |1|^2 in the posterior's metric per row.
    assert gaps.converged
    np.testing.assert_allclose(gaps.approximation, 0.0, atol=0.2)
    assert np.all(gaps.amortization > 0.5)


def test_bad_options_are_clear_errors():
    data, _ = simulate(0, num_data=40)
    with pytest.raises(ZooInputError, match="needs values in \\[0, 1\\]"):
        make_posterior(data, likelihood="bernoulli")
    with pytest.raises(ZooInputError, match="--latent-dim must be a whole number >= 1"):
        make_posterior(data, latent_dim=0)


@pytest.mark.slow  # about 15 s: a full-batch fit to its plateau on 400 rows of 64 pixels
def test_a_linear_vae_reaches_the_maximum_likelihood_of_ppca():
    # A linear decoder, a Gaussian likelihood with one shared scale and a linear encoder
    # (which holds the exact posterior of z): the model is PPCA and the ELBO's maximum over
    # the encoder is log p(x), so training reaches PPCA's maximum likelihood. The issue asks
    # for 0.05 nats per image; seen (seed 0, all 1294 rows): 1.6e-5 below it, after 2400
    # steps.
    from guides import FitConfig, fit_guide
    from zoo.vae import load_digits
    from zoo.vae.baselines import ppca_log_density

    digits = load_digits()
    rows = dataclasses.replace(digits, train=digits.train[:440], train_labels=None)
    post = make_posterior(rows, latent_dim=2, hidden=(), scale="shared", dtype=torch.float64)
    x = post.data["x"]
    config = FitConfig(num_steps=6000, min_steps=1000, window=200, num_particles=4)
    options = {"global_guide": None, "encoder": "linear"}
    result = fit_guide("amortized", post, seed=0, config=config, options=options)
    decoder = result.model.keywords["decoder"]
    w, b = decoder.net[0].weight.detach(), decoder.net[0].bias.detach()
    sigma2 = float(decoder.scale().detach()) ** 2
    cov = w @ w.T + sigma2 * torch.eye(x.shape[1], dtype=x.dtype)
    trained = torch.distributions.MultivariateNormal(b, cov).log_prob(x).mean().item()
    best = ppca_log_density(x.numpy(), post.test_data["x"].numpy(), 2).train.mean()
    assert result.converged
    assert best - 0.05 < trained <= best + 1e-9


@pytest.mark.parametrize("encoder, objective", [("mlp_full", "elbo"), ("mlp", "iwae")])
def test_a_vae_training_resumes_from_its_checkpoint_to_the_same_result(
    tmp_path, encoder, objective
):
    # Minibatch epochs, validation checks with repeats, a full-covariance encoder or the IWAE
    # objective: stopped at step 60 and resumed, the fit ends bitwise where the
    # uninterrupted one does, and the checkpoint loads without unpickling.
    from guides import Checkpoint, FitConfig, fit_guide

    post = make_posterior(simulate(0, num_data=60)[0], latent_dim=2, hidden=(8,))
    config = FitConfig(num_steps=120, min_steps=1000, window=40, batch_size=16, patience=50,
                       held_out_repeats=2, num_particles=3, objective=objective)  # fmt: skip
    options = {"global_guide": None, "encoder": encoder, "hidden": (8,)}
    whole = fit_guide("amortized", post, seed=0, config=config, options=options)
    path = tmp_path / "vae.ckpt"
    fit_guide("amortized", post, seed=0, config=dataclasses.replace(config, num_steps=60),
              options=options, checkpoint=Checkpoint(path, every=30))  # fmt: skip
    assert torch.load(path, weights_only=True)["loop"]["step"] == 60
    resumed = fit_guide("amortized", post, seed=0, config=config, options=options,
                        checkpoint=Checkpoint(path, every=30))  # fmt: skip
    assert resumed.elbo.tolist() == whole.elbo.tolist()
    assert resumed.held_out_elbo.tolist() == whole.held_out_elbo.tolist()
    for name, value in whole.params["params"].items():
        assert torch.equal(resumed.params["params"][name].detach(), value.detach()), name


@pytest.mark.slow  # about 25 s: 1500 steps (135 epochs) of the standard VAE on digits
def test_the_vae_beats_ppca_of_its_latent_dimension_on_held_out_digits():
    # The bar: held-out log p(x) above PPCA's with the same K = 8 (17.8 nats per
    # image on these rows). Seen after 1500 steps (seeds 0-2, the best validation check's
    # parameters kept at the cap): 38.0, 38.5, 38.1 nats (the smoke comparison's 3000 steps:
    # 56.4); the estimate here, with 500 draws per row, is a lower bound in expectation.
    from comparisons.runners import PRESETS, run_method
    from zoo.vae.bounds import log_evidence
    from zoo.vae.evaluate import trained

    post = make_posterior("digits")
    standard = next(m for m in post.methods if m.name == "amortized")
    preset = dataclasses.replace(PRESETS["smoke"], fit=FitConfig(num_steps=1500))
    run = run_method(post, standard, seed=0, preset=preset)
    x = post.test_data["x"].double()
    nets = trained(run, x)
    vae = log_evidence(nets.decoder, nets.proposal(), x, samples=500, seed=1).log_px.mean()
    ppca = post.closed_forms["ml"](0, 1).metrics["lpd_test"]
    assert 17 < ppca < 19 and vae > ppca + 10, (vae, ppca)
