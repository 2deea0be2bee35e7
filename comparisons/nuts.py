"""The zoo's NUTS: one chain or a batch of chains, its tree's bookkeeping in NumPy, the
model's potential and gradient compiled to one graph of tensor operations.

Pyro's NUTS kernel moves one chain, one leapfrog step at a time, through dictionaries of
tensors: on a small posterior nearly all of its time is Python and the autograd engine's
per-operation overhead, not the model's arithmetic (regression N=1000, D=10: 0.95 ms a
gradient). Here a chain's state is a flat array of coordinates, its tree is kept in NumPy
(a microsecond an operation on arrays this small), and the potential's value and gradient
are one graph of ATen operations (:class:`Gradient`: the forward and backward passes
recorded by ``make_fx`` and run by TorchScript, with no autograd at run time), checked
against the eager values before it is used. The chains can also be the leading dimension
of one batch (C, D), the potential evaluated for all of them in one vectorized trace (the
chains as an outer plate, as Pyro's vectorized particles).

The algorithm is NumPyro's (Hoffman and Gelman 2014, with Betancourt 2017's multinomial
sampling): trees doubled in a random direction, the subtree's proposal chosen by
progressive sampling and the tree's by biased progressive sampling, the iterative U-turn
checks of each new leaf against the checkpoints of the subtrees it closes, a divergence at
an energy error above 1000. In a batch each chain keeps its own tree and clock: every step
takes one leapfrog step of every chain, and a chain whose tree is finished starts its next
iteration at the next step; only a chain that has finished all its iterations is masked
(its steps are computed and thrown away, and not counted as its gradients).
Adaptation is Stan's and Pyro's: step size by dual averaging toward an acceptance of 0.8,
a diagonal or dense inverse mass matrix from the draws of windows 25, 50, 100... after a
buffer of 75 iterations and before a final buffer of 50, each chain its own.

Chain c draws its random numbers from its own generator, seeded by (``seed``, c): its draws
depend on the seed and on nothing else, neither the machine's cores nor the chains it is
batched with (up to the rounding of a batched potential).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.ops.integrator import _EXCEPTION_HANDLERS
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from torch.fx.experimental.proxy_tensor import make_fx

from zoo.tensors import to_numpy

#: An energy error above this is a divergence (Stan's and Pyro's threshold).
MAX_DELTA_ENERGY = 1000.0

#: The acceptance probability that dual averaging aims for (Stan's default).
TARGET_ACCEPT = 0.8


class NotVectorized(ValueError):
    """The model's potential for a batch of chains is not each chain's own: it cannot run
    with the chains as an outer plate (a global site combined with a matmul, say)."""


@dataclass(frozen=True)
class _Site:
    name: str
    shape: torch.Size  # the site's value, with its plate (batch) dims
    batch_dims: int  # the site's distribution's batch dims (plates it sits in)
    unconstrained: torch.Size
    start: int
    stop: int
    transform: object


class BatchedPotential:
    """The potential energy (minus the log joint density in unconstrained coordinates) of a
    Pyro model at a batch of points ``z`` (chains, coordinates), for all chains in one trace.

    The latent sites are those of one trace of ``model(**data)``; each is moved to the
    reals by ``biject_to(support)``, as Pyro's NUTS moves it. ``max_plate_nesting`` is the
    model's: the chains become a plate at the dim to the left of its plates, so the model
    must broadcast its global sites from the left (STYLE.md: vectorized particles).
    """

    def __init__(self, model: Callable, data: Mapping[str, object], max_plate_nesting: int):
        self.model, self.data, self.nesting = model, dict(data), max_plate_nesting
        with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=[]):
            trace = poutine.trace(model).get_trace(**self.data)
        sites, start = [], 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            transform = biject_to(site["fn"].support)
            value = site["value"]
            unconstrained = transform.inv(value).shape
            size = int(torch.Size(unconstrained).numel())
            sites.append(_Site(name, value.shape, len(site["fn"].batch_shape),
                               unconstrained, start, start + size, transform))  # fmt: skip
            start += size
            self.dtype, self.device = value.dtype, value.device
        if not sites:
            raise ValueError("the model has no latent sites to sample")
        self.sites: tuple[_Site, ...] = tuple(sites)
        self.dim = start

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The flat unconstrained point (D,) of one chain's constrained ``values``."""
        parts = [s.transform.inv(torch.as_tensor(values[s.name])).reshape(-1) for s in self.sites]
        return torch.cat(parts).to(self.dtype)

    def constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each site's constrained value for a batch of points z (..., D): (..., *shape)."""
        lead = z.shape[:-1]
        return {
            s.name: s.transform(z[..., s.start : s.stop].reshape(*lead, *s.unconstrained))
            for s in self.sites
        }

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Potential energy (C,) at points z (C, D)."""
        num = z.shape[0]
        values, log_det = {}, z.new_zeros(num)
        for s in self.sites:
            u = z[:, s.start : s.stop].reshape(num, *s.unconstrained)
            x = s.transform(u)
            log_det = log_det + _per_chain(s.transform.log_abs_det_jacobian(u, x), num)
            pad = self.nesting - s.batch_dims
            values[s.name] = x.reshape(num, *([1] * pad), *s.shape)
        conditioned = poutine.condition(self.model, data=values)
        with pyro.plate("_chains", num, dim=-(self.nesting + 1)):
            trace = poutine.trace(conditioned).get_trace(**self.data)
        trace.compute_log_prob()
        log_joint = log_det
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and "log_prob" in site and name != "_chains":
                log_joint = log_joint + _per_chain(site["log_prob"], num, self.nesting)
        return -log_joint

    def unbatched(self, z: torch.Tensor) -> torch.Tensor:
        """Potential energy at one point z (D,) of the model traced as it is written, with no
        chains plate: what Pyro's NUTS computes."""
        values, log_det = {}, z.new_zeros(())
        for s in self.sites:
            u = z[s.start : s.stop].reshape(s.unconstrained)
            x = s.transform(u)
            log_det = log_det + s.transform.log_abs_det_jacobian(u, x).sum()
            values[s.name] = x
        trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(**self.data)
        return -(log_det + trace.log_prob_sum())

    def check_vectorized(self, z: torch.Tensor) -> None:
        """Raise :class:`NotVectorized` unless the potential of the batch z (C, D), any C
        from 1, is each chain's potential computed alone by the model as it is written (up
        to rounding)."""
        try:
            with torch.no_grad():
                together = self(z)
                alone = torch.stack([self.unbatched(z[c]) for c in range(z.shape[0])])
        except (RuntimeError, ValueError, IndexError) as exc:
            raise NotVectorized(
                f"the model fails with the chains as an outer plate: {exc}"
            ) from exc
        if together.shape != alone.shape or not torch.allclose(
            together, alone, rtol=1e-8, atol=1e-8, equal_nan=True
        ):
            raise NotVectorized(
                "the model's log density for a batch of chains differs from each chain's alone"
            )


