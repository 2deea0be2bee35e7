"""A model with a decoder network and no global latent sites goes through the same flow as
every other model: fresh networks per method, an amortized guide and per-row guides, a
report, and metrics from the model's own evaluation hook. This is the proof that a VAE
needs no special case in the runners, the conversion or the report."""

from __future__ import annotations

import dataclasses
import json
import math

import pyro
import pytest
import torch
from helpers import TINY, validate
from neural_model import LATENT, ROWS, tiny_posterior

from comparisons import compare
from guides import FitConfig, fit_guide

#: One draw of nothing: the model has no global sites, and the fits are short.
QUICK = dataclasses.replace(
    TINY, name="quick", num_draws=100, fit=FitConfig(num_steps=300, min_steps=100, window=50)
)


@pytest.mark.slow  # 15-20 s: three fits and a report
def test_a_model_with_a_decoder_and_no_globals_runs_through_compare_to_a_report(tmp_path):
    post = tiny_posterior()
    result = compare(post, seed=0, preset=QUICK, out_dir=tmp_path / "out")
    results = result.results
    validate(results)
    assert list(results["methods"]) == ["mean_field", "amortized", "amortized_mlp"]
    assert results["reference"] is None
    for name, record in results["methods"].items():
        assert record["diagnostics"].get("status") != "failed", (name, record)
        assert record["summary"] == {}  # no global sites: nothing to summarize
        # The hook's number, a finite ELBO per row, near the fit's own final ELBO per row:
        # that is the mean of the last window of a fit still improving, the hook's a
        # 64-particle estimate at the end. Differences seen, seeds 0-2, all three methods:
        # -0.000 to 0.061 nats per row; 0.3 leaves 5 times that.
        elbo = record["metrics"]["elbo_train"]
        final = record["diagnostics"]["final_elbo"] / post.num_data
        assert math.isfinite(elbo) and abs(elbo - final) < 0.3, (name, elbo, final)
        assert "lpd_train" not in record["metrics"]  # no draws of globals: not pretended
    # Each amortized method reports its encoder's latent means per row.
    means = result.idata["amortized_mlp"].constant_data["z_mean"]
    assert means.shape == (ROWS, LATENT)
    page = (tmp_path / "out" / "index.html").read_text()
    assert "amortized_mlp" in page
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == json.loads(
        json.dumps(results)
    )


def test_each_method_trains_its_own_networks_and_a_fit_keeps_its_parameters():
    post = tiny_posterior()
    config = FitConfig(num_steps=100, min_steps=50, window=50)
    options = {"global_guide": None}
    first = fit_guide("amortized", post, seed=0, config=config, options=options)
    weights = {k: v.detach().clone() for k, v in first.params["params"].items()}
    second = fit_guide("amortized", post, seed=1, config=config, options=options)
    # A later fit neither shares nor changes the first one's parameters (decoder included).
    assert any("decoder" in k for k in weights)
    for name, value in weights.items():
        assert torch.equal(first.params["params"][name].detach(), value)
    shared = set(map(id, first.params["params"].values())) & set(
        map(id, second.params["params"].values())
    )
    assert not shared
    # The global param store is left as it was (empty here).
    assert not list(pyro.get_param_store().keys())
