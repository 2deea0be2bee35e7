"""Test set-up shared by every test: float64, one thread, validation on, a clean param store
and a fixed seed (STYLE.md, "Tests")."""

from __future__ import annotations

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_setup():
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    # STYLE.md: two intra-op threads collapse on these 2-core machines; one is faster.
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
