"""The report's words and pictures: captions written from the numbers (the pair plot, the
marginals with and without a reference, the fitted curve), one labelled NUTS trace panel per
scalar, one colour per method in every figure, plain objective axes, the first line's row
count, and PSIS-LOO k above 0.7 in the verdict. Built on small synthetic InferenceData, so no
inference runs here."""

from __future__ import annotations

import json

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest

import comparisons.figures as figures
import comparisons.report as report
from comparisons.metrics import KHAT_BAD, verdict
from guides.registry import GUIDES

# --------------------------------------------------------------------------- helpers


def _idata(
    posterior: dict[str, np.ndarray],
    *,
    sites: list[str],
    point: bool = False,
    coords: dict | None = None,
    dims: dict | None = None,
    elbo: np.ndarray | None = None,
    extra: dict | None = None,
) -> az.InferenceData:
    """InferenceData shaped as convert.to_inference_data writes it (posterior arrays of shape
    (chain, draw, ...) and the zoo's metadata in the posterior's attrs)."""
    idata = az.from_dict(posterior=posterior, coords=coords, dims=dims, **(extra or {}))
    meta = {"point": point, "sites": sites, "accuracy_sites": sites, "description": {}}
    meta.update({"grid_label": "x", "trace_label": "ELBO"})
    idata.posterior.attrs["zoo"] = json.dumps(meta)
    if elbo is not None:
        idata.posterior.attrs["elbo"] = elbo
    return idata


@pytest.fixture
def figs(monkeypatch):
    """The matplotlib figures the report saves, kept open to be inspected."""
    saved = []

    def keep(fig, path):
        saved.append(fig)

    monkeypatch.setattr(report, "_savefig", keep)
    monkeypatch.setattr(figures, "_save", keep)
    yield saved
    for fig in saved:
        plt.close(fig)


def _gaussian_draws(corr: float, sds=(1.0, 1.0), n=4000, seed=0) -> dict[str, np.ndarray]:
    cov = np.array([[sds[0] ** 2, corr * sds[0] * sds[1]], [corr * sds[0] * sds[1], sds[1] ** 2]])
    x = np.random.default_rng(seed).multivariate_normal([0.0, 0.0], cov, size=n)
    return {"a": x[:, 0], "b": x[:, 1]}


# --------------------------------------------------------------------------- pair plot


def test_pair_caption_says_mean_field_cannot_tilt_only_where_its_numbers_show_it():
    ref = _gaussian_draws(-0.9)
    numbers = {
        "nuts": report.pair_numbers(ref, ref, "a", "b"),
        # mean-field's optimum on this target: untilted, sd = diag(precision)^-1/2.
        "mean_field": report.pair_numbers(ref, _gaussian_draws(0.0, (0.436, 0.436)), "a", "b"),
        "full_rank": report.pair_numbers(ref, _gaussian_draws(-0.9, seed=1), "a", "b"),
        "delta": None,
    }
    assert numbers["mean_field"]["sd_ratio_a"] == pytest.approx(0.436, rel=0.05)
    caption = report.pair_caption("a", "b", -0.9, "nuts", numbers)
    parts = dict(p.split(": ", 1) for p in caption.split(". ", 2)[-1].rstrip(".").split("; "))
    assert "correlation -0.90" in caption
    assert parts["mean_field"].startswith("not tilted")
    assert "narrower" in parts["mean_field"] and "cannot tilt" in parts["mean_field"]
    assert parts["full_rank"].startswith("tilted like the reference")
    assert "cannot tilt" not in parts["full_rank"] and "as wide" in parts["full_rank"]
    assert parts["delta"].startswith("a point estimate")


def test_pair_caption_of_a_weakly_correlated_pair_says_so_and_blames_no_guide():
    # Centered kidiq: the most correlated pair has correlation +0.14 and mean-field matches.
    ref = _gaussian_draws(0.14)
    numbers = {"mean_field": report.pair_numbers(ref, _gaussian_draws(0.0, seed=2), "a", "b")}
    caption = report.pair_caption("a", "b", 0.14, "nuts", numbers)
    assert "correlation +0.14" in caption and "weak correlation" in caption
    assert "cannot tilt" not in caption and "shrinks" not in caption
    assert "mean_field: nearly round, as the reference" in caption
    assert "as wide" in caption


