"""Structure-aware integrators: Gauss-Newton structure, exponential steps, sliding ReLU flows.

Every check is against something independent: finite differences, quadrature of the
phi-functions, closed-form flows (a balanced scalar network; a single ReLU neuron whose
kink slides along a data point), the exact solution of a linear flow, and gradient
descent extrapolated to a vanishing learning rate.
"""

import math

import numpy as np
import pytest
from scipy.integrate import quad

import flowsolve as fs
from flowsolve.solvers.exponential import EXP_TABLEAUS, ExpGNStepper, phi_functions


def _problem(m=30, gamma=1.0, gamma_prime=0.2, act="relu", data=None, asi=True, seed=1):
    data = data if data is not None else fs.datasets.smooth(5, d=2)
    sc = fs.Scaling.from_gammas(gamma, gamma_prime, m)
    return fs.Problem(fs.TwoLayer(m, sc, activation=act, asi=asi), data, seed=seed)


def _custom(prob, y0):
    """The same problem started from ``y0``."""
    prob.y0_host = np.asarray(y0, dtype=float)
    prob.y0 = prob.backend.asarray(prob.y0_host, prob.dtype)
    return prob


# -- Gauss-Newton structure ------------------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "tanh", "linear"])
def test_jacobian_against_finite_differences(act):
    prob = _problem(act=act)
    lin_fn = prob.model.make_jacobian(np, prob.data, np.float64)
    y = prob.y0 + 0.01 * np.random.default_rng(0).standard_normal(prob.size)
    lin = lin_fn(y)
    J = lin.dense()
    eps = 1e-6
    Jfd = np.empty_like(J)
    for k in range(y.size):
        d = np.zeros_like(y)
        d[k] = eps
        Jfd[:, k] = (lin_fn(y + d).e - lin_fn(y - d).e) / (2 * eps)
    assert np.abs(J - Jfd).max() < 1e-7 * max(1.0, np.abs(J).max())
    # the flow is -C J^T e / n, the loss |e|^2 / 2n
    n = prob.data.n
    C = lin_fn.mobility
    np.testing.assert_allclose(prob.rhs(0, y), -C * (J.T @ lin.e) / n, atol=1e-14, rtol=1e-12)
    assert lin.loss == pytest.approx(prob.loss(y), rel=1e-13)
    rng = np.random.default_rng(3)
    v, u = rng.standard_normal(y.size), rng.standard_normal(n)
    np.testing.assert_allclose(lin.jv(v), J @ v, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin.cjt(u), C * (J.T @ u), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin.gram(), J @ (C[:, None] * J.T), rtol=1e-12, atol=1e-13)


def test_phi_functions_against_quadrature():
    z = np.array([-1e-8, -0.3, -0.49, -0.51, -2.0, -40.0, 0.0])
    ph = phi_functions(z, 4)
    np.testing.assert_allclose(ph[0], np.exp(z))
    for k in (1, 2, 3, 4):
        ref = [quad(lambda s, zz=zz, k=k: math.exp((1 - s) * zz) * s ** (k - 1)
                    / math.factorial(k - 1), 0, 1, epsabs=1e-15, epsrel=1e-13)[0] for zz in z]
        np.testing.assert_allclose(ph[k], ref, rtol=1e-11)


class _FrozenLinear:
    """A flow that is linear in the parameters: e(y) = e0 + J0 (y - y0), J0 frozen."""

    def __init__(self, prob):
        self.n = prob.data.n
        lin0 = prob.model.make_jacobian(np, prob.data, np.float64)(prob.y0)
        self.J, self.e0, self.y0 = lin0.dense(), lin0.e.copy(), prob.y0.copy()
        self.C = prob.model.make_jacobian(np, prob.data, np.float64).mobility
        self.gram_cost = 0.5

    def __call__(self, y):
        outer = self

        class L:
            e = outer.e0 + outer.J @ (y - outer.y0)
            loss = float(e @ e) / (2 * outer.n)

            def jv(self, v):
                return outer.J @ v

            def cjt(self, u, out=None):
                return outer.C * (outer.J.T @ u)

            def gram(self):
                return outer.J @ (outer.C[:, None] * outer.J.T)
        return L()

    def rhs(self, y, out):
        lin = self(y)
        out[:] = -lin.cjt(lin.e) / self.n
        return lin.loss


@pytest.mark.parametrize("name", sorted(EXP_TABLEAUS))
def test_exponential_step_is_exact_on_the_linearised_flow(name):
    """The linearised (NTK) flow has the closed form
    y(t) = y0 - C J0^T (t/n) phi1(-t K/n) e0; every exponential GN method reproduces it in
    one step (its nonlinearity g vanishes)."""
    prob = _problem(m=40, gamma=0.5, gamma_prime=0.0)
    lin = _FrozenLinear(prob)
    n, T = prob.data.n, 300.0
    K = lin.J @ (lin.C[:, None] * lin.J.T)
    lam, V = np.linalg.eigh(K / n)
    ph1 = phi_functions(-T * np.maximum(lam, 0), 1)[1]
    exact = prob.y0 - lin.C * (lin.J.T @ (V @ (T * ph1 * (V.T @ lin.e0)))) / n
    # independent check of the closed form: a tight explicit RK solve of the linear ODE
    from scipy.integrate import solve_ivp
    ref = solve_ivp(lambda t, y: -lin.C * (lin.J.T @ (lin.e0 + lin.J @ (y - lin.y0))) / n,
                    (0, T), prob.y0, method="LSODA", rtol=1e-11, atol=1e-13).y[:, -1]
    assert np.abs(exact - ref).max() < 1e-8
    st = ExpGNStepper(lin, lin.rhs, prob.backend, prob.y0, rtol=1e-10, atol=1e-12, dt=T,
                      tableau=name)
    st.step(T)
    assert st.t == T and st.steps == 1
    assert np.abs(st.y - exact).max() < 1e-11 * max(1.0, np.abs(exact).max())


def _weight(w, z):
    ph = phi_functions(z, 4)
    return sum(c * ph[k] for k, c in w)


@pytest.mark.parametrize("name", sorted(EXP_TABLEAUS))
def test_exponential_tableaus_satisfy_the_stiff_order_conditions(name):
    """Hochbruck-Ostermann order conditions of explicit exponential RK methods, as
    functions of Z = h lambda (lambda <= 0): sum_j b_j(Z) c_j^(q-1) / (q-1)! = phi_q(Z)
    for q = 2 .. order, and q = 2 .. error_order for the embedded weights. The condition
    on the stage weights a_ij is checked at Z = 0 only (ETDRK3 meets it classically; its
    stiff form is not met, and with the Gauss-Newton split the nonlinearity's Jacobian
    that it multiplies is small)."""
    tab = EXP_TABLEAUS[name]
    z = -np.array([0.0, 1e-3, 0.3, 2.0, 40.0])
    for weights, order in ((tab.b, tab.order), (tab.bhat, tab.error_order)):
        for q in range(2, order + 1):
            lhs = sum(_weight(w, z) * c ** (q - 1) for w, c in zip(weights, tab.c))
            np.testing.assert_allclose(lhs / math.factorial(q - 1), phi_functions(z, q)[q],
                                       rtol=1e-12, atol=1e-14, err_msg=f"{name} q={q}")
    # classical order at Z = 0 (third-order condition on the stage weights a_ij)
    if tab.order >= 3:
        b0 = [_weight(w, 0.0) for w in tab.b]
        inner = [sum(_weight(a, 0.0) * c for a, c in zip(tab.a[i], tab.c)) for i in
                 range(len(tab.c))]
        assert sum(b * x for b, x in zip(b0, inner)) == pytest.approx(1 / 6, abs=1e-14)


@pytest.mark.parametrize("name", sorted(EXP_TABLEAUS))
def test_exponential_steps_converge_at_their_order(name):
    """One step of size h on a nonlinear tanh flow (not the linearised one): the error
    against a tight DOP853 solution scales like h^(order+1), the error estimate like
    h^(error_order+1)."""
    from scipy.integrate import solve_ivp

    prob = _problem(m=20, gamma=1.0, gamma_prime=0.0, act="tanh", asi=False, seed=3,
                    data=fs.datasets.four_points())
    lin = prob.model.make_jacobian(np, prob.data, np.float64)

    def rhs(y, out):
        out[:] = prob.rhs(0, y)
        return 0.0

    st = ExpGNStepper(lin, rhs, prob.backend, prob.y0, tableau=name)
    hs = np.array([0.8, 0.4, 0.2, 0.1])
    true, est = [], []
    for h in hs:
        ref = solve_ivp(prob.rhs, (0, h), prob.y0, method="DOP853", rtol=1e-13,
                        atol=1e-14).y[:, -1]
        out = np.empty_like(prob.y0)
        err = st.attempt(prob.y0, st.cur, h, out)
        true.append(np.abs(out - ref).max())
        est.append(np.abs(err).max())
    tab = EXP_TABLEAUS[name]
    slope_true = np.polyfit(np.log(hs), np.log(true), 1)[0]
    slope_est = np.polyfit(np.log(hs), np.log(est), 1)[0]
    assert abs(slope_true - (tab.order + 1)) < 0.2, (slope_true, true)
    assert abs(slope_est - (tab.error_order + 1)) < 0.2, (slope_est, est)
    assert max(true) < 1e-3


