"""The SVI loop: a learning-rate schedule that decays on plateaus, the best parameters kept,
a NaN guard, a time budget, and what networks need (epochs of seeded minibatches, a
held-out objective for early stopping, a weight on the local latents' KL, checkpoints).

The loop's state is one dataclass (:class:`LoopState`), so that a checkpoint holds all of it
and a resumed fit continues exactly where the interrupted one was.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from guides.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from guides.config import FAR_BELOW, FitConfig, FitError, FitResult, jit_elbo, make_elbo
from guides.optim import ParamStoreAdam
from guides.weights import Batches, weighted
from zoo.tensors import cuda_devices

logger = logging.getLogger(__name__)


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


def _parameters() -> dict[str, torch.Tensor]:
    """The unconstrained parameters of the param store by name (what the optimizer steps)."""
    return dict(pyro.get_param_store().named_parameters())


@dataclass
class Snapshot:
    """A copy of every parameter, taken at a step, with the objective that earned it."""

    stats: tuple[float, float] | None = None
    step: int = 0
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def take(self, stats: tuple[float, float], step: int) -> None:
        self.stats, self.step = stats, step
        self.values = {k: p.detach().clone() for k, p in _parameters().items()}

    def update(self, stats: tuple[float, float], step: int) -> None:
        """Take a copy when ``stats`` (mean, se) beats the one held."""
        if self.stats is None or stats[0] > self.stats[0]:
            self.take(stats, step)

    def restore(self) -> None:
        params = _parameters()
        with torch.no_grad():
            for name, value in self.values.items():
                params[name].copy_(value)


@dataclass
class LoopState:
    """Everything the SVI loop carries from one step to the next."""

    step: int = 0
    trace: list[float] = field(default_factory=list)
    decays: int = 0
    last_change: int = 0
    converged: bool = False
    done: bool = False
    rollbacks: list[str] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)
    best: Snapshot = field(default_factory=Snapshot)
    held_out: list[float] = field(default_factory=list)
    best_held_out: Snapshot = field(default_factory=Snapshot)
    seconds: float = 0.0


def _optimizer(config: FitConfig) -> ParamStoreAdam:
    """Clipped Adam with ``config.network_lr`` for network parameters, ``config.lr`` else."""
    return ParamStoreAdam(config.lr, config.network_lr, config.clip_norm)


@dataclass
class _Loop:
    """One SVI fit: the objective, the optimizer, the data of each step and the state."""

    model: Callable[..., object]
    guide: object
    config: FitConfig
    name: str
    data: Mapping[str, torch.Tensor]
    elbo: object
    optim: ParamStoreAdam
    batches: Batches | None
    held_out: Mapping[str, torch.Tensor] | None
    weights: dict[str, object]
    state: LoopState = field(default_factory=LoopState)
    jit: object | None = None  # the JIT-compiled ELBO to try after the first step

    def try_jit(self) -> None:
        """Switch to the JIT-compiled ELBO (:func:`jit_elbo`) where it computes, for the
        same random numbers, the loss and gradients the plain one does (checked once, every
        random stream restored after it): the fit's steps are then the same, faster."""
        jit, self.jit = self.jit, None
        data, rows = self.step_data()
        params = [p.unconstrained() for p in pyro.get_param_store().values()]

        def run(elbo):
            with self.forked_rng(), weighted(rows=rows, beta=self.beta(), **self.weights):
                loss = float(elbo.loss_and_grads(self.model, self.guide, **data))
            grads = [None if p.grad is None else p.grad.clone() for p in params]
            for p in params:
                p.grad = None
            return loss, grads

        try:
            with warnings.catch_warnings():
                # Pyro's JIT calls torch.jit.trace, which torch 2.13 marks deprecated; the
                # message is Pyro's to act on, not the user's.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                run(jit)  # the compiling call: it draws its random numbers twice
                ours, theirs = run(jit), run(self.elbo)
        except Exception as exc:  # noqa: BLE001 (a model the JIT cannot trace: plain ELBO)
            self.state.info["elbo_jit"] = f"off: the JIT failed ({type(exc).__name__})"
            return
        # Reordered float64 arithmetic differs by rounding only (seen: 5e-16 relative in the
        # loss); a JIT that drew other random numbers or dropped a term differs by far more.
        same = math.isclose(ours[0], theirs[0], rel_tol=1e-10, abs_tol=1e-10) and all(
            (a is None and b is None)
            or (a is not None and b is not None and torch.allclose(a, b, rtol=1e-8, atol=1e-10))
            for a, b in zip(ours[1], theirs[1])
        )
        if not same:
            self.state.info["elbo_jit"] = "off: the JIT's loss or gradients differ"
            return
        self.elbo = jit
        self.state.info["elbo_jit"] = "on"

    def full_data(self) -> dict[str, object]:
        """The keyword data of a step without minibatches of this loop's own (a model's
        ``subsample_size`` passed on where set)."""
        data = dict(self.data)
        if self.config.subsample_size is not None:
            data["subsample_size"] = self.config.subsample_size
        return data

    def step_data(self) -> tuple[dict[str, object], float]:
        """The keyword data of the next step and the weight of its rows (N / batch size)."""
        if self.batches is None:
            return self.full_data(), 1.0
        return self.batches.next(self.data)

    def forked_rng(self):
        """A block whose random draws leave the fit's random number streams as they were
        (CPU, and the GPU the data are on)."""
        tensors = [v for v in self.data.values() if torch.is_tensor(v)]
        return torch.random.fork_rng(devices=cuda_devices(*tensors))

    def beta(self) -> float:
        """The weight of the local latents' KL at this step (KL warm-up, then ``beta``)."""
        warmup = self.config.kl_warmup
        ramp = 1.0 if not warmup else min(1.0, (self.state.step + 1) / warmup)
        return self.config.beta * ramp

    def take_step(self) -> float:
        if self.jit is not None and self.state.trace:
            self.try_jit()
        data, rows = self.step_data()
        with weighted(rows=rows, beta=self.beta(), **self.weights):
            loss = float(self.elbo.loss_and_grads(self.model, self.guide, **data))
        if not math.isfinite(loss):
            trace = self.state.trace
            last = f"{trace[-1]:.6g}" if trace else "none"
            raise FitError(
                f"{self.name}: the ELBO became {-loss} at step {self.state.step} (last finite"
                f" ELBO {last}); lower the learning rate or check the scale of the data and"
                " priors"
            )
        self.optim.step()
        self.state.trace.append(-loss)
        self.state.step += 1
        return -loss

    def estimate(self, data: Mapping[str, torch.Tensor], repeats: int) -> float:
        """The mean of ``repeats`` ELBO estimates at the current parameters (beta 1)."""
        with torch.no_grad(), weighted(rows=1.0, beta=1.0, **self.weights):
            return float(
                np.mean([-self.elbo.loss(self.model, self.guide, **data) for _ in range(repeats)])
            )


