"""The cupy backend in lockstep with the NumPy reference backend.

Everything but the first test needs CuPy and a CUDA device (skipped otherwise). Kernels
compile with NVRTC on first use (CuPy caches them on disk).
"""

import numpy as np
import pytest

import flowsolve as fs
from flowsolve.backends import NumpyBackend, get_backend
from flowsolve.backends.cupy_backend import MAX_FUSED_N, CupyBackend
from flowsolve.solvers.tableaus import get_tableau

TOL = {"float64": 1e-12, "float32": 1e-5}
ACTIVATIONS = sorted(fs.ACTIVATIONS)


def _cupy_backend_or_reason():
    try:
        return CupyBackend(), None
    except fs.BackendUnavailable as exc:
        return None, str(exc)


@pytest.fixture(scope="module")
def be():
    """The cupy backend; skips without CuPy or without a CUDA device."""
    pytest.importorskip("cupy")
    backend, why = _cupy_backend_or_reason()
    if backend is None:
        pytest.skip(why)
    return backend


def test_unavailable_cleanly_without_cupy_or_device():
    """Without CuPy (or without a device) asking for cupy raises BackendUnavailable (an
    ImportError) naming cupy, and the backend is not listed; with both it is listed."""
    backend, _ = _cupy_backend_or_reason()
    if backend is not None:
        assert "cupy" in fs.backends.available_backends()
        assert get_backend("cupy").name == "cupy"
        return
    with pytest.raises(fs.BackendUnavailable, match="(?i)cupy") as info:
        get_backend("cupy")
    assert isinstance(info.value, ImportError)
    assert "cupy" not in fs.backends.available_backends()
    assert "numpy" in fs.backends.available_backends()


def test_bad_options(be):
    with pytest.raises(fs.ConfigError, match="path"):
        CupyBackend(path="blas")
    with pytest.raises(fs.ConfigError, match="blocks_per_sm"):
        CupyBackend(blocks_per_sm=0)


# -- helpers ----------------------------------------------------------------------------
def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))


def _model(m, act, asi=True, gamma=0.8):
    s = fs.Scaling.from_gammas(gamma=gamma, gamma_prime=0.0, width=m)
    return fs.TwoLayer(m, s, activation=act, asi=asi)


def _perturbed(prob, seed=1, scale=0.3):
    y = prob.y0_host + scale * np.random.default_rng(seed).standard_normal(prob.y0.shape)
    return y.astype(prob.dtype)


def _compare_rhs(model, data, dtype, backend, blocks):
    """RHS, loss and relative changes on ``backend`` against the NumPy backend at a
    perturbed state (ASI copies no longer cancel); the derivative compared blockwise,
    relative to each block's largest entry."""
    ref = fs.Problem(model, data, seed=3, backend="numpy", dtype=dtype)
    gpu = fs.Problem(model, data, seed=3, backend=backend, dtype=dtype)
    y = _perturbed(ref)
    yd = gpu.backend.asarray(y, dtype)
    o_ref, o_gpu = np.empty_like(y), gpu.backend.empty(y.shape, dtype)
    l_ref, l_gpu = ref.rhs_into(y, o_ref), gpu.rhs_into(yd, o_gpu)
    tol = TOL[dtype]
    assert isinstance(l_gpu, float)
    assert o_gpu.dtype == np.dtype(dtype)
    assert abs(l_gpu - l_ref) <= tol * l_ref
    assert abs(gpu.loss(yd) - ref.loss(y)) <= tol * l_ref
    o = gpu.backend.to_numpy(o_gpu)
    for sl in blocks:
        scale = np.abs(o_ref[sl]).max()
        err = np.abs(o[sl].astype(float) - o_ref[sl].astype(float)).max()
        assert err <= tol * scale, (sl, err, scale)
        if scale == 0:
            assert not o[sl].any()
    r_ref, r_gpu = ref.relative_changes(y), gpu.relative_changes(yd)
    for k, v in r_ref.items():
        assert r_gpu[k] == pytest.approx(v, rel=10 * tol)
    # Problem.rhs takes host arrays too (copied to the device)
    np.testing.assert_array_equal(gpu.backend.to_numpy(gpu.rhs(0.0, y)), o)


