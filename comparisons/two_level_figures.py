"""Figures of the two-level VAE's comparison (``zoo compare two_level_vae``), drawn from the
files of an out-dir alone: what :mod:`zoo.two_level_vae.evaluate` stores in each trained
method's ``constant_data`` and the numbers of results.json. Every caption is written from
the numbers it shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import ticker

from comparisons.metrics import ESS_BULK_MIN, KHAT_BAD, RHAT_MAX
from comparisons.two_level_verdict import sd_kind, slope_ceiling
from comparisons.vae_figures import (
    BASELINES,
    FONT,
    Section,
    _color,
    _constant,
    _float,
    _grid,
    _saved,
    plot_vae_training,
    plt,
)

#: Projective fields shown per method (those of largest norm).
FIELDS = 48
#: The layers' terms drawn per method, with their labels.
TERMS = (
    ("reconstruction_test", "metrics", "reconstruction E[log p(x | z1)]"),
    ("kl_z1", "diagnostics", "V1 term E[log q(z1) - log p(z1 | z2)]"),
    ("kl_z2", "diagnostics", "V2 term E[log q(z2) - log p(z2)]"),
)


def _phi(results: dict, idatas: dict) -> dict[str, np.ndarray]:
    out = {}
    for method in results.get("methods", {}):
        phi = _constant(idatas[method], "phi") if method in idatas else None
        if phi is not None:
            out[method] = phi
    return out


def _side(results: dict, pixels: int) -> int | None:
    shape = results.get("posterior", {}).get("image_shape", "")
    parts = [int(p) for p in shape.split("x") if p.isdigit()]
    if len(parts) == 2 and parts[0] == parts[1] and parts[0] ** 2 == pixels:
        return parts[0]
    return None


def _tile(ax, phi: np.ndarray, side: int) -> None:
    """The FIELDS columns of largest norm, each scaled to its own largest absolute value."""
    order = np.argsort(-np.linalg.norm(phi, axis=0))[:FIELDS]
    cols = -(-len(order) // 6) if len(order) > 6 else len(order)
    rows = -(-len(order) // cols)
    canvas = np.full((rows * (side + 1) + 1, cols * (side + 1) + 1), np.nan)
    for i, j in enumerate(order):
        field = phi[:, j] / (np.abs(phi[:, j]).max() or 1.0)
        r, c = divmod(i, cols)
        canvas[
            1 + r * (side + 1) : (r + 1) * (side + 1), 1 + c * (side + 1) : (c + 1) * (side + 1)
        ] = field.reshape(side, side)
    ax.imshow(canvas, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_receptive_fields(results, idatas, fig_dir: Path) -> list[Section]:
    """The columns of Phi (V1's projective fields) of every trained method, as patches."""
    found = _phi(results, idatas)
    if not found:
        return []
    side = _side(results, next(iter(found.values())).shape[0])
    if side is None:
        return []
    fig, axes = _grid(len(found), 4.0, 3.4)
    for ax, (method, phi) in zip(axes.flat, found.items()):
        _tile(ax, phi, side)
        norms = np.linalg.norm(phi, axis=0)
        ax.set_title(f"{method}: {phi.shape[1]} units", fontsize=FONT, color=_color(method))
        ax.set_xlabel(f"norms {norms.min():.2g}-{norms.max():.2g}", fontsize=FONT)
    smooth = {m: _neighbour_correlation(phi, side) for m, phi in found.items()}
    caption = (
        f"The columns of Phi, each V1 unit's projective field (what one unit adds to a patch),"
        f" for every trained model: the {FIELDS} of largest norm, each scaled to its own"
        " largest absolute value (mid-gray is 0); the norms under each panel. Sparse coding of"
        " whitened natural patches is known to learn localized, oriented, band-pass fields."
        " Neighbouring pixels of a field correlate at "
        + ", ".join(f"{r:.2f} ({m})" for m, r in smooth.items())
        + " on average over all fields, against about 0 for Phi's independent starting"
        " entries; the whitening's roll-off makes anything fitted to these patches that"
        " smooth, so the number says the fields moved from their start, not that they are"
        " localized or oriented: the Gabor fits below count how many are."
    )
    return _saved(fig, fig_dir / "receptive_fields.png", "V1 projective fields", caption)


def _neighbour_correlation(phi: np.ndarray, side: int) -> float:
    """The mean over fields of the correlation between horizontally and vertically
    neighbouring pixels of each field."""
    fields = phi.T.reshape(-1, side, side)
    pairs = [(fields[:, :, :-1], fields[:, :, 1:]), (fields[:, :-1, :], fields[:, 1:, :])]
    out = []
    for a, b in pairs:
        a = a.reshape(len(fields), -1) - a.reshape(len(fields), -1).mean(1, keepdims=True)
        b = b.reshape(len(fields), -1) - b.reshape(len(fields), -1).mean(1, keepdims=True)
        out.append((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1)))
    return float(np.mean(out))


def _terms(results: dict) -> dict[str, dict[str, float]]:
    out = {}
    for method, record in results.get("methods", {}).items():
        if not math.isfinite(_float(record.get("metrics", {}).get("elbo_test", math.nan))):
            continue
        out[method] = {
            key: _float(record.get(group, {}).get(key, math.nan)) for key, group, _ in TERMS
        }
        out[method]["elbo_test"] = _float(record["metrics"]["elbo_test"])
        diag = record.get("diagnostics", {})
        active, collapsed = diag.get("active_z2"), diag.get("collapsed_z2")
        out[method]["v2_units"] = (
            (int(active), int(active) + int(collapsed)) if active is not None else None
        )
        out[method]["lpd_test"] = _float(record["metrics"].get("lpd_test", math.nan))
    return out


def _layers_caption(terms: dict[str, dict[str, float]]) -> str:
    said = []
    for method, t in terms.items():
        v2 = "no V2" if not math.isfinite(t["kl_z2"]) else f"V2 {t['kl_z2']:.2f}"
        if t["v2_units"] is not None:
            v2 += f" ({t['v2_units'][0]} of {t['v2_units'][1]} V2 units active)"
        said.append(
            f"{method}: reconstruction {t['reconstruction_test']:.1f}, V1 {t['kl_z1']:.1f},"
            f" {v2}, ELBO {t['elbo_test']:.1f}"
        )
    return (
        "Each trained model's held-out ELBO per patch split by layer (nats): the"
        " reconstruction term, and the V1 and V2 terms the ELBO subtracts (each a Monte Carlo"
        " average at the guide's draws, valid for either order). A V2 term near 0 means V2 is"
        " barely used; a unit is active when its posterior mean varies over patches (variance"
        " above 0.01), and a small V2 term can sit in a few active units. " + "; ".join(said) + "."
    )


