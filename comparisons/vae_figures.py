"""Figures of the variational autoencoder's comparison (``zoo compare vae``), drawn from the
files of an out-dir alone: what :mod:`zoo.vae.evaluate` stores in each trained method's
``constant_data`` and the metrics of results.json.

Each ``plot_vae_*`` takes the results, the InferenceData of each method and the figure
folder, and returns the sections it adds (none when its data are absent); every caption is
written from the numbers it shows.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from comparisons.metrics import KHAT_BAD  # noqa: E402

#: The classical baselines, fitted in closed form, and their names in the figures.
BASELINES = {"ml": "PPCA", "ml_gaussian": "full Gaussian"}
#: The sets of inputs unlike the data that the outlier scores are judged on, and what each is.
OOD_SETS = {
    "noise": "uniform noise",
    "patches": "natural image patches",
    "shifted": "the held-out images shifted 2 pixels",
    "inverted": "the held-out images inverted (1 - x)",
}
#: Neighbours of the latent map's nearest-neighbour accuracy.
NEIGHBOURS = 5
#: Colours of classes (digit labels), as in comparisons.figures.
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
FONT = 8
Section = tuple[str, str, str]


def _color(method: str) -> str:
    # Imported here: comparisons.figures imports this module to register its figures.
    from comparisons.figures import method_color

    return method_color(method)


def _saved(fig, path: Path, title: str, caption: str) -> list[Section]:
    """Save ``fig`` at ``path`` (the look of comparisons.figures): the section that shows it."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [(title, path.name, caption)]


def _esc(method: str) -> str:
    return html.escape(str(method))


def _names(items: list[str]) -> str:
    """The items as a phrase: a; a and b; a, b and c."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _float(value) -> float:
    """A number of results.json as a float (non-finite ones are spelled as strings there)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metric(results: dict, method: str, key: str, group: str = "metrics") -> float:
    return _float(results["methods"].get(method, {}).get(group, {}).get(key))


def _signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}g}"


def _constant(idata: az.InferenceData, name: str) -> np.ndarray | None:
    if "constant_data" not in idata.groups() or name not in idata.constant_data:
        return None
    return np.asarray(idata.constant_data[name].values)


def _holding(results: dict, idatas: dict, *names: str) -> dict[str, dict[str, np.ndarray]]:
    """The arrays ``names`` of every method (in the results' order) that holds all of them."""
    out = {}
    for method in results.get("methods", {}):
        idata = idatas.get(method)
        if idata is None:
            continue
        arrays = {name: _constant(idata, name) for name in names}
        if all(a is not None and a.size for a in arrays.values()):
            out[method] = arrays
    return out


def _image_shape(results: dict) -> tuple[int, int] | None:
    """Height and width of the images (``posterior.image_shape`` as "8x8"); None for rows
    that are not images ("64")."""
    found = re.fullmatch(
        r"\s*(\d+)\s*x\s*(\d+)\s*", str(results.get("posterior", {}).get("image_shape", ""))
    )
    return (int(found[1]), int(found[2])) if found else None


def _attrs(idata: az.InferenceData) -> dict:
    """The attrs holding a method's objective trace (as comparisons.report reads them)."""
    if "zoo" in idata.attrs or "posterior" not in idata.groups():
        return idata.attrs
    return idata.posterior.attrs


# --------------------------------------------------------------------------- log p(x)


@dataclass
class _LogPx:
    """The numbers of the log p(x) figure, per trained method (the baselines' by name)."""

    trained: list[str]
    lpd: dict[str, float]
    elbo: dict[str, float]
    se: dict[str, float]
    base: dict[str, float]
    bad: dict[str, tuple[int | None, int | None]]


def _log_px_numbers(results: dict, idatas: dict) -> _LogPx | None:
    """Held-out log p(x), ELBO, standard error and PSIS-flagged rows of every trained method
    with a finite log p(x), and the baselines' exact log p(x); None without such a method."""
    methods = results.get("methods", {})
    trained = [
        m for m in methods if m not in BASELINES and math.isfinite(_metric(results, m, "lpd_test"))
    ]
    if not trained:
        return None
    base = {m: _metric(results, m, "lpd_test") for m in BASELINES if m in methods}
    rows = {m: _constant(idatas[m], "log_px") if m in idatas else None for m in trained}
    return _LogPx(
        trained=trained,
        lpd={m: _metric(results, m, "lpd_test") for m in trained},
        elbo={m: _metric(results, m, "elbo_test") for m in trained},
        se={m: np.std(r) / np.sqrt(len(r)) if r is not None else math.nan for m, r in rows.items()},
        base={m: v for m, v in base.items() if math.isfinite(v)},
        bad={m: _bad_rows(results, idatas, m) for m in trained},
    )


