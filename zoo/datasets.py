"""Reading tables (vendored CSVs, scikit-learn data, user CSV files) with clear errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.errors import ZooInputError


def vendored_csv(name: str) -> pd.DataFrame:
    """Read a CSV shipped in ``zoo/data`` (see its README.md and LICENCE.md)."""
    with resources.files("zoo").joinpath("data", name).open("r") as fh:
        return pd.read_csv(fh)


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a user CSV file with a header row; fail with one clear line if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ZooInputError(f"data file '{path}' does not exist; pass an existing CSV with --data")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZooInputError(
            f"could not read '{path}' as CSV ({first}); give a comma-separated file with a"
            " header row"
        ) from None
    if frame.shape[1] == 0 or frame.shape[0] == 0:
        raise ZooInputError(
            f"'{path}' has no data rows; give a CSV with a header row and data rows"
        )
    frame.attrs["source"] = path.name
    return frame


def numeric_columns(frame: pd.DataFrame, columns: Sequence[str], *, what: str) -> np.ndarray:
    """Return the named columns as a float64 array (rows x columns), checking every value.

    Raises a :class:`ZooInputError` naming the first missing column, the first non-numeric
    value or the first NaN/inf, with its row (1-based, as a spreadsheet counts data rows).
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        available = ", ".join(map(str, frame.columns))
        raise ZooInputError(
            f"{what} column '{missing[0]}' is not in the data; columns are: {available}"
        )
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ZooInputError(
                f"column '{col}' has a non-numeric value {frame[col].iloc[row]!r} in data row"
                f" {row + 1};"
                " give numbers only (encode categories as 0/1 columns)"
            )
        arr = values.to_numpy(dtype=np.float64)
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            row = int(np.flatnonzero(nonfinite)[0])
            shown = "empty" if math.isnan(arr[row]) else repr(float(arr[row]))
            raise ZooInputError(
                f"column '{col}' has a missing or infinite value ({shown}) in data row {row + 1};"
                " drop or impute such rows first"
            )
        out[:, j] = arr
    return out


def split_rows(num_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out rows: a seeded random split, each part in row order."""
    if not 0.0 <= test_fraction < 1.0:
        raise ZooInputError(f"test fraction must be in [0, 1), got {test_fraction}")
    num_test = int(round(test_fraction * num_rows))
    perm = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(perm[num_test:]), np.sort(perm[:num_test])
