"""Three-layer model: exactness of the normalised flow, reductions, conservation, I/O."""

import math

import numpy as np
import pytest
import scipy.linalg as sl

import flowsolve as fs

ODD = {"alpha": 3.7, "beta_w1": 0.6, "beta_w2": 1.9, "beta_a": 0.3}


def _f_original(model, y, x):
    """f(x) computed in the original variables, one copy at a time (independent of the
    model's own forward pass)."""
    p = model.unpack(y)
    sc = model.scaling
    sig = model.activation.sigma
    xt = np.hstack([x, np.ones((x.shape[0], 1))])
    m1, m2 = model.width, model.width2
    out = np.zeros(x.shape[0])
    for c in range(model.copies):
        W1 = sc.beta_w1 * p["w1"][c * m1:(c + 1) * m1]
        W2 = sc.beta_w2 * p["w2"][c * m2:(c + 1) * m2]
        a = sc.beta_a * p["a"][c * m2:(c + 1) * m2]
        h1 = np.hstack([sig(np, xt @ W1.T), np.ones((x.shape[0], 1))])
        out += sig(np, h1 @ W2.T) @ a / sc.alpha
    return out


def _perturbed(prob, scale=0.1, seed=0):
    return prob.y0_host + scale * np.random.default_rng(seed).standard_normal(prob.size)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("asi", [False, True])
def test_rhs_is_the_gradient_flow_in_original_variables(four_points, activation, asi):
    """dW^_l/dt^ = -(T/beta_l^2) dR/dW^_l, with R written in the original variables and
    differentiated by central differences (every coordinate, biases of both layers)."""
    s = fs.Scaling3(width=6, **ODD)
    model = fs.ThreeLayer(6, s, activation=activation, asi=asi, width2=5)
    prob = fs.Problem(model, four_points, seed=1)
    y = _perturbed(prob)
    x, t = four_points.x, four_points.y

    def R(v):
        return 0.5 * np.mean((_f_original(model, v, x) - t) ** 2)

    assert prob.loss(y) == pytest.approx(R(y), rel=1e-12)
    np.testing.assert_allclose(model.predict(y, x), _f_original(model, y, x), rtol=1e-12,
                               atol=1e-15)
    out = prob.rhs(0.0, y)
    n1, n2, n3 = model.sizes(four_points.d)
    mu = np.concatenate([np.full(k, s.time_scale / b**2) for k, b in zip((n1, n2, n3), s.betas)])
    grad = np.empty(prob.size)
    h = 1e-6
    for i in range(prob.size):
        e = np.zeros(prob.size)
        e[i] = h
        grad[i] = (R(y + e) - R(y - e)) / (2 * h)
    np.testing.assert_allclose(out, -mu * grad, atol=1e-8 * np.abs(out).max(), rtol=1e-5)
    # the mobilities the model reports are the ones that make this identity hold
    np.testing.assert_allclose(model.mobilities(), [s.time_scale / b**2 for b in s.betas])
    assert math.prod(model.mobilities()) == pytest.approx(1.0)
    # the loss returned with the RHS is the loss at y
    assert prob.rhs_into(y, np.empty_like(y)) == pytest.approx(R(y), rel=1e-12)


def test_asi_starts_at_zero_and_the_copies_are_independent(four_points):
    model = fs.ThreeLayer(5, fs.Scaling3(width=5, **ODD), asi=True, width2=4)
    prob = fs.Problem(model, four_points, seed=0)
    p = model.unpack(prob.y0_host)
    np.testing.assert_array_equal(p["w1"][:5], p["w1"][5:])
    np.testing.assert_array_equal(p["w2"][:4], p["w2"][4:])
    np.testing.assert_array_equal(p["a"][:4], -p["a"][4:])
    np.testing.assert_allclose(model.predict(prob.y0_host, four_points.x), 0.0, atol=1e-15)
    # moving copy 1's middle layer changes nothing in copy 2's hidden layers: the change
    # of f is that of copy 1 alone
    y = _perturbed(prob, seed=3)
    y2 = y.copy()
    model.unpack(y2)["w2"][:4] += 0.3
    one = fs.ThreeLayer(5, model.scaling, width2=4)
    q, q2 = model.unpack(y), model.unpack(y2)
    first = one.pack(q["w1"][:5], q["w2"][:4], q["a"][:4])
    first2 = one.pack(q2["w1"][:5], q2["w2"][:4], q2["a"][:4])
    x = four_points.x
    np.testing.assert_allclose(model.predict(y2, x) - model.predict(y, x),
                               one.predict(first2, x) - one.predict(first, x),
                               rtol=1e-12, atol=1e-14)