def plot_layers(results, idatas, fig_dir: Path) -> list[Section]:
    """Per trained method: the reconstruction term and the V1 and V2 terms, as bars."""
    terms = _terms(results)
    if not terms:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    methods = list(terms)
    for ax, (key, _, label) in zip(axes, TERMS):
        values = [terms[m][key] for m in methods]
        ax.bar(range(len(methods)), np.nan_to_num(values), color=[_color(m) for m in methods])
        for i, v in enumerate(values):
            ax.text(i, np.nan_to_num(v), "none" if not math.isfinite(v) else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=FONT - 1)  # fmt: skip
        ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=FONT)
        ax.set_title(label, fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
    axes[0].set_ylabel("nats per held-out patch", fontsize=FONT)
    return _saved(fig, fig_dir / "layers.png", "The ELBO by layer", _layers_caption(terms))


def _log_px_caption(results: dict, shown: dict[str, tuple[float, float, int]]) -> str:
    base = {m: _float(results["methods"][m]["metrics"].get("lpd_test", math.nan))
            for m in BASELINES if m in results.get("methods", {})}  # fmt: skip
    rows = {int(_float(r.get("diagnostics", {}).get("measured_rows", math.nan)))
            for m, r in results["methods"].items() if m in shown}  # fmt: skip
    text = (
        f"Mean log p(x) of {'/'.join(map(str, sorted(rows)))} held-out patches, in nats per"
        " patch (higher is better), estimated by importance weighting with each model's guide"
        " as the proposal (filled), beside the ELBO of the same rows (open). "
    )
    if base:
        text += (
            "Lines: "
            + "; ".join(f"{BASELINES[m]} ({m}, exact) {v:.4g}" for m, v in base.items())
            + f", each the mean over all {results.get('num_test')} held-out patches, not only"
            " the measured ones. "
        )
    bad = [f"{m} {k}" for m, (_, _, k) in shown.items() if k]
    if bad:
        text += (
            f"PSIS k above {KHAT_BAD} on rows of " + ", ".join(bad) + " (rows counted): there"
            " the guide is too poor a proposal for its weights, and that model's log p(x) is"
            " not a trustworthy estimate (its ELBO stays a valid lower bound)."
        )
    return text


def plot_log_px(results, idatas, fig_dir: Path) -> list[Section]:
    """Held-out log p(x) and ELBO of every trained model, the closed-form baselines as lines."""
    shown = {}
    for m, r in results.get("methods", {}).items():
        lpd, elbo = (
            _float(r["metrics"].get("lpd_test", math.nan)),
            _float(r["metrics"].get("elbo_test", math.nan)),
        )
        if math.isfinite(elbo):
            bad = _float(r.get("diagnostics", {}).get("iw_khat_bad", 0))
            shown[m] = (lpd, elbo, int(bad) if math.isfinite(bad) else 0)
    if not shown:
        return []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(shown) + 3), 3.6))
    for i, (m, (lpd, elbo, bad)) in enumerate(shown.items()):
        ax.plot(i, lpd, "o", color=_color(m), ms=8)
        ax.plot(i + 0.15, elbo, "o", mfc="none", color=_color(m), ms=8)
        if bad:
            ax.annotate(f"k>{KHAT_BAD}: {bad}", (i, lpd), textcoords="offset points",
                        xytext=(0, -14), ha="center", fontsize=FONT - 1, color="red")  # fmt: skip
    for j, m in enumerate(b for b in BASELINES if b in results["methods"]):
        value = _float(results["methods"][m]["metrics"].get("lpd_test", math.nan))
        ax.axhline(value, color="gray", ls=("--", ":")[j % 2], lw=1, label=f"{BASELINES[m]} ({m})")
    ax.set_xticks(range(len(shown)), list(shown), rotation=20, ha="right", fontsize=FONT)
    ax.set_ylabel("nats per held-out patch", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    if any(b in results["methods"] for b in BASELINES):
        ax.legend(fontsize=FONT - 1, loc="best")
    caption = _log_px_caption(results, shown)
    return _saved(fig, fig_dir / "log_px.png", "Held-out log p(x)", caption)


#: The texture decodings drawn per method: the diagnostic's suffix and its bar's label.
DECODED = (("pixels", "pixels"), ("z1", "z1"), ("z1_pca", "z1, K2 PCs"), ("z2", "z2"))


def _texture_mi(idata, site: str) -> tuple[np.ndarray, int] | None:
    """The MI of ``site``'s active units, each averaged over the texture families (of every
    unit with a finite MI where the variances are not stored), and the layer's width; None
    when the method holds no such array."""
    from zoo.two_level_vae.textures import ACTIVE

    mi = _constant(idata, f"texture_mi_{site}") if idata is not None else None
    if mi is None or mi.ndim != 2 or not mi.size:
        return None
    finite = np.isfinite(mi).sum(axis=0)
    unit = np.where(finite > 0, np.nansum(mi, axis=0) / np.maximum(finite, 1), np.nan)
    keep = np.isfinite(unit)
    variance = _constant(idata, f"texture_variance_{site}")
    if variance is not None and variance.shape == unit.shape:
        keep &= variance > ACTIVE
    return unit[keep], mi.shape[1]


def _texture_numbers(diag: dict) -> dict[str, float]:
    keys = ["texture_chance", "texture_patches"]
    keys += [f"texture_{k}_{s}" for s in ("z1", "z2") for k in ("mi", "active")]
    keys += [f"texture_mi_{s}_positive" for s in ("z1", "z2")]
    keys += [f"texture_decoding_{k}{e}" for k, _ in DECODED for e in ("", "_sd")]
    return {k: _float(diag.get(k, math.nan)) for k in keys}


def _texture_caption(shown: dict[str, tuple[dict[str, float], int | None]]) -> str:
    from zoo.two_level_vae.textures import FOLDS, TEXTURES

    num = lambda v, f: f"{v:{f}}" if math.isfinite(v) else "n/a"  # noqa: E731
    said = []
    for method, (n, k2) in shown.items():
        text = (
            f"{method}: V1 median MI {num(n['texture_mi_z1'], '+.3f')}"
            f" ({num(n['texture_mi_z1_positive'], '.0%')} of"
            f" {num(n['texture_active_z1'], '.0f')} active units above 0)"
        )
        if k2 is not None:
            text += (
                f", V2 median MI {num(n['texture_mi_z2'], '+.3f')}"
                f" ({num(n['texture_mi_z2_positive'], '.0%')} of"
                f" {num(n['texture_active_z2'], '.0f')} active units above 0)"
            )
        decoded = [
            f"{num(n[f'texture_decoding_{key}'], '.2f')}"
            f" (sd {num(n[f'texture_decoding_{key}_sd'], '.2f')}) from "
            + (f"z1 on {k2} PCs" if key == "z1_pca" else key)
            for key, _ in DECODED
            if math.isfinite(n[f"texture_decoding_{key}"]) and (k2 or key not in ("z1_pca", "z2"))
        ]
        if decoded:
            text += "; family decoded at " + ", ".join(decoded)
        text += f", chance {num(n['texture_chance'], '.2f')}"
        said.append(text)
    per_texture = {n["texture_patches"] for n, _ in shown.values()}
    return (
        "Natural textures against spectrally matched noise, as Freeman et al. (2013) asked of"
        f" V1 and V2 neurons. {'/'.join(num(p, '.0f') for p in sorted(per_texture))} whitened"
        f" patches of each of {', '.join(TEXTURES)} (held-out columns of the training photos,"
        " all of moon) and of a phase-scrambled copy of each (same Fourier amplitude, random"
        " phases). A unit's modulation index MI = (r_nat - r_scr) / (r_nat + r_scr), r the"
        " root-mean-square of its posterior mean over a family's patches, averaged over the"
        " families; the histograms show the active units (median: solid line). MI > 0: the"
        " unit responds more to the texture than to its noise. V1 neurons show an MI near 0 and"
        " V2 neurons mostly above 0; a linear layer's MI is 0 up to sampling noise (at 250"
        " patches per texture, a fixed linear map of the pixels gave medians from -0.03 to"
        " +0.02 over six seeds), so a V2 whose median MI is clearly above V1's, with most units"
        " above 0, has learned something of the textures' higher-order structure. Right:"
        f" cross-validated accuracy ({FOLDS} folds, sd over folds as error bars) of a logistic"
        " regression decoding the family from natural patches (Ziemba et al. 2016 found V2"
        " better than V1); compare z2 with z1 on as many principal components, since more"
        " features let a classifier fit more. Every texture's whitened pixels have mean 0, so"
        " the families differ in how the pixels vary together, which a linear read-out of the"
        " pixels barely uses: their accuracy is the reference a layer should beat. "
        + "; ".join(said)
        + "."
    )


def plot_textures(results, idatas, fig_dir: Path) -> list[Section]:
    """Per trained method holding texture modulation indices (:mod:`zoo.two_level_vae.textures`):
    histograms of its V1 and V2 units' MI, and the accuracy of decoding the texture family
    from the pixels, z1, z1 on K2 principal components and z2, with chance as a line."""
    found = {}
    for method, record in results.get("methods", {}).items():
        v1 = _texture_mi(idatas.get(method), "z1")
        if v1 is not None:
            found[method] = (v1, _texture_mi(idatas[method], "z2"), record)
    if not found:
        return []
    fig, axes = _grid(3 * len(found), 3.4, 2.7)
    shown = {}
    for row, (method, (v1, v2, record)) in enumerate(found.items()):
        n = _texture_numbers(record.get("diagnostics", {}))
        shown[method] = (n, None if v2 is None else v2[1])
        ax1, ax2, ax3 = axes.flat[3 * row : 3 * row + 3]
        values = [v1[0]] + ([] if v2 is None else [v2[0]])
        reach = max([0.05] + [float(np.max(np.abs(v))) for v in values if v.size])
        bins = np.linspace(-reach, reach, 25)
        for ax, layer, site in ((ax1, v1, "z1"), (ax2, v2, "z2")):
            label = "V1 (z1)" if site == "z1" else "V2 (z2)"
            if layer is None or not layer[0].size:
                missing = "V2 layer" if layer is None else "active unit"
                ax.axis("off")
                ax.text(0.5, 0.5, f"{method}: no {missing}", ha="center", va="center",
                        fontsize=FONT, transform=ax.transAxes)  # fmt: skip
                continue
            ax.hist(layer[0], bins=bins, color=_color(method), alpha=0.8)
            ax.axvline(0, color="gray", ls="--", lw=1)
            if math.isfinite(n[f"texture_mi_{site}"]):
                ax.axvline(n[f"texture_mi_{site}"], color="black", lw=1.2)
            ax.set_title(f"{method}: {label}, {layer[0].size} active units", fontsize=FONT + 1)
            ax.set_xlabel("MI, natural vs scrambled", fontsize=FONT)
            ax.set_ylabel("units", fontsize=FONT)
            ax.tick_params(labelsize=FONT)
        heights = [n[f"texture_decoding_{key}"] if v2 or key in ("pixels", "z1") else math.nan
                   for key, _ in DECODED]  # fmt: skip
        errors = [n[f"texture_decoding_{key}_sd"] if math.isfinite(h) else math.nan
                  for (key, _), h in zip(DECODED, heights)]  # fmt: skip
        labels = [lab.replace("K2", str(v2[1])) if v2 else lab for _, lab in DECODED]
        ax3.bar(range(len(DECODED)), np.nan_to_num(heights), yerr=np.nan_to_num(errors),
                color=["gray"] + [_color(method)] * 3, capsize=3)  # fmt: skip
        for i, (h, e) in enumerate(zip(heights, errors)):
            top = np.nan_to_num(h) + np.nan_to_num(e) + 0.02
            ax3.text(i, top, f"{h:.2f}" if math.isfinite(h) else "none",
                     ha="center", va="bottom", fontsize=FONT - 1)  # fmt: skip
        if math.isfinite(n["texture_chance"]):
            ax3.axhline(n["texture_chance"], color="red", ls=":", lw=1, label="chance")
            ax3.legend(fontsize=FONT - 1, loc="upper left")
        ax3.set_xticks(range(len(DECODED)), labels, rotation=20, ha="right", fontsize=FONT)
        ax3.set_ylim(0, 1.1)
        ax3.set_title(f"{method}: texture family decoded", fontsize=FONT + 1)
        ax3.set_ylabel("cross-validated accuracy", fontsize=FONT)
        ax3.tick_params(labelsize=FONT)
    caption = _texture_caption(shown)
    return _saved(fig, fig_dir / "textures.png", "Textures against matched noise", caption)


#: The arrays of :func:`zoo.two_level_vae.fields.fit_gabors` that :func:`plot_gabor_fits` reads.
GABOR_ARRAYS = ("gabor_r2", "gabor_theta", "gabor_frequency", "gabor_like")
#: Carrier frequencies (cycles per pixel) below this, a period beyond 20 px, longer than the
#: patch: what the fit gives a field with less than about half a cycle under its window.
LOW_FREQUENCY = 0.05


def _gabor_caption(found: dict[str, dict[str, np.ndarray]], r2_min: float, noise) -> str:
    said = []
    for method, a in found.items():
        like, units = int(a["gabor_like"].sum()), a["gabor_like"].size
        text = f"{method}: {like} of {units} units Gabor-like"
        rest = int(np.sum(a["gabor_r2"] >= r2_min)) - like
        if rest:
            text += f" ({rest} more fit well but are centred outside the patch or too wide)"
        if like:
            freq = a["gabor_frequency"][a["gabor_like"]]
            f = float(np.median(freq))
            text += f", median frequency {f:.2f} cycles per pixel"
            text += f" (a period of {1 / f:.1f} px)" if f >= LOW_FREQUENCY else ""
            low = int(np.sum(freq < LOW_FREQUENCY))
            if low:
                text += f", {low} of them below {LOW_FREQUENCY} (edges or blobs)"
        said.append(text)
    return (
        "A Gabor function is a patch of stripes (a sine wave) under a Gaussian window: the"
        " shape of the receptive fields of simple cells in the primary visual cortex, and"
        " what sparse coding learns from natural images. One was fitted by least squares to"
        " each V1 unit's projective field (a column of Phi); r2 is the share of the field's"
        f" energy the fit explains. A unit counts as Gabor-like when r2 >= {r2_min:.2g}"
        f" (dashed line; fits to pure-noise fields reached at most {noise[0]:.2f} for white"
        f" noise and {noise[1]:.2f} for noise as smooth as the whitened patches, dotted),"
        " when the window's centre lies inside the patch, and when the window is no wider"
        " than the patch across the stripes, so that a wave filling the whole patch is not"
        " counted as localized. Middle: the orientation of the Gabor-like units' stripes"
        " (0 degrees vertical); right: their spatial frequency (dashed: the median). A field"
        " with less than about half a cycle under its window (an edge, or a blob) is fitted"
        " with a frequency near 0 and a large amplitude: its frequency is poorly defined."
        " V1-like fields are localized, cover all orientations, and their frequencies sit in"
        " a band; a model whose fields mostly fail the rule learned something else"
        " (noise-like or patch-wide patterns). " + "; ".join(said) + "."
    )


def plot_gabor_fits(results, idatas, fig_dir: Path) -> list[Section]:
    """Per trained method: the r2 of the Gabor fits of V1's projective fields, and the
    orientations and spatial frequencies of the Gabor-like ones, as histograms."""
    # Imported here: the figures are drawn from stored arrays, the threshold is the fit's.
    from zoo.two_level_vae.fields import R2_MIN, WHITE_NOISE_R2_MAX, WHITENED_NOISE_R2_MAX

    found = {}
    for method in results.get("methods", {}):
        if method not in idatas:
            continue
        arrays = {name: _constant(idatas[method], name) for name in GABOR_ARRAYS}
        if all(a is not None and a.size for a in arrays.values()):
            arrays["gabor_like"] = arrays["gabor_like"].astype(bool)
            found[method] = arrays
    if not found:
        return []
    fig, axes = _grid(3 * len(found), 3.4, 2.6)
    for row, (method, a) in zip(axes, found.items()):
        like = a["gabor_like"]
        row[0].hist(np.clip(a["gabor_r2"], 0, 1), bins=np.linspace(0, 1, 21), color=_color(method))
        row[0].axvline(R2_MIN, color="black", ls="--", lw=1)
        row[0].axvline(WHITENED_NOISE_R2_MAX, color="gray", ls=":", lw=1)
        title = f"{method}: {int(like.sum())} of {like.size} Gabor-like"
        row[0].set_title(title, fontsize=FONT + 1)
        row[0].set_xlabel("r2 of the Gabor fit", fontsize=FONT)
        row[0].set_ylabel("units", fontsize=FONT)
        panels = (
            (row[1], np.degrees(a["gabor_theta"][like]), np.linspace(0, 180, 13),
             "theta, degrees (0: vertical stripes, 90: horizontal)"),
            (row[2], a["gabor_frequency"][like], np.linspace(0, 0.5, 11),
             "frequency (cycles per pixel)"),
        )  # fmt: skip
        for ax, values, bins, label in panels:
            if values.size:
                ax.hist(values, bins=bins, color=_color(method))
            else:
                ax.text(0.5, 0.5, "no Gabor-like unit", ha="center", va="center",
                        transform=ax.transAxes, fontsize=FONT)  # fmt: skip
            ax.set_xlabel(label, fontsize=FONT)
            ax.set_title(f"{method}: Gabor-like units", fontsize=FONT + 1)
        if like.any():
            row[2].axvline(np.median(a["gabor_frequency"][like]), color="black", ls="--", lw=1)
        for ax in row:
            ax.tick_params(labelsize=FONT - 1)
    caption = _gabor_caption(found, R2_MIN, (WHITE_NOISE_R2_MAX, WHITENED_NOISE_R2_MAX))
    return _saved(fig, fig_dir / "gabor_fits.png", "Gabor fits of V1's fields", caption)


#: Pairs of V1 units drawn per method in plot_gold's correlation panel (a random subset when
#: there are more: 4 rows of 144 units hold 41,184 pairs, too many points to read).
GOLD_PAIRS = 3000
#: Fewer NUTS rows than this make a comparison on them an anecdote, not an average.
FEW_ROWS = 10
#: The example patches of plot_inpainting (the first held-out rows).
EXAMPLES = 4


def _rows(n: float, what: str = "held-out row") -> str:
    """``the first held-out row`` or ``the first 3 held-out rows``."""
    return f"the first {what}" if n == 1 else f"the first {n:.0f} {what}s"


def _order(method: str) -> str | None:
    """The guide order of a two-level method (``amortized_<order>`` or a refit
    ``amortized_<order>_on_<decoder>``), None for any other."""
    head = method.split("_on_")[0]
    return next((o for o in ("top_down", "chain") if head.endswith(o)), None)


def _gold_numbers(diag: dict) -> dict[str, float]:
    keys = [f"gold_{s}_{k}" for s in ("z1", "z2")
            for k in ("mean_z_rms", "sd_ratio_median", "sd_log_ratio_rms")]  # fmt: skip
    keys += [f"gold_z1_corr_{k}" for k in ("nuts_rms", "nuts_max", "guide_rms", "slope")]
    keys += ["gold_noise", "gold_rows", "gold_chains", "gold_draws", "gold_warmup"]
    keys += ["gold_ess_bulk_min", "gold_rhat_max", "gold_divergences", "gold_wall_s"]
    return {k: _float(diag.get(k, math.nan)) for k in keys}


def _sd_text(ratio: float, noise: float) -> str:
    """Over- or under-confident, and by what factor, from the median sd ratio."""
    if sd_kind(ratio, noise) == "right":
        return f"sds about right (median ratio {ratio:.2f}, within NUTS's noise)"
    if ratio < 1:
        return f"over-confident, sds {1 / ratio:.1f} times too small (median ratio {ratio:.2f})"
    return f"under-confident, sds {ratio:.1f} times too large (median ratio {ratio:.2f})"


def _layer_text(n: dict[str, float], site: str) -> str | None:
    """A layer's sds and means against NUTS's, from what is stored (None when nothing is)."""
    ratio, z = n[f"gold_{site}_sd_ratio_median"], n[f"gold_{site}_mean_z_rms"]
    said = [_sd_text(ratio, n["gold_noise"])] if math.isfinite(ratio) and ratio > 0 else []
    if math.isfinite(z):
        said.append(f"means {z:.2f} NUTS sds off (RMS of the z-scores)")
    return f"{'V1' if site == 'z1' else 'V2'} " + ", ".join(said) if said else None


def _slope_ceiling(n: dict[str, float]) -> float:
    """The slope a guide holding NUTS's correlations exactly would show: the noise of NUTS's
    own correlations (about ``gold_noise`` each) dilutes it to 1 - (noise / RMS)^2."""
    return slope_ceiling(n["gold_z1_corr_nuts_rms"], n["gold_noise"])


def _corr_text(method: str, n: dict[str, float]) -> str | None:
    rms, top, noise = n["gold_z1_corr_nuts_rms"], n["gold_z1_corr_nuts_max"], n["gold_noise"]
    slope, ceiling = n["gold_z1_corr_slope"], _slope_ceiling(n)
    if not math.isfinite(rms):
        return None
    text = f"NUTS's V1 correlations RMS {rms:.3f}"
    text += f" (largest |r| {top:.2f})" if math.isfinite(top) else ""
    if math.isfinite(noise) and noise > 0:
        text += f" against a noise floor of {noise:.3f}"
        if rms <= 1.5 * noise:
            return text + (
                ": no more than noise, so there is little for a guide to carry"
                + (f" and its slope ({slope:.2f}) says little" if math.isfinite(slope) else "")
            )
        text += f", {rms / noise:.1f} times it"
    if not math.isfinite(slope):
        return text
    share = slope / ceiling if math.isfinite(ceiling) and ceiling > 0 else slope
    amount = "almost none" if share < 0.2 else ("some" if share < 0.6 else "most")
    text += f"; the guide carries {amount} of them (slope {slope:.2f}"
    if math.isfinite(ceiling):
        text += f", where a guide holding all would show about {ceiling:.2f}"
    own = n["gold_z1_corr_guide_rms"]
    text += f"; its own correlations' RMS {own:.3f})" if math.isfinite(own) else ")"
    if _order(method) == "chain":
        text += (
            ", as its diagonal q(z1 | x) must"
            if amount == "almost none"
            else ", more than a diagonal q(z1 | x) can hold: sampling noise"
        )
    return text


def _nuts_text(n: dict[str, float]) -> str | None:
    """NUTS's own run, from what is stored; a rough reference said plainly."""
    said = []
    if math.isfinite(n["gold_rows"]):
        said.append(f"{n['gold_rows']:.0f} row{'' if n['gold_rows'] == 1 else 's'}")
    if math.isfinite(n["gold_chains"]) and math.isfinite(n["gold_draws"]):
        draws = f"{n['gold_chains']:.0f} chains x {n['gold_draws']:.0f} draws"
        warmup = n["gold_warmup"]
        said.append(draws + (f" after {warmup:.0f} warm-up" if math.isfinite(warmup) else ""))
    ess, rhat = n["gold_ess_bulk_min"], n["gold_rhat_max"]
    said += [f"min bulk ESS {ess:.0f}"] if math.isfinite(ess) else []
    said += [f"max R-hat {rhat:.3f}"] if math.isfinite(rhat) else []
    if n["gold_divergences"] > 0:
        said.append(f"{n['gold_divergences']:.0f} divergent transitions")
    said += [f"{n['gold_wall_s']:.0f} s"] if math.isfinite(n["gold_wall_s"]) else []
    if not said:
        return None
    text = "NUTS on " + ", ".join(said)
    if rhat > RHAT_MAX:
        text += (
            f" (R-hat above {RHAT_MAX}: its chains disagree, so the reference itself is rough"
            " and differences near its noise are not the guide's)"
        )
    elif ess < ESS_BULK_MIN:
        text += f" (an ESS below {ESS_BULK_MIN}: NUTS's own numbers are noisy)"
    return text


def _gold_caption(shown: dict[str, dict[str, float]], pairs: dict[str, tuple[int, int]]) -> str:
    said = []
    for method, n in shown.items():
        parts = [_layer_text(n, "z1"), _layer_text(n, "z2"), _corr_text(method, n)]
        parts = [p for p in parts + [_nuts_text(n)] if p]
        said.append(f"{method}: " + ("; ".join(parts) if parts else "no numbers stored"))
    counts = {(a, b) for a, b in pairs.values() if a < b}
    if len(counts) == 1:
        shown_pairs, all_pairs = next(iter(counts))
        drawn = f" ({shown_pairs} of {all_pairs} pairs drawn)"
    else:
        drawn = "; ".join(f"{a} of {b} for {m}" for m, (a, b) in pairs.items() if a < b)
        drawn = f" (pairs drawn: {drawn})" if drawn else ""
    rows = [n["gold_rows"] for n in shown.values() if math.isfinite(n["gold_rows"])]
    few = ""
    if rows and min(rows) < FEW_ROWS:
        few = (
            " A single patch" if min(rows) == 1 else f" {min(rows):.0f} patches"
        ) + " only: an anecdote of the posterior's shape, not an average over patches."
    return (
        "The gold standard: NUTS samples p(z1, z2 | x) of the first held-out patches under each"
        " model's own trained decoder, held fixed, and the guide is laid against its draws."
        " Left: each V1 unit's posterior mean under the guide against NUTS's (dots; V2's as"
        " crosses); middle: the posterior sds, log-log (below the line the guide is"
        " over-confident, above it under-confident); right: the correlation of every pair of"
        " V1 units of a patch under the guide against NUTS's"
        + drawn
        + ". The grey band is NUTS's own noise, 1/sqrt(smallest ESS): a NUTS correlation inside"
        " it cannot be told from 0; the dashed line has the least-squares slope of the guide's"
        " correlations on NUTS's, the share of them the guide carries; the solid line is"
        " equality in every panel. What a guide can hold: the chain guide's q(z1 | x) is a"
        " diagonal Gaussian, so its V1 units are uncorrelated by construction and its slope is"
        " 0 whatever NUTS shows; the top-down guide draws z2 and then q(z1 | z2, x), diagonal"
        " for each z2 but mixed over z2, so it can carry the correlations that pass through V2"
        " (V1 means that move together as z2 changes), but not those the pixels make directly"
        " (two units explaining the same pixels trade off: explaining away). NUTS's noise also"
        " dilutes the slope: a guide holding every correlation would show about"
        " 1 - (noise / RMS)^2." + few + " " + "; ".join(said) + "."
    )


def _identity(ax, lo: float, hi: float) -> None:
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")


def _draw_gold_row(row, method: str, a: dict, n: dict[str, float]) -> tuple[int, int]:
    """The three panels of one method: the pairs of V1 units drawn and held, as a tuple."""
    color = _color(method)
    m1, m2 = a["gold_z1_moments"], a["gold_z2_moments"]
    layers = [("V1 (z1)", m1, "o", color)] + ([] if m2 is None else [("V2 (z2)", m2, "x", "k")])
    means = np.concatenate([m[:, 0:2].ravel() for _, m, _, _ in layers])
    finite = np.abs(means[np.isfinite(means)])
    reach = 1.08 * float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    sds = np.concatenate([m[:, 2:4].ravel() for _, m, _, _ in layers])
    sds = sds[np.isfinite(sds) & (sds > 0)]
    for label, m, marker, c in layers:
        dot = marker == "o"
        style = {"marker": marker, "color": c, "lw": 0.8, "label": label,
                 "s": 8 if dot else 14, "alpha": 0.55 if dot else 0.8}  # fmt: skip
        row[0].scatter(m[:, 0].ravel(), m[:, 1].ravel(), **style)
        ok = (m[:, 2] > 0) & (m[:, 3] > 0)
        row[1].scatter(m[:, 2][ok], m[:, 3][ok], **style)
    _identity(row[0], -reach, reach)
    row[0].legend(fontsize=FONT - 1, loc="upper left")
    z, ratio = n["gold_z1_mean_z_rms"], n["gold_z1_sd_ratio_median"]
    row[0].set_title(f"{method}\nmeans" + (f", z-score RMS {z:.2f}" if math.isfinite(z) else ""),
                     fontsize=FONT + 1)  # fmt: skip
    row[0].set_xlabel("NUTS posterior mean", fontsize=FONT)
    row[0].set_ylabel("guide posterior mean", fontsize=FONT)
    if sds.size:
        lo, hi = float(sds.min()) / 1.3, float(sds.max()) * 1.3
        row[1].set_xscale("log")
        row[1].set_yscale("log")
        for axis in (row[1].xaxis, row[1].yaxis):
            axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        _identity(row[1], lo, hi)
    row[1].set_title(f"{method}\nsds" + (f", median ratio {ratio:.2f}" if math.isfinite(ratio)
                     else ""), fontsize=FONT + 1)  # fmt: skip
    row[1].set_xlabel("NUTS posterior sd", fontsize=FONT)
    row[1].set_ylabel("guide posterior sd", fontsize=FONT)
    ax = row[2]
    corr = a["gold_z1_corr"]
    if corr is None or corr.ndim != 3 or not corr.shape[-1]:
        ax.axis("off")
        ax.text(0.5, 0.5, f"{method}: no V1 correlations", ha="center", va="center",
                fontsize=FONT, transform=ax.transAxes)  # fmt: skip
        return 0, 0
    nuts, guide = corr[0].ravel(), corr[1].ravel()
    pick = np.arange(nuts.size)
    if nuts.size > GOLD_PAIRS:
        pick = np.sort(np.random.default_rng(0).choice(nuts.size, GOLD_PAIRS, replace=False))
    reach = min(1.0, max(0.1, 1.1 * float(np.max(np.abs(np.r_[nuts, guide])))))
    noise = n["gold_noise"]
    if math.isfinite(noise):
        ax.axvspan(-noise, noise, color="0.85", lw=0, label=f"NUTS's noise \u00b1{noise:.3f}")
    ax.scatter(nuts[pick], guide[pick], s=5, color=color, alpha=0.4, lw=0)
    slope = n["gold_z1_corr_slope"]
    if math.isfinite(slope):
        ax.plot([-reach, reach], [-slope * reach, slope * reach], color=color, ls="--", lw=1.2,
                label=f"slope {slope:.2f}")  # fmt: skip
    _identity(ax, -reach, reach)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=FONT - 1, loc="upper left")
    ax.set_title(f"{method}\nV1 pair correlations", fontsize=FONT + 1)
    ax.set_xlabel("NUTS correlation", fontsize=FONT)
    ax.set_ylabel("guide correlation", fontsize=FONT)
    return len(pick), nuts.size


