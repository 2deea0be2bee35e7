"""The verdict in words of a two-level VAE comparison: what its numbers say about the two
guide orders, layer by layer, written from results.json alone (each sentence from the
numbers it states, none where they are missing)."""

from __future__ import annotations

import html
import math

#: The two guide orders as the main comparison names them.
ORDERS = {"amortized_chain": "the chain", "amortized_top_down": "top-down"}
#: NUTS's correlations within this many times its noise are called noise (as the figure's).
NOISE_FACTOR = 1.5


def sd_kind(ratio: float, noise: float | None) -> str:
    """ "right" where a guide's median sd ratio to NUTS's is 1 within NUTS's noise (|log
    ratio| at most ``gold_noise``), else "over-confident" (below) or "under-confident"."""
    if noise is not None and math.isfinite(noise) and abs(math.log(ratio)) <= noise:
        return "right"
    return "over-confident" if ratio < 1 else "under-confident"


def slope_ceiling(rms: float, noise: float) -> float:
    """The slope a guide holding NUTS's correlations exactly would show: the noise of NUTS's
    own correlations (about ``noise`` each) dilutes it to 1 - (noise / RMS)^2."""
    if not (math.isfinite(rms) and math.isfinite(noise)) or rms <= 0:
        return math.nan
    return max(0.0, 1.0 - (noise / rms) ** 2)


def _diag(results: dict, method: str) -> dict:
    record = results.get("methods", {}).get(method, {})
    return {**record.get("diagnostics", {}), **record.get("metrics", {})}


def _num(value) -> float | None:
    """A number as it will be printed to 2 decimals (no "-0.00"), None if it is none."""
    if not isinstance(value, int | float):
        return None
    return round(float(value), 2) + 0.0 if abs(value) < 0.005 else float(value)


def refit_sentences(results: dict) -> list[str]:
    """The refit follow-up's verdict: the two orders on each frozen decoder."""
    out = []
    for decoder in ("chain", "top_down"):
        c = _diag(results, f"amortized_chain_on_{decoder}")
        t = _diag(results, f"amortized_top_down_on_{decoder}")
        if not c or not t or _num(c.get("elbo_test")) is None or _num(t.get("elbo_test")) is None:
            continue
        gap = t["elbo_test"] - c["elbo_test"]
        text = (
            f"On the decoder trained with the {decoder.replace('_', '-')} guide, frozen: the"
            f" top-down guide's held-out ELBO is {abs(gap):.1f} nats"
            f" {'above' if gap > 0 else 'below'} the chain's ({t['elbo_test']:.1f} against"
            f" {c['elbo_test']:.1f})"
        )
        r_c, r_t = _num(c.get("gold_z1_sd_ratio_median")), _num(t.get("gold_z1_sd_ratio_median"))
        s_c, s_t = _num(c.get("gold_z1_corr_slope")), _num(t.get("gold_z1_corr_slope"))
        if None not in (r_c, r_t, s_c, s_t):
            text += (
                f"; against NUTS, V1 sds {r_c:.2f} (chain) and {r_t:.2f} (top-down) times"
                f" NUTS's, and {s_c:.2f} and {s_t:.2f} of NUTS's V1 correlations carried"
            )
        out.append(text + ".")
    return out


