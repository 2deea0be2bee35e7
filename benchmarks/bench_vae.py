"""Cost of training the VAE through the zoo against a plain PyTorch loop, per epoch on digits.

Prints a table (run with ``make bench``); nothing here is a timed test. Two fits train the
same networks on the same rows: the model's ``Decoder`` and an ``MLPEncoder`` (K = 8 latents,
hidden layers 256-256, the same first weights), one particle, the same seeded shuffle of
the fitted rows each epoch cut into minibatches of 128, Adam at ``FitConfig.network_lr``
with every gradient clamped to +-``clip_norm`` (what Pyro's ClippedAdam does), ``EPOCHS``
epochs, no early stopping:

- zoo: ``fit_guide("amortized", post, ...)``, Trace_ELBO's gradients stepped by
  :mod:`guides.optim` inside the loop of :mod:`guides.svi`. Its seconds are
  ``result.wall_s``: every step and the loop's own checks, not the set-up (building the
  networks and the guide, one pass over every row to prime the encoder), which is printed
  apart, once per fit;
- torch: a hand-written loop minimizing the estimator Trace_ELBO computes,
  ``-(N / B) * sum_n [log p(x_n | z_n) + log p(z_n) - log q(z_n | x_n)]`` with
  ``z_n = q.rsample()``: the floor for this architecture.

How to read it: s/epoch are medians of ``ROUNDS`` rounds, each a run of both fits back to
back; ratio is zoo / torch, the median of the rounds' ratios (the goal: 1.3 or less). The
networks are small, so Pyro's fixed cost per step (Python: the model's and guide's traces,
pyro.module) weighs most where the arithmetic is cheapest (float32, 2 threads).
Two threads on two cores collapse when anything else runs (STYLE.md): read those rows only
from a quiet machine (the header gives the load average at the start).
ELBO/row is each fit's ELBO per row on every fitted row after its last run (10 draws of z,
the same for both): the two start alike but are not bitwise equal, so they agree roughly,
not exactly. As the command line does, validation of distributions is off; float64 is the
zoo's default dtype. With a GPU the cuda rows follow the cpu ones.
``--profile`` prints where the zoo's fit spends its time (cProfile, float32, 1 thread).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import sys
import time

import pyro
import torch
from torch.distributions import Normal

from guides import FitConfig, fit_guide
from guides.encoders import ENCODERS
from zoo.vae.posterior import make_posterior

LATENT_DIM, HIDDEN, BATCH, SEED = 8, (256, 256), 128, 0
EPOCHS, ROUNDS, ELBO_DRAWS = 10, 5, 10
OPTIONS = {"global_guide": None, "encoder": "mlp", "hidden": HIDDEN}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def zoo_config(post, epochs: int) -> FitConfig:
    """Exactly ``epochs`` epochs: no plateau stop (min_steps = all steps), no early stop."""
    steps = epochs * -(-post.num_data // BATCH)
    return FitConfig(batch_size=BATCH, num_particles=1, num_steps=steps, min_steps=steps,
                     window=100, patience=None, progress=False)  # fmt: skip


def zoo_fit(post, epochs: int):
    """The zoo's fit: seconds per epoch, set-up seconds, and its encoder and decoder."""
    start = time.perf_counter()
    result = fit_guide("amortized", post, seed=SEED, config=zoo_config(post, epochs),
                       options=OPTIONS)  # fmt: skip
    call = time.perf_counter() - start
    if "restored" in result.info:  # wall_s then counts a re-estimate of the ELBO too
        print(f"  note: the zoo's fit {result.info['restored']}")
    x = post.data["x"]
    nets = (result.guide.encoder(x), result.guide.model.keywords["decoder"])
    return result.wall_s / epochs, call - result.wall_s, nets


def torch_fit(post, epochs: int):
    """The plain PyTorch loop: seconds per epoch and its encoder and decoder."""
    x, config = post.data["x"], zoo_config(post, epochs)
    n, device = x.shape[0], x.device
    decoder = post.build_forms(SEED).local.keywords["decoder"]  # as the zoo's fit builds it
    torch.manual_seed(SEED)  # the zoo's encoder is built right after pyro.set_rng_seed(seed)
    encoder = ENCODERS["mlp"].build(x, LATENT_DIM, hidden_dims=HIDDEN)
    encoder = encoder.to(dtype=x.dtype, device=device)
    params = [*encoder.parameters(), *decoder.parameters()]
    optim = torch.optim.Adam(params, lr=config.network_lr)
    shuffles = torch.Generator().manual_seed(SEED)  # as guides.weights.Batches
    prior = Normal(torch.zeros(LATENT_DIM, dtype=x.dtype, device=device), 1.0)
    torch.manual_seed(SEED)
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=shuffles).split(BATCH):
            batch = x.index_select(0, idx.to(device))
            q = encoder(batch)
            z = q.rsample()
            elbo = decoder(z).log_prob(batch) + prior.log_prob(z).sum(-1) - q.log_prob(z)
            loss = -(n / len(idx)) * elbo.sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, config.clip_norm)
            optim.step()
            loss.item()  # the zoo reads every step's loss too (a sync on a GPU)
    _sync(device)
    return (time.perf_counter() - start) / epochs, (encoder, decoder)