def plot_gold(results, idatas, fig_dir: Path) -> list[Section]:
    """Per method holding NUTS's reference (:mod:`zoo.two_level_vae.gold`): the guide's V1
    posterior means, sds and pairwise correlations against NUTS's, each with the identity."""
    found = {}
    for method, record in results.get("methods", {}).items():
        idata = idatas.get(method)
        m1 = _constant(idata, "gold_z1_moments") if idata is not None else None
        if m1 is None or m1.ndim != 3 or m1.shape[1] != 4 or not m1.size:
            continue
        m2 = _constant(idata, "gold_z2_moments")
        arrays = {
            "gold_z1_moments": m1,
            "gold_z2_moments": m2 if m2 is not None and m2.ndim == 3 and m2.size else None,
            "gold_z1_corr": _constant(idata, "gold_z1_corr"),
        }
        found[method] = (arrays, _gold_numbers(record.get("diagnostics", {})))
    if not found:
        return []
    fig, axes = _grid(3 * len(found), 3.5, 3.4)
    pairs = {}
    for row, (method, (arrays, n)) in zip(axes, found.items()):
        pairs[method] = _draw_gold_row(row, method, arrays, n)
        for ax in row:
            ax.tick_params(labelsize=FONT - 1)
    caption = _gold_caption({m: n for m, (_, n) in found.items()}, pairs)
    return _saved(fig, fig_dir / "gold.png", "The guides against NUTS", caption)


