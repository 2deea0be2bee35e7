"""Gabor fits of V1's projective fields: how many columns of Phi are localized, oriented and
band-pass, as sparse coding of natural images is known to make them (Olshausen and Field
1996; Ringach 2002 fitted the same function to macaque V1 simple cells).

Every column of Phi (pixels, V1 units) is reshaped row-major into a ``side`` x ``side``
patch, ``phi[:, k].reshape(side, side)``, and a 2-D Gabor function is fitted to it by least
squares, all columns and several starts per column at once, in one float64 tensor
(:func:`fit_gabors`).

References
----------
Olshausen and Field (1996), *Emergence of simple-cell receptive field properties by learning
a sparse code for natural images*, Nature 381.
Ringach (2002), *Spatial structure and symmetry of simple-cell receptive fields in macaque
primary visual cortex*, Journal of Neurophysiology 88.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from zoo.tensors import to_numpy

#: Least r2 of a Gabor-like field. Fits to white-noise 12x12 fields (144 per seed, seeds 0-2)
#: reached r2 of at most 0.213, 0.234 and 0.199 (medians 0.138, 0.132, 0.130); the same
#: noise passed through the whitening filter of the patches (zoo.two_level_vae.data.whiten's
#: R(f), as smooth as fields fitted to whitened patches are) reached at most 0.373, 0.321
#: and 0.390 (medians 0.20-0.21). 0.6 is 2.5 times the largest white-noise r2 and 0.2 above
#: the largest filtered one; a field passing it has most of its energy in one Gabor. (ICA
#: fields of these patches, the textbook Gabor-like ones, had r2 of 0.78 or more in 90%.)
R2_MIN = 0.6
#: The largest r2 of those fits to noise fields: white, and through the whitening filter.
WHITE_NOISE_R2_MAX, WHITENED_NOISE_R2_MAX = 0.234, 0.390
#: Bounds of the envelope's standard deviations, as (least, most / side), in pixels.
SIGMA_MIN, SIGMA_MAX_PER_SIDE = 0.5, 2.0
#: Highest carrier frequency, in cycles per pixel (the Nyquist frequency).
FREQUENCY_MAX = 0.5
#: Full width at half maximum of a Gaussian per standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Starts per column drawn at random from ``seed``, beside four from the field's Fourier
#: peak (its energy centroid or its largest pixel as centre, a narrow or a wide envelope).
RANDOM_STARTS = 4
#: Levenberg-Marquardt iterations at most. Fits to Gabor fields had all settled within 50
#: (no r2 changed by 1e-15 from 50 to 300); fits to white noise still crawl (the largest of
#: 144 r2 changed from 0.199 to 0.206 from 100 to 300 iterations, the others by less).
MAX_ITER = 100


@dataclasses.dataclass(frozen=True, eq=False)
class GaborFits:
    """The Gabor fitted to each V1 unit's projective field (all arrays of shape (K,)).

    Attributes
    ----------
    r2 : np.ndarray
        Variance explained, ``1 - SSE / sum(field**2)`` (about 0, not about the field's
        mean: a constant offset is not part of a Gabor); 0 for a field that is all zeros.
    theta : np.ndarray
        Orientation of the carrier's wave vector in [0, pi), radians from the +x axis
        (along a row, to the right) towards +y (down the rows, as an image is shown): 0 is a
        carrier varying along x, i.e. vertical stripes. The stripes themselves run at
        ``theta + pi / 2``.
    frequency : np.ndarray
        Carrier frequency, cycles per pixel, in [0, 0.5]. Poorly defined for a field with
        less than about half a cycle under its envelope (f sx small): an odd one, an edge
        like the derivative of a Gaussian, is fitted with f near 0 and a large amplitude
        (ICA fields of these patches: 9 of 65 Gabor-like ones had f < 0.05, all odd, with
        amplitudes 8-24 times their largest pixel).
    sx, sy : np.ndarray
        The envelope's standard deviations along the wave vector (across the stripes) and
        along the stripes, in pixels, in [0.5, 2 * side].
    x0, y0 : np.ndarray
        The envelope's centre, in pixels: column and row, 0 at the centre of the first
        pixel (the field covers [-0.5, side - 0.5] in both). Not bounded in the fit.
    phase : np.ndarray
        The carrier's phase psi in (-pi, pi]: 0 an even (bar-like) field, +-pi/2 an odd
        (edge-like) one.
    amplitude : np.ndarray
        A >= 0, in the units of Phi.
    gabor_like : np.ndarray
        Boolean: ``r2 >= r2_min``, the envelope's centre inside the patch (x0 and y0 in
        [-0.5, side - 0.5]) and the envelope no wider than the patch across its stripes (its
        full width at half maximum along the wave vector, 2.355 sx, at most ``side``), so a
        plane wave filling the patch (fitted with sx at its bound, 2 side) is not counted as
        localized. Its length along the stripes (sy) is not limited: the edge-like fields
        that sparse coding and ICA learn often run the length of a 12x12 patch. A field
        whose fitted centre lies outside the patch (an edge cut off by the patch's border)
        is not counted.
    side : int
        The patch side the fields were fitted at.
    r2_min : float
        The r2 threshold of ``gabor_like``.
    """

    r2: np.ndarray
    theta: np.ndarray
    frequency: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray
    gabor_like: np.ndarray
    side: int
    r2_min: float = R2_MIN

    #: The per-unit arrays, in the order :meth:`as_arrays` stores them.
    FIELDS = ("r2", "theta", "frequency", "sx", "sy", "x0", "y0", "phase", "amplitude")

    def as_arrays(self) -> dict[str, tuple[np.ndarray, tuple[str]]]:
        """Every per-unit array as ``gabor_<name>`` -> (array, ("v1_unit",)), as
        :mod:`zoo.two_level_vae.evaluate` stores arrays in ``constant_data``."""
        out = {f"gabor_{name}": (getattr(self, name), ("v1_unit",)) for name in self.FIELDS}
        out["gabor_like"] = (self.gabor_like, ("v1_unit",))
        return out

    def summary(self) -> dict[str, float | int]:
        """How many units are Gabor-like (``gabor_like``) and, where any are, their median r2
        (``gabor_r2_median``) and carrier frequency (``gabor_frequency_median``)."""
        out: dict[str, float | int] = {"gabor_like": int(self.gabor_like.sum())}
        if self.gabor_like.any():
            out["gabor_r2_median"] = float(np.median(self.r2[self.gabor_like]))
            out["gabor_frequency_median"] = float(np.median(self.frequency[self.gabor_like]))
        return out


def gabor(
    params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, side: int, *, jacobian: bool = False
):
    """The Gabor of unconstrained ``params`` (N, 8) at the pixels ``x``, ``y`` (D,), (N, D):
    ``exp(-(x'^2 / (2 sx^2) + y'^2 / (2 sy^2))) (a cos(2 pi f x') + b sin(2 pi f x'))``
    with ``x' = (x - x0) cos(theta) + (y - y0) sin(theta)``, ``y' = -(x - x0) sin(theta) +
    (y - y0) cos(theta)``, i.e. ``A cos(2 pi f x' + psi)`` with ``a = A cos(psi)``,
    ``b = -A sin(psi)``. With ``jacobian``, also its derivatives in ``params``, (N, D, 8)."""
    x0, y0, theta, f, sx, sy, a, b = (p[:, None] for p in params.unbind(-1))
    f = FREQUENCY_MAX * torch.sigmoid(f)
    span = SIGMA_MAX_PER_SIDE * side - SIGMA_MIN
    sx, sy = (SIGMA_MIN + span * torch.sigmoid(s) for s in (sx, sy))
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = x - x0, y - y0
    xr = dx * cos + dy * sin
    yr = -dx * sin + dy * cos
    envelope = torch.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))
    phase = 2 * math.pi * f * xr
    c, s = torch.cos(phase), torch.sin(phase)
    carrier = a * c + b * s
    value = envelope * carrier
    if not jacobian:
        return value
    # d/dx', d/dy' of the Gabor, then the chain rule through the rotation and the sigmoids.
    quadrature = b * c - a * s
    d_xr = envelope * (2 * math.pi * f * quadrature - carrier * xr / sx**2)
    d_yr = -value * yr / sy**2
    columns = [
        -d_xr * cos + d_yr * sin,
        -d_xr * sin - d_yr * cos,
        d_xr * yr - d_yr * xr,
        envelope * 2 * math.pi * xr * quadrature * f * (1 - f / FREQUENCY_MAX),
        value * xr**2 / sx**3 * (sx - SIGMA_MIN) * (1 - (sx - SIGMA_MIN) / span),
        value * yr**2 / sy**3 * (sy - SIGMA_MIN) * (1 - (sy - SIGMA_MIN) / span),
        envelope * c,
        envelope * s,
    ]
    return value, torch.stack(columns, -1)


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p) - np.log1p(-p)


def _starts(fields: np.ndarray, side: int, seed: int) -> np.ndarray:
    """Starting (nonlinear) parameters, (K, S, 6) in the constrained units (x0, y0, theta,
    f, sx, sy): the frequency and orientation of each field's Fourier peak (zero-padded to
    four times the side), at its energy centroid and at its pixel of largest magnitude, with
    a narrow and a wide envelope; then ``RANDOM_STARTS`` drawn from ``seed``."""
    k = len(fields)
    pad = 4 * side
    power = np.abs(np.fft.rfft2(fields, s=(pad, pad))) ** 2
    fy = np.fft.fftfreq(pad)[:, None]
    fx = np.fft.rfftfreq(pad)[None, :]
    peak = power.reshape(k, -1).argmax(1)
    py, px = np.unravel_index(peak, power.shape[1:])
    freq = np.hypot(fy[py, 0], fx[0, px])
    theta = np.arctan2(fy[py, 0], fx[0, px])
    energy = fields**2
    total = energy.sum((1, 2)) + 1e-300
    pixels = np.arange(side)
    cy = (energy.sum(2) * pixels).sum(1) / total
    cx = (energy.sum(1) * pixels).sum(1) / total
    my, mx = np.unravel_index(np.abs(fields).reshape(k, -1).argmax(1), (side, side))
    starts = []
    for centre in ((cx, cy), (mx, my)):
        for width in (side / 8, side / 4):
            s = np.full(k, width)
            starts.append(np.stack([centre[0], centre[1], theta, freq, s, s], -1))
    rng = np.random.default_rng(seed)
    for _ in range(RANDOM_STARTS):
        drawn = [
            rng.uniform(0, side - 1, k),
            rng.uniform(0, side - 1, k),
            rng.uniform(0, math.pi, k),
            rng.uniform(0.05, 0.45, k),
            rng.uniform(1, side / 3, k),
            rng.uniform(1, side / 3, k),
        ]
        starts.append(np.stack(drawn, -1))
    return np.stack(starts, 1)


def _unconstrained(starts: np.ndarray, side: int) -> np.ndarray:
    out = starts.copy()
    out[..., 3] = _logit(starts[..., 3] / FREQUENCY_MAX)
    span = SIGMA_MAX_PER_SIDE * side - SIGMA_MIN
    out[..., 4:6] = _logit((starts[..., 4:6] - SIGMA_MIN) / span)
    return out


def _levenberg_marquardt(params: torch.Tensor, residual, max_iter: int):
    """Minimize every row's ``sum(r**2)``, ``r, jac = residual(params)`` ((N, D), (N, D, P)),
    at once, each row with its own damping and its own accepted steps (the rows are
    independent problems). Returns the parameters, the sums of squares and the iterations
    run."""
    r, jac = residual(params)
    sse = (r**2).sum(-1)
    lam = torch.full_like(sse, 1e-3)
    eye = torch.eye(params.shape[-1], dtype=params.dtype)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        grad = (jac * r[..., None]).sum(1)
        hess = jac.transpose(1, 2) @ jac
        diag = torch.diagonal(hess, dim1=1, dim2=2)
        scale = diag.clamp_min(1e-9 * diag.amax(1, keepdim=True) + 1e-300)
        chol, info = torch.linalg.cholesky_ex(hess + lam[:, None, None] * eye * scale[:, None])
        step = -torch.cholesky_solve(grad[..., None], chol)[..., 0]
        solved = (info == 0) & torch.isfinite(step).all(-1)
        trial = params + torch.where(solved[:, None], step, 0.0)
        r_trial, jac_trial = residual(trial)
        sse_trial = (r_trial**2).sum(-1)
        better = solved & torch.isfinite(sse_trial) & (sse_trial < sse)
        gain = torch.where(better, (sse - sse_trial) / sse.clamp_min(1e-300), 0.0)
        params = torch.where(better[:, None], trial, params)
        r = torch.where(better[:, None], r_trial, r)
        jac = torch.where(better[:, None, None], jac_trial, jac)
        sse = torch.where(better, sse_trial, sse)
        lam = torch.where(better, (lam / 3).clamp_min(1e-12), lam * 4)
        # Settled: no row gains a relative 1e-10 and none is still searching for a step.
        if bool(((gain < 1e-10) & (better | (lam > 1e8))).all()):
            break
    return params, sse, iterations


def fit_gabors(phi: np.ndarray, side: int, *, seed: int = 0, r2_min: float = R2_MIN) -> GaborFits:
    """Fit a 2-D Gabor function to every column of ``phi`` by least squares.

    The Gabor of a field ``phi[:, k].reshape(side, side)``, at pixel column x and row y
    (0 at the first pixel's centre), is::

        g(x, y) = A exp(-(x'^2 / (2 sx^2) + y'^2 / (2 sy^2))) cos(2 pi f x' + psi)
        x' =  (x - x0) cos(theta) + (y - y0) sin(theta)
        y' = -(x - x0) sin(theta) + (y - y0) cos(theta)

    so the carrier varies along x', whose direction ``theta`` (from +x towards +y, i.e.
    clockwise on an image shown with row 0 at the top) is the reported orientation: that of
    the wave vector, across the stripes. (theta + pi, -psi) is the same function; theta is
    reported in [0, pi).

    All columns, each from eight starts (four from the field's Fourier peak and energy
    centroid or largest pixel, ``RANDOM_STARTS`` drawn from ``seed``), are fitted at once in
    one float64 tensor by Levenberg-Marquardt, each start with its own damping, and each
    column keeps its best start. sx and sy are bounded to [0.5, 2 side] and f to [0, 0.5]
    cycles per pixel by sigmoids; the centre is free. Fields are scaled to unit norm for the
    fit (the amplitude is reported in Phi's units). Deterministic for a ``seed``, which draws
    the random starts.

    Parameters
    ----------
    phi : np.ndarray
        (side * side, K): one field per column, row-major.
    side : int
        The patch side.
    seed : int
        Seed of the random starts.
    r2_min : float
        The least r2 of a Gabor-like field (default ``R2_MIN``, chosen from fits to noise
        fields).

    Returns
    -------
    GaborFits
        The fitted parameters per column, with r2 and the ``gabor_like`` rule.
    """
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] != side * side:
        raise ValueError(
            f"phi has shape {phi.shape}, not ({side * side}, K): give one column per field of"
            f" {side}x{side} pixels, row-major."
        )
    k = phi.shape[1]
    norms = np.linalg.norm(phi, axis=0)
    unit = phi / np.where(norms > 0, norms, 1.0)
    fields = unit.T.reshape(k, side, side)
    starts = _unconstrained(_starts(fields, side, seed), side)  # (K, S, 6)
    num_starts = starts.shape[1]
    rows, cols = np.divmod(np.arange(side * side), side)
    x = torch.as_tensor(cols, dtype=torch.float64)
    y = torch.as_tensor(rows, dtype=torch.float64)
    target = torch.as_tensor(np.repeat(unit.T, num_starts, axis=0))  # (K * S, D)
    nonlinear = torch.as_tensor(starts.reshape(k * num_starts, 6))
    # The amplitudes that fit best at each start, in closed form (the Gabor is linear in a, b).
    zeros = torch.zeros(len(nonlinear), 2, dtype=torch.float64)
    _, jac = gabor(torch.cat([nonlinear, zeros], 1), x, y, side, jacobian=True)
    basis = jac[..., 6:]  # (K * S, D, 2): the Gabor's cosine and sine parts
    gram = basis.transpose(1, 2) @ basis + 1e-12 * torch.eye(2, dtype=torch.float64)
    ab = torch.linalg.solve(gram, (basis * target[..., None]).sum(1))

    def residual(params):
        value, jac = gabor(params, x, y, side, jacobian=True)
        return value - target, jac

    params, sse, _ = _levenberg_marquardt(torch.cat([nonlinear, ab], 1), residual, MAX_ITER)
    best = sse.reshape(k, num_starts).argmin(1)
    chosen = to_numpy(params.reshape(k, num_starts, 8)[torch.arange(k), best])
    sse = to_numpy(sse.reshape(k, num_starts)[torch.arange(k), best])
    return _fits(chosen, sse, norms, side, r2_min)


def _fits(params: np.ndarray, sse: np.ndarray, norms: np.ndarray, side: int, r2_min: float):
    """GaborFits from the chosen unconstrained parameters of unit-norm fields."""
    x0, y0, theta, f, sx, sy, a, b = params.T
    frequency = FREQUENCY_MAX * _sigmoid(f)
    span = SIGMA_MAX_PER_SIDE * side - SIGMA_MIN
    sx, sy = (SIGMA_MIN + span * _sigmoid(s) for s in (sx, sy))
    amplitude = np.hypot(a, b) * norms
    phase = np.arctan2(-b, a)
    turns = np.floor(theta / math.pi)  # theta + pi with -psi is the same Gabor
    theta = theta - turns * math.pi
    phase = np.where(turns % 2 == 1, -phase, phase)
    phase = np.where(phase <= -math.pi, phase + 2 * math.pi, phase)
    theta = np.where(theta >= math.pi, 0.0, theta)  # a rounding of theta - turns * pi
    r2 = np.where(norms > 0, 1.0 - sse, 0.0)  # the fitted fields had unit norm
    inside = (np.minimum(x0, y0) >= -0.5) & (np.maximum(x0, y0) <= side - 0.5)
    narrow = FWHM_PER_SIGMA * sx <= side
    return GaborFits(
        r2=r2,
        theta=theta,
        frequency=frequency,
        sx=sx,
        sy=sy,
        x0=x0,
        y0=y0,
        phase=phase,
        amplitude=amplitude,
        gabor_like=(r2 >= r2_min) & inside & narrow,
        side=side,
        r2_min=r2_min,
    )
