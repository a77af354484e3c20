import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import flowsolve as fs
from flowsolve.backends import NumpyBackend
from flowsolve.solvers.rk import RKStepper
from flowsolve.solvers.tableaus import ADAPTIVE, TABLEAUS

# a linear test ODE y' = A y with rotation and decay
A = np.array([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.0, -0.3, -1.0]])
Y0 = np.array([1.0, 0.5, -0.25])


def _linear_rhs(y, out):
    np.dot(A, y, out=out)
    return 0.0


def _fixed_step_error(tableau, n_steps, T=2.0):
    st = RKStepper(tableau, _linear_rhs, NumpyBackend(), Y0.copy(), dt=T / n_steps,
                   adaptive=False, status_enum=fs.Status)
    for _ in range(n_steps):
        st.step()
    return np.linalg.norm(st.y - expm(A * T) @ Y0)


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_tableau_consistency(name):
    TABLEAUS[name].check()


@pytest.mark.parametrize("name,n0", [("euler", 200), ("bs3", 40), ("rk4", 20), ("dopri5", 10),
                                     ("tsit5", 40), ("dop853", 6)])
def test_convergence_order_on_linear_ode(name, n0):
    tab = TABLEAUS[name]
    e1, e2 = _fixed_step_error(tab, n0), _fixed_step_error(tab, 2 * n0)
    order = math.log2(e1 / e2)
    assert abs(order - tab.order) < 0.35, (name, order)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_embedded_estimate_order(name):
    # the error estimate of one step scales like h^(q+1), q = error_order
    tab = TABLEAUS[name]
    be = NumpyBackend()
    ests = []
    for h in (0.1, 0.05):
        st = RKStepper(tab, _linear_rhs, be, Y0.copy(), dt=h, adaptive=False,
                       status_enum=fs.Status)
        y_out = np.empty(3)
        st.attempt(st.y, h, y_out)
        if not tab.fsal:
            _linear_rhs(y_out, st.K[tab.stages])
        ests.append(be.error_norm(st.y, y_out, h, st.K, tab.e, 1.0, 1.0, tab.e3))
    slope = math.log2(ests[0] / ests[1])
    expected = tab.error_order + 1
    if tab.e3 is not None:   # DOP853's combined estimate behaves like h^8 / ... : at least 6
        assert slope > 5.5
    else:
        assert abs(slope - expected) < 0.5, (name, slope)


@pytest.mark.parametrize("name", [n for n in ADAPTIVE if TABLEAUS[n].dense is not None])
def test_continuous_extension_order(name):
    # one step, evaluated inside: the interpolant's local error scales like h^(p+1) with
    # p = 3 for bs3's cubic, 4 for dopri5's and tsit5's quartic extensions
    tab = TABLEAUS[name]
    theta = 0.37
    errs = []
    for h in (0.2, 0.1):
        st = RKStepper(tab, _linear_rhs, NumpyBackend(), Y0.copy(), dt=h, rtol=1.0, atol=1.0,
                       status_enum=fs.Status, loss=lambda y: float(y @ y))
        st.step(t_stop=h)                   # one accepted step of size h
        assert st.t == pytest.approx(h) and st.has_dense
        y, loss = st.interpolate(theta * h)
        exact = expm(A * theta * h) @ Y0
        assert loss == pytest.approx(float(y @ y))
        errs.append(np.linalg.norm(y - exact))
    p = {"bs3": 3, "dopri5": 4, "tsit5": 4}[name]
    assert abs(math.log2(errs[0] / errs[1]) - (p + 1)) < 0.5, (name, errs)
    # the ends reproduce the step's states; the stepper continues unchanged afterwards
    y_end, _ = st.interpolate(st.t)
    np.testing.assert_allclose(y_end, st.y, rtol=1e-13, atol=1e-15)
    y_start, _ = st.interpolate(st.t_old)
    np.testing.assert_array_equal(y_start, st.y_new)
    ref = RKStepper(tab, _linear_rhs, NumpyBackend(), Y0.copy(), dt=0.1, rtol=1.0, atol=1.0,
                    status_enum=fs.Status)
    ref.step(t_stop=0.1)
    st.step()
    ref.step()
    np.testing.assert_array_equal(st.y, ref.y)


