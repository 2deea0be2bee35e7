"""The model registry: one frozen spec per model, keyed by the model's module name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from zoo import gmm, linear_regression, ppca
from zoo.errors import ZooInputError
from zoo.posterior import Posterior


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about a model.

    ``guides`` are the guide keys that apply; ``closed_forms`` the closed-form methods the
    model can offer (a posterior built with some options may offer fewer: see
    ``Posterior.closed_forms``); ``options`` the keyword options of ``make_posterior`` that
    the command line may set; ``example(seed)`` a small posterior on simulated data, which
    the registry tests run every model through. ``minibatch``: the model's data plate takes
    ``subsample_size``, so SVI can fit it on minibatches (``FitConfig.subsample_size``).
    """

    name: str
    summary: str
    guides: tuple[str, ...]
    closed_forms: tuple[str, ...]
    datasets: Mapping[str, str]
    default_dataset: str
    options: tuple[str, ...]
    make_posterior: Callable[..., Posterior]
    example: Callable[[int], Posterior]
    closed_form_hints: Mapping[str, str] = field(default_factory=dict)
    minibatch: bool = False


MODELS: dict[str, ModelSpec] = {
    "linear_regression": ModelSpec(
        name="linear_regression",
        summary="Bayesian linear regression, data-scaled weakly informative or conjugate priors",
        guides=("delta", "laplace", "mean_field", "low_rank", "full_rank", "flow"),
        closed_forms=("exact",),
        datasets={k: v.description for k, v in linear_regression.DATASETS.items()},
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
        make_posterior=linear_regression.make_posterior,
        example=lambda seed: linear_regression.make_posterior(
            linear_regression.simulate(seed, 30, 3, correlation=0.5)[0]
        ),
        closed_form_hints={
            "exact": "'exact' needs the conjugate prior (--prior conjugate) or a known noise"
            " scale (--sigma-known S)"
        },
    ),
    "gmm": ModelSpec(
        name="gmm",
        summary="Gaussian mixture with diagonal covariances; assignments summed out by enumeration",
        guides=("delta", "laplace", "mean_field", "full_rank"),
        closed_forms=("em",),
        datasets={k: v.description for k, v in gmm.DATASETS.items()},
        default_dataset="separated",
        options=("features", "num_components", "test_fraction"),
        make_posterior=gmm.make_posterior,
        example=lambda seed: gmm.make_posterior(
            gmm.simulate(seed, num_components=2, num_data=40, num_features=2)[0],
            num_components=2,
        ),
        minibatch=True,
    ),
    "ppca": ModelSpec(
        name="ppca",
        summary="probabilistic PCA; latents integrated out for NUTS and global guides",
        guides=("delta", "laplace", "mean_field", "low_rank", "full_rank", "amortized"),
        closed_forms=("ml", "em"),
        datasets={k: v.description for k, v in ppca.DATASETS.items()},
        default_dataset="digits",
        options=("features", "latent_dim", "test_fraction"),
        make_posterior=ppca.make_posterior,
        example=lambda seed: ppca.make_posterior(
            ppca.simulate(seed, num_data=40, num_features=5, latent_dim=2)[0], latent_dim=2
        ),
        closed_form_hints=ppca.CLOSED_FORM_HINTS,
    ),
}


def get_model(name: str) -> ModelSpec:
    """The spec of a model by its registry key, or a clear error listing the keys."""
    try:
        return MODELS[name]
    except KeyError:
        raise ZooInputError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}") from None