def _check_window(loop: _Loop, moving: Callable[[], bool] | None) -> None:
    """A window check: the best window, the guide's own view, then the plateau rule."""
    s, config, w = loop.state, loop.config, loop.config.window
    window_stats = _window(s.trace[-w:])
    s.best.update(window_stats, s.step)
    still_moving = moving is not None and bool(moving())
    min_steps = config.min_steps if s.decays == 0 else 2 * w
    if not _plateau(s.trace[s.last_change :], w, min_steps, config.rtol):
        return
    if still_moving and s.decays == config.num_decays:
        return  # the last plateau: not converged while the guide still moves
    collapsed = _far_below(s.best.stats, window_stats, config.rtol)
    if collapsed:
        s.best.restore()
        s.rollbacks.append(
            f"at step {s.step} back to step {s.best.step}"
            f" (window ELBO {window_stats[0]:.6g} against {s.best.stats[0]:.6g})"
        )
        logger.info(
            "%s: plateau below the best (window mean %.6g, best %.6g at step %d);"
            " best parameters put back, learning rate divided by 10",
            loop.name,
            window_stats[0],
            s.best.stats[0],
            s.best.step,
        )
        if s.decays == config.num_decays:
            s.done = True  # the end-of-fit check reports it, not converged
            return
    elif s.decays == config.num_decays:
        s.converged = s.done = True
        return
    s.decays += 1
    s.last_change = s.step
    loop.optim.scale_lr(0.1, reset=collapsed)


