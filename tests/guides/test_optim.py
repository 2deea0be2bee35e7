"""The fit loop's optimizer takes Pyro's ClippedAdam steps, bit for bit."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.distributions import constraints

from guides.optim import ParamStoreAdam


def _loss(net: torch.nn.Module, step: int) -> torch.Tensor:
    pyro.module("net", net)
    dtype = net.weight.dtype
    scale = pyro.param("scale", torch.ones(2, dtype=dtype), constraint=constraints.positive)
    x = torch.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3) * (step + 1)
    # Large values, so that some gradients exceed clip_norm and are clamped.
    return -dist.Normal(net(x), scale).log_prob(torch.full((2, 2), 30.0, dtype=dtype)).sum()


def _reference_step(optims: dict, lr: dict[str, float], clip_norm: float) -> None:
    """What SVI did: one pyro ClippedAdam per parameter, then the gradients zeroed."""
    for name, p in pyro.get_param_store().named_parameters():
        if name not in optims:
            optims[name] = ClippedAdam([p], lr=lr[name], clip_norm=clip_norm)
        optims[name].step()
        p.grad = None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_steps_as_pyro_clipped_adam(dtype):
    runs = {}
    for kind in ("pyro", "zoo"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2).to(dtype)
        optim, optims = ParamStoreAdam(lr=0.05, network_lr=0.01, clip_norm=1.0), {}
        for step in range(30):
            _loss(net, step).backward()
            if kind == "zoo":
                optim.step()
            else:
                rates = {n: optim.rate(n) for n, _ in pyro.get_param_store().items()}
                _reference_step(optims, rates, 1.0)
        runs[kind] = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    assert runs["zoo"].keys() == runs["pyro"].keys() == {"net$$$weight", "net$$$bias", "scale"}
    for name, value in runs["zoo"].items():
        assert torch.equal(value, runs["pyro"][name]), name
    assert optim.lr == {"net$$$weight": 0.01, "net$$$bias": 0.01, "scale": 0.05}


def test_state_round_trips_through_a_weights_only_file():
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    optim = ParamStoreAdam(lr=0.05, network_lr=0.01, clip_norm=10.0)
    for step in range(3):
        _loss(net, step).backward()
        optim.step()
    optim.scale_lr(0.1)
    buffer = io.BytesIO()
    torch.save(optim.get_state(), buffer)
    buffer.seek(0)
    again = ParamStoreAdam(lr=0.05, network_lr=0.01, clip_norm=10.0)
    again.set_state(torch.load(buffer, weights_only=True))
    assert again.lr == pytest.approx({"net$$$weight": 0.001, "net$$$bias": 0.001, "scale": 0.005})
    before = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    for opt in (optim, again):  # the same gradient through both: the same step
        for name, p in pyro.get_param_store().named_parameters():
            p.data.copy_(before[name])
        _loss(net, 3).backward()
        opt.step()
        after = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
        if opt is optim:
            expected = after
    assert all(torch.equal(after[n], expected[n]) for n in after)
    assert all(not torch.equal(after[n], before[n]) for n in after)


def test_reset_forgets_the_moments_and_keeps_the_rates():
    pyro.clear_param_store()
    net = torch.nn.Linear(3, 2).double()
    optim = ParamStoreAdam(lr=0.05, network_lr=0.01, clip_norm=10.0)
    _loss(net, 0).backward()
    optim.step()
    optim.scale_lr(0.1, reset=True)
    assert optim.state == {}
    _loss(net, 1).backward()
    optim.step()
    assert {s["step"] for s in optim.state.values()} == {1}
    assert optim.lr["scale"] == pytest.approx(0.005)
