"""Test set-up shared by every test: float64, one thread, validation on, a clean param store
and a fixed seed (STYLE.md, "Tests"); the settings themselves are ``helpers.numerics``.

Under pytest-xdist (``make test``: ``--dist loadgroup``) the tests of one file share a worker,
so that a module-scoped fixture (a whole comparison) runs once, unless a test names its own
``xdist_group`` (the README's commands: one group per folder they write, so that they spread
over the workers and ``zoo report DIR`` follows the runs that write DIR)."""

from __future__ import annotations

import pytest
from helpers import numerics


@pytest.fixture(autouse=True)
def _pyro_setup():
    with numerics():
        yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
