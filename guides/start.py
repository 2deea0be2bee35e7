"""Where a fit starts: MAP points of the global latents (L-BFGS from one or several starts)
and the whitening of a stochastic guide at the mode (the curvature there)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoDelta, init_to_median, init_to_sample, init_to_value

from guides.config import FitError, make_elbo
from guides.laplace import LaplaceGuide, flat_threshold
from guides.lbfgs import fit_lbfgs


@dataclass(frozen=True)
class StartForm:
    """The form of the model on which MAP starts are found: the guide of the start is built
    on ``guide_model`` (enumerated sites hidden) and fitted to ``loss_model``."""

    guide_model: Callable[..., object]
    loss_model: Callable[..., object]
    enumerate: bool
    max_plate_nesting: int = 1

    def objective(self) -> dict[str, object]:
        """Keywords of :meth:`LaplaceGuide.hessian`: the loss model and its ELBO."""
        elbo = make_elbo(1, self.max_plate_nesting, enumerate=self.enumerate)
        return {"loss_model": self.loss_model, "elbo": elbo}


@dataclass
class Start:
    """A fit's starting point (``init_loc_fn``), the whitening of its guide (keywords of
    the guide class) and what finding them cost."""

    init_loc_fn: Callable
    whitening: dict[str, object] = field(default_factory=dict)
    grad_evals: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add(self, grad_evals: int, wall_s: float, note: str) -> None:
        self.grad_evals += grad_evals
        self.wall_s += wall_s
        self.notes.append(note)


def starts(init_values, num_starts: int, seed: int) -> list[Callable]:
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


def best_start(point_cls, form: StartForm, inits, name, *, seed, config, data) -> Start:
    """With several starts, MAP fits (L-BFGS) from each; the best log joint is kept and
    returned as the start of the fit proper. A start whose fit breaks down is skipped (all
    failing raises the first failure)."""
    if len(inits) == 1:
        return Start(inits[0])
    found, failures, evals, wall = [], [], 0, 0.0
    for i, init in enumerate(inits):
        pyro.clear_param_store()
        guide = point_cls(form.guide_model, init_loc_fn=init)
        try:
            fitted = fit_lbfgs(
                form.loss_model, guide, name=f"{name} (start {i + 1})", seed=seed + i,
                config=config, max_plate_nesting=form.max_plate_nesting,
                enumerate=form.enumerate, **data,
            )  # fmt: skip
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
        f"best of {len(inits)} MAP starts (start {index + 1}; log joints"
        f" {', '.join(f'{v:.6g}' for v in others)}"
        + (f"; {len(failures)} failed" if failures else "")
        + ")"
    )
    start = Start(init_to_value(values=values, fallback=init_to_median(num_samples=15)))
    start.add(evals, wall, note)
    return start


def map_start(start: Start, form: StartForm, name, *, dense, seed, config, data) -> None:
    """MAP point of the unconstrained latent vector (L-BFGS), where the guide will start,
    and the whitening there: ``scale = diag(H)^-1/2`` where the curvature is positive, 1
    elsewhere; with ``dense`` (a full-covariance guide) the Cholesky factor of the Laplace
    covariance (see :func:`laplace_factor`), the guide starting at that Gaussian."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    point = LaplaceGuide(form.guide_model, init_loc_fn=start.init_loc_fn)
    fitted = fit_lbfgs(
        form.loss_model, point, name=f"{name} (MAP start)", seed=seed, config=config,
        max_plate_nesting=form.max_plate_nesting, enumerate=form.enumerate, **data,
    )  # fmt: skip
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the start needs no status, flat or not
        hessian = point.hessian(**data, **form.objective())
    start.whitening, note = _whitening(point, hessian, fitted.grad_evals, dense)
    wall = fitted.wall_s + time.perf_counter() - tick
    start.add(fitted.grad_evals + 2 * point.latent_dim, wall, note)


def _whitening(point, hessian, evals: int, dense: bool) -> tuple[dict[str, object], str]:
    curvature = hessian.diagonal()
    flat = int((curvature <= 0).sum())
    scale = torch.where(
        curvature > 0, curvature.clamp_min(1e-300).rsqrt(), torch.ones_like(curvature)
    )
    whitening: dict[str, object] = {"shift": point.loc.detach().clone(), "scale": scale}
    note = f"MAP ({evals} L-BFGS evaluations), whitened by diag(H)^-1/2"
    if dense and not flat:
        tril, kept = laplace_factor(hessian)
        whitening.update(tril=tril, init_scale=1.0)
        note = (
            f"MAP ({evals} L-BFGS evaluations), started at the Laplace"
            " approximation and whitened by its Cholesky factor"
        )
        if kept:
            note += f" ({kept} flat direction(s) kept at their coordinates' own curvature)"
    elif flat:
        note += f" ({flat} coordinate(s) without positive curvature kept at scale 1)"
    return whitening, note


def find_start(spec, form: StartForm | None, init_values, num_starts, *, seed, config, data):
    """The start of a fit of guide family ``spec``: the best of the MAP starts where the
    family is a point or starts at the MAP (``config.init``), the whitening at that point
    for a whitened family; the model's own start (or the prior median) where the target has
    no global latents (``form`` None)."""
    inits = starts(init_values, num_starts, seed)
    if form is None or not (spec.optimizer == "lbfgs" or spec.whiten):
        return Start(inits[0])
    start = Start(inits[0])
    if spec.optimizer == "lbfgs" or config.init == "map":
        point_cls = AutoDelta if spec.point else LaplaceGuide
        start = best_start(point_cls, form, inits, spec.name, seed=seed, config=config, data=data)
    if spec.whiten and config.init == "map":
        map_start(
            start, form, spec.name, dense=spec.dense_start, seed=seed, config=config, data=data
        )
    return start


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
