"""The Numba backend: fused, cached CPU kernels for the right-hand sides and the RK stages.

Same arrays as the NumPy backend (``xp = numpy``); what changes is who does the work:

- two-layer RHS, d = 1 (any n): a fused streaming kernel (two passes over the neurons,
  no n x m temporaries) from :mod:`._nb_two_layer`, serial below ``parallel_threshold``
  neurons and ``prange`` above;
- two-layer RHS, d >= 2: BLAS for ``W Xs^T`` and ``G Xt`` (blocks of neurons), the
  activation, the output reduction and the error scaling fused in one pass around them
  (faster than the general-d fused kernel in every case measured); for n <= ``SMALL_N``
  samples the two skinny products run as Numba row kernels instead (1.3-1.9x faster than
  OpenBLAS at m = 1e5, d = 64; a tie at 1e4); from ``blas_threshold`` multiply-adds
  per product (n > ``SMALL_N``) Numba's threads each run single-threaded BLAS on
  L2-sized sub-blocks (1.2-2.8x faster than BLAS's own threads,
  ``benchmarks/blas_path.py``); below it the products run on one BLAS thread;
- the sliding method's switching structure: the compiled RHS on every neuron, the
  residual rate and the crossing test in one pass each (:meth:`switching_kernels`);
- three-layer RHS: BLAS for the three m x m products, the elementwise work around them
  fused into four passes (:mod:`._nb_three_layer`);
- every activation of :mod:`flowsolve.models.activations` has a kernel; a model without a
  kernel (an unknown model name, or an activation added later) falls back to the model's
  own NumPy code, with a warning saying so;
- ``combine`` / ``error_norm`` / ``all_finite`` / ``diff_norms`` are single fused passes
  (:mod:`._nb_stages`). Nothing in a d = 1 solve's step loop calls BLAS: an OpenBLAS
  call with two threads leaves its worker spinning for a while, and on two cores that
  worker starves Numba's threads (a dopri5 solve at m = 3e4 took 5.3 s instead of 0.28 s
  while the relative changes used ``numpy.dot``; docs/benchmarks.md).

Threads. The thread count is ``threads=`` if given, else Numba's (``NUMBA_NUM_THREADS``).
Two thread pools must not spin against each other on few cores (PERFORMANCE.md pitfall 1),
but threads that sleep at once pay a wake-up at every parallel region: on this VM a fully
passive wait (``OMP_WAIT_POLICY=PASSIVE`` alone) made the two-thread RHS at m = 1e5 take
0.66 ms against 0.15 ms with a bounded spin (0.25 ms serial; ``benchmarks/threads.py``), so
the parallel kernels were slower than the serial ones below m ~ 1e6. Importing this
module therefore bounds the spin instead: unless the user set ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT``, it sets ``OMP_WAIT_POLICY=PASSIVE`` (other OpenMP runtimes sleep)
with ``GOMP_SPINCOUNT=10000`` (GNU OpenMP, Numba's: idle threads spin ~0.1 ms, enough to
bridge the gap between the RHS and the stage kernels, then sleep). OpenBLAS, whose idle
worker spins after a two-thread call, never runs multithreaded between Numba's kernels:
the BLAS path calls it on one thread (inside Numba's ``prange`` on the threaded path),
the relative changes use :meth:`NumbaBackend.diff_norms`, and the sliding method holds it
on one thread (:meth:`NumbaBackend.quiet_blas`). The three-layer RHS keeps BLAS's threads
for its m x m products (limited to ``threads=`` when given). Measured side by side in
docs/benchmarks.md.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"      # before Numba's OpenMP runtime starts
    os.environ["GOMP_SPINCOUNT"] = "10000"         # spin ~0.1 ms, then sleep (module doc)

import numba

from ..errors import ConfigError
from . import _nb_stages as st
from . import _nb_switching as sw
from . import _nb_two_layer as tl
from ._nb_activations import CODES
from ._nb_three_layer import ThreeLayerKernels

__all__ = ["NumbaBackend"]

#: elements of a block of pre-activations on the BLAS path (32 MiB in float64)
_BLAS_BLOCK = 1 << 22
_NO_MASK = np.ones(1, dtype=np.bool_)     # placeholder when error_norm keeps everything
_NO_PAIRS = np.zeros(0, dtype=np.intp)    # no sliding pairs
#: up to this many samples the BLAS path's two products run as Numba row kernels
SMALL_N = 8
#: the threaded BLAS path keeps all pre-activations (M x n) up to this many bytes
_STORE_BYTES = 1 << 28
#: bytes of one sub-block of pre-activations on the threaded BLAS path (stays in L2)
_SUB_BYTES = 1 << 18


class _BlasThreads:
    """Context manager limiting the BLAS thread pools to ``n`` threads (threadpoolctl)."""

    _controllers = None

    def __init__(self, n):
        self.n = n
        self.saved = ()

    @classmethod
    def _libs(cls):
        if cls._controllers is None:
            try:
                # the BLAS Numba's np.dot calls (SciPy's), loaded before the scan
                import scipy.linalg.cython_blas  # noqa: F401
                from threadpoolctl import ThreadpoolController
                cls._controllers = ThreadpoolController().select(user_api="blas").lib_controllers
            except Exception:  # noqa: BLE001 - threadpoolctl missing or failing: no limit
                cls._controllers = []
        return cls._controllers

    def __enter__(self):
        libs = self._libs()
        self.saved = [(lc, lc.num_threads) for lc in libs]
        for lc in libs:
            lc.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        for lc, k in self.saved:
            lc.set_num_threads(k)
        return False


class NumbaBackend:
    """Fused Numba CPU kernels behind the backend protocol (see :mod:`flowsolve.backends`).

    Parameters
    ----------
    threads : int, optional
        Threads of the parallel kernels (and of BLAS on the BLAS path); default Numba's
        thread count, which follows ``NUMBA_NUM_THREADS``. At most
        ``numba.config.NUMBA_NUM_THREADS``.
    parallel_threshold : int
        Neurons from which the fused RHS kernel runs in parallel (serial below: waking the
        thread pool costs more than it saves).
    stage_threshold : int
        State length from which the stage kernels run in parallel.
    blas_threshold : int
        Multiply-adds of one product (neurons x samples x (d + 1)) from which the BLAS
        path (n > 8) runs on Numba's threads with single-threaded BLAS per thread; below
        it, one BLAS call per block on one thread (``benchmarks/blas_path.py``: the
        threaded path lost up to 1.15x at <= 3e5 and won 1.4-4.3x from 1.2e6).
    path : {"auto", "fused", "blas"}
        Two-layer RHS kernel family: ``auto`` takes the fused kernel for d = 1 (its
        single-sweep case) and BLAS for d >= 2 (measured faster there, docs/benchmarks.md).
    """

    name = "numba"
    xp = np

    def __init__(self, threads=None, parallel_threshold=30_000, stage_threshold=100_000,
                 path="auto", blas_threshold=500_000):
        limit = numba.config.NUMBA_NUM_THREADS
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) \
                    or not 1 <= threads <= limit:
                raise ConfigError(f"threads must be an integer from 1 to {limit} "
                                  f"(NUMBA_NUM_THREADS), got {threads!r}")
            threads = int(threads)
        self.user_threads = threads
        for label, v in (("parallel_threshold", parallel_threshold),
                         ("stage_threshold", stage_threshold),
                         ("blas_threshold", blas_threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{label} must be a positive integer, got {v!r}")
        if path not in ("auto", "fused", "blas"):
            raise ConfigError(f"path must be 'auto', 'fused' or 'blas', got {path!r}")
        self.parallel_threshold = int(parallel_threshold)
        self.stage_threshold = int(stage_threshold)
        self.blas_threshold = int(blas_threshold)
        self.path = path
        self._coef = {}

    # -- threads ---------------------------------------------------------------------
    @property
    def threads(self) -> int:
        """Threads the parallel kernels use."""
        return self.user_threads if self.user_threads is not None else numba.get_num_threads()

    def _par(self, size, threshold) -> int:
        """Number of chunks for a parallel kernel on ``size`` items, or 0 for serial."""
        if size < threshold:
            return 0
        k = self.threads
        if k < 2:
            return 0
        if self.user_threads is not None:
            numba.set_num_threads(k)
        return k

    def quiet_blas(self):
        """Context manager: BLAS on one thread, for NumPy code that runs between this
        backend's parallel kernels (an OpenBLAS call on two threads leaves its worker
        spinning against Numba's; the sliding method at m = 3e4 took 4.7 s instead of
        3.1 s)."""
        return _BlasThreads(1)

    def blas_threads(self):
        """Context manager: BLAS limited to ``threads`` (a no-op unless ``threads=`` was set)."""
        return _BlasThreads(self.user_threads) if self.user_threads is not None else _NoLimit()

    # -- arrays ----------------------------------------------------------------------
    def asarray(self, a, dtype=np.float64):
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    # -- model kernels ---------------------------------------------------------------
    def kernel_plan(self, model, data) -> str:
        """Which kernel :meth:`make_rhs` uses: ``fused`` or ``blas`` (two-layer),
        ``three_layer``, or ``numpy`` (the model's own code)."""
        name = getattr(model, "name", None)
        if name not in ("two_layer", "three_layer"):
            return "numpy"
        if getattr(model.activation, "name", None) not in CODES:
            return "numpy"
        if name == "three_layer":
            return "three_layer"
        if self.path != "auto":
            return self.path
        return "fused" if data.d == 1 else "blas"

    def _fallback(self, model, why):
        warnings.warn(f"numba backend: {why}; using the model's NumPy code instead",
                      RuntimeWarning, stacklevel=3)

    def make_rhs(self, model, data, dtype):
        """``rhs(y, out) -> loss`` for ``model`` on ``data`` in ``dtype`` (see the module doc)."""
        plan = self.kernel_plan(model, data)
        if plan == "numpy":
            self._fallback(model, self._why(model))
            return model.make_rhs(np, data, dtype)
        if plan == "three_layer":
            return ThreeLayerKernels(self, model, data, dtype,
                                     CODES[model.activation.name]).rhs
        k = _TwoLayerKernels(self, model, data, dtype)
        return k.rhs_blas if plan == "blas" else k.rhs_fused

    def make_loss(self, model, data, dtype):
        """``loss(y) -> float`` (one forward pass)."""
        plan = self.kernel_plan(model, data)
        if plan == "numpy":
            return model.make_loss(np, data, dtype)
        if plan == "three_layer":
            return ThreeLayerKernels(self, model, data, dtype,
                                     CODES[model.activation.name]).loss
        return _TwoLayerKernels(self, model, data, dtype).loss

    def switching_kernels(self, model, data, dtype):
        """Numba pieces for the sliding-mode flow of
        :class:`~flowsolve.models.two_layer_structure.Switching` (``rhs`` leaving the
        residual in ``last_r``, ``pre``, ``residual_rate``, ``crossings``), or None where
        no two-layer kernel applies."""
        plan = self.kernel_plan(model, data)
        if getattr(model, "name", None) != "two_layer" or plan not in ("fused", "blas"):
            return None
        k = _TwoLayerKernels(self, model, data, dtype)
        k.rhs = k.rhs_blas if plan == "blas" else k.rhs_fused
        k.plan = plan
        return k

    @staticmethod
    def _why(model):
        if getattr(model, "name", None) not in ("two_layer", "three_layer"):
            return f"no kernels for model {getattr(model, 'name', type(model).__name__)!r}"
        return f"no kernel for activation {model.activation.name!r}"

    # -- Runge-Kutta stage arithmetic ------------------------------------------------
    def _array(self, coeffs):
        key = id(coeffs)
        hit = self._coef.get(key)
        if hit is not None and hit[0] is coeffs:
            return hit[1]
        arr = np.ascontiguousarray(coeffs, dtype=np.float64).ravel()
        if isinstance(coeffs, tuple):
            self._coef[key] = (coeffs, arr)
        return arr

    def combine(self, out, y, h, K, coeffs):
        """``out = y + h sum_j coeffs[j] K[j]`` in one pass (K: (>= len(coeffs), N))."""
        c = self._array(coeffs)
        nc = self._par(y.shape[0], self.stage_threshold)
        if nc:
            st.combine_parallel(out, y, K, c, float(h), nc)
        else:
            st.combine_serial(out, y, K, c, float(h))
        return out

    def error_norm(self, y, y_new, h, K, e, rtol, atol, e3=None, ref=None, keep=None):
        """Scaled RMS norm of ``h sum_j e_j K[j]`` in one pass (same definition as NumPy's:
        scale ``atol + rtol max(|y - ref|, |y_new - ref|)``; DOP853's two estimates with
        ``e3``; only the components where ``keep`` is set, if given)."""
        ea = self._array(e)
        has_e3 = e3 is not None
        e3a = self._array(e3) if has_e3 else ea
        has_ref = ref is not None
        r = ref if has_ref else y
        has_keep = keep is not None
        kp = keep if has_keep else _NO_MASK
        N = int(np.count_nonzero(keep)) if has_keep else y.shape[0]
        if N == 0:
            return 0.0
        nc = self._par(y.shape[0], self.stage_threshold)
        if nc:
            n5, n3 = st.errsq_parallel(y, y_new, r, has_ref, K, ea, e3a, has_e3,
                                       float(rtol), float(atol), kp, has_keep, nc)
        else:
            n5, n3 = st.errsq_serial(y, y_new, r, has_ref, K, ea, e3a, has_e3,
                                     float(rtol), float(atol), kp, has_keep)
        if not has_e3:
            return abs(h) * math.sqrt(n5 / N)
        if n5 == 0.0 and n3 == 0.0:
            return 0.0
        return abs(h) * n5 / math.sqrt((n5 + 0.01 * n3) * N)

    def diff_norms(self, y, y0) -> tuple:
        """``(sum (y - y0)^2, sum y0^2)`` in float64, one pass (the relative changes the
        solver records after every step; no BLAS, see :mod:`._nb_stages`)."""
        nc = self._par(y.shape[0], self.stage_threshold)
        return st.diffsq_parallel(y, y0, nc) if nc else st.diffsq_serial(y, y0)

    def all_finite(self, a) -> bool:
        nc = self._par(a.shape[0], self.stage_threshold) if a.ndim == 1 else 0
        if a.ndim != 1:
            return bool(np.isfinite(a).all())
        return not (st.nonfinite_parallel(a, nc) if nc else st.nonfinite_serial(a))


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _TwoLayerKernels:
    """The two-layer RHS and loss of one (model, data, dtype), bound to Numba kernels."""

    def __init__(self, be, model, data, dtype):
        self.be = be
        dtype = np.dtype(dtype)
        n, D = data.n, data.d + 1
        cf, ca, cw, s = model.coefficients()
        xt = data.x_tilde()
        self.n, self.D, self.M = n, D, model.n_neurons
        self.xt = np.ascontiguousarray(xt, dtype=dtype)            # (n, D)
        self.xs = np.ascontiguousarray(s * xt, dtype=dtype)        # (n, D), scaled inputs
        self.xsT = np.ascontiguousarray(self.xs.T)                 # (D, n)
        self.xtT = np.ascontiguousarray(self.xt.T)                 # (D, n)
        self.Y = np.ascontiguousarray(data.y, dtype=np.float64)    # (n,)
        self.cf, self.ca_n, self.cw_n = float(cf), -float(ca) / n, -float(cw) / n
        self.kern = tl.kernels(CODES[model.activation.name])
        self.dtype = dtype
        self.rows = min(self.M, max(256, _BLAS_BLOCK // n))        # BLAS block of neurons
        self._pre = None
        self._pre_all = None
        self.plan = None         # "blas" or "fused" where a Switching uses these kernels
        self.last_r = None       # residual (n,) float64 of the last RHS

    # -- fused streaming ----------------------------------------------------------------
    def rhs_fused(self, y, out):
        """Write ``dy/dt`` (P,) into ``out``; return the loss at ``y`` (the residual is
        left in ``last_r``)."""
        nc = self.be._par(self.M, self.be.parallel_threshold)
        if nc:
            r = self.kern.rhs_parallel(y, out, self.M, self.xs, self.xt, self.Y, self.cf,
                                       self.ca_n, self.cw_n, nc)
        else:
            r = self.kern.rhs_serial(y, out, self.M, self.xs, self.xt, self.Y, self.cf,
                                     self.ca_n, self.cw_n)
        self.last_r = r
        return float(np.dot(r, r)) / (2.0 * self.n)

    def residual_rate(self, y, f, pairs, lo):
        """Residual ``e`` (n,) at ``y`` and ``de/dt`` along ``f`` for the switching
        structure, one pass; the sliding pairs ``pairs = (rows, cols)`` (int arrays, or
        None) held at ``sigma = 0`` (see ``Switching.residual_rate``)."""
        M, D = self.M, self.D
        sk, si = pairs if pairs is not None else (_NO_PAIRS, _NO_PAIRS)
        args = (y[:M], y[M:].reshape(M, D), f[:M], f[M:].reshape(M, D))
        pair_idx = (np.asarray(sk, dtype=np.intp), np.asarray(si, dtype=np.intp), float(lo))
        if self.n > SMALL_N:              # the products in BLAS, as in rhs_blas
            with _BlasThreads(1):
                e, rate = tl.residual_rate_blas(*args, self.xtT, *pair_idx, *self._blocks())
        else:
            e, rate = tl.residual_rate(*args, self.xt, *pair_idx,
                                       self.be._par(M, self.be.parallel_threshold))
        return self.cf * e - self.Y, self.cf * rate

    def _blocks(self):
        """``(SB, nchunks)`` of the BLAS passes over the neurons: blocks whose
        pre-activations stay in L2, on ``nchunks`` Numba threads (1: serial)."""
        sub = max(16, _SUB_BYTES // (self.n * self.dtype.itemsize))
        nc = self.be._par(self.M * self.n * self.D, self.be.blas_threshold)
        return sub, max(nc, 1)

    def crossings(self, y0, y1, S0):
        """The pairs outside ``S0`` whose pre-activation changed sign from ``y0`` to
        ``y1``, compact: ``(rows (r,), sub (r, n) bool)``. One pass flags the neurons; the
        few flagged rows are then resolved pair by pair."""
        M, D = self.M, self.D
        flag = np.empty(M, dtype=np.bool_)
        W0, W1 = y0[M:].reshape(M, D), y1[M:].reshape(M, D)
        if self.n > SMALL_N:
            with _BlasThreads(1):
                tl.crossing_rows_blas(W0, W1, self.xtT, flag, *self._blocks())
        else:
            tl.crossing_rows(W0, W1, self.xt, flag,
                             self.be._par(M, self.be.parallel_threshold))
        return self._crossing_pairs(W0, W1, S0, flag)

    def _crossing_pairs(self, W0, W1, S0, flag):
        """The flagged neurons' crossing pairs outside ``S0``, compact (see
        :meth:`crossings`)."""
        rows = np.flatnonzero(flag)
        sub = ~S0[rows] & ((W0[rows] @ self.xt.T > 0) != (W1[rows] @ self.xt.T > 0))
        keep = sub.any(axis=1)
        return rows[keep], sub[keep]

    @property
    def fuses_step_ends(self) -> bool:
        """:meth:`step_ends` shares the BLAS pass (n > ``SMALL_N``)."""
        return self.n > SMALL_N

    def step_ends(self, y0, y1, f0, f1, S0, pairs, lo):
        """:meth:`crossings` of ``y0``, ``y1`` and :meth:`residual_rate` at both ends
        (``(y0, f0)``, ``(y1, f1)``) in one BLAS pass (n > ``SMALL_N`` only); returns
        ``(rows, sub), (e0, r0), (e1, r1)``."""
        M, D = self.M, self.D
        sk, si = pairs if pairs is not None else (_NO_PAIRS, _NO_PAIRS)
        flag = np.empty(M, dtype=np.bool_)
        W0, W1 = y0[M:].reshape(M, D), y1[M:].reshape(M, D)
        with _BlasThreads(1):
            e0, r0, e1, r1 = tl.step_ends_blas(
                y0[:M], W0, f0[:M], f0[M:].reshape(M, D), y1[:M], W1, f1[:M],
                f1[M:].reshape(M, D), self.xtT, flag, np.asarray(sk, dtype=np.intp),
                np.asarray(si, dtype=np.intp), float(lo), *self._blocks())
        return (self._crossing_pairs(W0, W1, S0, flag),
                (self.cf * e0 - self.Y, self.cf * r0), (self.cf * e1 - self.Y, self.cf * r1))

    def neuron_rhs(self, a, W, S, e, XX, lo):
        """Sliding-mode velocities ``(da (q,), dw (q, D), theta (q, n))`` of the neurons
        ``a``, ``W`` with sliding pairs ``S`` (q, n) for the residual ``e`` (n,) (see
        ``Switching.rhs``)."""
        q = a.shape[0]
        out_a = np.empty(q, dtype=self.dtype)
        theta = np.empty((q, self.n), dtype=self.dtype)
        e = np.ascontiguousarray(e, dtype=self.dtype)
        if self.n > SMALL_N:
            # the two passes over the inputs as products, as in rhs_blas: late on digits
            # (n = 256) a third of the neurons slide, and the per-neuron loops took
            # twice as long as the plain RHS of every neuron
            with _BlasThreads(1):
                pre = np.asarray(W, dtype=self.dtype) @ self.xtT
                G = np.empty_like(pre)
                sw.sliding_rows(pre, np.arange(q), np.ascontiguousarray(S), e, XX, float(lo),
                                np.asarray(a, dtype=self.dtype), self.ca_n, self.cw_n, G,
                                out_a, theta)
                return out_a, G @ self.xt, theta
        out_w = np.empty((q, self.D), dtype=self.dtype)
        sw.neuron_rhs(np.ascontiguousarray(a), np.ascontiguousarray(W),
                      np.ascontiguousarray(S), e, self.xt, XX, float(lo), self.ca_n,
                      self.cw_n, out_a, out_w, theta)
        return out_a, out_w, theta

    def controls_rows(self, G, S, e, XX):
        """``two_layer_structure.controls`` on rows with sliding pairs, compiled: ``G``
        (q, n) is overwritten on ``S`` (q, n) with the controls; returns ``theta`` (q, n)
        (zero outside ``S``)."""
        G = np.ascontiguousarray(G, dtype=np.float64)
        theta = np.empty_like(G)
        sw.controls_rows(G, np.ascontiguousarray(S, dtype=np.bool_),
                         np.ascontiguousarray(e, dtype=np.float64), XX, theta)
        return G, theta

    def project_rows(self, W, S, XX):
        """``Switching.project`` on rows ``W`` (q, D) with sliding pairs ``S`` (q, n)
        (``XX`` (n, n) = ``x~ x~^T``), compiled; returns the projected rows (a new
        array)."""
        W = np.array(W, dtype=np.float64, order="C")
        sw.project_rows(W, np.ascontiguousarray(S, dtype=np.bool_), self.xt, XX)
        return W

    def integrate_neurons(self, a, W, S, e_of, h, substeps, XX, lo):
        """``Switching.integrate_neurons`` compiled: the event neurons ``a`` (q,), ``W``
        (q, D), ``S`` (q, n) through their events against the step's residual ``e_of``
        over ``[0, h]``; returns ``(a, W, S, cost)`` (new arrays; cost in neuron-RHS
        evaluations summed over the neurons). Threads (``prange`` over chunks of
        neurons) when ``q n D``, the multiply-adds of one neuron-stage times ``q``, reaches
        ``parallel_threshold``."""
        a = np.array(a, dtype=self.dtype)
        W = np.array(W, dtype=self.dtype, order="C")
        S = np.array(S, dtype=np.bool_, order="C")
        R = tuple(np.ascontiguousarray(t, dtype=self.dtype) for t in e_of.table)
        nc = self.be._par(a.shape[0] * self.n * self.D, self.be.parallel_threshold)
        cost = sw.integrate_neurons(a, W, S, R, float(h), int(substeps), self.xt, XX,
                                    float(lo), self.ca_n, self.cw_n, max(nc, 1))
        return a, W, S, float(cost)

    def relu_pattern(self, pre, a, S, lo):
        """``h = sigma(pre)`` (0 on the sliding pairs ``S``, or None) and ``a_k
        sigma'(pre)`` (M, n) of a ReLU-family linearisation, one compiled pass (see
        ``Linearization``)."""
        M = pre.shape[0]
        h = np.empty_like(pre)
        ag = np.empty_like(pre)
        sliding = S is not None
        sw.relu_pattern(pre, np.ascontiguousarray(a, dtype=pre.dtype),
                        S if sliding else np.zeros((1, 1), dtype=np.bool_), sliding, float(lo),
                        h, ag, max(self.be._par(M * self.n, self.be.parallel_threshold), 1))
        return h, ag

    def event_pairs(self, pre0, pre1, rate, S, wn, xn):
        """``Switching.event_pairs`` compiled (one pass instead of a dozen array
        operations over the (M, n) pairs); returns ``(pairs (M, n), near (M,))``."""
        M = pre0.shape[0]
        pairs = np.empty((M, self.n), dtype=np.bool_)
        near = np.empty(M, dtype=np.bool_)
        f = self.dtype
        sw.event_pairs(np.ascontiguousarray(pre0, dtype=f), np.ascontiguousarray(pre1, dtype=f),
                       np.ascontiguousarray(rate, dtype=f), np.ascontiguousarray(S),
                       np.ascontiguousarray(wn, dtype=f), np.ascontiguousarray(xn, dtype=f),
                       pairs, near, max(self.be._par(M * self.n, self.be.parallel_threshold),
                                        1))
        return pairs, near

    def pre(self, y) -> np.ndarray:
        """Unscaled pre-activations ``w_k . x~_i`` (M, n) by the row kernel (no BLAS)."""
        M, D = self.M, self.D
        P = np.empty((M, self.n), dtype=self.dtype)
        tl.rows_in(y[M:].reshape(M, D), self.xt, P, self.be._par(M, self.be.parallel_threshold))
        return P

    def outputs(self, y) -> np.ndarray:
        """``sum_k a_k sigma(s w_k . x~_i)`` (n,) in float64 (``f = cf * outputs``)."""
        nc = self.be._par(self.M, self.be.parallel_threshold)
        if nc:
            return self.kern.forward_parallel(y, self.M, self.xs, nc)
        return self.kern.forward_serial(y, self.M, self.xs)

    def loss(self, y) -> float:
        r = self.cf * self.outputs(y) - self.Y
        return float(r @ r) / (2.0 * self.n)

    # -- BLAS ---------------------------------------------------------------------------
    def rhs_sliding(self, y, out, rows, sub, XX, lo):
        """The sliding-mode RHS (``Switching.rhs``) in one pass: :meth:`rhs_blas` with the
        neurons ``rows`` (r,) (ascending), whose pairs ``sub`` (r, n) slide, given their
        velocities with the equivalent controls in the same products. Returns ``(loss,
        theta (r, n))``, or None where the plain pass is not the blocked one (fused
        kernels, or the threaded BLAS path): the caller then recomputes the rows with
        :meth:`neuron_rhs`."""
        if self.plan != "blas" or (
                self.n > SMALL_N and self.be._par(self.M * self.n * self.D,
                                                  self.be.blas_threshold)):
            return None
        theta = np.empty((rows.shape[0], self.n), dtype=self.dtype)
        loss = self.rhs_blas(y, out, (np.asarray(rows), np.ascontiguousarray(sub), XX,
                                      float(lo), theta))
        return loss, theta

    def _fold_sliding(self, sliding, b0, b1, P, a, e, oa, done=None):
        """The sliding rows of the block ``[b0, b1)`` in :meth:`rhs_blas`: called with the
        block's pre-activations ``P`` before the backward kernel (returns their rows'
        velocities), then after it with these, to overwrite their ``oa`` and their rows
        of ``P`` (``c_w a_k sigma' e`` with the controls on the sliding pairs)."""
        rows, sub, XX, lo, theta = sliding
        i0, i1 = np.searchsorted(rows, (b0, b1))
        rk = rows[i0:i1] - b0
        if done is None:
            G = np.empty((rk.shape[0], self.n), dtype=self.dtype)
            da = np.empty(rk.shape[0], dtype=self.dtype)
            sw.sliding_rows(P, rk, sub[i0:i1], e, XX, lo, a[rk], self.ca_n, self.cw_n, G,
                            da, theta[i0:i1])
            return G, da
        sw.scatter_rows(P, rk, done[0], oa, done[1])
        return None

    def rhs_blas(self, y, out, sliding=None):
        """As :meth:`rhs_fused`, with the matrix products in BLAS: on Numba's threads from
        ``blas_threshold`` (:meth:`_rhs_threaded`), else in blocks of ``rows`` on one BLAS
        thread (Numba row kernels for n <= ``SMALL_N``). ``sliding`` (blocked path only):
        see :meth:`rhs_sliding`."""
        M, D, n, B = self.M, self.D, self.n, self.rows
        if self._pre is None:
            self._pre = np.empty((B, n), dtype=self.dtype)
        a, W = y[:M], y[M:].reshape(M, D)
        oa, OW = out[:M], out[M:].reshape(M, D)
        if n > SMALL_N:
            nt = self.be._par(M * n * D, self.be.blas_threshold)
            if nt:
                return self._rhs_threaded(a, W, oa, OW, nt)
        nc = self.be._par(M, self.be.parallel_threshold)
        f = np.zeros(n)
        if n <= SMALL_N and (nc or self.be.threads == 1):
            # skinny products as Numba row kernels on Numba's threads, or with one thread
            # overall (1.9x faster than OpenBLAS at n = 4, d = 64, m = 1e5; serial row
            # kernels lose to one-thread OpenBLAS at m <= 2e4, so not below the threshold)
            def prod_in(Wb, P):
                tl.rows_in(Wb, self.xs, P, nc)

            def prod_out(P, Ob):
                tl.rows_out(P, self.xt, Ob, nc)
        else:
            def prod_in(Wb, P):
                np.matmul(Wb, self.xsT, out=P)

            def prod_out(P, Ob):
                np.matmul(P, self.xt, out=Ob)
        # small products on one BLAS thread: a two-thread OpenBLAS call leaves its worker
        # spinning against the parallel stage kernels that follow (a dopri5 solve at
        # n = 16, d = 64, m = 1000 took 1.0 s instead of 0.34 s)
        with _BlasThreads(1):
            for b0 in range(0, M, B):
                b1 = min(M, b0 + B)
                P = self._pre[:b1 - b0]
                prod_in(W[b0:b1], P)
                self.kern.blas_forward(P, a[b0:b1], f)
            r = self.cf * f - self.Y
            self.last_r = r
            e = r.astype(self.dtype)
            for b0 in range(0, M, B):
                b1 = min(M, b0 + B)
                P = self._pre[:b1 - b0]
                if B < M:
                    prod_in(W[b0:b1], P)
                if sliding is not None:
                    done = self._fold_sliding(sliding, b0, b1, P, a[b0:b1], e, None)
                self.kern.blas_backward(P, a[b0:b1], e, self.ca_n, self.cw_n, oa[b0:b1])
                if sliding is not None:
                    self._fold_sliding(sliding, b0, b1, P, None, None, oa[b0:b1], done)
                prod_out(P, OW[b0:b1])
        return float(r @ r) / (2.0 * n)

    def _rhs_threaded(self, a, W, oa, OW, nc):
        """The BLAS path on Numba's threads (:func:`._nb_two_layer.kernels`'
        ``threaded_*``): each thread runs single-threaded BLAS on sub-blocks that stay in
        L2, so no BLAS pool spins against Numba's. 2.1x faster than :meth:`rhs_blas`'s
        BLAS-threaded products at n = d = 64, m = 1e5 (docs/benchmarks.md)."""
        M, n = self.M, self.n
        sub = max(16, _SUB_BYTES // (n * self.dtype.itemsize))
        store = M * n * self.dtype.itemsize <= _STORE_BYTES
        rows = M if store else nc * sub
        if self._pre_all is None or self._pre_all.shape[0] != rows:
            self._pre_all = np.empty((rows, n), dtype=self.dtype)
        P = self._pre_all
        with _BlasThreads(1):
            f = self.kern.threaded_forward(W, a, self.xsT, P, sub, store, nc)
            r = self.cf * f - self.Y
            self.last_r = r
            self.kern.threaded_backward(W, a, self.xsT, self.xt, P, r.astype(self.dtype),
                                        self.ca_n, self.cw_n, oa, OW, sub, store, nc)
        return float(r @ r) / (2.0 * n)