def test_pair_caption_joins_methods_whose_clouds_read_alike():
    ref = _gaussian_draws(-0.95)
    numbers = {
        m: report.pair_numbers(ref, _gaussian_draws(-0.95, (s, s), seed=i), "a", "b")
        for i, (m, s) in enumerate([("laplace", 0.96), ("flow", 1.0), ("full_rank", 1.02)])
    }
    caption = report.pair_caption("a", "b", -0.95, "nuts", numbers)
    assert "laplace, flow, full_rank: tilted like the reference (correlations -0.9" in caption
    ratios = [r for n in numbers.values() for r in (n["sd_ratio_a"], n["sd_ratio_b"])]
    assert f"as wide (sd ratios {min(ratios):.2f}-{max(ratios):.2f})." in caption


def test_pair_caption_tells_a_cloud_tilted_less_or_the_other_way():
    ref = _gaussian_draws(0.95)
    numbers = {
        "low_rank": report.pair_numbers(ref, _gaussian_draws(0.6), "a", "b"),
        "flow": report.pair_numbers(ref, _gaussian_draws(-0.8), "a", "b"),
    }
    caption = report.pair_caption("a", "b", 0.95, "nuts", numbers)
    assert "low_rank: tilted less than the reference" in caption
    assert "flow: tilted the other way" in caption
    assert "cannot tilt" not in caption


# --------------------------------------------------------------------------- marginals


def _record(z=None, lo=None, hi=None, sd=1.0) -> dict:
    metrics = {} if z is None else {"max_abs_mean_z": z, "sd_ratio_min": lo, "sd_ratio_max": hi}
    return {"summary": {"a": {"mean": 0.0, "sd": sd}}, "metrics": metrics, "diagnostics": {}}


def test_marginals_caption_without_a_reference_mentions_none():
    results = {"reference": None, "methods": {"laplace": _record()}}
    caption = report.marginals_caption(results, ["laplace"], ["a"], shown=1, total=1)
    assert "laplace" in caption
    assert "reference" not in caption and "thick" not in caption and "biased" not in caption


def test_marginals_caption_names_who_is_narrower_wider_shifted_or_matching():
    results = {
        "reference": "nuts",
        "methods": {
            "nuts": _record(0.0, 1.0, 1.0),
            "mean_field": _record(0.05, 0.42, 0.98),
            "flow": _record(0.30, 0.95, 1.25),
            "full_rank": _record(0.04, 0.97, 1.03),
            "delta": {**_record(0.18, 0.0, 0.0, sd=0.0)},
        },
    }
    caption = report.marginals_caption(
        results, list(results["methods"]), ["a", "b"], all_sites=["a", "b", "c"], shown=2, total=2
    )
    assert "reference (nuts)" in caption and "dashed" in caption
    assert "over-confident; smallest sd ratio): mean_field (0.42)." in caption
    assert "(largest sd ratio): flow (1.25)." in caption
    assert (
        "shifted by 0.1 sd or more (largest): flow (0.30 sd), delta (0.18 sd, a point estimate)."
        in caption
    )
    assert caption.endswith("Shown: a, b, the quantities the accuracy columns judge; c not drawn.")
    assert "every parameter: full_rank." in caption


def test_marginals_caption_against_a_point_reference_judges_no_width():
    results = {
        "reference": "ml",
        "methods": {"ml": _record(sd=0.0), "mean_field": _record(), "laplace": _record()},
    }
    caption = report.marginals_caption(results, list(results["methods"]), ["a"], shown=1, total=1)
    assert "The reference (ml) is a point" in caption and "none is judged" in caption
    assert "Narrower" not in caption and "Within" not in caption


def test_marginals_show_the_sites_a_model_names_for_them(figs, tmp_path):
    # PPCA names identified quantities (accuracy_sites); raw loadings are not drawn.
    rng = np.random.default_rng(0)
    idata = az.from_dict(
        posterior={"loadings": rng.normal(size=(1, 50, 3, 2)), "sigma": rng.gamma(9, size=(1, 50))}
    )
    meta = {"point": False, "sites": ["loadings", "sigma"], "accuracy_sites": ["sigma"]}
    idata.posterior.attrs["zoo"] = json.dumps(meta)
    sites = report.shown_sites(idata)
    assert sites == ["sigma"]
    results = {"reference": None, "methods": {"mean_field": _record()}}
    caption = report.plot_marginals(results, {"mean_field": idata}, sites, tmp_path / "m.png")
    assert [ax.get_title() for ax in figs[0].axes if ax.axison] == ["sigma"]
    assert "loadings not drawn" in caption


# --------------------------------------------------------------------------- colours


