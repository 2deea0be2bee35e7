"""One fitting loop for every guide: SVI with a learning-rate schedule, a convergence rule,
a NaN guard and the ELBO trace kept (L-BFGS for the deterministic objective of a point)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_median, init_to_sample, init_to_value
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.importance import vectorized_importance_weights
from pyro.optim import ClippedAdam
from pyro.params.param_store import _MODULE_NAMESPACE_DIVIDER, normalize_param_name
from tqdm.auto import tqdm

from guides.laplace import LaplaceGuide, flat_threshold
from guides.registry import INITS, get_guide
from zoo import LocalLatents, Posterior, ZooInputError
from zoo.tensors import to_numpy

logger = logging.getLogger(__name__)


#: Adam's learning rate of network parameters (``pyro.module``), see :class:`FitConfig`.
NETWORK_LR = 0.003
#: Standard errors (of the difference of two window means) by which a window must lie below
#: the best one to count as a collapse rather than noise, see :class:`FitConfig`.
FAR_BELOW = 4.0


class FitError(RuntimeError):
    """The fit broke down (the ELBO became NaN or infinite); the message says what to try."""


@dataclass(frozen=True)
class FitConfig:
    """Settings of the SVI loop.

    Learning-rate schedule: reduce on plateau. After ``min_steps``, every ``window`` steps
    the loop compares the mean ELBO of the last two windows; when the gain is below
    ``2 * se + rtol * |ELBO|`` (``se`` the standard error of that difference: the ELBO no
    longer improves by more than its own noise) the learning rate is divided by 10, up to
    ``num_decays`` times; the next plateau ends the fit as converged. Averaging the noise out
    this way puts a stochastic fit much nearer its optimum than a constant rate would.
    ``num_steps`` caps the whole fit; reaching it means not converged. ``max_seconds``, when
    set, caps its wall time the same way (checked before each step): the fit stops once it
    is exceeded, not converged, and ``FitResult.info["budget"]`` says so.

    Network parameters (those registered with ``pyro.module``: an amortized guide's encoder,
    a model's decoder) are stepped with ``network_lr`` instead of ``lr``; the decays apply
    to both. Adam moves every weight by up to its rate each step, so a unit that sums 128
    inputs moves by up to 128 times that: a rate right for the handful of variational
    parameters of the globals (0.03-0.05) blows a perceptron up on its first steps (an
    MLP encoder's ELBO fell from -8.7e3 to -1.2e6 at step 2 and collapsed again later).

    The best parameters are kept: at every window check the mean ELBO of the last window is
    compared with the best window's; a new best takes a copy of every parameter the fit
    steps. When a plateau is counted while the last window lies far below the best (more
    than ``FAR_BELOW`` standard errors of the difference: a collapse, not noise), the best
    parameters are put back (Adam's moments reset) before the learning rate is divided; at
    the end of the fit, a last window far below the best puts them back too, the fit is not
    converged, and ``final_elbo`` is re-estimated there. ``info["rollbacks"]`` and
    ``info["restored"]`` name the steps.

    A guide with a callable attribute ``still_moving`` is asked at every window check
    (every ``window`` steps, plateau or not, so it may keep its own history):
    ``guide.still_moving()`` returns True while some quantity the ELBO's noise hides (a
    dense covariance learning a strong correlation) is still changing, and the fit is not
    called converged meanwhile. Plateaus still divide the learning rate: at the first rate
    the optimizer's own noise moves a dense covariance by 2-5% a window (kidiq with an
    interaction), which a smaller rate quiets, so that only a drift is left to see.

    ``init="map"`` starts a stochastic guide's location at the MAP point (a delta guide
    fitted by L-BFGS first, its cost counted in the fit's); ``"median"`` at the median of 15
    prior draws (Pyro's ``init_to_median``). From the mode a Gaussian guide is a few hundred
    steps from its optimum; from a prior draw it can spend thousands getting there, and a
    plateau test on a noisy ELBO may stop it short of the optimum in a flat direction.

    ``num_starts`` MAP fits (L-BFGS) from different starting points, the best log joint kept,
    precede a delta or laplace fit and the MAP start of the others: posteriors with several
    modes (mixtures) need them. None takes the posterior's own number (``Posterior.
    num_starts``), else 1. The starts come from ``Posterior.init_values(seed + i)`` where the
    model offers such (a mixture: k-means++ rows as means), else the median of prior draws,
    then single prior draws.

    ``subsample_size``: rows per SVI step for a model whose data plate takes that keyword
    (minibatch SVI; the log-likelihood is scaled up by N / size); L-BFGS steps always see
    every row.
    """

    num_steps: int = 10_000
    lr: float = 0.03
    network_lr: float = NETWORK_LR
    num_decays: int = 2
    num_particles: int | None = None
    min_steps: int = 500
    window: int = 200
    rtol: float = 1e-6
    clip_norm: float = 10.0
    init: str = "map"
    num_starts: int | None = None
    subsample_size: int | None = None
    progress: bool = False
    max_seconds: float | None = None


@dataclass
class FitResult:
    """A fitted guide with its ELBO trace and cost.

    ``model`` is the model :meth:`sample` pushes draws through: the one fitted, or for a
    zoo ``Posterior`` the form with every local latent summed out.

    ``elbo[i]`` is the ELBO estimate at step i; for delta and Laplace (L-BFGS), the log joint
    at the i-th iterate, the last entry at the final point. ``final_elbo`` is the fit's
    objective at the parameters returned: for SVI the mean of the last ``window`` estimates
    (at the smallest learning rate), or, where the best parameters were restored at the end,
    the mean of ``window`` fresh estimates there; for L-BFGS the log joint at the point
    returned. ``info`` holds notes on the fit (the time budget, rollbacks to the best
    parameters, see :class:`FitConfig`) and guide-specific ones (e.g. the Hessian status of
    Laplace). ``wall_s`` and ``grad_evals`` include the MAP start, whose seconds are also
    ``start_wall_s``.
    """

    name: str
    guide: object
    model: Callable[..., object]
    data: Mapping[str, torch.Tensor]
    elbo: np.ndarray
    steps: int
    grad_evals: int
    wall_s: float
    converged: bool
    final_elbo: float
    max_plate_nesting: int = 1
    hidden: tuple[str, ...] = ()
    start_wall_s: float = 0.0
    info: dict[str, object] = field(default_factory=dict)

    def sample(self, num_draws: int, *, seed: int) -> dict[str, np.ndarray]:
        """Draws of the global latent sites from the fitted guide, pushed through the model
        (deterministic sites too). Per-row sites (an enumerated assignment, an amortized
        guide's z) are left out; for an amortized guide the draws are its globals'."""
        draws, _ = draw(
            getattr(self.guide, "globals", None) or self.guide,
            self.model,
            self.data,
            num_draws,
            seed=seed,
            max_plate_nesting=self.max_plate_nesting,
        )
        return draws


def make_elbo(num_particles: int, max_plate_nesting: int, *, enumerate: bool = False):
    """Trace_ELBO, or TraceEnum_ELBO for a model with enumerated discrete sites."""
    cls = TraceEnum_ELBO if enumerate else Trace_ELBO
    return cls(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=max_plate_nesting,
    )


def _sample_or_placeholder(site: Mapping[str, object]) -> torch.Tensor:
    """A draw from the site's distribution or, where it has none (ImproperUniform), the
    image of zeros in its support."""
    fn = site["fn"]
    try:
        return fn.sample()
    except NotImplementedError:
        return biject_to(fn.support)(torch.zeros(fn.shape()))


def enumerated_sites(model: Callable[..., object], data: Mapping[str, torch.Tensor]) -> list[str]:
    """Latent sites that ``model`` marks for parallel enumeration (``config_enumerate``).

    Only the structure is read: a site whose prior cannot be sampled (an improper flat prior)
    gets a placeholder value."""
    with torch.no_grad(), poutine.block(), InitMessenger(_sample_or_placeholder):
        trace = poutine.trace(model).get_trace(**data)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and site["infer"].get("enumerate") == "parallel"
    ]


def _plateau(elbo: list[float], window: int, min_steps: int, rtol: float) -> bool:
    """True when the mean ELBO of the last window is no better than that of the one before,
    up to twice the standard error of the difference (plus ``rtol`` of its size)."""
    w = window
    if len(elbo) < max(min_steps, 2 * w):
        return False
    prev, last = np.asarray(elbo[-2 * w : -w]), np.asarray(elbo[-w:])
    gain = last.mean() - prev.mean()
    se = math.sqrt((prev.var() + last.var()) / w)
    return gain < 2.0 * se + rtol * abs(last.mean())


def _window(values: list[float]) -> tuple[float, float]:
    """Mean of a window of ELBO estimates and its standard error: the larger of the one for
    independent estimates and the one from the means of 10 batches, which also sees the
    slow wander of parameters stepped at a high rate (consecutive estimates correlate)."""
    v = np.asarray(values)
    if len(v) < 2:
        return float(v.mean()), math.inf
    se = v.std(ddof=1) / math.sqrt(len(v))
    if len(v) >= 20:
        batches = v[: len(v) // 10 * 10].reshape(10, -1).mean(axis=1)
        se = max(se, batches.std(ddof=1) / math.sqrt(10))
    return float(v.mean()), float(se)


def _far_below(best: tuple[float, float], last: tuple[float, float], rtol: float) -> bool:
    """True when the window mean ``last`` lies below ``best`` by more than ``FAR_BELOW``
    standard errors of the difference (plus ``rtol`` of its size): a collapse, not noise."""
    (best_mean, best_se), (mean, se) = best, last
    return best_mean - mean > FAR_BELOW * math.hypot(best_se, se) + rtol * abs(mean)


class _Best:
    """The best window of a fit: its mean ELBO and standard error, the step it ended at and
    a copy of every parameter the optimizer steps, taken then."""

    def __init__(self) -> None:
        self.stats: tuple[float, float] | None = None
        self.step = 0
        self.values: dict[torch.Tensor, torch.Tensor] = {}

    def update(self, stats: tuple[float, float], step: int, params) -> None:
        if self.stats is None or stats[0] > self.stats[0]:
            self.stats, self.step = stats, step
            self.values = {p: p.detach().clone() for p in params}

    def restore(self) -> None:
        with torch.no_grad():
            for param, value in self.values.items():
                param.copy_(value)


def _network_names() -> set[str]:
    """Names, as a per-parameter optimizer sees them, of the parameters registered with
    ``pyro.module`` (torch modules: encoders, decoders)."""
    return {
        normalize_param_name(name)
        for name in pyro.get_param_store().keys()
        if _MODULE_NAMESPACE_DIVIDER in name
    }


def _optimizer(config: FitConfig) -> ClippedAdam:
    """ClippedAdam with ``config.network_lr`` for network parameters, ``config.lr`` else."""

    def args(name: str) -> dict[str, float]:
        lr = config.network_lr if name in _network_names() else config.lr
        return {"lr": lr, "clip_norm": config.clip_norm}

    return ClippedAdam(args)


def _scale_lr(optim: ClippedAdam, factor: float, *, reset: bool = False) -> None:
    for opt in optim.optim_objs.values():
        for group in opt.param_groups:
            group["lr"] *= factor
        if reset:  # Adam's moments of a collapse would throttle the steps from the best
            opt.state.clear()


def fit(
    model: Callable[..., object],
    guide: object,
    *,
    seed: int,
    config: FitConfig = FitConfig(),
    num_particles: int = 8,
    max_plate_nesting: int = 1,
    name: str = "guide",
    enumerate: bool = False,
    **data: torch.Tensor,
) -> FitResult:
    """Fit ``guide`` to ``model(**data)`` by SVI with vectorized particles: Trace_ELBO, or
    TraceEnum_ELBO when ``enumerate`` (the model sums out its discrete sites marked by
    ``config_enumerate``; the guide must not contain them).

    The schedule, the separate rate of network parameters, the best parameters kept, the
    time budget and the ``guide.still_moving()`` hook are described in :class:`FitConfig`.
    ``info`` says what happened beyond a plain fit: ``budget`` (the time limit was reached),
    ``rollbacks`` (the best parameters put back after a collapse, mid-fit), ``restored``
    (put back at the end: the fit is then not converged).

    Raises :class:`FitError` when the ELBO becomes NaN or infinite, naming the step.
    """
    pyro.set_rng_seed(seed)
    particles = config.num_particles or num_particles
    elbo_fn = make_elbo(particles, max_plate_nesting, enumerate=enumerate)
    optim = _optimizer(config)
    svi = SVI(model, guide, optim, elbo_fn)
    step_data = dict(data)
    if config.subsample_size is not None:
        step_data["subsample_size"] = config.subsample_size
    moving = getattr(guide, "still_moving", None)
    moving = moving if callable(moving) else None
    w = config.window
    trace: list[float] = []
    info: dict[str, object] = {}
    rollbacks: list[str] = []
    best = _Best()
    converged = False
    decays = 0
    last_change = 0
    start = time.perf_counter()
    with tqdm(total=config.num_steps, desc=name, disable=not config.progress, leave=False) as bar:
        for step in range(config.num_steps):
            if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                info["budget"] = (
                    f"time limit of {config.max_seconds:g} s reached after {step} steps"
                )
                break
            loss = svi.step(**step_data)
            if not math.isfinite(loss):
                last = f"{-trace[-1]:.6g}" if trace else "none"
                raise FitError(
                    f"{name}: the ELBO became {-loss} at step {step} (last finite ELBO {last});"
                    " lower the learning rate or check the scale of the data and priors"
                )
            trace.append(-loss)
            if step % 50 == 0:
                bar.set_postfix(elbo=f"{-loss:.4g}")
            bar.update()
            if (step + 1) % w:
                continue
            # A window check: the best window, the guide's own view, then the plateau rule.
            window_stats = _window(trace[-w:])
            best.update(window_stats, step + 1, optim.optim_objs)
            still_moving = moving is not None and bool(moving())
            min_steps = config.min_steps if decays == 0 else 2 * w
            if not _plateau(trace[last_change:], w, min_steps, config.rtol):
                continue
            if still_moving and decays == config.num_decays:
                continue  # the last plateau: not converged while the guide still moves
            collapsed = _far_below(best.stats, window_stats, config.rtol)
            if collapsed:
                best.restore()
                rollbacks.append(
                    f"at step {step + 1} back to step {best.step}"
                    f" (window ELBO {window_stats[0]:.6g} against {best.stats[0]:.6g})"
                )
                logger.info(
                    "%s: plateau below the best (window mean %.6g, best %.6g at step %d);"
                    " best parameters put back, learning rate divided by 10",
                    name,
                    window_stats[0],
                    best.stats[0],
                    best.step,
                )
                if decays == config.num_decays:
                    break  # the end-of-fit check below reports it, not converged
            elif decays == config.num_decays:
                converged = True
                break
            decays += 1
            last_change = step + 1
            _scale_lr(optim, 0.1, reset=collapsed)
    if rollbacks:
        info["rollbacks"] = "; ".join(rollbacks)
    final = math.nan
    if trace:
        tail = trace[max(last_change, len(trace) - w) :] or trace[-w:]
        final = _window(tail)[0]
        if best.stats is not None and _far_below(best.stats, _window(tail), config.rtol):
            best.restore()
            converged = False
            final = _estimate(elbo_fn, model, guide, step_data, w)
            info["restored"] = (
                f"restored best parameters from step {best.step} (window ELBO"
                f" {best.stats[0]:.6g}; the last window's {_window(tail)[0]:.6g},"
                f" {final:.6g} re-estimated there)"
            )
            logger.warning("%s: %s", name, info["restored"])
    wall = time.perf_counter() - start
    if "budget" in info:
        logger.warning("%s: not converged: %s", name, info["budget"])
    elif not converged and "restored" not in info:
        logger.warning("%s: not converged after %d steps (ELBO still improving)", name, len(trace))
    if config.subsample_size is not None:
        info["subsample_size"] = config.subsample_size
    return FitResult(
        name=name,
        guide=guide,
        model=model,
        data=data,
        elbo=np.asarray(trace),
        steps=len(trace),
        grad_evals=len(trace) * particles,
        wall_s=wall,
        converged=converged,
        final_elbo=final,
        max_plate_nesting=max_plate_nesting,
        info=info,
    )


def _estimate(elbo_fn, model, guide, data, repeats: int) -> float:
    """The mean of ``repeats`` ELBO estimates at the guide's current parameters."""
    with torch.no_grad():
        return float(np.mean([-elbo_fn.loss(model, guide, **data) for _ in range(repeats)]))


#: L-BFGS stops as converged when the gradient in scaled coordinates (each unconstrained
#: coordinate divided by its curvature scale diag(H)^-1/2, a conditional posterior sd) has
#: max-norm below this: the point is then within about this share of a posterior sd of the mode.
GRAD_TOL = 1e-6

#: Rounds of L-BFGS, each in coordinates re-scaled by the curvature where the last one ended
#: (a stall, a converged round whose scales have moved, or a line search that overflowed).
MAX_ROUNDS = 6

#: Above this many coordinates the curvature scales (one backward pass each, every round) are
#: not computed; L-BFGS then runs in the raw coordinates and convergence is judged on the raw
#: gradient. PPCA on digits (385 coordinates) spent 3,080 of its 5,442 evaluations on the
#: scales with a bound of 2000; the regressions and mixtures that need scaling have < 100.
MAX_SCALED_DIM = 100

#: Line searches that overflow (a non-finite objective) before the fit gives up; each retry
#: starts from the last finite point with a first step 10 times shorter.
MAX_OVERFLOWS = 3


class _NonFinite(Exception):
    """An evaluation of the objective was not finite (or left a distribution's support)."""

    def __init__(self, what: str, u: torch.Tensor):
        super().__init__(what)
        self.what, self.u = what, u


class _Converged(Exception):
    """The point where an L-BFGS iteration begins already meets the gradient tolerance."""


class _PointObjective:
    """The negative log joint as a function of one flat vector ``u`` of the guide's
    unconstrained parameters (written into them before each evaluation)."""

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]):
        self.loss_fn, self.params = loss_fn, params
        self.sizes = [p.numel() for p in params]

    def get(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def set(self, u: torch.Tensor) -> None:
        with torch.no_grad():
            for p, piece in zip(self.params, torch.split(u, self.sizes)):
                p.copy_(piece.reshape(p.shape))

    def _loss(self) -> torch.Tensor:
        try:
            loss = self.loss_fn()
        except ValueError as exc:  # a trial point left a distribution's support
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "ValueError"
            raise _NonFinite(first, self.get()) from None
        if not torch.isfinite(loss):
            raise _NonFinite(f"the objective became {-loss.item()}", self.get())
        return loss

    def value_and_grad(self, u: torch.Tensor) -> tuple[float, torch.Tensor]:
        self.set(u)
        loss = self._loss()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        flat = torch.cat(
            [
                torch.zeros(n, dtype=u.dtype) if g is None else g.reshape(-1)
                for g, n in zip(grads, self.sizes)
            ]
        )
        if not torch.isfinite(flat).all():
            raise _NonFinite("the gradient of the objective is not finite", u.clone())
        return float(loss.detach()), flat

    def curvature(self, u: torch.Tensor) -> torch.Tensor:
        """Diagonal of the Hessian at ``u`` (one backward pass a coordinate)."""
        self.set(u)
        loss = self._loss()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        pieces = [(p, g) for p, g in zip(self.params, grads)]
        diag = []
        for p, g in pieces:
            flat = g.reshape(-1) if g is not None else None
            for i in range(p.numel()):
                if flat is None or not flat.requires_grad:
                    diag.append(torch.zeros((), dtype=u.dtype))
                    continue
                (row,) = torch.autograd.grad(flat[i], p, retain_graph=True, allow_unused=True)
                diag.append(torch.zeros((), dtype=u.dtype) if row is None else row.reshape(-1)[i])
        return torch.stack(diag).detach()


def _curvature_scale(objective: _PointObjective, u: torch.Tensor) -> torch.Tensor:
    """``diag(H)^-1/2`` where the curvature is positive and finite, 1 elsewhere (ones when
    the vector is too long to afford the diagonal or the curvature is not finite there)."""
    if u.numel() > MAX_SCALED_DIM:
        return torch.ones_like(u)
    try:
        h = objective.curvature(u)
    except _NonFinite:
        return torch.ones_like(u)
    good = torch.isfinite(h) & (h > 0)
    return torch.where(good, h.clamp_min(1e-300).rsqrt(), torch.ones_like(h))


def _bad_sites(model, guide, data) -> str:
    """Sites whose log density is not finite at the guide's current point, as 'name (value)'."""
    try:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(**data)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**data)
        bad = []
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            lp = site["fn"].log_prob(site["value"]).sum()
            if not torch.isfinite(lp):
                value = site["value"]
                shown = f" = {float(value):.4g}" if value.numel() == 1 else ""
                bad.append(f"'{name}'{shown}")
        return ", ".join(bad)
    except Exception:  # noqa: BLE001 - a diagnosis only; the caller reports without it
        return ""