def _two_layer_blocks(model):
    M = model.n_neurons
    return slice(0, M), slice(M, None)


# -- two-layer right-hand side ------------------------------------------------------------
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("asi", [False, True])
def test_two_layer_fused_lockstep_float64(be, act, d, asi):
    model = _model(300, act, asi=asi)
    data = fs.datasets.four_points() if d == 1 else _data(4, d)
    assert be.kernel_plan(model, data) == "fused"
    _compare_rhs(model, data, "float64", be, _two_layer_blocks(model))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("d", [1, 3])
def test_two_layer_fused_lockstep_float32(be, act, d):
    model = _model(300, act)
    data = fs.datasets.four_points() if d == 1 else _data(4, d, seed=5)
    _compare_rhs(model, data, "float32", be, _two_layer_blocks(model))


@pytest.mark.parametrize("n,d", [(1, 1), (7, 2), (MAX_FUSED_N, 8)])
@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_two_layer_fused_other_shapes(be, n, d, act):
    """n from 1 to MAX_FUSED_N (softplus(0) != 0: nothing may pad the samples), with a
    grid small enough that every thread takes several neurons."""
    small_grid = CupyBackend(blocks_per_sm=1)
    model = _model(20_001, act)
    assert model.n_neurons > small_grid.max_blocks * 256
    _compare_rhs(model, _data(n, d, seed=n), "float64", small_grid, _two_layer_blocks(model))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_two_layer_fallback_lockstep(be, dtype, act):
    """n > MAX_FUSED_N: the model's own code on CuPy arrays (cuBLAS)."""
    model, data = _model(200, act), _data(MAX_FUSED_N + 8, 5, seed=2)
    assert be.kernel_plan(model, data) == "xp"
    _compare_rhs(model, data, dtype, be, _two_layer_blocks(model))
    with pytest.raises(fs.ConfigError, match="at most"):
        CupyBackend(path="fused").make_rhs(model, data, np.float64)


def test_xp_path_option(be):
    model, data = _model(100, "relu"), fs.datasets.four_points()
    xp_be = CupyBackend(path="xp")
    assert xp_be.kernel_plan(model, data) == "xp"
    _compare_rhs(model, data, "float64", xp_be, _two_layer_blocks(model))


def test_fused_rhs_rejects_wrong_state(be):
    model, data = _model(10, "relu"), fs.datasets.four_points()
    rhs = be.make_rhs(model, data, np.float64)
    y = be.xp.zeros(model.state_size(1) + 1)
    with pytest.raises(fs.ConfigError, match="state"):
        rhs(y, be.xp.empty_like(y))


# -- three-layer model --------------------------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("asi,frozen", [(False, ()), (True, ()), (True, ("w2",))])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_three_layer_lockstep(be, act, asi, frozen, dtype):
    model = fs.ThreeLayer(width=40, width2=24, activation=act, asi=asi, frozen=frozen)
    data = _data(5, 3)
    assert be.kernel_plan(model, data) == "xp"
    n1, n2, _ = model.sizes(data.d)
    _compare_rhs(model, data, dtype, be,
                 (slice(0, n1), slice(n1, n1 + n2), slice(n1 + n2, None)))


# -- stage arithmetic ---------------------------------------------------------------------
def _stage_arrays(rng, rows, N, dtype):
    K = rng.standard_normal((rows, N)).astype(dtype)
    y = rng.standard_normal(N).astype(dtype)
    y_new = (y + 1e-3 * rng.standard_normal(N)).astype(dtype)
    ref = (y + 1e-2 * rng.standard_normal(N)).astype(dtype)
    return K, y, y_new, ref


