"""Test set-up shared by every test: float64, one thread, validation on, a clean param store
and a fixed seed (STYLE.md, "Tests"); the settings themselves are ``helpers.numerics``.

Under pytest-xdist (``make test``: ``--dist loadfile``) the tests of one file share a worker,
so that a module-scoped fixture (a whole comparison) runs once and the README's commands run
in order (``zoo report DIR`` after the runs that write DIR)."""

from __future__ import annotations

import pytest
from helpers import numerics


@pytest.fixture(autouse=True)
def _pyro_setup():
    with numerics():
        yield