def test_float32_rhs_matches_float64(four_points):
    model = fs.ThreeLayer(40, fs.Scaling3.from_gammas(0.0, 1.5, 40), asi=True, width2=30)
    p64 = fs.Problem(model, four_points, seed=4)
    p32 = p64.with_backend("numpy", dtype="float32")
    r64, r32 = p64.rhs(0, p64.y0), p32.rhs(0, p32.y0)
    assert r32.dtype == np.float32
    np.testing.assert_allclose(r32, r64, atol=1e-4 * np.abs(r64).max())


def _identity_middle(model, y, d):
    p = model.unpack(y)
    m1, m2 = model.width, model.width2
    w2 = np.zeros_like(p["w2"])
    for c in range(model.copies):
        w2[c * m2:(c + 1) * m2, :m1] = np.eye(m1)
    return model.pack(p["w1"], w2, p["a"])


@pytest.mark.parametrize("asi", [False, True])
def test_frozen_identity_middle_layer_is_the_two_layer_flow(four_points, asi):
    """With W2 = [I | 0] frozen (beta_w2 = 1) and ReLU, sigma(sigma(u)) = sigma(u): the
    three-layer flow of (W1, a) is the two-layer flow with beta1 = beta_a, beta2 = beta_w1,
    up to the time scales T2 = beta_a beta_w1 and T3."""
    m, alpha, b1, b3 = 7, 2.3, 0.8, 0.45
    s3 = fs.Scaling3(alpha=alpha, beta_w1=b1, beta_w2=1.0, beta_a=b3, width=m)
    three = fs.ThreeLayer(m, s3, asi=asi, frozen=("w2",))
    two = fs.TwoLayer(m, fs.Scaling(alpha=alpha, beta1=b3, beta2=b1, width=m), asi=asi)
    p3 = fs.Problem(three, four_points, seed=5)
    y3 = _identity_middle(three, _perturbed(p3, seed=1), four_points.d)
    q = three.unpack(y3)
    y2 = two.pack(q["a"], q["w1"])
    p2 = fs.Problem(two, four_points, seed=5)
    r3, r2 = three.unpack(p3.rhs(0, y3)), two.unpack(p2.rhs(0, y2))
    ratio = (b1 * b3) / s3.time_scale                       # T2 / T3
    np.testing.assert_array_equal(r3["w2"], 0.0)
    np.testing.assert_allclose(r3["a"] * ratio, r2["a"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r3["w1"] * ratio, r2["w"], rtol=1e-12, atol=1e-15)
    assert p3.loss(y3) == pytest.approx(p2.loss(y2), rel=1e-13)

    # along a trajectory: three-layer time t3 = t2 * T2 / T3, the same start
    y_start = _identity_middle(three, three.init_state(1, np.random.default_rng(5)), 1)
    q0 = three.unpack(y_start)

    class Three(fs.ThreeLayer):
        def init_state(self, d, rng):
            return y_start.copy()

    class Two(fs.TwoLayer):
        def init_state(self, d, rng):
            return two.pack(q0["a"], q0["w1"])

    p3 = fs.Problem(Three(m, s3, asi=asi, frozen="w2"), four_points)
    p2 = fs.Problem(Two(m, two.scaling, asi=asi), four_points)
    t2 = 20.0
    kw = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-11, "save_at": [0.0], "progress": False}
    s3_ = fs.solve(p3, t_end=t2 * ratio, **kw)
    s2_ = fs.solve(p2, t_end=t2, **kw)
    f3, f2 = three.unpack(s3_.y_final), two.unpack(s2_.y_final)
    np.testing.assert_array_equal(f3["w2"], q0["w2"])
    scale = np.abs(f2["w"] - q0["w1"]).max()
    assert scale > 1e-3                                       # the layers did move
    np.testing.assert_allclose(f3["w1"], f2["w"], atol=1e-5 * scale)
    np.testing.assert_allclose(f3["a"], f2["a"], atol=1e-5 * np.abs(f2["a"] - q0["a"]).max())
    assert s3_.final["loss"] == pytest.approx(s2_.final["loss"], rel=1e-5)


