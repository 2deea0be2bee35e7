"""The gold standard: p(z1, z2 | x) of a few held-out patches under a trained decoder, by NUTS,
and inpainting.

With the decoder fixed, a patch's latents have the posterior p(z1, z2 | x), which both guide
orders approximate. NUTS samples it for a few rows (:data:`GOLD_ROWS`, one row per run, from
:data:`GOLD_CHAINS` chains), in the non-centred form ``z1 = loc(z2) + scale(z2) * e``,
``e ~ Laplace(0, 1)``: the centred form, where V1's scales are a network of z2, mixed worse
(on a trained decoder, 2 rows, 200 + 200 draws: a smallest bulk ESS of 10 against 26). Against
it (:func:`against_nuts`) each guide's V1 and V2 means (as z-scores in NUTS's sd), sds (as
ratios) and the correlations between the V1 units of a patch: a chain guide's q(z1 | x) is
a diagonal Gaussian and has none; the top-down guide's mixture over z2 can carry some. The
NUTS run of a decoder is kept (:func:`nuts_posterior` is memoized by the decoder's and rows'
bytes), so the methods that share a decoder (a trained model and the refits on it) are
judged against the same draws.

Inpainting (:func:`inpaint_guide`, :func:`inpaint_nuts`, :func:`inpaint_gaussian`): the
central block of a patch (:func:`central_mask`) is hidden and predicted from the rest. An
amortized guide needs a whole patch, so the hidden pixels start at 0 (the data's mean) and
are replaced :data:`INPAINT_STEPS` times by the decoder's mean ``Phi E_q[z1]`` of the filled
patch (the fixed point of Rezende, Mohamed and Wierstra 2014's iteration, with means for
draws). NUTS conditions on the visible pixels alone (its likelihood drops the hidden ones)
and predicts ``Phi E[z1 | visible]``: the model's own best prediction. A full Gaussian fitted
to the training patches predicts by its conditional mean, the best linear prediction.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import multiprocessing
import random
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS

from zoo.tensors import cores, cuda_devices, one_core, to_numpy

#: Held-out rows sampled by NUTS, per preset (each a run of its own).
GOLD_ROWS = {"smoke": 1, "full": 4}
#: Chains per row, and warm-up and kept draws per chain, per preset.
GOLD_CHAINS = 2
GOLD_DRAWS = {"smoke": (300, 300), "full": (1000, 1000)}
#: Draws of a guide per row compared with NUTS's.
GUIDE_DRAWS = 4000
#: Iterations of the guides' inpainting, and the draws per row behind each E_q[z1].
INPAINT_STEPS, INPAINT_DRAWS = 30, 32
#: Held-out rows whose centre the guides inpaint.
INPAINT_ROWS = 200

_CACHE: dict[str, GoldRun] = {}


@dataclass(frozen=True)
class GoldRun:
    """NUTS draws of one decoder's posterior for some rows: z1 (rows, chains, draws, K1)
    and z2 (rows, chains, draws, K2), the hidden pixels' mask (pixels,) (None: all seen),
    and the run's diagnostics."""

    z1: np.ndarray
    z2: np.ndarray | None
    mask: np.ndarray | None
    diagnostics: dict