def fit_lbfgs(
    model: Callable[..., object],
    guide: object,
    *,
    seed: int,
    config: FitConfig = FitConfig(),
    max_plate_nesting: int = 1,
    name: str = "guide",
    enumerate: bool = False,
    **data: torch.Tensor,
) -> FitResult:
    """Minimize a deterministic objective (a point guide's negative log joint) by L-BFGS
    with a strong Wolfe line search, in well-scaled coordinates.

    Each unconstrained coordinate is divided by its curvature scale ``diag(H)^-1/2`` at the
    start of a round (a conditional posterior sd), so an intercept in dollars and a log
    sigma near 10 are both of unit scale. A round ends when the gradient in these scaled
    coordinates has max-norm below :data:`GRAD_TOL` (the point is then that share of a
    posterior sd from the mode), on a stall, or when a line-search trial overflows; the
    next round re-scales at the point reached (the last finite one) and starts L-BFGS
    afresh, with a shorter first step after an overflow. Converged when the scaled gradient,
    with the scales of the point returned, is below the tolerance; otherwise not converged,
    with a warning naming the gradient left. Up to :data:`MAX_ROUNDS` rounds.

    The trace holds the objective at the start, at each accepted iterate (one L-BFGS
    iteration each; ``steps`` counts them) and, last, at the point returned; ``grad_evals``
    counts every evaluation with its gradient, line-search trials included, and two per
    coordinate for each curvature diagonal;
    ``num_steps`` caps them. ``config.max_seconds`` (where set) caps the wall time: a fit
    stopped by it is not converged and ``info["budget"]`` says so. ``info["scaled_grad"]``
    is the final scaled gradient's max-norm.

    Raises :class:`FitError` when every retry from the last finite point overflows, naming
    the sites whose log density was not finite.
    """
    pyro.set_rng_seed(seed)
    elbo_fn = make_elbo(1, max_plate_nesting, enumerate=enumerate)
    with poutine.trace(param_only=True) as param_capture:
        elbo_fn.differentiable_loss(model, guide, **data)
    params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
    objective = _PointObjective(lambda: elbo_fn.differentiable_loss(model, guide, **data), params)
    max_seconds = config.max_seconds
    dim = sum(objective.sizes)

    trace: list[float] = []
    evaluations = 0
    converged = False
    budget = None
    info: dict[str, object] = {}
    start = time.perf_counter()
    u = objective.get()
    try:
        f_u, g_u = objective.value_and_grad(u)
    except _NonFinite as exc:
        sites = _bad_sites(model, guide, data)
        raise FitError(
            f"{name}: {exc.what} at evaluation 0 (the start point, last finite none)"
            + (f"; not finite at {sites}" if sites else "")
            + "; check the scale of the data and priors"
        ) from None
    evaluations += 1
    trace.append(-f_u)  # the start: a trace always has it and the final point
    iterations = 0
    overflows, shrink, failure, failed_at, scaled_grad = 0, 1.0, None, 0, math.inf
    rounds = 0
    with tqdm(total=config.num_steps, desc=name, disable=not config.progress, leave=False) as bar:
        while rounds < MAX_ROUNDS:
            rounds += 1
            scale = _curvature_scale(objective, u)
            evaluations += 2 * dim if dim <= MAX_SCALED_DIM else 0
            scaled_grad = float((scale * g_u).abs().max())
            if scaled_grad <= GRAD_TOL:
                converged = True
                break
            if evaluations >= config.num_steps:
                break
            z = torch.zeros_like(u, requires_grad=True)
            opt = torch.optim.LBFGS(
                [z],
                lr=shrink,
                max_iter=1,  # one iteration per step() call, so the trace holds every iterate
                max_eval=26,  # and up to 25 line-search evaluations in it
                history_size=50,
                line_search_fn="strong_wolfe",
                tolerance_grad=0.0,
                tolerance_change=0.0,
            )
            base = u.clone()
            first: list[bool] = [True]

            def closure(base=base, scale=scale, z=z, first=first):
                nonlocal evaluations, u, f_u, g_u
                z.grad = None
                point = base + scale * z.detach()
                f, g = objective.value_and_grad(point)
                evaluations += 1
                z.grad = (scale * g).detach()
                if first[0]:  # where the iteration begins: the accepted point
                    first[0] = False
                    u, f_u, g_u = point, f, g
                    if float(z.grad.abs().max()) <= GRAD_TOL:
                        raise _Converged
                return torch.tensor(f, dtype=u.dtype)

            stalls, iteration = 0, 0
            while evaluations < config.num_steps:
                if max_seconds is not None and time.perf_counter() - start > max_seconds:
                    budget = (
                        f"stopped by the time budget: {time.perf_counter() - start:.1f} s"
                        f" > max_seconds {max_seconds:g}, after {evaluations} evaluations"
                    )
                    break
                before, f_before = evaluations, f_u
                first[0] = True
                try:
                    opt.step(closure)
                except _Converged:
                    break  # the round's scales say converged; checked again at the top
                except _NonFinite as exc:
                    overflows += 1
                    failure, failed_at = exc, evaluations
                    bar.update(evaluations - before)
                    break  # retry from u (the last accepted point) with a shorter step
                bar.update(evaluations - before)
                if rounds > 1 or iteration > 0:  # the first one began at the start
                    trace.append(-f_u)
                iteration += 1
                iterations += 1
                # f_u is the objective where this iteration began (the last one's result).
                if iteration > 1 and f_before - f_u <= 1e-15 * (1.0 + abs(f_u)):
                    stalls += 1
                    if stalls >= 2:
                        break  # no progress in these coordinates: re-scale
                else:
                    stalls = 0
            if failure is None:  # bring u, f_u, g_u to the point L-BFGS accepted last
                point = base + scale * z.detach()
                try:
                    f_point, g_point = objective.value_and_grad(point)
                    evaluations += 1
                    if f_point <= f_u:
                        u, f_u, g_u = point, f_point, g_point
                except _NonFinite:
                    pass
            if budget is not None:
                break
            if failure is not None:
                if overflows > MAX_OVERFLOWS:
                    break
                shrink *= 0.1
                failure = None
                continue
            if evaluations >= config.num_steps:
                scale = _curvature_scale(objective, u)
                scaled_grad = float((scale * g_u).abs().max())
                converged = scaled_grad <= GRAD_TOL
                break
    objective.set(u)
    with torch.no_grad():
        final = -float(elbo_fn.loss(model, guide, **data))  # no gradient: not counted
    trace.append(final)
    wall = time.perf_counter() - start
    if overflows > MAX_OVERFLOWS:
        objective.set(failure.u)
        sites = _bad_sites(model, guide, data)
        objective.set(u)
        raise FitError(
            f"{name}: {failure.what} at evaluation {failed_at} (last finite {-f_u:.6g});"
            f" L-BFGS retried {MAX_OVERFLOWS} times from that point with steps 10x shorter"
            f" each, in re-scaled coordinates, and every line search left the finite region"
            + (f" (not finite at {sites})" if sites else "")
            + "; check the scale of the data and priors"
        )
    info["scaled_grad"] = scaled_grad
    info["rounds"] = rounds
    if overflows:
        info["overflows"] = overflows
    if budget is not None:
        info["budget"] = budget
        converged = False
    if not converged:
        logger.warning(
            "%s: L-BFGS not converged after %d evaluations (gradient %.2g posterior sd from"
            " the mode in scaled coordinates, tolerance %g)%s",
            name,
            evaluations,
            scaled_grad,
            GRAD_TOL,
            f"; {budget}" if budget else "",
        )
    return FitResult(
        name=name,
        guide=guide,
        model=model,
        data=data,
        elbo=np.asarray(trace),
        steps=iterations,
        grad_evals=evaluations,
        wall_s=wall,
        converged=converged,
        final_elbo=final,
        max_plate_nesting=max_plate_nesting,
        info=info,
    )