def test_linear_regime_follows_the_linearised_flow(four_points):
    """NTK point (gamma3 = 1), ASI: f(t) = y + expm(-K t/n) (f0 - y), with the kernel
    K = J M J^T built from J (central differences of the forward pass) and M J^T e_j."""
    m, n = 64, four_points.n
    model = fs.ThreeLayer(m, fs.Scaling3.from_gammas(0.0, 1.0, m), asi=True)
    prob = fs.Problem(model, four_points, seed=3)
    y0, x = prob.y0_host, four_points.x
    f0 = model.predict(y0, x)
    K = np.empty((n, n))
    for j in range(n):
        target = f0.copy()
        target[j] -= n                      # residual e = n e_j: rhs = -M J^T e_j
        r = fs.Problem(model, fs.Dataset(x, target), seed=3).rhs(0, y0)
        h = 1e-4 / np.abs(r).max()
        K[:, j] = -(model.predict(y0 + h * r, x) - model.predict(y0 - h * r, x)) / (2 * h)
    np.testing.assert_allclose(K, K.T, atol=1e-7 * np.abs(K).max())
    lam = np.linalg.eigvalsh(0.5 * (K + K.T))
    assert lam.min() > 0
    T = 3.0 * n / lam.min()
    sol = fs.solve(prob, "dopri5", rtol=1e-5, atol=1e-8, t_end=T, save_at=[0.0],
                   error_norm="displacement", progress=False)
    f_lin = four_points.y + sl.expm(-K * T / n) @ (f0 - four_points.y)
    f_T = model.predict(sol.y_final, x)
    moved = np.abs(f0 - four_points.y).max()
    assert np.abs(f_T - f0).max() > 0.5 * moved             # it learned
    assert np.abs(f_T - f_lin).max() < 0.02 * moved
    assert sol.final["rd_w1"] < 0.1 and sol.final["rd_w2"] < 0.02   # small motion


def test_relu_conserves_the_balanced_quantities(four_points):
    """|W_{l+1}[:, k]|^2 - |W_l[k, :]|^2 per hidden neuron (original variables) along a
    dopri5 trajectory (rtol 1e-6); tanh, not homogeneous, visibly does not conserve them."""
    s = fs.Scaling3(alpha=2.0, beta_w1=0.7, beta_w2=1.3, beta_a=0.5, width=10)
    drift = {}
    for act in ("relu", "tanh"):
        model = fs.ThreeLayer(10, s, activation=act, asi=True, width2=8)
        prob = fs.Problem(model, four_points, seed=2)
        sol = fs.solve(prob, "dopri5", rtol=1e-6, atol=1e-9, t_end=12.0, save_at=[0.0],
                       progress=False)
        assert sol.status == fs.Status.SUCCESS
        assert sol.final["loss"] < 0.5 * sol.loss[0]
        c0, c1 = model.conserved(prob.y0_host), model.conserved(sol.y_final)
        drift[act] = max(np.abs(c1[k] - c0[k]).max() / np.abs(c0[k]).max() for k in c0)
    assert drift["relu"] < 1e-6
    assert drift["tanh"] > 1e-3


