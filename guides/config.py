"""Settings, result and error of a fit, shared by the SVI loop and L-BFGS."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro.infer import JitTrace_ELBO, JitTraceEnum_ELBO, Trace_ELBO, TraceEnum_ELBO

#: Adam's learning rate of network parameters (``pyro.module``), see :class:`FitConfig`.
NETWORK_LR = 0.003
#: Standard errors (of the difference of two window means) by which a window must lie below
#: the best one to count as a collapse rather than noise, see :class:`FitConfig`.
FAR_BELOW = 4.0


#: What the SVI loop maximizes: the ELBO, or the per-row importance-weighted bound.
OBJECTIVES = ("elbo", "iwae")


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

    What networks need (see :func:`guides.svi.fit`): ``batch_size``, true epochs of seeded
    minibatches of any model's rows; ``patience``, early stopping after that many held-out
    checks (one an epoch) without a better held-out ELBO, each the mean of
    ``held_out_repeats`` estimates; ``beta``, the weight of the per-row latents' KL term
    (1: the ELBO), reached by a linear ramp over the first ``kl_warmup`` steps;
    ``objective="iwae"``, the importance-weighted bound per row with ``num_particles`` draws
    (:class:`guides.iwae.IWAE`) instead of the ELBO, for models whose latents are all per-row.

    ``jit``: an SVI fit whose every step is the same computation (the ELBO, no minibatches,
    no subsampling, no KL warm-up) switches after its first step to Pyro's JIT-compiled ELBO
    where that gives the same loss and gradients for the same random numbers (checked once;
    ``info["elbo_jit"]`` says "on" or why not): the same steps to rounding, up to twice as
    many per second (mean-field on the regression; ``make bench`` prints each guide's).
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
    batch_size: int | None = None
    patience: int | None = None
    held_out_repeats: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    objective: str = "elbo"
    jit: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective '{self.objective}'; choose one of: {', '.join(OBJECTIVES)}"
            )
        if self.objective == "iwae" and (self.beta != 1.0 or self.kl_warmup):
            raise ValueError("beta and kl_warmup weigh the ELBO's KL term; IWAE has none")


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
    held_out_elbo: np.ndarray | None = None
    params: dict | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The fit's own parameters in Pyro's param store while the block runs (the store
        as it was afterwards): a result of :func:`guides.fit_guide` owns its parameters
        (networks included), which no later fit can change. A result of a bare
        :func:`guides.fit` uses the global store (``params`` None)."""
        if self.params is None:
            yield
            return
        with pyro.get_param_store().scope(self.params):
            yield

    def sample(self, num_draws: int, *, seed: int) -> dict[str, np.ndarray]:
        """Draws of the global latent sites from the fitted guide, pushed through the model
        (deterministic sites too). Per-row sites (an enumerated assignment, an amortized
        guide's z) are left out; for an amortized guide the draws are its globals'."""
        from guides.draws import draw

        with self.active():
            draws, _ = draw(
                getattr(self.guide, "globals", None) or self.guide,
                self.model,
                self.data,
                num_draws,
                seed=seed,
                max_plate_nesting=self.max_plate_nesting,
            )
        return draws


def jit_elbo(num_particles: int, max_plate_nesting: int, *, enumerate: bool = False):
    """:func:`make_elbo`'s ELBO compiled by the JIT (JitTrace_ELBO, JitTraceEnum_ELBO)."""
    cls = JitTraceEnum_ELBO if enumerate else JitTrace_ELBO
    return cls(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=max_plate_nesting,
        ignore_jit_warnings=True,
    )


def make_elbo(
    num_particles: int, max_plate_nesting: int, *, enumerate: bool = False, objective="elbo"
):
    """Trace_ELBO, or TraceEnum_ELBO for a model with enumerated discrete sites, or the
    per-row importance-weighted bound (``objective="iwae"``)."""
    if objective == "iwae":
        from guides.iwae import IWAE

        return IWAE(num_particles, max_plate_nesting)
    cls = TraceEnum_ELBO if enumerate else Trace_ELBO
    return cls(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=max_plate_nesting,
    )