def fit_guide(
    name: str,
    model: Callable[..., object] | Posterior,
    *,
    seed: int,
    config: FitConfig = FitConfig(),
    max_plate_nesting: int = 1,
    local: LocalLatents | None = None,
    marginal_model: Callable[..., object] | None = None,
    options: Mapping[str, object] | None = None,
    **data: torch.Tensor,
) -> FitResult:
    """Build the guide family ``name`` for ``model`` and fit it to ``model(**data)``.

    Point guides (delta, and the MAP step of laplace) are fitted by :func:`fit_lbfgs`, the
    others by SVI (:func:`fit`). With ``config.init="map"`` (the default) a stochastic guide
    starts at the MAP point of the unconstrained latent vector and is fitted in coordinates
    whitened by the curvature there (:mod:`guides.whiten`); the cost of that start (L-BFGS
    evaluations, and the Hessian at two gradient evaluations a row) is part of the fit's.
    Discrete sites the model enumerates (``config_enumerate``) are hidden from the guide and
    summed out by TraceEnum_ELBO.

    Parameters
    ----------
    name : str
        A guide family (:data:`guides.GUIDES`, or the alias ``map``).
    model : callable or Posterior
        A Pyro model, called as ``model(**data)``; or a zoo ``Posterior``, which brings its
        data, plate nesting and, for ``amortized``, its model with explicit local latents.
    local : LocalLatents, optional
        For ``amortized``: the per-datapoint latent site the encoder covers.
    marginal_model : callable, optional
        For ``amortized``: the same model with the local latents integrated out, on which
        the MAP start of the globals is found (none: the globals start at a prior median).
    options : mapping, optional
        Options of the family's guide class (``amortized``: ``encoder`` and
        ``global_guide``).

    For ``laplace`` the returned guide is the Gaussian at the mode, and ``info`` says
    whether the Hessian was positive definite (and what was done if not).

    Examples
    --------
    >>> result = fit_guide("mean_field", post.model, seed=0, **post.data)  # doctest: +SKIP
    >>> draws = result.sample(1000, seed=1)  # doctest: +SKIP
    >>> result = fit_guide("amortized", post, seed=0)  # doctest: +SKIP
    """
    spec = get_guide(name)
    if config.init not in INITS:
        raise ZooInputError(f"unknown init '{config.init}'; choose one of: {', '.join(INITS)}")
    init_values, num_starts, draws_model = None, 1, None
    if isinstance(model, Posterior):
        post = model
        # Draws of the globals are pushed through the form with every local latent summed out.
        draws_model = post.sampler_model or post.model
        if data:
            raise ValueError("fit_guide on a Posterior takes its data from it; pass none")
        data, max_plate_nesting = dict(post.data), post.max_plate_nesting
        init_values, num_starts = post.init_values, post.num_starts
        model = post.model
        if spec.amortized:
            if post.local_model is None:
                raise ZooInputError(
                    f"guide 'amortized' needs per-datapoint latents; {post.model_name} has none"
                )
            model, local, marginal_model = post.local_model, post.local, post.model
    if spec.amortized and local is None:
        raise ZooInputError("guide 'amortized' needs local=LocalLatents(...) (or a Posterior)")
    num_starts = config.num_starts or num_starts
    hidden = enumerated_sites(model, data)
    guide_model = poutine.block(model, hide=hidden) if hidden else model
    common = {
        "seed": seed,
        "config": config,
        "max_plate_nesting": max_plate_nesting,
        "enumerate": bool(hidden),
    }
    objective = {
        "loss_model": model,
        "elbo": make_elbo(1, max_plate_nesting, enumerate=bool(hidden)),
    }
    if spec.amortized:  # the globals start on the marginal form, where there is one
        if marginal_model is None:
            guide_start = None
        else:
            guide_start = marginal_model
            objective = {"loss_model": marginal_model, "elbo": make_elbo(1, max_plate_nesting)}
            common = {**common, "enumerate": False}
    else:
        guide_start = guide_model
    starts = _starts(init_values, num_starts, seed)
    init_loc_fn, extra = starts[0], {}
    if guide_start is not None and (spec.optimizer == "lbfgs" or spec.whiten):
        if spec.optimizer == "lbfgs" or config.init == "map":
            point_cls = AutoDelta if spec.name == "delta" else LaplaceGuide
            init_loc_fn, extra = _best_start(
                point_cls, guide_start, starts, spec.name, common, objective, data
            )
        if spec.whiten and config.init == "map":
            extra = _merge_cost(
                extra,
                _map_start(guide_start, init_loc_fn, spec.name, common, objective, data),
            )
    build_args = dict(options or {})
    if spec.amortized:
        build_args["local"] = local
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = spec.build(
        guide_model, init_loc_fn=init_loc_fn, **extra.pop("whitening", {}), **build_args
    )
    warmup = None
    if spec.amortized and guide.globals is not None:
        # The encoder first learns alone, the globals held at their start: with an encoder
        # that knows nothing yet, the ELBO pulls the loadings toward zero (the data explained
        # by noise) faster than the encoder can catch up, and the joint fit crawls back.
        guide.freeze_globals = True
        warmup = fit(
            model,
            guide,
            num_particles=spec.num_particles,
            name=f"{spec.name} (encoder warm-up)",
            **{**common, "config": dataclasses.replace(config, num_decays=0)},
            **data,
        )
        guide.freeze_globals = False
    if spec.optimizer == "lbfgs":
        result = fit_lbfgs(model, guide, name=spec.name, **common, **data)
    else:
        result = fit(
            model, guide, num_particles=spec.num_particles, name=spec.name, **common, **data
        )
    if warmup is not None:
        result.elbo = np.concatenate([warmup.elbo, result.elbo])
        result.steps += warmup.steps
        result.grad_evals += warmup.grad_evals
        result.wall_s += warmup.wall_s
        result.info["warmup_steps"] = warmup.steps
        result.info.update(
            {f"warmup_{k}": v for k, v in warmup.info.items() if k != "subsample_size"}
        )
    result.name = spec.name
    result.hidden = tuple(hidden)
    if draws_model is not None:
        result.model = draws_model
    if extra:
        result.grad_evals += extra["grad_evals"]
        result.wall_s += extra["wall_s"]
        result.info["init"] = "; ".join(extra["notes"])
        result.start_wall_s = extra["wall_s"]
    if spec.amortized:
        result.info["encoder"] = guide.encoder_name
        result.info["global_guide"] = guide.global_guide_name
    if spec.name == "laplace":
        tick = time.perf_counter()
        result.guide = guide.laplace_approximation(**data, **objective)
        result.wall_s += time.perf_counter() - tick
        result.grad_evals += 2 * guide.latent_dim
        result.info["hessian"] = guide.hessian_status
        result.info["hessian_min_eig"] = guide.hessian_min_eig
    return result


