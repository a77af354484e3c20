"""The numba backend in lockstep with the NumPy reference backend.

Kernels compile on first use and are cached on disk (``cache=True``), so only the first
run of this file pays for compilation.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import flowsolve as fs
from flowsolve.backends import NumpyBackend, get_backend
from flowsolve.backends.numba_backend import NumbaBackend
from flowsolve.solvers.tableaus import get_tableau

numba = pytest.importorskip("numba")

TOL = {"float64": 1e-12, "float32": 1e-5}


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))


def _model(m, act, asi=True):
    s = fs.Scaling.from_gammas(gamma=1.2, gamma_prime=0.3, width=m)
    return fs.TwoLayer(width=m, scaling=s, activation=act, asi=asi)


def _perturbed(prob, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    y = prob.y0_host + scale * rng.standard_normal(prob.y0.shape)
    return y.astype(prob.dtype)


def _compare(model, data, dtype, backend):
    ref = fs.Problem(model, data, seed=3, backend="numpy", dtype=dtype)
    nb = fs.Problem(model, data, seed=3, backend=backend, dtype=dtype)
    y = _perturbed(ref)              # ASI copies no longer cancel: e != -Y
    o_ref, o_nb = np.empty_like(y), np.empty_like(y)
    l_ref, l_nb = ref.rhs_into(y, o_ref), nb.rhs_into(y, o_nb)
    tol = TOL[dtype]
    assert o_nb.dtype == np.dtype(dtype)
    assert abs(l_nb - l_ref) <= tol * l_ref
    assert abs(nb.loss(y) - ref.loss(y)) <= tol * l_ref
    # componentwise, relative to the size of each block of the derivative
    M = model.n_neurons
    for sl in (slice(0, M), slice(M, None)):
        err = np.abs(o_nb[sl].astype(float) - o_ref[sl].astype(float)).max()
        assert err <= tol * np.abs(o_ref[sl]).max(), (sl, err)
    return o_ref


# -- the right-hand side ---------------------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "linear", "tanh"])
@pytest.mark.parametrize("n,d", [(4, 1), (64, 8)])
def test_rhs_lockstep_float64(act, n, d):
    model, data = _model(120, act), _data(n, d)
    assert NumbaBackend().kernel_plan(model, data) == ("fused" if n == 4 else "blas")
    _compare(model, data, "float64", "numba")


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("n,d", [(4, 8), (64, 1)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rhs_lockstep_both_paths(act, n, d, dtype):
    """Each kernel family on shapes it would not be chosen for, in both precisions."""
    model, data = _model(300, act, asi=False), _data(n, d, seed=2)
    for path in ("fused", "blas"):
        _compare(model, data, dtype, NumbaBackend(path=path))
    _compare(model, data, dtype, NumbaBackend(path="fused", parallel_threshold=1,
                                              threads=numba.config.NUMBA_NUM_THREADS))
    _compare(model, data, dtype, NumbaBackend(path="blas", threads=1))   # n <= 8: row kernels


@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_rhs_d1_samples_not_a_multiple_of_four(act):
    """The d = 1 kernel takes samples four at a time: n = 7 pads one zero sample, which
    must not leak into the outputs (softplus(0) != 0), serial and parallel."""
    model, data = _model(700, act), _data(7, 1, seed=4)
    _compare(model, data, "float64", "numba")
    _compare(model, data, "float64",
             NumbaBackend(parallel_threshold=1, threads=numba.config.NUMBA_NUM_THREADS))


@pytest.mark.parametrize("act", ["softplus", "x2tanh", "gelu"])
def test_rhs_other_activations(act):
    _compare(_model(50, act), _data(4, 1), "float64", "numba")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parallel_kernels_match_serial(dtype):
    """The prange kernels (forced by a threshold of 1) agree with the serial ones."""
    model, data = _model(1000, "relu"), fs.datasets.four_points()
    par = NumbaBackend(parallel_threshold=1, threads=numba.config.NUMBA_NUM_THREADS)
    o_ref = _compare(model, data, dtype, par)
    ser = fs.Problem(model, data, seed=3, backend=NumbaBackend(threads=1), dtype=dtype)
    y = _perturbed(ser)
    o = np.empty_like(y)
    ser.rhs_into(y, o)
    assert np.abs(o - o_ref).max() <= TOL[dtype] * np.abs(o_ref).max()


@pytest.mark.parametrize("n", [64, 4])
def test_blas_path_in_blocks(monkeypatch, n):
    """The BLAS path recomputes pre-activations block by block when they do not fit; with
    n <= SMALL_N its products are Numba row kernels (serial, and prange over rows)."""
    import flowsolve.backends.numba_backend as nbmod

    monkeypatch.setattr(nbmod, "_BLAS_BLOCK", n * 300)      # 300 rows of n samples
    model, data = _model(500, "relu"), _data(n, 8)           # M = 1000 neurons, 4 blocks
    off = 10**12                                             # not the threaded path
    for be in (NumbaBackend(path="blas", blas_threshold=off),
               NumbaBackend(path="blas", threads=1),
               NumbaBackend(path="blas", parallel_threshold=1, blas_threshold=off,
                            threads=numba.config.NUMBA_NUM_THREADS)):
        _compare(model, data, "float64", be)


@pytest.mark.parametrize("store", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_threaded_blas_path(monkeypatch, store, dtype, act):
    """Large m, n > SMALL_N: Numba's threads each run single-threaded BLAS on sub-blocks of
    rows, keeping every pre-activation (store) or recomputing them in the backward pass;
    uneven chunks and a ragged last sub-block."""
    import flowsolve.backends.numba_backend as nbmod

    monkeypatch.setattr(nbmod, "_SUB_BYTES", 16 * 8 * 20)         # 20-row sub-blocks
    if not store:
        monkeypatch.setattr(nbmod, "_STORE_BYTES", 0)
    model, data = _model(501, act), _data(16, 8)                  # M = 1002 neurons
    be = NumbaBackend(blas_threshold=1, threads=numba.config.NUMBA_NUM_THREADS)
    _compare(model, data, dtype, be)
    k = nbmod._TwoLayerKernels(be, model, data, np.dtype(dtype))
    y0 = fs.Problem(model, data, backend=be, dtype=dtype).y0
    k.rhs_blas(y0, np.empty_like(y0))
    sub = 20 * 8 // np.dtype(dtype).itemsize
    if be.threads > 1:
        assert k._pre_all.shape[0] == (k.M if store else be.threads * sub)
    else:                       # one thread (NUMBA_NUM_THREADS=1): the serial blocked path
        assert k._pre_all is None


def test_derivative_matches_finite_differences():
    """Independent of the NumPy backend: dy/dt = -diag(c) grad R by central differences."""
    model, data = _model(6, "tanh", asi=False), _data(4, 2)
    prob = fs.Problem(model, data, seed=0, backend="numba")
    y = _perturbed(prob)
    out = np.empty_like(y)
    prob.rhs_into(y, out)
    ca, cw = model.mobilities()
    M = model.n_neurons
    mob = np.r_[np.full(M, ca), np.full(y.size - M, cw)]
    h = 1e-6
    for j in range(y.size):
        e = np.zeros_like(y)
        e[j] = h
        g = (prob.loss(y + e) - prob.loss(y - e)) / (2 * h)
        assert abs(-mob[j] * g - out[j]) <= 1e-6 * (abs(out[j]) + np.abs(out).max() * 1e-3)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("asi,frozen", [(False, ()), (True, ()), (True, ("w2",)),
                                         (False, ("w1", "a"))])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_three_layer_lockstep(act, asi, frozen, dtype):
    model = fs.ThreeLayer(width=40, width2=24, activation=act, asi=asi, frozen=frozen)
    data = _data(5, 3)
    assert NumbaBackend().kernel_plan(model, data) == "three_layer"
    ref = fs.Problem(model, data, seed=2, backend="numpy", dtype=dtype)
    nb = fs.Problem(model, data, seed=2, backend="numba", dtype=dtype)
    y = _perturbed(ref)
    o_ref, o_nb = np.empty_like(y), np.empty_like(y)
    l_ref, l_nb = ref.rhs_into(y, o_ref), nb.rhs_into(y, o_nb)
    tol = TOL[dtype]
    assert abs(l_nb - l_ref) <= tol * l_ref
    assert abs(nb.loss(y) - ref.loss(y)) <= tol * l_ref
    n1, n2, _ = model.sizes(data.d)
    for sl in (slice(0, n1), slice(n1, n1 + n2), slice(n1 + n2, None)):
        scale = np.abs(o_ref[sl]).max()
        assert np.abs(o_nb[sl] - o_ref[sl]).max() <= tol * scale
        if scale == 0:
            assert not o_nb[sl].any()


# -- stage arithmetic ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dopri5", "dop853", "bs3"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threshold", [1, 10**9])
def test_stage_arithmetic_lockstep(method, dtype, threshold, rng):
    tab = get_tableau(method)
    N = 5003
    K = rng.standard_normal((tab.stages + 1, N)).astype(dtype)
    y = rng.standard_normal(N).astype(dtype)
    y_new = (y + 1e-3 * rng.standard_normal(N)).astype(dtype)
    ref = (y + 1e-2 * rng.standard_normal(N)).astype(dtype)
    npb, nbb = NumpyBackend(), NumbaBackend(stage_threshold=threshold)
    tol = TOL[dtype]
    h = 0.137
    for coeffs in list(tab.a[1:]) + [tab.b]:
        o1, o2 = np.empty_like(y), np.empty_like(y)
        npb.combine(o1, y, h, K, coeffs)
        nbb.combine(o2, y, h, K, coeffs)
        assert np.abs(o1 - o2).max() <= tol * np.abs(o1).max()
    for r in (None, ref):
        for rt, at in ((1e-6, 1e-9), (1e-3, 1e-2)):
            e1 = npb.error_norm(y, y_new, h, K, tab.e, rt, at, tab.e3, r)
            e2 = nbb.error_norm(y, y_new, h, K, tab.e, rt, at, tab.e3, r)
            assert e1 > 0 and abs(e1 - e2) <= 10 * tol * e1
    # with components left out (the sliding method's event neurons)
    keep = rng.random(N) > 0.3
    keep[:100] = False
    K[:, :100] *= 1e6                          # large errors there must not count
    e1 = npb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, tab.e3, None, keep=keep)
    e2 = nbb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, tab.e3, None, keep=keep)
    full = npb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, tab.e3, None)
    assert 0 < e1 < 1e-3 * full and abs(e1 - e2) <= 10 * tol * e1
    none = np.zeros(N, dtype=bool)
    assert npb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, keep=none) == 0.0
    assert nbb.error_norm(y, y_new, h, K, tab.e, 1e-6, 1e-9, keep=none) == 0.0


def test_combine_in_place_and_all_finite(rng):
    be = NumbaBackend(stage_threshold=1)
    K = rng.standard_normal((3, 1000))
    y = rng.standard_normal(1000)
    expect = y + 0.5 * (2 * K[0] - K[2])
    be.combine(y, y, 0.5, K, (2.0, 0.0, -1.0))
    np.testing.assert_allclose(y, expect, rtol=1e-14, atol=1e-14)
    for serial in (NumbaBackend(), be):
        assert serial.all_finite(y)
        for pos in (0, 517, 999):
            for bad in (np.nan, np.inf, -np.inf):
                z = y.copy()
                z[pos] = bad
                assert not serial.all_finite(z)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_diff_norms_match_numpy(dtype, rng):
    from flowsolve.models._norms import diff_norms
    y0 = rng.standard_normal(30_011).astype(dtype)
    y = (y0 + 0.01 * rng.standard_normal(y0.shape)).astype(dtype)
    d_ref, b_ref = diff_norms(np, y, y0)
    assert d_ref == pytest.approx(float(np.sum((y.astype(float) - y0.astype(float)) ** 2)),
                                  rel=1e-12)
    for be in (NumbaBackend(), NumbaBackend(stage_threshold=1)):   # serial, parallel
        d, b = be.diff_norms(y, y0)
        assert d == pytest.approx(d_ref, rel=1e-12) and b == pytest.approx(b_ref, rel=1e-12)


def test_relative_changes_same_on_both_backends():
    model, data = _model(50, "relu"), _data(4, 1)
    ref = fs.Problem(model, data, seed=3, backend="numpy")
    nb = fs.Problem(model, data, seed=3, backend="numba")
    y = _perturbed(ref)
    r1, r2 = ref.relative_changes(y), nb.relative_changes(y)
    assert r1["rd_w"] > 0.1
    for k in r1:
        assert r2[k] == pytest.approx(r1[k], rel=1e-12)


# -- whole solves -----------------------------------------------------------------------
def test_dopri5_trajectory_same_on_both_backends():
    """A smooth flow (tanh; ReLU's kinks make the step sequence chaotic in round-off)."""
    model = fs.TwoLayer(width=200, scaling=fs.Scaling.from_gammas(1.0, 0.0, width=200),
                        activation="tanh", asi=True)
    data = fs.datasets.four_points()
    kw = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-10, "t_end": 1e3, "stop_at_loss": 1e-5,
              "progress": False}
    p = fs.Problem(model, data, seed=0, backend="numba")
    s_nb = fs.solve(p, **kw)
    s_np = fs.solve(p, backend="numpy", **kw)
    assert s_nb.problem.backend.name == "numba" and s_np.problem.backend.name == "numpy"
    assert s_nb.status == s_np.status
    assert s_nb.stats.steps == s_np.stats.steps and s_nb.stats.nfev == s_np.stats.nfev
    np.testing.assert_allclose(s_nb.t, s_np.t, rtol=1e-9)
    for k in ("loss", "rd_w", "rd_a"):
        np.testing.assert_allclose(s_nb[k], s_np[k], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(s_nb.y_final, s_np.y_final, rtol=1e-7, atol=1e-9)


def test_gd_on_numba_matches_numpy():
    model = _model(300, "relu")
    data = fs.datasets.four_points()
    kw = {"method": "gd", "dt": 0.05, "t_end": 20.0, "progress": False}
    a = fs.solve(fs.Problem(model, data, seed=1, backend="numba"), **kw)
    b = fs.solve(fs.Problem(model, data, seed=1, backend="numpy"), **kw)
    assert a.stats.steps == b.stats.steps == 400
    np.testing.assert_allclose(a.y_final, b.y_final, rtol=1e-10, atol=1e-12)


def test_float32_solve_tracks_float64():
    model = _model(200, "relu")
    data = fs.datasets.four_points()
    kw = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-6, "t_end": 50.0, "progress": False}
    a = fs.solve(fs.Problem(model, data, seed=0, backend="numba", dtype="float32"), **kw)
    b = fs.solve(fs.Problem(model, data, seed=0, backend="numba"), **kw)
    assert a.y_final.dtype == np.float64
    np.testing.assert_allclose(a["loss"][-1], b["loss"][-1], rtol=1e-3)


