"""The variational autoencoder's generative model: z_n ~ N(0, I_K), x_n | z_n from a decoder.

The decoder is a network of the model (its weights are maximum-marginal-likelihood point
estimates, registered with ``pyro.module``); the per-row latent ``z`` is the only latent
site. Encoders are guides (:mod:`guides.encoders`), never part of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from zoo.tensors import to_numpy

#: The likelihoods p(x | z) and what each needs of the data.
LIKELIHOODS = {
    "gaussian": "Normal(decoder(z), scale): a density for any real data; scale learned",
    "bernoulli": "Bernoulli(sigmoid(decoder(z))) on values in [0, 1]: the usual VAE loss, but"
    " for values between 0 and 1 not a normalized density (log p(x) is not comparable)",
    "continuous_bernoulli": "ContinuousBernoulli(sigmoid(decoder(z))): a normalized density on"
    " [0, 1] (Loaiza-Ganem and Cunningham 2019)",
}
#: How the Gaussian likelihood's scale is shared: one per pixel, or one for all.
SCALES = ("pixel", "shared")
#: The floor of the Gaussian likelihood's scale, in the units of the data.
MIN_SCALE = 1e-3
#: The default hidden layer widths of the decoder.
HIDDEN = (256, 256)


class Decoder(nn.Module):
    """z (..., K) -> p(x | z), a distribution with event shape (D,).

    ``hidden`` widths of a perceptron with softplus activations; ``()`` gives a *linear*
    decoder (loc = W z + b), with which the Gaussian likelihood and ``scale="shared"`` make
    the model probabilistic PCA. ``likelihood`` is a key of :data:`LIKELIHOODS`; the
    Gaussian's scale is ``softplus(raw) + min_scale``, one per pixel or shared.
    Weights are drawn in ``dtype`` on ``device`` (whatever torch's default dtype).
    ``data_mean`` (D,), where given, starts the output bias at the data's mean (or its
    logit), so that training begins from the best constant reconstruction.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden: Sequence[int] = HIDDEN,
        *,
        likelihood: str = "gaussian",
        scale: str = "pixel",
        min_scale: float = MIN_SCALE,
        data_mean: torch.Tensor | None = None,
        data_sd: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood '{likelihood}'; choose one of: {', '.join(LIKELIHOODS)}"
            )
        if scale not in SCALES:
            raise ValueError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
        self.latent_dim, self.data_dim = latent_dim, data_dim
        self.likelihood, self.min_scale = likelihood, min_scale
        layers: list[nn.Module] = []
        width = latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h, **factory), nn.Softplus()]
            width = h
        layers.append(nn.Linear(width, data_dim, **factory))
        self.net = nn.Sequential(*layers)
        out = layers[-1]
        if data_mean is not None:
            with torch.no_grad():
                mean = data_mean.to(out.bias.dtype)
                if likelihood != "gaussian":
                    mean = torch.logit(mean.clamp(1e-3, 1 - 1e-3))
                out.bias.copy_(mean)
        size = data_dim if scale == "pixel" else 1
        start = 1.0 if data_sd is None else max(float(data_sd), 2 * min_scale)
        # softplus^-1 of the starting scale (less the floor)
        raw = torch.log(torch.expm1(torch.tensor(start - min_scale, **factory)))
        self.raw_scale = (
            nn.Parameter(raw.expand(size).clone()) if likelihood == "gaussian" else None
        )

    def scale(self) -> torch.Tensor:
        """The Gaussian likelihood's scale, (D,) or (1,)."""
        return softplus(self.raw_scale) + self.min_scale

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        out = self.net(z)
        if self.likelihood == "gaussian":
            return dist.Normal(out, self.scale().expand_as(out)).to_event(1)
        if self.likelihood == "bernoulli":
            # Values between 0 and 1 are allowed (the cross-entropy), hence no validation.
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.ContinuousBernoulli(logits=out).to_event(1)

    @torch.no_grad()
    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z], the reconstruction (for every likelihood)."""
        return self(z).mean


def model(
    x: torch.Tensor | None = None,
    *,
    decoder: Decoder,
    num_data: int | None = None,
    fixed: bool = False,
) -> torch.Tensor:
    """z_n ~ N(0, I_K); x_n | z_n ~ decoder(z_n), for the rows of ``x`` (or ``num_data``
    rows drawn from the model).

    The decoder's weights are parameters of the model (``pyro.module("decoder", ...)``):
    fitting a guide trains them by maximum marginal likelihood (through the ELBO). With
    ``fixed`` they are constants: the posterior p(z | x, decoder) that per-row guides and
    NUTS are compared on.
    """
    net = decoder if fixed else pyro.module("decoder", decoder)
    param = next(decoder.parameters())
    rows = x.shape[0] if x is not None else num_data
    zeros = torch.zeros(decoder.latent_dim, dtype=param.dtype, device=param.device)
    with pyro.plate("data", rows):
        z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
        return pyro.sample("x", net(z), obs=x)


def simulate(
    seed: int,
    *,
    num_data: int = 200,
    data_dim: int = 6,
    latent_dim: int = 2,
    hidden: Sequence[int] = (16,),
    noise: float = 0.1,
    test_fraction: float = 0.25,
):
    """Rows from the model with a random decoder (seeded weights, Gaussian noise of sd
    ``noise``), split into fitted and held-out rows: an :class:`~zoo.vae.data.ImageData`
    (each row a 1 x ``data_dim`` "image") and the decoder that made them."""
    from zoo.vae.data import ImageData

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = Decoder(latent_dim, data_dim, hidden)
    with torch.no_grad():
        z = torch.randn(num_data, latent_dim, generator=generator, dtype=torch.float64)
        eps = torch.randn(num_data, data_dim, generator=generator, dtype=torch.float64)
        x = to_numpy(decoder.net(z) + noise * eps)
    cut = num_data - max(1, int(round(test_fraction * num_data)))
    data = ImageData(
        train=x[:cut], test=x[cut:], train_labels=None, test_labels=None,
        image_shape=(data_dim,), name="simulated",
        description=f"{num_data} rows from simulate({seed}): a random decoder with"
        f" {latent_dim} latents, noise sd {noise}",
        levels=None, bounded=False,
    )  # fmt: skip
    return data, decoder