@pytest.mark.parametrize("method", ["dopri5", "dop853", "bs3"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("N", [1, 5003, 3_000_017])
def test_stage_arithmetic_lockstep(be, method, dtype, N, rng):
    """combine and error_norm (plain, with DOP853's e3, with ref, with keep) against the
    NumPy backend on the same values in float64 (the kernels accumulate in float64; NumPy's
    float32 sums over 3e6 entries would be the less accurate side); N = 3e6 takes several
    grid-stride rounds and many reduction blocks."""
    tab = get_tableau(method)
    arrays = _stage_arrays(rng, tab.stages + 1, N, dtype)
    K, y, y_new, ref = (a.astype(np.float64) for a in arrays)         # exact copies
    dK, dy, dy_new, dref = (be.asarray(a, dtype) for a in arrays)
    npb = NumpyBackend()
    tol = 1e-13 if dtype == "float64" else 1e-6     # float32: the result's rounding
    h = 0.137
    dense = tab.dense_weights(0.3) if tab.dense is not None else tab.b
    for coeffs in list(tab.a[1:]) + [tab.b, dense, (0.0, 0.0)]:
        o1, o2 = np.empty_like(y), be.empty(y.shape, dtype)
        npb.combine(o1, y, h, K, coeffs)
        assert be.combine(o2, dy, h, dK, coeffs) is o2
        assert np.abs(o1 - be.to_numpy(o2)).max() <= tol * np.abs(o1).max()
    for r in (None, "ref"):
        for e3 in (None, tab.e3):
            for rt, at in ((1e-6, 1e-9), (1e-3, 1e-2)):
                e1 = npb.error_norm(y, y_new, h, K, tab.e, rt, at, e3,
                                    None if r is None else ref)
                e2 = be.error_norm(dy, dy_new, h, dK, tab.e, rt, at, e3,
                                   None if r is None else dref)
                assert type(e2) is float
                assert e1 > 0 and abs(e1 - e2) <= 1e-12 * e1, (r, e3, e1, e2)
    # with components left out (the sliding method's event neurons)
    keep = rng.random(N) > 0.3
    keep[:100] = False
    if keep.any():
        K[:, :100] = (K[:, :100] * 1e6).astype(dtype)    # large errors must not count
        dK = be.asarray(K, dtype)
        for e3 in (None, tab.e3):
            e1 = npb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, e3, None, keep=keep)
            e2 = be.error_norm(dy, dy_new, h, dK, tab.e, 1e-6, 1e-9, e3, None,
                               keep=be.asarray(keep, np.bool_))
            full = npb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, e3, None)
            assert 0 < e1 < 1e-3 * full and abs(e1 - e2) <= 1e-12 * e1
    none = be.xp.zeros(N, dtype=bool)
    assert be.error_norm(dy, dy_new, h, dK, tab.e, 1e-6, 1e-9, keep=none) == 0.0
    assert be.error_norm(dy, dy_new, h, dK, tab.e, 1e-6, 1e-9, tab.e3, keep=none) == 0.0


def test_reductions_are_deterministic(be, rng):
    N = 2_000_003
    K, y, y_new, _ = (be.asarray(a) for a in _stage_arrays(rng, 8, N, np.float64))
    tab = get_tableau("dop853")
    runs = {be.error_norm(y, y_new, 0.1, K, tab.e, 1e-6, 1e-9, tab.e3) for _ in range(5)}
    assert len(runs) == 1
    assert len({be.diff_norms(y, y_new) for _ in range(5)}) == 1