def _inpaint_record(record: dict, idata) -> dict | None:
    """A method's inpainting numbers and arrays (None when it has neither an RMSE nor an
    array); the RMSEs of its prediction and of predicting 0 are computed from the array when
    not stored."""
    diag = record.get("diagnostics", {})
    keys = ["inpaint_rmse", "inpaint_rmse_zero", "inpaint_rows", "inpaint_hidden"]
    keys += [f"gold_inpaint_{k}" for k in ("rmse_nuts", "rmse_guide", "rhat_max", "ess_bulk_min")]
    out = {k: _float(diag.get(k, math.nan)) for k in keys + ["gold_rows"]}
    a = _constant(idata, "inpaint") if idata is not None else None
    a = a if a is not None and a.ndim == 3 and a.shape[0] == 2 and a.size else None
    trace = _constant(idata, "inpaint_trace") if idata is not None else None
    out["inpaint"] = a
    out["trace"] = trace if trace is not None and trace.ndim == 1 and trace.size else None
    if a is not None:
        if not math.isfinite(out["inpaint_rmse_zero"]):
            out["inpaint_rmse_zero"] = float(np.sqrt(np.mean(a[0] ** 2)))
        if not math.isfinite(out["inpaint_rows"]):
            out["inpaint_rows"], out["inpaint_hidden"] = a.shape[1], a.shape[2]
        if not math.isfinite(out["inpaint_rmse"]):
            out["inpaint_rmse"] = float(np.sqrt(np.mean((a[1] - a[0]) ** 2)))
    return out if math.isfinite(out["inpaint_rmse"]) else None


