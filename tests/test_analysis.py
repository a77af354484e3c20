"""Regime analysis: exponent fits, labels, boundaries, condensation measures."""

import numpy as np
import pytest
import xarray as xr

import flowsolve as fs
import flowsolve.analysis as fa

WIDTHS = np.array([1000, 5000, 10000, 20000, 40000])


def synthetic_sweep(slope, widths=WIDTHS, seeds=(0, 1, 2), noise=0.1, rng=None, c=-2.0):
    """A sweep-shaped Dataset with rd = exp(c) m^S exp(noise N(0,1)); ``slope`` is a
    DataArray over the grid dims (or a number)."""
    rng = np.random.default_rng(0) if rng is None else rng
    slope = xr.DataArray(slope) if not isinstance(slope, xr.DataArray) else slope
    logm = xr.DataArray(np.log(widths), dims="width", coords={"width": widths})
    seed = xr.DataArray(np.arange(len(seeds)), dims="seed", coords={"seed": list(seeds)})
    mean = c + slope * logm + 0 * seed
    eps = rng.standard_normal(mean.shape)
    rd = np.exp(mean + noise * eps)
    ds = xr.Dataset({"rd_w_final": rd, "rd_w_max_final": rd * 1.1,
                     "status": xr.full_like(rd, 0, dtype=int).astype(str).where(False, "success")})
    return ds


def test_fit_power_law_exact():
    m = np.array([10.0, 100.0, 1000.0])
    fit = fa.fit_power_law(m, 3.0 * m**-0.5)
    assert fit["slope"] == pytest.approx(-0.5, abs=1e-12)
    assert np.exp(fit["intercept"]) == pytest.approx(3.0, rel=1e-12)
    assert fit["stderr"] == pytest.approx(0.0, abs=1e-12)


def test_fit_matches_scipy_linregress(rng):
    from scipy import stats

    m = np.repeat(WIDTHS, 3).astype(float)
    rd = 0.1 * m**0.3 * np.exp(0.2 * rng.standard_normal(m.size))
    fit = fa.fit_power_law(m, rd)
    ref = stats.linregress(np.log(m), np.log(rd))
    assert fit["slope"] == pytest.approx(ref.slope, rel=1e-12)
    assert fit["stderr"] == pytest.approx(ref.stderr, rel=1e-10)


def test_slopes_recovered_on_grid():
    gam = np.array([0.6, 0.8, 1.0, 1.2, 1.4])
    truth = xr.DataArray(0.8 * (gam[:, None] - 1.0) + np.array([0.0, 0.1])[None, :],
                         dims=("gamma", "gamma_prime"),
                         coords={"gamma": gam, "gamma_prime": [-0.1, 0.0]})
    ds = synthetic_sweep(truth, noise=0.05)
    ex = fa.scaling_exponents(ds, n_boot=200)
    assert set(ex["quantity"].values) == {"rd_w_final", "rd_w_max_final"}
    s = ex["slope"].sel(quantity="rd_w_final")
    assert np.abs(s - truth).max() < 0.05
    np.testing.assert_allclose(ex["slope"].sel(quantity="rd_w_max_final"), s, atol=1e-12)
    assert (ex["n_points"] == 15).all()


@pytest.mark.parametrize("noise", [0.05, 0.3])
def test_interval_coverage(noise):
    """The t-interval and the bootstrap interval cover the true slope at about their
    level, over 400 independent synthetic sweeps (one vectorised fit)."""
    rng = np.random.default_rng(7)
    truth = 0.37
    draws = xr.DataArray(np.full(400, truth), dims="draw")
    ds = synthetic_sweep(draws, seeds=range(8), noise=noise, rng=rng)
    ex = fa.scaling_exponents(ds, "rd_w_final", level=0.9, n_boot=300, seed=1).isel(quantity=0)
    cover_t = float(((ex.ci_low <= truth) & (truth <= ex.ci_high)).mean())
    cover_b = float(((ex.boot_low <= truth) & (truth <= ex.boot_high)).mean())
    # binomial sd at p = 0.9, N = 400: 0.015; allow ~3 sd (bootstrap percentile is a bit
    # liberal with 8 seeds per width)
    assert abs(cover_t - 0.9) < 0.05, cover_t
    assert 0.8 < cover_b < 0.96, cover_b
    # the bootstrap spread matches the fit's standard error on average
    ratio = float((ex.boot_std / ex.stderr).median())
    assert 0.7 < ratio < 1.3


