"""The model registry: one frozen spec per model, keyed by the model's module name.

The registry is a light table: it imports neither torch nor the model packages, so the
command line can list models, data sets and options and check its arguments in a fraction of
a second (``zoo list``, ``zoo --help``, argument errors). A model's package is imported the
first time its posterior is built (:meth:`ModelSpec.make_posterior`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from zoo.errors import ZooInputError

if TYPE_CHECKING:
    from zoo.posterior import Posterior


class _ModuleTable(Mapping[str, str]):
    """A mapping kept as a module attribute, read on first use (``zoo.ppca:CLOSED_FORM_HINTS``):
    the hints of closed forms are only needed once a posterior exists."""

    def __init__(self, module: str, name: str) -> None:
        self._where = (module, name)

    def _table(self) -> Mapping[str, str]:
        module, name = self._where
        return getattr(importlib.import_module(module), name)

    def __getitem__(self, key: str) -> str:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about a model.

    ``guides`` are the guide keys that apply; ``closed_forms`` the closed-form methods the
    model can offer (a posterior built with some options may offer fewer: see
    ``Posterior.closed_forms``); ``datasets`` the built-in data sets with a one-line
    description (the model package's ``DATASETS`` loads them; a test keeps the two equal);
    ``options`` the keyword options of ``make_posterior`` that the command line may set;
    ``example_data`` the keywords of the model's ``simulate`` for :meth:`example`.
    ``minibatch``: the model's data plate takes ``subsample_size``, so SVI can fit it on
    minibatches (``FitConfig.subsample_size``). ``neural``: the model has networks and may run
    on ``cuda``. ``methods``: the names of the model's methods where they are more than NUTS,
    its guides and closed forms (a VAE's training variants); a test keeps them equal to its
    posterior's. ``default_preset``: the preset of a run that names none.
    """

    name: str
    summary: str
    guides: tuple[str, ...]
    closed_forms: tuple[str, ...]
    datasets: Mapping[str, str]
    default_dataset: str
    options: tuple[str, ...]
    example_data: Mapping[str, object] = field(default_factory=dict)
    closed_form_hints: Mapping[str, str] = field(default_factory=dict)
    minibatch: bool = False
    neural: bool = False
    methods: tuple[str, ...] = ()
    default_preset: str = "full"

    @property
    def method_names(self) -> tuple[str, ...]:
        """Every method name a posterior of the model may offer."""
        return self.methods or ("nuts", "nuts_pyro", *self.guides, *self.closed_forms)

    @property
    def module(self) -> ModuleType:
        """The model's package (``zoo.<name>``), imported on first use."""
        return importlib.import_module(f"zoo.{self.name}")

    def make_posterior(self, *args, **kwargs) -> Posterior:
        """The model's ``make_posterior`` (see the model's package)."""
        return self.module.make_posterior(*args, **kwargs)

    def example(self, seed: int, **options: object) -> Posterior:
        """A small posterior on data simulated with ``seed``, which the registry tests run
        every model through: ``simulate(seed, **example_data)`` bound by ``make_posterior``
        with ``options`` (the model's defaults fit the simulated table)."""
        frame, _ = self.module.simulate(seed, **self.example_data)
        return self.make_posterior(frame, **options)


