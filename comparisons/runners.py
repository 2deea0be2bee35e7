"""Method runners: NUTS, SVI with each guide, and the model's closed forms.

Every runner returns a :class:`MethodRun`: draws of the latent sites per chain, sampler
statistics, cost and diagnostics. Conversion to ArviZ happens in :mod:`comparisons.convert`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_median, init_to_value
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from comparisons.nuts import BatchedPotential, Gradient, NotVectorized, Sampler, _value_and_grad
from guides import GUIDES, Checkpoint, FitConfig, FitError, draw, fit_guide, get_guide
from zoo import MODELS, MethodSpec, Posterior, ZooInputError, get_model
from zoo.methods import CLOSED_FORM, METHOD_ALIASES, NUTS_METHOD, NUTS_PYRO_METHOD
from zoo.tensors import cores, to_numpy


@dataclass(frozen=True)
class NutsBudget:
    """When NUTS is stopped and reported rather than waited on.

    Budgets, over all chains, warm-up included: ``max_grad_evals`` gradient evaluations
    (machine-independent: the same seed stops at the same draw on any machine) and
    ``max_seconds`` of wall time (a safety net on a slow or busy machine); None for none.
    Per iteration: at most 2^``max_tree_depth`` - 1 leapfrog steps (Pyro's and Stan's
    default depth, 10).

    Rules for a chain that cannot do its job in reasonable time, applied from its
    ``check_after``-th iteration on (warm-up or sampling): it is stopped when, of its last
    ``window`` trees, a share of ``max_depth_share`` or more reached the maximum tree depth
    (each such iteration costs up to 2^depth - 1 gradient evaluations and still moves
    little), or when its adapted step size fell below ``min_step_ratio`` times the one it
    started from. Both mean the posterior is badly scaled for the sampler, or it hops
    between separated modes. The default ``check_after`` waits for Pyro's first mass-matrix
    update (after 75 + 25 warm-up iterations): before it, deep trees are normal on a
    posterior whose scales differ (seen: 8% of the trees of warm-up iterations 25-49 at the
    maximum depth on kidiq with the raw intercept, none from 75 on). Seen on iris with
    K = 5 (smoke): after the update at iteration 250 the step size fell to 0.0013 (0.125 at
    the start), and by iteration 296 80% of the last 25 trees were at the maximum depth
    (860 gradient evaluations an iteration)."""

    max_grad_evals: int | None = None
    max_seconds: float | None = None
    max_tree_depth: int = 10
    check_after: int = 100
    window: int = 25
    max_depth_share: float = 0.8
    min_step_ratio: float = 1e-3


#: NUTS adapts a dense mass matrix for posteriors of at most this many coordinates, and a
#: diagonal one above (where a window of 100-odd warm-up draws no longer pins down a dense
#: covariance); 0: always diagonal. Whole-run ESS/s, diagonal against dense, one run each:
#: with the batched sampler, 2 chains x 500 + 500, the regression of
#: benchmarks/bench_numpyro.py (N=1000, D=10, features correlated at 0.3) 50.5 and 92.1 and
#: its mixture (K=3, N=500, 2-D) 14.3 and 46.1; with Pyro's kernel, kidiq with the
#: interaction mom_hs x mom_iq (coefficients correlated at 0.99, smoke preset) 1.5 and 7.0,
#: and 2.1 and 9.0 in a later run (benchmarks/bench_linear_regression.py).
DENSE_MASS_UP_TO = 50


@dataclass(frozen=True)
class Preset:
    """How much work each method gets, and the options of guide families that have some
    (``guide_options["amortized"] = {"encoder": "mlp", "global_guide": "mean_field"}``).

    ``nuts_budget`` caps NUTS (:class:`NutsBudget`); the SVI and L-BFGS fits are capped by
    ``fit.num_steps`` and ``fit.max_seconds``. A method stopped at its budget is reported as
    stopped, with the reason in its verdict. ``chains_in_parallel``: NUTS's chains in
    processes of their own (:func:`chain_workers`; the same draws as one after another);
    None: where the machine has the cores. ``dense_mass_up_to``: NUTS adapts a dense mass
    matrix for a posterior of at most this many coordinates (default
    :data:`DENSE_MASS_UP_TO`, 50; 0: always diagonal), a diagonal one above."""

    name: str
    num_chains: int
    num_warmup: int
    num_samples: int
    num_draws: int
    fit: FitConfig
    guide_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    nuts_budget: NutsBudget = field(default_factory=NutsBudget)
    chains_in_parallel: bool | None = None
    dense_mass_up_to: int = DENSE_MASS_UP_TO


#: The NUTS budgets leave room over the costliest healthy runs seen: with 2 chains of
#: 500 + 500, kidiq with the raw intercept took 117,471 gradient evaluations, iris with
#: K = 4 about 15,000 a chain; the smoke preset's 4 chains of 300 + 300 take 1.6 to 1.7
#: times as many (kidiq centered: 37,800 against 22,000-24,700, seeds 0-2); full runs 4
#: chains of 1000 + 1000. The seconds are a safety net only (the raw kidiq run took 604 s on
#: 2 cores shared with five other jobs), as are the fits' (the slowest smoke guide on kidiq,
#: flow, took 33 s there).
#:
#: Smoke runs 4 short chains rather than 2 longer ones: R-hat compares chains, and from 2 it
#: is noisy. On kidiq (centered, seeds 0-2) 2 x 500 gave R-hat 1.0102, 1.0089, 1.0007 (the
#: first fails the reference check, 1.01, with a bulk ESS of 766); 4 x 300 gave 1.0039,
#: 1.0040, 1.0048 with bulk ESS 928-1042, for 1.45 times the wall time.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke",
        num_chains=4,
        num_warmup=300,
        num_samples=300,
        num_draws=2000,
        fit=FitConfig(num_steps=3000, min_steps=400, window=100, max_seconds=600),
        nuts_budget=NutsBudget(max_grad_evals=300_000, max_seconds=1800),
    ),
    "full": Preset(
        "full",
        num_chains=4,
        num_warmup=1000,
        num_samples=1000,
        num_draws=4000,
        fit=FitConfig(max_seconds=1800),
        nuts_budget=NutsBudget(max_grad_evals=1_000_000, max_seconds=7200),
    ),
}


@dataclass
class MethodRun:
    """What one method produced on one posterior.

    ``draws`` maps latent site names to arrays (chain, draw, *shape) in constrained space.
    ``log_weights`` (chain, draw) are log p(x, z) - log q(z) for guides with a density.
    ``moments`` are exact moments of the reported sites where the method has them.
    ``elbo`` is the objective per step (``trace_label`` names it: the ELBO, the log joint of
    an L-BFGS fit, EM's log-likelihood). ``per_row`` holds per-datapoint outputs with their
    dims (e.g. an encoder's latent means, dims ("obs", "latent")). ``fitted`` is a guide
    family's :class:`~guides.FitResult` (its guide and parameters), for evaluation hooks.
    ``pushed`` names the deterministic sites added to ``draws`` by pushing them through the
    model. ``log_lik`` holds the pointwise log-likelihood, (chain, draw, rows) per observed site
    (``<obs>`` on the fitted rows, ``<obs>_test`` on held-out ones), where the run has
    draws of the global sites; ``metrics`` numbers the model's evaluation hook measured.
    What a report computes follows from what a run holds: several chains with sampler
    statistics get MCMC diagnostics, a log-likelihood gets lpd and LOO, log weights PSIS.
    """

    method: str
    draws: dict[str, np.ndarray]
    cost: dict[str, float | int]
    diagnostics: dict[str, float | int | str | bool] = field(default_factory=dict)
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    elbo: np.ndarray | None = None
    log_weights: np.ndarray | None = None
    moments: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    point: bool = False
    error: str | None = None
    trace_label: str = "ELBO"
    per_row: dict[str, tuple[np.ndarray, tuple[str, ...]]] = field(default_factory=dict)
    stopped: bool = False
    fitted: object | None = None
    log_lik: dict[str, np.ndarray] = field(default_factory=dict)
    pushed: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)


class _Stopped(Exception):
    """Raised from inside NUTS to leave ``mcmc.run``; its message says why and what to try."""


#: What to try when NUTS cannot move through a posterior.
_NUTS_ADVICE = (
    "the posterior is badly scaled for the sampler or has separated modes: try a simpler"
    " model (for a mixture, fewer components), a reparameterization, or a guide"
)


@dataclass
class _Guard:
    """Applies a :class:`NutsBudget` to the chains of one NUTS run, after every iteration."""

    budget: NutsBudget
    num_chains: int
    num_warmup: int
    num_samples: int
    start: float = field(default_factory=time.perf_counter)
    chain: int = 0
    grad_evals_before: int = 0  # spent by the chains that finished
    whole: int | None = (
        None  # a forked chain's: the run's gradient budget, of which it has its share
    )
    draws_done: int | None = None  # the batched sampler's draws so far, over all chains

    def check(self, kernel: _CountingNUTS) -> None:
        """Raise :class:`_Stopped` when the run is over its budget or cannot do its job."""
        b, it = self.budget, len(kernel.per_draw)
        warmup = it <= self.num_warmup
        where = f"chain {self.chain + 1} of {self.num_chains}, " + (
            f"warm-up iteration {it} of {self.num_warmup}"
            if warmup
            else f"draw {it - self.num_warmup} of {self.num_samples}"
        )
        draws = self.draws_done
        if draws is None:
            draws = self.chain * self.num_samples + max(0, it - self.num_warmup)
        total = self.num_chains * self.num_samples
        spent = self.grad_evals_before + kernel.grad_evals
        seconds = time.perf_counter() - self.start
        last = [s[0] for s in kernel.per_draw[-b.window :]]
        max_steps = 2 ** (kernel._max_tree_depth - 1)  # the last doubling was reached
        deep = sum(n >= max_steps for n in last) / len(last)
        cost = (
            f"trees at the maximum depth ({kernel._max_tree_depth}) on {deep:.0%} of the last"
            f" {len(last)} iterations, {np.mean(last):.0f} gradient evaluations each"
        )
        if b.max_grad_evals is not None and spent > b.max_grad_evals:
            budget = f"{b.max_grad_evals:,} gradient evaluations"
            if self.whole is not None:
                budget = (
                    f"{self.whole:,} gradient evaluations ({b.max_grad_evals:,} for each of"
                    f" its {self.num_chains} chains, run in parallel)"
                )
        elif b.max_seconds is not None and seconds > b.max_seconds:
            budget = f"{b.max_seconds:g} s"
        else:
            budget = None
        if budget is not None:
            raise _Stopped(
                f"stopped at its budget of {budget} after {draws} of {total} draws ({where};"
                f" {cost}); give it a larger budget (a larger preset, or a Preset of your own)"
                " or use a guide"
            )
        if it < b.check_after or len(last) < b.window:
            return
        ratio = float(kernel.step_size) / kernel.initial_step_size
        if ratio < b.min_step_ratio:
            raise _Stopped(
                f"stopped: the step size collapsed to {float(kernel.step_size):.1e} (from"
                f" {kernel.initial_step_size:.1e} at the start) at {where}; {cost};"
                f" {_NUTS_ADVICE}"
            )
        if deep >= b.max_depth_share:
            raise _Stopped(
                f"stopped: {cost} (step size {float(kernel.step_size):.1e}, from"
                f" {kernel.initial_step_size:.1e} at the start) at {where}; {_NUTS_ADVICE}"
            )


class _CountingNUTS(NUTS):
    """NUTS that counts potential-energy gradient evaluations, records per-draw stats and
    lets a :class:`_Guard` stop it after any iteration."""

    def __init__(self, *args, guard: _Guard | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard

    def _initialize_model_properties(self, model_args, model_kwargs):
        super()._initialize_model_properties(model_args, model_kwargs)
        inner = self.potential_fn
        self.grad_evals = 0
        self.per_draw: list[tuple[int, bool, float]] = []

        def counted(z):
            self.grad_evals += 1
            return inner(z)

        self.potential_fn = counted

    def sample(self, params):
        if not self.per_draw:  # the step size Pyro's heuristic found at set-up
            self.initial_step_size = float(self.step_size)
        before, divergences = self.grad_evals, len(self._divergences)
        z = super().sample(params)
        self.per_draw.append(
            (self.grad_evals - before, len(self._divergences) > divergences, float(self.step_size))
        )
        if self.guard is not None:
            self.guard.check(self)
        return z


def _init_strategy(posterior: Posterior, seed: int):
    """Where a NUTS chain seeded ``seed`` starts: the model's starting values where it has
    them (a mixture: k-means++ rows), else the median of 15 prior draws."""
    init = init_to_median(num_samples=15)
    if posterior.init_values is not None:
        init = init_to_value(values=dict(posterior.init_values(seed)), fallback=init)
    return init


def _nuts_chain(
    posterior: Posterior, chain: int, *, seed: int, preset: Preset, full_mass: bool, guard, progress
):
    """One chain of NUTS (seed ``seed + chain``); its draws and the kernel (per-draw stats,
    gradient evaluations). Raises :class:`_Stopped` where the guard stops it."""
    guard.chain = chain
    pyro.set_rng_seed(seed + chain)
    init = _init_strategy(posterior, seed + chain)
    kernel = _CountingNUTS(
        posterior.forms.sample,
        full_mass=full_mass,
        jit_compile=True,
        ignore_jit_warnings=True,
        init_strategy=init,
        max_plate_nesting=posterior.max_plate_nesting,
        max_tree_depth=preset.nuts_budget.max_tree_depth,
        guard=guard,
    )
    mcmc = MCMC(
        kernel,
        num_samples=preset.num_samples,
        warmup_steps=preset.num_warmup,
        num_chains=1,
        disable_progbar=not progress,
    )
    with warnings.catch_warnings():
        # Pyro's JIT path calls torch.jit.trace, which torch 2.13 marks deprecated; the
        # message is Pyro's to act on, not the user's.
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.trace.* is deprecated", category=DeprecationWarning
        )
        try:
            mcmc.run(**posterior.data)
        except _Stopped as stop:
            stop.kernel = kernel
            raise
    return {k: to_numpy(v) for k, v in mcmc.get_samples().items()}, kernel


def run_nuts(posterior, method=NUTS_METHOD, *, seed, preset, progress=False) -> MethodRun:
    """NUTS on ``posterior.forms.sample``: the density of the global latents with every
    local latent summed out, in the fastest form the model offers (a mixture: the
    assignments summed out rather than enumerated).

    Two samplers, chosen by the method's option ``sampler``:

    - ``"zoo"`` (the method ``nuts``): :mod:`comparisons.nuts`, every chain advanced in one
      batched evaluation of the model's potential and gradient, compiled once for the run
      (:class:`~comparisons.nuts.Gradient`; ``diagnostics["potential"]`` says in which
      form), on one thread; chain c started as Pyro's chain c, its random numbers from its
      own generator seeded by (``seed``, c). A model that does not vectorize over chains
      (:class:`~comparisons.nuts.NotVectorized`) runs under Pyro's sampler instead, and
      ``diagnostics["sampler_fallback"]`` says why.
    - ``"pyro"`` (the method ``nuts_pyro``): Pyro's NUTS kernel (JIT-compiled potential),
      chain c with seed ``seed + c``, in processes of their own where the machine has the
      cores (:func:`chain_workers`) or one after another: the same draws either way (but a
      run near its gradient budget may stop in one way and not in the other: in processes
      each chain has an equal share of it, in turn the chains spend it in order).

    ``diagnostics["sampler"]`` says which ran. The mass matrix is dense for a posterior of
    at most ``preset.dense_mass_up_to`` coordinates, else diagonal (``diagnostics[
    "mass_matrix"]``).

    ``preset.nuts_budget`` stops a run that is over its budget or cannot do its job (step
    size collapsed, trees at the maximum depth); the run then has no draws, ``stopped`` is
    True and ``error`` says why and what to try. The method's options may ask for more draws
    than the preset's (``num_samples``, ``num_warmup``: the larger is taken)."""
    more = {k: max(int(v), getattr(preset, k)) for k, v in method.options.items()
            if k in ("num_samples", "num_warmup")}  # fmt: skip
    preset = dataclasses.replace(preset, **more) if more else preset
    sampler = method.options.get("sampler", ZOO)
    if sampler not in SAMPLERS:
        raise ZooInputError(
            f"unknown NUTS sampler '{sampler}'; choose one of: {', '.join(SAMPLERS)}"
        )
    mass = mass_matrix(posterior, preset)
    settings = {"seed": seed, "preset": preset, "full_mass": mass == "dense"}
    fallback = None
    if sampler == ZOO:
        try:
            run = _run_nuts_zoo(posterior, method, progress=progress, **settings)
        except NotVectorized as exc:
            fallback = f"{exc}; Pyro's sampler ran it instead"
            warnings.warn(f"nuts: {fallback}", stacklevel=2)
            sampler = PYRO
    if sampler == PYRO:
        workers = chain_workers(preset)
        if workers > 1:
            run = _run_nuts_forked(
                posterior, method, workers=workers, progress=progress, **settings
            )
        else:
            run = _run_nuts_in_turn(posterior, method, progress=progress, **settings)
    run.diagnostics["mass_matrix"] = mass
    run.diagnostics["sampler"] = sampler
    if fallback is not None:
        run.diagnostics["sampler_fallback"] = fallback
    return run


#: The NUTS samplers by name (a method's option ``sampler``).
ZOO, PYRO = "zoo", "pyro"
SAMPLERS = (ZOO, PYRO)


def _initial_point(posterior: Posterior, potential: BatchedPotential, chain: int, seed: int):
    """Chain ``chain``'s start, as Pyro's NUTS would start it (seed ``seed + chain``): the
    model's starting values where it has them (a mixture: k-means++ rows), else the median
    of 15 prior draws; where the density or its gradient is not finite there, the same
    strategy again, as Pyro retries (at most 100 times)."""
    pyro.set_rng_seed(seed + chain)
    init = _init_strategy(posterior, seed + chain)
    for _ in range(100):
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(InitMessenger(init)(posterior.forms.sample)).get_trace(
                **posterior.data
            )
        z = potential.unconstrain({s.name: trace.nodes[s.name]["value"] for s in potential.sites})
        u, g = _value_and_grad(potential, z.unsqueeze(0))
        if torch.isfinite(u).all() and torch.isfinite(g).all():
            return z
    raise ZooInputError(
        "nuts: found no starting point where the model's density is finite in 100 tries;"
        " check the data against the model's support"
    )


def _run_nuts_zoo(posterior, method, *, seed, preset, full_mass, progress) -> MethodRun:
    """The chains of :func:`run_nuts` advanced together by :class:`comparisons.nuts.Sampler`,
    on one torch thread."""
    chains, warmup, samples = preset.num_chains, preset.num_warmup, preset.num_samples
    guard = _Guard(preset.nuts_budget, chains, warmup, samples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        potential = BatchedPotential(
            posterior.forms.sample, posterior.data, posterior.max_plate_nesting
        )
        try:
            z0 = torch.stack([_initial_point(posterior, potential, c, seed) for c in range(chains)])
        except ZooInputError:
            raise
        except (RuntimeError, ValueError, IndexError) as exc:
            raise NotVectorized(
                f"the model fails with the chains as an outer plate: {exc}"
            ) from exc
        potential.check_vectorized(z0)
        views = [_ChainStats([], 0, float("nan"), preset.nuts_budget.max_tree_depth)
                 for _ in range(chains)]  # fmt: skip
        bar = tqdm(total=chains * (warmup + samples), desc="nuts", disable=not progress,
                   unit="it", leave=False)  # fmt: skip

        def on_iteration(sampler, chain: int, it: int) -> None:
            view = views[chain]
            view.per_draw.append((int(sampler.stats["n_steps"][chain, it]),
                                  bool(sampler.stats["diverging"][chain, it]),
                                  float(sampler.stats["step_size"][chain, it])))  # fmt: skip
            view.grad_evals = int(sampler.grad_evals[chain])
            view.initial_step_size = float(sampler.initial_step_size[chain])
            view.step_size = float(sampler.step_size[chain])
            guard.chain = chain
            guard.grad_evals_before = int(sampler.grad_evals.sum()) - view.grad_evals
            guard.draws_done = int(np.maximum(sampler.iterations - warmup, 0).sum())
            bar.update(1)
            guard.check(view)

        gradient = Gradient(potential, z0)
        sampler = Sampler(
            potential,
            gradient=gradient,
            seed=seed,
            max_tree_depth=preset.nuts_budget.max_tree_depth,
            dense_mass=full_mass,
            on_iteration=on_iteration,
        )
        try:
            run = sampler.run(z0, num_warmup=warmup, num_samples=samples)
        except _Stopped as stop:
            stopped = _stopped_nuts(method.name, str(stop), views[guard.chain], guard, preset)
            stopped.diagnostics["potential"] = gradient.how
            return stopped
        finally:
            bar.close()
        z = torch.as_tensor(run.z, device=z0.device)
        values = {k: to_numpy(v) for k, v in potential.constrain(z).items()}
    finally:
        torch.set_num_threads(threads)
    draws = [{k: v[c] for k, v in values.items()} for c in range(chains)]
    stats = {key: [getattr(run, key)[c, warmup:] for c in range(chains)]
             for key in ("n_steps", "diverging", "step_size")}  # fmt: skip
    guard.grad_evals_before = int(run.grad_evals.sum())
    result = _nuts_result(method.name, draws, stats, guard, preset,
                          preset.nuts_budget.max_tree_depth)  # fmt: skip
    result.diagnostics["batched_evals"] = run.batched_evals
    result.diagnostics["potential"] = gradient.how
    return result


def _run_nuts_in_turn(posterior, method, *, seed, preset, full_mass, progress) -> MethodRun:
    """The chains of :func:`run_nuts` one after another, in this process."""
    chains: list[dict[str, np.ndarray]] = []
    stats: dict[str, list[np.ndarray]] = {"n_steps": [], "diverging": [], "step_size": []}
    guard = _Guard(preset.nuts_budget, preset.num_chains, preset.num_warmup, preset.num_samples)
    for chain in range(preset.num_chains):
        try:
            samples, kernel = _nuts_chain(
                posterior, chain, seed=seed, preset=preset, full_mass=full_mass, guard=guard,
                progress=progress,
            )  # fmt: skip
        except _Stopped as stop:
            return _stopped_nuts(method.name, str(stop), stop.kernel, guard, preset)
        chains.append(samples)
        kept = kernel.per_draw[-preset.num_samples :]
        for i, key in enumerate(("n_steps", "diverging", "step_size")):
            stats[key].append(np.array([s[i] for s in kept]))
        guard.grad_evals_before += kernel.grad_evals
    return _nuts_result(method.name, chains, stats, guard, preset, kernel._max_tree_depth)


def latent_dim(posterior) -> int:
    """The number of coordinates NUTS moves in (those of the sampled form's latent sites, in
    their own shapes: a simplex of K weights counts K, where NUTS moves in K - 1)."""
    # The model's random stream is left as it was: a chain's draws come from its seed alone.
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=[]):
        trace = poutine.trace(posterior.forms.sample).get_trace(**posterior.data)
    return sum(
        int(site["value"].numel())
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    )


def mass_matrix(posterior, preset: Preset) -> str:
    """ "dense" where NUTS adapts a dense mass matrix (at most ``preset.dense_mass_up_to``
    coordinates), else "diagonal"."""
    if preset.dense_mass_up_to <= 0:
        return "diagonal"
    return "dense" if latent_dim(posterior) <= preset.dense_mass_up_to else "diagonal"


def chain_workers(preset: Preset) -> int:
    """The processes NUTS's chains run in: one per chain where ``preset.chains_in_parallel``
    is True; where it is None (the default), one per chain up to the cores this process may
    use. Chains are forked, so on Linux only. 1: one after another."""
    wanted = preset.chains_in_parallel
    if wanted is False or preset.num_chains < 2 or sys.platform != "linux":
        return 1
    if torch.cuda.is_initialized():  # a forked child cannot use CUDA again
        return 1
    return preset.num_chains if wanted else max(1, min(cores(), preset.num_chains))


@dataclass
class _ChainStats:
    """What a chain's kernel reports (a forked chain sends it back in place of the kernel;
    the batched sampler keeps one per chain)."""

    per_draw: list[tuple[int, bool, float]]
    grad_evals: int
    initial_step_size: float
    _max_tree_depth: int
    step_size: float = float("nan")


#: The posterior and settings of the NUTS run whose chains are being forked: set before the
#: processes fork, so they inherit it rather than unpickle it (a posterior holds closures).
_FORKED: dict[str, tuple] = {}


def _forked_chain(chain: int):
    """One chain of the run in :data:`_FORKED`, on one thread, with its share of the
    budget: ("done" or "stopped", the draws or the reason, the kernel's statistics)."""
    posterior, seed, preset, full_mass, start = _FORKED["run"]
    torch.set_num_threads(1)
    budget = preset.nuts_budget
    share = dataclasses.replace(
        budget,
        max_grad_evals=None
        if budget.max_grad_evals is None
        else budget.max_grad_evals // preset.num_chains,
    )
    guard = _Guard(share, preset.num_chains, preset.num_warmup, preset.num_samples,
                   start=start, whole=budget.max_grad_evals)  # the run's clock  # fmt: skip
    try:
        samples, kernel = _nuts_chain(posterior, chain, seed=seed, preset=preset,
                                      full_mass=full_mass, guard=guard, progress=False)  # fmt: skip
    except _Stopped as stop:
        return "stopped", str(stop), _stats(stop.kernel)
    return "done", samples, _stats(kernel)


def _stats(kernel) -> _ChainStats:
    return _ChainStats(list(kernel.per_draw), kernel.grad_evals,
                       getattr(kernel, "initial_step_size", float("nan")),
                       kernel._max_tree_depth)  # fmt: skip


def _run_nuts_forked(posterior, method, *, seed, preset, full_mass, workers, progress):
    """The chains of :func:`run_nuts` in ``workers`` forked processes, each on one thread:
    the same seeds, so the same draws as one after another. Each chain has its share of
    the gradient budget (a run stopped at its budget may stop at another draw than in
    order), and the wall-time budget applies to each."""
    guard = _Guard(preset.nuts_budget, preset.num_chains, preset.num_warmup, preset.num_samples)
    _FORKED["run"] = (posterior, seed, preset, full_mass, guard.start)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_forked_chain, c): c for c in range(preset.num_chains)}
            done = {}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                if done[futures[future]][0] == "stopped":  # the run is stopped: start no more
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                if progress:
                    print(f"zoo: nuts chain {futures[future] + 1} of {preset.num_chains}"
                          f" finished at {time.perf_counter() - guard.start:.1f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        _FORKED.clear()
    for future, c in futures.items():  # chains that finished while the pool shut down
        if c not in done and future.done() and not future.cancelled():
            done[c] = future.result()
    results = [done.get(c) for c in range(preset.num_chains)]
    for c, found in enumerate(results):
        if found is not None and found[0] == "stopped":
            _, value, stats = found
            guard.chain = c
            guard.grad_evals_before = sum(
                r[2].grad_evals for i, r in enumerate(results) if i != c and r is not None
            )
            run = _stopped_nuts(method.name, value, stats, guard, preset)
            run.diagnostics["chains_in_parallel"] = workers
            return run
    stats: dict[str, list[np.ndarray]] = {"n_steps": [], "diverging": [], "step_size": []}
    for _, _, chain_stats in results:
        kept = chain_stats.per_draw[-preset.num_samples :]
        for i, key in enumerate(("n_steps", "diverging", "step_size")):
            stats[key].append(np.array([s[i] for s in kept]))
    guard.grad_evals_before = sum(r[2].grad_evals for r in results)
    run = _nuts_result(method.name, [r[1] for r in results], stats, guard, preset,
                       results[0][2]._max_tree_depth)  # fmt: skip
    run.diagnostics["chains_in_parallel"] = workers
    return run


def _nuts_result(name, chains, stats, guard: _Guard, preset: Preset, max_depth: int) -> MethodRun:
    wall = time.perf_counter() - guard.start
    draws = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
    sample_stats = {k: np.stack(v) for k, v in stats.items()}
    sample_stats["tree_depth"] = tree_depth(sample_stats["n_steps"])
    return MethodRun(
        method=name,
        draws=draws,
        cost={"wall_s": wall, "grad_evals": guard.grad_evals_before},
        diagnostics={
            "divergences": int(sample_stats["diverging"].sum()),
            "num_chains": preset.num_chains,
            "num_samples": preset.num_samples,
            "num_warmup": preset.num_warmup,
            "max_tree_depth_share": float(np.mean(sample_stats["tree_depth"] >= max_depth)),
        },
        sample_stats=sample_stats,
    )


def tree_depth(n_steps: np.ndarray) -> np.ndarray:
    """The depth of NUTS trees from their leapfrog steps: the number of doublings begun (a
    tree of depth d takes 2^(d-1) to 2^d - 1 steps, fewer than 2^d - 1 when the last
    doubling stopped at a U-turn)."""
    return np.ceil(np.log2(np.asarray(n_steps) + 1)).astype(int)


def _stopped_nuts(
    name: str, reason: str, kernel: _CountingNUTS, guard: _Guard, preset: Preset
) -> MethodRun:
    """A NUTS run that its guard stopped: no draws (what a stopped chain drew is not a
    sample of the posterior), its cost, and where it stopped."""
    last = kernel.per_draw[-1]
    iteration = len(kernel.per_draw)
    return MethodRun(
        method=name,
        draws={},
        cost={
            "wall_s": time.perf_counter() - guard.start,
            "grad_evals": guard.grad_evals_before + kernel.grad_evals,
        },
        diagnostics={
            "stopped_chain": guard.chain + 1,
            "stopped_iteration": iteration,
            "stopped_in": "warm-up" if iteration <= preset.num_warmup else "sampling",
            "step_size": last[2],
            "initial_step_size": kernel.initial_step_size,
            "num_chains": preset.num_chains,
            "num_samples": preset.num_samples,
            "num_warmup": preset.num_warmup,
        },
        error=reason,
        stopped=True,
    )


def _failed(method: MethodSpec, exc: Exception, start: float, point: bool) -> MethodRun:
    return MethodRun(
        method=method.name,
        draws={},
        cost={"wall_s": time.perf_counter() - start},
        error=str(exc),
        point=point,
    )


def _guide_draws(posterior: Posterior, result, spec, *, seed: int, num_draws: int):
    """Draws of the global sites from a fitted guide and their log importance weights
    (None for a guide without a density over them), one chain; nothing where the posterior
    has no global sites. Draws are weighed by the form NUTS runs: the globals' log joint
    with every local latent summed out, log w = log p(x, globals) - log q(globals)."""
    guide = result.guide
    sampler = getattr(guide, "globals", guide)
    if sampler is None or not posterior.sites:
        return {}, None, True
    has_density = getattr(guide, "has_density", spec.has_density)
    point = spec.point or not has_density
    with result.active():
        latent, log_w = draw(
            sampler,
            result.model,
            posterior.data,
            1 if point else num_draws,
            seed=seed,
            max_plate_nesting=posterior.max_plate_nesting,
        )
    return {k: v[None] for k, v in latent.items()}, (log_w[None] if has_density else None), point


def _per_row(result, posterior: Posterior) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """Per-row outputs of a fitted guide that has some (an encoder's latent means)."""
    outputs = getattr(result.guide, "per_row", None)
    if not callable(outputs):
        return {}
    with result.active():
        return dict(outputs(posterior.data))


_FIT_FIELDS = {f.name for f in dataclasses.fields(FitConfig)}


#: Steps between two checkpoints of a fit (a VAE on digits takes 9 a epoch; each file is
#: written once more when its fit ends).
CHECKPOINT_EVERY = 500


def _hash_value(h, name: str, value) -> None:
    """Feed ``name`` and ``value`` (a tensor or array by its dtype, shape, device and bytes;
    anything else by its repr) to the hash ``h``."""
    h.update(name.encode())
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        array = np.ascontiguousarray(to_numpy(value) if torch.is_tensor(value) else value)
        device = str(value.device) if torch.is_tensor(value) else "numpy"
        h.update(f"{array.dtype}{array.shape}{device}".encode())
        h.update(array.tobytes())
    else:
        h.update(repr(value).encode())


def _data_digest(posterior: Posterior, method, seed: int) -> str:
    """A hash of every tensor the method's model is fitted and judged on, and of the first
    state of every network bound in its model (a follow-up's frozen decoder included)."""
    h = hashlib.sha256()
    for part in (posterior.data, posterior.test_data or {}, posterior.validation_data or {}):
        for name in sorted(part):
            _hash_value(h, name, part[name])
    build = method.build_forms or posterior.build_forms
    forms = build(seed) if build is not None else posterior.forms
    for form in (forms.fit, forms.local, forms.sample, forms.likelihood):
        for key, value in sorted(getattr(form, "keywords", {}).items()):
            if isinstance(value, torch.nn.Module):
                for name, tensor in sorted(value.state_dict().items()):
                    _hash_value(h, f"{key}.{name}", tensor)
    return h.hexdigest()


def _checkpoint(posterior, method, *, seed, config, options, folder) -> Checkpoint | None:
    """The checkpoint of a method's SVI fit in ``folder`` (none for L-BFGS fits), keyed by
    everything that makes the fit: model, data, method, options, settings and seed."""
    if folder is None or get_guide(method.family).optimizer == "lbfgs":
        return None
    fit = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    fit.pop("progress")
    what = [posterior.model_name, dict(posterior.description), method.name, method.family,
            dict(options), fit, seed, _data_digest(posterior, method, seed)]  # fmt: skip
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return Checkpoint(Path(folder) / f"{method.name}.pt", every=CHECKPOINT_EVERY, key=key)


def run_guide(posterior, method, *, seed, preset, progress=False, checkpoint_dir=None) -> MethodRun:
    """Fit a guide family by SVI (L-BFGS for a point), then draw from it (one chain of draws
    from q). The options are the method's, over the preset's for its family; those named
    like a field of :class:`~guides.FitConfig` (``beta``, ``objective``, ``batch_size``)
    set the fit, the others the guide. With ``checkpoint_dir``, an SVI fit writes its state
    to ``<checkpoint_dir>/<method>.pt`` and, run again on the same data with the same
    settings, resumes from it (a finished fit is read back, not rerun)."""
    spec = get_guide(method.family)
    if method.build_forms is not None:  # a baseline model of its own, on the same rows
        posterior = dataclasses.replace(posterior, build_forms=method.build_forms)
    options = {**preset.guide_options.get(spec.name, {}), **method.options}
    # Options that are settings of the fit (beta, objective, ...) go to its FitConfig.
    settings = {k: options.pop(k) for k in list(options) if k in _FIT_FIELDS}
    config = dataclasses.replace(preset.fit, progress=progress, **settings)
    checkpoint = _checkpoint(posterior, method, seed=seed, config=config, options=options,
                             folder=checkpoint_dir)  # fmt: skip
    start = time.perf_counter()
    try:
        result = fit_guide(
            spec.name,
            posterior,
            seed=seed,
            config=config,
            options=options,
            label=method.name,
            checkpoint=checkpoint,
        )
        draws, log_w, point = _guide_draws(
            posterior, result, spec, seed=seed + 1, num_draws=preset.num_draws
        )
    except (FitError, FloatingPointError) as exc:
        return _failed(method, exc, start, spec.point)
    diagnostics: dict[str, float | int | str | bool] = {
        "final_elbo": result.final_elbo,
        "converged": bool(result.converged),
    }
    for key, value in result.info.items():
        if value is not None:
            diagnostics[key] = value if isinstance(value, str | bool | int) else float(value)
    return MethodRun(
        method=method.name,
        draws=draws,
        cost={"wall_s": result.wall_s, "grad_evals": result.grad_evals, "steps": result.steps},
        diagnostics=diagnostics,
        elbo=result.elbo,
        log_weights=log_w,
        point=point,
        trace_label="log joint (L-BFGS)" if spec.optimizer == "lbfgs" else "ELBO",
        per_row=_per_row(result, posterior),
        fitted=result,
    )


def run_closed_form(posterior, method, *, seed, preset, progress=False) -> MethodRun:
    """A closed form of the model (exact posterior, ML, EM): ``posterior.closed_forms``
    under the method's ``form`` option (its name by default)."""
    form = str(method.options.get("form", method.name))
    start = time.perf_counter()
    result = posterior.closed_forms[form](seed, preset.num_draws)
    wall = time.perf_counter() - start
    return MethodRun(
        method=method.name,
        draws={k: np.asarray(v)[None] for k, v in result.draws.items()},
        cost={"wall_s": wall},
        diagnostics=dict(result.info),
        moments=dict(result.moments) if result.moments is not None else None,
        point=result.point,
        elbo=None if result.trace is None else np.asarray(result.trace, dtype=float),
        trace_label=f"log-likelihood ({form.upper()})",
        metrics=dict(result.metrics),
    )


class Runner(Protocol):
    """The one signature of every runner (:func:`run_nuts`, :func:`run_guide`,
    :func:`run_closed_form`): the posterior, the method, the seed, the preset, and whether
    to show progress; it returns the method's :class:`MethodRun`, failures included."""

    def __call__(
        self,
        posterior: Posterior,
        method: MethodSpec,
        *,
        seed: int,
        preset: Preset,
        progress: bool = False,
    ) -> MethodRun: ...


#: The runner of each method family that is not a guide family (those run by
#: :func:`run_guide`).
RUNNERS: dict[str, Runner] = {NUTS_METHOD.family: run_nuts, CLOSED_FORM: run_closed_form}


def runner(method: MethodSpec) -> Runner:
    """The runner of a method's family."""
    if method.family in RUNNERS:
        return RUNNERS[method.family]
    get_guide(method.family)  # an unknown family is a clear error
    return run_guide


def available_methods(posterior: Posterior) -> dict[str, MethodSpec]:
    """The methods that apply to this posterior, in report order."""
    return {m.name: m for m in posterior.methods}


def _known_names() -> set[str]:
    """Every method name some model has, so that a known name gets the reason it does not
    apply here."""
    closed = (m for model in MODELS.values() for m in model.closed_forms)
    return {NUTS_METHOD.name, NUTS_PYRO_METHOD.name, *GUIDES, *closed}


def _unavailable(posterior: Posterior, name: str, available) -> ZooInputError:
    spec = get_model(posterior.model_name)
    if name in GUIDES:
        return ZooInputError(
            f"guide '{name}' does not apply to {spec.name}; it takes: {', '.join(spec.guides)}"
        )
    hint = spec.closed_form_hints.get(name, "")
    return ZooInputError(
        f"method '{name}' is not available for this {spec.name} posterior"
        + (f"; {hint}" if hint else f"; choose from: {', '.join(available)}")
    )


def resolve_methods(
    posterior: Posterior, names: Sequence[str | MethodSpec] | None
) -> list[MethodSpec]:
    """The methods to run, checked against the posterior, clearly: names of its methods
    (aliases allowed) or methods of your own (a :class:`~zoo.MethodSpec`, e.g. a second
    encoder of ``amortized``); None: its default methods."""
    available = available_methods(posterior)
    if names is None:
        return [m for m in available.values() if m.default]
    resolved: dict[str, MethodSpec] = {}
    for raw in names:
        if isinstance(raw, MethodSpec):
            runner(raw)
            resolved.setdefault(raw.name, raw)
            continue
        name = METHOD_ALIASES.get(raw, raw)
        if name not in available:
            if name not in _known_names():
                raise ZooInputError(f"unknown method '{raw}'; choose from: {', '.join(available)}")
            raise _unavailable(posterior, name, available)
        resolved.setdefault(name, available[name])
    return list(resolved.values())


def run_method(
    posterior, method, *, seed, preset, progress=False, checkpoint_dir=None
) -> MethodRun:
    """Run one resolved method (``checkpoint_dir``: see :func:`run_guide`; NUTS and closed
    forms write no checkpoints)."""
    run = runner(method)
    extra = {"checkpoint_dir": checkpoint_dir} if run is run_guide else {}
    return run(posterior, method, seed=seed, preset=preset, progress=progress, **extra)