class Gradient:
    """The potential's energies (C,) and gradients (C, D) at a batch z of the size of z0, in
    the fastest form that gives the eager values at z0 and near it:

    - ``"aten graph"``: the forward and backward passes recorded once by ``make_fx`` as one
      graph of ATen operations and run by TorchScript, with no autograd at run time (about
      half the time of the JIT-traced potential on the regression of ``make bench``);
    - ``"jit trace"``: the potential traced by ``torch.jit.trace``, as Pyro's NUTS with
      ``jit_compile``, and differentiated by autograd;
    - ``"eager"``: the potential itself, where neither traces or neither agrees with it. A
      potential whose control flow reads its own values (``if z.sum() > 0``, a Python
      number taken out of a tensor) stays eager: ``make_fx`` refuses it, and the JIT's trace
      is not tried then, nor where tracing warns that it took a value as a constant.

    ``how`` says which. Like any trace, a compiled form is the computation at z0; one that
    fails later with an error that is not numerical (a shape that depends on the values) is
    dropped for the eager potential, and ``how`` says so.
    """

    def __init__(self, potential: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor):
        self.potential, self.shape = potential, z0.shape
        self.how, self.fn = "eager", None
        for how, build in (("aten graph", _aten_graph), ("jit trace", _jit_trace)):
            with warnings.catch_warnings():
                # torch 2.13 marks torch.jit.trace deprecated; it is what runs the graph. A
                # TracerWarning (a value read as a constant) makes the trace unusable.
                warnings.simplefilter("ignore")
                warnings.simplefilter("error", torch.jit.TracerWarning)
                try:
                    fn = build(potential, z0)
                    if _agrees(fn, potential, z0):
                        self.how, self.fn = how, fn
                        return
                except _ReadsItsValues:
                    return  # no trace can follow it: eager
                except Exception:  # noqa: BLE001,S112 (a form that fails is not used)
                    continue

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fn is None or z.shape != self.shape:
            return _value_and_grad(self.potential, z)
        try:
            return self.fn(z)
        except Exception as exc:  # noqa: BLE001 (numerical: the sampler's to handle)
            if _numerical(exc):
                raise
            self.fn = None
            self.how = f"eager (the {self.how} failed during the run: {_first_line(exc)})"
        return _value_and_grad(self.potential, z)


