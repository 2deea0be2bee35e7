"""A NUTS that advances every chain at once, in one batched tensor computation.

Pyro's NUTS kernel moves one chain, one leapfrog step at a time, through dictionaries of
tensors: on a small posterior nearly all of its time is Python and the autograd engine's
per-operation overhead, not the model's arithmetic (regression N=1000, D=10: 0.95 ms a
gradient, of which the model's own arithmetic is a small part). Here the chains are the
leading dimension of one flat tensor (chains, coordinates) and the model's potential is
evaluated for all of them in one vectorized trace (the chains as an outer plate, as Pyro's
vectorized particles), so that overhead is paid once per step for every chain.

The algorithm is NumPyro's (Hoffman and Gelman 2014, with Betancourt 2017's multinomial
sampling): trees doubled in a random direction, the subtree's proposal chosen by
progressive sampling and the tree's by biased progressive sampling, the iterative U-turn
checks of each new leaf against the checkpoints of the subtrees it closes, a divergence at
an energy error above 1000. Each chain keeps its own tree and clock: every step takes one
leapfrog step of every chain, and a chain whose tree is finished starts its next iteration
at the next step; only a chain that has finished all its iterations is masked (its steps
are computed and thrown away, and not counted as its gradients).
Adaptation is Stan's and Pyro's: step size by dual averaging toward an acceptance of 0.8,
a diagonal or dense inverse mass matrix from the draws of windows 25, 50, 100... after a
buffer of 75 iterations and before a final buffer of 50, each chain its own.

The random numbers of all chains come from one generator seeded by ``seed``: a run's draws
depend on the seed and the number of chains, never on the machine's cores (the sampler
runs on one torch thread).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.ops.integrator import _EXCEPTION_HANDLERS
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

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

    def check_vectorized(self, z: torch.Tensor) -> None:
        """Raise :class:`NotVectorized` unless the potential of the batch z (C, D) is each
        chain's potential computed alone (up to rounding)."""
        try:
            with torch.no_grad():
                together = self(z)
                alone = torch.cat([self(z[c : c + 1]) for c in range(z.shape[0])])
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
    """What :func:`sample` returns: the unconstrained draws (C, S, D), per-iteration
    statistics (C, iterations): leapfrog steps, divergence, step size, acceptance
    probability; each chain's gradient evaluations (the leapfrog steps of its own tree,
    plus its set-up), and the batched potential evaluations made for all chains."""

    z: torch.Tensor
    n_steps: torch.Tensor
    diverging: torch.Tensor
    step_size: torch.Tensor
    accept_prob: torch.Tensor
    grad_evals: torch.Tensor
    batched_evals: int
    initial_step_size: torch.Tensor
    inverse_mass_matrix: torch.Tensor


