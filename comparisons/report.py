"""Figures and a self-contained HTML page, rendered from the files of an out-dir alone
(results.json and <method>.nc), so ``zoo report DIR`` can redo them at any time."""

from __future__ import annotations

import base64
import html
import importlib
import json
import warnings
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import gaussian_kde, rankdata  # noqa: E402

from comparisons.figures import MODEL_FIGURES, method_color, plot_selection  # noqa: E402
from comparisons.metrics import KHAT_BAD, labelled  # noqa: E402
from zoo import ZooInputError  # noqa: E402

MAX_MARGINALS = 12
#: NUTS trace and rank panels: at most this many scalars, those with the highest R-hat.
MAX_TRACE_PANELS = 8
#: A method's correlation within this of the reference's: its cloud is tilted like it.
TILT_TOLERANCE = 0.1
#: Reference correlations below this in size: the pair is barely correlated.
WEAK_CORRELATION = 0.3
#: sd ratios inside this band match the reference (the verdicts' band).
SD_BAND = (0.9, 1.1)
FONT = 9


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


def _attrs(idata: az.InferenceData) -> dict:
    """A method's metadata and objective trace: the InferenceData's own attrs (files of an
    earlier zoo kept them on the posterior group)."""
    if "zoo" in idata.attrs or "posterior" not in idata.groups():
        return idata.attrs
    return idata.posterior.attrs


def _meta(idata: az.InferenceData) -> dict:
    return json.loads(_attrs(idata)["zoo"])


def shown_sites(idata: az.InferenceData) -> list[str]:
    """The sites the marginal, pair and trace figures show: those the accuracy columns judge
    (a model names them: identified quantities where raw parameters are not), else all."""
    meta = _meta(idata)
    return list(meta.get("accuracy_sites") or meta["sites"])