def sentences(results: dict) -> list[str]:
    """The verdict, one finding per sentence."""
    d = {m: _diag(results, m) for m in ORDERS}
    if not all(d.values()):
        return refit_sentences(results)
    out: list[str] = []
    chain, top = d["amortized_chain"], d["amortized_top_down"]
    e_c, e_t = _num(chain.get("elbo_test")), _num(top.get("elbo_test"))
    if e_c is not None and e_t is not None:
        lead, trail = ("top-down", "the chain") if e_t > e_c else ("the chain", "top-down")
        out.append(
            f"Held-out ELBO: {lead} leads {trail} by {abs(e_t - e_c):.1f} nats per patch"
            f" ({e_t:.1f} against {e_c:.1f}), each with a decoder trained with its own guide;"
            " the refit/ follow-up separates the guide from the decoder."
        )
    bad = [
        f"{ORDERS[m]} on {d[m]['iw_khat_bad']} of {d[m].get('measured_rows', '?')} rows"
        for m in ORDERS
        if (d[m].get("iw_khat_bad") or 0) > 0
    ]
    if bad:
        out.append(
            f"The importance-weighted log p(x) has PSIS k above 0.7 for {' and '.join(bad)}:"
            " there it is not to be trusted (most likely too low); the ELBO is a valid bound."
        )
    a_c, a_t = chain.get("active_z2"), top.get("active_z2")
    if a_c is not None and a_t is not None:
        units = int(a_c) + int(chain.get("collapsed_z2", 0))
        out.append(
            f"V2: the chain keeps {a_c} of {units} units active, top-down {a_t}; a collapsed"
            " unit's posterior is its prior, so it says nothing about the patch."
        )
    out += _gold_sentences(d)
    out += _inpaint_sentences(results, d)
    out += _texture_sentences(d)
    g_c, g_t = chain.get("gabor_like"), top.get("gabor_like")
    if g_c is not None and g_t is not None:
        k1 = int(chain.get("active_z1", 0)) + int(chain.get("collapsed_z1", 0))
        out.append(
            f"V1's projective fields: {g_c} (chain) and {g_t} (top-down) of {k1} fit a"
            " localized Gabor; sparse coding trained to convergence makes most of them so."
        )
    return out


def _gold_sentences(d: dict) -> list[str]:
    out = []
    ratios = {m: _num(d[m].get("gold_z1_sd_ratio_median")) for m in ORDERS}
    if any(r is None for r in ratios.values()):
        return out
    rows = d["amortized_chain"].get("gold_rows")
    words = []
    for m, r in ratios.items():
        kind = sd_kind(r, _num(d[m].get("gold_noise")))
        words.append(f"{ORDERS[m]}'s V1 sds are {r:.2f} times NUTS's ({kind})")
    out.append(
        f"Against NUTS on {rows} held-out patch{'' if rows == 1 else 'es'} under each model's"
        " own decoder: " + "; ".join(words) + "."
    )
    slopes = {m: _num(d[m].get("gold_z1_corr_slope")) for m in ORDERS}
    nuts_rms = _num(d["amortized_top_down"].get("gold_z1_corr_nuts_rms"))
    noise = _num(d["amortized_top_down"].get("gold_noise"))
    if all(s is not None for s in slopes.values()) and nuts_rms is not None:
        ceiling = slope_ceiling(nuts_rms, noise) if noise is not None else math.nan
        carried = (
            f"the slope of the guide's on NUTS's is {slopes['amortized_chain']:.2f} for the"
            f" chain (0 by construction) and {slopes['amortized_top_down']:.2f} for top-down"
        )
        if math.isfinite(ceiling):
            carried += f", where a guide holding all of them would show about {ceiling:.2f}"
        if noise is not None and nuts_rms <= NOISE_FACTOR * noise:
            out.append(
                f"NUTS's correlations between V1 units have an RMS of {nuts_rms:.2f}, no more"
                f" than its own noise ({noise:.2f}): this run cannot say whether the true"
                f" posterior correlates V1 units; {carried}."
            )
        else:
            out.append(
                f"The true posterior correlates V1 units at {nuts_rms:.2f} RMS (NUTS's own"
                f" noise about {noise if noise is not None else float('nan'):.2f}); {carried}."
            )
    rhat = max(_num(d[m].get("gold_rhat_max")) or 0 for m in ORDERS)
    if rhat > 1.01:
        out.append(
            f"NUTS's largest R-hat is {rhat:.3f} (above 1.01): the reference is itself rough at"
            " this preset; --preset full samples longer."
        )
    return out