class Sampler:
    """Batched NUTS over ``potential`` (a :class:`BatchedPotential`, or any function (C, D)
    -> (C,) whose chains are independent).

    Every step takes one leapfrog step of every chain in one batched evaluation of the
    potential and its gradient. The chains do not wait for one another: each follows its
    own tree, and one whose tree is finished records its draw and starts its next
    iteration on the next step, so no evaluation is spent on a chain standing still
    (except after a chain's last iteration, while others finish theirs). ``on_iteration(
    sampler, chain, it)`` is called after each chain's iteration ``it`` (it may raise to
    stop the run). ``eager``: the potential in a form that takes any number of chains
    (where ``potential`` is traced for a batch of a fixed size), for chains evaluated alone.
    """

    def __init__(
        self,
        potential: Callable[[torch.Tensor], torch.Tensor],
        *,
        seed: int,
        max_tree_depth: int = 10,
        dense_mass: bool = False,
        target_accept: float = TARGET_ACCEPT,
        on_iteration: Callable[[Sampler, int, int], None] | None = None,
        eager: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.potential = potential
        self.eager = potential if eager is None else eager
        self.max_tree_depth = max_tree_depth
        self.dense = dense_mass
        self.target_accept = target_accept
        self.on_iteration = on_iteration
        self.seed = seed
        self.batched_evals = 0

    # --- pieces -------------------------------------------------------------------
    def _value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Potential energies (C,) and gradients (C, D). Where the model fails numerically
        (a Cholesky factor of a matrix that is not positive definite, say) each chain is
        evaluated alone, and a failing chain's energy is NaN: a divergence, as Pyro's NUTS
        treats it (its registered exception handlers decide what counts as numerical)."""
        self.batched_evals += 1
        try:
            return _value_and_grad(self.potential, z)
        except Exception as exc:  # noqa: BLE001 (re-raised unless numerical)
            if not _numerical(exc):
                raise
        us, gs = [], []
        for c in range(z.shape[0]):
            try:
                with pyro.validation_enabled(False):  # NaN parameters: NaN, not an error
                    u, g = _value_and_grad(self.eager, z[c : c + 1])
            except Exception as exc:  # noqa: BLE001 (re-raised unless numerical)
                if not _numerical(exc):
                    raise
                u, g = z.new_full((1,), math.nan), torch.zeros_like(z[c : c + 1])
            us.append(u)
            gs.append(g)
        return torch.cat(us), torch.cat(gs)

    def _velocity(self, r: torch.Tensor) -> torch.Tensor:
        """M^-1 r for momenta r (C, ..., D)."""
        if self.dense:
            return torch.einsum("cde,c...e->c...d", self.minv, r)
        return self.minv.view(self.minv.shape[0], *([1] * (r.dim() - 2)), -1) * r

    def _kinetic(self, r: torch.Tensor) -> torch.Tensor:
        return 0.5 * (r * self._velocity(r)).sum(-1)

    def _momentum(self) -> torch.Tensor:
        eps = torch.randn(self.shape, generator=self.gen, dtype=self.dtype).to(self.device)
        if self.dense:  # r ~ N(0, M) with M = (L L^T)^-1, L the Cholesky factor of M^-1
            return torch.linalg.solve_triangular(
                self.chol.transpose(-1, -2), eps.unsqueeze(-1), upper=True
            ).squeeze(-1)
        return eps * self.minv.rsqrt()

    def _leapfrog(self, z, r, g, eps):
        """One velocity Verlet step of signed size eps (C,) for every chain."""
        e = eps.unsqueeze(-1)
        r = r - 0.5 * e * g
        z = z + e * self._velocity(r)
        u, g = self._value_and_grad(z)
        return z, r - 0.5 * e * g, u, g

    def _turning(self, r_left, r_right, r_sum) -> torch.Tensor:
        """The generalized U-turn criterion (Betancourt 2017, A.4.2) on the last dim."""
        r_sum = r_sum - 0.5 * (r_left + r_right)
        left = (self._velocity(r_left) * r_sum).sum(-1)
        right = (self._velocity(r_right) * r_sum).sum(-1)
        return (left <= 0) | (right <= 0)

    def _set_mass(self, minv: torch.Tensor, which: torch.Tensor | None = None) -> None:
        if which is None:
            self.minv = minv
        else:
            pick = which.view(-1, *([1] * (minv.dim() - 1)))
            self.minv = torch.where(pick, minv, self.minv)
        if self.dense:
            self.chol = torch.linalg.cholesky(self.minv)

    def _reasonable_step_size(self, z, u, g, step, which):
        """Pyro's heuristic for the chains in ``which``: double (or halve) the step size
        from ``step`` until one leapfrog step's acceptance crosses 0.8. Returns the step
        sizes and the gradient evaluations each chain spent."""
        threshold = math.log(0.8)
        direction = None
        step = step.clone()
        going = which.clone()
        spent = torch.zeros_like(which, dtype=torch.long)
        for _ in range(100):
            r = self._momentum()
            h0 = u + self._kinetic(r)
            _, r1, u1, _ = self._leapfrog(z, r, g, step)
            spent += going
            delta = u1 + self._kinetic(r1) - h0
            up = threshold < -torch.nan_to_num(delta, nan=math.inf)
            if direction is None:
                direction = up
            else:
                going &= up == direction
            if not going.any():
                break
            step = torch.where(going, torch.where(direction, step * 2, step / 2), step)
            going &= (step > 1e-10) & (step < 1e10)
        return step.clamp(1e-10, 1e10), spent

    # --- the run --------------------------------------------------------------------
    def run(self, z0: torch.Tensor, *, num_warmup: int, num_samples: int) -> BatchedRun:
        """``num_warmup`` adapted iterations, then ``num_samples`` kept, from z0 (C, D)."""
        C, D = z0.shape
        dev, dt = z0.device, z0.dtype
        self.shape, self.dtype, self.device = z0.shape, dt, dev
        self.gen = torch.Generator().manual_seed(self.seed)
        total = num_warmup + num_samples
        depth_max = self.max_tree_depth
        rows = torch.arange(C, device=dev)
        # Checkpoints each leaf n of a subtree is checked against, and its slot.
        lo_hi = torch.tensor([_checkpoints(n) for n in range(2 ** (depth_max - 1))], device=dev)
        slots = torch.arange(depth_max, device=dev)
        self._set_mass(
            torch.eye(D, dtype=dt, device=dev).expand(C, D, D).clone()
            if self.dense
            else torch.ones(C, D, dtype=dt, device=dev)
        )
        z = z0.detach().clone()
        u, g = self._value_and_grad(z)
        every = torch.ones(C, dtype=torch.bool, device=dev)
        eps, spent = self._reasonable_step_size(z, u, g, torch.ones(C, dtype=dt, device=dev), every)
        grad_evals = (1 + spent).cpu()
        initial = eps.clone()
        self.initial_step_size = initial
        # Dual averaging of log step sizes, per chain (Pyro's and Stan's constants).
        t0, kappa, gamma = 10.0, 0.75, 0.05
        prox = torch.log(10 * eps)
        da_t = torch.zeros(C, dtype=dt, device=dev)
        g_avg, x_avg = torch.zeros_like(eps), torch.zeros_like(eps)
        windows = adaptation_windows(num_warmup) if num_warmup > 0 else []
        window_end = torch.tensor([w[1] for w in windows] + [-1], device=dev)
        window = torch.zeros(C, dtype=torch.long, device=dev)
        last_window = len(windows) - 1
        w_n = torch.zeros(C, dtype=dt, device=dev)  # Welford's count, mean, M2 per chain
        w_mean = torch.zeros(C, D, dtype=dt, device=dev)
        w_m2 = torch.zeros(C, D, D, dtype=dt, device=dev) if self.dense else w_mean.clone()
        draws = torch.zeros(C, num_samples, D, dtype=dt, device=dev)
        stats = {"n_steps": torch.zeros(C, total, dtype=torch.long),
                 "diverging": torch.zeros(C, total, dtype=torch.bool),
                 "step_size": torch.zeros(C, total, dtype=dt),
                 "accept_prob": torch.zeros(C, total, dtype=dt)}  # fmt: skip
        it = torch.zeros(C, dtype=torch.long, device=dev)
        running = it < total

        def new_tree(mask):
            """Start the next iteration's tree for the chains in mask."""
            nonlocal h0, left_z, left_r, left_g, right_z, right_r, right_g, prop_z, prop_u, prop_g
            nonlocal weight, r_sum, depth, steps, accept_sum, diverged
            r0 = self._momentum()
            m1 = mask.unsqueeze(-1)
            h0 = torch.where(mask, u + self._kinetic(r0), h0)
            left_z, left_r, left_g = (torch.where(m1, a, b) for a, b in
                                      zip((z, r0, g), (left_z, left_r, left_g)))  # fmt: skip
            right_z, right_r, right_g = (torch.where(m1, a, b) for a, b in
                                         zip((z, r0, g), (right_z, right_r, right_g)))  # fmt: skip
            prop_z, prop_g = torch.where(m1, z, prop_z), torch.where(m1, g, prop_g)
            prop_u = torch.where(mask, u, prop_u)
            weight = torch.where(mask, 0.0, weight)
            r_sum = torch.where(m1, r0, r_sum)
            depth = torch.where(mask, 0, depth)
            steps = torch.where(mask, 0, steps)
            accept_sum = torch.where(mask, 0.0, accept_sum)
            diverged = diverged & ~mask
            new_subtree(mask)

        def new_subtree(mask):
            """Begin a doubling, in a random direction, for the chains in mask."""
            nonlocal right_way, leaf_z, leaf_r, leaf_g, sub_w, sub_sum, sub_z, sub_u, sub_g, n
            way = torch.rand(C, generator=self.gen).to(dev) < 0.5
            right_way = torch.where(mask, way, right_way)
            m1, rw = mask.unsqueeze(-1), right_way.unsqueeze(-1)
            leaf_z = torch.where(m1, torch.where(rw, right_z, left_z), leaf_z)
            leaf_r = torch.where(m1, torch.where(rw, right_r, left_r), leaf_r)
            leaf_g = torch.where(m1, torch.where(rw, right_g, left_g), leaf_g)
            sub_w = torch.where(mask, -math.inf, sub_w)
            sub_sum = torch.where(m1, 0.0, sub_sum)
            n = torch.where(mask, 0, n)

        zeros_cd = torch.zeros(C, D, dtype=dt, device=dev)
        h0 = torch.zeros_like(u)
        left_z = left_r = left_g = right_z = right_r = right_g = zeros_cd
        prop_z, prop_u, prop_g = z, u, g
        weight, r_sum = torch.zeros_like(u), zeros_cd
        depth = torch.zeros(C, dtype=torch.long, device=dev)
        steps, accept_sum = torch.zeros_like(depth), torch.zeros_like(u)
        diverged = torch.zeros(C, dtype=torch.bool, device=dev)
        right_way = torch.zeros_like(diverged)
        leaf_z = leaf_r = leaf_g = sub_sum = zeros_cd
        sub_w = torch.zeros_like(u)
        sub_z, sub_u, sub_g = z, u, g
        n = torch.zeros_like(depth)
        ckpt_r = torch.zeros(C, depth_max, D, dtype=dt, device=dev)
        ckpt_sum = torch.zeros_like(ckpt_r)
        new_tree(every)
        self.iterations = it
        while bool(running.any()):
            eps_signed = torch.where(right_way, eps, -eps)
            z1, r1, u1, g1 = self._leapfrog(leaf_z, leaf_r, leaf_g, eps_signed)
            grad_evals += running.cpu()
            delta = torch.nan_to_num(u1 + self._kinetic(r1) - h0, nan=math.inf)
            coins = torch.rand(C, 2, generator=self.gen, dtype=dt).to(dev)
            # Progressive sampling within the subtree.
            new_w = torch.logaddexp(sub_w, -delta)
            take = (coins[:, 0] < torch.exp(-delta - new_w)).unsqueeze(-1)
            sub_z, sub_g = torch.where(take, z1, sub_z), torch.where(take, g1, sub_g)
            sub_u = torch.where(take.squeeze(-1), u1, sub_u)
            sub_w, sub_sum = new_w, sub_sum + r1
            accept_sum = accept_sum + torch.exp(-delta).clamp(max=1.0)
            steps = steps + 1
            leaf_z, leaf_r, leaf_g = z1, r1, g1
            # U-turns of the subtrees this leaf closes, against the checkpoints.
            lo, hi = lo_hi[n, 0], lo_hi[n, 1]
            even = (n % 2 == 0).unsqueeze(-1)
            ckpt_r[rows, hi] = torch.where(even, r1, ckpt_r[rows, hi])
            ckpt_sum[rows, hi] = torch.where(even, sub_sum, ckpt_sum[rows, hi])
            checked = (slots >= lo.unsqueeze(-1)) & (slots <= hi.unsqueeze(-1))
            sums = sub_sum.unsqueeze(1) - ckpt_sum + ckpt_r
            turning = self._turning(ckpt_r, r1.unsqueeze(1).expand_as(ckpt_r), sums)
            turn = (turning & checked).any(-1)
            div = delta > MAX_DELTA_ENERGY
            sub_end = turn | div | (n + 1 == 2**depth)
            n = n + 1
            if not bool(sub_end.any()):
                continue
            # A finished doubling joins the tree (biased progressive sampling).
            ok = sub_end & ~turn & ~div
            take = ok & (coins[:, 1] < torch.exp(sub_w - weight).clamp(max=1.0))
            t1 = take.unsqueeze(-1)
            prop_z, prop_g = torch.where(t1, sub_z, prop_z), torch.where(t1, sub_g, prop_g)
            prop_u = torch.where(take, sub_u, prop_u)
            weight = torch.where(ok, torch.logaddexp(weight, sub_w), weight)
            gr, gl = (ok & right_way).unsqueeze(-1), (ok & ~right_way).unsqueeze(-1)
            leaf = (leaf_z, leaf_r, leaf_g)
            right_z, right_r, right_g = (
                torch.where(gr, a, b) for a, b in zip(leaf, (right_z, right_r, right_g))
            )
            left_z, left_r, left_g = (
                torch.where(gl, a, b) for a, b in zip(leaf, (left_z, left_r, left_g))
            )
            r_sum = torch.where(ok.unsqueeze(-1), r_sum + sub_sum, r_sum)
            depth = depth + sub_end
            diverged = diverged | (sub_end & div)
            whole_turn = self._turning(left_r, right_r, r_sum)
            tree_end = sub_end & (turn | div | whole_turn | (depth >= depth_max))
            grow = sub_end & ~tree_end
            if bool(grow.any()):
                new_subtree(grow)
            done = tree_end & running
            if not bool(done.any()):
                if bool(tree_end.any()):  # chains past their last iteration start again
                    new_tree(tree_end)
                continue
            # Chains whose iteration is over: their draw, statistics and adaptation.
            accept = accept_sum / steps.clamp(min=1)
            z = torch.where(done.unsqueeze(-1), prop_z, z)
            g = torch.where(done.unsqueeze(-1), prop_g, g)
            u = torch.where(done, prop_u, u)
            idx = rows[done]
            at = it[done]
            for key, value in (("n_steps", steps), ("diverging", diverged),
                               ("step_size", eps), ("accept_prob", accept)):  # fmt: skip
                stats[key][idx.cpu(), at.cpu()] = value[done].cpu()
            sampling = done & (it >= num_warmup)
            if bool(sampling.any()):
                draws[rows[sampling], it[sampling] - num_warmup] = z[sampling]
            warm = done & (it < num_warmup)
            if bool(warm.any()):
                da_t = da_t + warm
                tt = da_t.clamp(min=1)
                w = 1.0 / (tt + t0)
                miss = self.target_accept - accept
                g_avg = torch.where(warm, (1 - w) * g_avg + w * miss, g_avg)
                x_t = prox - tt.sqrt() / gamma * g_avg
                weight_t = tt ** (-kappa)
                x_avg = torch.where(warm, (1 - weight_t) * x_avg + weight_t * x_t, x_avg)
                eps = torch.where(warm, torch.exp(x_t), eps)
                mass_phase = warm & (window > 0) & (window < last_window)
                if bool(mass_phase.any()):  # Welford's update of the window's draws
                    w_n = w_n + mass_phase
                    d1 = torch.where(mass_phase.unsqueeze(-1), z - w_mean, 0.0)
                    w_mean = w_mean + d1 / w_n.clamp(min=1).unsqueeze(-1)
                    d2 = z - w_mean
                    w_m2 = w_m2 + (d1.unsqueeze(-1) * d2.unsqueeze(-2) if self.dense else d1 * d2)
                closing = warm & (it == window_end[window])
                if bool(closing.any()):
                    final = closing & (window == last_window)
                    eps = torch.where(final, torch.exp(x_avg), eps)
                    mass_end = closing & (window > 0) & (window < last_window)
                    if bool(mass_end.any()):
                        self._set_mass(_shrunk(w_m2, w_n, self.dense), mass_end)
                        w_n = torch.where(mass_end, 0.0, w_n)
                        w_mean = torch.where(mass_end.unsqueeze(-1), 0.0, w_mean)
                        w_m2 = torch.where(mass_end.view(-1, *[1] * (w_m2.dim() - 1)), 0.0, w_m2)
                        found, spent = self._reasonable_step_size(z, u, g, eps, mass_end)
                        grad_evals += spent.cpu()
                        eps = torch.where(mass_end, found, eps)
                        prox = torch.where(mass_end, torch.log(10 * eps), prox)
                        da_t = torch.where(mass_end, 0.0, da_t)
                        g_avg = torch.where(mass_end, 0.0, g_avg)
                        x_avg = torch.where(mass_end, 0.0, x_avg)
                    window = window + closing
            it = it + done
            running = it < total
            self.grad_evals, self.step_size, self.stats = grad_evals, eps, stats
            self.iterations = it
            if self.on_iteration is not None:
                for c in idx.tolist():
                    self.on_iteration(self, c, int(it[c]) - 1)
            restart = tree_end
            if bool(restart.any()):
                new_tree(restart)
        return BatchedRun(
            z=draws,
            n_steps=stats["n_steps"],
            diverging=stats["diverging"],
            step_size=stats["step_size"],
            accept_prob=stats["accept_prob"],
            grad_evals=grad_evals,
            batched_evals=self.batched_evals,
            initial_step_size=initial.cpu(),
            inverse_mass_matrix=self.minv.cpu(),
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


def _shrunk(m2: torch.Tensor, count: torch.Tensor, dense: bool) -> torch.Tensor:
    """Each chain's covariance (dense) or variances from Welford's sums (M2 and the count n
    of a window's draws), shrunk toward 1e-3 as Stan does: n/(n+5) cov + 1e-3 * 5/(n+5)."""
    n = count.clamp(min=2)
    shape = (-1,) + (1,) * (m2.dim() - 1)
    cov = m2 / (n - 1).view(shape)
    shrink = (1e-3 * 5.0 / (n + 5.0)).view(shape)
    scaled = (n / (n + 5.0)).view(shape) * cov
    if dense:
        eye = torch.eye(m2.shape[-1], dtype=m2.dtype, device=m2.device)
        return scaled + shrink * eye
    return scaled + shrink
