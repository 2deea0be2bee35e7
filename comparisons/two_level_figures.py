"""Figures of the two-level VAE's comparison (``zoo compare two_level_vae``), drawn from the
files of an out-dir alone: what :mod:`zoo.two_level_vae.evaluate` stores in each trained
method's ``constant_data`` and the numbers of results.json. Every caption is written from
the numbers it shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from comparisons.metrics import KHAT_BAD
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
        " localized or oriented." + " No Gabor fits are made yet."
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


TWO_LEVEL_FIGURES = (plot_log_px, plot_layers, plot_receptive_fields, plot_vae_training)