# -- threads and options ----------------------------------------------------------------
def test_thread_option_sets_numba_threads():
    limit = numba.config.NUMBA_NUM_THREADS
    model, data = _model(2000, "relu"), fs.datasets.four_points()
    assert NumbaBackend(threads=1, parallel_threshold=1)._par(10**6, 1) == 0   # serial
    outs = []
    saved = numba.get_num_threads()
    try:
        for k in sorted({1, limit}):
            numba.set_num_threads(1)
            be = NumbaBackend(threads=k, parallel_threshold=1)
            assert be.threads == k
            p = fs.Problem(model, data, seed=0, backend=be)
            o = np.empty_like(p.y0)
            p.rhs_into(_perturbed(p), o)
            assert numba.get_num_threads() == k      # the launching thread's setting
            outs.append(o)
    finally:
        numba.set_num_threads(saved)
    np.testing.assert_allclose(outs[0], outs[-1], rtol=1e-12, atol=1e-15)


def test_blas_threads_limited_and_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library visible to threadpoolctl")
    with NumbaBackend(threads=1).blas_threads():
        assert set(blas_threads()) == {1}
    assert blas_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, "2", True])
def test_bad_thread_counts(bad):
    with pytest.raises(fs.ConfigError, match="threads"):
        NumbaBackend(threads=bad)


