"""Amortized guides: an encoder network q(z_n | x_n) for per-datapoint latents, beside a
point or mean-field guide for the global latents."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule

from guides.encoders import ENCODERS
from guides.whiten import WhitenedDiagonalNormal, WhitenedPoint
from zoo import LocalLatents, ZooInputError
from zoo.tensors import to_numpy

#: Guides for the global latents of an amortized guide.
GLOBAL_GUIDES = {"delta": WhitenedPoint, "mean_field": WhitenedDiagonalNormal}


class AmortizedGuide(PyroModule):
    """q(globals) q(z | x): a guide over the global latents (``global_guide``: a point or
    mean-field, over the model with ``local.site`` hidden) and, for every row of the data
    plate, ``local.site`` ~ a Gaussian q(z_n | x_n) given by an encoder network.

    The encoder's cost does not grow with the number of rows: one set of weights serves
    every row, and a new row gets its q(z | x) from one forward pass (the amortization).
    Its family is narrower than one free Gaussian per row: the gap between the best encoder
    and the best per-row Gaussians is the *amortization gap* (Cremer et al. 2018).

    The encoder is registered with ``pyro.module``, so :func:`guides.fit` steps its weights
    at ``FitConfig.network_lr`` (0.003), the globals' at ``FitConfig.lr``.

    Parameters
    ----------
    model : callable
        The model with explicit local latents (e.g. ``Posterior.local_model``).
    local : LocalLatents or tuple of LocalLatents
        Which sites are local, their sizes, the data keyword each encoder reads and the
        plate; one encoder a site, each reading the data (``Posterior.locals``).
    encoder : str
        A key of :data:`guides.encoders.ENCODERS` (``linear``, ``mlp``, ``mlp_full``,
        ``mlp_delta``).
    hidden : tuple of int, optional
        The hidden layer widths of a perceptron encoder (its default where None).
    global_guide : str or None
        ``delta`` (a point in unconstrained coordinates) or ``mean_field``; None for a
        model whose only latents are the local ones (e.g. one with its globals fixed by
        ``poutine.condition``).
    init_loc_fn, shift, scale
        Where the global guide starts and its whitening (see :mod:`guides.whiten`).
    """

    def __init__(
        self,
        model: Callable[..., object],
        *,
        local: LocalLatents | tuple[LocalLatents, ...],
        encoder: str = "linear",
        hidden: tuple[int, ...] | None = None,
        global_guide: str | None = "delta",
        init_loc_fn=None,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            from guides.hierarchical import ORDERS

            raise ZooInputError(
                f"unknown encoder '{encoder}'; choose one of: {', '.join([*ENCODERS, *ORDERS])}"
            )
        if global_guide is not None and global_guide not in GLOBAL_GUIDES:
            raise ZooInputError(
                f"unknown guide for the globals '{global_guide}'; choose one of:"
                f" {', '.join(GLOBAL_GUIDES)}"
            )
        self.locals = (local,) if isinstance(local, LocalLatents) else tuple(local)
        self.local = self.locals[0]
        self.encoder_name = encoder
        spec = ENCODERS[encoder]
        if hidden is not None and not spec.hidden:
            raise ZooInputError(f"encoder '{encoder}' has no hidden layers; drop hidden=")
        self._build_options = {} if hidden is None else {"hidden_dims": tuple(hidden)}
        self.global_guide_name = global_guide
        self.model = model
        kwargs = {} if init_loc_fn is None else {"init_loc_fn": init_loc_fn}
        self.globals = (
            None
            if global_guide is None
            else GLOBAL_GUIDES[global_guide](
                poutine.block(model, hide=[site.site for site in self.locals]),
                shift=shift,
                scale=scale,
                **kwargs,
            )
        )
        self._encoders: dict[str, torch.nn.Module] = {}
        #: While True, the globals are drawn without gradient: an SVI step trains the
        #: encoder alone (the warm-up of :func:`guides.fit_guide`).
        self.freeze_globals = False

    @property
    def needs_warm_up(self) -> bool:
        """The encoder first learns alone, the globals held at their start (see
        :func:`guides.fit_guide`), where there are globals."""
        return self.globals is not None

    @property
    def has_density(self) -> bool:
        """Draws of the globals come with log q (a mean-field guide of them, not a point)."""
        return self.global_guide_name == "mean_field"

    def per_row(self, data) -> dict[str, tuple[object, tuple[str, ...]]]:
        """The encoders' latent means of every row of ``data``, with their dims, for the
        report (``<site>_mean``: (obs, latent) for the first site, (obs, latent_<site>) for
        the others)."""
        out = {}
        for site in self.locals:
            dim = "latent" if site is self.local else f"latent_{site.site}"
            means = to_numpy(self.latent_means(data[site.input], site))
            out[f"{site.site}_mean"] = (means, ("obs", dim))
        return out

    def describe(self) -> dict[str, object]:
        """Notes on the fitted guide for its diagnostics."""
        notes: dict[str, object] = {"encoder": self.encoder_name}
        if self.globals is not None:
            notes["global_guide"] = self.global_guide_name
        return notes

    def encoder(self, x: torch.Tensor, site: LocalLatents | None = None) -> torch.nn.Module:
        """The encoder module of ``site`` (the first local site by default), built on first
        use, when the input width is known."""
        site = site or self.local
        if site.site not in self._encoders:
            module = ENCODERS[self.encoder_name].build(x.detach(), site.dim, **self._build_options)
            self._encoders[site.site] = module.to(dtype=x.dtype, device=x.device)
        return self._encoders[site.site]

    def forward(self, *args, **kwargs):
        values = {}
        if self.globals is not None:
            with torch.set_grad_enabled(not self.freeze_globals):
                values = self.globals(*args, **kwargs)
        for site in self.locals:
            x = kwargs[site.input]
            name = "encoder" if site is self.local else f"encoder_{site.site}"
            net = pyro.module(f"{self._pyro_name}.{name}", self.encoder(x, site))
            size = x.shape[-2]
            subsample = kwargs.get("subsample_size")
            with pyro.plate(site.plate, size, subsample_size=subsample) as idx:
                values[site.site] = pyro.sample(site.site, net(x[idx]))
        return values

    @torch.no_grad()
    def latent_means(self, x: torch.Tensor, site: LocalLatents | None = None) -> torch.Tensor:
        """The mean of q(z | x) for every row of ``x`` (N, K), of ``site`` (the first)."""
        return self.encoder(x, site)(x).mean


def build_amortized(model: Callable[..., object], *, encoder: str = "linear", **options):
    """The ``amortized`` family's guide: :class:`AmortizedGuide` (one encoder a local site),
    or for ``encoder="chain"`` or ``"top_down"`` the encoders of two layers of per-row latents
    in that order (:class:`guides.hierarchical.HierarchicalGuide`)."""
    from guides.hierarchical import ORDERS, HierarchicalGuide

    if encoder in ORDERS:
        return HierarchicalGuide(model, order=encoder, **options)
    return AmortizedGuide(model, encoder=encoder, **options)
