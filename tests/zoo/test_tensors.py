"""Tensors leave torch through one helper, which detaches and moves to the CPU first."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from zoo.tensors import to_numpy

ROOT = Path(__file__).resolve().parents[2]


def test_to_numpy_detaches():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    np.testing.assert_array_equal(to_numpy(x * 2), [2.0, 4.0])


def test_no_other_numpy_call_in_the_packages():
    """``.numpy()`` on a GPU tensor raises: every conversion goes through ``to_numpy``."""
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for folder in ("zoo", "guides", "comparisons")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "tensors.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.numpy\(\)", line)
    ]
    assert not found, f"use zoo.tensors.to_numpy at {', '.join(found)}"