def _first(found: dict, key: str) -> float:
    return next((r[key] for r in found.values() if math.isfinite(r[key])), math.nan)


def _rows_rmse(found: dict, method: str | None, rows: int) -> float:
    """The RMSE on the first ``rows`` held-out rows of ``method``'s prediction (None: of
    predicting 0), from the stored arrays. The NUTS rows are the first rows of those the
    methods inpaint (:func:`zoo.two_level_vae.evaluate.evaluate`), so this is the bar on them."""
    truth = next((r["inpaint"][0] for r in found.values() if r["inpaint"] is not None), None)
    if truth is None or rows < 1 or rows > len(truth):
        return math.nan
    if method is None:
        return float(np.sqrt(np.mean(truth[:rows] ** 2)))
    a = found.get(method, {}).get("inpaint")
    if a is None or len(a[1]) < rows:
        return math.nan
    return float(np.sqrt(np.mean((a[1][:rows] - truth[:rows]) ** 2)))


def _bar_lines(ax, zero: float, linear: float) -> None:
    if math.isfinite(zero):
        ax.axhline(zero, color="gray", ls="--", lw=1, label=f"predicting 0: {zero:.3f}")
    if math.isfinite(linear):
        ax.axhline(linear, color="black", ls=":", lw=1,
                   label=f"best linear (ml_gaussian): {linear:.3f}")  # fmt: skip