@torch.no_grad()
def elbo_per_row(nets, x: torch.Tensor) -> float:
    """The ELBO per row of ``x``, averaged over ``ELBO_DRAWS`` seeded draws of z."""
    encoder, decoder = nets
    with torch.random.fork_rng(devices=_rng_devices(x.device)):
        torch.manual_seed(SEED + 1)
        q = encoder(x)
        z = q.rsample((ELBO_DRAWS,))
        prior = Normal(torch.zeros(LATENT_DIM, dtype=x.dtype, device=x.device), 1.0)
        elbo = decoder(z).log_prob(x) + prior.log_prob(z).sum(-1) - q.log_prob(z)
    return float(elbo.mean())


def measure(device: str, dtype: torch.dtype, epochs: int, rounds: int) -> dict:
    """Medians of ``rounds`` rounds, each a run of both fits (in alternating order), after a
    short run of each; the ratio is the median of the rounds' ratios (a pair run back to
    back sees the same load)."""
    post = make_posterior("digits", latent_dim=LATENT_DIM, hidden=HIDDEN, dtype=dtype,
                          device=device)  # fmt: skip
    zoo_fit(post, 1)  # one-time costs (allocations, caches) out of the table
    torch_fit(post, 1)
    times: dict[str, list[float]] = {"zoo": [], "torch": [], "setup": []}
    for r in range(rounds):
        for name in ("zoo", "torch") if r % 2 == 0 else ("torch", "zoo"):
            if name == "zoo":
                seconds, setup, zoo_nets = zoo_fit(post, epochs)
                times["setup"].append(setup)
            else:
                seconds, torch_nets = torch_fit(post, epochs)
            times[name].append(seconds)
    x = post.data["x"]
    out = {key: statistics.median(values) for key, values in times.items()}
    ratios = [a / b for a, b in zip(times["zoo"], times["torch"], strict=True)]
    return dict(out, ratio=statistics.median(ratios), elbo_zoo=elbo_per_row(zoo_nets, x),
                elbo_torch=elbo_per_row(torch_nets, x))  # fmt: skip


def profile(epochs: int) -> None:
    """cProfile of the zoo's fit, float32 on one thread (its overhead is largest there)."""
    torch.set_num_threads(1)
    post = make_posterior("digits", latent_dim=LATENT_DIM, hidden=HIDDEN, dtype=torch.float32)
    zoo_fit(post, 1)
    config = zoo_config(post, epochs)
    profiler = cProfile.Profile()
    profiler.runcall(fit_guide, "amortized", post, seed=SEED, config=config, options=OPTIONS)
    print(f"zoo fit of {epochs} epochs, float32, 1 thread (cProfile inflates the Python parts)")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    machine_threads = torch.get_num_threads()  # torch's default: one per core
    logging.getLogger("guides").setLevel(logging.ERROR)  # fixed work: never "converged"
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(False)
    if args.profile:
        profile(args.epochs)
        return 0
    runs = [("cpu", t) for t in sorted({1, machine_threads})]
    if torch.cuda.is_available():
        runs.append(("cuda", 1))
    print(
        f"vae on digits, K={LATENT_DIM}, encoder and decoder {'-'.join(map(str, HIDDEN))},"
        f" batch {BATCH}, 1 particle, {args.epochs} epochs a run, median of {args.rounds}"
        f" alternated runs of each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        " (times from a busy machine are not comparable)"
    )
    print(
        f"{'device':>6} {'dtype':>8} {'threads':>7} {'zoo s/epoch':>12} {'torch s/epoch':>14}"
        f" {'ratio':>6} {'ELBO/row zoo':>13} {'ELBO/row torch':>15}"
    )
    setups = []
    for device, threads in runs:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.float64):
            m = measure(device, dtype, args.epochs, args.rounds)
            setups.append(m["setup"])
            print(
                f"{device:>6} {str(dtype).removeprefix('torch.'):>8} {threads:>7}"
                f" {m['zoo']:12.4f} {m['torch']:14.4f} {m['ratio']:6.2f}"
                f" {m['elbo_zoo']:13.3f} {m['elbo_torch']:15.3f}",
                flush=True,
            )
    print(
        f"the zoo's set-up, outside its s/epoch: {min(setups):.2f}-{max(setups):.2f} s a fit"
        " (networks, guide, one priming pass over every row)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
