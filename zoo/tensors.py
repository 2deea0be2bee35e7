"""Tensors to arrays: the one place where a tensor leaves torch for numpy."""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(value: torch.Tensor) -> np.ndarray:
    """``value`` as a numpy array, detached from the graph and moved to the CPU first (a
    tensor on a GPU has no ``.numpy()``). The array may share memory with a CPU tensor."""
    return value.detach().cpu().numpy()
