"""Figures and a self-contained HTML page, rendered from the files of an out-dir alone
(results.json and <method>.nc), so ``zoo report DIR`` can redo them at any time."""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import gaussian_kde  # noqa: E402

from comparisons.figures import MODEL_FIGURES, plot_selection  # noqa: E402
from comparisons.metrics import KHAT_BAD, labelled  # noqa: E402
from zoo import ZooInputError  # noqa: E402

MAX_MARGINALS = 12
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def load(out_dir: str | Path) -> tuple[dict, dict[str, az.InferenceData]]:
    """results.json and the InferenceData of each method listed in it."""
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    if not path.is_file():
        raise ZooInputError(
            f"'{out_dir}' holds no results.json; give a folder written by zoo compare"
        )
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ZooInputError(f"'{path}' is not valid JSON ({exc.msg}); re-run zoo compare") from None
    idatas = {}
    for method in results.get("methods", {}):
        nc = out_dir / f"{method}.nc"
        if nc.is_file():
            idatas[method] = az.from_netcdf(str(nc), engine="h5netcdf")
    return results, idatas


def _meta(idata: az.InferenceData) -> dict:
    return json.loads(idata.posterior.attrs["zoo"])


def _color(methods: list[str], method: str) -> str:
    return COLORS[methods.index(method) % len(COLORS)]