def test_bad_options():
    with pytest.raises(fs.ConfigError, match="path"):
        NumbaBackend(path="gpu")
    with pytest.raises(fs.ConfigError, match="parallel_threshold"):
        NumbaBackend(parallel_threshold=0)
    with pytest.raises(fs.ConfigError, match="blas_threshold must be a positive integer, got -3"):
        NumbaBackend(blas_threshold=-3)
    with pytest.raises(fs.ConfigError, match="threads"):
        get_backend("numba", threads=0)


def test_environment_sets_threads_and_wait_policy():
    """NUMBA_NUM_THREADS is followed; OpenMP threads spin briefly then sleep (bounded spin,
    PERFORMANCE.md pitfall 1) unless the user chose a wait policy or spin count."""
    code = ("import os, flowsolve as fs; b = fs.backends.get_backend('numba'); "
            "print(b.threads, os.environ.get('OMP_WAIT_POLICY'), "
            "os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["NUMBA_NUM_THREADS"] = "1"

    def run():
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stdout.split()

    assert run() == ["1", "PASSIVE", "10000"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert run() == ["1", "ACTIVE", "None"]
    del env["OMP_WAIT_POLICY"]
    env["GOMP_SPINCOUNT"] = "0"
    assert run() == ["1", "None", "0"]


def test_unknown_model_falls_back_with_warning():
    class Custom(fs.TwoLayer):
        name = "custom_two_layer"

    model, data = Custom(width=40, activation="relu", asi=True), fs.datasets.four_points()
    with pytest.warns(RuntimeWarning, match="NumPy code"):
        p = fs.Problem(model, data, seed=0, backend="numba")
    ref = fs.Problem(model, data, seed=0, backend="numpy")
    y = _perturbed(ref)
    o1, o2 = np.empty_like(y), np.empty_like(y)
    assert p.rhs_into(y, o1) == ref.rhs_into(y, o2)
    np.testing.assert_array_equal(o1, o2)

