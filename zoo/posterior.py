"""A posterior is a (model, data) pair: what every method of a comparison is run on."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from zoo.methods import MethodSpec


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
    drawn beside the ELBO traces. ``metrics``: numbers the method measured itself (a
    baseline density's held-out ``lpd_test`` where it has no global latents to draw).
    """

    draws: Mapping[str, np.ndarray]
    moments: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    point: bool = False
    info: Mapping[str, float | int | str | bool] = field(default_factory=dict)
    trace: np.ndarray | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


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
    """Per-datapoint latents of a model, for amortized and per-row guides.

    ``site`` is the latent site, a vector of size ``dim`` per row inside the plate named
    ``plate``; ``input`` is the data keyword an encoder reads (the observation);
    ``parent``, where set, names the local site this one is drawn given in the model (a
    two-level model's lower layer given the upper one), which a guide may condition on.
    """

    site: str
    dim: int
    input: str
    plate: str = "data"
    parent: str | None = None


@dataclass(frozen=True)
class ModelForms:
    """The model's Pyro functions, each named by the job it does; each is called as
    ``form(**data)`` with the posterior's data, and all share the global latent sites.

    ``fit``: the form a guide of the global latents is fitted to (a model's discrete local
    sites enumerated in it, continuous ones integrated out); its deterministic sites are the
    derived quantities reported. None for a model without global latents.
    ``sample``: log p(x, globals) with every local latent summed or integrated out, as fast
    as the model can give it (a mixture's assignments summed out): NUTS runs it and a guide's
    draws are weighed by it. None: ``fit``.
    ``likelihood``: the form whose observation site holds p(x_n | globals) per row (every
    local latent summed or integrated out): pointwise log-likelihood, LOO, predictive
    draws. None: ``sample``.
    ``local``: every latent explicit, per-row sites in the data plate (``locals`` describes
    them): amortized and per-row guides fit it. None: the model offers no such form.

    A model with networks (a decoder) has no global latent sites: ``fit`` is None and only
    ``local`` is given; its networks are parameters of that form.
    """

    fit: Callable[..., object] | None = None
    sample: Callable[..., object] | None = None
    likelihood: Callable[..., object] | None = None
    local: Callable[..., object] | None = None
    locals: tuple[LocalLatents, ...] = ()

    def __post_init__(self) -> None:
        # Defaults set in one place: each job falls back to the form before it.
        if self.sample is None:
            object.__setattr__(self, "sample", self.fit)
        if self.likelihood is None:
            object.__setattr__(self, "likelihood", self.sample)
        if self.local is not None and not self.locals:
            raise ValueError("a local form needs its LocalLatents (locals=...)")
        if self.fit is None and self.local is None:
            raise ValueError("a model needs a fit form (global latents) or a local form")


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
    forms : ModelForms
        The model's Pyro functions by purpose, options bound (see :class:`ModelForms`).
    data, test_data : mapping
        Keyword arguments of the model on the fitted and on the held-out rows (the
        observation included). ``test_data`` is None when nothing is held out.
    obs_site : str
        Name of the observed site whose pointwise log-likelihood LOO uses.
    sites : tuple of str
        The global latent quantities reported (ArviZ variables, results.json keys), in
        constrained space and original units; some may be deterministic sites. Empty for a
        model without global latents (a VAE: its decoder is a network, fitted as a point).
    dims, coords : mapping
        ArviZ dims of each reported site and coordinate values of each dim.
    methods : tuple of MethodSpec
        The methods that apply, in report order (see :func:`zoo.methods.declare_methods`).
    closed_forms : mapping
        Closed-form name (``exact``, ``ml``, ``em``) to ``fn(seed, num_draws) ->
        ClosedForm``; the methods of family ``closed_form`` run them.
    build_forms : callable, optional
        ``build_forms(seed) -> ModelForms``: fresh forms for one method, with the model's
        networks built anew from ``seed``, so that no two methods share a network. None:
        ``forms`` serve every method (a model without networks).
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
    evaluate : callable, optional
        ``evaluate(posterior, run) -> {"metrics": {...}, "diagnostics": {...}, "arrays":
        {name: (values, dims)}}`` (each part optional): numbers that need a method's whole
        run (its fitted guide, ``run.fitted``), such as an importance-weighted log p(x) or a
        test ELBO, and arrays kept in the method's InferenceData (``constant_data``: per-row
        bounds, a held-out trace); called once per method that ran.
    follow_ups : callable, optional
        ``follow_ups(runs) -> {name: Posterior}``: posteriors that a comparison's runs
        (``{method: MethodRun}``) lead to, each compared with the same seed and preset, written
        to a sub-folder ``name`` and linked from the report (a VAE: p(z | x) of some held-out
        rows given the decoder the standard VAE trained, where NUTS is the reference).
    pointwise : bool
        Whether the rows' log-likelihood given the sites measures prediction (lpd, PSIS-LOO).
        False where the sites hold latents of each row (p(z | x) of a VAE's rows: row n's
        own z_n cannot be left out), so none is computed.
    validation_data : mapping, optional
        Rows held out of the fit (and of ``test_data``) on which a fit is stopped early
        (a network's validation rows). None: ``test_data`` serves.
    """

    model_name: str
    dataset: str
    forms: ModelForms
    data: Mapping[str, torch.Tensor]
    test_data: Mapping[str, torch.Tensor] | None
    obs_site: str
    sites: tuple[str, ...]
    dims: Mapping[str, list[str]]
    coords: Mapping[str, list]
    methods: tuple[MethodSpec, ...] = ()
    closed_forms: Mapping[str, Callable[[int, int], ClosedForm]] = field(default_factory=dict)
    build_forms: Callable[[int], ModelForms] | None = None
    grid: PredictiveGrid | None = None
    truth: Mapping[str, np.ndarray] | None = None
    description: Mapping[str, str] = field(default_factory=dict)
    max_plate_nesting: int = 1
    relabel: Callable[..., Relabelled] | None = None
    accuracy_sites: tuple[str, ...] | None = None
    row_labels: np.ndarray | None = None
    init_values: Callable[[int], Mapping[str, torch.Tensor]] | None = None
    num_starts: int = 1
    identified: Callable[..., dict[str, np.ndarray]] | None = None
    extra_metrics: Callable[..., dict[str, float]] | None = None
    evaluate: Callable[..., dict[str, dict]] | None = None
    validation_data: Mapping[str, torch.Tensor] | None = None
    follow_ups: Callable[..., Mapping[str, Posterior]] | None = None
    pointwise: bool = True

    def forms_for(self, seed: int) -> ModelForms:
        """The forms one method runs: fresh networks from ``seed`` where the model has some
        (``build_forms``), else ``forms``."""
        return self.forms if self.build_forms is None else self.build_forms(seed)

    @property
    def model(self) -> Callable[..., object]:
        """The form a guide of the global latents is fitted to (``forms.fit``), for scripts:
        ``fit_guide("mean_field", post.model, seed=0, **post.data)``."""
        return self.forms.fit

    @property
    def locals(self) -> tuple[LocalLatents, ...]:
        """The per-datapoint latent sites of the local form (none without one)."""
        return self.forms.locals

    @property
    def num_data(self) -> int:
        return int(self.data[self.obs_site].shape[0])

    @property
    def num_test(self) -> int:
        return 0 if self.test_data is None else int(self.test_data[self.obs_site].shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the data, which every method computes in."""
        return self.data[self.obs_site].dtype

    @property
    def device(self) -> torch.device:
        return self.data[self.obs_site].device