def _draw_inpaint_bars(ax, found: dict, zero: float, linear: float) -> None:
    methods = list(found)
    values = [found[m]["inpaint_rmse"] for m in methods]
    ax.bar(range(len(methods)), values, color=[_color(m) for m in methods])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=FONT - 1)
    _bar_lines(ax, zero, linear)
    rows, hidden = _first(found, "inpaint_rows"), _first(found, "inpaint_hidden")
    title = [f"{rows:.0f} held-out patches"] if math.isfinite(rows) else []
    title += [f"{hidden:.0f} pixels hidden"] if math.isfinite(hidden) else []
    ax.set_title(", ".join(title) or "held-out patches", fontsize=FONT + 1)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=FONT)
    ax.set_ylabel("RMSE of the hidden pixels", fontsize=FONT)
    ax.set_ylim(0, 1.45 * max(values + [v for v in (zero, linear) if math.isfinite(v)]))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=FONT - 1, loc="upper right", framealpha=0.95)


def _draw_nuts_bars(ax, gold: dict, zero: float, linear: float, rows: float) -> None:
    from matplotlib.patches import Patch

    methods = list(gold)
    for i, m in enumerate(methods):
        g, n = gold[m]["gold_inpaint_rmse_guide"], gold[m]["gold_inpaint_rmse_nuts"]
        ax.bar(i - 0.2, g, width=0.4, color=_color(m))
        ax.bar(i + 0.2, n, width=0.4, color="black")
        for x, v in ((i - 0.2, g), (i + 0.2, n)):
            if math.isfinite(v):
                ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=FONT - 1)
    _bar_lines(ax, zero, linear)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="0.6", label="the guide (its colour)"),
                Patch(color="black", label="NUTS, visible pixels only")]  # fmt: skip
    ax.legend(handles=handles, fontsize=FONT - 1, loc="upper right", framealpha=0.95)
    where = _rows(rows, "NUTS row")[4:] if math.isfinite(rows) else "the NUTS rows"
    ax.set_title(f"{where}: guide against NUTS", fontsize=FONT + 1)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=FONT)
    ax.set_ylabel("RMSE of the hidden pixels", fontsize=FONT)
    top = [gold[m][f"gold_inpaint_rmse_{k}"] for m in methods for k in ("guide", "nuts")]
    top = [v for v in top + [zero, linear] if math.isfinite(v)]
    ax.set_ylim(0, 1.7 * max(top) if top else 1.0)