def _starts(init_values, num_starts: int, seed: int) -> list[Callable]:
    """Per-site init functions of the MAP starts: the model's own starting values for
    ``seed + i`` where it has them, else the median of prior draws, then prior draws."""
    median = init_to_median(num_samples=15)
    if init_values is not None:
        return [
            init_to_value(values=dict(init_values(seed + i)), fallback=median)
            for i in range(num_starts)
        ]
    return [median] + [init_to_sample] * (num_starts - 1)


def _point(guide) -> dict[str, torch.Tensor]:
    """The constrained values of a fitted point guide (AutoDelta or a Laplace guide's MAP)."""
    if isinstance(guide, LaplaceGuide):
        return {
            site["name"]: biject_to(site["fn"].support)(value)
            for site, value in guide._unpack_latent(guide.loc.detach())
        }
    return {k: v.detach() for k, v in guide.median().items()}


def _best_start(point_cls, guide_model, starts, name, common, objective, data):
    """With several starts, MAP fits (L-BFGS) from each; the best log joint is kept and
    returned as the init function of the fit proper. A start whose fit breaks down is
    skipped (all failing raises the first failure)."""
    if len(starts) == 1:
        return starts[0], {}
    found, failures, evals, wall = [], [], 0, 0.0
    for i, start in enumerate(starts):
        pyro.clear_param_store()
        guide = point_cls(guide_model, init_loc_fn=start)
        try:
            fitted = fit_lbfgs(
                objective["loss_model"],
                guide,
                name=f"{name} (start {i + 1})",
                **{**common, "seed": common["seed"] + i},
                **data,
            )
        except FitError as exc:
            failures.append(exc)
            continue
        evals, wall = evals + fitted.grad_evals, wall + fitted.wall_s
        found.append((fitted.final_elbo, i, _point(guide)))
    if not found:
        raise failures[0]
    best, index, values = max(found, key=lambda f: f[0])
    others = sorted((f[0] for f in found), reverse=True)
    note = (
        f"best of {len(starts)} MAP starts (start {index + 1}; log joints"
        f" {', '.join(f'{v:.6g}' for v in others)}"
        + (f"; {len(failures)} failed" if failures else "")
        + ")"
    )
    return init_to_value(values=values, fallback=init_to_median(num_samples=15)), {
        "grad_evals": evals,
        "wall_s": wall,
        "notes": [note],
    }


