"""The variational autoencoder (Kingma and Welling 2014; Rezende, Mohamed and Wierstra 2014).

Model
-----
For rows n = 1..N of D values x_n and a latent dimension K::

    z_n       ~ Normal(0, I_K)                    per row (local)
    x_n | z_n ~ p(x | decoder(z_n))               Gaussian, Bernoulli or continuous Bernoulli

The decoder is a network of the model, fitted as a point (maximum marginal likelihood
through the ELBO); there are no global latent sites. An encoder q(z | x) is a guide
(``amortized``, :mod:`guides.encoders`). With a linear decoder, a Gaussian likelihood and
one shared scale the model is probabilistic PCA (Tipping and Bishop 1999), whose maximum
likelihood the linear VAE reaches.

A comparison trains variants of the model (the standard VAE, a full-covariance encoder,
the importance-weighted bound, an autoencoder, beta weights) beside PPCA and a full Gaussian
on the same rows, and measures each on held-out rows (:mod:`zoo.vae.evaluate`).

References
----------
Kingma and Welling (2014), *Auto-encoding variational Bayes*, ICLR.
Burda, Grosse and Salakhutdinov (2016), *Importance weighted autoencoders*, ICLR.
Cremer, Li and Duvenaud (2018), *Inference suboptimality in variational autoencoders*, ICML.
Higgins et al. (2017), *beta-VAE*, ICLR. Alemi et al. (2018), *Fixing a broken ELBO*, ICML.
Loaiza-Ganem and Cunningham (2019), *The continuous Bernoulli*, NeurIPS.
"""

from zoo.vae.data import DATASETS, ImageData, load_array, load_digits, load_patches
from zoo.vae.model import HIDDEN, LIKELIHOODS, SCALES, Decoder, model, simulate
from zoo.vae.posterior import (
    CALIBRATION_ROWS,
    LATENT_DIM,
    SIMULATION_DESIGN,
    make_posterior,
    simulated_posterior,
    simulation_design,
    trained_networks,
    training_methods,
)

__all__ = [
    "SIMULATION_DESIGN",
    "CALIBRATION_ROWS",
    "DATASETS",
    "HIDDEN",
    "LATENT_DIM",
    "LIKELIHOODS",
    "SCALES",
    "Decoder",
    "ImageData",
    "load_array",
    "load_digits",
    "load_patches",
    "make_posterior",
    "simulated_posterior",
    "simulation_design",
    "trained_networks",
    "model",
    "simulate",
    "training_methods",
]