def _draw_traces(ax, traces: dict, zero: float, linear: float) -> None:
    for m, trace in traces.items():
        start = [zero] if math.isfinite(zero) else []
        steps = np.arange(1 - len(start), len(trace) + 1)
        ax.plot(steps, np.r_[start, trace], color=_color(m), lw=1.4, label=m)
    if math.isfinite(linear):
        ax.axhline(linear, color="black", ls=":", lw=1, label="best linear (ml_gaussian)")
    ax.set_title("the guides' fill-in, step by step", fontsize=FONT + 1)
    ax.set_xlabel("step (0: hidden pixels at 0)", fontsize=FONT)
    ax.set_ylabel("RMSE of the hidden pixels", fontsize=FONT)
    ax.legend(fontsize=FONT - 1, loc="upper right")


def _against(value: float, bar: float) -> str:
    change = value / bar - 1
    return f"{-change:.0%} below" if change < 0 else f"{change:.0%} above"


def _inpaint_caption(found: dict, gold: dict, traces: dict, bars: dict) -> str:
    from zoo.two_level_vae.gold import INPAINT_STEPS

    zero, linear = bars["zero"], bars["linear"]
    hidden = _first(found, "inpaint_hidden")
    side = int(round(math.sqrt(hidden))) if math.isfinite(hidden) else 0
    block = f"{side}x{side} block" if side * side == hidden else "block"
    ranked = sorted(found, key=lambda m: found[m]["inpaint_rmse"])
    guides = [m for m in found if m != "ml_gaussian"]
    said = []
    for m in ranked:
        value = found[m]["inpaint_rmse"]
        against = [f"{_against(value, zero)} predicting 0"] if math.isfinite(zero) else []
        if math.isfinite(linear) and m != "ml_gaussian":
            against.append(f"{_against(value, linear)} the best linear")
        said.append(f"{m} {value:.3f}" + (f" ({', '.join(against)})" if against else ""))
    rows = _first(found, "inpaint_rows")
    text = (
        f"Inpainting: the central {block}"
        + (f" ({hidden:.0f} pixels)" if math.isfinite(hidden) else "")
        + (f" of each of {rows:.0f} held-out patches" if math.isfinite(rows) else " of held-out"
           " patches")
        + " is hidden and predicted from the rest; the root-mean-square error of the hidden"
        " pixels (lower is better). A guide's encoder needs a whole patch, so the hidden pixels"
        f" start at 0 and are replaced {INPAINT_STEPS} times by the decoder's mean of the filled"
        " patch. Predicting 0, the data's mean"
        + (f" (dashed, {zero:.3f})" if math.isfinite(zero) else "")
        + ", is the bar of knowing nothing; the full Gaussian's conditional mean given the"
        " visible pixels"
        + (f" (ml_gaussian, dotted, {linear:.3f})" if math.isfinite(linear) else "")
        + " is the best linear prediction, the bar a nonlinear model has to clear. Best:"
        f" {ranked[0]} ({found[ranked[0]]['inpaint_rmse']:.3f}). "
        + "; ".join(said)
        + "."
    )  # fmt: skip
    if math.isfinite(zero) and guides:
        beat = [m for m in guides if found[m]["inpaint_rmse"] < zero]
        text += (
            " No guide beats predicting 0."
            if not beat
            else f" Beating predicting 0: {', '.join(beat)} of {len(guides)} guide(s)."
        )
    if math.isfinite(linear) and guides:
        clear = [m for m in guides if found[m]["inpaint_rmse"] < linear]
        text += (
            " No guide clears the best linear prediction."
            if not clear
            else f" Clearing the best linear prediction: {', '.join(clear)}."
        )
    for m, trace in traces.items():
        best = int(np.argmin(trace))
        text += (
            f" {m}'s fill-in: " + (f"{zero:.3f} at the start, " if math.isfinite(zero) else "")
            + f"{trace[0]:.3f} after one step,"
            f" {trace[-1]:.3f} after {len(trace)}"
            + (f" (smallest {trace[best]:.3f}, at step {best + 1})." if best < len(trace) - 1
               else ".")
        )  # fmt: skip
    if gold:
        rows = bars["rows"]
        per = []
        for m, g in gold.items():
            ess, rhat = g["gold_inpaint_ess_bulk_min"], g["gold_inpaint_rhat_max"]
            checks = [f"min bulk ESS {ess:.0f}"] if math.isfinite(ess) else []
            checks += [f"max R-hat {rhat:.3f}"] if math.isfinite(rhat) else []
            checks += ["rough: the chains disagree"] if rhat > RHAT_MAX else []
            per.append(
                f"{m}: guide {g['gold_inpaint_rmse_guide']:.3f}, NUTS"
                f" {g['gold_inpaint_rmse_nuts']:.3f}"
                + (f" ({', '.join(checks)})" if checks else "")
            )
        there = [f"predicting 0 gives {bars['zero_rows']:.3f}"] if math.isfinite(
            bars["zero_rows"]) else []  # fmt: skip
        if math.isfinite(bars["linear_rows"]):
            there.append(f"the best linear prediction {bars['linear_rows']:.3f}")
        text += (
            f" On {_rows(rows) if math.isfinite(rows) else 'the NUTS rows'}, NUTS conditioned on"
            " the visible pixels alone predicts Phi E[z1 | visible], the model's own best"
            " prediction, so the guide's excess over NUTS is what its inference loses, and"
            " NUTS's own error what the model itself cannot predict. "
            + "; ".join(per)
            + (f"; there {' and '.join(there)}" if there else "")
            + "."
        )
        if rows < FEW_ROWS:
            text += (
                " A single row is an anecdote, not a measurement: which of guide and NUTS wins"
                " there can flip on the next patch."
                if rows == 1
                else f" {rows:.0f} rows are an anecdote, not a measurement."
            )
    return text