def test_failed_runs_and_nonpositive_values_left_out():
    ds = synthetic_sweep(0.5, noise=0.0)
    ds["rd_w_final"][0, 0] = 1e9          # bogus value on a failed run
    ds["status"][0, 0] = "max steps"
    ds["rd_w_final"][1, 1] = -1.0         # not positive
    ex = fa.scaling_exponents(ds, "rd_w_final", n_boot=0).isel(quantity=0)
    assert float(ex.slope) == pytest.approx(0.5, abs=1e-12)
    assert int(ex.n_points) == 13
    ex_all = fa.scaling_exponents(ds, "rd_w_final", n_boot=0, require_success=False)
    assert abs(float(ex_all.slope[0]) - 0.5) > 0.1


def test_exponents_bad_input():
    ds = synthetic_sweep(0.5)
    with pytest.raises(fs.ConfigError, match="rd_nope"):
        fa.scaling_exponents(ds, "rd_nope")
    with pytest.raises(fs.ConfigError, match="level"):
        fa.scaling_exponents(ds, level=1.5)
    with pytest.raises(fs.ConfigError, match="width"):
        fa.scaling_exponents(ds.isel(width=0, drop=True))


def test_labels_from_slopes():
    codes = fa.label_slopes([-0.5, -0.06, 0.0, 0.02, 0.3, np.nan, -0.2],
                            [0.1, 0.0, 0.1, 0.0, 0.1, 0.0, 0.2], tol=0.05)
    assert codes.tolist() == [fa.LINEAR, fa.LINEAR, fa.CRITICAL, fa.CRITICAL, fa.CONDENSED,
                              fa.UNDETERMINED, fa.CRITICAL]


def test_theory_regime():
    g = np.array([0.5, 1.0, 1.5, 1.5, 1.5, 1.2, 1.0])
    gp = np.array([0.0, -0.3, 0.0, 0.5, 0.7, 0.0, 0.2])
    th = fa.theory_regime(g, gp)
    assert [fa.regime_name(c) for c in th] == [
        "linear", "critical", "condensed", "critical", "linear", "condensed", "linear"]


def test_classify_and_theory_agreement():
    gam = np.round(np.arange(0.6, 1.41, 0.2), 2)
    gps = np.array([-0.2, 0.0, 0.2])
    G, GP = np.meshgrid(gam, gps, indexing="ij")
    truth = xr.DataArray(0.8 * (G - fa.theory_gamma_star(GP)), dims=("gamma", "gamma_prime"),
                         coords={"gamma": gam, "gamma_prime": gps})
    ex = fa.scaling_exponents(synthetic_sweep(truth, noise=0.02), n_boot=100)
    lab = fa.classify(ex, "rd_w_final", tol=0.05)
    expect = fa.label_slopes(truth.values, 0.0, tol=0.05)
    np.testing.assert_array_equal(lab.regime.values, expect)
    assert int(lab.conflict.sum()) == 0
    # truth and theory agree by construction except where theory says critical
    th = fa.theory_regime(G, GP)
    assert ((lab.agree.values) | (th == fa.CRITICAL) | (expect == fa.CRITICAL)).all()


def test_four_regimes():
    r1 = np.array([-1, -1, 1, 1, 0])
    r2 = np.array([-1, 1, -1, 1, 1])
    assert fa.four_regimes(r1, r2).tolist() == [0, 1, 2, 3, -1]


