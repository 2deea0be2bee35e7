"""What the tests share: their numerics (for tests/conftest.py and for module-scoped
fixtures), the results.json schema check, and a preset that exercises every code path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import jsonschema
import pyro
import torch

from comparisons import Preset, results_schema, validate_results
from guides import FitConfig

#: Enough work for every code path, far too little for accuracy: tests with it check
#: plumbing and exact identities (reference = itself, point = no spread), never closeness.
TINY = Preset(
    "tiny",
    num_chains=2,
    num_warmup=60,
    num_samples=60,
    num_draws=300,
    fit=FitConfig(num_steps=200, min_steps=100, window=50),
)


@contextmanager
def numerics() -> Iterator[None]:
    """float64, one thread, Pyro validation on, a clean param store and seed 0, restored
    afterwards: every test runs in it (tests/conftest.py), and module-scoped fixtures, which
    pytest sets up before that function-scoped fixture, enter it themselves."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # STYLE.md: 2 intra-op threads collapse on 2 cores
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    try:
        yield
    finally:
        pyro.clear_param_store()
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def validate(results: dict) -> None:
    """results.json (as a dict) against the schema the package ships (its agreement with the
    contract, ../shared/results.schema.json, is tests/comparisons/test_schema.py's)."""
    jsonschema.Draft202012Validator.check_schema(results_schema())
    validate_results(results)
