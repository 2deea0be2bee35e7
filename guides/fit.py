"""One fitting loop for every guide: SVI with a learning-rate schedule, a convergence rule,
a NaN guard and the ELBO trace kept (L-BFGS for the deterministic objective of a point)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.importance import vectorized_importance_weights
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from guides.registry import get_guide

logger = logging.getLogger(__name__)


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
    ``num_steps`` caps the whole fit; reaching it means not converged.
    """

    num_steps: int = 10_000
    lr: float = 0.03
    num_decays: int = 2
    num_particles: int | None = None
    min_steps: int = 500
    window: int = 200
    rtol: float = 1e-6
    clip_norm: float = 10.0
    progress: bool = False


@dataclass
class FitResult:
    """A fitted guide with its ELBO trace and cost.

    ``elbo[i]`` is the ELBO estimate at step i (for delta and Laplace, the log joint at the
    point being optimized). ``info`` holds guide-specific notes (e.g. the Hessian status of
    Laplace).
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
    max_plate_nesting: int = 1
    info: dict[str, object] = field(default_factory=dict)

    def sample(self, num_draws: int, *, seed: int) -> dict[str, np.ndarray]:
        """Draws from the fitted guide, pushed through the model (deterministic sites too)."""
        draws, _ = draw(
            self.guide,
            self.model,
            self.data,
            num_draws,
            seed=seed,
            max_plate_nesting=self.max_plate_nesting,
        )
        return draws


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


def fit(
    model: Callable[..., object],
    guide: object,
    *,
    seed: int,
    config: FitConfig = FitConfig(),
    num_particles: int = 8,
    max_plate_nesting: int = 1,
    name: str = "guide",
    **data: torch.Tensor,
) -> FitResult:
    """Fit ``guide`` to ``model(**data)`` by SVI (Trace_ELBO, vectorized particles).

    Raises :class:`FitError` when the ELBO becomes NaN or infinite, naming the step.
    """
    pyro.set_rng_seed(seed)
    particles = config.num_particles or num_particles
    elbo_fn = Trace_ELBO(
        num_particles=particles,
        vectorize_particles=particles > 1,
        max_plate_nesting=max_plate_nesting,
    )
    optim = ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm})
    svi = SVI(model, guide, optim, elbo_fn)
    trace: list[float] = []
    converged = False
    decays = 0
    last_change = 0
    start = time.perf_counter()
    with tqdm(total=config.num_steps, desc=name, disable=not config.progress, leave=False) as bar:
        for step in range(config.num_steps):
            loss = svi.step(**data)
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
            min_steps = config.min_steps if decays == 0 else 2 * config.window
            stage = trace[last_change:]
            if (step + 1) % config.window == 0 and _plateau(
                stage, config.window, min_steps, config.rtol
            ):
                if decays == config.num_decays:
                    converged = True
                    break
                decays += 1
                last_change = step + 1
                for opt in optim.optim_objs.values():
                    for group in opt.param_groups:
                        group["lr"] *= 0.1
    wall = time.perf_counter() - start
    if not converged:
        logger.warning("%s: not converged after %d steps (ELBO still improving)", name, len(trace))
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
        max_plate_nesting=max_plate_nesting,
    )


def fit_lbfgs(
    model: Callable[..., object],
    guide: object,
    *,
    seed: int,
    config: FitConfig = FitConfig(),
    max_plate_nesting: int = 1,
    name: str = "guide",
    **data: torch.Tensor,
) -> FitResult:
    """Minimize a deterministic objective (a point guide's negative log joint) by L-BFGS
    with a strong Wolfe line search; each objective evaluation (with its gradient) is one
    entry of the trace. Converged when an outer L-BFGS call changes the objective by less
    than ``1e-10 * (1 + |objective|)``."""
    pyro.set_rng_seed(seed)
    elbo_fn = Trace_ELBO(max_plate_nesting=max_plate_nesting)
    with poutine.trace(param_only=True) as param_capture:
        elbo_fn.differentiable_loss(model, guide, **data)
    params = [site["value"].unconstrained() for site in param_capture.trace.nodes.values()]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=50,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
    )
    trace: list[float] = []

    def closure():
        opt.zero_grad()
        loss = elbo_fn.differentiable_loss(model, guide, **data)
        if not torch.isfinite(loss):
            last = f"{trace[-1]:.6g}" if trace else "none"
            raise FitError(
                f"{name}: the objective became {-loss.item()} at evaluation {len(trace)} (last"
                f" finite {last}); check the scale of the data and priors"
            )
        loss.backward()
        trace.append(-loss.item())
        return loss

    converged = False
    start = time.perf_counter()
    previous = math.inf
    while len(trace) < config.num_steps:
        current = float(opt.step(closure).detach())
        if abs(previous - current) <= 1e-10 * (1.0 + abs(current)):
            converged = True
            break
        previous = current
    wall = time.perf_counter() - start
    if not converged:
        logger.warning("%s: L-BFGS not converged after %d evaluations", name, len(trace))
    return FitResult(
        name=name,
        guide=guide,
        model=model,
        data=data,
        elbo=np.asarray(trace),
        steps=len(trace),
        grad_evals=len(trace),
        wall_s=wall,
        converged=converged,
        max_plate_nesting=max_plate_nesting,
    )


def fit_guide(
    name: str,
    model: Callable[..., object],
    *,
    seed: int,
    config: FitConfig = FitConfig(),
    max_plate_nesting: int = 1,
    **data: torch.Tensor,
) -> FitResult:
    """Build the guide family ``name`` for ``model`` and fit it to ``model(**data)``.

    Point guides (delta, and the MAP step of laplace) are fitted by :func:`fit_lbfgs`,
    the others by SVI (:func:`fit`).

    For ``laplace`` the returned guide is the Gaussian at the mode, and ``info`` says
    whether the Hessian was positive definite (and what was done if not).

    Examples
    --------
    >>> result = fit_guide("mean_field", post.model, seed=0, **post.data)  # doctest: +SKIP
    >>> draws = result.sample(1000, seed=1)  # doctest: +SKIP
    """
    spec = get_guide(name)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = spec.build(model)
    if spec.optimizer == "lbfgs":
        result = fit_lbfgs(
            model,
            guide,
            seed=seed,
            config=config,
            max_plate_nesting=max_plate_nesting,
            name=spec.name,
            **data,
        )
    else:
        result = fit(
            model,
            guide,
            seed=seed,
            config=config,
            num_particles=spec.num_particles,
            max_plate_nesting=max_plate_nesting,
            name=spec.name,
            **data,
        )
    result.name = spec.name
    if spec.name == "laplace":
        start = time.perf_counter()
        result.guide = guide.laplace_approximation(**data)
        result.wall_s += time.perf_counter() - start
        result.info["hessian"] = guide.hessian_status
        result.info["hessian_min_eig"] = guide.hessian_min_eig
    return result


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
    log importance weights log p(x, z) - log q(z) of each draw (vectorized, one pass).

    Sites are returned with the draw axis first and the plate axes squeezed, which assumes
    the global sites sit outside every plate (true of the zoo's global latents).
    """
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        log_w, model_trace, _ = vectorized_importance_weights(
            model,
            guide,
            **data,
            num_samples=num_draws,
            max_plate_nesting=max_plate_nesting,
            normalized=False,
        )
    draws = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or (site["is_observed"] and not _is_deterministic(site)):
            continue
        value = site["value"]
        draws[name] = (
            value.reshape((num_draws,) + tuple(value.shape[1 + max_plate_nesting :]))
            .detach()
            .numpy()
        )
    return draws, log_w.reshape(num_draws).detach().numpy()


def _is_deterministic(site: Mapping[str, object]) -> bool:
    return bool(site.get("infer", {}).get("_deterministic"))
