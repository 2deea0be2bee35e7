"""Fitting a guide family to a model, in parts: what is fitted (:class:`Target`), where it
starts (:mod:`guides.start`), how it trains (:mod:`guides.svi`, :mod:`guides.lbfgs`) and how
the family finalizes (a guide's own ``finalize``). No part looks at a guide's name: what a
family needs is in its :class:`~guides.registry.GuideSpec` and in its guide class.

Each fit runs in a param store of its own: the returned :class:`FitResult` owns its
parameters (an encoder's or a decoder's weights too), and no later fit can change them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine

from guides.checkpoint import Checkpoint
from guides.config import FAR_BELOW, NETWORK_LR, FitConfig, FitError, FitResult, make_elbo
from guides.draws import DRAW_BUDGET, draw, enumerated_sites
from guides.lbfgs import GRAD_TOL, MAX_OVERFLOWS, MAX_ROUNDS, MAX_SCALED_DIM, fit_lbfgs
from guides.registry import INITS, GuideSpec, get_guide
from guides.start import Start, StartForm, find_start, laplace_factor
from guides.svi import fit
from zoo import LocalLatents, Posterior, ZooInputError

__all__ = [
    "DRAW_BUDGET",
    "FAR_BELOW",
    "GRAD_TOL",
    "MAX_OVERFLOWS",
    "MAX_ROUNDS",
    "MAX_SCALED_DIM",
    "NETWORK_LR",
    "Checkpoint",
    "FitConfig",
    "FitError",
    "FitResult",
    "Target",
    "draw",
    "enumerated_sites",
    "fit",
    "fit_guide",
    "fit_lbfgs",
    "laplace_factor",
    "make_elbo",
]


@dataclass(frozen=True)
class Target:
    """What a guide family is fitted to.

    ``model`` is the form the ELBO is computed on, called as ``model(**data)``; ``hidden``
    its enumerated sites, which the guide leaves to the model. ``start`` is the form on which
    MAP starts of the global latents are found (None: the target has none, as a model whose
    only latents are per-row). ``draws_model`` is the form draws of the globals are pushed
    through. ``locals`` are the per-row latent sites the guide covers (an amortized guide's,
    or the local form's when there are no globals); a KL weight ``beta`` applies to them.
    ``held_out`` is the model's data on held-out rows, for early stopping.
    """

    model: Callable[..., object]
    data: Mapping[str, torch.Tensor]
    hidden: tuple[str, ...] = ()
    start: StartForm | None = None
    draws_model: Callable[..., object] | None = None
    locals: tuple[LocalLatents, ...] = ()
    max_plate_nesting: int = 1
    init_values: Callable[[int], Mapping[str, torch.Tensor]] | None = None
    num_starts: int = 1
    held_out: Mapping[str, torch.Tensor] | None = None

    @property
    def guide_model(self) -> Callable[..., object]:
        """The model as the guide sees it: enumerated sites hidden."""
        return poutine.block(self.model, hide=list(self.hidden)) if self.hidden else self.model

    @classmethod
    def of_model(cls, spec: GuideSpec, model, data, *, max_plate_nesting=1, local=None,
                 marginal_model=None) -> Target:  # fmt: skip
        """A target from a bare Pyro model; for ``amortized``, ``local`` names its local
        latents and ``marginal_model`` (optional) the form where MAP starts are found."""
        if spec.amortized and local is None:
            raise ZooInputError("guide 'amortized' needs local=LocalLatents(...) (or a Posterior)")
        hidden = tuple(enumerated_sites(model, data))
        if spec.amortized:
            start = None
            if marginal_model is not None:
                start = StartForm(marginal_model, marginal_model, False, max_plate_nesting)
            locals_ = (local,) if isinstance(local, LocalLatents) else tuple(local)
            return cls(model, data, hidden, start, None, locals_, max_plate_nesting)
        guide_model = poutine.block(model, hide=list(hidden)) if hidden else model
        start = StartForm(guide_model, model, bool(hidden), max_plate_nesting)
        return cls(model, data, hidden, start, None, (), max_plate_nesting)

    @classmethod
    def of_posterior(cls, spec: GuideSpec, post: Posterior, seed: int) -> Target:
        """A target from a zoo posterior: the local form (fresh networks from ``seed``) for
        a family that covers per-row latents or a model without global latents, else the
        form of the globals, with the posterior's data, starts and held-out rows."""
        forms = post.forms_for(seed)
        local = spec.amortized or forms.fit is None
        if local and forms.local is None:
            raise ZooInputError(
                f"guide '{spec.name}' needs per-datapoint latents; {post.model_name} has none"
            )
        data, mpn = dict(post.data), post.max_plate_nesting
        if local:
            target = cls.of_model(spec, forms.local, data, max_plate_nesting=mpn,
                                  local=forms.locals, marginal_model=forms.fit)  # fmt: skip
            if forms.fit is None:  # no global latents: no MAP start, every latent is local
                target = dataclasses.replace(target, start=None, locals=forms.locals)
        else:
            target = cls.of_model(spec, forms.fit, data, max_plate_nesting=mpn)
        return dataclasses.replace(
            target,
            draws_model=forms.sample,
            init_values=post.init_values,
            num_starts=post.num_starts,
            held_out=post.validation_data if post.validation_data is not None else post.test_data,
        )


def _build(spec: GuideSpec, target: Target, start: Start, seed: int, options) -> object:
    """The family's guide of the target, at its start."""
    build_args = dict(options or {})
    if spec.amortized:
        build_args["local"] = target.locals
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return spec.build(
        target.guide_model, init_loc_fn=start.init_loc_fn, **start.whitening, **build_args
    )


def _train(spec, guide, target: Target, *, seed, config, name, checkpoint=None) -> FitResult:
    """L-BFGS for a family with a deterministic objective, else SVI."""
    common = {
        "seed": seed,
        "config": config,
        "max_plate_nesting": target.max_plate_nesting,
        "enumerate": bool(target.hidden),
        "name": name,
    }
    if spec.optimizer == "lbfgs":
        return fit_lbfgs(target.model, guide, **common, **target.data)
    held_out = target.held_out if config.patience is not None else None
    return fit(
        target.model, guide, num_particles=spec.num_particles, held_out=held_out,
        local_sites=tuple(s.site for s in target.locals), checkpoint=checkpoint,
        **common, **target.data,
    )  # fmt: skip


def _warm_up(spec, guide, target: Target, *, seed, config, label) -> FitResult | None:
    """A guide that asks for it (``needs_warm_up``: an encoder beside global latents)
    first trains alone, the globals held at their start: with an encoder that knows nothing
    yet, the ELBO pulls the loadings toward zero (the data explained by noise) faster than
    the encoder can catch up, and the joint fit crawls back."""
    if not getattr(guide, "needs_warm_up", False):
        return None
    guide.freeze_globals = True
    warm = dataclasses.replace(config, num_decays=0)
    name = f"{label} (encoder warm-up)"
    result = _train(spec, guide, target, seed=seed, config=warm, name=name)
    guide.freeze_globals = False
    return result


def _combine(result: FitResult, warmup: FitResult | None, start: Start) -> None:
    """Count the warm-up's and the start's cost in the fit's."""
    if warmup is not None:
        result.elbo = np.concatenate([warmup.elbo, result.elbo])
        result.steps += warmup.steps
        result.grad_evals += warmup.grad_evals
        result.wall_s += warmup.wall_s
        result.info["warmup_steps"] = warmup.steps
        result.info.update(
            {f"warmup_{k}": v for k, v in warmup.info.items() if k != "subsample_size"}
        )
    if start.notes:
        result.grad_evals += start.grad_evals
        result.wall_s += start.wall_s
        result.info["init"] = "; ".join(start.notes)
        result.start_wall_s = start.wall_s


def _finalize(guide, target: Target, result: FitResult) -> None:
    """The family's last word: a guide with ``finalize`` (Laplace: the Gaussian at the
    mode) replaces itself in the result; a guide with ``describe`` adds notes."""
    finalize = getattr(guide, "finalize", None)
    if callable(finalize):
        tick = time.perf_counter()
        result.guide, info, evals = finalize(target.data, target.start.objective())
        result.wall_s += time.perf_counter() - tick
        result.grad_evals += evals
        result.info.update(info)
    describe = getattr(guide, "describe", None)
    if callable(describe):
        result.info.update(describe())


def _fit_target(spec, target: Target, *, seed, config, options, checkpoint, label) -> FitResult:
    start = find_start(
        spec, target.start, target.init_values, config.num_starts or target.num_starts,
        seed=seed, config=config, data=target.data,
    )  # fmt: skip
    guide = _build(spec, target, start, seed, options)
    warmup = _warm_up(spec, guide, target, seed=seed, config=config, label=label)
    result = _train(spec, guide, target, seed=seed, config=config, name=label,
                    checkpoint=checkpoint)  # fmt: skip
    _combine(result, warmup, start)
    result.name, result.hidden = spec.name, target.hidden
    if target.draws_model is not None:
        result.model = target.draws_model
    _finalize(guide, target, result)
    return result


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
    checkpoint: Checkpoint | None = None,
    label: str | None = None,
    **data: torch.Tensor,
) -> FitResult:
    """Build the guide family ``name`` for ``model`` and fit it to ``model(**data)``.

    Point guides are fitted by :func:`fit_lbfgs`, the others by SVI (:func:`fit`), from the
    MAP point and whitened there with ``config.init="map"`` (:mod:`guides.start`; its cost
    counted in the fit's). Enumerated discrete sites are hidden from the guide and summed
    out. The fit runs in a param store of its own, kept by the result (``active()``).

    Parameters
    ----------
    name : str
        A guide family (:data:`guides.GUIDES`, or the alias ``map``).
    model : callable or Posterior
        A Pyro model, called as ``model(**data)``; or a zoo ``Posterior``, which brings its
        data, plate nesting, starts, held-out rows and, for ``amortized`` (or a model
        without global latents), its local form with fresh networks (:class:`Target`).
    local, marginal_model : LocalLatents and callable, optional
        For ``amortized`` on a bare model: the per-datapoint latent site the encoder covers,
        and the model with it integrated out, where the globals' MAP start is found.
    options : mapping, optional
        Options of the family's guide class (``amortized``: ``encoder`` and
        ``global_guide``).
    checkpoint : Checkpoint, optional
        Where an SVI fit writes its state, and resumes from (see :mod:`guides.checkpoint`).
    label : str, optional
        The name the fit's messages use (a comparison's method name, as ``amortized_iwae``);
        default the family's.

    For ``laplace`` the returned guide is the Gaussian at the mode, and ``info`` says
    whether the Hessian was positive definite (and what was done if not). Examples:
    ``fit_guide("mean_field", post.model, seed=0, **post.data)``, ``fit_guide("amortized",
    post, seed=0)``, then ``result.sample(1000, seed=1)``.
    """
    spec = get_guide(name)
    if config.init not in INITS:
        raise ZooInputError(f"unknown init '{config.init}'; choose one of: {', '.join(INITS)}")
    if isinstance(model, Posterior) and data:
        raise ValueError("fit_guide on a Posterior takes its data from it; pass none")
    params: dict = {"params": {}, "constraints": {}}
    # Everything, even reading the model's structure (which registers a decoder's weights),
    # happens in the fit's own param store.
    with pyro.get_param_store().scope(params):
        if isinstance(model, Posterior):
            target = Target.of_posterior(spec, model, seed)
        else:
            target = Target.of_model(spec, model, data, max_plate_nesting=max_plate_nesting,
                                     local=local, marginal_model=marginal_model)  # fmt: skip
        result = _fit_target(
            spec, target, seed=seed, config=config, options=options, checkpoint=checkpoint,
            label=label or spec.name,
        )  # fmt: skip
    result.params = params
    return result