def test_combine_in_place_and_all_finite(be, rng):
    K = be.asarray(rng.standard_normal((3, 100_000)))
    y = be.asarray(rng.standard_normal(100_000))
    expect = be.to_numpy(y + 0.5 * (2 * K[0] - K[2]))
    be.combine(y, y, 0.5, K, (2.0, 0.0, -1.0))
    np.testing.assert_allclose(be.to_numpy(y), expect, rtol=1e-14, atol=1e-14)
    for dtype in ("float64", "float32"):
        z0 = y.astype(dtype)
        assert be.all_finite(z0)
        for pos in (0, 517, 99_999):
            for bad in (np.nan, np.inf, -np.inf):
                z = z0.copy()
                z[pos] = bad
                assert not be.all_finite(z)
    assert be.all_finite(K) and not be.all_finite(K[:, ::2] * np.inf)    # 2-D, strided


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_diff_norms_match_numpy(be, dtype, rng):
    from flowsolve.models._norms import diff_norms
    y0 = rng.standard_normal(300_011).astype(dtype)
    y = (y0 + 0.01 * rng.standard_normal(y0.shape)).astype(dtype)
    d_ref, b_ref = diff_norms(np, y, y0)
    d, b = be.diff_norms(be.asarray(y, dtype), be.asarray(y0, dtype))
    assert type(d) is float and type(b) is float
    assert d == pytest.approx(d_ref, rel=1e-12) and b == pytest.approx(b_ref, rel=1e-12)


def test_non_contiguous_arrays_rejected(be):
    K = be.xp.zeros((3, 10))
    with pytest.raises(fs.ConfigError, match="contiguous"):
        be.combine(be.xp.empty(5), K[0, ::2], 1.0, K, (1.0,))


# -- whole solves -------------------------------------------------------------------------
@pytest.mark.parametrize("method,error_norm", [("dopri5", "state"), ("dop853", "displacement"),
                                               ("tsit5", "state")])
def test_solve_same_trajectory_as_numpy(be, method, error_norm):
    """A smooth flow (tanh; ReLU's kinks make the step sequence chaotic in round-off),
    with the loss event located by re-stepping."""
    model = fs.TwoLayer(200, fs.Scaling.from_gammas(gamma=1.0, gamma_prime=0.0, width=200),
                        activation="tanh", asi=True)
    data = fs.datasets.four_points()
    kw = {"rtol": 1e-8, "atol": 1e-11, "t_end": 1e3, "stop_at_loss": 1e-5, "progress": False,
          "error_norm": error_norm, "snapshots": [1.0]}
    s_gpu = fs.solve(fs.Problem(model, data, seed=0, backend="cupy"), method, **kw)
    s_np = fs.solve(fs.Problem(model, data, seed=0, backend="numpy"), method, **kw)
    assert s_gpu.problem.backend.name == "cupy"
    assert s_gpu.status == s_np.status
    assert s_gpu.stats.steps == s_np.stats.steps and s_gpu.stats.nfev == s_np.stats.nfev
    np.testing.assert_allclose(s_gpu.t, s_np.t, rtol=1e-9)
    for k in ("loss", "rd_w", "rd_a", "rd_theta_max"):
        np.testing.assert_allclose(s_gpu[k], s_np[k], rtol=1e-7, atol=1e-12)
    assert isinstance(s_gpu.y_final, np.ndarray)
    np.testing.assert_allclose(s_gpu.y_final, s_np.y_final, rtol=0, atol=1e-8)
    np.testing.assert_allclose(s_gpu.snapshots[0][1], s_np.snapshots[0][1], rtol=0, atol=1e-8)


def test_relu_solve_close_to_numpy(be):
    """The benchmark's problem (four points, gamma = 0.5, ASI ReLU), short horizon."""
    model = _model(64, "relu", gamma=0.5)
    data = fs.datasets.four_points()
    kw = {"rtol": 1e-8, "atol": 1e-11, "t_end": 5.0, "progress": False}
    s_gpu = fs.solve(fs.Problem(model, data, seed=0, backend=be), "dopri5", **kw)
    s_np = fs.solve(fs.Problem(model, data, seed=0, backend="numpy"), "dopri5", **kw)
    assert s_gpu.stats.steps == s_np.stats.steps
    np.testing.assert_allclose(s_gpu.y_final, s_np.y_final, rtol=0, atol=1e-8)