def _inpaint_sentences(results: dict, d: dict) -> list[str]:
    rmse = {m: _num(d[m].get("inpaint_rmse")) for m in ORDERS}
    zero = _num(d["amortized_chain"].get("inpaint_rmse_zero"))
    if any(v is None for v in rmse.values()) or zero is None:
        return []
    gauss = _num(_diag(results, "ml_gaussian").get("inpaint_rmse"))
    worse = [ORDERS[m] for m, v in rmse.items() if v >= zero]
    hidden = d["amortized_chain"].get("inpaint_hidden")
    block = f"{math.isqrt(int(hidden))}x{math.isqrt(int(hidden))}" if hidden else "block"
    text = (
        f"Inpainting the central {block} of held-out patches: RMSE {rmse['amortized_chain']:.2f}"
        f" (chain) and {rmse['amortized_top_down']:.2f} (top-down) against {zero:.2f} for"
        " predicting 0"
    )
    if gauss is not None:
        text += f" and {gauss:.2f} for the full Gaussian's best linear prediction"
    text += "."
    first = {m: _num(d[m].get("inpaint_rmse_first")) for m in ORDERS}
    if worse:
        text += (
            f" {' and '.join(worse).capitalize()} did worse than predicting 0: an encoder fed"
            " a patch with a hole explains the hole, and the guesses feed back"
        )
        if all(v is not None for v in first.values()):
            text += (
                f" (after one step, before any feedback: {first['amortized_chain']:.2f} and"
                f" {first['amortized_top_down']:.2f})"
            )
        text += "."
    nuts = [_num(d[m].get("gold_inpaint_rmse_nuts")) for m in ORDERS]
    guide = [_num(d[m].get("gold_inpaint_rmse_guide")) for m in ORDERS]
    if all(v is not None for v in nuts + guide):
        text += (
            f" On NUTS's rows, NUTS conditioned on the visible pixels alone reached"
            f" {nuts[0]:.2f} and {nuts[1]:.2f} under the chain's and top-down's decoders, the"
            f" guides {guide[0]:.2f} and {guide[1]:.2f}."
        )
    return [text]


def _texture_sentences(d: dict) -> list[str]:
    top = d["amortized_top_down"]
    keys = ("texture_mi_z1", "texture_mi_z2", "texture_decoding_z2", "texture_decoding_z1_pca",
            "texture_decoding_z1")  # fmt: skip
    if any(_num(top.get(k)) is None for k in keys):
        return []
    k2 = int(top.get("active_z2", 0)) + int(top.get("collapsed_z2", 0))
    return [
        f"Textures against phase-scrambled copies (top-down): V1's median modulation index"
        f" {_num(top['texture_mi_z1']):.2f}, V2's {_num(top['texture_mi_z2']):.2f} (macaque V1"
        " is near 0,"
        f" V2 above); the texture family is decoded from V2 with accuracy"
        f" {top['texture_decoding_z2']:.2f}, from V1's first {k2} principal components"
        f" {top['texture_decoding_z1_pca']:.2f} and from all of V1"
        f" {top['texture_decoding_z1']:.2f} (chance {top.get('texture_chance', 0.25):.2f})."
    ]


#: The per-layer table's columns: (heading, key).
LAYER_COLUMNS = (
    ("held-out ELBO", "elbo_test"),
    ("reconstruction E[log p(x | z1)]", "reconstruction_test"),
    ("V1 term E[log q(z1) - log p(z1 | z2)]", "kl_z1"),
    ("V2 term E[log q(z2) - log p(z2)]", "kl_z2"),
    ("active V1 units", "active_z1"),
    ("active V2 units", "active_z2"),
)


def layer_table_html(results: dict) -> str:
    """The ELBO by layer of every method that has it, in nats per held-out patch."""
    rows = []
    for method in results.get("methods", {}):
        d = _diag(results, method)
        if "kl_z1" not in d:
            continue
        cells = "".join(
            f"<td>{d[k]:.2f}</td>" if isinstance(d.get(k), float) else f"<td>{d.get(k, '')}</td>"
            for _, k in LAYER_COLUMNS
        )
        rows.append(f"<tr><td class=v>{html.escape(method)}</td>{cells}</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in LAYER_COLUMNS)
    return (
        "<h3>The ELBO by layer</h3><p>Nats per held-out patch, the mean over the measured rows;"
        " the ELBO is the reconstruction less the V1 and V2 terms.</p>"
        f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
    )


def verdict_html(results: dict) -> str:
    """The verdict, and the ELBO by layer, as an HTML section (empty where neither is)."""
    found = sentences(results)
    table = layer_table_html(results)
    if not found and not table:
        return ""
    items = "".join(f"<li>{html.escape(s)}</li>" for s in found)
    verdict = f"<ul>{items}</ul>" if items else ""
    return f"<h2>Verdict</h2>{verdict}{table}"