def _check_held_out(loop: _Loop) -> None:
    """Early stopping: the held-out ELBO per row at the end of an epoch; after
    ``config.patience`` checks without a better one, the best parameters are put back."""
    s, config = loop.state, loop.config
    rows = next(iter(loop.held_out.values())).shape[0]
    with loop.forked_rng():  # checking never moves the training's random draws
        value = loop.estimate(loop.held_out, config.held_out_repeats) / rows
    s.held_out.append(value)
    s.best_held_out.update((value, 0.0), s.step)
    since_best = len(s.held_out) - 1 - int(np.argmax(s.held_out))
    if config.patience is None or since_best < config.patience:
        return
    s.best_held_out.restore()
    s.info["early_stopped"] = (
        f"held-out ELBO {s.best_held_out.stats[0]:.6g} per row at step {s.best_held_out.step}"
        f" not bettered in {config.patience} checks; its parameters put back"
    )
    s.converged = s.done = True


def _keep_best_held_out(loop: _Loop) -> bool:
    """At the end of a fit with early stopping that ended without it (out of steps or time,
    or stopped by the plateau rule): put back the parameters of the best held-out check
    where the last was worse (what early stopping would have kept); True where it did."""
    s, config = loop.state, loop.config
    if not s.held_out or config.patience is None or "early_stopped" in s.info:
        return False
    best = s.best_held_out
    if best.stats is None or not best.stats[0] > s.held_out[-1]:
        return False
    best.restore()
    s.info["best_held_out_kept"] = (
        f"held-out ELBO {best.stats[0]:.6g} per row at step {best.step} (the last check's"
        f" {s.held_out[-1]:.6g}); its parameters put back"
    )
    return True


def _finish(loop: _Loop, start: float) -> FitResult:
    """The final objective (restoring the best parameters where the end fell far below
    them) and the result."""
    s, config, w = loop.state, loop.config, loop.config.window
    if s.rollbacks:
        s.info["rollbacks"] = "; ".join(s.rollbacks)
    final = math.nan
    if _keep_best_held_out(loop):
        final = loop.estimate(loop.data, config.held_out_repeats)
    elif s.trace and "early_stopped" not in s.info:
        tail = s.trace[max(s.last_change, len(s.trace) - w) :] or s.trace[-w:]
        final = _window(tail)[0]
        if s.best.stats is not None and _far_below(s.best.stats, _window(tail), config.rtol):
            s.best.restore()
            s.converged = False
            final = loop.estimate(loop.full_data(), w)
            s.info["restored"] = (
                f"restored best parameters from step {s.best.step} (window ELBO"
                f" {s.best.stats[0]:.6g}; the last window's {_window(tail)[0]:.6g},"
                f" {final:.6g} re-estimated there)"
            )
            logger.warning("%s: %s", loop.name, s.info["restored"])
    elif s.trace:
        final = loop.estimate(loop.data, w)
    _warn_not_converged(loop)
    if config.subsample_size is not None:
        s.info["subsample_size"] = config.subsample_size
    if s.held_out:
        s.info["held_out_elbo"] = s.best_held_out.stats[0]
    if config.objective != "elbo":
        s.info["objective"] = config.objective
    return FitResult(
        name=loop.name,
        guide=loop.guide,
        model=loop.model,
        data=loop.data,
        elbo=np.asarray(s.trace),
        steps=len(s.trace),
        grad_evals=len(s.trace) * loop.elbo.num_particles,
        wall_s=s.seconds + time.perf_counter() - start,
        converged=s.converged,
        final_elbo=final,
        max_plate_nesting=loop.elbo.max_plate_nesting,
        info=s.info,
        held_out_elbo=np.asarray(s.held_out),
    )


def _warn_not_converged(loop: _Loop) -> None:
    s = loop.state
    if "budget" in s.info:
        logger.warning("%s: not converged: %s", loop.name, s.info["budget"])
    elif not s.converged and "restored" not in s.info:
        logger.warning(
            "%s: not converged after %d steps (ELBO still improving)", loop.name, len(s.trace)
        )


def _prime(loop: _Loop) -> None:
    """Run the objective once on every row before the first minibatch, so that a network
    that sets itself up from its first input (an encoder's standardization of the data) sees
    all the rows, not one batch; the random number streams are left as they were."""
    with loop.forked_rng(), torch.no_grad():
        loop.elbo.loss(loop.model, loop.guide, **loop.data)


