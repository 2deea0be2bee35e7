"""Test set-up shared by every test: float64, one thread, validation on, a clean param store
and a fixed seed (STYLE.md, "Tests"); the settings themselves are ``helpers.numerics``."""

from __future__ import annotations

import pytest
from helpers import numerics


@pytest.fixture(autouse=True)
def _pyro_setup():
    with numerics():
        yield
