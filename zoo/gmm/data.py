"""Built-in mixture data sets and the errors of fitted against true parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from zoo.datasets import builtin_spec, vendored_csv
from zoo.errors import ZooInputError
from zoo.gmm.model import simulate


class BuiltinData(NamedTuple):
    """A loaded built-in data set: rows, default K, true parameters, row classes."""

    frame: pd.DataFrame
    num_components: int
    truth: dict[str, np.ndarray] | None
    row_labels: np.ndarray | None


def _iris(seed: int) -> BuiltinData:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame = pd.DataFrame(bunch.data, columns=names)
    return BuiltinData(frame, 3, None, np.asarray(bunch.target_names)[bunch.target])


def _simulated(num_components: int, num_data: int, num_features: int, separation: float):
    def load(seed: int) -> BuiltinData:
        frame, truth = simulate(seed, num_components, num_data, num_features, separation=separation)
        return BuiltinData(frame, num_components, truth, None)

    return load


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: a description, its default number of components, and how to load
    it (``load(seed) -> BuiltinData``)."""

    description: str
    num_components: int
    load: Callable[[int], BuiltinData]


DATASETS: dict[str, DatasetSpec] = {
    "separated": DatasetSpec(
        "300 rows from simulate(seed): 3 well-separated components in 2-D (means 6 sds apart)",
        3,
        _simulated(3, 300, 2, 6.0),
    ),
    "overlapping": DatasetSpec(
        "300 rows from simulate(seed): 3 overlapping components in 2-D (means 2 sds apart)",
        3,
        _simulated(3, 300, 2, 2.0),
    ),
    "iris": DatasetSpec(
        "scikit-learn iris: 150 flowers, 4 measurements (cm), 3 species (not shown to methods)",
        3,
        _iris,
    ),
    "low_dim_gauss_mix": DatasetSpec(
        "posteriordb low_dim_gauss_mix: 1000 draws of a 1-D two-component normal mixture",
        2,
        lambda seed: BuiltinData(vendored_csv("low_dim_gauss_mix.csv"), 2, None, None),
    ),
}


def load_dataset(name: str, seed: int = 0) -> BuiltinData:
    """A built-in data set by name (see :data:`DATASETS`)."""
    loaded = builtin_spec(DATASETS, name, "gmm").load(seed)
    loaded.frame.attrs["source"] = name
    return loaded


def _check_truth(truth: Mapping[str, np.ndarray], k: int, d: int) -> dict[str, np.ndarray]:
    shapes = {"weights": (k,), "locs": (k, d), "scales": (k, d)}
    out = {}
    for key, shape in shapes.items():
        if key not in truth or np.shape(truth[key]) != shape:
            raise ZooInputError(
                f"truth must give weights (K,), locs and scales (K, D) with K = {k}, D = {d};"
                f" '{key}' is missing or has another shape"
            )
        out[key] = np.asarray(truth[key], dtype=float)
    order = np.argsort(out["locs"][:, 0], kind="stable")
    return {key: value[order] for key, value in out.items()}


def truth_errors(
    draws: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray] | None = None,
    *,
    truth: Mapping[str, np.ndarray],
    feature_sd: np.ndarray,
) -> dict[str, float]:
    """Error of the posterior-mean parameters (relabelled draws, flat: site -> (S, *shape))
    against the true ones.

    ``truth_locs_max_abs_z``: max over components and features of |mean(locs) - true locs|
    in units of the feature's sd in the data; ``truth_scales_max_abs_log_ratio``: max of
    |log(mean(scales) / true scales)| (0.1 is a 10% error); ``truth_weights_max_abs_error``:
    max of |mean(weights) - true weights|. ``reference`` is not used.
    """
    out = {}
    if "locs" in draws:
        mean = np.asarray(draws["locs"], float).reshape((-1,) + truth["locs"].shape).mean(0)
        out["truth_locs_max_abs_z"] = float(np.max(np.abs(mean - truth["locs"]) / feature_sd))
    if "scales" in draws:
        mean = np.asarray(draws["scales"], float).reshape((-1,) + truth["scales"].shape).mean(0)
        out["truth_scales_max_abs_log_ratio"] = float(
            np.max(np.abs(np.log(mean / truth["scales"])))
        )
    if "weights" in draws:
        mean = np.asarray(draws["weights"], float).reshape((-1,) + truth["weights"].shape).mean(0)
        out["truth_weights_max_abs_error"] = float(np.max(np.abs(mean - truth["weights"])))
    return out