def plot_vae_log_px(results, idatas, fig_dir: Path) -> list[Section]:
    """Held-out log p(x) of every trained method beside its ELBO, the baselines as lines."""
    d = _log_px_numbers(results, idatas)
    if d is None:
        return []
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(d.trained) + 3), 3.8))
    _draw_log_px_points(ax, d)
    handles = _log_px_handles(ax, d)
    ax.set_xticks(range(len(d.trained)), d.trained, rotation=20, ha="right", fontsize=FONT)
    ax.set_xlim(-0.6, len(d.trained) - 0.4)
    ax.set_ylabel("nats per held-out image", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    _mark_bad_rows(ax, d)
    ax.legend(handles=handles, fontsize=FONT - 1, loc="best")
    return _saved(fig, fig_dir / "vae_log_px.png", "Held-out log p(x)", _log_px_caption(results, d))


def _finite_se(d: _LogPx, method: str) -> float | None:
    """The standard error of ``method``'s log p(x); None when it is not finite."""
    return d.se[method] if math.isfinite(d.se[method]) else None


def _draw_log_px_points(ax, d: _LogPx) -> None:
    """Each method's log p(x) with its error bar, and its ELBO as an open circle beside it."""
    for i, m in enumerate(d.trained):
        color = _color(m)
        ax.errorbar(i - 0.1, d.lpd[m], yerr=_finite_se(d, m), fmt="o", color=color, ms=7, capsize=3)
        if math.isfinite(d.elbo[m]):
            ax.plot([i - 0.1, i + 0.15], [d.lpd[m], d.elbo[m]], color=color, lw=0.8)
            ax.plot(i + 0.15, d.elbo[m], "o", mfc="white", mec=color, ms=7)


def _log_px_handles(ax, d: _LogPx) -> list:
    """Draw the baselines as horizontal lines; the legend's handles of the whole figure."""
    handles = [Line2D([], [], marker="o", color="0.3", ls="", label="log p(x), 1 se")]
    if any(math.isfinite(v) for v in d.elbo.values()):
        handles.append(Line2D([], [], marker="o", mfc="white", mec="0.3", ls="", label="ELBO"))
    styles = {"ml": "--", "ml_gaussian": "-."}
    for m, value in d.base.items():
        label = f"{BASELINES[m]}: {value:.4g}"
        handles.append(ax.axhline(value, color=_color(m), ls=styles[m], lw=1.2, label=label))
    return handles


def _mark_bad_rows(ax, d: _LogPx) -> None:
    """Under each method's point, in red, how many of its rows have PSIS k above KHAT_BAD."""
    for i, m in enumerate(d.trained):
        bad, rows_k = d.bad[m]
        if bad:
            ax.annotate(
                f"k > {KHAT_BAD}: {bad}" + (f"/{rows_k}" if rows_k else ""),
                (i - 0.1, d.lpd[m] - (_finite_se(d, m) or 0.0)),
                xytext=(0, -6),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=FONT - 1,
                color="#a00",
            )


def _log_px_caption(results: dict, d: _LogPx) -> str:
    """The caption of the log p(x) figure."""
    return (
        _log_px_method_text(results, d)
        + _log_px_baselines_text(d)
        + _log_px_spread_text(d)
        + _log_px_khat_text(d)
    )


def _log_px_method_text(results: dict, d: _LogPx) -> str:
    """How log p(x) was estimated (on how many rows, with how many samples), and the ELBO."""
    measured = {_metric(results, m, "measured_rows", "diagnostics") for m in d.trained}
    measured = {int(v) for v in measured if math.isfinite(v)}
    n = measured.pop() if len(measured) == 1 else results.get("num_test")
    samples = {_metric(results, m, "iw_samples", "diagnostics") for m in d.trained}
    samples = {int(s) for s in samples if math.isfinite(s)}
    text = (
        f"Mean log p(x) of the {n or ''} held-out images, in nats per image (higher is better), "
        "estimated by importance weighting"
        + (f" with {_names([str(s) for s in sorted(samples)])} samples" if samples else "")
        + " per row from a mixture built on each method's encoder (its q, q widened 1.5 times"
        " and a tenth of the prior; around the point of an encoder without a density, half"
        " the prior); error bars: one standard error over the rows."
    )
    if any(math.isfinite(v) for v in d.elbo.values()):
        text += " Open circles: the ELBO of the same rows, which log p(x) must exceed."
    return text


def _differences(d: _LogPx, methods: list[str], baseline: str, paren: bool = False) -> str:
    """Each method with its log p(x) less that of ``baseline`` (in brackets if ``paren``)."""
    ref = d.base[baseline]
    form = "{} ({})" if paren else "{} {}"
    return ", ".join(form.format(_esc(m), _signed(d.lpd[m] - ref)) for m in methods)


def _log_px_baselines_text(d: _LogPx) -> str:
    """The baselines' log p(x), and which methods beat them by how much."""
    text = ""
    if d.base:
        text += (
            " Lines: "
            + "; ".join(f"{BASELINES[m]} ({_esc(m)}, exact) {v:.4g}" for m, v in d.base.items())
            + "."
        )
    if "ml" in d.base:
        above = [m for m in d.trained if d.lpd[m] > d.base["ml"]]
        below = [m for m in d.trained if d.lpd[m] <= d.base["ml"]]
        if above:
            text += " Above PPCA: " + _differences(d, above, "ml", paren=True) + "."
        else:
            text += " No method beats PPCA."
        if below:
            text += " At or below PPCA: " + _differences(d, below, "ml", paren=True) + "."
    if "ml_gaussian" in d.base:
        text += (
            " Against the full Gaussian: "
            + _differences(d, d.trained, "ml_gaussian")
            + " nats per image."
        )
    return text


def _log_px_spread_text(d: _LogPx) -> str:
    """The standard errors' range, and the gap of log p(x) over the ELBO of each method."""
    text = ""
    ses = [v for v in d.se.values() if math.isfinite(v)]
    if ses:
        spread = f"{min(ses):.2g}" if len(ses) == 1 else f"{min(ses):.2g} to {max(ses):.2g}"
        text += (
            f" The standard errors ({spread}) are over rows; every method is measured on the"
            " same rows, so a difference between two is known more closely than they suggest."
        )
    gaps = [f"{_esc(m)} {d.lpd[m] - d.elbo[m]:.3g}" for m in d.trained if math.isfinite(d.elbo[m])]
    if gaps:
        text += " log p(x) - ELBO: " + ", ".join(gaps) + "."
    iwae = [m for m in d.trained if "iwae" in m and math.isfinite(d.elbo[m])]
    if iwae:
        text += (
            f" {_names([_esc(m) for m in iwae])} trained its encoder for the importance-"
            "weighted bound, not the ELBO, so a wide gap there is by design."
        )
    return text


def _log_px_khat_text(d: _LogPx) -> str:
    """The rows whose importance weights PSIS flags, and what that means for the estimate."""
    khat = [
        f"{_esc(m)} {bad}" + (f" of {rows_k}" if rows_k else "")
        for m, (bad, rows_k) in d.bad.items()
        if bad is not None
    ]
    flagged = [m for m, (bad, _) in d.bad.items() if bad]
    text = ""
    if khat:
        text += (
            f" Rows whose importance weights have PSIS k &gt; {KHAT_BAD} (in red on the figure): "
            + ", ".join(khat)
            + "."
        )
    if flagged:
        text += (
            f" On those rows the estimate is unreliable and most likely too low (importance "
            f"weighting is a lower bound in expectation), so the log p(x) of "
            f"{_names([_esc(m) for m in flagged])} may be higher than drawn: "
            + ("its distances" if len(flagged) == 1 else "their distances")
            + " to the baselines are less certain than the error bars say."
        )
    return text


def _bad_rows(results: dict, idatas: dict, method: str) -> tuple[int | None, int | None]:
    """Held-out rows of ``method`` whose PSIS k exceeds KHAT_BAD, and of how many (from the
    per-row array, else the diagnostic's count alone)."""
    k = _constant(idatas[method], "log_px_khat") if method in idatas else None
    if k is not None:
        return int(np.sum(k > KHAT_BAD)), len(k)
    bad = _metric(results, method, "iw_khat_bad", "diagnostics")
    return (int(bad), None) if math.isfinite(bad) else (None, None)


# --------------------------------------------------------------------------- images


def plot_vae_images(results, idatas, fig_dir: Path) -> list[Section]:
    """Held-out images, each method's reconstructions and its samples from the prior."""
    shape = _image_shape(results)
    if shape is None:
        return []
    found = _holding(results, idatas, "x_shown", "reconstruction", "prior_sample")
    pixels = shape[0] * shape[1]
    found = {m: a for m, a in found.items() if all(v.shape[-1] == pixels for v in a.values())}
    if not found:
        return []
    methods = list(found)
    x = next(iter(found.values()))["x_shown"]
    rows = [("held-out", x)]
    rows += [(f"{m}\nreconstr.", found[m]["reconstruction"]) for m in methods]
    rows += [(f"{m}\nprior sample", found[m]["prior_sample"]) for m in methods]
    ncol = max(len(r) for _, r in rows)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        hi = lo + 1.0
    cell = 0.65  # inches per image, whatever its pixels
    fig, axes = plt.subplots(
        len(rows),
        ncol,
        squeeze=False,
        figsize=(
            1.6 + cell * ncol * shape[1] / max(shape),
            cell * len(rows) * shape[0] / max(shape) + 0.3,
        ),
    )
    _draw_image_rows(axes, rows, shape, lo, hi)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    caption = _images_caption(found, x, shape, lo, hi)
    return _saved(fig, fig_dir / "vae_images.png", "Reconstructions and samples", caption)


def _draw_image_rows(axes, rows: list, shape: tuple[int, int], lo: float, hi: float) -> None:
    """Each row of images in its line of axes, on one grey scale, labelled at the left."""
    for (label, images), line in zip(rows, axes):
        for j, ax in enumerate(line):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images):
                ax.axis("off")
                continue
            ax.imshow(
                np.clip(images[j].reshape(shape), lo, hi),
                cmap="gray_r",
                vmin=lo,
                vmax=hi,
                interpolation="nearest",
            )
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=FONT - 1)