def _merge_cost(first: dict, second: dict) -> dict:
    if not first:
        return second
    return {
        **second,
        "grad_evals": first["grad_evals"] + second["grad_evals"],
        "wall_s": first["wall_s"] + second["wall_s"],
        "notes": first["notes"] + second["notes"],
    }


def _map_start(guide_model, init_loc_fn, name, common, objective, data):
    """MAP point of the unconstrained latent vector (L-BFGS), where the guide will start,
    and the whitening there: ``scale = diag(H)^-1/2`` where the curvature is positive, 1
    elsewhere; for ``full_rank`` the Cholesky factor of the Laplace covariance (see
    :func:`laplace_factor`), the guide starting at that Gaussian."""
    pyro.clear_param_store()
    pyro.set_rng_seed(common["seed"])
    point = LaplaceGuide(guide_model, init_loc_fn=init_loc_fn)
    fitted = fit_lbfgs(objective["loss_model"], point, name=f"{name} (MAP start)", **common, **data)
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the start needs no status, flat or not
        hessian = point.hessian(**data, **objective)
    curvature = hessian.diagonal()
    flat = int((curvature <= 0).sum())
    scale = torch.where(
        curvature > 0, curvature.clamp_min(1e-300).rsqrt(), torch.ones_like(curvature)
    )
    whitening: dict[str, object] = {"shift": point.loc.detach().clone(), "scale": scale}
    note = f"MAP ({fitted.grad_evals} L-BFGS evaluations), whitened by diag(H)^-1/2"
    if name == "full_rank" and not flat:
        tril, kept = laplace_factor(hessian)
        whitening.update(tril=tril, init_scale=1.0)
        note = (
            f"MAP ({fitted.grad_evals} L-BFGS evaluations), started at the Laplace"
            " approximation and whitened by its Cholesky factor"
        )
        if kept:
            note += f" ({kept} flat direction(s) kept at their coordinates' own curvature)"
    elif flat:
        note += f" ({flat} coordinate(s) without positive curvature kept at scale 1)"
    return {
        "whitening": whitening,
        "grad_evals": fitted.grad_evals + 2 * point.latent_dim,
        "wall_s": fitted.wall_s + time.perf_counter() - tick,
        "notes": [note],
    }