def test_unknown_exponential_tableau_is_a_config_error():
    prob = _problem(m=5, act="tanh")
    lin = prob.model.make_jacobian(np, prob.data, np.float64)
    with pytest.raises(fs.ConfigError, match="'expgn4'.*expgn2"):
        ExpGNStepper(lin, lambda y, out: 0.0, prob.backend, prob.y0, tableau="expgn4")


def test_balanced_scalar_network_closed_form():
    """One neuron, linear activation, one data point at x = 0: with a balanced start
    (kappa' a = b) q = kappa a b obeys the logistic law dq/dt = -2 kappa q (q - y)."""
    data = fs.Dataset(np.array([[0.0]]), np.array([0.8]))
    sc = fs.Scaling(alpha=2.0, beta1=1.0, beta2=0.5, width=1)   # kappa = 1/4, kappa' = 2
    prob = fs.Problem(fs.TwoLayer(1, sc, activation="linear"), data)
    kap, kp = sc.kappa, sc.kappa_prime
    a0 = 0.7
    _custom(prob, [a0, 0.3, kp * a0])
    y, q0 = 0.8, kap * a0 * kp * a0
    T = 12.0
    q = y / (1 + (y / q0 - 1) * math.exp(-2 * kap * y * T))
    a_T = math.sqrt(q / (kap * kp))
    for method, tol in (("expgn2", 1e-9), ("expgn3", 1e-9), ("dopri5", 1e-10)):
        sol = fs.solve(prob, method, rtol=tol, atol=tol, t_end=T, progress=False)
        assert sol.status.ok
        a, w = sol.params()["a"], sol.params()["w"]
        assert abs(a[0] - a_T) < 1e-6, method
        assert abs(w[0, 1] - kp * a_T) < 1e-6 and abs(w[0, 0] - 0.3) < 1e-12


# -- sliding ReLU neurons ----------------------------------------------------------------
def _sliding_neuron(b0=0.0):
    """One ReLU neuron, data x = 0 (target -1/2) and x = 1 (target 0.3), kappa = kappa' = 1.

    With b = 0 the kink sits on x = 0; e_1 = 1/2 there and the equivalent control
    theta = -e_2 / e_1 lies in [0, 1] while f(1) <= 0.3: the neuron slides, and
    q = a w (= f(1)) follows dq/dt = -q (q - 0.3) (balanced start a = w).
    """
    data = fs.Dataset(np.array([[0.0], [1.0]]), np.array([-0.5, 0.3]))
    sc = fs.Scaling(alpha=1.0, beta1=1.0, beta2=1.0, width=1)
    prob = fs.Problem(fs.TwoLayer(1, sc, activation="relu"), data)
    a0 = math.sqrt(0.05)
    return _custom(prob, [a0, a0, b0])


def _q_exact(t, q0=0.05, y=0.3):
    return y / (1 + (y / q0 - 1) * math.exp(-y * t))


@pytest.mark.parametrize("method, tol, bound", [("sliding", 1e-9, 1e-6), ("expgn2", 1e-6, 1e-5),
                                               ("expgn3", 1e-6, 1e-5)])
def test_single_neuron_slides_along_a_data_point(method, tol, bound):
    prob = _sliding_neuron()
    T = 20.0
    sol = fs.solve(prob, method, rtol=tol, atol=tol, t_end=T, progress=False)
    assert sol.status.ok
    a, w = sol.params()["a"][0], sol.params()["w"][0]
    a_T = math.sqrt(_q_exact(T))
    assert abs(w[1]) < 1e-10                       # stayed on the surface b = 0
    assert abs(a - a_T) < bound and abs(w[0] - a_T) < bound
    assert sol.stats.extra["sliding_pairs"] == 1
    # the conservation law holds through the sliding motion
    assert abs(prob.model.conserved(sol.y_final)[0]
               - prob.model.conserved(prob.y0_host)[0]) < bound


def test_plain_rk_chatters_where_sliding_does_not():
    prob = _sliding_neuron()
    slide = fs.solve(prob, "sliding", rtol=1e-7, atol=1e-7, t_end=20.0, progress=False)
    plain = fs.solve(prob, "dopri5", rtol=1e-7, atol=1e-7, t_end=20.0, progress=False,
                     max_steps=5000)
    assert slide.status.ok
    assert not plain.status.ok or slide.stats.nfev + slide.stats.njev < 0.2 * plain.stats.nfev


def test_neuron_reaching_the_surface_then_sliding_matches_gd_limit():
    """Started off the surface, the neuron hits b = 0 and slides; the solution is the
    limit of gradient descent as the learning rate goes to 0 (Richardson, first order).
    GD zig-zags across the surface (b = O(lr), not monotone in lr): the extrapolation
    is of the motion along it, (a, w)."""
    prob = _sliding_neuron(b0=0.05)
    T = 15.0
    sol = fs.solve(prob, "sliding", rtol=1e-10, atol=1e-10, t_end=T, progress=False)
    assert abs(sol.y_final[2]) < 1e-10
    errs, extrap = [], []
    prev = None
    for N in (2000, 4000, 8000):
        gd = fs.solve(prob, "gd", dt=T / N, t_end=T, progress=False, save_at=[0.0])
        y = gd.y_final
        errs.append(np.abs(y - sol.y_final)[:2].max())
        if prev is not None:
            extrap.append(np.abs(2 * y - prev - sol.y_final)[:2].max())
        assert abs(y[2]) < 20 * T / N                        # chattering, amplitude ~ lr
        prev = y
    assert errs[0] > 1.6 * errs[1] > 1.6 ** 2 * errs[2]      # first order in the rate
    assert extrap[-1] < 0.1 * errs[-1]                        # the limit is the sliding flow


def test_condensed_problem_matches_gd_richardson_limit():
    """A small condensed problem (gamma = 1.75, m = 20, four points) through its
    kinks: the sliding solution is the lr -> 0 limit of GD (Richardson over 3 rates)."""
    m = 20
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(1.75, 0.0, m), asi=True),
                      fs.datasets.four_points(), seed=3)
    T = 4000.0
    sol = fs.solve(prob, "sliding", rtol=1e-10, atol=1e-10, t_end=T, progress=False)
    assert sol.status.ok and sol.stats.extra["event_neurons"] > 0
    ys = {}
    for N in (4000, 8000, 16000):
        ys[N] = fs.solve(prob, "gd", dt=T / N, t_end=T, progress=False,
                         save_at=[0.0]).y_final
    err_gd = np.abs(ys[16000] - sol.y_final).max()
    rich = 2 * ys[16000] - ys[8000]
    rich_prev = 2 * ys[8000] - ys[4000]
    err_r = np.abs(rich - sol.y_final).max()
    assert err_r < 0.25 * err_gd
    assert err_r < np.abs(rich_prev - sol.y_final).max()


def test_linearised_flow_at_large_width():
    """NTK scaling: the distance of the flow's residual from the linearised flow's
    closed form exp(-t K0/n) e0 shrinks with the width (~ m^-1/2)."""
    data = fs.datasets.four_points()
    gaps = []
    for m in (400, 6400):
        prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.scheme("ntk", m), asi=True), data, seed=0)
        lin = prob.model.make_jacobian(np, data, np.float64)
        l0 = lin(prob.y0)
        lam, V = np.linalg.eigh(l0.gram() / data.n)
        T = 20.0
        e_lin = V @ (np.exp(-T * np.maximum(lam, 0)) * (V.T @ l0.e))
        sol = fs.solve(prob, "auto", rtol=1e-8, atol=1e-8, t_end=T, progress=False)
        gaps.append(np.abs(lin(sol.y_final).e - e_lin).max() / np.abs(l0.e).max())
    assert gaps[1] < gaps[0] / 2.5 and gaps[1] < 0.05


# -- auto and bookkeeping ---------------------------------------------------------------
def test_auto_records_its_choice_and_work():
    lin_prob = fs.Problem(fs.TwoLayer(50, fs.Scaling.from_gammas(0.5, 0, 50), asi=True),
                          fs.datasets.four_points())
    sol = fs.solve(lin_prob, "auto", rtol=1e-6, atol=1e-6, stop_at_loss=1e-3, progress=False)
    assert sol.status.ok and sol.stats.method in ("expgn2", "sliding")
    ds = sol.to_xarray()
    assert ds.attrs["solver"] == "auto" and ds.attrs["stats_method"] == sol.stats.method
    cond = fs.Problem(fs.TwoLayer(50, fs.Scaling.from_gammas(2.0, 0, 50), asi=True),
                      fs.datasets.four_points())
    assert fs.solvers.auto.choose(cond)[0] == "sliding"
    tanh = _problem(act="tanh")
    assert fs.solvers.auto.choose(tanh)[0] == "expgn3"
    sol = fs.solve(lin_prob, "expgn2", rtol=1e-6, atol=1e-6, t_end=10.0, progress=False)
    assert sol.stats.njev > 0 and sol.stats.extra["factorizations"] >= sol.stats.steps


