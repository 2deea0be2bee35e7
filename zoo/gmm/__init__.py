"""Gaussian mixture with diagonal covariances.

Model
-----
For rows n = 1..N of D features and K components::

    weights          ~ Dirichlet(alpha, ..., alpha)                    shape (K,)
    locs[k, d]       ~ Normal(m_d, c s_d)                              shape (K, D)
    scales[k, d]     ~ LogNormal(log(r s_d), tau)                      shape (K, D), sds
    assignment_n     ~ Categorical(weights)                            discrete, enumerated
    x_n              ~ Normal(locs[assignment_n], scales[assignment_n])   D independent coords

``m_d`` and ``s_d`` are the sample mean and standard deviation of feature d, so the default
priors mean the same thing whatever the units of the columns (the rstanarm habit, Gabry and
Goodrich 2020). Defaults (``prior="weakly_informative"``): ``c = 2.5``, ``r = 0.5``,
``tau = 1``, ``alpha = 2``.

Why these priors. A component mean anywhere in the range of the data is plausible, hence a
normal 2.5 feature sds wide around the data mean. The likelihood of a mixture is unbounded:
a component sitting on one row with its sd going to 0 sends it to infinity (Bishop 2006,
section 9.2.1), so maximum likelihood and a MAP under a flat or half-normal scale prior can
be degenerate. The log-normal density vanishes at 0 faster than any power of the sd, so the
posterior density is bounded and its mode (MAP, Laplace) is interior: a component fitted
to one row alone has its mode of ``log sd`` at ``log(r s_d) - 2 tau^2`` (``- tau^2`` in the
log-sd coordinates of Laplace and NUTS), not at minus infinity. It is symmetric in
``log sd``, the coordinate NUTS and the guides work in, and with tau = 1 its central 95%
runs from 0.07 to 3.5 feature sds, around the within-component sds seen in practice (a
component's sd rarely exceeds the feature's). ``alpha = 2`` adds one
pseudo-count per component: its density is zero at a weight of 0, so no component is
emptied at the mode, and with 100 rows it moves a weight by less than 0.01.

``prior="weak"`` sets ``tau = 3`` and ``alpha = 1`` (no pseudo-counts): the mode then
approaches the maximum-likelihood fit (:func:`fit_em`); the sd of a component with n_k rows
moves by about ``(1 + log(sd / (r s_d)) / tau^2) / (2 n_k)`` of itself (the log-normal's
``1/sd``), a mean by ``sd^2 / n_k * (m_d - mean) / (c s_d)^2``, the weights not at all. It
leaves ``c = 2.5``: a wider prior on the means would hardly move the mode (the shift above is
a few thousandths of a component sd with 100 rows a component) but spreads the prior draws
that guides start from off the data. On ``simulate(1, 3, 300, 2, separation=6)`` a delta guide
started at the median of prior draws found the EM mode in 0 of 8 seeds with ``c = 10``, in 3
of 6 with the weak preset and in 8 of 8 with the default priors: with ``alpha = 1`` every
emptied component is a stationary point, and a component may again collapse onto a few rows.
Any of the four numbers can be set on its own.

Shapes. Global sites sit outside every plate (``.to_event``), so a batch of draws (vectorized
particles at dim -2, predictive draws) sits on their left: ``locs`` is (K, D) or (P, 1, K, D).
The assignment is indexed with ``Vindex``, so it works batched and enumerated (shape
(K, 1, 1) under ``TraceEnum_ELBO``). :func:`marginal_model` has the same global sites and
sums the assignment out with :class:`DiagonalNormalMixture` (``MixtureSameFamily`` with a
log density in half the tensor passes): p(x_n | globals) per row.

Labels. Components are exchangeable, so the posterior has K! symmetric modes. Every method's
draws are relabelled (:func:`relabel`) before any summary: components sorted by the first
coordinate of ``locs`` (DESIGN.md section 2), or, where that order is ambiguous, matched to a
reference.

References
----------
Bishop (2006), *Pattern Recognition and Machine Learning*, sections 9.2 and 9.3.
Stephens (2000), Dealing with label switching in mixture models, JRSS B 62(4).
Fraley and Raftery (2007), Bayesian regularization for normal mixture estimation and
model-based clustering, J. Classification 24.
Gabry and Goodrich (2020), *Prior distributions for rstanarm models*.
"""

from zoo.gmm.data import (
    DATASETS,
    BuiltinData,
    DatasetSpec,
    load_dataset,
    truth_errors,
)
from zoo.gmm.em import (
    EMResult,
    fit_em,
    init_values,
)
from zoo.gmm.model import (
    PRIOR_PRESETS,
    SITES,
    DiagonalNormalMixture,
    Priors,
    default_priors,
    marginal_model,
    mixture_log_likelihood,
    model,
    simulate,
)
from zoo.gmm.posterior import SIMULATION_DESIGN, make_posterior, simulated_posterior
from zoo.gmm.relabel import (
    AMBIGUOUS_GAP_Z,
    MAX_RELABEL_ROUNDS,
    relabel,
    sorted_components,
)

__all__ = [
    "SIMULATION_DESIGN",
    "AMBIGUOUS_GAP_Z",
    "BuiltinData",
    "DATASETS",
    "DatasetSpec",
    "DiagonalNormalMixture",
    "EMResult",
    "MAX_RELABEL_ROUNDS",
    "PRIOR_PRESETS",
    "Priors",
    "SITES",
    "default_priors",
    "fit_em",
    "init_values",
    "load_dataset",
    "make_posterior",
    "marginal_model",
    "mixture_log_likelihood",
    "model",
    "relabel",
    "simulate",
    "simulated_posterior",
    "sorted_components",
    "truth_errors",
]
