"""Every registered model, in every form it offers, passes the vectorization check of STYLE.md
(a batched log joint of 4 prior draws equals the 4 unbatched ones), keeps its global sites
outside every plate, and its forms share those sites."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine
from vectorization import latent_names, log_joints, prior_draws

from zoo import MODELS, ZooInputError

NUM_DRAWS = 4

FORMS = [
    (name, form)
    for name, spec in MODELS.items()
    for form in ("model", "marginal_model", "local_model")
    if getattr(spec.example(0), form) is not None
]


@pytest.mark.parametrize(("name", "form"), FORMS, ids=[f"{n}-{f}" for n, f in FORMS])
def test_every_model_form_vectorizes(name, form):
    post = MODELS[name].example(0)
    model = getattr(post, form)
    draws = prior_draws(model, post.data, NUM_DRAWS, seed=1, obs=post.obs_site)
    unbatched, batched = log_joints(model, post.data, draws)
    assert torch.isfinite(unbatched).all()
    assert len(set(unbatched.tolist())) == NUM_DRAWS  # distinct draws, not one repeated
    # Seen: equal to rounding (1e-12 relative) on every form.
    torch.testing.assert_close(batched, unbatched, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name", list(MODELS))
def test_global_sites_sit_outside_every_plate_and_forms_share_them(name):
    post = MODELS[name].example(0)
    trace = poutine.trace(post.model).get_trace(**post.data)
    for site in post.sites:
        node = trace.nodes[site]
        assert node["type"] == "sample", site
        assert not node["cond_indep_stack"], f"{name}: global site {site} sits in a plate"
    globals_ = [s for s in latent_names(post.model, post.data) if s in post.sites]
    for form in ("marginal_model", "local_model"):
        other = getattr(post, form)
        if other is None:
            continue
        shared = [s for s in latent_names(other, post.data) if s in post.sites]
        assert shared == globals_, f"{name}.{form} has other global sites or another order"


@pytest.mark.parametrize("name", list(MODELS))
def test_an_unknown_data_set_is_one_line_listing_the_built_in_ones(name):
    spec = MODELS[name]
    with pytest.raises(ZooInputError) as info:
        spec.make_posterior("no_such_data_set")
    message = str(info.value)
    assert "\n" not in message and "no_such_data_set" in message
    for dataset in spec.datasets:
        assert dataset in message
