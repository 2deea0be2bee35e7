"""The report of a calibration (``zoo calibrate``): results.json, one figure per method (a
parameter's rank histogram over its ECDF-difference plot, six parameters to a row) and a
self-contained index.html, every file written whole or not at all."""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from comparisons.calibration import BAND_PROB, ecdf_band  # noqa: E402
from comparisons.engine import write_atomic  # noqa: E402
from comparisons.report import _img  # noqa: E402

#: Bins of the rank histograms (ranks 0..L share them evenly when L + 1 is a multiple).
BINS = 20


def write_report(out_dir: Path, results: dict[str, Any]) -> Path:
    """results.json, figures/calibration-<method>.png and index.html in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    cal = results["calibration"]
    figures = {}
    for method, summary in cal["methods"].items():
        if summary["parameters"]:
            figures[method] = plot_method(method, summary, cal["num_rank_draws"], fig_dir)
    write_atomic(out_dir / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    page = out_dir / "index.html"
    write_atomic(page, _page(results, figures).encode())
    return page


#: Parameters drawn side by side in a method's figure, and at most this many drawn in all
#: (every flagged one first: a VAE's 10 rows of 8 latents are 80 parameters).
COLUMNS, MAX_SHOWN = 6, 24


def shown_parameters(params: dict[str, Any]) -> list[str]:
    """The parameters a method's figure draws, in their order: all of them up to
    :data:`MAX_SHOWN`, else the flagged ones first and then the first others."""
    labels = list(params)
    if len(labels) <= MAX_SHOWN:
        return labels
    flagged = [k for k in labels if params[k]["verdict"] != "calibrated"]
    keep = set(flagged[:MAX_SHOWN])
    keep |= set([k for k in labels if k not in keep][: MAX_SHOWN - len(keep)])
    return [k for k in labels if k in keep]


def plot_method(method: str, summary: dict[str, Any], num_rank_draws: int, fig_dir: Path) -> Path:
    """Rank histograms (top) and ECDF differences with their simultaneous band (bottom) of
    each parameter shown (:func:`shown_parameters`), :data:`COLUMNS` to a row."""
    params = summary["parameters"]
    labels = shown_parameters(params)
    L = num_rank_draws
    cols = min(COLUMNS, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.0 * cols + 0.6, 5.4 * rows + 0.4),
                             squeeze=False)  # fmt: skip
    for ax in axes[:, len(labels) % cols or cols :][-2:].ravel():
        ax.axis("off")  # the last row's empty places
    for index, label in enumerate(labels):
        p = params[label]
        ranks = np.asarray(p["ranks"])
        n = len(ranks)
        row, col = divmod(index, cols)
        top, bottom = axes[2 * row, col], axes[2 * row + 1, col]
        edges = np.linspace(-0.5, L + 0.5, BINS + 1)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / BINS)
        top.axhspan(lo, hi, color="0.88", lw=0)
        top.axhline(n / BINS, color="0.5", lw=0.8)
        top.hist(ranks, bins=edges, color="C0" if p["verdict"] == "calibrated" else "C3")
        verdict = textwrap.fill(p["verdict"], 36)  # three lines at most, in a panel's width
        top.set_title(f"{label}\n{verdict}", fontsize=9)
        top.set_xlim(-0.5, L + 0.5)
        top.set_xticks([0, L // 2, L])
        points = np.arange(L)
        uniform = (points + 1) / (L + 1)
        ecdf = (ranks[None, :] <= points[:, None]).mean(1)
        lower, upper = ecdf_band(n, L, p["band_prob"])
        bottom.fill_between(uniform, lower - uniform, upper - uniform, color="0.88", lw=0)
        bottom.axhline(0, color="0.5", lw=0.8)
        bottom.step(uniform, ecdf - uniform, where="mid",
                    color="C0" if p["inside_band"] else "C3")  # fmt: skip
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("fractional rank")
        if col == 0:
            top.set_ylabel("replications")
            bottom.set_ylabel("ECDF - uniform")
        bottom.text(0.03, 0.04, f"90%: {p['coverage_90']:.2f}  50%: {p['coverage_50']:.2f}",
                    transform=bottom.transAxes, fontsize=8)  # fmt: skip
    which = (
        ""
        if len(labels) == len(params)
        else (f"; {len(labels)} of its {len(params)} parameters shown, every flagged one first")
    )
    fig.suptitle(f"{method}: ranks of the truth among {L} posterior draws, {n} replications"
                 f"{which}", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title
    path = fig_dir / f"calibration-{method}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _page(results: dict[str, Any], figures: dict[str, Path]) -> str:
    cal = results["calibration"]
    L, n = cal["num_rank_draws"], cal["finished"]
    rows = []
    for method, summary in cal["methods"].items():
        for label, p in summary["parameters"].items():
            vsbc = f"{p['vsbc_p']:.3f}" if "vsbc_p" in p else ""
            cls = "" if p["verdict"] == "calibrated" else ' class="flag"'
            rows.append(
                f"<tr{cls}><th>{html.escape(method)}</th><td>{html.escape(label)}</td>"
                f"<td>{p['coverage_50']:.2f}</td><td>{p['coverage_90']:.2f}</td>"
                f"<td>{p['mean_rank_fraction']:.2f}</td><td>{'yes' if p['inside_band'] else 'no'}"
                f"</td><td>{vsbc}</td><td>{html.escape(p['verdict'])}</td></tr>"
            )
        if summary["failed_replications"]:
            rows.append(
                f"<tr class=flag><th>{html.escape(method)}</th><td colspan=7>failed in"
                f" {len(summary['failed_replications'])} replications:"
                f" {', '.join(map(str, summary['failed_replications'][:20]))}</td></tr>"
            )
    overview = "".join(
        _overview_row(m, results["methods"][m], s) for m, s in cal["methods"].items()
    )
    failed = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in cal["failed"].items()
    )
    failed_html = f"<h2>Failed replications</h2><ul>{failed}</ul>" if failed else ""
    figs = "".join(
        f"<h3>{html.escape(m)}</h3>{_img(path)}<p class=small>{html.escape(_caption(m, L))}</p>"
        for m, path in figures.items()
    )
    engine = cal["engine"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>zoo calibrate: {html.escape(results["model"])} on {html.escape(results["dataset"])}</title>
<style>
body {{ font-family: sans-serif; max-width: 1250px; margin: 2em auto; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
tr.flag td {{ background: #fde8e8; }}
img {{ max-width: 100%; }}
.small {{ font-size: 0.9em; color: #444; }}
</style></head><body>
<h1>Calibration of {html.escape(results["model"])} on the design of
{html.escape(results["dataset"])}</h1>
<p>Simulation-based calibration: {n} of {cal["replications"]} replications finished, each
with {html.escape(cal.get("design", "data simulated from parameters drawn from the prior"))};
seed {results["seed"]}, preset
{html.escape(str(results["preset"]))}. Each method's rank of the true value among {L} of its
posterior draws is uniform on 0..{L} when the method is calibrated.</p>
<table><tr><th>method</th><th>parameters calibrated</th><th>mean coverage 50%</th>
<th>mean coverage 90%</th><th>lowest coverage 90%</th><th>seconds a replication</th>
<th>verdicts</th></tr>
{overview}</table>
<p class=small>One line per method: its parameters' coverages averaged (nominal 0.50 and
0.90) and the lowest; each verdict other than calibrated, once (calibrated where there is
none). Each parameter's line follows.</p>
<table><tr><th>method</th><th>parameter</th><th>coverage 50%</th><th>coverage 90%</th>
<th>mean fractional rank</th><th>ECDF inside band</th><th>VSBC p</th><th>verdict</th></tr>
{"".join(rows)}</table>
<p class=small>Coverage: the share of replications whose truth falls in the method's central
50% and 90% intervals (nominal 0.50 and 0.90). Mean fractional rank: 0.5 when unbiased; above
it the posterior sits below the truth. ECDF inside band: the ECDF of the ranks stays inside
the simultaneous band of Säilynoja et al. (2022), at {BAND_PROB:.0%} for the method over all
its parameters. VSBC p (variational methods, Yao et al. 2018; Wilcoxon's signed-rank test): a
small value says the truth's quantile under q is not symmetric about 0.5, so q's centre is
off.</p>
{failed_html}
<h2>Ranks</h2>
{figs}
<p class=small>Engine: {html.escape(str(engine["scheduler"]))}; {engine["ran"]} replications run
now, {engine["resumed"]} read back from an earlier run; {engine["wall_s"]:.1f} s.
Versions: {html.escape(", ".join(f"{k} {v}" for k, v in results["versions"].items()))}.</p>
</body></html>
"""