class _ReadsItsValues(Exception):
    """make_fx found the potential reading a value out of a tensor (data-dependent flow)."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _aten_graph(potential, z0: torch.Tensor):
    """Forward and backward of ``potential`` as one TorchScript graph of ATen operations."""

    def value_and_grad(z):
        return _value_and_grad(potential, z)

    # Validation checks read tensor values (a branch make_fx cannot record), so the graph
    # has none: where the eager potential would raise on an invalid parameter (a covariance
    # that is not positive definite), the graph gives NaN, which the sampler takes for a
    # divergence, as Pyro's NUTS takes the eager error.
    with pyro.validation_enabled(False):
        try:
            graph = make_fx(value_and_grad)(z0)
        except RuntimeError as exc:
            if "data-dependent" in str(exc) or "_local_scalar_dense" in str(exc):
                raise _ReadsItsValues(str(exc)) from exc
            raise
    graph.graph.eliminate_dead_code()
    graph.recompile()
    with torch.no_grad():
        traced = torch.jit.trace(graph, z0, check_trace=False)
    return lambda z: tuple(traced(z))


def _jit_trace(potential, z0: torch.Tensor):
    traced = torch.jit.trace(lambda z: potential(z), z0, check_trace=False)
    return lambda z: _value_and_grad(traced, z)


def _agrees(fn, potential, z0: torch.Tensor) -> bool:
    """Whether fn gives the eager potential's energies and gradients at z0 and near it."""
    for z in (z0, z0 + 0.01):
        u, g = fn(z.clone())
        u0, g0 = _value_and_grad(potential, z)
        for a, b in ((u, u0), (g, g0)):
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-10, atol=1e-10,
                                                        equal_nan=True):  # fmt: skip
                return False
    return True


def _per_chain(value: torch.Tensor, num: int, nesting: int | None = None) -> torch.Tensor:
    """A log-density term summed over every dim but the chains' (the leftmost of a tensor
    with ``nesting + 1`` dims, or the first for a transform's Jacobian), as (C,)."""
    if nesting is not None and value.dim() < nesting + 1:  # the same for every chain
        return value.sum().expand(num)
    if value.dim() == 0:
        return value.expand(num)
    return value.reshape(value.shape[0], -1).sum(-1).expand(num)


def adaptation_windows(num_warmup: int) -> list[tuple[int, int]]:
    """Stan's warm-up schedule, as Pyro's own NUTS builds it (its ``WarmupAdapter``): a
    buffer of 75 iterations, windows of 25, 50, 100... whose draws set the mass matrix, and
    a final buffer of 50; shrunk to 15%, 75% and 10% of a warm-up shorter than 150.
    (start, end) inclusive."""
    adapter = WarmupAdapter(adapt_step_size=True, adapt_mass_matrix=True)
    adapter._warmup_steps = num_warmup  # what configure() sets before building it
    return [(w.start, w.end) for w in adapter._build_adaptation_schedule()]


@dataclass
class BatchedRun:
    """What :meth:`Sampler.run` returns (NumPy arrays): the unconstrained draws (C, S, D),
    per-iteration statistics (C, iterations): leapfrog steps, divergence, step size,
    acceptance probability; each chain's gradient evaluations (the leapfrog steps of its own
    tree, plus its set-up), and the batched potential evaluations made for all chains."""

    z: np.ndarray
    n_steps: np.ndarray
    diverging: np.ndarray
    step_size: np.ndarray
    accept_prob: np.ndarray
    grad_evals: np.ndarray
    batched_evals: int
    initial_step_size: np.ndarray
    inverse_mass_matrix: np.ndarray


