"""Tensors to arrays: the one place where a tensor leaves torch for numpy."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


def to_numpy(value: torch.Tensor) -> np.ndarray:
    """``value`` as a numpy array, detached from the graph and moved to the CPU first (a
    tensor on a GPU has no ``.numpy()``). The array may share memory with a CPU tensor."""
    return value.detach().cpu().numpy()


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def all_cores():
    """A block in which torch may use every core this process has (at least as many threads
    as it had), the setting put back afterwards: for large batched arithmetic, where a
    second thread pays (the command line runs on one, which is faster for small models)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, cores()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def one_core():
    """A block in which torch runs on one thread, the setting put back afterwards: for
    small tensors stepped many times (a sampler), where a second thread only costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cuda_devices(*tensors: torch.Tensor) -> list[int]:
    """The GPUs the tensors are on, as ``torch.random.fork_rng(devices=...)`` takes them."""
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