def test_observables_against_direct_formulas(four_points):
    s = fs.Scaling3(width=6, **ODD)
    model = fs.ThreeLayer(6, s, asi=True, width2=4)
    prob = fs.Problem(model, four_points, seed=0)
    y = _perturbed(prob, 0.05)
    p, p0 = model.unpack(y), model.unpack(prob.y0_host)
    rd = model.relative_changes(np, y, prob.y0_host)
    first = {"w1": slice(0, 6), "w2": slice(0, 4), "a": slice(0, 4)}
    num = den = 0.0
    for name, beta in zip(("w1", "w2", "a"), s.betas):
        d = p[name][first[name]] - p0[name][first[name]]
        b = p0[name][first[name]]
        assert rd["rd_" + name] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(b), rel=1e-12)
        num += beta**2 * np.sum(d**2)
        den += beta**2 * np.sum(b**2)
    assert rd["rd_theta"] == pytest.approx(math.sqrt(num / den), rel=1e-12)
    feats = model.neuron_features(y)
    assert feats["orientation"].shape == (12,)
    np.testing.assert_allclose(np.tan(feats["orientation"]), p["w1"][:, 1] / p["w1"][:, 0])
    k = 7                                   # a neuron of the second copy
    expected = (s.beta_w1 * np.linalg.norm(p["w1"][k])
                * s.beta_w2 * np.linalg.norm(p["w2"][4:, k - 6]))
    assert feats["amplitude"][k] == pytest.approx(expected)


def test_scheme_coordinates():
    ntk = fs.Scaling3.scheme("ntk", 1000)
    assert (ntk.gamma2, ntk.gamma3) == pytest.approx((0.0, 1.0), abs=1e-12)
    mf = fs.Scaling3.scheme("mean_field", 1000)
    assert (mf.gamma2, mf.gamma3) == pytest.approx((0.0, 1.5), abs=1e-12)
    lecun = fs.Scaling3.scheme("lecun", 1000, d=1)
    assert (lecun.gamma2, lecun.gamma3) == pytest.approx((0.5, 1.0), abs=1e-12)
    for name in ("ntk", "mean_field", "lecun", "he", "xavier"):
        big = fs.Scaling3.scheme(name, 10**12, d=3)
        lim = fs.Scaling3.scheme_limit(name)
        assert (big.gamma2, big.gamma3) == pytest.approx(lim, abs=0.05), name
        assert big.gamma_mid == pytest.approx(0.0, abs=0.05), name
    xavier = [fs.Scaling3.scheme("xavier", m) for m in (10**3, 10**6, 10**9)]
    errs = [abs(sc.gamma3 - 1.5) for sc in xavier]
    assert errs[0] > errs[1] > errs[2]                       # converging to 1.5
    assert fs.Scaling3.scheme_limit("xavier") == (0.0, 1.5)
    # from_gammas hits its coordinates exactly at finite width
    for g2, g3 in [(0.0, 0.9), (0.0, 2.1), (0.3, 1.2), (-0.25, 1.75)]:
        sc = fs.Scaling3.from_gammas(g2, g3, 5000)
        assert (sc.gamma2, sc.gamma3, sc.gamma_mid) == pytest.approx((g2, g3, 0.0), abs=1e-12)
    # LeCun (d = 1) is from_gammas(0.5, 1) exactly
    fg = fs.Scaling3.from_gammas(0.5, 1.0, 1000)
    assert (fg.alpha, *fg.betas) == pytest.approx((lecun.alpha, *lecun.betas), rel=1e-12)
    # normalised time and GD learning rate
    sc = fs.Scaling3(width=10, **ODD)
    assert sc.time_scale == pytest.approx((0.6 * 1.9 * 0.3) ** (2 / 3))
    assert sc.step_from_lr(sc.lr_from_step(0.01)) == pytest.approx(0.01)


