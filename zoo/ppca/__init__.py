"""Probabilistic principal component analysis (PPCA).

Model
-----
For rows n = 1..N of D features x_n and a latent dimension K (1 <= K < D)::

    loadings[d, k]   ~ Normal(0, tau_d)                            W, shape (D, K)
    mean[d]          ~ Normal(xbar_d, m_d)                         mu, shape (D,)
    sigma            ~ Exponential(1 / s)                          (or HalfNormal, HalfCauchy)
    z_n              ~ Normal(0, I_K)                              shape (K,), local
    x_n | z_n        ~ Normal(W z_n + mu, sigma^2 I_D)

    x_n              ~ Normal(mu, C),   C = W W^T + sigma^2 I_D    z_n integrated out

Two Pyro forms share the global sites ``loadings``, ``mean`` and ``sigma`` (in that order,
outside every plate): :func:`model` is the marginal form (``x`` is a low-rank multivariate
normal), which NUTS and the global guides use; :func:`local_model` keeps ``z`` explicit for
amortized guides. Products of a per-row latent with a global are written
``(loadings * z.unsqueeze(-2)).sum(-1)``, never ``z @ W.T``, so extra batch dims on the left
of the globals (vectorized particles) broadcast correctly (STYLE.md).

Priors (:func:`default_priors`), in the units of the data: with ``s_d`` the sample sd of
feature d, ``s = sqrt(mean_d s_d^2)`` the overall (root-mean-square) scale and the floored
``s~_d = max(s_d, floor * s)`` (floor 0.1: digits has pixels that are always 0, whose sd would
give an invalid prior scale of 0):

- ``tau_d = 2.5 s~_d / sqrt(K)``: the loadings' contribution to the prior variance of x_d is
  ``K tau_d^2 = (2.5 s~_d)^2``, the rstanarm factor 2.5 around the observed scale, whatever K;
- ``m_d = 2.5 s~_d`` around the sample mean (as rstanarm's intercept prior);
- ``sigma`` has prior mean ``s``: the ML noise variance (mean of the smallest eigenvalues of
  the covariance) never exceeds ``s^2`` (their overall mean), so this allows any plausible
  noise level without favouring one.

Every scale is proportional to the data's, so multiplying all columns by c multiplies the
posterior of (loadings, mean, sigma) by c. PPCA itself (isotropic noise) is not invariant to
rescaling *one* column: standardize columns measured in different units first.

Identifiability. p(x) depends on W only through ``C``, which is unchanged by ``W -> W R`` for
any orthogonal R (and the prior is invariant too), so the posterior of ``loadings`` is a ring
of rotations: compare methods on ``mean``, ``sigma`` and on C (:func:`covariance_metrics`),
never on raw loadings.

Closed forms (Tipping and Bishop 1999): the maximum-likelihood solution (:func:`fit_ml`)
``mu = xbar``, ``sigma^2`` = mean of the D - K smallest eigenvalues of the sample covariance,
``W = U_K (Lambda_K - sigma^2 I)^1/2 R``; EM (:func:`fit_em`, Bishop 2006 section 12.2.2)
reaches the same likelihood. ``ml`` is offered only with more rows than features, ``em`` while
the rows span more than K dimensions (see :func:`make_posterior`).

References
----------
Tipping and Bishop (1999), *Probabilistic principal component analysis*, JRSS B 61(3).
Bishop (2006), *Pattern Recognition and Machine Learning*, sections 12.1-12.2.
Gabry and Goodrich (2020), *Prior distributions for rstanarm models*.
Baldi and Hornik (1989), *Neural networks and principal component analysis*, Neural Networks 2.
"""

from zoo.ppca.closed_forms import (
    EMFit,
    PPCAFit,
    covariance,
    fit_em,
    fit_ml,
    linear_autoencoder,
    log_likelihood,
    posterior_z,
    principal_angles,
)
from zoo.ppca.data import (
    DATASETS,
    SIMULATED,
    Dataset,
    DatasetSpec,
    load_dataset,
)
from zoo.ppca.metrics import (
    MAX_COV_ENTRIES,
    cov_entries,
    cov_entry_names,
    covariance_metrics,
    identified,
)
from zoo.ppca.model import (
    SIGMA_PRIORS,
    SITES,
    Priors,
    default_priors,
    local_model,
    model,
    simulate,
    summary_model,
)
from zoo.ppca.posterior import (
    CLOSED_FORM_HINTS,
    IDENTIFIED_SITES,
    NUTS_MAX_PARAMETERS,
    SIMULATION_DESIGN,
    make_posterior,
    simulated_posterior,
)

__all__ = [
    "SIMULATION_DESIGN",
    "CLOSED_FORM_HINTS",
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "EMFit",
    "IDENTIFIED_SITES",
    "MAX_COV_ENTRIES",
    "NUTS_MAX_PARAMETERS",
    "PPCAFit",
    "Priors",
    "SIGMA_PRIORS",
    "SIMULATED",
    "SITES",
    "cov_entries",
    "cov_entry_names",
    "covariance",
    "covariance_metrics",
    "default_priors",
    "fit_em",
    "fit_ml",
    "identified",
    "linear_autoencoder",
    "load_dataset",
    "local_model",
    "log_likelihood",
    "make_posterior",
    "simulated_posterior",
    "model",
    "posterior_z",
    "principal_angles",
    "simulate",
    "summary_model",
]
