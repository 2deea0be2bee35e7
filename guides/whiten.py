"""Gaussian and flow guides fitted in coordinates whitened by the curvature at the mode.

Adam moves each parameter by about its learning rate per step, whatever the scale of the
posterior: a step of 0.03 is a thousandth of a posterior sd for one coefficient and thirty
for another (the posteriordb ``sblri`` coefficients have posterior sd 0.001). These guides
keep their parameters in coordinates ``w = (u - shift) / scale`` of the unconstrained latent
vector ``u``, with ``shift`` the MAP point and ``scale = diag(H)^-1/2`` from the Hessian H of
the negative log joint there (the mean-field optimum of a Gaussian), so a learning rate is a
share of a posterior sd in every coordinate. The family is unchanged (a diagonal affine map
keeps a diagonal, low-rank or full covariance, and a flow, what it was); only the
optimizer's coordinates differ. Everything outside the guide sees u.
"""

from __future__ import annotations

import torch
from pyro import distributions as dist
from pyro.distributions.transforms import AffineTransform
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
)


class Whitened:
    """Mixin for :class:`~pyro.infer.autoguide.AutoContinuous` guides with ``loc`` and
    ``_loc_scale``: parameters in whitened coordinates, distributions in unconstrained ones.

    ``shift`` and ``scale`` are vectors of the latent dimension; the guide starts with its
    location at ``shift`` (None: at the point ``init_loc_fn`` gives) and ``scale`` None means
    ones (no whitening). Only :class:`WhitenedMultivariateNormal` also takes ``tril``, a
    lower-triangular matrix: then ``u = shift + tril @ w`` (a dense whitening, e.g. the
    Cholesky factor of the Laplace covariance) and ``scale`` is unused.
    """

    def __init__(
        self,
        model,
        *,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        **kwargs,
    ):
        self._whitening = (shift, scale)
        super().__init__(model, **kwargs)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        shift, scale = self._whitening
        init = self.loc.detach()
        shift = init.clone() if shift is None else shift.detach().to(init)
        scale = torch.ones_like(init) if scale is None else scale.detach().to(init)
        if shift.shape != init.shape or scale.shape != init.shape:
            raise ValueError(
                f"whitening vectors of shape {tuple(shift.shape)} and {tuple(scale.shape)} do"
                f" not fit a latent vector of size {init.numel()}"
            )
        self.register_buffer("white_shift", shift)
        self.register_buffer("white_scale", scale)
        with torch.no_grad():
            self.loc.zero_()  # at the shift

    def _to_u(self, loc: torch.Tensor) -> torch.Tensor:
        return self.white_shift + self.white_scale * loc

    def _loc_scale(self, *args, **kwargs):
        loc, scale = super()._loc_scale(*args, **kwargs)
        return self._to_u(loc), self.white_scale * scale


class MovingCovariance:
    """Mixin of a Gaussian guide that can tell the fitting loop whether its covariance is
    still changing (the ``still_moving`` hook of ``guides.fit.fit``): a plateau of a noisy
    ELBO comes long before a dense covariance has learned a strong correlation (kidiq with
    an interaction: sd ratio 0.84 when the ELBO had flattened).

    The guide adds up its covariance in whitened coordinates (:meth:`_whitened_cov`) at each
    step; :meth:`still_moving` compares the average since its last call with the previous
    one.
    """

    #: Relative change (Frobenius norm) of the window-averaged covariance, in whitened
    #: coordinates, above which it counts as still moving. Seen on kidiq with an interaction
    #: (full_rank, windows of 200 steps): 0.011-0.10 while the sd ratios moved (0.91 to
    #: 0.98), 0.0001-0.0024 once they had settled at a learning rate (0.015 just after a
    #: decay).
    MOVING_RTOL = 0.01

    def _record_covariance(self) -> None:
        cov = self._whitened_cov().detach()
        total = getattr(self, "_moving_sum", None)
        self._moving_sum = cov if total is None else total + cov
        squares = getattr(self, "_moving_squares", None)
        self._moving_squares = cov**2 if squares is None else squares + cov**2
        self._moving_count = getattr(self, "_moving_count", 0) + 1

    _HISTORY = ("_moving_sum", "_moving_squares", "_moving_count", "_moving_last")

    def history_state(self) -> dict[str, object]:
        """What :meth:`still_moving` remembers, for a checkpoint of the fit."""
        return {k: getattr(self, k, None) for k in self._HISTORY}

    def load_history_state(self, state: dict[str, object]) -> None:
        for k in self._HISTORY:
            setattr(self, k, state.get(k))
        if self._moving_count is None:
            self._moving_count = 0

    def still_moving(self) -> bool:
        """True when the covariance, averaged over the steps since the last call, differs
        from the previous call's average by more than :attr:`MOVING_RTOL` of its size and by
        more than its own spread over those steps (Frobenius norms): a drift, not the
        optimizer's noise. True at the first call (nothing to compare yet: one more window),
        False when no step was taken since the last one."""
        count = getattr(self, "_moving_count", 0)
        if count == 0:
            return False
        mean = self._moving_sum / count
        spread = (self._moving_squares / count - mean**2).clamp_min(0.0).sum().sqrt()
        self._moving_sum, self._moving_squares, self._moving_count = None, None, 0
        last = getattr(self, "_moving_last", None)
        self._moving_last = mean
        if last is None:
            return True
        drift = torch.linalg.matrix_norm(mean - last)
        change = float(drift / torch.linalg.matrix_norm(last))
        self.last_covariance_change = change
        return change > self.MOVING_RTOL and bool(drift > spread)