def _savefig(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _names(methods) -> str:
    return ", ".join(html.escape(m) for m in methods)


def plot_marginals(results, idatas, sites, path: Path) -> str:
    """One panel per scalar (at most :data:`MAX_MARGINALS`), every method in its colour;
    returns the caption, written from the numbers of results.json."""
    reference = results.get("reference")
    methods = list(idatas)
    draws = {m: labelled(idatas[m], sites) for m in methods}
    every = list(next(iter(draws.values())))
    labels = every[:MAX_MARGINALS]
    ncol = min(4, len(labels))
    nrow = -(-len(labels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    clipped: set[str] = set()
    for ax, label in zip(axes.flat, labels):
        values = [np.ravel(d[label]) for d in draws.values()]
        window = _window({m: np.ravel(draws[m][label]) for m in methods}, reference)
        if window is not None:
            lo, hi, wide = window
            clipped.update(wide)
        else:  # point estimates only: a window around them
            points = np.concatenate(values)
            half = max(points.max() - points.min(), 0.1 * abs(points).max(), 1e-3)
            lo, hi = points.min() - half, points.max() + half
        grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 200)
        for m in methods:
            v = np.ravel(draws[m][label])
            is_ref = m == reference
            style = {"color": method_color(m), "lw": 3.0 if is_ref else 1.3}
            style["zorder"] = 5 if is_ref else 3
            name = f"{m} (reference)" if is_ref else m
            if v.std() == 0:
                ax.axvline(v[0], ls="--", label=name, **style)
            else:
                ax.plot(grid, gaussian_kde(v)(grid), label=name, **style)
        ax.set_title(label, fontsize=FONT)
        ax.set_yticks([])
        ax.tick_params(labelsize=FONT - 1)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=FONT - 1)
    _savefig(fig, path)
    all_sites = _meta(next(iter(idatas.values())))["sites"]
    caption = marginals_caption(
        results, methods, sites, all_sites=all_sites, shown=len(labels), total=len(every)
    )
    if clipped:
        caption += (
            f" Each window is set by the other methods: {_names(sorted(clipped))} spread"
            " more than 10 times wider on some panels, and run off their edges there."
        )
    return caption


#: A method whose central 99.6% interval is this many times wider than the typical
#: method's does not set a marginal panel's window (PPCA's Laplace on a flat rotation).
WINDOW_WIDTH_RATIO = 10.0


def _window(values: dict[str, np.ndarray], reference: str | None):
    """The x-window of a marginal panel, ``(lo, hi, methods left out)``: the union of the
    central 99.6% intervals of the methods with spread, leaving out a method more than
    :data:`WINDOW_WIDTH_RATIO` times wider than the median width (never the reference);
    None when every method is a point."""
    spans = {m: np.quantile(v, [0.002, 0.998]) for m, v in values.items() if v.size and v.std() > 0}
    if not spans:
        return None
    typical = float(np.median([hi - lo for lo, hi in spans.values()]))
    wide = [
        m
        for m, (lo, hi) in spans.items()
        if m != reference and hi - lo > WINDOW_WIDTH_RATIO * typical
    ]
    kept = [spans[m] for m in spans if m not in wide]
    points = [v[0] for m, v in values.items() if m not in spans and v.size]
    lo = min([k[0] for k in kept] + points)
    hi = max([k[1] for k in kept] + points)
    return float(lo), float(hi), wide


def marginals_caption(
    results: dict,
    methods: list[str],
    sites: list[str],
    *,
    all_sites: list[str] | None = None,
    shown: int,
    total: int,
) -> str:
    """What the marginals figure shows, from results.json: which methods are narrower,
    wider or shifted against the reference, or, with no reference, that nothing is judged."""
    reference = results.get("reference")
    records = results["methods"]
    points = [
        m
        for m in methods
        if records.get(m, {}).get("summary")
        and all(s["sd"] == 0 for s in records[m]["summary"].values())
    ]
    text = _marginals_intro(reference, methods, points)
    if reference in points:
        text += (
            f" The reference ({html.escape(reference)}) is a point: it has no spread to "
            "measure the others' widths against, so none is judged here."
        )
    elif reference in methods:
        text += _marginals_judged(records, methods, reference=reference, points=points)
    if total > shown:
        text += f" The first {shown} of {total} parameters are drawn; results.json has all."
    left_out = [s for s in all_sites or () if s not in sites]
    if left_out:
        text += (
            f" Shown: {_names(sites)}, the quantities the accuracy columns judge; "
            f"{_names(left_out)} not drawn."
        )
    return text


def _marginals_intro(reference: str | None, methods: list[str], points: list[str]) -> str:
    """The caption's first sentence: what a panel and its lines are."""
    if reference in methods:
        text = (
            f"Each panel is one parameter: the reference ({html.escape(reference)}) as a thick "
            "line, every other method in its own colour"
        )
    else:
        text = (
            f"Each panel is one parameter's posterior under {_names(methods)}, in its "
            "method's colour; nothing is judged here (zoo compare runs several methods and "
            "measures them against one)"
        )
    return text + ("; point estimates as dashed lines." if points else ".")


def _marginals_judged(
    records: dict, methods: list[str], *, reference: str, points: list[str]
) -> str:
    """The caption's sentences on the methods narrower, wider, shifted against the reference
    or matching it (from their metrics), each list in the order of ``methods``."""
    narrow, wide, shifted, match = [], [], [], []
    for m in methods:
        met = records.get(m, {}).get("metrics", {})
        if m == reference or "max_abs_mean_z" not in met:
            continue
        z, lo, hi = met["max_abs_mean_z"], met["sd_ratio_min"], met["sd_ratio_max"]
        if m in points:
            if z >= 0.1:
                shifted.append(f"{html.escape(m)} ({z:.2f} sd, a point estimate)")
            continue
        if lo < SD_BAND[0]:
            narrow.append(f"{html.escape(m)} ({lo:.2f})")
        if hi > SD_BAND[1]:
            wide.append(f"{html.escape(m)} ({hi:.2f})")
        if z >= 0.1:
            shifted.append(f"{html.escape(m)} ({z:.2f} sd)")
        if lo >= SD_BAND[0] and hi <= SD_BAND[1] and z < 0.1:
            match.append(html.escape(m))
    text = ""
    if narrow:
        text += (
            f" Narrower than the reference (over-confident; smallest sd ratio): "
            f"{', '.join(narrow)}."
        )
    if wide:
        text += f" Wider than the reference (largest sd ratio): {', '.join(wide)}."
    if shifted:
        text += f" Means shifted by 0.1 sd or more (largest): {', '.join(shifted)}."
    if match:
        text += (
            f" Within 0.1 sd and sd ratios {SD_BAND[0]}-{SD_BAND[1]} on every parameter: "
            f"{', '.join(match)}."
        )
    return text


def most_correlated_pair(ref_draws: dict[str, np.ndarray]) -> tuple[str, str, float] | None:
    labels = [k for k, v in ref_draws.items() if np.std(v) > 0]
    if len(labels) < 2:
        return None
    corr = np.corrcoef(np.stack([ref_draws[k] for k in labels]))
    np.fill_diagonal(corr, 0.0)
    i, j = np.unravel_index(np.argmax(np.abs(corr)), corr.shape)
    return labels[i], labels[j], float(corr[i, j])


def pair_numbers(
    ref: dict[str, np.ndarray], draws: dict[str, np.ndarray], a: str, b: str
) -> dict[str, float] | None:
    """A method's correlation of ``a`` and ``b`` and its sd ratios against the reference's
    draws; None for a point estimate."""
    if np.std(draws[a]) == 0 or np.std(draws[b]) == 0:
        return None
    return {
        "corr": float(np.corrcoef(draws[a], draws[b])[0, 1]),
        "sd_ratio_a": float(np.std(draws[a]) / np.std(ref[a])),
        "sd_ratio_b": float(np.std(draws[b]) / np.std(ref[b])),
    }


def pair_caption(
    a: str, b: str, corr: float, reference: str, numbers: dict[str, dict[str, float] | None]
) -> str:
    """The pair plot's caption, from the numbers: the reference's correlation of the pair,
    and for every other method whether its cloud is tilted like it and how wide it is."""
    strong = abs(corr) >= WEAK_CORRELATION
    text = (
        f"{html.escape(a)} against {html.escape(b)}, the most correlated pair of the reference "
        f"({html.escape(reference)}): correlation {corr:+.2f}. Grey: reference draws; colour: "
        "each method."
    )
    if not strong:
        text += (
            f" That is a weak correlation (below {WEAK_CORRELATION}): the cloud is nearly "
            "round, so a guide that ignores correlations loses little here."
        )
    # Methods whose clouds read alike share one clause, with the range of their numbers.
    groups: dict[tuple[str, str], list[tuple[str, dict[str, float] | None]]] = {}
    for m, n in numbers.items():
        if m != reference:
            groups.setdefault(_pair_class(corr, n), []).append((m, n))
    notes = []
    for (tilt, width), members in groups.items():
        names = _names(m for m, _ in members)
        if tilt == "point":
            notes.append(f"{names}: a point estimate (cross)")
            continue
        corrs = [n["corr"] for _, n in members]
        ratios = [r for _, n in members for r in (n["sd_ratio_a"], n["sd_ratio_b"])]
        corr_said = (
            f"correlation {corrs[0]:+.2f}"
            if len(corrs) == 1
            else f"correlations {min(corrs):+.2f} to {max(corrs):+.2f}"
        )
        sds_said = (
            f"sd ratios {ratios[0]:.2f} and {ratios[1]:.2f}"
            if len(members) == 1
            else f"sd ratios {min(ratios):.2f}-{max(ratios):.2f}"
        )
        note = f"{names}: {tilt} ({corr_said}), {width} ({sds_said})"
        if tilt == "not tilted" and width == "narrower":
            note += (
                ", which is what a guide that cannot tilt does: it shrinks to the narrow "
                "width of the ridge and misses its length"
            )
        notes.append(note)
    if notes:
        text += " " + "; ".join(notes) + "."
    return text


def _pair_class(corr: float, n: dict[str, float] | None) -> tuple[str, str]:
    """How a method's cloud reads against the reference's: its tilt and its width."""
    if n is None:
        return "point", ""
    r, lo, hi = (
        n["corr"],
        min(n["sd_ratio_a"], n["sd_ratio_b"]),
        max(n["sd_ratio_a"], n["sd_ratio_b"]),
    )
    if abs(corr) < WEAK_CORRELATION:
        tilt = (
            "nearly round, as the reference"
            if abs(r) < WEAK_CORRELATION
            else "tilted where the reference is nearly round"
        )
    elif abs(r - corr) <= TILT_TOLERANCE:
        tilt = "tilted like the reference"
    elif abs(r) < TILT_TOLERANCE:
        tilt = "not tilted"
    elif np.sign(r) != np.sign(corr):
        tilt = "tilted the other way"
    else:
        tilt = f"tilted {'less' if abs(r) < abs(corr) else 'more'} than the reference"
    width = "narrower" if lo < SD_BAND[0] else "wider" if hi > SD_BAND[1] else "as wide"
    return tilt, width


def plot_pair(results, idatas, sites, path: Path) -> str | None:
    """Each method's draws of the reference's most correlated pair over the reference's;
    returns the caption (None when there is no reference or no pair)."""
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
    numbers = {}
    for ax, m in zip(axes.flat, methods):
        ax.scatter(ref[a][take], ref[b][take], s=3, color="0.75", label=f"{reference} (reference)")
        d = labelled(idatas[m], sites)
        numbers[m] = pair_numbers(ref, d, a, b)
        pick = rng.permutation(len(d[a]))[:1500]
        if numbers[m] is None:
            ax.plot(d[a][0], d[b][0], "x", color=method_color(m), ms=10, mew=2, label=m)
            ax.set_title(f"{m} (point)", fontsize=FONT)
        else:
            ax.scatter(d[a][pick], d[b][pick], s=3, alpha=0.5, color=method_color(m), label=m)
            ax.set_title(f"{m}: correlation {numbers[m]['corr']:+.2f}", fontsize=FONT)
        ax.set_xlabel(a, fontsize=FONT - 1)
        ax.set_ylabel(b, fontsize=FONT - 1)
        ax.tick_params(labelsize=FONT - 1)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    _savefig(fig, path)
    return pair_caption(a, b, r, reference, numbers)


def plot_elbo(idatas, path: Path) -> str | None:
    """The objective of each fit per step, at most four panels a row, plain tick labels;
    returns the caption (None when no method has a trace)."""
    traces = {
        # atleast_1d: netCDF gives a one-entry trace back as a scalar attribute
        m: (np.atleast_1d(_attrs(i)["elbo"]), _meta(i).get("trace_label", "ELBO"))
        for m, i in idatas.items()
        if "elbo" in _attrs(i)
    }
    if not traces:
        return None
    ncol = min(4, len(traces))
    nrow = -(-len(traces) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.9 * nrow), squeeze=False)
    for ax, (m, (t, label)) in zip(axes.flat, traces.items()):
        # Relative to the end (the mean of the last tenth of the steps, in the title): the axis
        # then says how far each step was from it in plain numbers (raw values near -2.438e5
        # need an offset label, which sat on the title, or ten-digit tick labels).
        final = float(np.mean(t[-max(1, len(t) // 10) :]))
        rel = t - final
        ax.plot(np.arange(len(t)), rel, lw=0.8, color=method_color(m))
        ax.set_ylabel(f"{label} - end", fontsize=FONT)
        lo = np.quantile(rel[len(rel) // 10 :], 0.01) if len(rel) > 20 else rel.min()
        span = max(rel.max() - lo, 1e-6 * max(1.0, abs(final)))
        ax.set_ylim(lo - 0.1 * span, rel.max() + 0.1 * span)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.tick_params(labelsize=FONT - 1)
        ax.set_title(f"{m}\nend {final:.6g}", fontsize=FONT + 1)
        ax.set_xlabel("step", fontsize=FONT)
    for ax in list(axes.flat)[len(traces) :]:
        ax.axis("off")
    _savefig(fig, path)
    return elbo_caption({m: label for m, (_, label) in traces.items()})


#: What each kind of objective trace is, by its label's start.
_TRACE_KINDS = {
    "ELBO": "the ELBO of a stochastic guide per SVI step",
    "log joint": "the log joint at each L-BFGS iterate",
    "log-likelihood": "the log-likelihood after each iteration, which never decreases",
}


def elbo_caption(labels: dict[str, str]) -> str:
    """The objective traces' caption: which methods trace which objective."""
    kinds: dict[str, list[str]] = {}
    for method, label in labels.items():
        kind = next((k for k in _TRACE_KINDS if label.startswith(k)), label)
        kinds.setdefault(kind, []).append(method)
    said = "; ".join(
        f"{_names(methods)}: {html.escape(_TRACE_KINDS.get(kind, kind))}"
        for kind, methods in kinds.items()
    )
    text = (
        f"The objective of each fit per step, in its method's colour ({said}), drawn relative "
        "to its end (the mean of its last tenth of the steps, in the panel's title), so the y "
        "axis says how far from the end each step was; it is cut below at the lowest 1% after "
        "the first tenth of the steps. A trace still rising at its end did not converge"
    )
    if "ELBO" in kinds:
        text += "; spikes or a drop show an unstable learning rate"
    return text + "."


def _chains(idata: az.InferenceData, sites) -> dict[str, np.ndarray]:
    """Draws of every scalar of ``sites`` by ArviZ label, shape (chain, draw)."""
    post = idata.posterior
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    flat = labelled(idata, sites)
    return {k: np.ravel(v).reshape(chains, draws) for k, v in flat.items()}


def trace_labels(chains: dict[str, np.ndarray], limit: int = MAX_TRACE_PANELS) -> list[str]:
    """The scalars whose trace is drawn: all if at most ``limit``, else the ``limit`` with
    the highest R-hat (the least mixed), in their original order."""
    labels = list(chains)
    if len(labels) <= limit:
        return labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = {k: float(az.rhat(v)) for k, v in chains.items()}
    worst = sorted(labels, key=lambda k: -np.nan_to_num(rhat[k], nan=-np.inf))[:limit]
    return [k for k in labels if k in worst]


def _chain_colors(n: int) -> list:
    # Chains are not methods: shades of one colour map, never a method's colour.
    return [plt.cm.viridis(x) for x in np.linspace(0.0, 0.85, n)]


def plot_nuts(idata, sites, fig_dir: Path) -> tuple[list[str], list[str], int]:
    """Trace (density of each chain, and draws in order) and rank plots of NUTS, one labelled
    pair of panels per scalar; returns the file names, the labels drawn and how many scalars
    there are."""
    chains = _chains(idata, sites)
    labels = trace_labels(chains)
    colors = _chain_colors(next(iter(chains.values())).shape[0])
    pairs = 2 if len(labels) > 3 else 1
    nrow = -(-len(labels) // pairs)
    fig, axes = plt.subplots(nrow, 2 * pairs, figsize=(6.2 * pairs, 1.9 * nrow), squeeze=False)
    for i, label in enumerate(labels):
        ax_kde, ax_trace = axes[i // pairs, 2 * (i % pairs)], axes[i // pairs, 2 * (i % pairs) + 1]
        values = chains[label]
        for c, v in enumerate(values):
            if np.std(v) > 0:
                grid = np.linspace(values.min(), values.max(), 150)
                ax_kde.plot(grid, gaussian_kde(v)(grid), color=colors[c], lw=1)
            ax_trace.plot(v, color=colors[c], lw=0.5, alpha=0.8)
        ax_kde.set_title(label, fontsize=FONT)
        ax_kde.set_yticks([])
        ax_trace.set_title(f"{label}: draws in order", fontsize=FONT)
        for ax in (ax_kde, ax_trace):
            ax.tick_params(labelsize=FONT - 1)
            ax.ticklabel_format(axis="both", useOffset=False, style="plain")
    for ax in list(axes.flat)[2 * len(labels) :]:
        ax.axis("off")
    _savefig(fig, fig_dir / "nuts_trace.png")
    # Rank plots of the same scalars: ranks of each chain's draws among all draws.
    ncol = min(4, len(labels))
    nrow = -(-len(labels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 2.3 * nrow), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        values = chains[label]
        ranks = rankdata(values, method="average").reshape(values.shape)
        bins = np.linspace(0.5, values.size + 0.5, 21)
        top = 0
        for c, r in enumerate(ranks):
            counts, _ = np.histogram(r, bins=bins)
            ax.stairs(counts, bins, baseline=None, color=colors[c], lw=1)
            top = max(top, counts.max())
        ax.axhline(values.shape[1] / 20, color="0.4", ls="--", lw=0.8)
        ax.set_ylim(0, 1.15 * top)  # from zero: noise in the counts is not made to look large
        ax.set_title(label, fontsize=FONT)
        ax.set_xticks([])
        ax.tick_params(labelsize=FONT - 1)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    _savefig(fig, fig_dir / "nuts_rank.png")
    return ["nuts_trace.png", "nuts_rank.png"], labels, len(chains)


def nuts_captions(labels: list[str], total: int, record: dict) -> tuple[str, str, str]:
    """Captions of the NUTS trace and rank plots and the rank plots' one-line summary."""
    chosen = ""
    if total > len(labels):
        chosen = (
            f" Drawn: the {len(labels)} of {total} scalars with the highest R-hat (the least "
            f"mixed): {_names(labels)}; the table has the others' worst R-hat and ESS."
        )
    trace = (
        "Each scalar has two labelled panels: left, the density of each chain's draws; right, "
        "the draws in order, one colour per chain. Chains should overlap and look like noise."
        + chosen
    )
    rank = (
        "Ranks of each chain's draws among all draws, one line per chain, the dashed line what "
        "perfectly mixed chains give: flat lines mean the chains mix; slopes or humps mean "
        "they do not." + chosen
    )
    # The verdict's checks, said in the fold's one line (identified quantities where the raw
    # parameters are not identified).
    diag = record.get("diagnostics", {})
    suffix = "_identified" if "r_hat_max_identified" in diag else ""
    rhat = _float(diag.get(f"r_hat_max{suffix}"))
    ess = _float(diag.get(f"ess_bulk_min{suffix}"))
    if not np.isfinite(rhat):
        summary = "NUTS rank plots"
    elif rhat >= 1.01:
        summary = f"NUTS rank plots (largest R-hat {rhat:.3f}, above 1.01: the chains do not mix)"
    elif np.isfinite(ess) and ess <= 400:
        summary = (
            f"NUTS rank plots (largest R-hat {rhat:.3f}, but smallest bulk ESS {ess:.0f}, not "
            "above 400: too few effective draws)"
        )
    else:
        summary = f"NUTS rank plots (largest R-hat {rhat:.3f}: the chains mix)"
    return trace, rank, summary


def plot_predictive(results, idatas, path: Path) -> str | None:
    """The fitted curve over the data for every method: the mean's median, the 90% band of
    the mean and the 90% predictive band on the report grid; returns the caption."""
    methods = [m for m, i in idatas.items() if "posterior_predictive" in i]
    if not methods:
        return None
    first = idatas[methods[0]]
    obs = next(iter(first.observed_data.data_vars))
    meta = _meta(first)
    label = meta["grid_label"]
    ncol = min(4, len(methods))
    nrow = -(-len(methods) // ncol)
    size = (6.0, 4.2) if len(methods) == 1 else (3.3, 2.9)
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(size[0] * ncol, size[1] * nrow),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    records = results["methods"]
    flagged = []
    for ax, m in zip(axes.flat, methods):
        idata = idatas[m]
        pp = idata.posterior_predictive
        grid = pp.coords["grid"].values
        y = pp[f"{obs}_grid"].values.reshape(-1, len(grid))
        mu = pp["mean_grid"].values.reshape(-1, len(grid))
        color = method_color(m)
        ax.scatter(
            idata.constant_data["plot_x"].values,
            idata.observed_data[obs].values,
            s=5,
            color="0.55",
            label="fitted rows",
        )
        lo, hi = np.quantile(y, [0.05, 0.95], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.18, color=color, label="90% predictive interval")
        mlo, mhi = np.quantile(mu, [0.05, 0.95], axis=0)
        ax.fill_between(grid, mlo, mhi, alpha=0.45, color=color, label="90% interval of the mean")
        ax.plot(grid, np.median(mu, axis=0), color=color, lw=1.5, label="mean (median)")
        title = f"{m} ({'point estimate' if _meta(idata)['point'] else 'posterior'})"
        k = _float(records.get(m, {}).get("diagnostics", {}).get("loo_khat_max"))
        if k > KHAT_BAD:
            title += f"\nPSIS-LOO k {k:.2f} > {KHAT_BAD}"
            flagged.append(f"{html.escape(m)} (k {k:.2f})")
        ax.set_title(title, fontsize=FONT + 1, color="#a00" if "\n" in title else "black")
        ax.set_xlabel(label, fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel(meta["description"].get("response", obs), fontsize=FONT)
    axes[0, 0].legend(fontsize=FONT - 2)
    _savefig(fig, path)
    points = [m for m in methods if _meta(idatas[m])["point"]]
    return predictive_caption(results, methods, points, label, flagged)


def predictive_caption(
    results: dict, methods: list[str], points: list[str], label: str, flagged: list[str]
) -> str:
    """The fitted-curve figure's caption: what is drawn, what a point estimate's band means,
    and which fits PSIS-LOO flags."""
    features = [f.strip() for f in results.get("posterior", {}).get("features", "").split(",")]
    text = (
        f"The fitted curve against {html.escape(label)} for "
        + ("each method" if len(methods) > 1 else html.escape(methods[0]))
        + ": the line is the median of the regression mean, the dark band its 90% interval "
        "(the uncertainty of the parameters), the light band the 90% predictive interval of a "
        "new row (that plus the noise); grey points are the fitted rows."
    )
    if len(features) > 1 and not all(f.startswith(f"{label}^") or f == label for f in features):
        text += (
            " The other features are held at their means, while the points vary in them "
            "too, so they scatter more widely around the curve than the noise alone."
        )
    if points:
        text += (
            f" A point estimate ({_names(points)}) has no parameter uncertainty: its dark "
            "band is a line and its predictive band is the noise alone."
        )
    if flagged:
        text += (
            f" PSIS-LOO k above {KHAT_BAD} (red titles): {', '.join(flagged)}; some rows "
            "pull the fit so hard that the leave-one-out estimate (elpd LOO) is unreliable "
            "for them."
        )
    return text


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


def _sampled(idata: az.InferenceData) -> bool:
    """Several chains of a sampler (sampler statistics with divergences)."""
    return "sample_stats" in idata.groups() and "diverging" in idata.sample_stats


def _method_figures(results: dict, idatas: dict, fig_dir: Path) -> list[tuple]:
    """The figures every model gets, each from what the methods hold: marginals, pair and
    predictive where they have draws of global sites, objective traces where they were
    fitted, trace and rank plots where they sampled chains."""
    drawn = {m: i for m, i in idatas.items() if "posterior" in i.groups()}
    sections: list[tuple] = []
    sites = shown_sites(next(iter(drawn.values()))) if drawn else []
    if sites:
        caption = plot_marginals(results, drawn, sites, fig_dir / "marginals.png")
        sections.append(("Marginal posteriors", "marginals.png", caption))
        caption = plot_pair(results, drawn, sites, fig_dir / "pair.png")
        if caption:
            sections.append(("The most correlated pair", "pair.png", caption))
        caption = plot_predictive(results, drawn, fig_dir / "predictive.png")
        if caption:
            sections.append(("Fitted curve over the data", "predictive.png", caption))
    caption = plot_elbo(idatas, fig_dir / "elbo.png") if idatas else None
    if caption:
        sections.append(("Objective traces", "elbo.png", caption))
    for method in [m for m, i in drawn.items() if _sampled(i)][:1]:
        names, labels, total = plot_nuts(drawn[method], sites, fig_dir)
        trace, rank, summary = nuts_captions(labels, total, results["methods"][method])
        sections.append(("NUTS trace", names[0], trace))
        sections.append(("NUTS rank plots", names[1], rank, summary))
    return sections


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
    # A section is (title, file, caption), or (title, file, caption, summary) for one folded
    # under a one-line summary (<details>) to keep the page scannable.
    sections += _method_figures(results, idatas, fig_dir)
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
    """The table's columns: the common ones that some method has, then the model's own
    metrics that appear."""
    shown = {k for _, _, k in TABLE} | _NOT_COLUMNS
    extra = []
    for rec in results["methods"].values():
        for key in rec.get("metrics", {}):
            if key not in shown and key not in extra:
                extra.append(key)
    common = [
        column
        for column in TABLE
        if any(column[2] in rec.get(column[1], {}) for rec in results["methods"].values())
    ]
    return common + [(key.replace("_", " "), "metrics", key) for key in extra]


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
        if "label_swaps_per_chain" in rec.get("diagnostics", {})
        and "r_hat_max" in rec["diagnostics"]
    }
    if not swaps:
        return ""
    said = "; ".join(f"{html.escape(m)}: {html.escape(str(v))}" for m, v in swaps.items())
    return (
        f"<p>Label swaps per chain (consecutive draws whose component order changed, undone by "
        f"relabelling before any summary): {said}. An optimizer or a guide sits in one of the "
        "K! symmetric modes and makes none.</p>"
    )


def _float(value) -> float:
    """A number of results.json as a float (non-finite ones are spelled as strings there)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _section_html(section: tuple, fig_dir: Path) -> str:
    title, name, caption, *folded = section
    if folded:
        return (
            f"<details><summary>{html.escape(folded[0])}</summary>"
            f"<h2>{html.escape(title)}</h2><p>{caption}</p>{_img(fig_dir / name)}</details>"
        )
    return f"<h2>{html.escape(title)}</h2><p>{caption}</p>{_img(fig_dir / name)}"


def rows_line(results: dict) -> str:
    """The report's first line: how many rows were fitted, and how many held out (and kept
    out of the fit to stop it early, where some were)."""
    fitted, held = results["num_data"], results.get("num_test", 0) or 0
    valid = results.get("num_validation", 0) or 0
    if not held:
        return f"Fitted to all {fitted} rows of {results['dataset']}; none held out."
    stop = f", {valid} kept out of the fit to stop it early" if valid else ""
    return (
        f"Fitted to {fitted} of the {fitted + valid + held} rows of {results['dataset']}{stop};"
        f" {held} held out for the held-out log predictive density (lpd test)."
    )


#: The report page's style sheet.
_PAGE_STYLE = """\
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f4f4f4; } td.v { text-align: left; }
tr.failed td { color: #a00; } .warn { color: #a00; }
img { max-width: 100%; } p.rows { font-size: 1.1em; font-weight: 600; }
summary { font-size: 1.2em; font-weight: 600; margin: 1em 0; cursor: pointer; }
.small { color: #666; font-size: 0.8em; }"""


def _page(results: dict, sections, fig_dir: Path) -> str:
    columns = _columns(results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in columns)
    post = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in results.get("posterior", {}).items()
    )
    figs = "".join(_section_html(section, fig_dir) for section in sections)
    timings = ", ".join(f"{k}: {v:.2f}" for k, v in results.get("timings", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    ref_note = _reference_note(results)
    rows = _method_rows(results, columns)
    warnings_html = _warnings_html(results)
    diag_rows = _diagnostic_rows(results)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>zoo: {html.escape(results["model"])} on {html.escape(results["dataset"])}</title>
<style>
{_PAGE_STYLE}
</style></head><body>
<h1>{html.escape(results["model"])} on {html.escape(results["dataset"])}</h1>
<p class=rows>{html.escape(rows_line(results))}</p>
<p>Seed {results["seed"]}, preset {html.escape(str(results.get("preset")))}.</p>
<table>{post}</table>
<h2>Accuracy and cost</h2>
<p>{ref_note} {_columns_legend(columns, results)}</p>
<table><tr><th>method</th>{head}<th>verdict</th></tr>{rows}</table>
{warnings_html}
{_model_verdict_html(results)}
{_follow_ups_html(results)}
{_label_swaps_html(results)}
{_selection_html(results)}
<h2>Diagnostics</h2>
<table>{diag_rows}</table>
{figs}
<p class=small>Versions: {html.escape(versions)}. Timings (s): {html.escape(timings)}.</p>
</body></html>
"""


#: What the common columns mean, said under the table where they appear.
_LEGEND = {
    "lpd_test": "lpd: mean log predictive density per row (a point estimate: log-likelihood at"
    " the point)",
    "elpd_loo": "elpd LOO: PSIS leave-one-out",
    "khat": f"PSIS k: how far the guide is from the posterior (above {KHAT_BAD}: unreliable)",
    "ess_per_s": "ESS/s: bulk ESS per second for NUTS, PSIS effective sample size per second"
    " for a guide",
}


def _columns_legend(columns: list[tuple[str, str, str]], results: dict) -> str:
    keys = {key for _, _, key in columns}
    if "lpd_train" in keys:
        keys.add("lpd_test")
    legend = {**_LEGEND}
    if not any(rec.get("summary") for rec in results["methods"].values()):
        # no draws of global latents: each method's lpd is the model's own estimate
        legend["lpd_test"] = "lpd: mean log p(x) per row, the model's own estimate (see below)"
    return "; ".join(text for key, text in legend.items() if key in keys) + (
        "." if keys & set(legend) else ""
    )


#: The module of each model that writes a verdict in words (``verdict_html(results)``).
MODEL_VERDICTS = {"two_level_vae": "comparisons.two_level_verdict"}


def _model_verdict_html(results: dict) -> str:
    """The model's verdict in words, where it has one (:data:`MODEL_VERDICTS`)."""
    module = MODEL_VERDICTS.get(results.get("model"))
    return importlib.import_module(module).verdict_html(results) if module else ""


def _follow_ups_html(results: dict) -> str:
    """Links to the comparisons this one led to (``results["follow_ups"]``)."""
    items = "".join(
        f'<li><a href="{html.escape(f["page"])}">{html.escape(f["dataset"])}</a></li>'
        for f in results.get("follow_ups", {}).values()
    )
    return f"<h2>Comparisons these runs led to</h2><ul>{items}</ul>" if items else ""


def _method_rows(results: dict, columns: list) -> str:
    """The accuracy and cost table's rows: a method's cells and its verdict."""
    rows = []
    for m, rec in results["methods"].items():
        cells = "".join(f"<td>{_fmt(rec.get(g, {}).get(k))}</td>" for _, g, k in columns)
        cls = ' class="failed"' if rec["diagnostics"].get("status") == "failed" else ""
        rows.append(
            f"<tr{cls}><th>{html.escape(m)}</th>{cells}<td class=v>"
            f"{html.escape(rec.get('verdict', ''))}</td></tr>"
        )
    return "".join(rows)


def _diagnostic_rows(results: dict) -> str:
    """The diagnostics table's rows: each method's diagnostics on one line."""
    diag_rows = []
    for m, rec in results["methods"].items():
        d = ", ".join(f"{html.escape(k)}: {_fmt(v)}" for k, v in rec["diagnostics"].items())
        diag_rows.append(f"<tr><th>{html.escape(m)}</th><td>{d}</td></tr>")
    return "".join(diag_rows)


def _warnings_html(results: dict) -> str:
    """Warnings under the accuracy table: PSIS k and PSIS-LOO k above ``KHAT_BAD``."""
    bad_k = [
        m
        for m, rec in results["methods"].items()
        if _float(rec["diagnostics"].get("khat", 0)) > KHAT_BAD
    ]
    warnings_html = ""
    if bad_k:
        warnings_html = (
            f"<p class=warn>PSIS k above {KHAT_BAD} for {', '.join(bad_k)}: the guide "
            "is far from the posterior where it matters; its draws cannot be corrected by "
            "importance weighting.</p>"
        )
    bad_loo = [
        f"{html.escape(m)} ({_float(rec['diagnostics']['loo_khat_max']):.2f})"
        for m, rec in results["methods"].items()
        if _float(rec["diagnostics"].get("loo_khat_max")) > KHAT_BAD
    ]
    if bad_loo:
        warnings_html += (
            f"<p class=warn>PSIS-LOO k above {KHAT_BAD} for {', '.join(bad_loo)}: leaving "
            "out some rows changes that fit too much for importance sampling to say; its elpd "
            "LOO is unreliable (refit without those rows, or use a held-out split).</p>"
        )
    return warnings_html


def _reference_note(results: dict) -> str:
    """What accuracy is measured against, and how far the reference can be trusted."""
    ref = results.get("reference")
    no_globals = not any(rec.get("summary") for rec in results["methods"].values())
    ref_note = (
        f"Accuracy is measured against <b>{html.escape(ref)}</b>: mean z = |mean - "
        "mean<sub>ref</sub>| / sd<sub>ref</sub>, sd ratio = sd / sd<sub>ref</sub>."
        if ref
        else "<b>No reference</b>: the model has no global latent sites to judge against"
        " one; its methods are compared by the model's own numbers."
        if no_globals and all("status" not in r["diagnostics"] for r in results["methods"].values())
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
    return ref_note