def _images_caption(found: dict, x: np.ndarray, shape: tuple[int, int], lo, hi) -> str:
    """The caption of the reconstructions and samples."""
    methods = list(found)
    mse = {m: float(np.mean((found[m]["reconstruction"] - x) ** 2)) for m in methods}
    return (
        f"Top row: the first {len(x)} held-out images ({shape[0]}x{shape[1]}). Then each "
        "method's reconstruction of them, E[x | z] at the mean of q(z | x); then E[x | z] for "
        f"{_names([str(len(found[m]['prior_sample'])) for m in methods[:1]])} draws of z from "
        "the prior N(0, I), the same draws for every method. These are decoder means, not "
        "draws of x, so they are smoother than real images. Mean squared error per pixel of "
        "the reconstructions: "
        + ", ".join(f"{_esc(m)} {mse[m]:.3g}" for m in methods)
        + f" (the variance of these images' pixels is {float(np.var(x)):.3g}). Grey scale "
        f"from {lo:.3g} to {hi:.3g} (the images' range), values outside it clipped."
    )


# --------------------------------------------------------------------------- latent map


def _knn_accuracy(z: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour vote for the label on ``z``."""
    d = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1)[:, :k]
    votes = labels[near]
    hits = 0
    for row, label in zip(votes, labels):
        values, counts = np.unique(row, return_counts=True)
        hits += values[np.argmax(counts)] == label
    return hits / len(labels)


def _grid(n: int, width: float, height: float):
    """A figure of ``n`` panels, at most three a row, each ``width`` by ``height`` inches
    (the spare ones blank): the figure and its axes."""
    ncol = min(3, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, height * nrow), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, axes


def _label_panel(ax, title: str, xlabel: str, ylabel: str | None = None) -> None:
    """Title and axis labels of one method's panel, in the figures' small font."""
    ax.set_title(title, fontsize=FONT + 1)
    ax.set_xlabel(xlabel, fontsize=FONT)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)


def _labels_of(idata: az.InferenceData, rows: int) -> np.ndarray | None:
    """The known class of each of the ``rows`` held-out rows; None when not stored for all."""
    labels = _constant(idata, "test_label")
    return labels if labels is not None and len(labels) == rows else None


def plot_vae_latents(results, idatas, fig_dir: Path) -> list[Section]:
    """The encoder's mean of every held-out row, for two latents, coloured by a known class."""
    found = _holding(results, idatas, "z_test_mean")
    found = {
        m: a["z_test_mean"]
        for m, a in found.items()
        if a["z_test_mean"].ndim == 2 and a["z_test_mean"].shape[1] == 2
    }
    if not found:
        return []
    labels = {m: _labels_of(idatas[m], len(z)) for m, z in found.items()}
    fig, axes = _grid(len(found), 3.8, 3.5)
    for ax, (m, z) in zip(axes.flat, found.items()):
        _draw_latents(ax, m, z, labels[m])
    caption = _latents_caption(results, found, labels)
    return _saved(fig, fig_dir / "vae_latents.png", "Latent map", caption)


def _draw_latents(ax, method: str, z: np.ndarray, labels: np.ndarray | None) -> None:
    """One method's latent means, coloured by class where the labels are known."""
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=5, color=_color(method))
    else:
        for i, label in enumerate(np.unique(labels)):
            pick = labels == label
            ax.scatter(z[pick, 0], z[pick, 1], s=5, color=COLORS[i % 10], label=str(label))
        ax.legend(
            fontsize=FONT - 2,
            markerscale=2.5,
            ncol=2,
            handletextpad=0.1,
            columnspacing=0.5,
            loc="best",
        )
    _label_panel(ax, method, "z[0]", "z[1]")