def _flow_problem(gamma=1.0, m=60, asi=True, activation="relu", seed=0):
    s = fs.Scaling.from_gammas(gamma=gamma, gamma_prime=0.0, width=m)
    return fs.Problem(fs.TwoLayer(m, s, activation=activation, asi=asi),
                      fs.datasets.four_points(), seed=seed)


@pytest.mark.parametrize("method", ["bs3", "dopri5", "tsit5", "dop853"])
def test_adaptive_engine_against_scipy_dop853(method):
    prob = _flow_problem(gamma=0.75, activation="tanh")
    T = 30.0
    ref = solve_ivp(lambda t, y: prob.rhs(t, y), (0, T), prob.y0, method="DOP853",
                    rtol=1e-12, atol=1e-14)
    for rtol in (1e-5, 1e-8):
        sol = fs.solve(prob, method, rtol=rtol, atol=rtol * 1e-3, t_end=T, progress=False)
        err = np.max(np.abs(sol.y_final - ref.y[:, -1]) / (np.abs(ref.y[:, -1]) + 1e-3))
        # global error within a modest multiple of the tolerance
        assert err < 100 * rtol, (method, rtol, err)
    assert sol.t_final == pytest.approx(T)


def test_save_times_hit_exactly_and_dense_observables():
    prob = _flow_problem()
    ts = np.array([0.0, 0.5, 1.0, 2.0, 5.0])
    sol = fs.solve(prob, "dopri5", t_end=5.0, save_at=ts, progress=False)
    np.testing.assert_array_equal(sol.t, ts)
    for i, t in enumerate(ts[1:], 1):
        sub = fs.solve(prob, "dopri5", t_end=t, save_at=[0.0, t], progress=False)
        assert sol.loss[i] == pytest.approx(sub.loss[-1], rel=1e-4)
    # running maximum is monotone and bounds the value
    assert np.all(np.diff(sol["rd_w_max"]) >= 0)
    assert np.all(sol["rd_w_max"] >= sol["rd_w"] - 1e-15)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bs3"])
def test_save_times_do_not_shorten_steps(method):
    # save times come from the continuous extension: the steps are those of a run with no
    # save times in between, and the saved observables match a tight reference
    prob = _flow_problem(gamma=0.75, activation="tanh")
    T, rtol = 20.0, 1e-6
    ts = np.linspace(0.0, T, 201)      # more save times than steps
    dense = fs.solve(prob, method, rtol=rtol, atol=1e-9, t_end=T, save_at=ts, progress=False)
    bare = fs.solve(prob, method, rtol=rtol, atol=1e-9, t_end=T, save_at=[0.0], progress=False)
    assert dense.stats.steps == bare.stats.steps < len(ts)
    assert dense.stats.nfev == bare.stats.nfev
    np.testing.assert_array_equal(dense.y_final, bare.y_final)
    np.testing.assert_array_equal(dense.t, ts)
    ref = fs.solve(prob, "dop853", rtol=1e-12, atol=1e-14, t_end=T, save_at=ts, progress=False)
    assert np.max(np.abs(dense.loss / ref.loss - 1)) < 100 * rtol
    np.testing.assert_allclose(dense["rd_w"], ref["rd_w"], rtol=100 * rtol)


def test_gd_with_small_step_converges_to_the_flow():
    prob = _flow_problem(gamma=0.75, activation="tanh")
    T = 5.0
    ref = fs.solve(prob, "dop853", rtol=1e-11, atol=1e-13, t_end=T, progress=False).y_final
    errs = []
    for dt in (T / 200, T / 400, T / 800):
        sol = fs.solve(prob, "gd", dt=dt, t_end=T, progress=False)
        assert sol.stats.nfev == sol.stats.steps + 1
        errs.append(np.max(np.abs(sol.y_final - ref)))
    # first order in the learning rate
    assert 1.7 < errs[0] / errs[1] < 2.3 and 1.7 < errs[1] / errs[2] < 2.3
    # the learning-rate form is the same method
    lr = prob.model.scaling.lr_from_step(T / 200)
    sol_lr = fs.solve(prob, "gd", lr=lr, t_end=T, progress=False)
    assert np.max(np.abs(sol_lr.y_final - ref)) == pytest.approx(errs[0])
    assert sol_lr.options["lr"] == pytest.approx(lr)


