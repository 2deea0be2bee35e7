"""Built-in PPCA data sets and checks of user data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from zoo.datasets import builtin_spec
from zoo.ppca.model import simulate


def _digits(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.rename(columns={"target": "digit"})
    pixels = [c for c in frame.columns if c != "digit"]
    frame[pixels] = frame[pixels].astype(float)
    return frame


def _iris(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return frame


SIMULATED = {"num_data": 500, "num_features": 10, "latent_dim": 2, "sigma": 0.5}


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: how to load it (``load(seed)``), its default latent dim, the
    column of known row classes (kept out of the features) and, for simulated data, its
    truth (``truth(seed)``)."""

    description: str
    load: Callable[[int], pd.DataFrame]
    latent_dim: int
    labels: str | None = None
    truth: Callable[[int], dict[str, np.ndarray]] | None = None


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "scikit-learn digits: 1797 handwritten digits, 8x8 pixels (0-16) as 64 features,"
        " K = 5; the digit class colours plots",
        _digits,
        5,
        "digit",
    ),
    "iris": DatasetSpec(
        "scikit-learn iris: 150 flowers, 4 measurements in cm, K = 2; species colours plots",
        _iris,
        2,
        "species",
    ),
    "simulated": DatasetSpec(
        "500 rows from simulate(seed): 10 features, true K = 2, standard normal loadings,"
        " sigma = 0.5",
        lambda seed: simulate(seed, **SIMULATED)[0],
        SIMULATED["latent_dim"],
        None,
        lambda seed: simulate(seed, **SIMULATED)[1],
    ),
}


class Dataset(NamedTuple):
    """A loaded built-in data set."""

    frame: pd.DataFrame
    latent_dim: int
    labels: str | None
    truth: dict[str, np.ndarray] | None


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A built-in data set with its default latent dim, label column and truth (or None)."""
    spec = builtin_spec(DATASETS, name, "ppca")
    frame = spec.load(seed)
    frame.attrs["source"] = name
    truth = spec.truth(seed) if spec.truth is not None else None
    return Dataset(frame, spec.latent_dim, spec.labels, truth)


def _feature_text(names: Sequence[str]) -> str:
    if len(names) <= 10:
        return ", ".join(names)
    return f"{len(names)} columns: {', '.join(names[:3])}, ..., {names[-1]}"
