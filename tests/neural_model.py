"""A tiny model with a decoder network and no global latent sites (a VAE in miniature), for
the tests that check such a model needs no special case anywhere."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from zoo import LocalLatents, MethodSpec, ModelForms, Posterior
from zoo.methods import declare_methods
from zoo.posterior import bind

LATENT, FEATURES, ROWS = 2, 4, 40


def decoder_model(x=None, *, decoder: nn.Module, num_data: int | None = None):
    """z_n ~ N(0, I); x_n ~ N(decoder(z_n), 0.5^2 I): a tiny VAE's generative model."""
    net = pyro.module("decoder", decoder)
    rows = x.shape[0] if x is not None else num_data
    zeros = torch.zeros(LATENT, dtype=torch.float64)
    with pyro.plate("data", rows):
        z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
        return pyro.sample("x", dist.Normal(net(z), 0.5).to_event(1), obs=x)


def _decoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(LATENT, 8), nn.Tanh(), nn.Linear(8, FEATURES)).double()


def _forms(seed: int) -> ModelForms:
    local = bind(decoder_model, decoder=_decoder(seed))
    return ModelForms(local=local, locals=(LocalLatents("z", LATENT, "x"),))


def _elbo_per_row(posterior: Posterior, run) -> dict[str, dict]:
    """The evaluation hook: the fitted guide's ELBO per fitted row (many particles)."""
    result = run.fitted
    with result.active(), torch.no_grad():
        loss = Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=1).loss(
            result.model, result.guide, **posterior.data
        )
    return {"metrics": {"elbo_train": -loss / posterior.num_data}}


def _rows(num: int, generator: torch.Generator) -> torch.Tensor:
    z = torch.randn(num, LATENT, generator=generator, dtype=torch.float64)
    noise = torch.randn(num, FEATURES, generator=generator, dtype=torch.float64)
    return torch.tanh(z @ torch.ones(LATENT, FEATURES, dtype=torch.float64)) + 0.5 * noise


def tiny_posterior(test_rows: int = 0) -> Posterior:
    """The tiny decoder model on 40 simulated rows (and ``test_rows`` held out)."""
    generator = torch.Generator().manual_seed(0)
    x = _rows(ROWS, generator)
    test = {"x": _rows(test_rows, generator)} if test_rows else None
    methods = declare_methods(
        (),
        ("mean_field",),
        nuts=False,
        variants=[
            MethodSpec("amortized", "amortized", {"global_guide": None}),
            MethodSpec("amortized_mlp", "amortized", {"global_guide": None, "encoder": "mlp"}),
        ],
    )
    return Posterior(
        model_name="vae",  # a stand-in: the schema knows the zoo's model names
        dataset="tiny decoder (test)",
        forms=_forms(0),
        build_forms=_forms,
        data={"x": x},
        test_data=test,
        obs_site="x",
        sites=(),
        dims={},
        coords={},
        methods=methods,
        evaluate=_elbo_per_row,
    )
