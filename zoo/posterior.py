"""A posterior is a (model, data) pair: what every method of a comparison is run on."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch


def bind(fn: Callable[..., object], **options: object) -> Callable[..., object]:
    """``fn`` with its model options bound (called as ``bound(**data)``), keeping its name and
    docstring for traces and error messages."""
    bound = functools.partial(fn, **options)
    functools.update_wrapper(bound, fn)
    return bound


@dataclass(frozen=True)
class ClosedForm:
    """What a closed-form method returns.

    ``draws`` maps each latent site (and deterministic site) to an array whose first axis
    indexes draws; ``moments`` optionally gives the exact mean and standard deviation of each
    site, which comparisons prefer over the draws when this method is the reference.
    ``point`` marks a point estimate (one draw). ``info`` holds plain numbers or strings for
    the method's diagnostics (e.g. ``log_likelihood``, ``bic``, ``converged``, ``n_iter``);
    ``trace`` is the objective per iteration of an iterative method (EM's log-likelihood),
    drawn beside the ELBO traces.
    """

    draws: Mapping[str, np.ndarray]
    moments: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    point: bool = False
    info: Mapping[str, float | int | str | bool] = field(default_factory=dict)
    trace: np.ndarray | None = None


@dataclass(frozen=True)
class PredictiveGrid:
    """Inputs on which the report draws posterior predictive bands.

    ``values`` are the points of the x axis (named ``label``); ``data`` are the model keyword
    arguments (without the observation) that put the model at those points.
    """

    label: str
    values: np.ndarray
    data: Mapping[str, torch.Tensor]
    observed_x: np.ndarray
    observed_y: np.ndarray


@dataclass(frozen=True)
class LocalLatents:
    """Per-datapoint latents of a model, for amortized guides (an encoder q(site | input)).

    ``site`` is the latent site, a vector of size ``dim`` per row inside the plate named
    ``plate``; ``input`` is the data keyword the encoder reads (the observation).
    """

    site: str
    dim: int
    input: str
    plate: str = "data"


@dataclass(frozen=True)
class Relabelled:
    """What :attr:`Posterior.relabel` returns: draws with canonical labels and what it did.

    ``draws`` has the same keys and shapes as the draws given; ``info`` holds plain numbers
    or strings (e.g. ``label_swaps`` per chain) that end up in the method's diagnostics.
    """

    draws: Mapping[str, np.ndarray]
    info: Mapping[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Posterior:
    """One model on one data set, ready for any method.

    Attributes
    ----------
    model : callable
        The Pyro model with its options bound; call it as ``model(**data)``.
    data, test_data : mapping
        Keyword arguments of the model on the fitted and on the held-out rows (the
        observation included). ``test_data`` is None when nothing is held out.
    obs_site : str
        Name of the observed site whose pointwise log-likelihood LOO uses.
    sites : tuple of str
        The global latent quantities reported (ArviZ variables, results.json keys), in
        constrained space and original units; some may be deterministic sites.
    dims, coords : mapping
        ArviZ dims of each reported site and coordinate values of each dim.
    closed_forms : mapping
        Method name (``exact``, ``ml``, ``em``) to ``fn(seed, num_draws) -> ClosedForm``.
    marginal_model : callable, optional
        The same model with every local latent (discrete or continuous) summed or integrated
        out, called as ``marginal_model(**data)``, with the same global sites and the
        observation at ``obs_site`` holding p(x_n | globals) per row. The pointwise
        log-likelihood, LOO, predictive draws and importance weights use it. None when
        ``model`` has no local latents (it is its own marginal).
    sampler_model : callable, optional
        The form NUTS runs and a guide's draws are weighed by (log p(x, globals) for PSIS),
        where it differs from ``model``: the same density with every local latent summed
        out, computed faster (a mixture's ``MixtureSameFamily`` rather than enumeration). A
        model that enumerates discrete sites must give one. None: ``model``.
    local_model, local : callable and LocalLatents, optional
        The form with explicit per-datapoint latents that amortized guides fit (PPCA's
        ``z``), and a description of those latents. None when the model offers none.
    relabel : callable, optional
        ``relabel(draws, reference) -> Relabelled`` for a model whose labels are arbitrary
        (mixture components). ``draws`` maps site names to arrays (chain, draw, *shape);
        ``reference`` is None or the reference method's draws in the same form, to match
        labels against. Applied to every method's draws before any summary.
    init_values : callable, optional
        ``init_values(seed) -> {site: tensor}``: a model's own starting point for an
        optimizer (a mixture: k-means++ rows as component means), in constrained space; sites
        left out start at the median of prior draws. None: no such point.
    num_starts : int
        How many starting points an optimizer should try on this posterior, the best kept
        (more than 1 where there are several modes, as in a mixture).
    default_methods : tuple of str, optional
        The methods a comparison runs when none are named; None: all that apply. A posterior
        on which one would take hours (NUTS on PPCA of digits) leaves it out and says why in
        its ``description``.
    identified : callable, optional
        ``identified(draws) -> {name: array}``: functions of the global sites that the data
        identify, from draws with leading (chain, draw) axes, kept beside the sites in each
        method's InferenceData (dims and coords from ``dims``/``coords``). Where raw sites are
        not identified (PPCA's loadings: any rotation), NUTS convergence is judged on these
        (e.g. the covariance W W^T + sigma^2 I) and ``accuracy_sites`` may name them.
    row_labels : array (N,), optional
        A known class of each fitted row (digit, species), only to colour plots of
        per-row quantities; never seen by any method.
    accuracy_sites : tuple of str, optional
        The sites or identified quantities on which mean z and sd ratio are measured, also
        summarized in results.json and drawn as marginals; None means all of ``sites``. PPCA
        uses C's eigenvalues and entries, sigma and the mean, never ``loadings`` (identified
        only up to rotation).
    extra_metrics : callable, optional
        ``extra_metrics(draws, reference) -> dict`` of model-specific accuracy numbers
        (plain floats), with ``draws``/``reference`` flat: site -> array (S, *shape);
        ``reference`` may be None. Used where raw parameters are not identified (PPCA's
        rotations) or to compare with the truth of simulated data.
    """

    model_name: str
    dataset: str
    model: Callable[..., object]
    data: Mapping[str, torch.Tensor]
    test_data: Mapping[str, torch.Tensor] | None
    obs_site: str
    sites: tuple[str, ...]
    dims: Mapping[str, list[str]]
    coords: Mapping[str, list]
    closed_forms: Mapping[str, Callable[[int, int], ClosedForm]] = field(default_factory=dict)
    grid: PredictiveGrid | None = None
    truth: Mapping[str, np.ndarray] | None = None
    description: Mapping[str, str] = field(default_factory=dict)
    max_plate_nesting: int = 1
    marginal_model: Callable[..., object] | None = None
    sampler_model: Callable[..., object] | None = None
    local_model: Callable[..., object] | None = None
    local: LocalLatents | None = None
    relabel: Callable[..., Relabelled] | None = None
    accuracy_sites: tuple[str, ...] | None = None
    row_labels: np.ndarray | None = None
    init_values: Callable[[int], Mapping[str, torch.Tensor]] | None = None
    num_starts: int = 1
    default_methods: tuple[str, ...] | None = None
    identified: Callable[..., dict[str, np.ndarray]] | None = None
    extra_metrics: Callable[..., dict[str, float]] | None = None

    @property
    def likelihood_model(self) -> Callable[..., object]:
        """The model whose observation site gives p(x_n | globals): the marginal form."""
        return self.marginal_model if self.marginal_model is not None else self.model

    @property
    def num_data(self) -> int:
        return int(self.data[self.obs_site].shape[0])

    @property
    def num_test(self) -> int:
        return 0 if self.test_data is None else int(self.test_data[self.obs_site].shape[0])