def test_three_layer_and_fixed_step_solves(be):
    model = fs.ThreeLayer(width=20, activation="tanh", asi=True)
    data = _data(5, 2)
    kw = {"t_end": 5.0, "progress": False}
    a = fs.solve(fs.Problem(model, data, seed=1, backend="cupy"), "dopri5", rtol=1e-8,
                 atol=1e-11, **kw)
    b = fs.solve(fs.Problem(model, data, seed=1, backend="numpy"), "dopri5", rtol=1e-8,
                 atol=1e-11, **kw)
    assert a.stats.steps == b.stats.steps
    np.testing.assert_allclose(a.y_final, b.y_final, rtol=0, atol=1e-8)
    g = fs.solve(fs.Problem(_model(50, "relu"), fs.datasets.four_points(), seed=1,
                            backend="cupy"), "gd", dt=0.05, **kw)
    h = fs.solve(fs.Problem(_model(50, "relu"), fs.datasets.four_points(), seed=1,
                            backend="numpy"), "gd", dt=0.05, **kw)
    assert g.stats.steps == h.stats.steps == 100
    np.testing.assert_allclose(g.y_final, h.y_final, rtol=0, atol=1e-10)


def test_float32_solve_tracks_float64(be):
    model, data = _model(200, "relu"), fs.datasets.four_points()
    kw = {"rtol": 1e-4, "atol": 1e-6, "t_end": 50.0, "progress": False}
    a = fs.solve(fs.Problem(model, data, seed=0, backend="cupy", dtype="float32"), "dopri5",
                 **kw)
    b = fs.solve(fs.Problem(model, data, seed=0, backend="cupy"), "dopri5", **kw)
    assert a.status == b.status
    assert a.final["loss"] == pytest.approx(b.final["loss"], rel=1e-2)


@pytest.mark.parametrize("method", ["scipy:RK45", "auto", "sliding", "expgn2", "expgn3"])
def test_other_methods_run_on_cupy(be, method):
    """SciPy's solvers (NumPy states, copied to the device for each RHS) and the
    structure-aware methods (the model's CuPy code around the backend's stages)."""
    model = _model(50, "tanh" if method.startswith("expgn") else "relu", gamma=0.5)
    data = fs.datasets.four_points()
    kw = {"rtol": 1e-9, "atol": 1e-12, "t_end": 1.0, "progress": False}
    a = fs.solve(fs.Problem(model, data, seed=0, backend="cupy"), method, **kw)
    b = fs.solve(fs.Problem(model, data, seed=0, backend="numpy"), method, **kw)
    assert a.status == b.status and a.stats.method == b.stats.method
    np.testing.assert_allclose(a.y_final, b.y_final, rtol=0, atol=1e-7)
    for k in ("loss", "rd_w", "rd_a"):
        assert a.final[k] == pytest.approx(b.final[k], rel=1e-6)


def test_sliding_events_on_cupy_follow_numpy(be):
    """The condensed four-point problem through its switching events: on cupy the event
    neurons are re-integrated on the host (``switching_host``); same steps and events as
    the NumPy reference, same state."""
    m = 20
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(1.75, 0.0, m), asi=True)
    prob = fs.Problem(model, fs.datasets.four_points(), seed=3, backend=be)
    from flowsolve.solvers.auto import _switching
    assert _switching(prob).host is not None
    sols = [fs.solve(fs.Problem(model, fs.datasets.four_points(), seed=3, backend=b),
                     "sliding", rtol=1e-8, atol=1e-8, t_end=4000.0, progress=False)
            for b in ("numpy", be)]
    a, b = sols
    assert a.status.ok and b.status.ok and a.stats.extra["event_neurons"] > 0
    assert (a.stats.steps, a.stats.extra["event_neurons"]) == \
        (b.stats.steps, b.stats.extra["event_neurons"])
    np.testing.assert_allclose(b.y_final, a.y_final, rtol=1e-8, atol=1e-8)