def test_every_method_has_one_colour_of_its_own_used_by_every_figure(figs, tmp_path):
    methods = {"nuts", "exact", "ml", "em", *GUIDES}
    assert methods <= set(figures.METHOD_COLORS)
    assert len(set(figures.METHOD_COLORS.values())) == len(figures.METHOD_COLORS)
    assert figures.method_color("laplace-k3") == figures.method_color("laplace")
    assert figures.method_color("something_new") == figures.method_color("something_new")

    # PPCA: the spectrum's lines and the covariance-error bars of one method share a colour.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    idatas = {}
    for m in ("ml", "laplace", "mean_field"):
        idata = _idata(
            {"loadings": rng.normal(size=(1, 20, 4, 2)), "sigma": rng.gamma(9, size=(1, 20))},
            sites=["loadings", "sigma"],
            dims={"loadings": ["feature", "latent"]},
        )
        idata.extend(az.from_dict(observed_data={"x": x}, dims={"x": ["obs", "feature"]}))
        idatas[m] = idata
    results = {
        "reference": "ml",
        "methods": {
            m: {"metrics": {"cov_rel_error": 0.1 + i, "subspace_angle_max_deg": 1.0 + i}}
            for i, m in enumerate(idatas)
        },
    }
    figures.plot_ppca_spectrum(results, idatas, tmp_path)
    figures.plot_ppca_cov_error(results, idatas, tmp_path)
    spectrum, bars = figs[0].axes[0], figs[1].axes[0]
    lines = {line.get_label(): line.get_color() for line in spectrum.get_lines()}
    labels = [t.get_text() for t in bars.get_xticklabels()]
    for label, patch in zip(labels, bars.patches):
        colour = plt.matplotlib.colors.to_hex(patch.get_facecolor())
        assert colour == lines[label] == figures.method_color(label)


# --------------------------------------------------------------------------- NUTS and traces


def _nuts(values: dict[str, np.ndarray], coords=None, dims=None) -> az.InferenceData:
    return _idata(values, sites=list(values), coords=coords, dims=dims)


def test_nuts_trace_has_one_labelled_panel_pair_per_element_of_a_vector(figs, tmp_path):
    rng = np.random.default_rng(0)
    coef = np.stack([8 + rng.normal(size=(4, 100)), 0.55 + 0.05 * rng.normal(size=(4, 100))], -1)
    idata = _nuts(
        {
            "intercept": rng.normal(size=(4, 100)),
            "coef": coef,
            "sigma": rng.gamma(9, size=(4, 100)),
        },
        coords={"feature": ["mom_hs", "mom_iq"]},
        dims={"coef": ["feature"]},
    )
    names, labels, total = report.plot_nuts(idata, ["intercept", "coef", "sigma"], tmp_path)
    assert labels == ["intercept", "coef[mom_hs]", "coef[mom_iq]", "sigma"] and total == 4
    trace, rank = figs
    titles = [ax.get_title() for ax in trace.axes if ax.axison]
    assert titles.count("coef[mom_hs]") == 1 and titles.count("coef[mom_iq]") == 1
    assert len(titles) == 2 * len(labels)  # a density and a trace panel per scalar
    assert sorted(ax.get_title() for ax in rank.axes if ax.axison) == sorted(labels)
    # Each trace panel holds one line per chain of one scalar: mom_iq's panel spans its own range.
    iq = next(ax for ax in trace.axes if ax.get_title() == "coef[mom_iq]: draws in order")
    assert len(iq.get_lines()) == 4 and iq.get_ylim()[1] < 1.0


def test_nuts_trace_of_many_scalars_shows_the_least_mixed_subset_and_says_which(figs, tmp_path):
    rng = np.random.default_rng(0)
    locs = rng.normal(size=(4, 100, 3, 12))
    locs[:2, :, 1, 5] += 3.0  # two chains elsewhere: the worst R-hat
    idata = _nuts({"locs": locs}, dims={"locs": ["component", "feature"]})
    _, labels, total = report.plot_nuts(idata, ["locs"], tmp_path)
    assert total == 36 and len(labels) == report.MAX_TRACE_PANELS
    assert "locs[1,5]" in labels
    trace, caption_summary = report.nuts_captions(labels, total, {"diagnostics": {}})[::2]
    assert f"the {len(labels)} of 36 scalars with the highest R-hat" in trace
    assert "locs[1,5]" in trace
    assert caption_summary == "NUTS rank plots"
    _, _, summary = report.nuts_captions(labels, total, {"diagnostics": {"r_hat_max": 1.4}})
    assert "1.400" in summary and "do not mix" in summary
    # R-hat fine but too few effective draws (kidiq, raw intercept: bulk ESS 331).
    diag = {"r_hat_max": 1.006, "ess_bulk_min": 331.0}
    _, _, summary = report.nuts_captions(labels, total, {"diagnostics": diag})
    assert "smallest bulk ESS 331" in summary and "the chains mix" not in summary
    diag = {"r_hat_max": 1.004, "ess_bulk_min": 1080.0}
    _, _, summary = report.nuts_captions(labels, total, {"diagnostics": diag})
    assert summary == "NUTS rank plots (largest R-hat 1.004: the chains mix)"