def central_mask(pixels: int) -> np.ndarray:
    """True for the visible pixels of a square patch with its central block hidden (a third
    of the side, at least 1: 4x4 of 12x12)."""
    side = int(round(pixels**0.5))
    if side * side != pixels:
        raise ValueError(f"inpainting needs square patches; {pixels} pixels are not")
    block = max(1, side // 3)
    lo = (side - block) // 2
    visible = np.ones((side, side), dtype=bool)
    visible[lo : lo + block, lo : lo + block] = False
    return visible.reshape(-1)


def _key(decoder, x: torch.Tensor, mask, settings) -> str:
    h = hashlib.sha256(repr(settings).encode())
    for name, value in sorted(decoder.state_dict().items()):
        h.update(name.encode())
        h.update(to_numpy(value).tobytes())
    h.update(to_numpy(x).tobytes())
    h.update(b"none" if mask is None else np.asarray(mask).tobytes())
    return h.hexdigest()


def _model(x: torch.Tensor, visible: torch.Tensor, *, decoder) -> None:
    """One row's p(e, z2, x): z2 ~ N(0, I), e ~ Laplace(0, 1), z1 = loc(z2) + scale(z2) e,
    the visible pixels of x ~ N(Phi z1, sigma^2)."""
    factory = {"dtype": x.dtype, "device": x.device}
    z2 = None
    if decoder.v2_units:
        z2 = pyro.sample("z2", dist.Normal(torch.zeros(decoder.v2_units, **factory), 1.0)
                         .to_event(1))  # fmt: skip
    e = pyro.sample("e", dist.Laplace(torch.zeros(decoder.v1_units, **factory), 1.0).to_event(1))
    prior = decoder.prior_z1(z2).base_dist
    z1 = prior.loc + prior.scale * e
    pyro.factor("x", (decoder.likelihood(z1).base_dist.log_prob(x) * visible).sum())


def _z1(decoder, e: torch.Tensor, z2: torch.Tensor | None) -> torch.Tensor:
    prior = decoder.prior_z1(z2).base_dist
    return prior.loc + prior.scale * e


def nuts_posterior(decoder, x: torch.Tensor, *, preset: str = "smoke", seed: int = 0,
                   mask: np.ndarray | None = None, progress: bool = False,
                   draws: tuple[int, int] | None = None) -> GoldRun:  # fmt: skip
    """NUTS on p(z1, z2 | x) (or given the visible pixels of ``mask``) of every row of
    ``x`` (rows, pixels) under ``decoder`` (float64 copies, on the CPU; memoized); ``draws``
    (warm-up, kept) per chain in place of the preset's."""
    warmup, draws = draws or GOLD_DRAWS[preset]
    settings = (warmup, draws, GOLD_CHAINS, seed)
    key = _key(decoder, x, mask, settings)
    if key in _CACHE:
        return _CACHE[key]
    dec = _cpu64(decoder)
    xs = x.detach().to("cpu", torch.float64)
    visible = torch.ones(xs.shape[1], dtype=torch.float64)
    if mask is not None:
        visible = torch.as_tensor(mask, dtype=torch.float64)
    start = time.perf_counter()
    z1s, z2s, steps, divergent = _sample_rows(dec, xs, visible, warmup, draws, seed, progress)
    z1 = np.stack(z1s)
    z2 = np.stack(z2s) if z2s else None
    sites = {"z1": z1, **({"z2": z2} if z2 is not None else {})}
    per_row = [az.convert_to_dataset({k: v[r] for k, v in sites.items()}) for r in range(len(z1))]
    ess = min(float(az.ess(d).to_array().min()) for d in per_row)
    rhat = max(float(az.rhat(d).to_array().max()) for d in per_row)
    diagnostics = {
        "gold_rows": len(z1),
        "gold_chains": GOLD_CHAINS,
        "gold_draws": draws,
        "gold_warmup": warmup,
        "gold_ess_bulk_min": ess,
        "gold_rhat_max": rhat,
        "gold_divergences": divergent,
        "gold_step_size_min": min(steps),
        "gold_wall_s": time.perf_counter() - start,
    }
    run = GoldRun(z1, z2, mask, diagnostics)
    _CACHE[key] = run
    return run


@contextlib.contextmanager
def _streams_kept(x: torch.Tensor):
    """Python's, NumPy's and torch's random streams as they were after the block
    (``pyro.set_rng_seed`` seeds all three), on one thread, without the JIT's deprecation
    warning (Pyro's to act on)."""
    states = random.getstate(), np.random.get_state()
    try:
        with one_core(), torch.random.fork_rng(devices=cuda_devices(x)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _sample_rows(dec, xs, visible, warmup: int, draws: int, seed: int, progress: bool):
    """:data:`GOLD_CHAINS` NUTS chains per row (chain c of row r from seed
    ``seed + 1000 r + c``), in parallel processes where there are cores for them (each
    chain on one thread: the draws are those of a run one after another): z1 and z2 draws
    by row, step sizes, and the number of divergent transitions."""
    tasks = [
        (dec, xs[row], visible, warmup, draws, seed + 1000 * row + chain, progress)
        for row in range(len(xs))
        for chain in range(GOLD_CHAINS)
    ]
    # Forked processes (Linux): a spawned one would import the user's script again, which
    # runs it again where it lacks an ``if __name__ == "__main__"`` guard. Elsewhere the
    # chains run one after another.
    workers = min(cores(), len(tasks)) if sys.platform == "linux" else 1
    if workers > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            done = list(pool.map(_chain, tasks))
    else:
        done = [_chain(task) for task in tasks]
    z1s, z2s = [], []
    for row in range(len(xs)):
        mine = done[row * GOLD_CHAINS : (row + 1) * GOLD_CHAINS]
        z1s.append(np.stack([c[0] for c in mine]))
        if mine[0][1] is not None:
            z2s.append(np.stack([c[1] for c in mine]))
    return z1s, z2s, [c[2] for c in done], sum(c[3] for c in done)


def _chain(task) -> tuple[np.ndarray, np.ndarray | None, float, int]:
    """One NUTS chain of one row: z1 and z2 draws, the step size and the divergences."""
    dec, x, visible, warmup, draws, seed, progress = task
    with _streams_kept(x):
        pyro.set_rng_seed(seed)
        kernel = NUTS(functools.partial(_model, decoder=dec), jit_compile=True,
                      ignore_jit_warnings=True, max_tree_depth=10)  # fmt: skip
        mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=not progress)
        mcmc.run(x, visible)
        s = mcmc.get_samples()
        divergent = len(mcmc.diagnostics()["divergences"]["chain 0"])
        with torch.no_grad():
            z1 = to_numpy(_z1(dec, s["e"], s.get("z2")))
        z2 = to_numpy(s["z2"]) if "z2" in s else None
    return z1, z2, float(kernel.step_size), divergent


def _cpu64(decoder):
    return copy.deepcopy(decoder).to("cpu", torch.float64).requires_grad_(False)


def _moments(draws: np.ndarray):
    """Mean, sd and the correlations between units (upper triangle) of draws (S, K)."""
    mean, sd = draws.mean(0), draws.std(0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(draws, rowvar=False)
    upper = np.triu_indices(draws.shape[1], 1)
    return mean, sd, np.nan_to_num(corr[upper])


def against_nuts(sample, x: torch.Tensor, gold: GoldRun, *, seed: int = 0) -> dict:
    """Each layer's posterior means (z-scores in NUTS's sd), sds (ratios to NUTS's) and V1's
    correlations of a guide (``sample(rows, num)``, as in :mod:`.evaluate`) against
    NUTS's draws of the same rows: diagnostics and arrays for the report.

    The noise of NUTS's own estimates is about 1 / sqrt(ESS) in each z-score and each
    correlation (``gold_noise``): errors near it are no errors."""
    with torch.no_grad(), torch.random.fork_rng(devices=cuda_devices(x)):
        torch.manual_seed(seed)
        z, _, _ = sample(x, GUIDE_DRAWS)
    out: dict = {}
    arrays: dict = {}
    for site, ref in (("z1", gold.z1), ("z2", gold.z2)):
        if ref is None or site not in z:
            continue
        q = to_numpy(z[site].double())  # (S, rows, K)
        zs, ratios, corr_q, corr_n, means = [], [], [], [], []
        for r in range(len(ref)):
            m_n, s_n, c_n = _moments(ref[r].reshape(-1, ref.shape[-1]))
            m_q, s_q, c_q = _moments(q[:, r])
            zs.append((m_q - m_n) / s_n)
            ratios.append(s_q / s_n)
            corr_q.append(c_q)
            corr_n.append(c_n)
            means.append(np.stack([m_n, m_q, s_n, s_q]))
        zs, ratios = np.concatenate(zs), np.concatenate(ratios)
        out[f"gold_{site}_mean_z_rms"] = float(np.sqrt(np.mean(zs**2)))
        out[f"gold_{site}_sd_ratio_median"] = float(np.median(ratios))
        out[f"gold_{site}_sd_log_ratio_rms"] = float(np.sqrt(np.mean(np.log(ratios) ** 2)))
        arrays[f"gold_{site}_moments"] = (np.stack(means), ("gold_row", "moment", f"{site}_unit"))
        if site == "z1":
            cq, cn = np.concatenate(corr_q), np.concatenate(corr_n)
            out["gold_z1_corr_nuts_rms"] = float(np.sqrt(np.mean(cn**2)))
            out["gold_z1_corr_nuts_max"] = float(np.max(np.abs(cn)))
            out["gold_z1_corr_guide_rms"] = float(np.sqrt(np.mean(cq**2)))
            out["gold_z1_corr_error_rms"] = float(np.sqrt(np.mean((cq - cn) ** 2)))
            # The share of NUTS's correlations the guide carries (least squares slope of
            # the guide's on NUTS's, over every pair of units): 0 for a diagonal guide.
            out["gold_z1_corr_slope"] = float(np.dot(cq, cn) / np.dot(cn, cn))
            arrays["gold_z1_corr"] = (np.stack([np.stack(corr_n), np.stack(corr_q)]),
                                      ("source", "gold_row", "pair"))  # fmt: skip
    out["gold_noise"] = float(1.0 / np.sqrt(gold.diagnostics["gold_ess_bulk_min"]))
    return {"diagnostics": out, "arrays": arrays}


@torch.no_grad()
def inpaint_guide(decoder, sample, x: torch.Tensor, visible: np.ndarray, *, seed: int = 0):
    """The hidden pixels of every row of ``x`` as the guide fills them (rows, hidden), and
    their RMSE against the truth after each step (:data:`INPAINT_STEPS`,)."""
    hide = torch.as_tensor(~visible, device=x.device)
    truth = x[:, hide]
    filled = x.clone()
    filled[:, hide] = 0.0
    trace = []
    with torch.random.fork_rng(devices=cuda_devices(x)):
        torch.manual_seed(seed)
        for _ in range(INPAINT_STEPS):
            _, _, means = sample(filled, INPAINT_DRAWS)
            filled[:, hide] = decoder.mean(means["z1"].mean(0))[:, hide]
            trace.append(float(torch.sqrt(torch.mean((filled[:, hide] - truth) ** 2))))
    return to_numpy(filled[:, hide]), np.asarray(trace)


def inpaint_nuts(decoder, gold: GoldRun) -> np.ndarray:
    """The hidden pixels of NUTS's rows as ``Phi E[z1 | visible]`` (rows, hidden)."""
    phi = to_numpy(decoder.phi.double())
    mean = gold.z1.reshape(len(gold.z1), -1, gold.z1.shape[-1]).mean(1)
    return (mean @ phi.T)[:, ~gold.mask]


def inpaint_gaussian(train: np.ndarray, x: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The hidden pixels of ``x`` as a full Gaussian fitted to ``train`` predicts them (its
    conditional mean given the visible ones)."""
    mu = train.mean(0)
    cov = np.cov(train, rowvar=False)
    h, v = ~visible, visible
    gain = np.linalg.solve(cov[np.ix_(v, v)], cov[np.ix_(v, h)])
    return mu[h] + (x[:, v] - mu[v]) @ gain


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(truth)) ** 2)))