def _draw_examples(found: dict, fig_dir: Path) -> list[Section]:
    """The hidden blocks of the first EXAMPLES rows and every method's prediction of them."""
    shown = {m: r["inpaint"] for m, r in found.items() if r["inpaint"] is not None}
    if not shown:
        return []
    truth = next(iter(shown.values()))[0]
    shown = {m: a for m, a in shown.items() if a.shape[1:] == (2, *truth.shape)[1:]}
    hidden = truth.shape[1]
    side = int(round(math.sqrt(hidden)))
    rows = min(EXAMPLES, len(truth))
    if side * side != hidden or not rows:
        return []
    cols = 1 + len(shown)
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.45 * rows + 0.5), squeeze=False)
    errors = {}
    for r in range(rows):
        lim = max(float(np.abs(a[:, r]).max()) for a in shown.values()) or 1.0
        panels = [("truth", truth[r])] + [(m, a[1, r]) for m, a in shown.items()]
        for c, (name, block) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(block.reshape(side, side), cmap="gray", vmin=-lim, vmax=lim,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace("_on_", "\non "), fontsize=FONT - 1)
            if c == 0:
                ax.set_ylabel(f"patch {r + 1}", fontsize=FONT)
                ax.set_xlabel(f"grey scale \u00b1{lim:.2f}", fontsize=FONT - 1)
            else:
                err = float(np.sqrt(np.mean((block - truth[r]) ** 2)))
                ax.set_xlabel(f"RMSE {err:.2f}", fontsize=FONT - 1)
    for m, a in shown.items():
        errors[m] = float(np.sqrt(np.mean((a[1, :rows] - truth[:rows]) ** 2)))
    caption = (
        f"The hidden {side}x{side} blocks of the first {rows} held-out patches (rows; left, the"
        " truth) and each method's prediction of them (columns), every row on its own grey"
        " scale, symmetric about 0 (mid-grey, the data's mean; its reach under the truth); the"
        " visible pixels around each block are not drawn. Under each prediction its RMSE on"
        f" that block. Over these {rows} blocks: "
        + ", ".join(f"{m} {e:.3f}" for m, e in errors.items())
        + f", against {float(np.sqrt(np.mean(truth[:rows] ** 2))):.3f} for predicting 0. Four"
        " blocks show the kind of prediction (smooth or sharp, right sign or not), not which"
        " method is better: that is the bar chart's, over every row."
    )
    return _saved(fig, fig_dir / "inpainting_examples.png", "Inpainted examples", caption)


def plot_inpainting(results, idatas, fig_dir: Path) -> list[Section]:
    """The RMSE of every method's prediction of the hidden central block of held-out patches,
    predicting 0 and the best linear prediction as lines; on the NUTS rows, guide against NUTS;
    the guides' fill-in step by step where stored; and a few predicted blocks."""
    found = {}
    for method, record in results.get("methods", {}).items():
        r = _inpaint_record(record, idatas.get(method))
        if r is not None:
            found[method] = r
    if not found:
        return []
    gold = {m: r for m, r in found.items()
            if math.isfinite(r["gold_inpaint_rmse_nuts"])
            and math.isfinite(r["gold_inpaint_rmse_guide"])}  # fmt: skip
    traces = {m: r["trace"] for m, r in found.items() if r["trace"] is not None}
    linear = found["ml_gaussian"]["inpaint_rmse"] if "ml_gaussian" in found else math.nan
    rows = _first(gold, "gold_rows") if gold else math.nan
    known = math.isfinite(rows)
    bars = {
        "zero": _first(found, "inpaint_rmse_zero"),
        "linear": linear,
        "rows": rows,
        "zero_rows": _rows_rmse(found, None, int(rows)) if known else math.nan,
        "linear_rows": _rows_rmse(found, "ml_gaussian", int(rows)) if known else math.nan,
    }
    panels = 1 + bool(gold) + bool(traces)
    width = max(4.2, 0.75 * len(found) + 2.2)
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, 3.8), squeeze=False)
    axes = list(axes.flat)
    _draw_inpaint_bars(axes.pop(0), found, bars["zero"], linear)
    if gold:
        _draw_nuts_bars(axes.pop(0), gold, bars["zero_rows"], bars["linear_rows"], rows)
    if traces:
        _draw_traces(axes.pop(0), traces, bars["zero"], linear)
    for ax in fig.axes:
        ax.tick_params(labelsize=FONT)
    caption = _inpaint_caption(found, gold, traces, bars)
    sections = _saved(fig, fig_dir / "inpainting.png", "Inpainting", caption)
    return sections + _draw_examples(found, fig_dir)


TWO_LEVEL_FIGURES = (
    plot_log_px,
    plot_layers,
    plot_gold,
    plot_inpainting,
    plot_receptive_fields,
    plot_gabor_fits,
    plot_textures,
    plot_vae_training,
)