def test_zero_crossings_known_line():
    """S = gamma - g*(gamma') with a known zero line, on a grid that does not contain it."""
    gam = np.linspace(0.6, 1.6, 11)
    gps = np.linspace(-0.4, 0.4, 9)
    star = 1.03 + 0.5 * np.maximum(gps, 0) + 0.01 * np.sin(7 * gps)
    S = np.tanh(2 * (gam[:, None] - star[None, :]))   # monotone, nonlinear in gamma
    exps = xr.Dataset({"slope": (("gamma", "gamma_prime"), S),
                       "stderr": (("gamma", "gamma_prime"), np.full(S.shape, 0.02))},
                      coords={"gamma": gam, "gamma_prime": gps})
    zc = fa.zero_crossings(exps)
    # linear interpolation of tanh: error below (grid step)^2 * max curvature / ...
    np.testing.assert_allclose(zc.gamma_star, star, atol=2e-3)
    assert (zc.n_crossings == 1).all()
    assert (zc.gamma_star_err > 0).all() and (zc.gamma_star_err < 0.05).all()
    np.testing.assert_allclose(zc.theory, 1 + np.maximum(gps, 0))


def test_crossings_delta_method_matches_monte_carlo(rng):
    x = np.array([1.0, 1.1])
    s = np.array([-0.1, 0.3])
    e = np.array([0.02, 0.03])
    (xs, err), = fa.crossings_1d(x, s, e)
    assert xs == pytest.approx(1.025)
    draws = s + e * rng.standard_normal((20000, 2))
    mc = x[0] - draws[:, 0] * 0.1 / (draws[:, 1] - draws[:, 0])
    assert err == pytest.approx(mc.std(), rel=0.1)


def test_bisection_finds_known_boundary():
    true = {-0.2: 1.0, 0.0: 1.0, 0.3: 1.3}
    calls = []

    def evaluate(points):
        calls.append(len(points))
        return [np.tanh(3 * (g - true[gp])) for g, gp in points]

    res = fa.bisect_boundary(evaluate, list(true), lo=0.6, hi=1.7, tol=0.01)
    np.testing.assert_allclose(res.gamma_star, list(true.values()), atol=1e-3)
    assert (res.bracket_high - res.bracket_low <= 0.01 + 1e-12).all()
    assert res.attrs["evaluations"] == sum(calls)
    assert res.attrs["evaluations"] < res.attrs["uniform_equivalent"] / 5
    assert all(c <= 6 for c in calls[1:])    # one point per gamma' per round


def test_bisection_reports_unbracketed():
    res = fa.bisect_boundary(lambda pts: [1.0 for _ in pts], [0.0], lo=0.6, hi=1.4)
    assert not bool(res.bracketed[0]) and np.isnan(res.gamma_star[0])


# -- condensation ---------------------------------------------------------------------
def planted(rng, k, per=40, spread=0.02, d=3):
    while True:     # centres at least 0.5 rad apart (clusters of spread ~0.02 rad)
        centers = rng.standard_normal((k, d))
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        angles = np.arccos(np.clip(centers @ centers.T, -1, 1))
        if k == 1 or angles[np.triu_indices(k, 1)].min() > 0.5:
            break
    w = np.repeat(centers, per, axis=0) + spread * rng.standard_normal((k * per, d))
    return w * rng.uniform(0.5, 2.0, (k * per, 1)), np.repeat(np.arange(k), per)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_cluster_count_planted(rng, k):
    w, _ = planted(rng, k)
    assert fa.count_clusters(w, angle=0.2) == k


def test_cluster_count_respects_mask(rng):
    w, lab = planted(rng, 3)
    assert fa.count_clusters(w, mask=lab == 1) == 1
    noise = rng.standard_normal((200, 3))
    assert fa.count_clusters(noise) > 10