def _savefig(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_marginals(results, idatas, sites, path: Path) -> bool:
    reference = results.get("reference")
    methods = list(idatas)
    draws = {m: labelled(idatas[m], sites) for m in methods}
    labels = list(next(iter(draws.values())))[:MAX_MARGINALS]
    ncol = min(4, len(labels))
    nrow = -(-len(labels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        values = [np.ravel(d[label]) for d in draws.values()]
        spread = [v for v in values if v.std() > 0]
        if spread:
            lo, hi = np.quantile(np.concatenate(spread), [0.002, 0.998])
        else:  # point estimates only: a window around them
            points = np.concatenate(values)
            half = max(points.max() - points.min(), 0.1 * abs(points).max(), 1e-3)
            lo, hi = points.min() - half, points.max() + half
        grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 200)
        for m in methods:
            v = np.ravel(draws[m][label])
            style = (
                {"color": "black", "lw": 2.5, "zorder": 5}
                if m == reference
                else {"color": _color(methods, m), "lw": 1.3}
            )
            if v.std() == 0:
                ax.axvline(v[0], ls="--", label=m, **style)
            else:
                ax.plot(grid, gaussian_kde(v)(grid), label=m, **style)
        ax.set_title(label, fontsize=9)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    _savefig(fig, path)
    return True


def most_correlated_pair(ref_draws: dict[str, np.ndarray]) -> tuple[str, str, float] | None:
    labels = [k for k, v in ref_draws.items() if np.std(v) > 0]
    if len(labels) < 2:
        return None
    corr = np.corrcoef(np.stack([ref_draws[k] for k in labels]))
    np.fill_diagonal(corr, 0.0)
    i, j = np.unravel_index(np.argmax(np.abs(corr)), corr.shape)
    return labels[i], labels[j], float(corr[i, j])


def plot_pair(results, idatas, sites, path: Path) -> str | None:
    reference = results.get("reference")
    if reference not in idatas:
        return None
    ref = labelled(idatas[reference], sites)
    pair = most_correlated_pair(ref)
    if pair is None:
        return None
    a, b, r = pair
    methods = list(idatas)
    ncol = min(4, len(methods))
    nrow = -(-len(methods) // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False, sharex=True, sharey=True
    )
    rng = np.random.default_rng(0)
    take = rng.permutation(len(ref[a]))[:1500]
    for ax, m in zip(axes.flat, methods):
        ax.scatter(ref[a][take], ref[b][take], s=3, color="0.75", label=f"{reference} (reference)")
        d = labelled(idatas[m], sites)
        pick = rng.permutation(len(d[a]))[:1500]
        if np.std(d[a]) == 0:
            ax.plot(d[a][0], d[b][0], "x", color="red", ms=10, mew=2, label=m)
        else:
            ax.scatter(d[a][pick], d[b][pick], s=3, alpha=0.5, color=_color(methods, m), label=m)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel(a, fontsize=8)
        ax.set_ylabel(b, fontsize=8)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    _savefig(fig, path)
    return f"{a} and {b} (reference correlation {r:+.2f})"


def plot_elbo(idatas, path: Path) -> bool:
    traces = {
        m: (np.asarray(i.posterior.attrs["elbo"]), _meta(i).get("trace_label", "ELBO"))
        for m, i in idatas.items()
        if "elbo" in i.posterior.attrs
    }
    if not traces:
        return False
    fig, axes = plt.subplots(1, len(traces), figsize=(3.2 * len(traces), 2.8), squeeze=False)
    for ax, (m, (t, label)) in zip(axes.flat, traces.items()):
        ax.plot(np.arange(len(t)), t, lw=0.6)
        ax.set_ylabel(label, fontsize=8)
        lo = np.quantile(t[len(t) // 10 :], 0.01) if len(t) > 20 else t.min()
        span = t.max() - lo
        ax.set_ylim(lo - 0.1 * span, t.max() + 0.1 * span + 1e-9)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    _savefig(fig, path)
    return True


def plot_nuts(idata, sites, fig_dir: Path) -> list[str]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_trace(idata, var_names=list(sites), compact=True, show=False)
        _savefig(np.ravel(axes)[0].figure, fig_dir / "nuts_trace.png")
        out.append("nuts_trace.png")
        axes = az.plot_rank(idata, var_names=list(sites), show=False)
        _savefig(np.ravel(axes)[0].figure, fig_dir / "nuts_rank.png")
        out.append("nuts_rank.png")
    return out


def plot_predictive(results, idatas, path: Path) -> str | None:
    reference = results.get("reference")
    points = [m for m, i in idatas.items() if _meta(i)["point"]]
    if reference not in idatas or not points or "posterior_predictive" not in idatas[reference]:
        return None
    point = points[0]
    obs = next(iter(idatas[reference].observed_data.data_vars))
    label = _meta(idatas[reference])["grid_label"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, m in zip(axes, (point, reference)):
        idata = idatas[m]
        pp = idata.posterior_predictive
        grid = pp.coords["grid"].values
        y = pp[f"{obs}_grid"].values.reshape(-1, len(grid))
        mu = pp["mean_grid"].values.reshape(-1, len(grid))
        ax.scatter(
            idata.constant_data["plot_x"].values,
            idata.observed_data[obs].values,
            s=6,
            color="0.5",
            label="fitted rows",
        )
        lo, hi = np.quantile(y, [0.05, 0.95], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.25, label="90% predictive interval")
        mlo, mhi = np.quantile(mu, [0.05, 0.95], axis=0)
        ax.fill_between(grid, mlo, mhi, alpha=0.5, label="90% interval of the mean")
        ax.plot(grid, np.median(mu, axis=0), color="black", lw=1)
        ax.set_title(f"{m} ({'point estimate' if m == point else 'full posterior'})", fontsize=10)
        ax.set_xlabel(label)
    axes[0].set_ylabel(_meta(idatas[reference])["description"].get("response", obs))
    axes[0].legend(fontsize=7)
    _savefig(fig, path)
    return point


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.4g}"
    return html.escape(str(value))


TABLE = [
    ("max |mean z|", "metrics", "max_abs_mean_z"),
    ("sd ratio min", "metrics", "sd_ratio_min"),
    ("sd ratio max", "metrics", "sd_ratio_max"),
    ("lpd train", "metrics", "lpd_train"),
    ("lpd test", "metrics", "lpd_test"),
    ("elpd LOO", "metrics", "elpd_loo"),
    ("PSIS k", "diagnostics", "khat"),
    ("wall s", "cost", "wall_s"),
    ("grad evals", "cost", "grad_evals"),
    ("ESS/s", "metrics", "ess_per_s"),
]


def _one_k(results: dict, idatas: dict[str, az.InferenceData]) -> tuple[dict, dict]:
    """The results and InferenceData of one K of a selection, method names without -k<K>."""
    chosen = results["selection"]["chosen"]
    k = chosen.get("elpd_loo", next(iter(chosen.values()), None))
    suffix = f"-k{k}"
    methods = {
        m[: -len(suffix)]: rec for m, rec in results["methods"].items() if m.endswith(suffix)
    }
    subset = {m[: -len(suffix)]: i for m, i in idatas.items() if m.endswith(suffix)}
    return {**results, "methods": methods, "shown_k": k}, subset


def render(out_dir: str | Path) -> Path:
    """Draw the figures and write index.html in ``out_dir`` from its results.json and .nc files."""
    out_dir = Path(out_dir)
    results, idatas = load(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    sections: list[tuple[str, str, str]] = []
    page_results = results
    if "selection" in results:
        # Choosing K: the criteria first, then the figures of one K (the ELPD's choice, else
        # the first criterion's), its methods under their own names.
        sections += plot_selection(results, fig_dir)
        results, idatas = _one_k(results, idatas)
        page_results = {**page_results, "shown_k": results["shown_k"]}
    sites = _meta(next(iter(idatas.values())))["sites"] if idatas else []
    if idatas:
        plot_marginals(results, idatas, sites, fig_dir / "marginals.png")
        sections.append(
            (
                "Marginal posteriors",
                "marginals.png",
                "Each panel is one parameter: the reference in thick black, every method in "
                "colour, point estimates as dashed lines. A curve narrower than the reference "
                "is over-confident; one shifted from it is biased.",
            )
        )
        pair = plot_pair(results, idatas, sites, fig_dir / "pair.png")
        if pair:
            sections.append(
                (
                    "The most correlated pair",
                    "pair.png",
                    f"{html.escape(pair)}. Grey: reference draws; colour: each method. A "
                    "mean-field guide cannot tilt: it shrinks to the narrow width of the "
                    "ridge and misses its length.",
                )
            )
        if plot_elbo(idatas, fig_dir / "elbo.png"):
            sections.append(
                (
                    "Objective traces",
                    "elbo.png",
                    "The objective of each fit per step: the ELBO of a stochastic guide, the "
                    "log joint at each L-BFGS iterate of delta and laplace, the "
                    "log-likelihood after each EM iteration (which never decreases). A trace "
                    "still rising at its end did not converge; spikes or a drop show an "
                    "unstable learning rate.",
                )
            )
        if "nuts" in idatas:
            names = plot_nuts(idatas["nuts"], sites, fig_dir)
            sections.append(
                (
                    "NUTS trace",
                    names[0],
                    "Left: the marginal of each chain; right: the draws in order. Chains "
                    "should overlap and look like noise.",
                )
            )
            sections.append(
                (
                    "NUTS rank plots",
                    names[1],
                    "Ranks of each chain's draws among all draws: flat histograms mean "
                    "the chains mix; slopes or humps mean they do not (R-hat > 1.01).",
                )
            )
        point = plot_predictive(results, idatas, fig_dir / "predictive.png")
        if point:
            sections.append(
                (
                    "Posterior predictive: point estimate against the full posterior",
                    "predictive.png",
                    f"Left: plugging the {html.escape(point)} point into the likelihood "
                    "gives the noise band alone; right: the full posterior adds the "
                    "uncertainty of the parameters, wider away from the data.",
                )
            )
    for plot in MODEL_FIGURES.get(results["model"], ()):
        sections += plot(results, idatas, fig_dir)
    page = _page(page_results, sections, fig_dir)
    target = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(page)
    tmp.replace(target)
    return target


#: Metrics with a column of their own, or none (said in the text instead).
_NOT_COLUMNS = {"elpd_loo_se", "ref_mcse_z_max"}


def _columns(results: dict) -> list[tuple[str, str, str]]:
    """The table's columns: the common ones, then the model's own metrics that appear."""
    shown = {k for _, _, k in TABLE} | _NOT_COLUMNS
    extra = []
    for rec in results["methods"].values():
        for key in rec.get("metrics", {}):
            if key not in shown and key not in extra:
                extra.append(key)
    return TABLE + [(key.replace("_", " "), "metrics", key) for key in extra]


def _selection_html(results: dict) -> str:
    selection = results.get("selection")
    if not selection:
        return ""
    rows = "".join(
        "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            r["k"],
            _fmt(r.get("elpd_loo")),
            _fmt(r.get("elpd_loo_se")),
            _fmt(r.get("elbo")),
            _fmt(r.get("bic")),
        )
        for r in selection["criteria"]
    )
    compare_rows = "".join(
        f"<tr><th>{t['k']}</th><td>{t['rank']}</td><td>{_fmt(t['elpd_diff'])}</td>"
        f"<td>{_fmt(t['dse'])}</td><td>{_fmt(t['weight'])}</td></tr>"
        for t in selection.get("loo_compare", [])
    )
    chosen = ", ".join(f"{html.escape(k)}: K = {v}" for k, v in selection["chosen"].items())
    warned = "".join(
        f"<p class=warn>{html.escape(text)}</p>" for text in selection.get("warnings", {}).values()
    )
    out = (
        "<h2>Number of components</h2>"
        f"<p>Chosen: {chosen}. The figures below are those of K = {results.get('shown_k')}."
        " elpd_loo_one_se: the smallest K whose ELPD is within one standard error of the"
        f" difference (dse) of the best.</p>{warned}"
        "<table><tr><th>K</th><th>elpd LOO</th><th>se</th><th>ELBO (mean-field)</th>"
        f"<th>BIC (EM)</th></tr>{rows}</table>"
    )
    if compare_rows:
        out += (
            "<p>ArviZ <code>compare</code> of the NUTS fits (PSIS-LOO):</p><table><tr>"
            "<th>K</th><th>rank</th><th>elpd diff</th><th>dse</th><th>weight</th></tr>"
            f"{compare_rows}</table>"
        )
    return out


def _label_swaps_html(results: dict) -> str:
    swaps = {
        m: rec["diagnostics"]["label_swaps_per_chain"]
        for m, rec in results["methods"].items()
        if "label_swaps_per_chain" in rec.get("diagnostics", {}) and m.startswith("nuts")
    }
    if not swaps:
        return ""
    said = "; ".join(f"{html.escape(m)}: {html.escape(str(v))}" for m, v in swaps.items())
    return (
        f"<p>Label swaps per chain (consecutive draws whose component order changed, undone by "
        f"relabelling before any summary): {said}. An optimizer or a guide sits in one of the "
        "K! symmetric modes and makes none.</p>"
    )


def _page(results: dict, sections, fig_dir: Path) -> str:
    ref = results.get("reference")
    rows = []
    columns = _columns(results)
    for m, rec in results["methods"].items():
        cells = "".join(f"<td>{_fmt(rec.get(g, {}).get(k))}</td>" for _, g, k in columns)
        cls = ' class="failed"' if rec["diagnostics"].get("status") == "failed" else ""
        rows.append(
            f"<tr{cls}><th>{html.escape(m)}</th>{cells}<td class=v>"
            f"{html.escape(rec.get('verdict', ''))}</td></tr>"
        )
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in columns)
    diag_rows = []
    for m, rec in results["methods"].items():
        d = ", ".join(f"{html.escape(k)}: {_fmt(v)}" for k, v in rec["diagnostics"].items())
        diag_rows.append(f"<tr><th>{html.escape(m)}</th><td>{d}</td></tr>")
    bad_k = [
        m for m, rec in results["methods"].items() if rec["diagnostics"].get("khat", 0) > KHAT_BAD
    ]
    warnings_html = ""
    if bad_k:
        warnings_html = (
            f"<p class=warn>PSIS k above {KHAT_BAD} for {', '.join(bad_k)}: the guide "
            "is far from the posterior where it matters; its draws cannot be corrected by "
            "importance weighting.</p>"
        )
    post = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in results.get("posterior", {}).items()
    )
    figs = "".join(
        f"<h2>{html.escape(t)}</h2><p>{cap}</p>{_img(fig_dir / f)}" for t, f, cap in sections
    )
    timings = ", ".join(f"{k}: {v:.2f}" for k, v in results.get("timings", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    ref_note = (
        f"Accuracy is measured against <b>{html.escape(ref)}</b>: mean z = |mean - "
        "mean<sub>ref</sub>| / sd<sub>ref</sub>, sd ratio = sd / sd<sub>ref</sub>."
        if ref
        else "<b>No reference</b>: nothing is judged (zoo fit), or the reference failed."
    )
    status = results.get("reference_status") or {}
    if status.get("reliable") is False:
        ref_note += (
            f" <b class=warn>The reference is unreliable</b> ({html.escape(status['problems'])}):"
            " it fails its own checks, so every accuracy number below is provisional; rerun it"
            " longer (--preset full)."
        )
    mcse = [rec["metrics"].get("ref_mcse_z_max") for rec in results["methods"].values()]
    mcse = [v for v in mcse if v is not None]
    if mcse:
        ref_note += (
            f" The reference's own Monte Carlo error is up to {max(mcse):.3f} on the z "
            "scale: smaller |z| differences are noise."
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>zoo: {html.escape(results["model"])} on {html.escape(results["dataset"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th {{ background: #f4f4f4; }} td.v {{ text-align: left; }}
tr.failed td {{ color: #a00; }} .warn {{ color: #a00; }}
img {{ max-width: 100%; }} .small {{ color: #666; font-size: 0.8em; }}
</style></head><body>
<h1>{html.escape(results["model"])} on {html.escape(results["dataset"])}</h1>
<p>{results["num_data"]} rows fitted, {results.get("num_test", 0)} held out; seed {results["seed"]},
preset {html.escape(str(results.get("preset")))}.</p>
<table>{post}</table>
<h2>Accuracy and cost</h2>
<p>{ref_note} lpd: mean log predictive density per row (a point estimate: log-likelihood at the
point); elpd LOO: PSIS leave-one-out; PSIS k: how far the guide is from the posterior
(above {KHAT_BAD}: unreliable); ESS/s: bulk ESS per second for NUTS, PSIS effective sample size
per second for a guide.</p>
<table><tr><th>method</th>{head}<th>verdict</th></tr>{"".join(rows)}</table>
{warnings_html}
{_label_swaps_html(results)}
{_selection_html(results)}
<h2>Diagnostics</h2>
<table>{"".join(diag_rows)}</table>
{figs}
<p class=small>Versions: {html.escape(versions)}. Timings (s): {html.escape(timings)}.</p>
</body></html>
"""