def test_bad_input_names_the_value(four_points):
    with pytest.raises(fs.ConfigError, match="20.*10|10.*20"):
        fs.ThreeLayer(10, fs.Scaling3.from_gammas(0.0, 1.0, width=20))
    with pytest.raises(fs.ConfigError, match="beta_a"):
        fs.Scaling3(alpha=1.0, beta_w1=1.0, beta_w2=1.0, width=10)
    with pytest.raises(fs.ConfigError, match="alpha"):
        fs.Scaling3(beta_w1=1.0, beta_w2=1.0, beta_a=1.0, width=10)
    with pytest.raises(fs.ConfigError, match="beta_w2.*-1"):
        fs.Scaling3(alpha=1.0, beta_w1=1.0, beta_w2=-1.0, beta_a=1.0, width=10)
    with pytest.raises(fs.ConfigError, match="'glorot'"):
        fs.Scaling3.scheme("glorot", 10)
    with pytest.raises(fs.ConfigError, match="'glorot'"):
        fs.Scaling3.scheme_limit("glorot")
    with pytest.raises(fs.ConfigError, match="width2.*0"):
        fs.ThreeLayer(10, width2=0)
    with pytest.raises(fs.ConfigError, match="Scaling3.*Scaling"):
        fs.ThreeLayer(10, fs.Scaling.scheme("ntk", 10))
    with pytest.raises(fs.ConfigError, match="'w3'"):
        fs.ThreeLayer(10, frozen=("w3",))
    with pytest.raises(fs.ConfigError, match="'swish'"):
        fs.ThreeLayer(10, activation="swish")
    with pytest.raises(fs.ConfigError, match="gamma3"):
        fs.Scaling3.from_gammas(0.0, float("nan"), 10)
    model = fs.ThreeLayer(10, width2=5)
    with pytest.raises(fs.ConfigError, match=r"\(7,\)"):
        model.unpack(np.zeros(7))


def test_solve_to_xarray_and_netcdf_round_trip(four_points, tmp_path):
    m = 12
    model = fs.ThreeLayer(m, fs.Scaling3.from_gammas(0.0, 1.5, m), asi=True, width2=9)
    prob = fs.Problem(model, four_points, seed=0)
    sol = fs.solve(prob, "dopri5", rtol=1e-5, atol=1e-8, t_end=5.0, save_at=3, progress=False)
    assert sol.status == fs.Status.SUCCESS
    ds = sol.to_xarray()
    for name in ("loss", "rd_w1", "rd_w2", "rd_a", "rd_theta", "rd_w1_max"):
        assert ds[name].dims == ("time",), name
    assert ds["rd_w1"].values[0] == 0.0 and ds["rd_w1"].values[-1] > 0
    assert ds["w1_final"].dims == ("neuron", "component1")
    assert ds["w2_final"].shape == (18, m + 1)
    assert ds["w2_init"].dims == ("neuron2", "component2")
    assert ds["a_init"].dims == ("neuron2",)
    assert ds["orientation_final"].dims == ("neuron",)
    assert ds.attrs["model"] == "three_layer" and ds.attrs["gamma3"] == pytest.approx(1.5)
    path = fs.io.save(ds, tmp_path / "run.nc")
    assert fs.io.validate(path)
    back = fs.io.load(path)
    for name in ("loss", "rd_w1", "rd_w2", "rd_a", "w2_final"):
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    assert back.attrs["beta_w1"] == ds.attrs["beta_w1"]
    # the final normalised parameters in the file are the solver's final state
    np.testing.assert_array_equal(back["w2_final"].values, model.unpack(sol.y_final)["w2"])


def test_figure4_example_runs_small(tmp_path):
    """examples/z22_figure4.py end to end at tiny widths: files, slopes, figure."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "z22_figure4.py"
    spec = importlib.util.spec_from_file_location("z22_figure4", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.fit_slope([10, 100], [1.0, 10.0]) == pytest.approx(1.0)
    assert mod.main(["--out", str(tmp_path), "--widths", "8,16", "--gamma3", "0.9",
                     "--stop-at-loss", "1e-4"]) == 0
    summary = fs.io.load(tmp_path / "summary.nc")
    assert summary["rd_w1"].shape == (1, 2, 1)
    assert np.isfinite(summary["slope_rd_w1"].values).all()
    assert (tmp_path / "z22_figure4.png").stat().st_size > 0
    assert fs.io.validate(tmp_path / "run_g3=0.9_m=16_seed=0.nc")
