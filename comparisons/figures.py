"""Figures of one model (mixture components, PPCA loadings and latents) and of a choice of K,
drawn from the files of an out-dir alone, as the rest of the report is.

Each ``plot_*`` takes the results, the InferenceData of each method and the figure folder,
and returns the sections it adds: (title, file name, caption) triples.
"""

from __future__ import annotations

import html
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

from comparisons.two_level_figures import TWO_LEVEL_FIGURES  # noqa: E402
from comparisons.vae_figures import VAE_FIGURES  # noqa: E402

#: Colours of things that are not methods (mixture components, loading axes, classes).
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
Section = tuple[str, str, str]

#: One colour per method, the same in every figure of every report (a method of one K of a
#: mixture, ``nuts-k3``, has the colour of ``nuts``).
METHOD_COLORS: dict[str, str] = {
    "nuts": "#000000",
    "exact": "#8c564b",
    "ml": "#7f7f7f",
    "em": "#bcbd22",
    "delta": "#d62728",
    "laplace": "#ff7f0e",
    "mean_field": "#1f77b4",
    "low_rank": "#17becf",
    "full_rank": "#2ca02c",
    "flow": "#9467bd",
    "amortized": "#e377c2",
    # The VAE's training variants and baselines.
    "ml_gaussian": "#c7c7c7",
    "amortized_full": "#98df8a",
    "amortized_iwae": "#9c9ede",
    "amortized_autoencoder": "#ff9896",
    "amortized_is": "#f7b6d2",
    "amortized_beta0.25": "#c6dbef",
    "amortized_beta0.5": "#6baed6",
    "amortized_beta2": "#2171b5",
    "amortized_beta4": "#08306b",
    # The two-level VAE's guides and its one-layer baseline.
    "amortized_top_down": "#31a354",
    "amortized_chain": "#e6550d",
    "amortized_sparse": "#756bb1",
}
#: Colours of methods missing from the table, chosen by a stable hash of the name.
_SPARE_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")


def method_color(method: str) -> str:
    """The colour of ``method`` in every figure (its entry in :data:`METHOD_COLORS`)."""
    base = re.sub(r"-k\d+$", "", method)
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    return _SPARE_COLORS[zlib.crc32(base.encode()) % len(_SPARE_COLORS)]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _saved(fig, path: Path, title: str, caption: str) -> list[Section]:
    """Save ``fig`` at ``path``: the one section of the report that shows it."""
    _save(fig, path)
    return [(title, path.name, caption)]


def _mean(idata: az.InferenceData, site: str) -> np.ndarray:
    values = idata.posterior[site].values
    return values.reshape(-1, *values.shape[2:]).mean(0)


def _draws(idata: az.InferenceData, site: str) -> np.ndarray:
    values = idata.posterior[site].values
    return values.reshape(-1, *values.shape[2:])


def _observed(idatas: dict[str, az.InferenceData]) -> tuple[np.ndarray, list[str]]:
    idata = next(iter(idatas.values()))
    x = idata.observed_data["x"]
    names = [str(v) for v in x.coords[x.dims[1]].values]
    return x.values, names


def _grid(n: int, ncol: int = 4, size: tuple[float, float] = (3.2, 3.0)):
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(size[0] * ncol, size[1] * nrow), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


# --------------------------------------------------------------------------- mixtures


def plot_gmm_components(results, idatas, fig_dir: Path) -> list[Section]:
    """Every method's components over the data: ellipses of 2 sds at the posterior means on
    the first two features (densities for one feature), the draws of the component means as
    a cloud, the truth dashed where known."""
    if not idatas:
        return []
    x, names = _observed(idatas)
    truth = results.get("truth")
    methods = list(idatas)
    fig, axes = _grid(len(methods))
    for ax, method in zip(axes, methods):
        idata = idatas[method]
        weights, locs, scales = (_mean(idata, s) for s in ("weights", "locs", "scales"))
        if x.shape[1] == 1:
            _mixture_density(
                ax, x[:, 0], weights, locs[:, 0], scales[:, 0], truth, method_color(method)
            )
        else:
            ax.scatter(x[:, 0], x[:, 1], s=4, color="0.7")
            cloud = _draws(idata, "locs")
            if len(cloud) > 1:
                take = np.random.default_rng(0).permutation(len(cloud))[:300]
                for k in range(locs.shape[0]):
                    ax.scatter(
                        cloud[take, k, 0], cloud[take, k, 1], s=2, alpha=0.3, color=COLORS[k % 10]
                    )
            for k in range(locs.shape[0]):
                _ellipse(ax, locs[k, :2], scales[k, :2], COLORS[k % 10], "-", 0.5 + weights[k])
            if truth is not None:
                for loc, scale in zip(np.asarray(truth["locs"]), np.asarray(truth["scales"])):
                    _ellipse(ax, loc[:2], scale[:2], "black", "--", 1.0)
            ax.set_xlabel(names[0], fontsize=8)
            ax.set_ylabel(names[1], fontsize=8)
        ax.set_title(method, fontsize=9)
    caption = (
        "Each panel: the data (grey) and one method's components at its posterior mean, "
        "ellipses of 2 sds (line width grows with the weight); coloured dots are draws of "
        "the component means, so a method that stays in one mode shows one tight cloud per "
        "component. Components are relabelled (sorted by the first coordinate of the means, "
        "or matched to the reference) before any summary."
        + (" Dashed: the true components." if truth is not None else "")
    )
    if x.shape[1] > 2:
        caption += f" Only the first two of {x.shape[1]} features are drawn."
    return _saved(fig, fig_dir / "components.png", "Fitted components", caption)


