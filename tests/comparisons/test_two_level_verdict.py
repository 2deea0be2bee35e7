"""The two-level VAE's verdict in words: each sentence from the numbers it states."""

from __future__ import annotations

from comparisons.two_level_verdict import layer_table_html, sentences, verdict_html


def _results(**extra) -> dict:
    base = {
        "measured_rows": 200, "iw_khat_bad": 0, "active_z1": 144, "collapsed_z1": 0,
        "kl_z1": 80.0, "gold_rows": 1, "gold_noise": 0.07, "gold_rhat_max": 1.005,
        "gold_z1_corr_nuts_rms": 0.10, "inpaint_rmse_zero": 0.90, "inpaint_hidden": 16,
    }  # fmt: skip
    chain = {**base, "elbo_test": -130.0, "active_z2": 1, "collapsed_z2": 15, "kl_z2": 2.0,
             "gold_z1_sd_ratio_median": 0.47, "gold_z1_corr_slope": 0.0,
             "inpaint_rmse": 1.2}  # fmt: skip
    top = {**base, "elbo_test": -128.0, "active_z2": 10, "collapsed_z2": 6, "kl_z2": 2.8,
           "gold_z1_sd_ratio_median": 1.02, "gold_z1_corr_slope": 0.4, "inpaint_rmse": 0.8,
           **extra}  # fmt: skip
    return {
        "model": "two_level_vae",
        "methods": {
            "amortized_chain": {"metrics": {"elbo_test": chain.pop("elbo_test")},
                                "diagnostics": chain},
            "amortized_top_down": {"metrics": {"elbo_test": top.pop("elbo_test")},
                                   "diagnostics": top},
            "ml_gaussian": {"metrics": {}, "diagnostics": {"inpaint_rmse": 0.58}},
        },
    }  # fmt: skip


def test_the_verdict_says_what_the_numbers_say():
    text = " ".join(sentences(_results()))
    assert "top-down leads the chain by 2.0 nats" in text
    assert "the chain keeps 1 of 16 units active, top-down 10" in text
    assert "Against NUTS on 1 held-out patch under" in text
    assert "the chain's V1 sds are 0.47 times NUTS's (over-confident)" in text
    assert "top-down's V1 sds are 1.02 times NUTS's (right)" in text  # |log 1.02| < 0.07
    assert "(over-confident)" in " ".join(sentences(_results(gold_z1_sd_ratio_median=0.85)))
    assert "central 4x4" in text
    assert "0.00 for the chain (0 by construction) and 0.40 for top-down" in text
    # 1 - (0.07 / 0.10)^2: what a guide holding every correlation would show, through noise.
    assert "a guide holding all of them would show about 0.51" in text
    # NUTS's correlations (RMS 0.10) within 1.5 times its noise (0.07): no claim on them.
    assert "this run cannot say whether the true posterior correlates V1 units" in text
    clear = " ".join(sentences(_results(gold_z1_corr_nuts_rms=0.3)))
    assert "The true posterior correlates V1 units at 0.30 RMS" in clear
    assert "The chain did worse than predicting 0" in text and "0.58" in text
    assert "PSIS k" not in text and "R-hat" not in text  # nothing to warn of


def test_the_verdict_warns_where_its_reference_or_estimates_are_rough():
    text = " ".join(sentences(_results(iw_khat_bad=200, gold_rhat_max=1.03)))
    assert "PSIS k above 0.7 for top-down on 200 of 200 rows" in text
    assert "largest R-hat is 1.030" in text


def test_the_layer_table_lists_every_method_with_layers():
    table = layer_table_html(_results())
    assert table.count("<tr>") == 3 and "ml_gaussian" not in table
    assert "<h2>Verdict</h2>" in verdict_html(_results())
    assert verdict_html({"methods": {}}) == ""