def _latent_text(results: dict, method: str, z: np.ndarray, labels) -> tuple[str, float]:
    """The sds of a method's latent means, its active units and its neighbours' accuracy;
    and the accuracy of always guessing the commonest class (nan where none is given)."""
    sd = np.std(z, axis=0)
    text = f"{_esc(method)}: sd {sd[0]:.2g} and {sd[1]:.2g}"
    active = _metric(results, method, "active_units")
    if math.isfinite(active):
        text += f" ({int(active)} of 2 active)"
    if labels is None or len(z) <= NEIGHBOURS or len(np.unique(labels)) <= 1:
        return text, math.nan
    text += f", {NEIGHBOURS}-neighbour accuracy {_knn_accuracy(z, labels):.0%}"
    return text, np.max(np.unique(labels, return_counts=True)[1]) / len(labels)


def _latents_caption(results: dict, found: dict, labels: dict) -> str:
    """The caption of the latent map."""
    said, chance = [], math.nan
    for m, z in found.items():
        text, guess = _latent_text(results, m, z, labels[m])
        said.append(text)
        chance = guess if math.isfinite(guess) else chance
    return (
        "The mean of q(z | x) that each method's encoder gives every held-out row, on the two"
        " latent coordinates"
        + (
            ", coloured by the known class (no method ever saw it)."
            if any(v is not None for v in labels.values())
            else "."
        )
        + " The prior is N(0, I): the means of a latent the decoder uses spread with an sd"
        " up to 1 (the narrower q(z | x), the closer to 1), those of an unused one stay near"
        " 0 (active: the means' variance over rows above 0.01); an autoencoder's point has"
        " no prior pull and any scale. Per method, the sds of the two coordinates"
        + (
            f" and how often a vote of the {NEIGHBOURS} nearest other rows gives the right "
            f"class (leave-one-out; always guessing the commonest class: {chance:.0%})"
            if math.isfinite(chance)
            else ""
        )
        + ": "
        + "; ".join(said)
        + "."
    )


# --------------------------------------------------------------------------- training


