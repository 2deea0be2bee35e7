"""Every registered model, in every form it offers, passes the vectorization check of STYLE.md
(a batched log joint of 4 prior draws equals the 4 unbatched ones), keeps its global sites
outside every plate, and its forms share those sites; its posterior has its dtype whatever torch's
process-wide default dtype."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from vectorization import latent_names, log_joints, prior_draws

from zoo import MODELS, ZooInputError

NUM_DRAWS = 4

#: The forms of ModelForms, by purpose; a form that falls back to another (a model whose
#: ``sample`` form is its ``fit`` form) is the same function and is checked once.
FORM_NAMES = ("fit", "sample", "likelihood", "local")


def _distinct_forms(post) -> list[str]:
    seen, names = [], []
    for form in FORM_NAMES:
        fn = getattr(post.forms, form)
        if fn is not None and all(fn is not other for other in seen):
            seen.append(fn)
            names.append(form)
    return names


FORMS = [(name, form) for name, spec in MODELS.items() for form in _distinct_forms(spec.example(0))]


@pytest.mark.parametrize(("name", "form"), FORMS, ids=[f"{n}-{f}" for n, f in FORMS])
def test_every_model_form_vectorizes(name, form):
    post = MODELS[name].example(0)
    model = getattr(post.forms, form)
    draws = prior_draws(model, post.data, NUM_DRAWS, seed=1, obs=post.obs_site)
    unbatched, batched = log_joints(model, post.data, draws)
    assert torch.isfinite(unbatched).all()
    assert len(set(unbatched.tolist())) == NUM_DRAWS  # distinct draws, not one repeated
    # Seen: equal to rounding (1e-12 relative) on every form.
    torch.testing.assert_close(batched, unbatched, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name", list(MODELS))
def test_global_sites_sit_outside_every_plate_and_forms_share_them(name):
    post = MODELS[name].example(0)
    if post.model is None:  # no global latents (a VAE): nothing to sit outside a plate
        assert post.sites == () and post.forms.local is not None
        return
    trace = poutine.trace(post.model).get_trace(**post.data)
    for site in post.sites:
        node = trace.nodes[site]
        assert node["type"] == "sample", site
        assert not node["cond_indep_stack"], f"{name}: global site {site} sits in a plate"
    globals_ = [s for s in latent_names(post.model, post.data) if s in post.sites]
    for form in _distinct_forms(post)[1:]:
        other = getattr(post.forms, form)
        shared = [s for s in latent_names(other, post.data) if s in post.sites]
        assert shared == globals_, f"{name}.{form} has other global sites or another order"


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec.methods])
def test_the_registry_names_the_methods_a_posterior_offers(name):
    post = MODELS[name].example(0)
    assert MODELS[name].methods == tuple(m.name for m in post.methods)


@pytest.mark.parametrize("name", list(MODELS))
def test_an_unknown_data_set_is_one_line_listing_the_built_in_ones(name):
    spec = MODELS[name]
    with pytest.raises(ZooInputError) as info:
        spec.make_posterior("no_such_data_set")
    message = str(info.value)
    assert "\n" not in message and "no_such_data_set" in message
    for dataset in spec.datasets:
        assert dataset in message


def _built(name: str) -> tuple:
    """A model's example posterior with what the dtype test compares: its data, an
    ``init_values`` start (None where the model has none) and the log density of the
    ``sample`` form at that start, or at a seeded prior draw."""
    post = MODELS[name].example(0)
    start = None if post.init_values is None else dict(post.init_values(0))
    values = start
    form = post.forms.sample or post.forms.local  # a model without globals: its local form
    if values is None:
        pyro.set_rng_seed(1)
        trace = poutine.trace(form).get_trace(**post.data)
        values = {s: trace.nodes[s]["value"] for s in latent_names(form, post.data)}
    conditioned = poutine.condition(form, data=values)
    trace = poutine.trace(conditioned).get_trace(**post.data)
    # A plate's own site has a log density of 0 in torch's default dtype: left out.
    log_density = trace.log_prob_sum(lambda name, site: not site_is_subsample(site))
    return post, start, log_density


#: The dtype of each model's posterior by default: float64, but float32 for the networks of
#: the VAE (zoo.vae.make_posterior says why).
DTYPES = {"vae": torch.float32, "two_level_vae": torch.float32}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_posterior_has_its_dtype_whatever_the_default_dtype(name):
    # A library must not depend on torch's process-wide default dtype: built under a float32
    # default, a posterior holds the same tensors, of its own dtype, as under a float64 one.
    dtype = DTYPES.get(name, torch.float64)
    expected = _built(name)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        got = _built(name)
    finally:
        torch.set_default_dtype(default)
    post, start, log_density = got
    assert post.dtype == dtype and post.device == torch.device("cpu")
    for key, value in post.data.items():
        assert value.dtype == dtype, key
        assert torch.equal(value, expected[0].data[key]), key
    grid = {} if post.grid is None else post.grid.data  # the regression's predictive grid
    assert all(value.dtype == torch.float64 for value in grid.values())
    if name in ("linear_regression", "gmm"):  # the models with a start of their own
        assert start is not None and expected[1] is not None
        for site, value in start.items():
            assert value.dtype == torch.float64, site
            assert torch.equal(value, expected[1][site]), site
    assert log_density.dtype == dtype and torch.isfinite(log_density)
    # Seen: bitwise equal (every operation in the posterior's dtype in both).
    assert torch.equal(log_density, expected[2])
