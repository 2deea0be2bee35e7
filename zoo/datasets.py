"""Reading tables (vendored CSVs, scikit-learn data, user CSV files) with clear errors, and
telling a model's built-in data set from a CSV path (:func:`resolve_data`, one rule for every
model)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd

from zoo.errors import ZooInputError

T = TypeVar("T")


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


def numeric_columns(
    frame: pd.DataFrame, columns: Sequence[str], *, what: str, named: bool = True
) -> np.ndarray:
    """Return the named columns as a float64 array (rows x columns), checking every value.

    Raises a :class:`ZooInputError` naming the first missing column, else the first
    non-numeric value, else the first NaN/inf, with its row (1-based, as a spreadsheet counts
    data rows). ``what`` is the columns' role (``feature``, ``target``); ``named`` says whether
    the user chose these features (``--features``) or they are every column by default, which
    decides what the message of a non-numeric value tells the user to do.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        available = ", ".join(map(str, frame.columns))
        raise ZooInputError(
            f"{what} column '{missing[0]}' is not in the data; columns are: {available}"
        )
    values = {col: pd.to_numeric(frame[col], errors="coerce") for col in columns}
    for col in columns:
        bad = (values[col].isna() & frame[col].notna()).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ZooInputError(
                f"column '{col}' has a non-numeric value {frame[col].iloc[row]!r} in data row"
                f" {row + 1}; {_non_numeric_fix(col, what, named)}"
            )
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        arr = values[col].to_numpy(dtype=np.float64)
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


def _non_numeric_fix(column: str, what: str, named: bool) -> str:
    """What to do about a non-numeric value in ``column`` (see :func:`numeric_columns`)."""
    if what != "feature":
        return "give numbers only (encode categories as 0/1 columns)"
    if named:
        return f"drop '{column}' from --features, or encode it as numbers (categories as 0/1)"
    return "drop that column or choose the numeric columns with --features a,b"


class ResolvedData(NamedTuple):
    """What :func:`resolve_data` returns: the table, the data set's name in reports (a
    built-in name, a CSV file's name, or a table's ``attrs["source"]``, else ``data``) and the
    model's built-in data set as its loader returned it (None for a table or a CSV file)."""

    frame: pd.DataFrame
    name: str
    builtin: Any


def is_dataset_name(text: str) -> bool:
    """Whether ``text`` names a data set rather than a file: it is not an existing path and
    has neither an extension nor a directory separator (``/`` or ``\\``). The one rule of every
    model (a built-in name is looked up before this rule applies)."""
    path = Path(text)
    return not (path.exists() or path.suffix or "/" in text or "\\" in text)


def unknown_dataset(name: str, model: str, builtin_names: Iterable[str]) -> ZooInputError:
    """The error for a data set name that is not one of the model's built-in sets."""
    return ZooInputError(
        f"unknown dataset '{name}' for {model}; choose one of: {', '.join(builtin_names)}"
        " (or give the path of a CSV file)"
    )


def builtin_spec(datasets: Mapping[str, T], name: str, model: str) -> T:
    """The spec of the model's built-in data set ``name`` (``datasets``: the model's table),
    or the error that lists the built-in ones."""
    if name not in datasets:
        raise unknown_dataset(name, model, datasets)
    return datasets[name]


def resolve_data(
    data: pd.DataFrame | str | Path,
    model: str,
    builtin_names: Collection[str],
    load: Callable[[str], Any],
) -> ResolvedData:
    """The table a model is bound to, from a table, a built-in data set name or a CSV path.

    A string or path in ``builtin_names`` is loaded with ``load(name)``, which returns the
    model's built-in data set (an object whose ``frame`` is the table, with the set's defaults
    beside it); another string is a CSV file unless :func:`is_dataset_name` says it is a
    name, then an unknown data set (a :class:`ZooInputError` listing the built-in ones).
    """
    if isinstance(data, pd.DataFrame):
        return ResolvedData(data, str(data.attrs.get("source", "data")), None)
    if not isinstance(data, str | Path):
        raise ZooInputError(
            f"data must be a table, a built-in data set name or a CSV path, got {type(data)}"
        )
    text = str(data)
    if text in builtin_names:
        builtin = load(text)
        return ResolvedData(builtin.frame, text, builtin)
    if is_dataset_name(text):
        raise unknown_dataset(text, model, builtin_names)
    frame = read_csv(text)
    return ResolvedData(frame, str(frame.attrs.get("source", text)), None)


def split_rows(num_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out rows: a seeded random split, each part in row order."""
    if not 0.0 <= test_fraction < 1.0:
        raise ZooInputError(f"test fraction must be in [0, 1), got {test_fraction}")
    num_test = int(round(test_fraction * num_rows))
    perm = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(perm[num_test:]), np.sort(perm[:num_test])
