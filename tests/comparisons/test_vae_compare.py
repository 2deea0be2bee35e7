"""The VAE's comparison end to end on a small simulated posterior: every default training
variant and baseline runs, the hook's measurements land in a schema-valid results.json and
in each method's InferenceData, and they are mutually consistent."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import TINY, validate

from comparisons import compare
from guides import FitConfig
from guides.svi import _Loop
from zoo import MODELS, ZooInputError

QUICK = dataclasses.replace(
    TINY, name="quick", num_draws=10, fit=FitConfig(num_steps=150, min_steps=100, window=50)
)


@pytest.mark.slow  # about 30 s: four short trainings, each measured on the held-out rows
def test_the_vae_comparison_measures_every_variant_on_held_out_rows(tmp_path):
    post = MODELS["vae"].example(0, latent_dim=2, hidden=(8,), encoder_hidden=(8,))
    # The variants' own training settings (windows of ~20 epochs of digits) made short.
    short = {"window": 50, "min_steps": 100, "patience": 5, "batch_size": 10}
    post = dataclasses.replace(
        post, methods=tuple(dataclasses.replace(m, options={**m.options, **short})
                            if m.family == "amortized" else m for m in post.methods),
    )  # fmt: skip
    result = compare(post, seed=0, preset=QUICK, out_dir=tmp_path / "out")
    results = result.results
    validate(results)
    defaults = [m.name for m in post.methods if m.default]
    assert list(results["methods"]) == defaults and results["reference"] is None
    for name, record in results["methods"].items():
        assert record["diagnostics"].get("status") != "failed", (name, record)
        assert np.isfinite(record["metrics"]["lpd_test"]), name
    for name in ("amortized", "amortized_full", "amortized_iwae"):
        met, diag = results["methods"][name]["metrics"], results["methods"][name]["diagnostics"]
        assert met["elbo_test"] == pytest.approx(met["reconstruction_test"] - diag["kl_z"])
        # log p(x) >= ELBO, up to the IW estimate's error (5 of its standard errors).
        assert met["lpd_test"] > met["elbo_test"] - 5 * diag["iw_se"], name
        assert 0 <= met["active_units"] <= 2
        if name == "amortized_iwae":  # trained on another bound: no ELBO gaps to split
            assert "amortization_gap" not in met and "iwae" in diag["gaps"]
        else:  # the best per-row q starts at the encoder's and can only gain
            assert met["amortization_gap"] > -0.05, name
        idata = result.idata[name]
        assert idata.constant_data["log_px"].shape == (post.num_test,)
        assert idata.constant_data["reconstruction"].shape[1] == post.data["x"].shape[1]
    # The autoencoder has no density on z: no ELBO, no gaps, but log p(x) by a defensive
    # proposal.
    auto = results["methods"]["amortized_autoencoder"]["metrics"]
    assert "elbo_test" not in auto and "amortization_gap" not in auto
    # The follow-up: p(z | x) of held-out rows under the standard VAE's decoder, NUTS the
    # reference, written beside the report and linked from it.
    study = results["follow_ups"]["posterior_z"]
    assert (tmp_path / "out" / study["page"]).is_file()
    assert 'href="posterior_z/index.html"' in (tmp_path / "out" / "index.html").read_text()
    inner = result.follow_ups["posterior_z"].results
    validate(inner)
    assert inner["reference"] == "nuts"
    assert {"delta", "laplace", "mean_field", "full_rank", "flow", "amortized_is"} <= set(
        inner["methods"]
    )
    for name, record in inner["methods"].items():
        assert "lpd_train" not in record["metrics"], name  # no LOO of a row's own z
    assert "corr_within_row_max" in inner["methods"]["full_rank"]["metrics"]


def test_a_comparison_rerun_with_its_checkpoints_reads_the_fits_back(tmp_path, monkeypatch):
    post = MODELS["vae"].example(0, latent_dim=2, hidden=(8,), encoder_hidden=(8,))
    folder = tmp_path / "ckpt"
    run = dict(methods=["amortized"], preset=QUICK, follow_ups=False, checkpoint_dir=folder)
    first = compare(post, seed=0, **run).results["methods"]["amortized"]
    assert (folder / "amortized.pt").is_file()
    steps = []
    take_step = _Loop.take_step
    monkeypatch.setattr(_Loop, "take_step", lambda loop: steps.append(1) or take_step(loop))
    again = compare(post, seed=0, **run).results["methods"]["amortized"]
    assert steps == []  # nothing left to train
    # The finished fit is read back, not rerun: the same parameters, so the same measures.
    assert again["metrics"] == first["metrics"]
    assert again["diagnostics"]["final_elbo"] == first["diagnostics"]["final_elbo"]
    with pytest.raises(ZooInputError, match="written by another fit"):
        compare(post, seed=1, **run)  # another seed: another fit, its file refused
