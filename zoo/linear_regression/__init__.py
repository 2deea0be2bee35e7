"""Bayesian linear regression.

Model
-----
For rows n = 1..N with predictors x_n (D features) and response y_n::

    sigma            ~ Exponential(1 / s_y)                       (or HalfNormal, HalfCauchy)
    coef[d]          ~ Normal(0, 2.5 s_y / s_d)                   d = 1..D
    intercept_c      ~ Normal(mean(y), 2.5 s_y)                   intercept at the predictor means
    y_n              ~ Normal(intercept_c + (x_n - xbar) . coef, sigma)

    intercept = intercept_c - xbar . coef                         reported in original units

``s_y`` and ``s_d`` are the sample standard deviations of the response and of each
predictor, so the default priors are weakly informative whatever the units of the columns
(the rstanarm defaults, Gabry and Goodrich 2020). Shapes: ``x`` is (N, D), ``y`` is (N,),
``coef`` has dim ``feature``.

Parametrizations. With ``center=True`` (the default) the model samples ``intercept_c``, which
is nearly uncorrelated with ``coef``; with ``center=False`` it samples ``intercept`` directly
from the same prior (``intercept ~ Normal(mean(y) - xbar . coef, 2.5 s_y)``), so both define the
same posterior but the raw one has the strong intercept-slope correlation that slows NUTS and
makes a mean-field guide over-confident.

Conjugate option (``prior="conjugate"``): ``sigma^2 ~ InverseGamma(a0, b0)`` and the intercept
and coefficients are normal *given sigma* (scales multiplied by ``sigma / s_y``). The posterior
is normal-inverse-gamma, available in closed form as the method ``exact``. With a known noise
scale (``sigma_known``) the posterior is Gaussian and ``exact`` applies too.

References
----------
Gelman, Hill and Vehtari (2020), *Regression and Other Stories*, ch. 9 and 12.
Bishop (2006), *Pattern Recognition and Machine Learning*, section 3.3.
Gabry and Goodrich (2020), *Prior distributions for rstanarm models*.
"""

from zoo.linear_regression.data import (
    DATASETS,
    DatasetSpec,
    load_dataset,
)
from zoo.linear_regression.exact import (
    ExactPosterior,
    exact_posterior,
)
from zoo.linear_regression.model import (
    PRIOR_FAMILIES,
    SIGMA_PRIORS,
    Priors,
    default_priors,
    model,
    simulate,
)
from zoo.linear_regression.posterior import (
    SIMULATION_DESIGN,
    make_posterior,
    simulated_posterior,
    with_options,
)

__all__ = [
    "SIMULATION_DESIGN",
    "DATASETS",
    "DatasetSpec",
    "ExactPosterior",
    "PRIOR_FAMILIES",
    "Priors",
    "SIGMA_PRIORS",
    "default_priors",
    "exact_posterior",
    "load_dataset",
    "make_posterior",
    "simulated_posterior",
    "model",
    "simulate",
    "with_options",
]