def test_auto_on_smooth_activations_follows_the_kernel_horizon():
    """tanh: ``auto`` runs expgn3 where ``lambda_max(K/n) t_end`` at initialisation reaches
    STIFF_HORIZON (or the horizon is open), dopri5 below; the reason is in the stats."""
    from flowsolve.solvers.auto import STIFF_HORIZON, choose, kernel_horizon

    prob = _problem(m=40, gamma=0.5, gamma_prime=0.0, act="tanh")
    lin = prob.model.make_jacobian(np, prob.data, np.float64)(prob.y0_host)
    J = lin.dense()                                     # (n, P): K without gram()
    lam = np.linalg.eigvalsh(J @ (lin.mobility[:, None] * J.T) / prob.data.n)[-1]
    assert kernel_horizon(prob, 2.0) == pytest.approx(2.0 * lam, rel=1e-10)
    t_stiff = 2 * STIFF_HORIZON / lam
    assert choose(prob, t_stiff)[0] == "expgn3" and choose(prob)[0] == "expgn3"
    assert choose(prob, math.inf)[0] == "expgn3"
    name, why = choose(prob, 0.5 * STIFF_HORIZON / lam)
    assert name == "dopri5" and "not stiff" in why
    sol = fs.solve(prob, "auto", t_end=0.5 * STIFF_HORIZON / lam, rtol=1e-6, atol=1e-8,
                   progress=False)
    ref = fs.solve(prob, "dopri5", t_end=0.5 * STIFF_HORIZON / lam, rtol=1e-6, atol=1e-8,
                   progress=False)
    assert sol.stats.method == "dopri5" and np.array_equal(sol.y_final, ref.y_final)
    assert sol.to_xarray().attrs["stats_method_reason"] == why
    relu = _problem(m=40, gamma=0.5, gamma_prime=0.0)
    assert choose(relu, 1e-3)[0] == "sliding"          # the rule is for smooth activations


def test_auto_on_relu_follows_the_regime_and_the_kernel_horizon():
    """ReLU: ``expgn2`` in the linear regime when ``lambda_max(K/n)`` times the horizon
    (``t_end``, or the linearised flow's time to ``stop_at_loss``) reaches
    ``RELU_STIFF_HORIZON``; ``sliding`` over short horizons, on the four points (horizon
    ~100 whatever the regime) and outside the linear regime. The linearised time to the
    loss is where ``expm(-K t) e0`` reaches it."""
    from scipy.linalg import expm

    from flowsolve.solvers.auto import (RELU_STIFF_HORIZON, choose, kernel_horizon,
                                        kernel_modes, linearised_time_to_loss)

    data = fs.datasets.digits(n=256)
    m = 200
    lin = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(0.5, 0.0, m), asi=True), data)
    lam, e_hat = kernel_modes(lin)
    t_lin = linearised_time_to_loss(lam, e_hat, data.n, 1e-4)
    assert lam[-1] * t_lin > 10 * RELU_STIFF_HORIZON
    name, why = choose(lin, None, 1e-4)
    assert name == "expgn2" and "linear regime" in why
    assert choose(lin, 1e5)[0] == "expgn2"
    short = 0.5 * RELU_STIFF_HORIZON / lam[-1]
    assert choose(lin, short)[0] == "sliding"
    assert kernel_horizon(lin, short) == pytest.approx(0.5 * RELU_STIFF_HORIZON)
    assert choose(lin, 1e5, stop_at_loss=0.5 * float(e_hat @ e_hat) / (2 * data.n))[0] \
        == "sliding"                              # the loss is reached early
    cond = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(2.0, 0.0, m), asi=True), data)
    assert choose(cond, None, 1e-4)[0] == "sliding"
    four = fs.Problem(fs.TwoLayer(1000, fs.Scaling.from_gammas(0.5, 0.0, 1000), asi=True),
                      fs.datasets.four_points())
    assert choose(four, None, 1e-4)[0] == "sliding"
    # the linearised time against the matrix exponential of a random kernel
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    K = A @ A.T / 6 + np.diag([0, 0, 0, 0, 0, 1e-3])
    lam_k, V = np.linalg.eigh(K)
    e0 = rng.standard_normal(6)
    n = 6
    for loss in (1e-2, 1e-4):
        t = linearised_time_to_loss(lam_k, V.T @ e0, n, loss)
        e_t = expm(-K * t) @ e0
        assert e_t @ e_t / (2 * n) == pytest.approx(loss, rel=1e-5)
    assert linearised_time_to_loss(lam_k, V.T @ e0, n, 10.0) == 0.0
    lam_k[0] = 0.0                                    # a null mode carries e0's share
    share = (V[:, 0] @ e0) ** 2 / (2 * n)
    assert linearised_time_to_loss(lam_k, V.T @ e0, n, 0.5 * share) == math.inf


def test_auto_is_the_default_method():
    """``fs.solve(prob)`` without a method runs ``auto`` (issue 7): the same result as
    asking for it, and the choice named in the stats and the Dataset."""
    prob = fs.Problem(fs.TwoLayer(40, fs.Scaling.from_gammas(1.75, 0, 40), asi=True),
                      fs.datasets.four_points())
    kw = dict(rtol=1e-6, atol=1e-6, t_end=2e3, progress=False)
    default, auto = fs.solve(prob, **kw), fs.solve(prob, "auto", **kw)
    assert default.stats.method == "sliding" == auto.stats.method
    assert np.array_equal(default.y_final, auto.y_final)
    assert default.to_xarray().attrs["solver"] == "auto"


def test_sliding_rejects_smooth_activations():
    with pytest.raises(fs.ConfigError, match="tanh"):
        fs.solve(_problem(act="tanh"), "sliding", t_end=1.0, progress=False)


def test_auto_falls_back_to_explicit_rk_without_gauss_newton_structure():
    prob = fs.Problem(fs.ThreeLayer(8), fs.datasets.four_points())
    assert fs.solvers.auto.choose(prob)[0] == "dopri5"
    sol = fs.solve(prob, "auto", rtol=1e-6, atol=1e-8, t_end=1.0, progress=False)
    ref = fs.solve(prob, "dopri5", rtol=1e-6, atol=1e-8, t_end=1.0, progress=False)
    assert sol.stats.method == "dopri5" and np.array_equal(sol.y_final, ref.y_final)
    with pytest.raises(fs.ConfigError, match="make_jacobian"):
        fs.solve(prob, "expgn2", t_end=1.0, progress=False)


