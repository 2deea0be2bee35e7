"""A Laplace approximation that survives a singular or indefinite Hessian."""

from __future__ import annotations

import logging

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoMultivariateNormal
from pyro.ops.hessian import hessian

logger = logging.getLogger(__name__)

#: Eigenvalues of the Hessian below this fraction of the largest one count as zero.
RELATIVE_FLOOR = 1e-8


class LaplaceGuide(AutoLaplaceApproximation):
    """MAP in unconstrained space, then a Gaussian with the inverse Hessian as covariance.

    Pyro's :class:`~pyro.infer.autoguide.AutoLaplaceApproximation` inverts the Hessian of the
    negative log joint directly and fails when it is singular or not positive definite (a flat
    direction, a saddle, an optimizer that stopped early). This guide eigendecomposes the
    symmetrized Hessian instead: negative eigenvalues are replaced by their magnitudes (the
    curvature of the saddle-free Newton method) and eigenvalues below ``RELATIVE_FLOOR`` times
    the largest are raised to that floor, so the covariance stays finite and the fallback is
    said in :attr:`hessian_status` rather than hidden.
    """

    hessian_status: str = "not computed"
    hessian_min_eig: float = float("nan")

    def laplace_approximation(self, *args, **kwargs) -> AutoMultivariateNormal:
        guide_trace = poutine.trace(self).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
        h = hessian(loss, self.loc)
        with torch.no_grad():
            h = 0.5 * (h + h.T)
            if not torch.isfinite(h).all():
                raise FloatingPointError(
                    "the Hessian at the MAP point is not finite; the fit did not reach a valid mode"
                )
            evals, evecs = torch.linalg.eigh(h)
            largest = evals.abs().max().clamp_min(torch.finfo(h.dtype).tiny)
            floor = RELATIVE_FLOOR * largest
            num_negative = int((evals < -floor).sum())
            num_flat = int((evals.abs() <= floor).sum())
            self.hessian_min_eig = float(evals.min())
            if num_negative:
                self.hessian_status = (
                    f"indefinite: {num_negative} negative eigenvalue(s), min {float(evals.min()):.3g};"
                    " their magnitudes were used (not a mode)"
                )
            elif num_flat:
                self.hessian_status = (
                    f"singular: {num_flat} eigenvalue(s) below {RELATIVE_FLOOR:g} x the largest;"
                    " raised to that floor (a flat direction: huge variance there)"
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