def _ellipse(ax, loc, scale, color, style, width) -> None:
    ax.add_patch(
        Ellipse(loc, 4 * scale[0], 4 * scale[1], fill=False, color=color, ls=style, lw=width)
    )


def _mixture_density(ax, x, weights, locs, scales, truth, color: str) -> None:
    grid = np.linspace(x.min() - 0.1 * np.ptp(x), x.max() + 0.1 * np.ptp(x), 300)
    ax.hist(x, bins=40, density=True, color="0.8")

    def density(w, m, s):
        return (
            w[:, None]
            * np.exp(-0.5 * ((grid - m[:, None]) / s[:, None]) ** 2)
            / (s[:, None] * np.sqrt(2 * np.pi))
        ).sum(0)

    ax.plot(grid, density(weights, locs, scales), color=color)
    if truth is not None:
        ax.plot(
            grid,
            density(
                np.asarray(truth["weights"]),
                np.asarray(truth["locs"])[:, 0],
                np.asarray(truth["scales"])[:, 0],
            ),
            "k--",
            lw=1,
        )


# --------------------------------------------------------------------------- PPCA


def _principal(idata: az.InferenceData, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Loadings of a PPCA method in the principal-axes rotation, W = U (L - s^2)^1/2 from the
    eigendecomposition of its posterior-mean covariance, with all eigenvalues and sigma."""
    w, sigma = _draws(idata, "loadings"), _draws(idata, "sigma")
    cov = np.einsum("sdk,sek->de", w, w) / len(w) + np.mean(sigma**2) * np.eye(w.shape[1])
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    s2 = float(np.mean(sigma**2))
    loadings = evecs[:, :k] * np.sqrt(np.clip(evals[:k] - s2, 0.0, None))
    return loadings, evals, float(np.sqrt(s2))


def plot_ppca_loadings(results, idatas, fig_dir: Path) -> list[Section]:
    """The K loading vectors of every method, rotated to principal axes (raw W is identified
    only up to rotation), as images for square pixel grids (digits), else as bars."""
    if not idatas:
        return []
    first = next(iter(idatas.values()))
    k = first.posterior.sizes["latent"]
    d = first.posterior.sizes["feature"]
    side = int(round(np.sqrt(d)))
    image = side * side == d and d >= 16
    methods = list(idatas)
    ref = _principal(idatas[methods[0]], k)[0]
    fig, axes = plt.subplots(
        len(methods), k, figsize=(1.6 * k + 1, 1.6 * len(methods)), squeeze=False
    )
    for row, method in zip(axes, methods):
        loadings, _, _ = _principal(idatas[method], k)
        signs = np.sign(np.sum(loadings * ref, axis=0))  # align signs with the first method
        loadings = loadings * np.where(signs == 0, 1.0, signs)
        for j, ax in enumerate(row):
            if image:
                top = np.abs(loadings[:, j]).max() or 1.0
                ax.imshow(loadings[:, j].reshape(side, side), cmap="RdBu_r", vmin=-top, vmax=top)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.bar(np.arange(d), loadings[:, j], color=COLORS[j % 10])
                ax.set_xticks([])
            if j == 0:
                ax.set_ylabel(method, fontsize=8)
            if row is axes[0]:
                ax.set_title(f"axis {j + 1}", fontsize=8)
    return _saved(
        fig,
        fig_dir / "loadings.png",
        "Loadings in principal axes",
        "Rows: methods; columns: the K loading vectors of each method's posterior-mean "
        "covariance C = W W^T + sigma^2 I, rotated to its principal axes (W itself is "
        "identified only up to a rotation, so raw draws of W are not comparable), signs "
        "aligned with the first row."
        + (" Each vector is drawn as an image of the pixel grid." if image else ""),
    )


def plot_ppca_spectrum(results, idatas, fig_dir: Path) -> list[Section]:
    """Eigenvalues of each method's posterior-mean covariance beside those of the data."""
    if not idatas:
        return []
    x, _ = _observed(idatas)
    data = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    k = next(iter(idatas.values())).posterior.sizes["latent"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    shown = min(len(data), max(3 * k, 10))
    ax.plot(np.arange(1, shown + 1), data[:shown], "ko-", ms=3, label="data (sample covariance)")
    for method, idata in idatas.items():
        _, evals, _ = _principal(idata, k)
        ax.plot(
            np.arange(1, shown + 1), evals[:shown], lw=1, color=method_color(method), label=method
        )
    ax.axvline(k + 0.5, color="0.6", ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("component", fontsize=8)
    ax.set_ylabel("variance", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    explained = data[:k].sum() / data.sum()
    return _saved(
        fig,
        fig_dir / "spectrum.png",
        "Explained variance",
        f"Eigenvalues of each method's covariance C against the data's. PPCA keeps the "
        f"first K = {k} (left of the dotted line; {explained:.0%} of the variance) and "
        "puts every other eigenvalue at sigma^2, the mean of the discarded ones.",
    )


def plot_ppca_latents(results, idatas, fig_dir: Path) -> list[Section]:
    """The amortized encoder's latent means of every row, coloured by a known class."""
    latents = {
        m: i for m, i in idatas.items() if "constant_data" in i and "z_mean" in i.constant_data
    }
    if not latents:
        return []
    method, idata = next(iter(latents.items()))
    z = idata.constant_data["z_mean"].values
    labels = idata.constant_data["row_label"].values if "row_label" in idata.constant_data else None
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1] if z.shape[1] > 1 else np.zeros(len(z)), s=4)
    else:
        for i, label in enumerate(np.unique(labels)):
            pick = labels == label
            ax.scatter(
                z[pick, 0],
                z[pick, 1] if z.shape[1] > 1 else np.zeros(pick.sum()),
                s=4,
                color=COLORS[i % 10],
                label=str(label),
            )
        ax.legend(fontsize=7, markerscale=3, ncol=2)
    ax.set_xlabel("z[0]", fontsize=8)
    ax.set_ylabel("z[1]", fontsize=8)
    return _saved(
        fig,
        fig_dir / "latents.png",
        "Latent means of the encoder",
        f"The mean of q(z | x) that the {html.escape(method)} guide's encoder gives each "
        "row, first two latent coordinates"
        + (
            ", coloured by the known class (never seen by any method)."
            if labels is not None
            else "."
        )
        + " One forward pass per row: the cost of a new row does not grow with the data.",
    )


def plot_ppca_cov_error(results, idatas, fig_dir: Path) -> list[Section]:
    """Rotation-free accuracy per method: relative error of C and the largest principal angle."""
    rows = [
        (m, r["metrics"])
        for m, r in results["methods"].items()
        if "cov_rel_error" in r.get("metrics", {}) and m != results.get("reference")
    ]
    if not rows:
        return []
    names = [m for m, _ in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in (
        (axes[0], "cov_rel_error", "||C - C_ref||_F / ||C_ref||_F"),
        (axes[1], "subspace_angle_max_deg", "largest principal angle (deg)"),
    ):
        values = [metrics.get(key, np.nan) for _, metrics in rows]
        ax.bar(range(len(names)), values, color=[method_color(m) for m in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
    return _saved(
        fig,
        fig_dir / "cov_error.png",
        "Error of the covariance",
        f"Against the reference ({html.escape(str(results.get('reference')))}), on what the"
        " data identify: the covariance C = W W^T + "
        "sigma^2 I of the posterior means and the principal subspace of W (raw W would "
        "differ by an arbitrary rotation). A method whose draws spread along a flat "
        "direction (Laplace with a singular Hessian) has a large C error.",
    )


# --------------------------------------------------------------------------- choosing K


def plot_selection(results, fig_dir: Path) -> list[Section]:
    """ELPD (LOO), ELBO and BIC against the number of components."""
    selection = results.get("selection")
    if not selection:
        return []
    rows = selection["criteria"]
    chosen = selection["chosen"]
    panels = [
        ("elpd_loo", "ELPD (PSIS-LOO of NUTS): higher is better"),
        ("elbo", "ELBO (mean-field): higher is better"),
        ("bic", "BIC (EM): lower is better"),
    ]
    panels = [(key, title) for key, title in panels if any(key in r for r in rows)]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        have = [r for r in rows if key in r]
        ks = [r["k"] for r in have]
        values = [r[key] for r in have]
        if key == "elpd_loo":
            ax.errorbar(ks, values, yerr=[r.get("elpd_loo_se", 0) for r in have], fmt="o-")
        else:
            ax.plot(ks, values, "o-")
        if key in chosen:
            ax.axvline(chosen[key], color="red", ls=":", lw=1)
        ax.set_xticks(ks)
        ax.set_xlabel("K", fontsize=8)
        ax.set_title(title, fontsize=9)
    return _saved(
        fig,
        fig_dir / "selection.png",
        "Choosing the number of components",
        "Each criterion against K, its choice marked in red. ELPD estimates the "
        "predictive density of new rows (error bars: its standard error); the ELBO is a "
        "lower bound on the log evidence, loose by the guide's gap; BIC is a large-sample "
        "approximation to -2 log evidence at EM's maximum.",
    )


#: Figures of each model, in report order.
MODEL_FIGURES: dict[str, tuple[Callable[..., list[Section]], ...]] = {
    "gmm": (plot_gmm_components,),
    "ppca": (plot_ppca_loadings, plot_ppca_spectrum, plot_ppca_latents, plot_ppca_cov_error),
    "vae": VAE_FIGURES,
    "two_level_vae": TWO_LEVEL_FIGURES,
}
