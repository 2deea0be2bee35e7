"""Minibatches of rows and the weights of an ELBO's terms: N / batch size on the rows of a
minibatch, and beta on the KL term of the per-row latents (a beta-VAE, KL warm-up)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from pyro.poutine.messenger import Messenger


class _Weigh(Messenger):
    """Scales the log density of sample sites: those inside the plate named ``plate`` by
    ``rows``, and the latent sites named in ``local_sites`` by ``beta`` too. Applied to the
    model and the guide alike (SVI traces both under it), so that beta multiplies
    log p(z) - log q(z), the per-row KL term, and nothing else."""

    def __init__(self, plate: str, rows: float, local_sites: tuple[str, ...], beta: float):
        super().__init__()
        self.plate, self.rows, self.local_sites, self.beta = plate, rows, local_sites, beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample":
            return
        scale = 1.0
        if self.rows != 1.0 and any(f.name == self.plate for f in msg["cond_indep_stack"]):
            scale *= self.rows
        if msg["name"] in self.local_sites and not msg["is_observed"]:
            scale *= self.beta
        if scale != 1.0:
            msg["scale"] = scale * msg["scale"]


def weighted(
    *, plate: str, rows: float, local_sites: tuple[str, ...], beta: float
) -> contextlib.AbstractContextManager:
    """The weighting of :class:`_Weigh`, or nothing at all where every weight is 1."""
    if rows == 1.0 and (beta == 1.0 or not local_sites):
        return contextlib.nullcontext()
    return _Weigh(plate, rows, local_sites, beta)


@dataclass
class Batches:
    """Epochs of seeded minibatches: each epoch a fresh shuffle of the ``num_rows`` rows
    (a generator of its own, seeded, so that the model's random numbers do not move it),
    cut into batches of ``batch_size`` (the last one smaller where it does not divide)."""

    num_rows: int
    batch_size: int
    generator: torch.Generator
    order: torch.Tensor | None = None
    position: int = 0

    @classmethod
    def of(cls, data: Mapping[str, torch.Tensor], batch_size: int, *, seed: int) -> Batches:
        rows = {int(v.shape[0]) for v in data.values() if torch.is_tensor(v) and v.dim() > 0}
        if len(rows) != 1:
            raise ValueError(f"minibatches need one number of rows in the data, got {rows}")
        num_rows = rows.pop()
        if not 1 <= batch_size:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        return cls(num_rows, min(batch_size, num_rows), generator)

    @property
    def per_epoch(self) -> int:
        """Steps in one epoch."""
        return -(-self.num_rows // self.batch_size)

    def indices(self) -> torch.Tensor:
        if self.order is None or self.position >= self.num_rows:
            self.order = torch.randperm(self.num_rows, generator=self.generator)
            self.position = 0
        idx = self.order[self.position : self.position + self.batch_size]
        self.position += len(idx)
        return idx

    def next(self, data: Mapping[str, torch.Tensor]) -> tuple[dict[str, object], float]:
        """The data of the next step (rows ``idx`` of each per-row tensor) and N / rows."""
        idx = self.indices()
        batch = {
            k: v.index_select(0, idx.to(v.device)) if _per_row(v, self.num_rows) else v
            for k, v in data.items()
        }
        return batch, self.num_rows / len(idx)

    def state(self) -> dict[str, object]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order,
            "position": self.position,
        }

    def load(self, state: Mapping[str, object]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], int(state["position"])


def _per_row(value: object, num_rows: int) -> bool:
    return torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == num_rows
