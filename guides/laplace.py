"""A Laplace approximation that survives a singular or indefinite Hessian."""

from __future__ import annotations

import logging

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoMultivariateNormal

logger = logging.getLogger(__name__)


def relative_floor(dtype: torch.dtype) -> float:
    """Eigenvalues of the Hessian below this fraction of the largest one count as zero:
    sqrt(machine epsilon) of the dtype (1.5e-8 in float64, 3.5e-4 in float32), the relative
    accuracy that a Hessian computed by differentiating a gradient can have."""
    return torch.finfo(dtype).eps ** 0.5


def _hessian(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of a scalar; parts of ``x`` the loss does not curve in give zeros
    (pyro.ops.hessian raises on a loss that is linear or constant in ``x``)."""
    if not loss.requires_grad:
        return torch.zeros(x.numel(), x.numel(), dtype=x.dtype)
    (grad,) = torch.autograd.grad(loss, x, create_graph=True, allow_unused=True)
    if grad is None or not grad.requires_grad:
        return torch.zeros(x.numel(), x.numel(), dtype=x.dtype)
    rows = []
    for i in range(x.numel()):
        (row,) = torch.autograd.grad(grad[i], x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if row is None else row)
    return torch.stack(rows)


#: A direction whose curvature is below this share of its coordinates' own (an eigenvalue of
#: the Hessian in correlation form, D^-1/2 H D^-1/2 with D = diag(H)) counts as flat; in a
#: float32 Hessian the bar is :func:`relative_floor` (3.5e-4), what its precision resolves.
#: Scale free, and set by precision, not by correlation: an eigenvalue of 1e-6 means a
#: posterior sd along that direction 1000 times the coordinates' conditional sds. At a mode
#: found to the scaled-gradient tolerance of ``guides.fit.GRAD_TOL`` the rotations of PPCA's
#: loadings, flat in exact arithmetic, show 1e-9 or less (seen: -7e-10 to 1e-9); identified
#: but strongly correlated posteriors stay far above it (seen: 0.001 for kidiq with an
#: interaction, uncentered; 0.008 centered), where the old bar of 1e-3 called the first flat.
NEARLY_FLAT = 1e-6


def flat_threshold(dtype: torch.dtype) -> float:
    """Correlation-form eigenvalues at or below this count as flat (see :data:`NEARLY_FLAT`)."""
    return max(NEARLY_FLAT, relative_floor(dtype))


def _count_directions(h: torch.Tensor, evals: torch.Tensor, floor: float) -> tuple[int, int]:
    """Directions of negative curvature and flat directions of a symmetric Hessian: in
    correlation form where every coordinate curves upward on its own, else by the raw
    eigenvalues against ``floor``."""
    d = h.diagonal()
    if bool((d > 0).all()):
        tol = flat_threshold(h.dtype)
        scaled = torch.linalg.eigvalsh(h / torch.sqrt(d[:, None] * d[None, :]))
        return int((scaled < -tol).sum()), int((scaled.abs() <= tol).sum())
    return int((evals < -floor).sum()), int((evals.abs() <= floor).sum())


class LaplaceGuide(AutoLaplaceApproximation):
    """MAP in unconstrained space, then a Gaussian with the inverse Hessian as covariance.

    Pyro's :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` inverts the Hessian of the
    negative log joint directly and fails when it is singular or not positive definite (a flat
    direction, a saddle, an optimizer that stopped early). This guide eigendecomposes the
    symmetrized Hessian instead: negative eigenvalues are replaced by their magnitudes (the
    curvature of the saddle-free Newton method) and eigenvalues below :func:`relative_floor`
    times the largest are raised to that floor, so the covariance stays finite. What it found
    is said in :attr:`hessian_status` rather than hidden: directions of negative curvature,
    and flat or nearly flat ones (:data:`NEARLY_FLAT`), whose huge variance no repair makes
    meaningful.
    """

    hessian_status: str = "not computed"
    hessian_min_eig: float = float("nan")

    def hessian(self, *args, loss_model=None, elbo=None, **kwargs) -> torch.Tensor:
        """Symmetrized Hessian of the negative log joint (with the log-Jacobian of the map to
        unconstrained space) at the current point ``loc``; one backward pass per row.

        ``loss_model`` and ``elbo`` give the negative log joint as
        ``elbo.differentiable_loss(loss_model, self)``; by default ``self.model`` and
        ``Trace_ELBO``. A model that sums out discrete sites passes itself unblocked with
        ``TraceEnum_ELBO`` (the guide itself is built on the model with those sites hidden).
        Raises FloatingPointError when it is not finite.
        """
        elbo = elbo or Trace_ELBO()
        loss = elbo.differentiable_loss(loss_model or self.model, self, *args, **kwargs)
        h = _hessian(loss, self.loc).detach()
        h = 0.5 * (h + h.T)
        if not torch.isfinite(h).all():
            raise FloatingPointError(
                "the Hessian at the MAP point is not finite; the fit did not reach a valid mode"
            )
        return h

    def finalize(self, data, objective) -> tuple[AutoMultivariateNormal, dict[str, object], int]:
        """What a fit of this family returns once L-BFGS has found the mode: the Gaussian
        there (:meth:`laplace_approximation`), notes on its Hessian, and the gradient
        evaluations the Hessian cost (two a coordinate)."""
        guide = self.laplace_approximation(**data, **objective)
        info = {"hessian": self.hessian_status, "hessian_min_eig": self.hessian_min_eig}
        return guide, info, 2 * self.latent_dim

    def laplace_approximation(
        self, *args, loss_model=None, elbo=None, **kwargs
    ) -> AutoMultivariateNormal:
        """The Gaussian at the current point (the mode after fitting), with the inverse of
        :meth:`hessian` (its arguments too) as covariance, repaired where it is singular or
        indefinite (see the class docstring)."""
        h = self.hessian(*args, loss_model=loss_model, elbo=elbo, **kwargs)
        with torch.no_grad():
            evals, evecs = torch.linalg.eigh(h)
            largest = float(evals.abs().max())
            relative = relative_floor(h.dtype)
            # With no curvature at all there is no scale to be relative to: unit curvature.
            floor = relative * largest if largest > 0 else 1.0
            self.hessian_min_eig = float(evals.min())
            num_negative, num_flat = _count_directions(h, evals, floor)
            if num_negative:
                self.hessian_status = (
                    f"indefinite: {num_negative} direction(s) of negative curvature, min"
                    f" eigenvalue {float(evals.min()):.3g}; their magnitudes were used (not a"
                    " mode)"
                )
            elif num_flat:
                self.hessian_status = (
                    f"singular: the posterior is flat, or nearly, along {num_flat}"
                    f" direction(s) (curvature below {flat_threshold(h.dtype):g} of the"
                    " coordinates' own);"
                    " huge variance there"
                )
            else:
                self.hessian_status = "positive definite"
            if num_negative or num_flat:
                logger.warning("Laplace: Hessian is %s", self.hessian_status)
            fixed = evals.abs().clamp_min(floor)
            cov = (evecs / fixed) @ evecs.T
            cov = 0.5 * (cov + cov.T)
            scale = cov.diagonal().sqrt()
            corr_tril = torch.linalg.cholesky(cov / scale[:, None] / scale[None, :])
            loc = self.loc.detach()
        # As Pyro's own laplace_approximation: fixed buffers, not trainable parameters.
        gaussian = AutoMultivariateNormal(self.model)
        gaussian._setup_prototype(*args, **kwargs)
        del gaussian.loc
        del gaussian.scale
        del gaussian.scale_tril
        gaussian.register_buffer("loc", loc)
        gaussian.register_buffer("scale", scale)
        gaussian.register_buffer("scale_tril", corr_tril)
        return gaussian