class Sampler:
    """NUTS over ``potential`` (a :class:`BatchedPotential`, or any function (C, D) -> (C,)
    of torch tensors whose chains are independent), for one chain or a batch of them.

    Every step takes one leapfrog step of every chain in one batched evaluation of the
    potential and its gradient (``gradient``, a :class:`Gradient` of the potential, where
    given). The chains do not wait for one another: each follows its own tree, and one
    whose tree is finished records its draw and starts its next iteration on the next step,
    so no evaluation is spent on a chain standing still (except after a chain's last
    iteration, while others finish theirs). The tree's bookkeeping is NumPy's: on small
    arrays an operation costs a microsecond, a tenth of torch's.

    Chain c draws its random numbers from its own generator, seeded by (``seed``, c), and
    only for itself: a chain's draws are the same whether it runs alone
    (``chains=[c]``) or in a batch, up to the rounding of the batched potential.
    ``on_iteration(sampler, chain, it)`` is called after each chain's iteration ``it`` (it
    may raise to stop the run).
    """

    def __init__(
        self,
        potential: Callable[[torch.Tensor], torch.Tensor],
        *,
        seed: int,
        chains: Sequence[int] | None = None,
        gradient: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        max_tree_depth: int = 10,
        dense_mass: bool = False,
        target_accept: float = TARGET_ACCEPT,
        on_iteration: Callable[[Sampler, int, int], None] | None = None,
    ):
        self.potential = potential
        self.gradient = gradient
        self.chains = None if chains is None else list(chains)
        self.max_tree_depth = max_tree_depth
        self.dense = dense_mass
        self.target_accept = target_accept
        self.on_iteration = on_iteration
        self.seed = seed
        self.batched_evals = 0

    # --- pieces -------------------------------------------------------------------
    def _value_and_grad(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Potential energies (C,) and gradients (C, D). Where the model fails numerically
        (a Cholesky factor of a matrix that is not positive definite, say) each chain is
        evaluated alone, and a failing chain's energy is NaN: a divergence, as Pyro's NUTS
        treats it (its registered exception handlers decide what counts as numerical)."""
        self.batched_evals += 1
        zt = torch.from_numpy(z).to(self.device)
        try:
            if self.gradient is not None:
                u, g = self.gradient(zt)
            else:
                u, g = _value_and_grad(self.potential, zt)
            return to_numpy(u), to_numpy(g)
        except Exception as exc:  # noqa: BLE001 (re-raised unless numerical)
            if not _numerical(exc):
                raise
        u, g = np.full(z.shape[0], math.nan), np.zeros_like(z)
        for c in range(z.shape[0]):
            try:
                with pyro.validation_enabled(False):  # NaN parameters: NaN, not an error
                    uc, gc = _value_and_grad(self.potential, zt[c : c + 1])
            except Exception as exc:  # noqa: BLE001 (re-raised unless numerical)
                if not _numerical(exc):
                    raise
                continue
            u[c], g[c] = to_numpy(uc)[0], to_numpy(gc)[0]
        return u, g

    def _velocity(self, r: np.ndarray) -> np.ndarray:
        """M^-1 r for momenta r (C, ..., D)."""
        if self.dense:
            if r.ndim == 2:
                return np.matmul(self.minv, r[..., None])[..., 0]
            return np.matmul(r, self.minv)  # (C, K, D): M^-1 is symmetric
        return self.minv.reshape(self.minv.shape[0], *([1] * (r.ndim - 2)), -1) * r

    def _kinetic(self, r: np.ndarray) -> np.ndarray:
        return 0.5 * (r * self._velocity(r)).sum(-1)

    def _momentum(self, mask: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        """Fresh momenta r ~ N(0, M) for the chains in mask, each from its own generator;
        the other chains keep r (zeros where None)."""
        out = np.zeros(self.shape, dtype=self.dtype) if r is None else r.copy()
        for c in np.flatnonzero(mask):
            eps = self.gens[c].standard_normal(self.shape[1])
            out[c] = self.root[c] @ eps if self.dense else eps * self.root[c]
        return out

    def _leapfrog(self, z, r, g, eps):
        """One velocity Verlet step of signed size eps (C,) for every chain."""
        e = eps[:, None]
        r = r - 0.5 * e * g
        z = z + e * self._velocity(r)
        u, g = self._value_and_grad(z)
        return z, r - 0.5 * e * g, u, g

    def _turning(self, r_left, r_right, r_sum) -> np.ndarray:
        """The generalized U-turn criterion (Betancourt 2017, A.4.2) on the last dim."""
        r_sum = r_sum - 0.5 * (r_left + r_right)
        left = (self._velocity(r_left) * r_sum).sum(-1)
        right = (self._velocity(r_right) * r_sum).sum(-1)
        return (left <= 0) | (right <= 0)

    def _set_mass(self, minv: np.ndarray, which: np.ndarray | None = None) -> None:
        """Set M^-1 (for the chains in which) and the factor that draws momenta: r = A eps
        with A = L^-T, L the Cholesky factor of M^-1, so that r ~ N(0, M)."""
        if which is None:
            self.minv = minv.copy()
        else:
            self.minv[which] = minv[which]
        if self.dense:
            eye = np.eye(self.shape[1])
            self.root = np.stack([np.linalg.solve(np.linalg.cholesky(m).T, eye)
                                  for m in self.minv])  # fmt: skip
        else:
            self.root = 1.0 / np.sqrt(self.minv)

    def _reasonable_step_size(self, z, u, g, step, which):
        """Pyro's heuristic for the chains in ``which``: double (or halve) the step size
        from ``step`` until one leapfrog step's acceptance crosses 0.8. Returns the step
        sizes and the gradient evaluations each chain spent."""
        threshold = math.log(0.8)
        direction = None
        step = step.copy()
        going = which.copy()
        spent = np.zeros(len(which), dtype=np.int64)
        for _ in range(100):
            r = self._momentum(going)
            h0 = u + self._kinetic(r)
            _, r1, u1, _ = self._leapfrog(z, r, g, step)
            spent += going
            delta = u1 + self._kinetic(r1) - h0
            with np.errstate(invalid="ignore", over="ignore"):
                up = threshold < -np.nan_to_num(delta, nan=math.inf)
            if direction is None:
                direction = up
            else:
                going &= up == direction
            if not going.any():
                break
            step = np.where(going, np.where(direction, step * 2, step / 2), step)
            going &= (step > 1e-10) & (step < 1e10)
        return step.clip(1e-10, 1e10), spent

    # --- the run --------------------------------------------------------------------
    def run(self, z0: torch.Tensor, *, num_warmup: int, num_samples: int) -> BatchedRun:
        """``num_warmup`` adapted iterations, then ``num_samples`` kept, from z0 (C, D)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._run(z0, num_warmup, num_samples)

    def _run(self, z0: torch.Tensor, num_warmup: int, num_samples: int) -> BatchedRun:
        C, D = z0.shape
        self.device = z0.device
        dt = self.dtype = to_numpy(torch.empty((), dtype=z0.dtype)).dtype
        self.shape = (C, D)
        ids = list(range(C)) if self.chains is None else self.chains
        if len(ids) != C:
            raise ValueError(f"{C} starting points for {len(ids)} chains")
        self.gens = [np.random.default_rng([self.seed, c]) for c in ids]
        total = num_warmup + num_samples
        depth_max = self.max_tree_depth
        rows = np.arange(C)
        # Checkpoints each leaf n of a subtree is checked against, and its slot.
        lo_hi = np.array([_checkpoints(n) for n in range(2 ** (depth_max - 1))])
        slots = np.arange(depth_max)
        self._set_mass(np.tile(np.eye(D, dtype=dt), (C, 1, 1)) if self.dense
                       else np.ones((C, D), dtype=dt))  # fmt: skip
        z = to_numpy(z0).astype(dt, copy=True)
        u, g = self._value_and_grad(z)
        every = np.ones(C, dtype=bool)
        eps, spent = self._reasonable_step_size(z, u, g, np.ones(C, dtype=dt), every)
        grad_evals = 1 + spent
        initial = eps.copy()
        self.initial_step_size = initial
        # Dual averaging of log step sizes, per chain (Pyro's and Stan's constants).
        t0, kappa, gamma = 10.0, 0.75, 0.05
        prox = np.log(10 * eps)
        da_t = np.zeros(C, dtype=dt)
        g_avg, x_avg = np.zeros_like(eps), np.zeros_like(eps)
        windows = adaptation_windows(num_warmup) if num_warmup > 0 else []
        window_end = np.array([w[1] for w in windows] + [-1])
        window = np.zeros(C, dtype=np.int64)
        last_window = len(windows) - 1
        w_n = np.zeros(C, dtype=dt)  # Welford's count, mean, M2 per chain
        w_mean = np.zeros((C, D), dtype=dt)
        w_m2 = np.zeros((C, D, D), dtype=dt) if self.dense else w_mean.copy()
        draws = np.zeros((C, num_samples, D), dtype=dt)
        stats = {"n_steps": np.zeros((C, total), dtype=np.int64),
                 "diverging": np.zeros((C, total), dtype=bool),
                 "step_size": np.zeros((C, total), dtype=dt),
                 "accept_prob": np.zeros((C, total), dtype=dt)}  # fmt: skip
        it = np.zeros(C, dtype=np.int64)
        running = it < total

        def new_tree(mask):
            """Start the next iteration's tree for the chains in mask."""
            nonlocal h0, left_z, left_r, left_g, right_z, right_r, right_g, prop_z, prop_u, prop_g
            nonlocal weight, r_sum, depth, steps, accept_sum, diverged
            r0 = self._momentum(mask)
            m1 = mask[:, None]
            h0 = np.where(mask, u + self._kinetic(r0), h0)
            left_z, left_r, left_g = (np.where(m1, a, b) for a, b in
                                      zip((z, r0, g), (left_z, left_r, left_g)))  # fmt: skip
            right_z, right_r, right_g = (np.where(m1, a, b) for a, b in
                                         zip((z, r0, g), (right_z, right_r, right_g)))  # fmt: skip
            prop_z, prop_g = np.where(m1, z, prop_z), np.where(m1, g, prop_g)
            prop_u = np.where(mask, u, prop_u)
            weight = np.where(mask, 0.0, weight)
            r_sum = np.where(m1, r0, r_sum)
            depth = np.where(mask, 0, depth)
            steps = np.where(mask, 0, steps)
            accept_sum = np.where(mask, 0.0, accept_sum)
            diverged = diverged & ~mask
            new_subtree(mask)

        def new_subtree(mask):
            """Begin a doubling, in a random direction, for the chains in mask."""
            nonlocal right_way, leaf_z, leaf_r, leaf_g, sub_w, sub_sum, n
            right_way = right_way.copy()
            for c in np.flatnonzero(mask):
                right_way[c] = self.gens[c].random() < 0.5
            m1, rw = mask[:, None], right_way[:, None]
            leaf_z = np.where(m1, np.where(rw, right_z, left_z), leaf_z)
            leaf_r = np.where(m1, np.where(rw, right_r, left_r), leaf_r)
            leaf_g = np.where(m1, np.where(rw, right_g, left_g), leaf_g)
            sub_w = np.where(mask, -math.inf, sub_w)
            sub_sum = np.where(m1, 0.0, sub_sum)
            n = np.where(mask, 0, n)

        zeros_cd = np.zeros((C, D), dtype=dt)
        h0 = np.zeros_like(u)
        left_z = left_r = left_g = right_z = right_r = right_g = zeros_cd
        prop_z, prop_u, prop_g = z, u, g
        weight, r_sum = np.zeros_like(u), zeros_cd
        depth = np.zeros(C, dtype=np.int64)
        steps, accept_sum = np.zeros_like(depth), np.zeros_like(u)
        diverged = np.zeros(C, dtype=bool)
        right_way = np.zeros_like(diverged)
        leaf_z = leaf_r = leaf_g = sub_sum = zeros_cd
        sub_w = np.zeros_like(u)
        sub_z, sub_u, sub_g = z, u, g
        n = np.zeros_like(depth)
        ckpt_r = np.zeros((C, depth_max, D), dtype=dt)
        ckpt_sum = np.zeros_like(ckpt_r)
        new_tree(every)
        self.iterations = it
        while running.any():
            eps_signed = np.where(right_way, eps, -eps)
            z1, r1, u1, g1 = self._leapfrog(leaf_z, leaf_r, leaf_g, eps_signed)
            grad_evals += running
            delta = np.nan_to_num(u1 + self._kinetic(r1) - h0, nan=math.inf)
            coins = np.array([gen.random(2) for gen in self.gens])
            # Progressive sampling within the subtree.
            new_w = np.logaddexp(sub_w, -delta)
            take = coins[:, 0] < np.exp(-delta - new_w)
            t1 = take[:, None]
            sub_z, sub_g, sub_u = (
                np.where(t1, z1, sub_z),
                np.where(t1, g1, sub_g),
                np.where(take, u1, sub_u),
            )
            sub_w, sub_sum = new_w, sub_sum + r1
            accept_sum = accept_sum + np.minimum(np.exp(-delta), 1.0)
            steps = steps + 1
            leaf_z, leaf_r, leaf_g = z1, r1, g1
            # U-turns of the subtrees this leaf closes, against the checkpoints.
            lo, hi = lo_hi[n, 0], lo_hi[n, 1]
            even = n % 2 == 0
            ckpt_r[rows[even], hi[even]] = r1[even]
            ckpt_sum[rows[even], hi[even]] = sub_sum[even]
            checked = (slots >= lo[:, None]) & (slots <= hi[:, None])
            turn = np.zeros(C, dtype=bool)
            odd = ~even
            if odd.any():  # only an odd leaf closes subtrees
                sums = sub_sum[:, None] - ckpt_sum + ckpt_r
                turning = self._turning(ckpt_r, np.broadcast_to(r1[:, None], ckpt_r.shape), sums)
                turn = (turning & checked).any(-1)
            div = delta > MAX_DELTA_ENERGY
            sub_end = turn | div | (n + 1 == 2**depth)
            n = n + 1
            if not sub_end.any():
                continue
            # A finished doubling joins the tree (biased progressive sampling).
            ok = sub_end & ~turn & ~div
            take = ok & (coins[:, 1] < np.minimum(np.exp(sub_w - weight), 1.0))
            t1 = take[:, None]
            prop_z, prop_g = np.where(t1, sub_z, prop_z), np.where(t1, sub_g, prop_g)
            prop_u = np.where(take, sub_u, prop_u)
            weight = np.where(ok, np.logaddexp(weight, sub_w), weight)
            gr, gl = (ok & right_way)[:, None], (ok & ~right_way)[:, None]
            leaf = (leaf_z, leaf_r, leaf_g)
            right_z, right_r, right_g = (
                np.where(gr, a, b) for a, b in zip(leaf, (right_z, right_r, right_g))
            )
            left_z, left_r, left_g = (
                np.where(gl, a, b) for a, b in zip(leaf, (left_z, left_r, left_g))
            )
            r_sum = np.where(ok[:, None], r_sum + sub_sum, r_sum)
            depth = depth + sub_end
            diverged = diverged | (sub_end & div)
            whole_turn = self._turning(left_r, right_r, r_sum)
            tree_end = sub_end & (turn | div | whole_turn | (depth >= depth_max))
            grow = sub_end & ~tree_end
            if grow.any():
                new_subtree(grow)
            done = tree_end & running
            if not done.any():
                if tree_end.any():  # chains past their last iteration start again
                    new_tree(tree_end)
                continue
            # Chains whose iteration is over: their draw, statistics and adaptation.
            accept = accept_sum / np.maximum(steps, 1)
            d1 = done[:, None]
            z, g, u = np.where(d1, prop_z, z), np.where(d1, prop_g, g), np.where(done, prop_u, u)
            idx = rows[done]
            at = it[done]
            for key, value in (("n_steps", steps), ("diverging", diverged),
                               ("step_size", eps), ("accept_prob", accept)):  # fmt: skip
                stats[key][idx, at] = value[done]
            sampling = done & (it >= num_warmup)
            if sampling.any():
                draws[rows[sampling], it[sampling] - num_warmup] = z[sampling]
            warm = done & (it < num_warmup)
            if warm.any():
                da_t = da_t + warm
                tt = np.maximum(da_t, 1)
                w = 1.0 / (tt + t0)
                miss = self.target_accept - accept
                g_avg = np.where(warm, (1 - w) * g_avg + w * miss, g_avg)
                x_t = prox - np.sqrt(tt) / gamma * g_avg
                weight_t = tt ** (-kappa)
                x_avg = np.where(warm, (1 - weight_t) * x_avg + weight_t * x_t, x_avg)
                eps = np.where(warm, np.exp(x_t), eps)
                mass_phase = warm & (window > 0) & (window < last_window)
                if mass_phase.any():  # Welford's update of the window's draws
                    w_n = w_n + mass_phase
                    d1 = np.where(mass_phase[:, None], z - w_mean, 0.0)
                    w_mean = w_mean + d1 / np.maximum(w_n, 1)[:, None]
                    d2 = z - w_mean
                    w_m2 = w_m2 + (d1[:, :, None] * d2[:, None, :] if self.dense else d1 * d2)
                closing = warm & (it == window_end[window])
                if closing.any():
                    final = closing & (window == last_window)
                    eps = np.where(final, np.exp(x_avg), eps)
                    mass_end = closing & (window > 0) & (window < last_window)
                    if mass_end.any():
                        self._set_mass(_shrunk(w_m2, w_n, self.dense), mass_end)
                        w_n = np.where(mass_end, 0.0, w_n)
                        w_mean = np.where(mass_end[:, None], 0.0, w_mean)
                        w_m2 = np.where(mass_end.reshape(-1, *[1] * (w_m2.ndim - 1)), 0.0, w_m2)
                        found, spent = self._reasonable_step_size(z, u, g, eps, mass_end)
                        grad_evals += spent
                        eps = np.where(mass_end, found, eps)
                        prox = np.where(mass_end, np.log(10 * eps), prox)
                        da_t = np.where(mass_end, 0.0, da_t)
                        g_avg = np.where(mass_end, 0.0, g_avg)
                        x_avg = np.where(mass_end, 0.0, x_avg)
                    window = window + closing
            it = it + done
            running = it < total
            self.grad_evals, self.step_size, self.stats = grad_evals, eps, stats
            self.iterations = it
            if self.on_iteration is not None:
                for c in idx.tolist():
                    self.on_iteration(self, c, int(it[c]) - 1)
            if tree_end.any():
                new_tree(tree_end)
        return BatchedRun(
            z=draws,
            n_steps=stats["n_steps"],
            diverging=stats["diverging"],
            step_size=stats["step_size"],
            accept_prob=stats["accept_prob"],
            grad_evals=grad_evals,
            batched_evals=self.batched_evals,
            initial_step_size=initial,
            inverse_mass_matrix=self.minv.copy(),
        )


def _value_and_grad(potential, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        u = potential(z)
        (g,) = torch.autograd.grad(u.sum(), z)
    return u.detach(), g


def _numerical(exc: Exception) -> bool:
    """Whether Pyro's NUTS would take this failure of the potential for a divergence."""
    return any(handler(exc) for handler in _EXCEPTION_HANDLERS.values())


def _checkpoints(n: int) -> tuple[int, int]:
    """The checkpoints leaf n of a subtree is checked against (NumPyro's
    ``_leaf_idx_to_ckpt_idxs``): the subtrees that leaf n closes."""
    hi = bin(n >> 1).count("1")
    closes = bin((~n & (n + 1)) - 1).count("1")
    return hi - closes + 1, hi


def _shrunk(m2: np.ndarray, count: np.ndarray, dense: bool) -> np.ndarray:
    """Each chain's covariance (dense) or variances from Welford's sums (M2 and the count n
    of a window's draws), shrunk toward 1e-3 as Stan does: n/(n+5) cov + 1e-3 * 5/(n+5)."""
    n = np.maximum(count, 2)
    shape = (-1,) + (1,) * (m2.ndim - 1)
    cov = m2 / (n - 1).reshape(shape)
    shrink = (1e-3 * 5.0 / (n + 5.0)).reshape(shape)
    scaled = (n / (n + 5.0)).reshape(shape) * cov
    if dense:
        scaled = 0.5 * (scaled + np.swapaxes(scaled, -1, -2))  # symmetric to the last bit
        return scaled + shrink * np.eye(m2.shape[-1])
    return scaled + shrink