def test_leading_order_recovers_blocks(rng):
    # two opposite groups (+v, -v) and a shuffled order: ordering makes contiguous blocks
    v = np.array([1.0, 0.3, -0.2])
    w = np.vstack([v + 0.05 * rng.standard_normal((30, 3)),
                   -v + 0.05 * rng.standard_normal((20, 3))])
    group = np.array([0] * 30 + [1] * 20)
    perm = rng.permutation(50)
    C = fa.cosine_matrix(w[perm])
    order = fa.leading_order(C)
    g = group[perm][order]
    assert (np.diff(g) != 0).sum() == 1            # one boundary between two blocks
    Co = C[np.ix_(order, order)]
    n0 = (g == g[0]).sum()
    assert Co[:n0, :n0].min() > 0.9 and Co[n0:, n0:].min() > 0.9 and Co[:n0, n0:].max() < -0.9


def test_condensation_degree_and_z_direction():
    x = np.array([[-0.5], [-1 / 6], [1 / 6], [0.5]])
    y = x[:, 0] ** 2
    z = fa.z_direction(x, y)
    np.testing.assert_allclose(z, [0.0, 1.0], atol=1e-12)   # y even in x: z along the bias
    a = np.ones(5)
    w = np.array([[1.0, 0.0], [-2.0, 0.0], [3.0, 0.0], [0.5, 0.0], [-1.0, 0.0]])
    deg, v = fa.condensation_degree(a, w)
    assert deg == pytest.approx(1.0) and abs(v[0]) == pytest.approx(1.0)


def test_initial_condensation_tanh_small_init():
    """A real small-initialisation tanh run condenses onto +-z/|z| (THEORY.md section 5)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (6, 1))
    data = fs.Dataset(x, np.sin(2 * x[:, 0]) + 0.5)
    m = 50
    sc = fs.Scaling(alpha=1.0, beta1=m**-1.5, beta2=m**-1.5, width=m)   # small init
    prob = fs.Problem(fs.TwoLayer(m, sc, "tanh"), data, seed=0)
    snaps = np.concatenate([[0.0], np.geomspace(1e2, 1e7, 16)])
    sol = fs.solve(prob, "dopri5", rtol=1e-6, atol=1e-12, t_end=1e7, snapshots=snaps,
                   progress=False)
    run = sol.to_xarray()
    res = fa.initial_condensation(run, threshold=0.95)
    assert res["degree"][0] < 0.8                      # random at the start
    assert np.isfinite(res["time"])
    assert res["alignment"] > 0.98                     # the axis is +-z/|z|
    assert res["bound"] == 2
    assert res["clusters"][-1] <= res["bound"]
    # the condensation time is a few e-folding times of the linearised growth
    assert 1.0 < res["time_scaled"] < 40.0


def test_orientation_amplitude_from_run(four_points):
    sc = fs.Scaling.from_gammas(0.5, 0.0, 50)
    prob = fs.Problem(fs.TwoLayer(50, sc, asi=True), four_points, seed=1)
    sol = fs.solve(prob, "dopri5", t_end=10.0, progress=False)
    oa = fa.orientation_amplitude(sol.to_xarray())
    assert oa["orientation_init"].shape == (50,)
    p = sol.params("initial")
    np.testing.assert_allclose(oa["orientation_init"], np.arctan2(p["w"][:50, 1], p["w"][:50, 0]))


def test_bisection_on_real_flows():
    """The in-process evaluator on real (small) ReLU runs: S < 0 at gamma = 0.5, S > 0 at
    1.75 (gamma' = 0), and gamma* found between them; each point's S is the fit of the
    Dataset the evaluator kept."""
    ev = fa.solve_evaluator([16, 32, 64], solver={"rtol": 1e-4, "atol": 1e-7,
                                                  "error_norm": "displacement"})
    res = fa.bisect_boundary(ev, [0.0], lo=0.5, hi=1.75, tol=0.4)
    assert bool(res.bracketed[0])
    assert 0.5 < float(res.gamma_star[0]) < 1.75
    hist = res.attrs["history_slope"]
    assert hist[0] < 0 < hist[1]
    again = fa.scaling_exponents(ev.datasets[0], "rd_w_final", n_boot=0,
                                 require_success=False)
    assert float(again.slope[0]) == pytest.approx(hist[0])
