"""Checkpoints of an SVI fit: the loop's whole state in one file, written atomically, read
back without unpickling anything but tensors and plain containers.

A checkpoint holds the parameters (the unconstrained values of the param store, networks
included), the optimizer's state (Adam's moments and the decayed learning rates), the
random number generator, the minibatch order, the ELBO trace and every counter of the loop,
and the history a guide keeps for its own convergence test. A fit started with the same
arguments and an existing checkpoint file goes on from it and ends with the parameters, the
trace and the verdict of the uninterrupted fit.

Files are read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyro
import torch

from zoo import ZooInputError
from zoo.tensors import cuda_devices

if TYPE_CHECKING:
    from guides.svi import Snapshot, _Loop

#: Bumped when the layout of the file changes; an older file is refused with a clear error.
FORMAT = 2  # 2: the optimizer's state keyed by parameter name (guides.optim)


@dataclass(frozen=True)
class Checkpoint:
    """Where the fit's state goes (``path``), how often (every ``every`` steps, and once
    more when the fit ends) and what fit it belongs to: ``key``, any string that names the
    fit (its data, model, options and seed); a file written under another key is refused."""

    path: Path
    every: int = 1000
    key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"checkpoint every must be a whole number >= 1, got {self.every}")


def _snapshot(snapshot: Snapshot) -> dict[str, object]:
    return {
        "stats": None if snapshot.stats is None else list(snapshot.stats),
        "step": snapshot.step,
        "values": dict(snapshot.values),
    }


def _load_snapshot(snapshot: Snapshot, state: dict[str, object]) -> None:
    snapshot.stats = None if state["stats"] is None else tuple(state["stats"])
    snapshot.step = int(state["step"])
    snapshot.values = dict(state["values"])


def _plain(info: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in info.items() if isinstance(v, str | int | float | bool)}


def save_checkpoint(checkpoint: Checkpoint, loop: _Loop, seconds: float) -> None:
    """Write the state of ``loop`` to ``checkpoint.path`` (a temporary file, then a rename)."""
    s = loop.state
    history = getattr(loop.guide, "history_state", None)
    state = {
        "format": FORMAT,
        "key": checkpoint.key,
        "name": loop.name,
        "loop": {
            "step": s.step,
            "trace": torch.tensor(s.trace, dtype=torch.float64),
            "decays": s.decays,
            "last_change": s.last_change,
            "converged": s.converged,
            "done": s.done,
            "rollbacks": list(s.rollbacks),
            "info": _plain(s.info),
            "held_out": torch.tensor(s.held_out, dtype=torch.float64),
            "seconds": float(seconds),
        },
        "best": _snapshot(s.best),
        "best_held_out": _snapshot(s.best_held_out),
        "params": {k: p.detach().clone() for k, p in pyro.get_param_store().named_parameters()},
        "optim": loop.optim.get_state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": _cuda_rng(loop),
        "batches": None if loop.batches is None else loop.batches.state(),
        "guide": history() if callable(history) else None,
    }
    path = checkpoint.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(checkpoint: Checkpoint, loop: _Loop) -> None:
    """Put the state saved in ``checkpoint.path`` into ``loop`` (whose model and guide must
    be those of the saved fit: the parameters are matched by name)."""
    # On the CPU first: the values are copied into the fit's own tensors, on its device.
    state = torch.load(checkpoint.path, weights_only=True, map_location="cpu")
    if state.get("format") != FORMAT:
        raise ZooInputError(
            f"{checkpoint.path}: checkpoint format {state.get('format')}, this zoo reads"
            f" {FORMAT}; remove the file to start the fit afresh"
        )
    if state.get("key") != checkpoint.key:
        raise ZooInputError(
            f"{checkpoint.path} was written by another fit ({state.get('name')}: other data,"
            " model, options, settings, device or seed); remove it, or choose another folder,"
            " to start this one afresh"
        )
    _create_parameters(loop)
    _load_parameters(checkpoint.path, state["params"])
    loop.optim.set_state(state["optim"])
    s, saved = loop.state, state["loop"]
    s.step, s.trace = int(saved["step"]), saved["trace"].tolist()
    s.decays, s.last_change = int(saved["decays"]), int(saved["last_change"])
    s.converged, s.done = bool(saved["converged"]), bool(saved["done"])
    s.rollbacks, s.info = list(saved["rollbacks"]), dict(saved["info"])
    s.held_out, s.seconds = saved["held_out"].tolist(), float(saved["seconds"])
    _load_snapshot(s.best, state["best"])
    _load_snapshot(s.best_held_out, state["best_held_out"])
    if loop.batches is not None:
        loop.batches.load(state["batches"])
    load_history = getattr(loop.guide, "load_history_state", None)
    if state["guide"] is not None and callable(load_history):
        load_history(state["guide"])
    torch.set_rng_state(state["rng"])
    for device, value in (state.get("cuda_rng") or {}).items():
        torch.cuda.set_rng_state(value, device=int(device))


def _cuda_rng(loop: _Loop) -> dict[int, torch.Tensor]:
    """The random number state of every GPU the fit's data are on (its draws come from it)."""
    tensors = [v for v in loop.data.values() if torch.is_tensor(v)]
    return {i: torch.cuda.get_rng_state(i) for i in cuda_devices(*tensors)}


def _create_parameters(loop: _Loop) -> None:
    """Run the objective once so that every parameter exists in the param store (its
    random draws do not matter: the generator's state is put back afterwards)."""
    loop.elbo.loss(loop.model, loop.guide, **loop.full_data())


def _load_parameters(path: Path, values: dict[str, torch.Tensor]) -> None:
    params = dict(pyro.get_param_store().named_parameters())
    missing = sorted(set(values) ^ set(params))
    if missing:
        raise ZooInputError(
            f"{path}: the checkpoint's parameters do not match this model and guide"
            f" ({', '.join(missing[:3])}...); remove the file to start the fit afresh"
        )
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)