def _run(loop: _Loop, checkpoint: Checkpoint | None, start: float) -> None:
    """Steps until converged, stopped early, out of steps or out of time."""
    config, s = loop.config, loop.state
    moving = getattr(loop.guide, "still_moving", None)
    moving = moving if callable(moving) else None
    epoch = loop.batches.per_epoch if loop.batches is not None else config.window
    bar = tqdm(total=config.num_steps, initial=s.step, desc=loop.name, disable=not config.progress)
    with bar:
        while s.step < config.num_steps and not s.done:
            elapsed = s.seconds + time.perf_counter() - start
            if config.max_seconds is not None and elapsed > config.max_seconds:
                s.info["budget"] = (
                    f"time limit of {config.max_seconds:g} s reached after {s.step} steps"
                )
                break
            value = loop.take_step()
            if s.step % 50 == 1:  # the step's ELBO, and per row the last held-out one
                shown = {"elbo": f"{value:.4g}"}
                if s.held_out:
                    shown["held_out_per_row"] = f"{s.held_out[-1]:.4g}"
                bar.set_postfix(shown)
            bar.update()
            if s.step % config.window == 0:
                _check_window(loop, moving)
            if loop.held_out is not None and s.step % epoch == 0 and not s.done:
                _check_held_out(loop)
            if checkpoint is not None and s.step % checkpoint.every == 0:
                save_checkpoint(checkpoint, loop, s.seconds + time.perf_counter() - start)


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
    held_out: Mapping[str, torch.Tensor] | None = None,
    local_sites: tuple[str, ...] = (),
    plate: str = "data",
    checkpoint: Checkpoint | None = None,
    **data: torch.Tensor,
) -> FitResult:
    """Fit ``guide`` to ``model(**data)`` by SVI with vectorized particles: Trace_ELBO, or
    TraceEnum_ELBO when ``enumerate`` (the model sums out its discrete sites marked by
    ``config_enumerate``; the guide must not contain them).

    The schedule, the separate rate of network parameters, the best parameters kept, the
    time budget and the ``guide.still_moving()`` hook are described in :class:`FitConfig`.
    ``info`` says what happened beyond a plain fit: ``budget`` (the time limit was reached),
    ``rollbacks`` (the best parameters put back after a collapse, mid-fit), ``restored``
    (put back at the end: the fit is then not converged), ``early_stopped``,
    ``best_held_out_kept`` (a fit with ``patience`` that ended another way, out of steps or
    time or at a plateau: the parameters of its best held-out check put back where the last
    check was worse, as early stopping would have kept).

    What networks need: ``config.batch_size``, epochs of a seeded shuffle of the rows of the
    plate named ``plate``, whose sites are weighted by N / batch size; ``held_out``, the
    data of held-out rows, whose ELBO per row is estimated every epoch (every ``window``
    steps without batches; ``result.held_out_elbo``) and, with ``config.patience``, stops
    the fit; ``local_sites``, the per-row sites whose KL ``config.beta`` weighs;
    ``checkpoint``, the loop's state written every ``checkpoint.every`` steps and resumed
    from where the file exists (:mod:`guides.checkpoint`).

    Raises :class:`FitError` when the ELBO becomes NaN or infinite, naming the step.
    """
    pyro.set_rng_seed(seed)
    particles = config.num_particles or num_particles
    elbo = make_elbo(particles, max_plate_nesting, enumerate=enumerate, objective=config.objective)
    optim = _optimizer(config)
    batches = None
    if config.batch_size is not None:
        batches = Batches.of(data, config.batch_size, seed=seed)
    loop = _Loop(
        model, guide, config, name, data, elbo, optim, batches, held_out,
        {"plate": plate, "local_sites": tuple(local_sites)},
    )  # fmt: skip
    # A fixed computation each step (no minibatch, subsample or changing KL weight): the
    # JIT may compile it.
    fixed = batches is None and config.subsample_size is None and not config.kl_warmup
    if config.jit and config.objective == "elbo" and fixed:
        loop.jit = jit_elbo(particles, max_plate_nesting, enumerate=enumerate)
    for p in _parameters().values():  # a gradient left by earlier work is no step of this fit
        p.grad = None
    if batches is not None:
        _prime(loop)
    if checkpoint is not None and checkpoint.path.exists():
        load_checkpoint(checkpoint, loop)
    start = time.perf_counter()
    _run(loop, checkpoint, start)
    if checkpoint is not None:  # the end too: a rerun finds the fit done
        save_checkpoint(checkpoint, loop, loop.state.seconds + time.perf_counter() - start)
    return _finish(loop, start)
