"""What networks need of the fit loop: epochs of seeded minibatches, the weights of an
ELBO's terms (N / batch size on a minibatch's rows, beta on the per-row KL), held-out checks
and checkpoints that resume to the uninterrupted result without unpickling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from neural_model import tiny_posterior
from pyro import poutine

from guides import Checkpoint, FitConfig, fit_guide
from guides.weights import Batches, weighted
from zoo import ZooInputError

CONFIG = FitConfig(num_steps=200, min_steps=100, window=50, batch_size=15)
OPTIONS = {"global_guide": None, "encoder": "mlp"}


def test_epochs_see_every_row_once_in_a_seeded_order():
    data = {"x": torch.arange(10.0)[:, None]}
    batches = Batches.of(data, 4, seed=3)
    assert batches.per_epoch == 3
    epoch = [batches.next(data) for _ in range(3)]
    rows = torch.cat([b["x"][:, 0] for b, _ in epoch])
    assert sorted(rows.tolist()) == list(range(10))  # each row once
    assert [w for _, w in epoch] == [10 / 4, 10 / 4, 10 / 2]  # N / rows of each batch
    again = Batches.of(data, 4, seed=3)
    assert torch.equal(torch.cat([again.next(data)[0]["x"] for _ in range(3)])[:, 0], rows)
    assert not torch.equal(torch.cat([batches.next(data)[0]["x"] for _ in range(3)])[:, 0], rows)


def _model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5, 2.0))


@pytest.mark.parametrize(("rows", "beta"), [(1.0, 1.0), (3.0, 1.0), (1.0, 0.25), (2.0, 0.0)])
def test_weights_scale_the_rows_and_beta_the_per_row_kl(rows, beta):
    x = torch.tensor([0.3, -1.2, 2.0])
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(_guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(_model, trace=guide_trace)).get_trace(x)
    log_lik = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    kl_term = (
        model_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
        - guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
    ).sum()
    with weighted(plate="data", rows=rows, local_sites=("z",), beta=beta):
        g = poutine.trace(poutine.replay(_guide, trace=guide_trace)).get_trace(x)
        m = poutine.trace(poutine.replay(_model, trace=guide_trace)).get_trace(x)
    elbo = m.log_prob_sum() - g.log_prob_sum()
    assert float(elbo) == pytest.approx(rows * float(log_lik) + rows * beta * float(kl_term))


def test_a_resumed_fit_ends_where_the_uninterrupted_one_does(tmp_path):
    post = tiny_posterior()
    whole = fit_guide("amortized", post, seed=0, config=CONFIG, options=OPTIONS)
    path = tmp_path / "fit.ckpt"
    first = dataclasses.replace(CONFIG, num_steps=100)  # "interrupted" after step 100
    fit_guide("amortized", post, seed=0, config=first, options=OPTIONS,
              checkpoint=Checkpoint(path, every=50))  # fmt: skip
    # A checkpoint holds tensors and plain containers only: it loads without unpickling.
    assert torch.load(path, weights_only=True)["loop"]["step"] == 100
    resumed = fit_guide("amortized", post, seed=0, config=CONFIG, options=OPTIONS,
                        checkpoint=Checkpoint(path, every=50))  # fmt: skip
    assert resumed.steps == whole.steps == 200
    assert resumed.elbo.tolist() == whole.elbo.tolist()
    assert resumed.final_elbo == whole.final_elbo
    for name, value in whole.params["params"].items():
        assert torch.equal(resumed.params["params"][name].detach(), value.detach()), name


def test_a_finished_fit_reloads_and_another_fits_file_is_refused(tmp_path):
    post, path = tiny_posterior(), tmp_path / "fit.ckpt"
    done = fit_guide("amortized", post, seed=0, config=CONFIG, options=OPTIONS,
                     checkpoint=Checkpoint(path, every=1000, key="seed 0"))  # fmt: skip
    assert torch.load(path, weights_only=True)["loop"]["step"] == done.steps  # at the end
    again = fit_guide("amortized", post, seed=0, config=CONFIG, options=OPTIONS,
                      checkpoint=Checkpoint(path, every=1000, key="seed 0"))  # fmt: skip
    assert again.elbo.tolist() == done.elbo.tolist() and again.final_elbo == done.final_elbo
    for name, value in done.params["params"].items():
        assert torch.equal(again.params["params"][name].detach(), value.detach()), name
    with pytest.raises(ZooInputError, match="written by another fit"):
        fit_guide("amortized", post, seed=1, config=CONFIG, options=OPTIONS,
                  checkpoint=Checkpoint(path, key="seed 1"))  # fmt: skip


def test_held_out_checks_run_once_an_epoch_and_stop_early(tmp_path):
    post = tiny_posterior(test_rows=20)
    config = dataclasses.replace(CONFIG, num_steps=400, patience=1000)
    result = fit_guide("amortized", post, seed=0, config=config, options=OPTIONS)
    per_epoch = -(-post.num_data // CONFIG.batch_size)
    assert len(result.held_out_elbo) == result.steps // per_epoch
    # With patience 1 the fit stops at the first epoch whose held-out ELBO is not better
    # than the best before it, and puts that best epoch's parameters back.
    early = fit_guide(
        "amortized", post, seed=0, config=dataclasses.replace(config, patience=1),
        options=OPTIONS,
    )  # fmt: skip
    held = early.held_out_elbo.tolist()
    if "early_stopped" in early.info:
        assert held[-1] <= max(held[:-1]) and early.converged
        assert early.info["held_out_elbo"] == max(held)
    else:  # never worse: it ran to the end
        assert held == sorted(held) and early.steps == config.num_steps
    # Without an early stop, the end of the steps keeps the best check's parameters where the
    # last check was worse, as early stopping would have.
    held = result.held_out_elbo.tolist()
    kept = "best_held_out_kept" in result.info
    assert kept == (max(held) > held[-1]), (held, result.info)
    assert np.isfinite(result.final_elbo)
    if kept:  # the parameters are those the same fit had at its best check, bit for bit
        best = (int(np.argmax(held)) + 1) * per_epoch
        there = fit_guide("amortized", post, seed=0, options=OPTIONS,
                          config=dataclasses.replace(config, num_steps=best))  # fmt: skip
        assert there.held_out_elbo.tolist() == held[: len(there.held_out_elbo)]
        for name, value in there.params["params"].items():
            assert torch.equal(result.params["params"][name].detach(), value.detach()), name