def _steps_per_epoch(steps: int, checks: int) -> int | None:
    """Steps of one epoch, from a trace of ``steps`` steps and ``checks`` validation checks
    (one at the end of every epoch but a last one cut short, so checks * E <= steps <=
    (checks + 1) * E; floor(steps / checks) is E whenever checks exceed E)."""
    if checks < 1 or steps < checks:
        return None
    return max(1, steps // checks)


def _training_traces(results: dict, idatas: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per trained method with an objective trace: the trace per row fitted and the
    validation ELBO at the end of each epoch (empty when none was recorded)."""
    num_data = _float(results.get("num_data"))
    found = {}
    for m in _holding(results, idatas, "log_px"):
        attrs = _attrs(idatas[m])
        if "elbo" not in attrs or not num_data > 0:
            continue
        trace = np.atleast_1d(np.asarray(attrs["elbo"], dtype=float)) / num_data
        valid = _constant(idatas[m], "validation_elbo")
        found[m] = (trace, valid if valid is not None else np.zeros(0))
    return {m: v for m, v in found.items() if len(v[0])}


def plot_vae_training(results, idatas, fig_dir: Path) -> list[Section]:
    """Per trained method: the training ELBO per row (the mean of each epoch's steps) and the
    validation ELBO per row at the end of each epoch."""
    found = _training_traces(results, idatas)
    if not found:
        return []
    fig, axes = _grid(len(found), 3.9, 3.1)
    said, in_epochs = [], True
    for ax, (m, (trace, valid)) in zip(axes.flat, found.items()):
        text, by_epoch = _draw_training(ax, results, m, trace, valid)
        said.append(text)
        in_epochs = in_epochs and by_epoch
    caption = _training_caption(found, _float(results.get("num_data")), said, in_epochs)
    return _saved(fig, fig_dir / "vae_training.png", "Training curves", caption)


def _training_curves(trace: np.ndarray, valid: np.ndarray):
    """Steps per epoch (None when the validation checks do not give it), the x of every
    step and its unit, and the smoothed curve with its x: the mean of each whole epoch, else
    a running mean over a fiftieth of the steps."""
    epoch = _steps_per_epoch(len(trace), len(valid))
    if epoch is not None and len(trace) < epoch:
        epoch = None
    steps = np.arange(1, len(trace) + 1)
    if epoch is None:
        w = max(1, len(trace) // 50)
        smooth = np.convolve(trace, np.ones(w) / w, mode="valid")
        return None, steps, "step", smooth, np.arange(w, len(trace) + 1)
    whole = len(trace) // epoch
    smooth = trace[: whole * epoch].reshape(whole, epoch).mean(1)
    return epoch, steps / epoch, "epoch", smooth, np.arange(1, whole + 1) - 0.5


def _draw_training(ax, results: dict, m: str, trace, valid) -> tuple[str, bool]:
    """One method's panel of training curves: what its caption says of it, and whether its
    x axis is in epochs."""
    epoch, x_raw, unit, smooth, x_smooth = _training_curves(trace, valid)
    color = _color(m)
    ax.plot(x_raw, trace, color=color, lw=0.4, alpha=0.3)
    ax.plot(x_smooth, smooth, color=color, lw=1.6, label="training")
    shown = [smooth[len(smooth) // 10 :]]
    text = f"{_esc(m)}: {len(trace)} steps"
    if epoch is not None:
        checks = np.arange(1, len(valid) + 1)
        ax.plot(checks, valid, "--", color="black", lw=0.9, label="validation")
        best = int(np.argmax(valid))
        ax.plot(best + 1, valid[best], "*", color="red", ms=9, label="best (kept)")
        shown.append(valid[len(valid) // 10 :])
        text += _validation_text(results, m, len(trace) / epoch, valid, smooth, best)
    else:
        text += f", training ELBO {smooth[-max(1, len(smooth) // 10) :].mean():.4g} at the end"
    _cut_y(ax, np.concatenate(shown), smooth)
    _label_panel(ax, m, unit, "ELBO per row (nats)")
    ax.legend(fontsize=FONT - 2)
    return text, epoch is not None


def _validation_text(results: dict, m: str, epochs: float, valid, smooth, best: int) -> str:
    """The epochs run, the best validation ELBO (the kept epoch) and how the rest compare."""
    text = f" ({epochs:.3g} epochs), best validation ELBO {valid[best]:.4g} at epoch {best + 1}"
    if "early_stopped" in results["methods"][m].get("diagnostics", {}):
        text += f" (kept; the fit stopped {len(valid) - 1 - best} epochs later)"
    if best < len(smooth):
        text += f", training ELBO {smooth[best]:.4g} in that epoch"
    test = _metric(results, m, "elbo_test")
    if math.isfinite(test) and "iwae" not in m:
        text += f", test rows' ELBO {test:.4g}"
    if best < len(valid) - 1:
        text += f"; validation at the last epoch {valid[-1]:.4g} ({valid[-1] - valid[best]:+.3g})"
    return text


def _cut_y(ax, values: np.ndarray, smooth: np.ndarray) -> None:
    """Limit the y axis to the ``values`` shown (the first tenth of the curves left out)."""
    values = values[np.isfinite(values)]
    if len(values):
        lo, hi = float(values.min()), float(max(values.max(), np.max(smooth)))
        span = max(hi - lo, 1e-6 * max(1.0, abs(hi)))
        ax.set_ylim(lo - 0.15 * span, hi + 0.15 * span)


def _training_caption(found: dict, num_data: float, said: list[str], in_epochs: bool) -> str:
    """The caption of the training curves."""
    return (
        "The objective per row of the rows fitted (the per-step minibatch estimate of the "
        f"whole set's ELBO, divided by its {int(num_data)} rows): faint, every step; solid, "
        "the mean of each epoch. Dashed black: the ELBO per row of the validation rows (never "
        "fitted) at the end of each epoch; the red star marks the best, whose parameters "
        "are the ones measured. "
        + (
            "The x axis is epochs (steps / steps per epoch, read off the number of "
            "validation checks). "
            if in_epochs
            else "The x axis is SVI steps (no validation checks were recorded). "
        )
        + "The y axis is cut below to leave out the first tenth of the epochs. Training "
        "above validation at the kept epoch means the decoder fits its own rows better than "
        "new ones, though the sets of rows differ in how hard they are (the test rows' ELBO, "
        "where given, is a third set); a validation ELBO that falls after its best shows "
        "overfitting or an unstable end of training (the kept parameters are from before it). "
        + "; ".join(said)
        + "."
        + _training_notes(found)
    )


def _training_notes(found: dict) -> str:
    """What the curves of the IWAE, beta and autoencoder variants are instead of the ELBO."""
    kinds = []
    if any("iwae" in m for m in found):
        kinds.append("for amortized_iwae both curves are its importance-weighted bound")
    if any(re.search(r"beta", m) for m in found):
        kinds.append(
            "for a beta variant the training curve weighs the KL by beta, the validation "
            "curve does not"
        )
    if any("autoencoder" in m for m in found):
        kinds.append(
            "for the autoencoder both are log p(x, z) at its point, not a bound on log p(x)"
        )
    return " Note: " + "; ".join(kinds) + "." if kinds else ""


# --------------------------------------------------------------------------- gaps


def plot_vae_gaps(results, idatas, fig_dir: Path) -> list[Section]:
    """Per method with a density: the amortization and approximation gaps of each row."""
    found = _holding(results, idatas, "amortization_gap_row", "approximation_gap_row")
    if not found:
        return []
    fig, axes = plt.subplots(1, len(found), figsize=(3.6 * len(found) + 0.5, 3.2), squeeze=False)
    said = []
    for ax, (m, arrays) in zip(axes.flat, found.items()):
        amort, approx = arrays["amortization_gap_row"], arrays["approximation_gap_row"]
        _draw_gaps(ax, m, amort, approx)
        said.append(_gap_text(results, idatas, m, amort, approx))
    axes.flat[0].set_ylabel("nats per image", fontsize=FONT)
    return _saved(
        fig, fig_dir / "vae_gaps.png", "Inference gaps per row", _gaps_caption(found, said)
    )


def _draw_gaps(ax, method: str, amort: np.ndarray, approx: np.ndarray) -> None:
    """One method's two gaps, each sorted over the rows, with their means dotted."""
    for values, name, color in ((approx, "approximation", "C0"), (amort, "amortization", "C1")):
        ax.plot(
            np.arange(1, len(values) + 1),
            np.sort(values),
            color=color,
            label=f"{name}: mean {np.mean(values):.3g}",
        )
        ax.axhline(np.mean(values), color=color, ls=":", lw=1)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_yscale("symlog", linthresh=1.0)  # the bulk near 0 and a tail of a few rows
    low, high = min(approx.min(), amort.min(), 0.0), max(approx.max(), amort.max(), 1.0)
    ax.set_ylim(1.5 * low - 0.1, 1.5 * high)
    _label_panel(ax, method, "rows, each gap sorted")
    ax.legend(fontsize=FONT - 1)


def _gap_text(results: dict, idatas: dict, m: str, amort: np.ndarray, approx: np.ndarray) -> str:
    """What the caption says of one method's gaps: means, medians, which dominates, the rows
    with a negative approximation gap and whether the per-row fits converged."""
    lead = "amortization" if np.mean(amort) > np.mean(approx) else "approximation"
    text = (
        f"{_esc(m)}: approximation {np.mean(approx):.3g}, amortization "
        f"{np.mean(amort):.3g} over {len(amort)} rows (medians {np.median(approx):.3g} "
        f"and {np.median(amort):.3g}; {lead} dominates; amortization the larger on "
        f"{np.mean(amort > approx):.0%} of the rows)"
    )
    below = approx < 0
    if below.any():
        text += (
            f"; {int(below.sum())} rows with an approximation gap below 0 (down to "
            f"{approx.min():.3g})"
        )
        khat = _constant(idatas[m], "log_px_khat")
        if khat is not None and len(khat) >= len(approx):
            bad = int(np.sum(khat[: len(approx)][below] > KHAT_BAD))
            text += f", {bad} of them with k &gt; {KHAT_BAD}"
    if results["methods"].get(m, {}).get("diagnostics", {}).get("gap_fits_converged") is False:
        text += (
            " - its per-row fits had not converged, so its amortization gap is "
            "understated and its approximation gap overstated"
        )
    return text


def _gaps_caption(found: dict, said: list[str]) -> str:
    """The caption of the inference gaps."""
    counts = sorted({str(len(a["amortization_gap_row"])) for a in found.values()}, key=int)
    iwae = [m for m in found if "iwae" in m]
    return (
        "Why log p(x) exceeds the ELBO, row by row (Cremer, Li and Duvenaud 2018): "
        "log p(x) - ELBO(encoder) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(encoder)], the "
        "approximation gap (what the encoder's family of q cannot capture of p(z | x)) plus "
        "the amortization gap (what the encoder loses by predicting q from x instead of "
        "fitting each row), with q* the best member of the encoder's own family (a diagonal "
        "or a full-covariance Gaussian) fitted to each row alone, the decoder fixed. Each "
        "gap's rows are sorted separately; dotted lines are the means; "
        "the y axis is linear within 1 nat of 0 and logarithmic beyond. "
        f"The rows are the first {_names(counts)} held-out rows. A negative approximation "
        "gap cannot be true: there the importance-weighted log p(x), whose proposal is built "
        "on the encoder, fell below the ELBO of q*: noise when it is a hair below 0, an estimate "
        "that is too low when it is far below (PSIS k &gt; 0.7 flags some of these rows), "
        "and the mean approximation gap is understated by such rows. Per method (nats per "
        "image): "
        + "; ".join(said)
        + "."
        + (
            f" {_names([_esc(m) for m in iwae])} trained its encoder for the importance-"
            "weighted bound, not the ELBO: that bound favours wider proposals than the ELBO's "
            "best, so a large amortization gap is expected of it, not a failure to fit."
            if iwae
            else ""
        )
    )


# --------------------------------------------------------------------------- rate-distortion


def _beta(method: str) -> float | None:
    if method == "amortized":
        return 1.0
    found = re.fullmatch(r"amortized_beta([0-9.]+)", method)
    return float(found[1]) if found else None


def _rd_points(results: dict) -> dict[str, tuple[float, float]]:
    """Held-out rate and distortion of every method with both."""
    points = {}
    for m in results.get("methods", {}):
        rate = _metric(results, m, "kl_z", "diagnostics")
        recon = _metric(results, m, "reconstruction_test")
        if math.isfinite(rate) and math.isfinite(recon):
            points[m] = (rate, -recon)
    return points


def plot_vae_rate_distortion(results, idatas, fig_dir: Path) -> list[Section]:
    """KL (rate) against -reconstruction (distortion) of each method with both."""
    points = _rd_points(results)
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(5.8, 4.0))
    betas = sorted((b, m) for m in points if (b := _beta(m)) is not None)
    best = min(points, key=lambda m: sum(points[m]))
    _draw_rd_points(ax, points, betas)
    if len(points) > 1:
        _draw_iso_elbo(ax, points, best)
    ax.set_xlabel("rate R: KL(q(z | x) || p(z)), nats", fontsize=FONT)
    ax.set_ylabel("distortion D: -E_q log p(x | z), nats", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    caption = _rd_caption(points, betas, best)
    return _saved(fig, fig_dir / "vae_rate_distortion.png", "Rate and distortion", caption)


def _draw_rd_points(ax, points: dict, betas: list) -> None:
    """Each method's point, named, and a grey line through the beta variants in order."""
    if len(betas) > 1:
        ax.plot(
            [points[m][0] for _, m in betas],
            [points[m][1] for _, m in betas],
            color="0.6",
            lw=0.8,
            zorder=1,
        )
    for m, (rate, dist) in points.items():
        ax.scatter(rate, dist, s=40, color=_color(m), zorder=2)
        ax.annotate(m, (rate, dist), xytext=(4, 4), textcoords="offset points", fontsize=FONT - 1)


def _draw_iso_elbo(ax, points: dict, best: str) -> None:
    """A dotted line of the points with the ELBO of ``best``, over the rates shown."""
    total = sum(points[best])
    rates = np.array([p[0] for p in points.values()])
    grid = np.linspace(rates.min(), rates.max(), 2)
    pad = 0.1 * max(np.ptp(rates), 1e-3)
    grid = np.array([grid[0] - pad, grid[1] + pad])
    label = f"R + D = {total:.4g} (-ELBO of {best})"
    ax.plot(grid, total - grid, ":", color="0.4", lw=1, label=label)
    ax.legend(fontsize=FONT - 1)


def _rd_caption(points: dict, betas: list, best: str) -> str:
    """The caption of rate and distortion."""
    caption = (
        "Held-out rate (the KL of q(z | x) from the prior: the nats the code carries per "
        "image) against distortion (minus the expected log-likelihood of the image given its "
        "code), per image; -ELBO = R + D. "
        + "; ".join(f"{_esc(m)}: R {r:.3g}, D {d:.4g}" for m, (r, d) in points.items())
        + "."
    )
    if any(d < 0 for _, d in points.values()):
        caption += (
            " D is below 0 here: the density of continuous pixels can exceed 1, so only "
            "differences in D say anything."
        )
    if len(points) == 1:
        caption += (
            " Only one method has both numbers: one point shows no trade-off. The beta "
            "variants (--methods amortized_beta0.25,amortized_beta4,...) trace the curve."
        )
    else:
        caption += (
            f" Dotted: points of the same ELBO as the best ({_esc(best)}); a point above it "
            "has a lower ELBO."
        )
    return caption + _beta_text(points, betas)


def _beta_text(points: dict, betas: list) -> str:
    """Whether the rate of the beta variants falls as beta grows (empty for fewer than two)."""
    if len(betas) <= 1:
        return ""
    rates = [points[m][0] for _, m in betas]
    falls = all(a >= b for a, b in zip(rates, rates[1:]))
    return (
        " Grey line: the beta variants in order of beta ("
        + ", ".join(f"{b:g}" for b, _ in betas)
        + "), where a larger beta should buy a lower rate with more distortion; here the "
        + ("rate falls" if falls else "rate does not fall")
        + " steadily as beta grows."
    )


# --------------------------------------------------------------------------- outliers

#: Names of the outlier scores in the figure and caption.
_SCORE_NAMES = {"logpx": "-log p(x)", "kl": "KL"}


def _outlier_table(results: dict):
    """The columns (set of outliers, score) and rows (methods) with any AUC, and the AUCs
    (nan where missing); None when there are none."""
    methods = results.get("methods", {})
    columns = [
        (name, score)
        for name in OOD_SETS
        for score in ("logpx", "kl")
        if any(f"auc_{score}_{name}" in r.get("diagnostics", {}) for r in methods.values())
    ]
    rows = [
        m
        for m, r in methods.items()
        if any(f"auc_{s}_{n}" in r.get("diagnostics", {}) for n, s in columns)
    ]
    if not columns or not rows:
        return None
    table = np.array(
        [[_metric(results, m, f"auc_{s}_{n}", "diagnostics") for n, s in columns] for m in rows]
    )
    return columns, rows, table


def plot_vae_outliers(results, idatas, fig_dir: Path) -> list[Section]:
    """ROC AUC of -log p(x) and of the KL per set of outliers and method, as a table."""
    found = _outlier_table(results)
    if found is None:
        return []
    columns, rows, table = found
    fig, ax = plt.subplots(figsize=(0.75 * len(columns) + 2.4, 0.4 * len(rows) + 1.2))
    _draw_outlier_table(ax, columns, rows, table)
    caption = _outliers_caption(results, columns, rows, table)
    return _saved(fig, fig_dir / "vae_outliers.png", "Outlier detection", caption)


def _draw_outlier_table(ax, columns: list, rows: list[str], table: np.ndarray) -> None:
    """The AUCs as a coloured table, each cell's value written in it."""
    ax.imshow(np.ma.masked_invalid(table), cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = table[i, j]
            ax.text(
                j,
                i,
                "" if not math.isfinite(value) else f"{value:.3f}",
                ha="center",
                va="center",
                fontsize=FONT,
                color="white" if math.isfinite(value) and abs(value - 0.5) > 0.35 else "black",
            )
    labels = [f"{n}\n{_SCORE_NAMES[s]}" for n, s in columns]
    ax.set_xticks(range(len(columns)), labels, fontsize=FONT - 1)
    ax.set_yticks(range(len(rows)), rows, fontsize=FONT)
    ax.xaxis.tick_top()


def _outlier_set_text(name: str, columns: list, rows: list[str], table: np.ndarray) -> str:
    """The best and weakest AUC on one set of outliers; empty when it has none."""
    cells = [
        (table[i, j], rows[i], columns[j][1])
        for i in range(len(rows))
        for j in range(len(columns))
        if columns[j][0] == name and math.isfinite(table[i, j])
    ]
    if not cells:
        return ""
    value, m, score = max(cells, key=lambda c: c[0])
    low, low_m, low_score = min(cells, key=lambda c: c[0])
    text = f"{name}: best {value:.3f} ({_esc(m)}, {_SCORE_NAMES[score]})"
    if len(cells) > 1:
        text += f", weakest {low:.3f} ({_esc(low_m)}, {_SCORE_NAMES[low_score]})"
    if low < 0.5:
        text += ", below chance"
    return text


def _outliers_caption(results: dict, columns: list, rows: list[str], table: np.ndarray) -> str:
    """The caption of the outlier table."""
    sets = [n for n in OOD_SETS if any(c[0] == n for c in columns)]
    said = [t for n in sets if (t := _outlier_set_text(n, columns, rows, table))]
    unscored = [m for m in results.get("methods", {}) if m not in rows]
    return (
        "How well each score tells the held-out images from inputs unlike them: ROC AUC of "
        "-log p(x) (a low density flags an outlier) and of the KL of q(z | x) from the prior "
        "(an unusual code), for each set: "
        + "; ".join(f"{n}, {OOD_SETS[n]}" for n in sets)
        + ". 1 separates them perfectly, 0.5 is chance, below 0.5 the outliers look more "
        "typical than the data (red: above chance, blue: below). Per set: "
        + "; ".join(said)
        + "."
        + (f" Not scored: {_names([_esc(m) for m in unscored])}." if unscored else "")
    )


#: The VAE's figures, in report order (registered in comparisons.figures.MODEL_FIGURES).
VAE_FIGURES = (
    plot_vae_log_px,
    plot_vae_images,
    plot_vae_latents,
    plot_vae_training,
    plot_vae_gaps,
    plot_vae_rate_distortion,
    plot_vae_outliers,
)
