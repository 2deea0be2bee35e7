"""Bayesian linear regression: vectorization, closed forms, simulation, input errors, data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from vectorization import log_joint, log_joints, prior_draws

from zoo import linear_regression as lr
from zoo.errors import ZooInputError
from zoo.registry import get_model

NUM_DRAWS = 4

# --------------------------------------------------------------------------- helpers


def _frame(seed: int = 0, num_data: int = 30, num_features: int = 3, **kwargs) -> pd.DataFrame:
    return lr.simulate(seed, num_data, num_features, **kwargs)[0]


# --------------------------------------------------------------------------- vectorization

OPTION_SETS = {
    "default": {},
    "raw": {"center": False},
    "conjugate": {"prior": "conjugate"},
    "conjugate_raw": {"prior": "conjugate", "center": False},
    "no_intercept": {"intercept": False},
    "sigma_known": {"sigma_known": 1.0},
    "conjugate_sigma_known": {"prior": "conjugate", "sigma_known": 1.0},
    "conjugate_shape": {"prior": "conjugate", "sigma_shape": 3.0},
}


@pytest.mark.parametrize("num_features", [1, 3])
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_registry_model_vectorizes(options, num_features):
    # STYLE.md pitfall: a batched log joint of 4 prior draws equals the 4 unbatched ones.
    spec = get_model("linear_regression")
    post = spec.make_posterior(_frame(num_features=num_features), **options)
    draws = prior_draws(post.model, post.data, NUM_DRAWS, seed=1, obs="y")
    assert set(draws[0]) >= {"coef"}
    unbatched, batched = log_joints(post.model, post.data, draws)
    assert torch.isfinite(unbatched).all()
    assert len(set(unbatched.tolist())) == NUM_DRAWS  # distinct draws, not one repeated
    # Seen: bitwise equal, with log joints of prior draws up to 5e4 in size.
    torch.testing.assert_close(batched, unbatched, rtol=0, atol=1e-10)


def _tiny_model(x, y=None, *, matmul: bool):
    coef = pyro.sample("coef", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    if matmul:
        # The pitfall: a batch of coefs (4, 1, D) gives (4, 1, N), its batch dims left of n.
        mean = b + (x @ coef.unsqueeze(-1)).squeeze(-1)
    else:
        mean = b + (x * coef).sum(-1)
    with pyro.plate("data", x.shape[-2]):
        pyro.sample("y", dist.Normal(mean, 1.0), obs=y)


def _plain_matmul_model(x, y=None):
    coef = pyro.sample("coef", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", x.shape[-2]):
        pyro.sample("y", dist.Normal(x @ coef, 1.0), obs=y)


def test_vectorization_check_catches_matmul():
    # The check above can fail: a matrix-vector product mis-broadcasts silently...
    frame = _frame()
    data = {
        "x": torch.tensor(frame[["x1", "x2", "x3"]].to_numpy()),
        "y": torch.tensor(frame["y"].to_numpy()),
    }
    for matmul in (False, True):

        def model(x, y=None, matmul=matmul):
            return _tiny_model(x, y, matmul=matmul)

        draws = prior_draws(model, data, NUM_DRAWS, seed=1, obs="y")
        unbatched, batched = log_joints(model, data, draws)
        if matmul:
            assert not torch.allclose(batched, unbatched, rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(batched, unbatched, rtol=0, atol=1e-10)
    # ...and a plain x @ coef cannot run batched at all.
    draws = prior_draws(_plain_matmul_model, data, NUM_DRAWS, seed=1, obs="y")
    with pytest.raises(RuntimeError):
        log_joints(_plain_matmul_model, data, draws)


# --------------------------------------------------------------------------- exact posterior


def _xy(post) -> tuple[np.ndarray, np.ndarray]:
    return post.data["x"].numpy(), post.data["y"].numpy()


def _model_values(post, beta: np.ndarray, sigma: float | None, *, center: bool, intercept: bool):
    """Model site values for the point (intercept, coef..., sigma) in original units."""
    x, _ = _xy(post)
    values = {}
    if intercept:
        coef = beta[1:]
        a = beta[0] + x.mean(0) @ coef if center else beta[0]
        values["intercept_centered" if center else "intercept"] = torch.tensor(a)
    else:
        coef = beta
    values["coef"] = torch.as_tensor(coef)
    if sigma is not None:
        values["sigma"] = torch.tensor(sigma)
    return values


EXACT_CASES = {
    "conjugate": ({"prior": "conjugate"}, True, True),
    "conjugate_raw": ({"prior": "conjugate", "center": False}, False, True),
    "conjugate_no_intercept": ({"prior": "conjugate", "intercept": False}, False, False),
    "sigma_known": ({"sigma_known": 0.8}, True, True),
    "sigma_known_raw": ({"sigma_known": 0.8, "center": False}, False, True),
    "sigma_known_no_intercept": ({"sigma_known": 0.8, "intercept": False}, False, False),
    "conjugate_sigma_known": ({"prior": "conjugate", "sigma_known": 0.8}, True, True),
    "conjugate_shape": ({"prior": "conjugate", "sigma_shape": 5.0}, True, True),
    "conjugate_per_coef": ({"prior": "conjugate", "coef_scale": [0.3, 2.0, 9.0]}, True, True),
    "flat_sigma_known": ({"prior": "flat", "sigma_known": 0.8}, True, True),
    "flat_sigma_known_raw": ({"prior": "flat", "sigma_known": 0.8, "center": False}, False, True),
}


@pytest.mark.parametrize("case", EXACT_CASES.values(), ids=EXACT_CASES.keys())
def test_exact_density_is_the_model_posterior(case):
    # log p(theta, y) (the Pyro model) - log q(theta) (the closed form, via scipy) must be
    # the same constant, log p(y), at every theta: a check of the whole density, not moments.
    options, center, intercept = case
    post = lr.make_posterior(_frame(correlation=0.6), **options)
    x, y = _xy(post)
    exact = lr.exact_posterior(
        x, y, lr.default_priors(x, y, **_prior_kwargs(options)), intercept=intercept
    )
    beta, sigma = exact.sample(seed=2, num_draws=20)
    # Points far in the tails too, where a wrong scale or df would show.
    beta = exact.mean + 3.0 * (beta - exact.mean)
    diffs = []
    for i in range(len(beta)):
        s = None if sigma is None else float(sigma[i])
        values = _model_values(post, beta[i], s, center=center, intercept=intercept)
        log_p = float(log_joint(post.model, post.data, values))
        if s is None:
            log_q = stats.multivariate_normal(exact.mean, exact.cov).logpdf(beta[i])
        else:
            # beta | sigma ~ N(mean, sigma^2 vn), sigma^2 ~ InvGamma(an, bn); d(sigma^2) = 2 sigma
            log_q = (
                stats.multivariate_normal(exact.mean, s**2 * exact.vn).logpdf(beta[i])
                + stats.invgamma(exact.an, scale=exact.bn).logpdf(s**2)
                + math.log(2.0 * s)
            )
        diffs.append(log_p - log_q)
    assert np.ptp(diffs) < 1e-9, diffs  # seen 2e-13 (rounding of log joints near -60)


def _prior_kwargs(options: dict) -> dict:
    family = options.get("prior", "weakly_informative")
    keys = ("sigma_known", "sigma_shape", "coef_scale")
    return {"family": family, **{k: options[k] for k in keys if k in options}}


def _nig_covariance_form(z, y, m0, v0, a0, b0):
    """NIG posterior by conditioning the joint Gaussian of (beta, y) given sigma (covariance
    form, no precision matrices): y | sigma ~ N(z m0, sigma^2 (I + z v0 z'))."""
    c = np.eye(len(y)) + z @ v0 @ z.T
    gain = np.linalg.solve(c, z @ v0).T  # v0 z' c^-1
    resid = y - z @ m0
    mean = m0 + gain @ resid
    vn = v0 - gain @ z @ v0
    an = a0 + len(y) / 2
    bn = b0 + 0.5 * resid @ np.linalg.solve(c, resid)
    return mean, vn, an, bn


@pytest.mark.parametrize("center", [True, False])
def test_conjugate_exact_moments_match_covariance_form(center):
    frame = _frame(num_data=25, correlation=0.8)
    post = lr.make_posterior(frame, prior="conjugate", center=center)
    x, y = _xy(post)
    n, d = x.shape
    # Priors written out from the rstanarm rules, in raw coordinates (intercept at x = 0):
    sd_y = np.std(y, ddof=1)
    s0 = np.concatenate([[2.5 * sd_y], 2.5 * sd_y / np.std(x, axis=0, ddof=1)]) / sd_y
    shear = np.eye(d + 1)
    shear[0, 1:] = -x.mean(0)  # intercept = intercept_c - xbar . coef
    m0 = shear @ np.concatenate([[y.mean()], np.zeros(d)])
    v0 = shear @ np.diag(s0**2) @ shear.T
    z = np.column_stack([np.ones(n), x])
    mean, vn, an, bn = _nig_covariance_form(z, y, m0, v0, 2.0, 2.0 * sd_y**2)

    moments = post.closed_forms["exact"](0, 10).moments
    np.testing.assert_allclose(moments["intercept"][0], mean[0], rtol=1e-9)
    np.testing.assert_allclose(moments["coef"][0], mean[1:], rtol=1e-9)
    sd = np.sqrt(np.diag(bn / (an - 1) * vn))  # multivariate t with 2 an dof
    np.testing.assert_allclose(moments["intercept"][1], sd[0], rtol=1e-9)
    np.testing.assert_allclose(moments["coef"][1], sd[1:], rtol=1e-9)
    sigma = stats.invgamma(an, scale=bn)
    sigma_mean = sigma.expect(np.sqrt)
    sigma_sd = math.sqrt(sigma.expect(lambda v: v) - sigma_mean**2)
    np.testing.assert_allclose(moments["sigma"][0], sigma_mean, rtol=1e-7)
    np.testing.assert_allclose(moments["sigma"][1], sigma_sd, rtol=1e-6)


def test_exact_centered_and_raw_agree():
    frame = _frame(num_data=40, correlation=0.9)
    centered = lr.make_posterior(frame, prior="conjugate")
    raw = lr.make_posterior(frame, prior="conjugate", center=False)
    m_c = centered.closed_forms["exact"](0, 10).moments
    m_r = raw.closed_forms["exact"](0, 10).moments
    assert set(m_c) == set(m_r) == {"intercept", "coef", "sigma"}
    for site in m_c:
        for a, b in zip(m_c[site], m_r[site]):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    # The two parametrizations are one posterior: equal log joints at corresponding points.
    x, _ = _xy(centered)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        beta, sigma = rng.normal(size=4) * 3, float(rng.gamma(2.0))
        lp_c = log_joint(
            centered.model,
            centered.data,
            _model_values(centered, beta, sigma, center=True, intercept=True),
        )
        lp_r = log_joint(
            raw.model, raw.data, _model_values(raw, beta, sigma, center=False, intercept=True)
        )
        assert abs(float(lp_c - lp_r)) < 1e-9


def test_exact_draws_match_moments():
    post = lr.make_posterior(_frame(num_data=25), prior="conjugate")
    num_draws = 40_000
    closed = post.closed_forms["exact"](3, num_draws)
    assert set(closed.draws) == {"intercept", "intercept_centered", "coef", "sigma"}
    x, _ = _xy(post)
    np.testing.assert_allclose(
        closed.draws["intercept_centered"],
        closed.draws["intercept"] + closed.draws["coef"] @ x.mean(0),
        rtol=1e-12,
    )
    for site, (mean, sd) in closed.moments.items():
        draws = closed.draws[site]
        # Monte Carlo error of a mean is sd / sqrt(n); of an sd about sd / sqrt(2 n) for a
        # near-normal margin (the t here has 2 an = 29 dof, kurtosis adds little).
        np.testing.assert_array_less(
            np.abs(draws.mean(0) - mean), 5 * np.asarray(sd) / math.sqrt(num_draws)
        )
        np.testing.assert_array_less(
            np.abs(draws.std(0) - sd), 5 * 1.2 * np.asarray(sd) / math.sqrt(2 * num_draws)
        )


@pytest.mark.parametrize("center", [True, False])
def test_sigma_known_exact_is_bishop(center):
    frame = _frame(num_data=20, correlation=0.7)
    noise = 0.6
    scales = [1.5, 2.0, 3.0]
    post = lr.make_posterior(
        frame, sigma_known=noise, intercept_scale=4.0, coef_scale=scales, center=center
    )
    x, y = _xy(post)
    n = len(y)
    # Bishop (2006) eqs. 3.53-3.54 in raw coordinates: phi = [1, x], prior N(m0, S0) with the
    # intercept prior N(mean y, 4^2) placed at the predictor means (intercept_c).
    phi = np.column_stack([np.ones(n), x])
    shear = np.eye(4)
    shear[0, 1:] = -x.mean(0)
    m0 = shear @ np.array([y.mean(), 0.0, 0.0, 0.0])
    s0 = shear @ np.diag(np.array([4.0, *scales]) ** 2) @ shear.T
    beta = 1.0 / noise**2
    sn = np.linalg.inv(np.linalg.inv(s0) + beta * phi.T @ phi)  # 3.54
    mn = sn @ (np.linalg.solve(s0, m0) + beta * phi.T @ y)  # 3.53
    exact = lr.exact_posterior(
        x, y, lr.default_priors(x, y, sigma_known=noise, intercept_scale=4.0, coef_scale=scales)
    )
    np.testing.assert_allclose(exact.mean, mn, rtol=1e-9)
    np.testing.assert_allclose(exact.cov, sn, rtol=1e-9, atol=1e-12)
    moments = post.closed_forms["exact"](0, 10).moments
    assert "sigma" not in moments
    np.testing.assert_allclose(moments["intercept"][0], mn[0], rtol=1e-9)
    np.testing.assert_allclose(moments["coef"][0], mn[1:], rtol=1e-9)
    np.testing.assert_allclose(moments["coef"][1], np.sqrt(np.diag(sn))[1:], rtol=1e-9)


def test_exact_needs_conjugate_or_known_sigma():
    post = lr.make_posterior(_frame())
    assert "exact" not in post.closed_forms
    x, y = _xy(post)
    with pytest.raises(ZooInputError, match="conjugate"):
        lr.exact_posterior(x, y, lr.default_priors(x, y))


def test_default_priors_follow_rstanarm():
    x = np.array([[1.0, 10.0], [2.0, 30.0], [4.0, 20.0], [3.0, 60.0]])
    y = np.array([1.0, 3.0, 2.0, 7.0])
    priors = lr.default_priors(x, y)
    sd_y = np.std(y, ddof=1)
    assert priors.intercept_loc == pytest.approx(3.25)
    assert priors.intercept_scale == pytest.approx(2.5 * sd_y)
    np.testing.assert_allclose(priors.coef_scale, 2.5 * sd_y / np.std(x, axis=0, ddof=1))
    assert priors.sigma_scale == pytest.approx(sd_y)


# --------------------------------------------------------------------------- simulate


def test_simulate_is_deterministic_and_returns_truth():
    a, truth_a = lr.simulate(7, 50, 3, correlation=0.5)
    b, truth_b = lr.simulate(7, 50, 3, correlation=0.5)
    pd.testing.assert_frame_equal(a, b)
    for key in ("intercept", "coef", "sigma"):
        np.testing.assert_array_equal(truth_a[key], truth_b[key])
    c, _ = lr.simulate(8, 50, 3, correlation=0.5)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    assert list(a.columns) == ["x1", "x2", "x3", "y"]
    np.testing.assert_allclose(truth_a["coef"], [1.0, -0.5, 0.25])
    # Without noise, y is exactly the truth's regression line.
    frame, truth = lr.simulate(1, 20, 2, intercept=-2.0, coef=[0.3, 4.0], sigma=0.0)
    x = frame[["x1", "x2"]].to_numpy()
    np.testing.assert_allclose(frame["y"], truth["intercept"] + x @ truth["coef"], rtol=1e-12)


def test_simulate_noise_and_correlation_are_as_asked():
    n = 20_000
    frame, truth = lr.simulate(0, n, 2, correlation=0.9, sigma=2.0)
    x, y = frame[["x1", "x2"]].to_numpy(), frame["y"].to_numpy()
    # The sample correlation's standard error is (1 - rho^2) / sqrt(n).
    assert abs(np.corrcoef(x.T)[0, 1] - 0.9) < 5 * (1 - 0.81) / math.sqrt(n)
    resid = y - truth["intercept"] - x @ truth["coef"]
    assert abs(resid.std() - 2.0) < 5 * 2.0 / math.sqrt(2 * n)


# --------------------------------------------------------------------------- input errors


def _errors_frame() -> pd.DataFrame:
    return _frame(num_data=10, num_features=2)


def _with(column: str, row: int, value) -> pd.DataFrame:
    frame = _errors_frame().astype(object)
    frame.loc[row, column] = value
    return frame


ERROR_CASES = {
    "unknown_dataset": (lambda: lr.make_posterior("no_such_dataset"), "no_such_dataset"),
    "missing_target": (lambda: lr.make_posterior(_errors_frame(), target="z"), "target column 'z'"),
    "missing_feature": (
        lambda: lr.make_posterior(_errors_frame(), features=["x1", "w"]),
        "feature column 'w'",
    ),
    "non_numeric": (lambda: lr.make_posterior(_with("x2", 3, "abc")), "non-numeric value 'abc'"),
    "nan": (lambda: lr.make_posterior(_with("y", 4, float("nan"))), "data row 5"),
    "inf": (lambda: lr.make_posterior(_with("x1", 2, float("inf"))), "infinite value (inf)"),
    "too_few_rows": (
        lambda: lr.make_posterior(_frame(num_data=3, num_features=2)),
        "3 rows to fit but 3 coefficients",
    ),
    "constant_feature": (
        lambda: lr.make_posterior(_errors_frame().assign(x2=1.5)),
        "feature 'x2' is constant",
    ),
    "degree_two_features": (lambda: lr.make_posterior(_errors_frame(), degree=2), "--degree 2"),
    "center_without_intercept": (
        lambda: lr.make_posterior(_errors_frame(), center=True, intercept=False),
        "centering needs an intercept",
    ),
    "negative_intercept_scale": (
        lambda: lr.make_posterior(_errors_frame(), intercept_scale=-1.0),
        "intercept scale must be a positive number",
    ),
    "negative_coef_scale": (
        lambda: lr.make_posterior(_errors_frame(), coef_scale=[1.0, -2.0]),
        "coefficient prior scales must be positive",
    ),
    "negative_sigma_scale": (
        lambda: lr.make_posterior(_errors_frame(), sigma_scale=-0.5),
        "sigma scale must be a positive number",
    ),
    "unknown_prior": (
        lambda: lr.make_posterior(_errors_frame(), prior="nope"),
        "unknown prior 'nope'; choose one of: weakly_informative, conjugate, flat",
    ),
    "coef_scale_count": (
        lambda: lr.make_posterior(_errors_frame(), coef_scale=[1.0, 2.0, 3.0]),
        "3 coefficient prior scales for 2 coefficients (x1, x2); give one for all, or one per",
    ),
    "zero_coef_scale": (
        lambda: lr.make_posterior(_errors_frame(), coef_scale=0.0),
        "coefficient prior scales must be positive",
    ),
    "flat_with_a_scale": (
        lambda: lr.make_posterior(_errors_frame(), prior="flat", coef_scale=2.0),
        "a flat prior has no scale",
    ),
    "flat_collinear": (
        lambda: lr.make_posterior(_errors_frame().assign(x2=lambda f: 2.0 * f.x1), prior="flat"),
        "with a flat prior the posterior is improper",
    ),
    "flat_too_few_rows": (
        lambda: lr.make_posterior(_frame(num_data=3, num_features=2), prior="flat"),
        "3 rows to fit but 3 coefficients",
    ),
    "shape_without_conjugate": (
        lambda: lr.make_posterior(_errors_frame(), sigma_shape=3.0),
        "use it with --prior conjugate",
    ),
    "negative_shape": (
        lambda: lr.make_posterior(_errors_frame(), prior="conjugate", sigma_shape=-1.0),
        "sigma shape (a0) must be a positive number",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_make_posterior_input_errors(case):
    build, expected = case
    with pytest.raises(ZooInputError) as info:
        build()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.strip() == message


# --------------------------------------------------------------------------- data sets

EXPECTED_ROWS = {
    "simulated": 200,
    "sine": 30,
    "diabetes": 442,
    "kidiq": 434,
    "earnings": 1192,
    "mesquite": 46,
    "sblri": 100,
    "sblrc": 100,
}


def test_every_dataset_has_an_expected_size():
    assert set(lr.DATASETS) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("name", list(lr.DATASETS))
def test_builtin_datasets_load(name):
    post = lr.make_posterior(name)
    assert post.num_data == EXPECTED_ROWS[name]
    assert post.dataset == name
    assert torch.isfinite(post.data["x"]).all() and torch.isfinite(post.data["y"]).all()
    assert post.data["x"].shape == (EXPECTED_ROWS[name], len(post.coords["feature"]))
    # posteriordb's sblr* posteriors have no intercept; the others do.
    assert ("intercept" in post.sites) == (name not in ("sblri", "sblrc"))


def test_degree_expands_one_feature():
    post = lr.make_posterior("sine", degree=3)
    assert post.coords["feature"] == ["x", "x^2", "x^3"]
    x = post.data["x"]
    torch.testing.assert_close(x[:, 1], x[:, 0] ** 2)
    torch.testing.assert_close(x[:, 2], x[:, 0] ** 3)


# --------------------------------------------------------------------------- priors


def test_one_prior_scale_per_coefficient_reaches_the_model():
    post = lr.make_posterior(_frame(), coef_scale=[0.5, 2.0, 10.0])
    trace = pyro.poutine.trace(post.model).get_trace(**post.data)
    np.testing.assert_array_equal(trace.nodes["coef"]["fn"].base_dist.scale.numpy(), [0.5, 2, 10])
    assert "x1: 0.5, x2: 2, x3: 10" in post.description["prior"]


def test_flat_prior_map_is_least_squares_with_the_sigma_mode_in_closed_form():
    """Under a flat prior on (intercept, coef) the mode of the coefficients is least squares
    for any sigma; AutoDelta's sigma maximizes -n log s - RSS / (2 s^2) - s / scale (the
    exponential prior), a root of s^3 / scale + n s^2 - RSS = 0."""
    from guides import fit_guide

    frame = _frame(num_data=40)
    post = lr.make_posterior(frame, prior="flat")
    assert post.description["prior"].endswith("intercept and coef ~ flat (improper)")
    x, y = _xy(post)
    design = np.column_stack([np.ones(len(y)), x])
    beta, rss = np.linalg.lstsq(design, y, rcond=None)[:2]
    scale = float(np.std(y, ddof=1))
    roots = np.roots([1.0 / scale, len(y), 0.0, -float(rss[0])])
    sigma = float(max(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0))
    result = fit_guide("delta", post, seed=0)
    assert result.converged
    point = result.sample(1, seed=0)
    # Converged means within about 1e-6 posterior sd of the mode (guides.fit.GRAD_TOL); the
    # posterior sds here are above 0.05, so 1e-6 absolute is 100 times that (seen: 1e-9).
    np.testing.assert_allclose(point["intercept"][0], beta[0], atol=1e-6)
    np.testing.assert_allclose(point["coef"][0], beta[1:], atol=1e-6)
    np.testing.assert_allclose(point["sigma"][0], sigma, atol=1e-6)