# -- the compiled switching pieces (numba backend) --------------------------------------
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_compiled_switching_matches_numpy(d, act, parallel):
    """Switching with the numba backend's kernels (compiled RHS on every neuron, the
    sliding rows and the event re-integration compiled per neuron; one-pass residual
    rate and crossings) against the NumPy reference, with sliding pairs on several
    neurons (one with two pairs); serial and prange kernels. With d = 3 the data has
    n = 12 > SMALL_N points, so the residual rate and the crossings take the BLAS path."""
    numba = pytest.importorskip("numba")
    from flowsolve.backends.numba_backend import SMALL_N, NumbaBackend

    m, n = 40, (6 if d == 1 else 12)
    assert (n > SMALL_N) == (d == 3)
    data = fs.datasets.smooth(n, d=d, seed=2)
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(1.2, 0.1, m), activation=act, asi=False)
    be = NumbaBackend(parallel_threshold=1, blas_threshold=1,
                      threads=numba.config.NUMBA_NUM_THREADS) if parallel else NumbaBackend()
    ref = model.make_switching(np, data, np.float64)
    fast = model.make_switching(np, data, np.float64,
                                kernels=be.switching_kernels(model, data, np.float64))
    assert fast.kernels is not None and ref.kernels is None
    rng = np.random.default_rng(5)
    y = fs.Problem(model, data, seed=4).y0_host + 0.3 * rng.standard_normal(m * (d + 2))
    S = np.zeros((m, n), dtype=bool)
    S[[1, 7, 19], [0, 3, 5]] = True
    if d > 1:
        S[7, 4] = True                                   # two surfaces on one neuron
    for sw in (ref, fast):
        sw.set_sliding(S)
    y = ref.project(y.copy())
    o_ref, o_fast = np.empty_like(y), np.empty_like(y)
    l_ref, l_fast = ref.rhs(y, o_ref), fast.rhs(y, o_fast)
    assert l_fast == pytest.approx(l_ref, rel=1e-12)
    np.testing.assert_allclose(o_fast, o_ref, rtol=1e-10, atol=1e-12 * np.abs(o_ref).max())
    np.testing.assert_allclose(fast.last_e, ref.last_e, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.last_theta, ref.last_theta, rtol=1e-9, atol=1e-12)
    assert np.count_nonzero(ref.last_theta) >= 3
    # d = 3, serial: the sliding rows are folded into the blocked BLAS pass; check it in
    # blocks of 16 neurons too (rows 1, 7 and 19 fall in three of them)
    folds = fast.plain.rhs_sliding(y, np.empty_like(y), *fast.sliding_rows, fast.c.XX, 0.0)
    threaded = parallel and be.threads > 1           # one thread (NUMBA_NUM_THREADS=1): serial
    assert (folds is not None) == (d == 3 and not threaded)
    if folds is not None:
        fast.plain.rows, fast.plain._pre = 16, None
        o_blk = np.empty_like(y)
        assert fast.rhs(y, o_blk) == pytest.approx(l_ref, rel=1e-12)
        np.testing.assert_allclose(o_blk, o_ref, rtol=1e-10, atol=1e-12 * np.abs(o_ref).max())
        np.testing.assert_allclose(fast.last_theta, ref.last_theta, rtol=1e-9, atol=1e-12)
    for a, b in zip(fast.residual_rate(y, o_ref), ref.residual_rate(y, o_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    y1 = y + 0.2 * rng.standard_normal(y.shape)
    cross = ~S & ((ref.pre(y) > 0) != (ref.pre(y1) > 0))
    assert cross.any() and cross.sum() < cross.size
    rows = np.flatnonzero(cross.any(axis=1))
    for sw in (ref, fast):
        r, sub = sw.crossings(y, y1, S)
        np.testing.assert_array_equal(r, rows)
        np.testing.assert_array_equal(sub, cross[rows])
    # crossings and both ends' residual rates in one pass (BLAS for n > SMALL_N)
    f1 = rng.standard_normal(y.shape)
    assert fast.fuses_step_ends == (d == 3) and not ref.fuses_step_ends
    (r, sub), *ends = fast.step_ends(y, y1, o_ref, f1, S)
    np.testing.assert_array_equal(r, rows)
    np.testing.assert_array_equal(sub, cross[rows])
    for (e, rate), (yy, ff) in zip(ends, ((y, o_ref), (y1, f1))):
        e_ref, rate_ref = ref.residual_rate(yy, ff)
        np.testing.assert_allclose(e, e_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rate, rate_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.pre(y), ref.pre(y), rtol=1e-12, atol=1e-14)
    # the event re-integration: same crossings, slides and releases, same work
    from flowsolve.models.two_layer_structure import StepResidual
    ref.rhs(y, o_ref)
    h = 50.0
    y1 = y + h * o_ref
    e_of = StepResidual(np, *ref.residual_rate(y, o_ref), *ref.residual_rate(y1, o_ref), h)
    a, w = y[:m], y[m:].reshape(m, d + 1)
    inputs = (a.copy(), w.copy(), S.copy())
    a_r, w_r, S_r, cost_r = ref.integrate_neurons(a, w, S, e_of, h, 8)
    a_f, w_f, S_f, cost_f = fast.integrate_neurons(a, w, S, e_of, h, 8)
    assert cost_r > 4 * 8 * m                            # neurons crossed surfaces
    assert cost_f == cost_r
    np.testing.assert_array_equal(S_f, S_r)
    assert (S_r != S).any()                              # pairs slid or were released
    assert np.abs(w_r - w).max() > 0.1
    np.testing.assert_allclose(a_f, a_r, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(w_f, w_r, rtol=1e-12, atol=1e-13)
    # with linear modes under the cubic (expgn2's residual; the compiled kernel tabulates
    # it once on the substeps' grid): same decisions, same states
    lam, V = np.linalg.eigh(ref.c.XX / n)
    e_modes = StepResidual(np, *ref.residual_rate(y, o_ref), *ref.residual_rate(y1, o_ref), h,
                           modes=(V, np.maximum(lam, 0.0)))
    out_r = ref.integrate_neurons(a, w, S, e_modes, h, 9)
    out_f = fast.integrate_neurons(a, w, S, e_modes, h, 9)
    assert out_f[3] == out_r[3] and (out_r[2] != S).any()
    np.testing.assert_array_equal(out_f[2], out_r[2])
    for x_f, x_r in zip(out_f[:2], out_r[:2]):
        np.testing.assert_allclose(x_f, x_r, rtol=1e-12, atol=1e-13)
    # handed to a host structure (what a device structure does): the host's result
    handed = model.make_switching(np, data, np.float64, host=fast)
    a_h, w_h, S_h, cost_h = handed.integrate_neurons(a, w, S, e_of, h, 8)
    assert cost_h == cost_f
    for x_h, x_f in ((a_h, a_f), (w_h, w_f), (S_h, S_f)):
        np.testing.assert_array_equal(x_h, x_f)
    handed.set_sliding(S)                                # and the sliding rows of the RHS
    o_h = np.empty_like(y)
    assert handed.rhs(y, o_h) == pytest.approx(ref.rhs(y, o_ref), rel=1e-12)
    np.testing.assert_allclose(o_h, o_ref, rtol=1e-10, atol=1e-12 * np.abs(o_ref).max())
    np.testing.assert_allclose(handed.last_theta, ref.last_theta, rtol=1e-9, atol=1e-12)
    # with a host of either kind, and a backend's plain RHS on every neuron (the cupy
    # backend's layout: fused RHS on the device, sliding rows on the host)
    for other in (model.make_switching(np, data, np.float64, host=ref),
                  model.make_switching(np, data, np.float64, host=fast,
                                       plain_rhs=fast.kernels)):
        other.set_sliding(S)
        other.rhs(y, o_h)
        np.testing.assert_allclose(o_h, o_ref, rtol=1e-10, atol=1e-12 * np.abs(o_ref).max())
        np.testing.assert_allclose(other.last_theta, ref.last_theta, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(other.last_e, ref.last_e, rtol=1e-10, atol=1e-12)
    for before, after in zip(inputs, (a, w, S)):         # inputs left alone
        np.testing.assert_array_equal(after, before)
    for sw in (ref, fast):                               # no sliding pairs: plain flow
        sw.set_sliding(np.zeros_like(S))
    l_ref, l_fast = ref.rhs(y, o_ref), fast.rhs(y, o_fast)
    np.testing.assert_allclose(o_fast, o_ref, rtol=1e-10, atol=1e-12 * np.abs(o_ref).max())
    assert not fast.last_theta.any()


@pytest.mark.parametrize("case", ["well_conditioned", "zero_residual", "repeated_point"])
def test_compiled_controls_match_least_squares(case):
    """The compiled controls of a neuron with several sliding pairs (Cholesky of XX on
    the pairs, least squares where that is ill-conditioned) against the NumPy reference
    (least squares always): a generic case, a pair whose residual is 0 (its control
    drops out: an inconsistent system) and two pairs on the same data point (XX on them
    is singular)."""
    pytest.importorskip("numba")
    from flowsolve.backends._nb_switching import _controls
    from flowsolve.models.two_layer_structure import controls

    rng = np.random.default_rng(3)
    n, D = 24, 5
    X = rng.standard_normal((n, D))
    if case == "repeated_point":
        X[7] = X[2]
    XX = X @ X.T
    XX = 0.5 * (XX + XX.T)
    e = rng.standard_normal(n)
    S = np.zeros(n, dtype=bool)
    S[[2, 7, 11, 19]] = True
    if case == "zero_residual":
        e[11] = 0.0
    g = (rng.random(n) > 0.5).astype(float)
    theta_ref = controls(np, g[None, :].copy(), S[None, :], e, XX)[0]
    g_fast = g.copy()
    _controls(g_fast, S, e, XX)
    if case != "zero_residual":     # consistent: the neuron stays on its surfaces,
        resid = (g_fast * e) @ XX     # sum_j e_j g_j XX_ji = 0 on S
        np.testing.assert_allclose(resid[S], 0.0, atol=1e-10 * np.abs(e) @ np.abs(XX).max(0))
    if case == "well_conditioned":
        np.testing.assert_allclose(g_fast[S], theta_ref[S], rtol=1e-10)
    else:                       # singular: least squares, the minimum-norm solution
        np.testing.assert_allclose(g_fast[S], theta_ref[S], rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(g_fast[~S], g[~S])


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_linearisation_of_the_sliding_mode_flow_is_tangent_to_the_surfaces(act):
    """With sliding pairs (0 to 3 per neuron, d = 3) the Gauss-Newton structure is that of
    the sliding-mode flow: ``-C J^T e / n`` is its right-hand side (the equivalent
    controls' velocity); every ``C J^T u`` leaves the sliding pairs' pre-activations
    fixed; ``J v`` is the derivative of the residual along ``v`` moved into the tangent
    spaces (finite differences); ``jv``, ``cjt``, ``gram`` agree with the dense ``J``.
    Holding ``sigma'`` at the controls instead (``tangent`` False) moves sliding pairs
    off their surfaces: the difference the tangent form removes."""
    from flowsolve.models.two_layer_structure import make_linearize

    m, n, d = 40, 12, 3
    data = fs.datasets.smooth(n, d=d, seed=5)
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(0.75, 0.0, m), activation=act, asi=False)
    rng = np.random.default_rng(2)
    M, D = model.n_neurons, d + 1
    S = np.zeros((M, n), dtype=bool)
    for k in range(M):
        S[k, rng.choice(n, size=k % 4, replace=False)] = True
    sw = model.make_switching(np, data, np.float64)
    y = sw.project(fs.Problem(model, data, seed=1).y0_host.copy(), S)
    lz = make_linearize(model, np, data, np.float64)
    lin = lz(y, S)
    J, C = lin.dense(), lin.mobility
    v, u = rng.standard_normal(y.size), rng.standard_normal(n)
    np.testing.assert_allclose(lin.jv(v), J @ v, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin.cjt(u), C * (J.T @ u), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin.gram(), J @ (C[:, None] * J.T), rtol=1e-12, atol=1e-13)
    f = np.empty_like(y)
    sw.set_sliding(S)
    sw.rhs(y, f)
    np.testing.assert_allclose(lin.cjt(-lin.e / n), f, rtol=1e-10, atol=1e-13)

    def off_surface(lin_, vec):                   # pre-activation rates on sliding pairs
        return np.abs((vec[M:].reshape(M, D) @ lin_.c.XtT)[S]).max()

    assert off_surface(lin, lin.cjt(u)) < 1e-13
    # a new sliding set that keeps most rows: the tangent spaces are updated row by row
    # (the rows that kept their pairs copied); the same structure as computed afresh
    S_new = S.copy()
    S_new[1] = False                                   # a row leaves
    S_new[2, np.nonzero(~S[2])[0][0]] = True           # a row gains a pair
    S_new[7, np.nonzero(S[7])[0][0]] = False           # a row loses one
    y_new = sw.project(y.copy(), S_new)
    upd, fresh = lz(y_new, S_new), make_linearize(model, np, data, np.float64)(y_new, S_new)
    from flowsolve.models.two_layer_structure import _tangent_spaces, _tangent_spaces_update

    rows_new = np.nonzero(S_new.any(axis=1))[0]
    part = _tangent_spaces_update(lin.c, rows_new, S_new, S, lin._tangent)
    full = _tangent_spaces(lin.c, rows_new, S_new)
    assert part is not None                            # rows reused, three recomputed
    proj = [np.einsum("rpd,rpe->rde", t[1], t[1]) for t in (part, full)]
    np.testing.assert_allclose(proj[0], proj[1], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(upd.gram(), fresh.gram(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(upd.cjt(u), fresh.cjt(u), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(upd.jv(v), fresh.jv(v), rtol=1e-12, atol=1e-13)
    vt = v.copy()                                  # v in the tangent spaces
    w = vt[M:].reshape(M, D)
    for k in np.nonzero(S.any(axis=1))[0]:
        X = data.x_tilde()[S[k]]
        w[k] -= X.T @ np.linalg.solve(X @ X.T, X @ w[k])
    np.testing.assert_allclose(lin.jv(v), lin.jv(vt), rtol=1e-12, atol=1e-13)
    eps = 1e-6
    fd = (lz(y + eps * vt, S).e - lz(y - eps * vt, S).e) / (2 * eps)
    np.testing.assert_allclose(lin.jv(v), fd, rtol=1e-7, atol=1e-9)
    lin_held = make_linearize(model, np, data, np.float64, tangent=False)(y, S)
    np.testing.assert_allclose(lin_held.cjt(-lin_held.e / n), f, rtol=1e-10, atol=1e-13)
    assert off_surface(lin_held, lin_held.cjt(u)) > 1e-3
    # a repeated data point: two sliding pairs of one neuron on the same surface (a
    # singular normal Gram matrix; the dependent direction is dropped)
    rep = fs.datasets.Dataset(np.concatenate([data.x, data.x[:1]]),
                              np.concatenate([data.y, data.y[:1] + 0.1]))
    S2 = np.concatenate([S, S[:, :1]], axis=1)
    S2[0, [0, n]] = True
    sw2 = model.make_switching(np, rep, np.float64)
    y2 = sw2.project(y.copy(), S2)
    lin2 = make_linearize(model, np, rep, np.float64)(y2, S2)
    J2, u2 = lin2.dense(), rng.standard_normal(n + 1)
    np.testing.assert_allclose(lin2.cjt(u2), C * (J2.T @ u2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin2.gram(), J2 @ (C[:, None] * J2.T), rtol=1e-12, atol=1e-13)
    rates = lin2.cjt(u2)[M:].reshape(M, D) @ lin2.c.XtT
    assert np.abs(rates[S2]).max() < 1e-13
    f2 = np.empty_like(y2)
    sw2.set_sliding(S2)
    sw2.rhs(y2, f2)
    np.testing.assert_allclose(lin2.cjt(-lin2.e / (n + 1)), f2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_compiled_rows_of_controls_and_projection_match_numpy(act):
    """The exponential steps' compiled pieces on the numba backend, row by row against
    the NumPy code on a whole sliding set (neurons with none, one and several sliding
    pairs): the activations (one compiled pass) and the equivalent controls of the
    Gauss-Newton linearisation (``Linearization.theta``, the sliding-mode ``sigma'``),
    with and without sliding pairs, and the projection onto the
    surfaces (every sliding pair's pre-activation 0 afterwards, the same state)."""
    pytest.importorskip("numba")
    from flowsolve.backends.numba_backend import NumbaBackend
    from flowsolve.models.two_layer_structure import make_linearize

    m, n, d = 40, 12, 3
    from flowsolve.models.activations import LEAKY_SLOPE

    data = fs.datasets.smooth(n, d=d, seed=5)
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(0.75, 0.0, m), activation=act, asi=False)
    lo = LEAKY_SLOPE if act == "leaky_relu" else 0.0
    kernels = NumbaBackend().switching_kernels(model, data, np.float64)
    assert kernels is not None
    y = fs.Problem(model, data, seed=1).y0_host.copy()
    rng = np.random.default_rng(2)
    M = model.n_neurons
    S = np.zeros((M, n), dtype=bool)
    for k in range(M):
        S[k, rng.choice(n, size=k % 4, replace=False)] = True   # 0 to 3 pairs
    ref = make_linearize(model, np, data, np.float64)(y, S)
    fast = make_linearize(model, np, data, np.float64, kernels=kernels)(y, S)
    assert np.count_nonzero(ref.theta) > M
    np.testing.assert_allclose(fast.theta, ref.theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.ag, ref.ag, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(fast.h, ref.h)                 # the compiled pattern
    assert (fast.h[S] == 0).all() and (fast.h > 0).sum() > M
    np.testing.assert_allclose(fast.e, ref.e, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(fast.ag[~S.any(axis=1)], ref.ag[~S.any(axis=1)])
    free = make_linearize(model, np, data, np.float64, kernels=kernels)(y)   # no S
    np.testing.assert_array_equal(free.h, np.where(free.pre > 0, free.pre, lo * free.pre))
    np.testing.assert_array_equal(free.ag, np.where(free.pre > 0, 1.0, lo) * y[:M, None])
    import numba                                                  # the chunked kernel too
    par = NumbaBackend(parallel_threshold=1, threads=numba.config.NUMBA_NUM_THREADS)
    threaded = make_linearize(model, np, data, np.float64,
                              kernels=par.switching_kernels(model, data, np.float64))(y, S)
    np.testing.assert_array_equal(threaded.h, fast.h)
    np.testing.assert_array_equal(threaded.ag, fast.ag)
    np.testing.assert_allclose(fast.gram(), ref.gram(), rtol=1e-10)
    sw_ref = model.make_switching(np, data, np.float64)
    sw_fast = model.make_switching(np, data, np.float64, kernels=kernels)
    y_ref, y_fast = sw_ref.project(y.copy(), S), sw_fast.project(y.copy(), S)
    assert np.abs(sw_fast.pre(y_fast)[S]).max() < 1e-12
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-12, atol=1e-14)
    assert np.abs(y_fast - y).max() > 1e-3                        # it did move


def test_sliding_solve_same_on_numba_and_numpy():
    """The condensed four-point problem through its events: the sliding method on the
    numba backend follows the NumPy reference (same steps, same events)."""
    pytest.importorskip("numba")
    m = 20
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(1.75, 0.0, m), asi=True)
    sols = [fs.solve(fs.Problem(model, fs.datasets.four_points(), seed=3, backend=be),
                     "sliding", rtol=1e-8, atol=1e-8, t_end=4000.0, progress=False)
            for be in ("numpy", "numba")]
    a, b = sols
    assert a.status.ok and b.status.ok and a.stats.extra["event_neurons"] > 0
    assert (a.stats.steps, a.stats.extra["event_neurons"]) == \
        (b.stats.steps, b.stats.extra["event_neurons"])
    np.testing.assert_allclose(b.y_final, a.y_final, rtol=1e-8, atol=1e-8)


# -- excursions across a surface and back within an interval ---------------------------
def test_dip_fraction_against_dense_sampling():
    """dip_fraction finds exactly the quadratics that leave their side and come back
    inside [0, 1] (dense sampling of p(s)), at their first root; the compiled twin agrees."""
    from flowsolve.models.two_layer_structure import dip_fraction

    rng = np.random.default_rng(7)
    N = 4000
    p0 = rng.standard_normal(N) * 0.1
    p1 = rng.standard_normal(N) * 0.1
    b = rng.standard_normal(N) * 0.5
    P = np.where(p0 > 0, 1.0, 0.0)
    same = (p0 > 0) == (p1 > 0)                       # the ends show no crossing
    s = dip_fraction(np, p0, b, p1, P)
    grid = np.linspace(0.0, 1.0, 20001)
    c = p1 - p0 - b
    p = p0[:, None] + b[:, None] * grid + c[:, None] * grid ** 2
    left = np.where(P[:, None] == 1.0, p < 0, p > 0)
    dips = same & left.any(axis=1)
    found = s <= 1.0
    assert dips.sum() > 100
    np.testing.assert_array_equal(found[same], dips[same])
    first = grid[np.argmax(left, axis=1)]
    np.testing.assert_allclose(s[dips], first[dips], atol=2e-4)
    np.testing.assert_allclose(p0[dips] + b[dips] * s[dips] + c[dips] * s[dips] ** 2, 0.0,
                               atol=1e-12)
    pytest.importorskip("numba")
    from flowsolve.backends._nb_switching import _dip
    for k in np.flatnonzero(same)[:500]:
        assert _dip(p0[k], b[k], p1[k], P[k] == 1.0) == pytest.approx(s[k], abs=1e-14)


def test_dip_fraction_prefilter_is_exact():
    """The candidate test of dip_fraction (toward the surface, within half the rate's
    reach) drops no excursion: the same roots as the quadratic solved on every pair, also
    for starts at the edge of the reach and for both sides of the surface, in 2-D."""
    from flowsolve.models.two_layer_structure import _dip_roots, dip_fraction

    rng = np.random.default_rng(11)
    shape = (300, 40)
    b = rng.standard_normal(shape) * 0.5
    p0 = rng.standard_normal(shape) * 0.1
    p1 = np.where(rng.random(shape) < 0.5, p0, -p0) * rng.random(shape) * 3
    # a third start at f in (0.8, 1) of the reach |b|/2, moving toward the surface, with
    # the curvature c in the window (|b|/2, b^2/(4 |p0|)) where they still dip
    edge = rng.random(shape) < 0.3
    f = rng.uniform(0.8, 1.0, edge.sum())
    side = np.sign(b[edge])                           # b > 0: below the surface, rising
    p0[edge] = -side * f * np.abs(b[edge]) / 2
    c = side * -np.abs(b[edge]) / 2 * (1 + rng.random(edge.sum()) * (1 / f - 1))
    p1[edge] = p0[edge] + b[edge] + c
    P = np.where(p0 > 0, 1.0, 0.0)
    s = dip_fraction(np, p0, b, p1, P)
    dense = _dip_roots(np, p0, b, p1, P == 1.0)
    assert (dense <= 1.0).sum() > 1000
    np.testing.assert_array_equal(s, dense)


@pytest.mark.parametrize("parallel", [False, True])
def test_compiled_event_pairs_match_numpy(parallel):
    """Switching.event_pairs, compiled (one pass) and in NumPy, flag the same pairs:
    crossings, arrivals of the start's rate, ends on the surface to rounding; never
    sliding pairs. Every excursion across the surface and back (dip_fraction, both
    sides) is among them: a dip starts within half the rate's reach, an arrival."""
    from flowsolve.models.two_layer_structure import dip_fraction

    numba = pytest.importorskip("numba")
    from flowsolve.backends.numba_backend import NumbaBackend

    m, n, d = 60, 12, 3
    data = fs.datasets.smooth(n, d=d, seed=2)
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(1.0, 0.0, m), asi=False)
    be = NumbaBackend(parallel_threshold=1, threads=numba.config.NUMBA_NUM_THREADS) \
        if parallel else NumbaBackend()
    ref = model.make_switching(np, data, np.float64)
    fast = model.make_switching(np, data, np.float64,
                                kernels=be.switching_kernels(model, data, np.float64))
    rng = np.random.default_rng(9)
    pre0 = rng.standard_normal((m, n)) * 0.1
    rate = rng.standard_normal((m, n)) * 0.3
    curv = rng.standard_normal((m, n)) * 0.3
    # a third dip candidates: toward the surface, within half the rate's reach u |b|;
    # half of them curve back to their side (c in ((1 - u) |b|, |b| / (4 u)): a dip)
    cand = rng.random((m, n)) < 0.3
    u = rng.uniform(0.05, 0.5, cand.sum())
    b = rate[cand]
    pre0[cand] = -np.sign(b) * u * np.abs(b)
    back = rng.random(cand.sum()) < 0.5
    c = np.abs(b) * rng.uniform(np.maximum(0.5, 1 - u), 1 / (4 * u))
    curv[cand] = np.where(back, -np.sign(b) * c, curv[cand])
    pre1 = pre0 + rate + curv
    wn = np.abs(rng.standard_normal(m)) + 0.5
    on = rng.random((m, n)) < 0.02                       # ends on the surface
    pre1[on] = 1e-12 * rng.standard_normal(on.sum())
    S = rng.random((m, n)) < 0.1
    p_ref, n_ref = ref.event_pairs(pre0, pre1, rate, S, wn)
    p_fast, n_fast = fast.event_pairs(pre0, pre1, rate, S, wn)
    np.testing.assert_array_equal(p_fast, p_ref)
    np.testing.assert_array_equal(n_fast, n_ref)
    assert not (p_ref & S).any()
    crossing = ~S & ((pre0 > 0) != (pre1 > 0))
    arrival = ~S & ((pre0 > 0) != (pre0 + rate > 0))
    dips = ~S & ~crossing & (dip_fraction(np, pre0, rate, pre1,
                                          np.where(pre0 > 0, 1.0, 0.0)) <= 1)
    assert crossing.sum() > 50 and arrival.sum() > 50 and dips.sum() > 50
    np.testing.assert_array_equal(p_ref, crossing | arrival)
    assert p_ref[dips].all() and arrival[dips].all()
    assert n_ref.sum() >= 5 and n_ref.sum() < m


@pytest.mark.parametrize("compiled", [False, True])
def test_event_reintegration_follows_excursions(compiled, monkeypatch):
    """Neurons started just off a surface, moving toward it: the re-integration's
    substeps see excursions across and back (the ends of a substep do not), and the
    result matches a fine RK4 integration of the same neurons against the same
    residual, which the frozen-pattern substeps would miss; numpy and numba agree."""
    from flowsolve.models import two_layer_structure as tls

    m, n, d = 30, 5, 2
    data = fs.datasets.smooth(n, d=d, seed=4)
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(1.0, 0.0, m), asi=False)
    kernels = None
    if compiled:
        pytest.importorskip("numba")
        from flowsolve.backends.numba_backend import NumbaBackend
        kernels = NumbaBackend().switching_kernels(model, data, np.float64)
    sw = model.make_switching(np, data, np.float64, kernels=kernels)
    rng = np.random.default_rng(3)
    y = fs.Problem(model, data, seed=2).y0_host.copy()
    M, D = sw.c.M, sw.c.D
    W = y[M:].reshape(M, D)
    X = sw.c.Xt
    f = np.empty_like(y)
    sw.rhs(y, f)
    V = f[M:].reshape(M, D)
    # every neuron just on the side its velocity leaves from, for one sample each
    i = rng.integers(0, n, M)
    rate = (V * X[i]).sum(axis=1)
    W -= ((W * X[i]).sum(axis=1) / (X[i] * X[i]).sum(axis=1))[:, None] * X[i]
    W -= (0.02 * np.abs(rate) * np.sign(rate) / (X[i] * X[i]).sum(axis=1))[:, None] * X[i]
    sw.rhs(y, f)
    h = 2.0
    e_of = tls.StepResidual(np, *sw.residual_rate(y, f), *sw.residual_rate(y + h * f, f), h)
    calls = []
    real = tls.dip_fraction
    monkeypatch.setattr(tls, "dip_fraction",
                        lambda *a: calls.append(real(*a)) or calls[-1])
    S = np.zeros((M, n), dtype=bool)
    a1, w1, S1, _ = sw.integrate_neurons(y[:M], W, S, e_of, h, 8)
    if not compiled:
        assert sum(int((c <= 1.0).sum()) for c in calls) > 0      # excursions were seen
    # fine reference: the same neurons, RK4 with 4000 steps, pattern from the sign
    ref = model.make_switching(np, data, np.float64)
    a, w = y[:M].copy(), W.copy()
    N = 4000
    dt = np.full(M, h / N)
    for k in range(N):
        P = np.where(w @ X.T > 0, 1.0, 0.0)
        a, w, _ = ref._rk4(a, w, P, S, e_of, k * h / N, dt)
    slid = S1.any(axis=1)
    free = ~slid
    assert free.sum() > M // 2
    np.testing.assert_allclose(w1[free], w[free], atol=2e-5 * np.abs(W).max())
    np.testing.assert_allclose(a1[free], a[free], atol=2e-5 * np.abs(y[:M]).max())


def test_expgn2_long_steps_follow_a_neuron_that_crosses_back():
    """Linear regime, m = 1e4 (ASI), four points: one neuron starts 6e-5 from a surface,
    crosses it within t ~ 0.05 and stays across; the exponential steps are ~5-9 long.
    Comparing only the ends of a step missed the crossing (parameter error 1.8e-2 at
    rtol 1e-5); with the excursion test and the modal residual the error is ~1e-3,
    against a tight sliding solution."""
    m = 10_000
    prob = _four_points_compiled(m, 0.5)
    T = 20.0
    ref = fs.solve(prob, "sliding", rtol=1e-9, atol=1e-9, t_end=T, save_at=[0.0],
                   progress=False)
    sol = fs.solve(prob, "expgn2", rtol=1e-5, atol=1e-5, t_end=T, save_at=[0.0],
                   progress=False)
    assert sol.status.ok and sol.stats.steps < 15
    assert np.abs(sol.y_final - ref.y_final).max() < 2e-3


@pytest.mark.parametrize("name", sorted(EXP_TABLEAUS))
def test_exponential_step_flags_an_arrival_at_an_attractive_surface(name):
    """One neuron heading for b = 0, where it slides (an attractive surface), and one
    exponential step 1.2x its arrival time. The stages cross the surface, meet the
    other side's velocity and are pushed back: the step ends on the starting side
    (b ~ +1e-2), so neither the ends' signs nor the excursion test see the arrival.
    The start's rate reaching the surface within the step flags it: re-integrated, the
    neuron ends sliding on the surface, within 2e-3 of a tight solution (unflagged it
    stayed 1e-2 off, b included)."""
    from flowsolve.solvers.auto import build_structured

    prob = _sliding_neuron(b0=0.05)
    ts = np.linspace(0.01, 4.0, 400)
    ref = fs.solve(prob, "sliding", rtol=1e-11, atol=1e-11, t_end=4.0, snapshots=list(ts),
                   progress=False)
    b = np.array([y[2] for _, y in ref.snapshots])
    t_arrive = ts[np.argmax(np.abs(b) < 1e-9)]
    assert 1.0 < t_arrive < 2.0
    h = 1.2 * t_arrive
    st = build_structured(name, prob, rtol=1e-6, atol=1e-6)
    y1 = np.empty_like(st.y)
    st.attempt(st.y, st.cur, h, y1)
    assert y1[2] > 5e-3                       # the base step ends on the starting side
    keep, S_new, nev = st._events(st.y, h, y1, st.S)
    assert nev == 1 and S_new[0, 0]           # flagged, and it slides on the kink x = 0
    assert y1[2] == 0.0
    y_ref = fs.solve(prob, "sliding", rtol=1e-11, atol=1e-11, t_end=h, progress=False).y_final
    assert np.abs(y1 - y_ref).max() < 2e-3


def test_exponential_step_failing_on_its_base_error_skips_the_event_reintegration():
    """A step whose base error over the components left to it already exceeds 1 fails
    whatever the event re-integration gives (its estimate only adds to the norm), so the
    event neurons are not re-integrated for it. From a first step of 20 (the step taken is
    ~0.07) the rejected attempts used to re-integrate 93 event neurons (58
    RHS-equivalents, 16x the accepted step's work); now only the accepted step does.
    The trace records each accepted step's rejections and event neurons."""
    from flowsolve.solvers.auto import build_structured

    prob = _four_points_compiled(1000, 0.5)
    st = build_structured("expgn2", prob, rtol=1e-8, atol=1e-8, first_step=20.0)
    calls = []
    real = st.sw.integrate_neurons

    def counted(a, *args, **kw):
        calls.append(a.shape[0])
        return real(a, *args, **kw)

    st.sw.integrate_neurons = counted
    st.trace = []
    for _ in range(20):
        st.step(60.0)
    t, h, rej, nev, err_base, err, lmax, n_sliding = np.array(st.trace).T
    assert len(st.trace) == st.steps == 20 and rej.sum() == st.rejected
    assert rej[0] >= 1 and h[0] < 1.0                       # the first step was rejected
    assert calls == [int(k) for k in nev if k > 0]         # only accepted steps re-integrate
    assert np.all(err <= 1.0) and np.all(err_base <= err + 1e-12)
    assert np.allclose(t, np.cumsum(h)) and np.all(lmax > 0)
    assert st.aux_work < 20.0


def test_exponential_steps_shorten_when_the_event_reintegration_is_too_long(monkeypatch):
    """An event re-integration takes ``substeps`` RK4 substeps per ``1/lambda_max`` of
    the step. Past ``max_substeps`` the attempt is rejected and shortened (it used to
    overflow the compiled kernel's substep count on a blown-up state). With the cap at
    16 (h lambda_max <= 2 in every step with events) the four-point solve is rejected
    and shortened where it had taken longer steps, and stays as accurate."""
    from flowsolve.solvers.exponential import ExpGNStepper

    m = 1000
    prob = _four_points_compiled(m, 0.5)
    T = 60.0
    ref = fs.solve(prob, "sliding", rtol=1e-10, atol=1e-10, t_end=T, progress=False)
    free = fs.solve(prob, "expgn3", rtol=1e-6, atol=1e-6, t_end=T, progress=False)
    monkeypatch.setattr(ExpGNStepper, "max_substeps", 16)
    capped = fs.solve(prob, "expgn3", rtol=1e-6, atol=1e-6, t_end=T, progress=False)
    assert free.status.ok and capped.status.ok
    assert capped.stats.rejected > free.stats.rejected + 5
    assert capped.stats.steps > free.stats.steps
    for sol in (free, capped):
        assert np.abs(sol.y_final - ref.y_final).max() < 1e-4


def _four_points_compiled(m, gamma):
    """Four points, ASI ReLU of width ``m`` at ``gamma`` (gamma' = 0), seed 0, on numba
    where it is installed."""
    return fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(gamma, 0.0, m), asi=True),
                      fs.datasets.four_points(), seed=0,
                      backend="numba" if _has_numba() else "numpy")


def _has_numba():
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def test_step_residual_modes_exact_on_the_linear_residual():
    """StepResidual with the Gram modes is exact for the linearised residual
    e(t) = V exp(-t lam) V^T e0 over a step of many 1/lam_max (where its cubic alone is
    off by O(1)), and interpolates the ends of any residual."""
    from flowsolve.models.two_layer_structure import StepResidual

    rng = np.random.default_rng(11)
    n, h = 5, 8.0
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.array([0.01, 0.1, 0.5, 1.0, 2.0])
    e0 = rng.standard_normal(n)

    def e(t):
        return V @ (np.exp(-t * lam) * (V.T @ e0))

    def r(t):
        return -V @ (lam * np.exp(-t * lam) * (V.T @ e0))

    modal = StepResidual(np, e0, r(0), e(h), r(h), h, modes=(V, lam))
    cubic = StepResidual(np, e0, r(0), e(h), r(h), h)
    taus = np.linspace(0.0, h, 9)
    exact = np.array([e(t) for t in taus])
    np.testing.assert_allclose(modal(taus), exact, atol=1e-13)
    assert np.abs(cubic(taus) - exact).max() > 0.05
    other = rng.standard_normal((4, n))                   # not linear: ends still hold
    sr = StepResidual(np, *other, h, modes=(V, lam))
    np.testing.assert_allclose(sr(0.0), other[0], atol=1e-13)
    np.testing.assert_allclose(sr(h), other[2], atol=1e-13)
    d = 1e-6
    np.testing.assert_allclose((sr(d) - sr(0.0)) / d, other[1], atol=1e-4)
    np.testing.assert_allclose((sr(h) - sr(h - d)) / d, other[3], atol=1e-4)


def test_exponential_step_with_every_neuron_an_event_is_error_controlled():
    """Condensed regime (gamma = 2, m = 1000, four points): the first exponential step
    the initial heuristic proposes is h ~ 2.8e8, over which every neuron meets a
    surface. With all neurons re-integrated no component was left to the base step's
    error estimate: the step was accepted with error 0 and ended at |y| ~ 1e14, and the
    solve failed (docs/benchmarks.md, session 18). The re-integration's own estimate (the
    residual model's mismatch at the step's end, ``ExpGNStepper._consistency``) rejects
    it, and the solve follows a tight sliding solution."""
    m = 1000
    prob = _four_points_compiled(m, 2.0)
    T = 3e8
    ref = fs.solve(prob, "sliding", rtol=1e-8, atol=1e-8, t_end=T, progress=False)
    sol = fs.solve(prob, "expgn2", rtol=1e-4, atol=1e-4, t_end=T, save_at=[0.0],
                   progress=False)              # no save points: steps as long as it likes
    assert sol.status.ok, sol.status
    assert sol.stats.rejected >= 1
    assert np.abs(sol.y_final - ref.y_final).max() < 0.05          # |y| ~ 51; 8e-3 here


def test_consistency_bound_holds_and_is_attained():
    """The bound that lets ``ExpGNStepper._consistency`` skip its product:
    ``|C J^T u|^2 <= c_max n lam_max |u|^2`` with ``lam_max`` the largest eigenvalue of
    ``J C J^T / n``, for random ``u`` at a state with sliding pairs; attained up to
    ``c_min / c_max`` by the top eigenvector (a loose bound would skip nothing)."""
    from flowsolve.solvers.auto import build_structured

    m = 200
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(1.0, 0.0, m), asi=True),
                      fs.datasets.four_points(), seed=3)
    st = build_structured("expgn2", prob, rtol=1e-6, atol=1e-6)
    for _ in range(200):                         # a state with sliding pairs (~20 steps)
        if st.S.sum() >= 4:
            break
        st.step()
    assert st.S.sum() >= 4
    lin, lam, V = st.cur[:3]
    C = np.asarray(st.linearize.mobility)
    n = st.n
    K = lin.dense() @ (C[:, None] * lin.dense().T) / n
    np.testing.assert_allclose(np.linalg.eigvalsh(K)[-1], lam[-1], rtol=1e-10)
    rng = np.random.default_rng(0)
    for u in list(rng.standard_normal((20, n))) + [V[:, -1]]:
        lhs = np.sum(lin.cjt(u) ** 2)
        assert lhs <= st._mob_max * n * lam[-1] * np.sum(u ** 2) * (1 + 1e-12)
    assert lhs >= C.min() / C.max() * st._mob_max * n * lam[-1] * (1 - 1e-12)


def test_cubic_roots_are_roots():
    """The event location's root finder (NumPy, and the compiled one where numba is
    installed): on random cubic Hermite segments with a sign change it returns a point of
    [0, 1] where the cubic vanishes to rounding (a Newton iteration that converged onto
    its bracket's end once bisected away from the root: 1e-3 off in the fraction)."""
    from flowsolve.models.two_layer_structure import cubic_roots

    rng = np.random.default_rng(3)
    p0 = np.abs(rng.standard_normal(2000)) * rng.choice([-1.0, 1.0], 2000)
    p1 = -np.sign(p0) * np.abs(rng.standard_normal(2000))
    d0, d1 = rng.standard_normal((2, 2000))
    lin = p0 / (p0 - p1)

    def cubic(s):
        u = 1.0 - s
        return (1 + 2 * s) * u * u * p0 + s * u * u * d0 + s * s * (3 - 2 * s) * p1 \
            + s * s * (s - 1) * d1

    scale = np.abs(p0) + np.abs(p1) + np.abs(d0) + np.abs(d1)
    s = cubic_roots(np, p0, d0, p1, d1, lin)
    assert ((s >= 0) & (s <= 1)).all()
    assert (np.abs(cubic(s)) <= 1e-12 * scale).all()
    nb = pytest.importorskip("flowsolve.backends._nb_switching")
    s_nb = np.array([nb._cubic_root(*args) for args in zip(p0, d0, p1, d1, lin)])
    assert (np.abs(cubic(s_nb)) <= 1e-12 * scale).all()
    np.testing.assert_allclose(s_nb, s, rtol=0, atol=1e-12)


def _switching(model, data, compiled):
    """The model's switching structure on NumPy arrays, with the numba backend's
    compiled kernels when ``compiled`` (skipped without numba)."""
    if not compiled:
        return model.make_switching(np, data, np.float64)
    pytest.importorskip("numba")
    from flowsolve.backends.numba_backend import NumbaBackend
    kernels = NumbaBackend().switching_kernels(model, data, np.float64)
    return model.make_switching(np, data, np.float64, kernels=kernels)


@pytest.mark.parametrize("compiled", [False, True])
def test_event_reintegration_converges_fast_in_its_substeps(compiled):
    """300 neurons through a long step (h = 1000) of a given residual, ~30 of them
    crossing several surfaces: against 1024 substeps, the neurons that slide in none of
    the runs are
    within 1e-2 at 16 substeps, and halving the substep divides their error by > 8
    (crossings located on the cubic through both ends' values and rates, each event of
    a substep in turn). Locating only a substep's first crossing, on the linear
    interpolant, gave 1.07 -> 0.20 (NumPy) and 2.7 -> 2.5 (compiled) at 8 -> 16."""
    from flowsolve.models.two_layer_structure import StepResidual

    m, n = 300, 6
    data = fs.datasets.smooth(n, d=1, seed=2)
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(1.2, 0.1, m), asi=False)
    sw = _switching(model, data, compiled)
    y = fs.Problem(model, data, seed=4).y0_host
    a, w = y[:m], y[m:].reshape(m, 2)
    S = np.zeros((m, n), dtype=bool)
    rng = np.random.default_rng(1)
    e0, r0 = rng.standard_normal(n), 0.3 * rng.standard_normal(n)
    h = 1000.0
    e_of = StepResidual(np, e0, r0, e0 + r0, r0, h)
    out = {k: sw.integrate_neurons(a, w, S, e_of, h, k) for k in (8, 16, 1024)}
    free = ~(out[8][2] | out[16][2] | out[1024][2]).any(axis=1)      # never slide
    assert free.sum() > 250
    crossed = free & ((w @ sw.c.XtT > 0) != (out[1024][1] @ sw.c.XtT > 0)).any(axis=1)
    assert crossed.sum() >= 20
    err = {k: np.abs(out[k][1] - out[1024][1])[free].max() for k in (8, 16)}
    assert err[16] < 1e-2
    assert err[8] > 8 * err[16]


def test_event_substeps_option():
    """``solve(..., event_substeps=k)`` reaches the re-integration (more substeps, more
    work counted; the default is 8); bad values are refused by name."""
    m = 60
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(1.75, 0.0, m)),
                      fs.datasets.four_points(), seed=0)
    kw = dict(t_end=2e4, save_at=[0.0], rtol=1e-6, atol=1e-6)
    runs = {k: fs.solve(prob, "sliding", event_substeps=k, **kw) for k in (2, 8, 64)}
    assert runs[2].stats.extra["event_neurons"] > 0
    assert runs[64].stats.extra["event_rhs_equiv"] > runs[2].stats.extra["event_rhs_equiv"]
    assert fs.solve(prob, "sliding", **kw).stats.njev == runs[8].stats.njev    # default 8
    with pytest.raises(fs.ConfigError, match="event_substeps must be a positive integer"):
        fs.solve(prob, "sliding", event_substeps=0, **kw)
    with pytest.raises(fs.ConfigError, match="event_substeps is for.*'dopri5'"):
        fs.solve(prob, "dopri5", event_substeps=8, **kw)