def test_stop_at_loss_locates_the_crossing():
    prob = _flow_problem(gamma=0.5, m=200)
    tol = 1e-4
    sol = fs.solve(prob, "dopri5", rtol=1e-7, atol=1e-10, stop_at_loss=tol, progress=False)
    assert sol.status is fs.Status.SUCCESS and "loss" in sol.message
    assert sol.final["loss"] == pytest.approx(tol, rel=1e-4)
    # the loss just before the final time is above the tolerance
    assert sol.loss[-2] > tol
    # independent check: integrate to the located time and evaluate the loss
    again = fs.solve(prob, "tsit5", rtol=1e-8, atol=1e-11, t_end=sol.t_final, progress=False)
    assert again.final["loss"] == pytest.approx(tol, rel=1e-3)
    # saved points before the crossing, from the continuous extension, lie above it
    saved = fs.solve(prob, "dopri5", rtol=1e-7, atol=1e-10, stop_at_loss=tol,
                     save_at=np.linspace(0, 2 * sol.t_final, 400), progress=False)
    assert saved.t_final == pytest.approx(sol.t_final, rel=1e-6)
    assert np.all(saved.loss[:-1] > tol) and np.all(np.diff(saved.t) > 0)
    # gd stops at the first step below the tolerance
    gd = fs.solve(prob, "gd", dt=0.5, stop_at_loss=tol, progress=False)
    assert gd.final["loss"] <= tol and gd.loss[-2] > tol or gd.t[-2] < gd.t_final


def test_scipy_methods_behind_the_same_interface():
    prob = _flow_problem(gamma=0.75, activation="tanh")
    ref = fs.solve(prob, "dop853", rtol=1e-11, atol=1e-13, t_end=10.0, progress=False)
    for m in ("scipy:RK45", "scipy:DOP853"):
        sol = fs.solve(prob, m, rtol=1e-8, atol=1e-11, t_end=10.0, save_at=ref.t,
                       progress=False)
        assert sol.status is fs.Status.SUCCESS
        np.testing.assert_allclose(sol.loss, ref.loss, rtol=1e-5)
        assert sol.stats.nfev > 0


def test_blow_up_keeps_the_trajectory():
    prob = _flow_problem(gamma=0.5, m=50, activation="linear")
    sol = fs.solve(prob, "gd", dt=30.0, t_end=1e6, progress=False)
    assert sol.status is fs.Status.NON_FINITE
    assert "non-finite" in sol.message
    assert np.isfinite(sol.y_final).all() and len(sol.t) >= 2
    assert np.isfinite(sol.loss).all()
    ds = sol.to_xarray()
    assert ds.attrs["status"] == "non-finite state"


def test_max_steps_status():
    prob = _flow_problem()
    sol = fs.solve(prob, "dopri5", t_end=1e6, max_steps=5, progress=False)
    assert sol.status is fs.Status.MAX_STEPS and sol.stats.steps == 5
    assert "max_steps = 5" in sol.message


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="rk45"), "unknown method 'rk45'"),
    (dict(method="dopri5", rtol=0.0, t_end=1.0), "rtol must be a positive finite number, got 0"),
    (dict(method="dopri5", rtol=-1e-3, t_end=1.0), "rtol"),
    (dict(method="dopri5", atol=-1.0, t_end=1.0), "atol"),
    (dict(method="dopri5"), "t_end is required"),
    (dict(method="gd", t_end=1.0), "give dt"),
    (dict(method="dopri5", t_end=1.0, lr=0.1), "lr is for method 'gd'"),
    (dict(method="dopri5", t_end=1.0, save_at=[0.0, 2.0, 1.0]), "save_at"),
    (dict(method="dopri5", t_end=1.0, max_steps=0), "max_steps"),
    (dict(method="dopri5", t_end=1.0, stop_at_loss=-1.0), "stop_at_loss"),
])
def test_bad_solver_input(kwargs, match):
    prob = _flow_problem(m=5)
    with pytest.raises(fs.ConfigError, match=match):
        fs.solve(prob, progress=False, **kwargs)