def laplace_factor(hessian: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cholesky factor of the Laplace covariance H^-1 for a Hessian with a positive
    diagonal, and the number of directions it leaves flat.

    In correlation form C = D^-1/2 H D^-1/2 (D = diag(H)), eigenvalues above
    :func:`guides.laplace.flat_threshold` are kept; flat or negative ones are set to 1 (the
    coordinates' own curvature, as a diagonal whitening has it), so the factor stays finite
    where the posterior is flat (PPCA's rotations) or the point is not a mode.
    """
    d = hessian.diagonal().rsqrt()
    corr = d[:, None] * hessian * d[None, :]
    corr = 0.5 * (corr + corr.T)
    evals, evecs = torch.linalg.eigh(corr)
    good = evals > flat_threshold(hessian.dtype)
    fixed = torch.where(good, evals, torch.ones_like(evals))
    cov = d[:, None] * ((evecs / fixed) @ evecs.T) * d[None, :]
    return torch.linalg.cholesky(0.5 * (cov + cov.T)), int((~good).sum())


#: Numbers per vectorized pass of :func:`draw` (draws x data values): bounds its memory
#: and keeps buffers small enough to be reused (see comparisons.convert.BUDGET).
DRAW_BUDGET = 500_000


def draw(
    guide: object,
    model: Callable[..., object],
    data: Mapping[str, torch.Tensor],
    num_draws: int,
    *,
    seed: int,
    max_plate_nesting: int = 1,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draws of every latent and deterministic site of ``model`` under ``guide``, with the
    log importance weights log p(x, z) - log q(z) of each draw.

    Vectorized, in as few passes as keep draws x data values under :data:`DRAW_BUDGET`.
    Global sites (outside every plate, as the zoo's are) are returned with the draw axis
    first; per-row sites inside a plate are left out. ``log_w`` is right only for a model
    whose local latents are summed out (``Posterior.sampler_model``): an enumerated or local
    site is drawn from its prior, not summed.
    """
    size = max(1, sum(int(v.numel()) for v in data.values() if torch.is_tensor(v)))
    chunk = max(1, min(num_draws, DRAW_BUDGET // size))
    pyro.set_rng_seed(seed)
    pieces: dict[str, list[np.ndarray]] = {}
    weights = []
    for lo in range(0, num_draws, chunk):
        num = min(chunk, num_draws - lo)
        with torch.no_grad():
            log_w, model_trace, _ = vectorized_importance_weights(
                model,
                guide,
                **data,
                num_samples=num,
                max_plate_nesting=max_plate_nesting,
                normalized=False,
            )
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or (site["is_observed"] and not _is_deterministic(site)):
                continue
            if any(f.name != "num_particles_vectorized" for f in site["cond_indep_stack"]):
                continue  # a per-row site (in a data plate): not a global latent
            value = site["value"].reshape(
                (num,) + tuple(site["value"].shape[1 + max_plate_nesting :])
            )
            pieces.setdefault(name, []).append(to_numpy(value))
        weights.append(to_numpy(log_w.reshape(num)))
    return {k: np.concatenate(v) for k, v in pieces.items()}, np.concatenate(weights)


def _is_deterministic(site: Mapping[str, object]) -> bool:
    return bool(site.get("infer", {}).get("_deterministic"))
