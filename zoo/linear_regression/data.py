"""Built-in regression data sets (scikit-learn's diabetes, posteriordb's vendored data, a sine
curve).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from zoo.datasets import builtin_spec, vendored_csv
from zoo.linear_regression.model import simulate


def _sine(seed: int) -> pd.DataFrame:
    # Bishop (2006), section 1.1: sin(2 pi x) plus Gaussian noise of sd 0.3 at uniform x.
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 1.0, 30))
    return pd.DataFrame({"x": x, "y": np.sin(2 * np.pi * x) + 0.3 * rng.standard_normal(30)})


def _diabetes(seed: int) -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    frame = bunch.frame.rename(columns={"target": "progression"})
    return frame


def _log_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    out = frame.copy()
    for col in columns:
        out[f"log_{col}"] = np.log(out[col])
    return out.drop(columns=list(columns))


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: how to load it, its response, and options that fit its source."""

    description: str
    load: object  # Callable[[int], pd.DataFrame]
    target: str
    defaults: tuple[tuple[str, object], ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "simulated": DatasetSpec(
        "200 rows from simulate(seed): 3 standard-normal features correlated at 0.5, sigma = 1",
        lambda seed: simulate(seed, 200, 3, correlation=0.5)[0],
        "y",
    ),
    "sine": DatasetSpec(
        "30 noisy points of sin(2 pi x) (Bishop 2006, section 1.1); use with --degree 3", _sine, "y"
    ),
    "diabetes": DatasetSpec(
        "scikit-learn diabetes: 442 patients, 10 baseline variables, disease progression",
        _diabetes,
        "progression",
    ),
    "kidiq": DatasetSpec(
        "posteriordb kidiq: child test score on mother's high school (0/1) and IQ, 434 rows",
        lambda seed: vendored_csv("kidiq.csv"),
        "kid_score",
    ),
    "earnings": DatasetSpec(
        "posteriordb earnings: log earnings on height and sex (male 0/1), 1192 rows",
        lambda seed: _log_columns(vendored_csv("earnings.csv"), ["earn"]),
        "log_earn",
    ),
    "mesquite": DatasetSpec(
        "posteriordb mesquite: log leaf weight on log shrub dimensions and group, 46 rows",
        lambda seed: _log_columns(
            vendored_csv("mesquite.csv"),
            ["weight", "diam1", "diam2", "canopy_height", "total_height", "density"],
        ),
        "log_weight",
    ),
    "sblri": DatasetSpec(
        "posteriordb sblri: 100 rows, 5 independent features, no intercept,"
        " N(0,10) and HalfNormal(10) priors",
        lambda seed: vendored_csv("sblri.csv"),
        "y",
        (
            ("intercept", False),
            ("coef_scale", 10.0),
            ("sigma_prior", "half_normal"),
            ("sigma_scale", 10.0),
        ),
    ),
    "sblrc": DatasetSpec(
        "posteriordb sblrc: as sblri with strongly correlated features",
        lambda seed: vendored_csv("sblrc.csv"),
        "y",
        (
            ("intercept", False),
            ("coef_scale", 10.0),
            ("sigma_prior", "half_normal"),
            ("sigma_scale", 10.0),
        ),
    ),
}


class Builtin(NamedTuple):
    """A loaded built-in data set: its table, response column and default options."""

    frame: pd.DataFrame
    target: str
    defaults: dict[str, object]


def load_dataset(name: str, seed: int = 0) -> Builtin:
    """A built-in data set as (frame, response column, default options)."""
    spec = builtin_spec(DATASETS, name, "linear_regression")
    frame = spec.load(seed)
    frame.attrs["source"] = name
    return Builtin(frame, spec.target, dict(spec.defaults))