def test_objective_traces_have_no_offset_label_and_wrap_in_rows_of_four(figs, tmp_path):
    steps = np.arange(400)
    methods = ("mean_field", "low_rank", "full_rank", "flow", "laplace", "delta")
    idatas = {
        m: _idata(
            {"a": np.zeros((1, 3))}, sites=["a"], elbo=-243800.0 + 20 * (1 - np.exp(-steps / 50))
        )
        for m in methods
    }
    # An optimizer that stopped at once: a flat trace of two steps near -1186.2768.
    idatas["delta"].posterior.attrs["elbo"] = np.array([-1186.27680818, -1186.27680818])
    caption = report.plot_elbo(idatas, tmp_path / "elbo.png")
    assert caption.startswith(
        "The objective of each fit per step, in its method's colour (mean_field, low_rank, "
        "full_rank, flow, laplace, delta: the ELBO of a stochastic guide per SVI step), drawn "
        "relative to its end (the mean of its last tenth of the steps"
    )
    figs[0].canvas.draw()  # tick labels exist once drawn
    axes = [ax for ax in figs[0].axes if ax.axison]
    assert len(axes) == 6 and figs[0].get_size_inches()[0] <= 4 * 3.3 + 1e-9
    for ax, m in zip(axes, methods):
        assert ax.yaxis.get_offset_text().get_text() == ""
        assert ax.title.get_fontsize() >= 9
        assert ax.get_title().startswith(f"{m}\nend -")
        assert ax.get_lines()[0].get_color() == figures.method_color(m)
        # Short tick labels: at most 8 characters (a raw axis gave -1186.2768081880).
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        assert ticks and max(len(t) for t in ticks) <= 8, ticks
    end = np.mean(idatas["mean_field"].posterior.attrs["elbo"][-40:])
    assert axes[0].get_title() == f"mean_field\nend {end:.6g}"


def test_objective_caption_names_only_the_objectives_traced():
    caption = report.elbo_caption({"laplace": "log joint (L-BFGS)", "em": "log-likelihood (EM)"})
    assert "laplace: the log joint at each L-BFGS iterate" in caption
    assert "em: the log-likelihood after each iteration" in caption
    assert "ELBO" not in caption and "learning rate" not in caption


# --------------------------------------------------------------------------- fitted curve


def _regression(point: bool, seed: int) -> az.InferenceData:
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 20)
    n = 1 if point else 200
    mean = np.sin(6 * grid) + 0.05 * rng.normal(size=(1, n, 1))
    return _idata(
        {"sigma": np.full((1, n), 0.2) if point else rng.gamma(50, 0.004, size=(1, n))},
        sites=["sigma"],
        point=point,
        extra={
            "posterior_predictive": {
                "y_grid": mean + 0.2 * rng.normal(size=(1, n, 20)),
                "mean_grid": mean,
            },
            "observed_data": {"y": np.sin(6 * np.linspace(0, 1, 30))},
            "constant_data": {"plot_x": np.linspace(0, 1, 30)},
        },
        coords={"grid": grid},
        dims={"y_grid": ["grid"], "mean_grid": ["grid"]},
    )


def test_zoo_fit_of_one_guide_draws_its_fitted_curve_and_flags_its_loo_k(figs, tmp_path):
    results = {
        "reference": None,
        "posterior": {"features": "x, x^2, x^3"},
        "methods": {"laplace": {"diagnostics": {"loo_khat_max": 0.81, "loo_khat_bad": 1}}},
    }
    caption = report.plot_predictive(results, {"laplace": _regression(False, 0)}, tmp_path / "p")
    ax = figs[0].axes[0]
    assert "laplace" in ax.get_title() and "PSIS-LOO k 0.81 > 0.7" in ax.get_title()
    assert [line.get_color() for line in ax.get_lines()] == [figures.method_color("laplace")]
    assert "for laplace:" in caption and "laplace (k 0.81)" in caption
    assert "other features are held at their means" not in caption