class WhitenedDiagonalNormal(Whitened, AutoDiagonalNormal):
    """Mean-field: independent normals over the unconstrained latent vector."""

    def get_posterior(self, *args, **kwargs):
        return dist.Normal(self._to_u(self.loc), self.white_scale * self.scale).to_event(1)

    def get_transform(self, *args, **kwargs):
        return AffineTransform(self._to_u(self.loc), self.white_scale * self.scale)


class WhitenedLowRankNormal(MovingCovariance, Whitened, AutoLowRankMultivariateNormal):
    """Normal with covariance diag(d) + F F^T of rank ``rank`` (default about sqrt(dim))."""

    def _whitened_cov(self) -> torch.Tensor:
        factor = self.cov_factor * self.scale.unsqueeze(-1)
        return factor @ factor.T + torch.diag(self.scale**2)

    def get_posterior(self, *args, **kwargs):
        self._record_covariance()
        scale = self.white_scale * self.scale
        return dist.LowRankMultivariateNormal(
            self._to_u(self.loc), self.cov_factor * scale.unsqueeze(-1), scale * scale
        )


class WhitenedMultivariateNormal(MovingCovariance, Whitened, AutoMultivariateNormal):
    """Normal with a dense covariance (its Cholesky factor is the parameter).

    With ``tril`` (the Cholesky factor of the Laplace covariance at the mode, see
    ``guides.fit._map_start``) the whitening is dense: the guide starts, with ``init_scale=1``,
    at the Laplace approximation itself and learns only how the posterior differs from it.
    """

    def __init__(self, model, *, tril: torch.Tensor | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self._tril = tril

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        tril = self._tril
        if tril is not None:
            tril = tril.detach().to(self.loc)
            if tril.shape != (self.latent_dim, self.latent_dim):
                raise ValueError(
                    f"whitening factor of shape {tuple(tril.shape)} does not fit a latent"
                    f" vector of size {self.latent_dim}"
                )
        self.register_buffer("white_tril", tril)

    def _to_u(self, loc: torch.Tensor) -> torch.Tensor:
        if self.white_tril is None:
            return super()._to_u(loc)
        return self.white_shift + (self.white_tril * loc.unsqueeze(-2)).sum(-1)

    def _factor(self) -> torch.Tensor:
        """The Cholesky factor of the covariance in whitened coordinates."""
        return self.scale[..., None] * self.scale_tril

    def _scale_tril(self) -> torch.Tensor:
        if self.white_tril is None:
            return (self.white_scale * self.scale)[..., None] * self.scale_tril
        return self.white_tril @ self._factor()

    def _loc_scale(self, *args, **kwargs):
        return self._to_u(self.loc), self._scale_tril().pow(2).sum(-1).sqrt()

    def _whitened_cov(self) -> torch.Tensor:
        factor = self._factor()
        return factor @ factor.T

    def get_posterior(self, *args, **kwargs):
        self._record_covariance()
        return dist.MultivariateNormal(self._to_u(self.loc), scale_tril=self._scale_tril())

    def get_transform(self, *args, **kwargs):
        return dist.transforms.LowerCholeskyAffine(self._to_u(self.loc), self._scale_tril())


class WhitenedPoint(Whitened, AutoLaplaceApproximation):
    """A point (Delta) on the unconstrained latent vector: MAP in unconstrained coordinates
    (the log-Jacobian of the map from them counts, unlike :class:`~pyro.infer.autoguide.
    AutoDelta`, which maximizes the density of the constrained values)."""

    def get_posterior(self, *args, **kwargs):
        return dist.Delta(self._to_u(self.loc)).to_event(1)

    def _loc_scale(self, *args, **kwargs):
        return self._to_u(self.loc), torch.zeros_like(self.loc)