MODELS: dict[str, ModelSpec] = {
    "linear_regression": ModelSpec(
        name="linear_regression",
        summary="Bayesian linear regression, data-scaled weakly informative or conjugate priors",
        guides=("delta", "laplace", "mean_field", "low_rank", "full_rank", "flow"),
        closed_forms=("exact",),
        default_dataset="kidiq",
        options=(
            "target",
            "features",
            "degree",
            "prior",
            "center",
            "intercept",
            "intercept_scale",
            "coef_scale",
            "sigma_prior",
            "sigma_scale",
            "sigma_known",
            "sigma_shape",
            "test_fraction",
        ),
        example_data={"num_data": 30, "num_features": 3, "correlation": 0.5},
        closed_form_hints={
            "exact": "'exact' needs the conjugate prior (--prior conjugate) or a known noise"
            " scale (--sigma-known S)"
        },
        datasets={
            "simulated": "200 rows from simulate(seed): 3 standard-normal features correlated"
            " at 0.5, sigma = 1",
            "sine": "30 noisy points of sin(2 pi x) (Bishop 2006, section 1.1); use with"
            " --degree 3",
            "diabetes": "scikit-learn diabetes: 442 patients, 10 baseline variables, disease"
            " progression",
            "kidiq": "posteriordb kidiq: child test score on mother's high school (0/1) and IQ,"
            " 434 rows",
            "earnings": "posteriordb earnings: log earnings on height and sex (male 0/1),"
            " 1192 rows",
            "mesquite": "posteriordb mesquite: log leaf weight on log shrub dimensions and"
            " group, 46 rows",
            "sblri": "posteriordb sblri: 100 rows, 5 independent features, no intercept,"
            " N(0,10) and HalfNormal(10) priors",
            "sblrc": "posteriordb sblrc: as sblri with strongly correlated features",
        },
    ),
    "gmm": ModelSpec(
        name="gmm",
        summary="Gaussian mixture with diagonal covariances; assignments summed out by enumeration",
        guides=("delta", "laplace", "mean_field", "full_rank"),
        closed_forms=("em",),
        default_dataset="separated",
        options=("features", "num_components", "test_fraction"),
        example_data={"num_components": 2, "num_data": 40, "num_features": 2},
        minibatch=True,
        datasets={
            "separated": "300 rows from simulate(seed): 3 well-separated components in 2-D"
            " (means 6 sds apart)",
            "overlapping": "300 rows from simulate(seed): 3 overlapping components in 2-D"
            " (means 2 sds apart)",
            "iris": "scikit-learn iris: 150 flowers, 4 measurements (cm), 3 species (not shown"
            " to methods)",
            "low_dim_gauss_mix": "posteriordb low_dim_gauss_mix: 1000 draws of a 1-D"
            " two-component normal mixture",
        },
    ),
    "ppca": ModelSpec(
        name="ppca",
        summary="probabilistic PCA; latents integrated out for NUTS and global guides",
        guides=("delta", "laplace", "mean_field", "low_rank", "full_rank", "amortized"),
        closed_forms=("ml", "em"),
        default_dataset="digits",
        options=("features", "latent_dim", "test_fraction"),
        example_data={"num_data": 40, "num_features": 5, "latent_dim": 2},
        closed_form_hints=_ModuleTable("zoo.ppca", "CLOSED_FORM_HINTS"),
        datasets={
            "digits": "scikit-learn digits: 1797 handwritten digits, 8x8 pixels (0-16) as 64"
            " features, K = 5; the digit class colours plots",
            "iris": "scikit-learn iris: 150 flowers, 4 measurements in cm, K = 2; species"
            " colours plots",
            "simulated": "500 rows from simulate(seed): 10 features, true K = 2, standard"
            " normal loadings, sigma = 0.5",
        },
    ),
    "vae": ModelSpec(
        name="vae",
        summary="variational autoencoder: z ~ N(0, I), x | z from a decoder network; encoders"
        " are guides; trained variants beside PPCA and a full Gaussian",
        guides=("amortized",),
        closed_forms=("ml",),
        default_dataset="digits",
        options=(
            "latent_dim",
            "hidden",
            "encoder_hidden",
            "likelihood",
            "scale",
            "test_fraction",
        ),
        example_data={"num_data": 40, "data_dim": 4, "latent_dim": 2},
        neural=True,
        methods=(
            "ml",
            "amortized",
            "amortized_full",
            "amortized_iwae",
            "amortized_autoencoder",
            "amortized_beta0.25",
            "amortized_beta0.5",
            "amortized_beta2",
            "amortized_beta4",
            "ml_gaussian",
        ),
        datasets={
            "digits": "scikit-learn digits: 1797 handwritten 8x8 digits (0-16), dequantized to"
            " (0, 1); 80/20 row split",
            "patches": "8x8 gray patches of ten photographs (scikit-image, scikit-learn),"
            " dequantized; 20000 from the left 80% of each photo to train, 4000 from the right"
            " 20% held out",
        },
    ),
    "two_level_vae": ModelSpec(
        name="two_level_vae",
        summary="two-level (V1/V2) VAE of whitened patches: z2 ~ N(0, I), z1 | z2 sparse"
        " (Laplace), x = Phi z1 + noise; chain against top-down guides",
        guides=("amortized",),
        closed_forms=("ml",),
        default_dataset="whitened_patches",
        options=("latent_dim", "v1_units", "hidden", "encoder_hidden", "test_fraction", "gold"),
        example_data={"num_data": 40, "data_dim": 4, "v1_units": 4, "v2_units": 2},
        default_preset="smoke",
        neural=True,
        methods=(
            "ml",
            "amortized_chain",
            "amortized_top_down",
            "amortized_sparse",
            "ml_gaussian",
        ),
        datasets={
            "whitened_patches": "12x12 whitened patches (1/f with a roll-off) of ten"
            " photographs (scikit-image, scikit-learn); 20000 from the left 80% of each photo"
            " to train, 2000 from the right 20% held out",
        },
    ),
}


def get_model(name: str) -> ModelSpec:
    """The spec of a model by its registry key, or a clear error listing the keys."""
    try:
        return MODELS[name]
    except KeyError:
        raise ZooInputError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}") from None