@pytest.mark.parametrize("compiled", [False, True])
def test_relu_neuron_sliding_into_w_zero_is_dead_as_gd_leaves_it(compiled):
    """A ReLU neuron sliding along one surface of the four points towards ``w = 0``, the
    point common to all four (a residual held fixed: the surface attracts, theta = 0.57),
    ends there dead: ``w = 0`` exactly, no sliding pair, and another step leaves it so.
    Gradient descent on the same neuron ends in the dead cone too (every pre-activation
    <= 0, ``|w| = O(dt)``, ``a`` converging at first order to the re-integration's).
    Before, the neuron kept two surfaces with the other pairs' pattern set by the
    rounding of ``w`` (~1e-19), and a later release could send it off on an active side
    (four points, m = 1e4, gamma = 1: two tolerances 0.08 apart at T*)."""
    from flowsolve.models.two_layer_structure import StepResidual

    data = fs.datasets.four_points()
    model = fs.TwoLayer(1, fs.Scaling.from_gammas(1.0, 0.0, 1), asi=False)
    sw = _switching(model, data, compiled)
    X = sw.c.Xt
    e = np.array([2.0, -2.0, 0.0, 1.0])
    a, w = np.array([1.0]), np.array([[0.02, 0.01]])       # on surface 0, the rest active
    S = np.array([[True, False, False, False]])
    _, dw, theta = sw.sliding_velocities(a, w, S, e)
    assert 0 < theta[0, 0] < 1 and (dw @ w.T)[0, 0] < 0     # slides towards w = 0
    h = 3 * np.linalg.norm(w) / np.linalg.norm(dw)          # it gets there at h / 3
    e_of = StepResidual(np, e, 0 * e, e, 0 * e, h)
    a1, w1, S1, _ = sw.integrate_neurons(a, w, S, e_of, h, 16)
    assert (w1 == 0).all() and not S1.any()
    a2, w2, S2, _ = sw.integrate_neurons(a1, w1, S1, e_of, h, 16)
    assert (w2 == 0).all() and not S2.any() and a2[0] == a1[0]
    _, ca, cw, _ = model.coefficients()
    errs = []
    for dt in (h / 150, h / 600, h / 2400):
        ag, wg = a[0], w[0].copy()
        for _ in range(round(h / dt)):
            pre = X @ wg
            ag, wg = (ag - dt * ca / 4 * (np.maximum(pre, 0) @ e),
                      wg - dt * cw / 4 * ag * (((pre > 0) * e) @ X))
        assert (X @ wg <= 0).all() and np.linalg.norm(wg) < 10 * dt * np.linalg.norm(dw)
        errs.append(abs(ag - a1[0]))
    assert errs[0] > 3 * errs[1] > 9 * errs[2]