def _overview_row(method: str, record: dict[str, Any], summary: dict[str, Any]) -> str:
    """A method's line of the overview: how many parameters are calibrated, its mean and
    lowest coverages, its time a replication, its verdicts."""
    params = list(summary["parameters"].values())
    d = record["diagnostics"]
    wall = summary.get("wall_s_mean")
    if not params:
        cells = "<td colspan=4>no replication gave ranks</td>"
    else:
        c50 = sum(p["coverage_50"] for p in params) / len(params)
        c90 = sum(p["coverage_90"] for p in params) / len(params)
        lowest = record["metrics"]["coverage_90_min"]
        cells = (f"<td>{d['parameters_calibrated']} of {d['parameters']}</td><td>{c50:.2f}</td>"
                 f"<td>{c90:.2f}</td><td>{lowest:.2f}</td>")  # fmt: skip
    cls = "" if d["verdict"] == "calibrated" else ' class="flag"'
    seconds = "" if wall is None else f"{wall:.2f}"
    return (f"<tr{cls}><th>{html.escape(method)}</th>{cells}<td>{seconds}</td>"
            f"<td>{html.escape(d['verdict'])}</td></tr>")  # fmt: skip


def _caption(method: str, L: int) -> str:
    return (
        f"Top: how many replications gave each rank of the truth among {L} draws of {method}, "
        "in bins of equal width; the grey band holds 99% of a calibrated method's bins (a bin "
        "outside it now and then is chance: the verdict is the ECDF's, below). A U "
        "says over-confident (intervals too narrow), a hump under-confident, a slope biased. "
        "Bottom: the ECDF of the fractional ranks minus the uniform CDF, with the simultaneous "
        "band of a calibrated method: a line leaving the band is a departure; above zero on the "
        "left and below on the right is the U of over-confidence."
    )
