"""A two-level (V1/V2) hierarchical VAE of natural image patches.

Model
-----
For rows n = 1..N of D pixels (whitened patches), K2 V2 units and K1 >= D V1 units::

    z2_n        ~ Normal(0, I_K2)                      V2
    z1_n | z2_n ~ Laplace(loc(z2_n), scale(z2_n))      V1: sparse; scale from a perceptron
    x_n  | z1_n ~ Normal(Phi z1_n, sigma^2 I_D)         Phi: V1's projective fields

Phi, the perceptron and sigma are fitted by maximum marginal likelihood through the ELBO;
z1 and z2 are per-row latents. Two guides of the same model are compared
(:mod:`guides.hierarchical`): the chain q(z1 | x) q(z2 | z1) and the top-down
q(z2 | x) q(z1 | z2, x), beside PPCA, a full Gaussian and a one-layer sparse VAE on the same
patches (:mod:`zoo.two_level_vae.evaluate`).
"""

from zoo.two_level_vae.data import DATASETS, load_whitened_patches, whiten
from zoo.two_level_vae.model import HIDDEN, TwoLevelDecoder, model, simulate
from zoo.two_level_vae.posterior import make_posterior

__all__ = [
    "DATASETS",
    "HIDDEN",
    "TwoLevelDecoder",
    "load_whitened_patches",
    "make_posterior",
    "model",
    "simulate",
    "whiten",
]