def test_fitted_curve_has_a_panel_per_method_and_says_what_a_point_estimate_lacks(figs, tmp_path):
    idatas = {"nuts": _regression(False, 0), "delta": _regression(True, 1)}
    results = {
        "reference": "nuts",
        "posterior": {"features": "mom_hs, mom_iq"},
        "methods": {"nuts": {"diagnostics": {"loo_khat_max": 0.2}}, "delta": {"diagnostics": {}}},
    }
    caption = report.plot_predictive(results, idatas, tmp_path / "p")
    titles = [ax.get_title() for ax in figs[0].axes if ax.axison]
    assert titles == ["nuts (posterior)", "delta (point estimate)"]
    assert "A point estimate (delta)" in caption and "PSIS-LOO" not in caption
    assert "other features are held at their means" in caption


@pytest.mark.parametrize(("k", "flagged"), [(0.81, True), (0.69, False), ("NaN", False)])
def test_verdict_flags_psis_loo_k_above_the_threshold(k, flagged):
    record = {
        "diagnostics": {"loo_khat_max": k, "loo_khat_bad": 1, "hessian": "positive definite"},
        "metrics": {},
        "summary": {"a": {"mean": 0.0, "sd": 1.0}},
    }
    said = verdict("laplace", record, reference=None)
    assert (f"PSIS-LOO k 0.81 > {KHAT_BAD} at 1 row: elpd LOO unreliable" in said) is flagged
    assert ("PSIS-LOO" in said) is flagged


# --------------------------------------------------------------------------- the page


@pytest.mark.parametrize(
    ("num_data", "num_test", "said"),
    [
        (434, 0, "Fitted to all 434 rows of kidiq.csv; none held out."),
        (347, 87, "Fitted to 347 of the 434 rows of kidiq.csv; 87 held out"),
    ],
)
def test_first_line_of_the_page_says_how_many_rows_were_fitted(num_data, num_test, said, tmp_path):
    results = {
        "model": "linear_regression",
        "dataset": "kidiq.csv",
        "num_data": num_data,
        "num_test": num_test,
        "seed": 0,
        "preset": "smoke",
        "reference": None,
        "versions": {},
        "methods": {},
    }
    page = report._page(results, [], tmp_path)
    body = page.split("</h1>", 1)[1].lstrip()
    assert body.startswith(f"<p class=rows>{said}")


def test_a_folded_section_sits_under_its_summary(tmp_path):
    (tmp_path / "r.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    folded = report._section_html(
        ("Rank plots", "r.png", "caption", "largest R-hat 1.002"), tmp_path
    )
    assert folded.startswith("<details><summary>largest R-hat 1.002</summary><h2>Rank plots")
    assert folded.endswith("</details>")
    open_ = report._section_html(("Trace", "r.png", "caption"), tmp_path)
    assert open_.startswith("<h2>Trace</h2><p>caption</p><img")


def test_a_method_far_wider_than_the_others_does_not_set_the_marginal_window():
    """PPCA's Laplace on a flat rotation spreads ~1e4 times wider than the other methods; the
    window follows the others (and the reference), and the caption says who ran off it."""
    rng = np.random.default_rng(0)
    values = {
        "nuts": rng.normal(0.0, 1.0, 1000),
        "mean_field": rng.normal(0.2, 0.9, 1000),
        "laplace": rng.normal(0.0, 1e4, 1000),
        "delta": np.array([0.1]),
    }
    lo, hi, wide = report._window(values, "nuts")
    assert wide == ["laplace"]
    assert -5.0 < lo < -2.0 and 2.0 < hi < 5.0  # about 3 sd of the two unit-width methods
    # The reference sets the window even when it is the wide one.
    assert report._window(values, "laplace")[2] == []
    assert report._window({"delta": np.array([1.0])}, None) is None


def test_a_one_entry_objective_trace_read_back_from_netcdf_is_drawn(tmp_path):
    """netCDF gives a one-entry attribute back as a scalar (an L-BFGS fit that stopped at its
    start); the traces figure drew it with len() and crashed the mixture's report."""
    idata = _idata({"a": np.zeros((1, 3))}, sites=["a"], elbo=np.array([-12.5]))
    idata.to_netcdf(str(tmp_path / "delta.nc"), engine="h5netcdf")
    back = az.from_netcdf(str(tmp_path / "delta.nc"), engine="h5netcdf")
    assert np.ndim(back.posterior.attrs["elbo"]) == 0
    assert report.plot_elbo({"delta": back}, tmp_path / "elbo.png") is not None
    assert (tmp_path / "elbo.png").is_file()
