"""Pyro's ClippedAdam, step for step, over every parameter of the param store at once.

Pyro's ``SVI.step`` traces the model and guide a second time to find the parameters a step
touched and keeps one ``torch.optim`` object per parameter, each stepped in its own Python
loop: on a small network that fixed cost is a large share of a step (``make bench``). This
optimizer keeps the same arithmetic (gradients clamped to +-``clip_norm``, then Adam with the
bias corrections folded into the step size, exactly as ``pyro.optim.ClippedAdam`` does it) in
``torch._foreach`` calls over every parameter that has a gradient, so a fit takes the same
steps and ends with the same parameters, bit for bit, as it did through ``SVI``, wherever
every parameter a step touches gets a gradient (SVI also stepped a traced parameter whose
gradient was None after zeroing it, so Adam's moments still moved it; this skips it).

Parameters are known by their name in the param store. A parameter first seen gets fresh
moments and the learning rate of its kind (``network_lr`` for ``pyro.module`` networks); a
name whose tensor was replaced gets fresh moments too, as a new tensor did under ``SVI``.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER

BETAS, EPS = (0.9, 0.999), 1e-8  # pyro.optim.ClippedAdam's defaults


class ParamStoreAdam:
    """Clipped Adam over the param store: ``lr`` for plain parameters, ``network_lr`` for
    those of networks registered with ``pyro.module``; :meth:`step` steps every parameter
    with a gradient and clears the gradients."""

    def __init__(self, lr: float, network_lr: float, clip_norm: float):
        self.base = {"plain": lr, "network": network_lr}
        self.clip_norm = clip_norm
        self.lr: dict[str, float] = {}
        self.state: dict[str, dict[str, object]] = {}
        self._tensors: dict[str, torch.Tensor] = {}

    def rate(self, name: str) -> float:
        """The learning rate a parameter seen for the first time starts with."""
        return self.base["network" if _MODULE_NAMESPACE_DIVIDER in name else "plain"]

    def _stepped(self) -> list[tuple[str, torch.Tensor]]:
        """The parameters with a gradient, each known (with its rate and moments) from now."""
        out = []
        for name, p in pyro.get_param_store().named_parameters():
            if p.grad is None:
                continue
            if self._tensors.get(name) is not p:
                self._tensors[name] = p
                self.lr.setdefault(name, self.rate(name))
                self.state[name] = {
                    "step": 0,
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }
            out.append((name, p))
        return out

    @torch.no_grad()
    def step(self) -> None:
        stepped = self._stepped()
        if not stepped:
            return
        params = [p for _, p in stepped]
        grads = [p.grad for p in params]
        states = [self.state[name] for name, _ in stepped]
        avgs = [s["exp_avg"] for s in states]
        squares = [s["exp_avg_sq"] for s in states]
        beta1, beta2 = BETAS
        torch._foreach_clamp_min_(grads, -self.clip_norm)
        torch._foreach_clamp_max_(grads, self.clip_norm)
        torch._foreach_mul_(avgs, beta1)
        torch._foreach_add_(avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(squares)
        torch._foreach_add_(denoms, EPS)
        sizes = []
        for (name, _), s in zip(stepped, states, strict=True):
            s["step"] += 1
            correction1, correction2 = 1 - beta1 ** s["step"], 1 - beta2 ** s["step"]
            sizes.append(-self.lr[name] * math.sqrt(correction2) / correction1)
        torch._foreach_addcdiv_(params, avgs, denoms, sizes)
        for p in params:
            p.grad = None

    def scale_lr(self, factor: float, *, reset: bool = False) -> None:
        """Multiply every known rate by ``factor``; ``reset`` also forgets the moments (a
        parameter's next step starts them afresh)."""
        for name in self.lr:
            self.lr[name] *= factor
        if reset:
            self.state.clear()
            self._tensors.clear()

    def get_state(self) -> dict[str, object]:
        """Rates and moments by parameter name (tensors, numbers and dicts only)."""
        return {
            "lr": dict(self.lr),
            "moments": {name: dict(s) for name, s in self.state.items()},
        }

    def set_state(self, saved: dict[str, object]) -> None:
        """Put back what :meth:`get_state` returned, for the param store's current tensors."""
        store = dict(pyro.get_param_store().named_parameters())
        self.lr = {name: float(lr) for name, lr in saved["lr"].items()}
        self.state, self._tensors = {}, {}
        for name, s in saved["moments"].items():
            p = store[name]
            self._tensors[name] = p
            self.state[name] = {
                "step": int(s["step"]),
                "exp_avg": s["exp_avg"].to(p).clone(),
                "exp_avg_sq": s["exp_avg_sq"].to(p).clone(),
            }
