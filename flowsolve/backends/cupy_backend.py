"""The CuPy (GPU) backend: CUDA kernels for the stage arithmetic and the two-layer RHS.

Same protocol as :class:`~flowsolve.backends.numpy_backend.NumpyBackend`, on CuPy arrays
(``xp = cupy``; states live on the device, ``to_numpy`` copies them back):

- ``combine`` is one elementwise kernel pass (``out = y + sum_j (h c_j) K[j]``, zero
  weights skipped, the sum in float64); ``error_norm``, ``diff_norms`` and ``all_finite``
  are one fused reduction pass each, summed deterministically (per-block partial sums,
  added in block order by the last block to finish, so a run repeats bit for bit);
- two-layer RHS for ``n <= MAX_FUSED_N`` samples (any d): two fused kernels, (a) the
  forward pass ``e_i = c_f sum_k a_k sigma(s w_k . x~_i) - y_i`` reduced over the
  neurons (the last block also forms the loss), (b) the backward pass, one thread per
  neuron. The state is read twice and the derivative written once: ``3 P itemsize``
  bytes per RHS, no ``M x n`` temporaries. Kernels are compiled per (dtype, activation,
  n, d) on first use (NVRTC; CuPy caches them on disk);
- larger n (e.g. digits, n = 256..1797) and every other model (three layers) run the
  model's own array code with ``xp = cupy`` (cuBLAS products).

Each RHS returns the loss as a Python float, which costs one device synchronisation;
``error_norm``, ``diff_norms`` and ``all_finite`` synchronise likewise (the few numbers
read back land in page-locked memory). Everything runs on CuPy's current stream; one
backend object's kernels share scratch space, so use it from one stream at a time.

Creating :class:`CupyBackend` raises :class:`~flowsolve.errors.BackendUnavailable` when
CuPy is not installed or no CUDA device is visible, so ``available_backends()`` does not
list ``"cupy"`` there. CuPy is imported only then (this module imports without it).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BackendUnavailable, ConfigError

__all__ = ["CupyBackend", "MAX_FUSED_N"]

#: the fused two-layer kernels keep one accumulator per sample in registers: up to this n
MAX_FUSED_N = 32
#: threads per block of every kernel (the block reductions assume a multiple of 32)
BLOCK = 256

_CTYPES = {"float64": "double", "float32": "float"}
_MODULES = {}     # (device, key) -> cupy.RawModule
_KERNELS = {}     # ((device, key), name) -> its kernel

# -- CUDA sources --------------------------------------------------------------------------
# Every source is this preamble (after ``#define``s for T, MF, NS, ...) plus one kernel.
_PREAMBLE = r"""
#define NWARPS (BLOCK / 32)

__device__ __forceinline__ double warp_sum(double v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Block sums of acc[0..R) into sh[0..R), in a fixed order (all threads must call).
template <int R>
__device__ void block_sums(const double (&acc)[R], double (&sh)[R][NWARPS], double* out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    #pragma unroll
    for (int s = 0; s < R; ++s) {
        double v = warp_sum(acc[s]);
        if (lane == 0) sh[s][warp] = v;
    }
    __syncthreads();
    if (threadIdx.x < R) {
        double v = 0.0;
        for (int w = 0; w < NWARPS; ++w) v += sh[threadIdx.x][w];
        out[threadIdx.x] = v;
    }
}

// Grid-wide sums of acc[0..R): every block writes its R partial sums to part, the last
// block to finish adds them in block order and returns them (in shared memory); the
// other blocks get nullptr. atomicInc wraps count back to 0 for the next launch.
template <int R>
__device__ const double* grid_sums(const double (&acc)[R], double* part, unsigned int* count) {
    __shared__ double sh[R][NWARPS];
    __shared__ double tot[R];
    __shared__ bool last;
    block_sums<R>(acc, sh, part + (size_t)blockIdx.x * R);
    if (threadIdx.x < R) __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicInc(count, gridDim.x - 1) == gridDim.x - 1;
    __syncthreads();
    if (!last) return nullptr;
    double b[R];
    #pragma unroll
    for (int s = 0; s < R; ++s) b[s] = 0.0;
    for (unsigned int k = threadIdx.x; k < gridDim.x; k += BLOCK) {
        #pragma unroll
        for (int s = 0; s < R; ++s) b[s] += __ldcg(part + (size_t)k * R + s);
    }
    __syncthreads();
    block_sums<R>(b, sh, tot);
    __syncthreads();
    return tot;
}

#define GRID_LOOP(i, N) \
    for (long long i = (long long)blockIdx.x * BLOCK + threadIdx.x; i < (N); \
         i += (long long)gridDim.x * BLOCK)
"""

# A reduction kernel: NS float64 sums over i < N of what BODY adds to acc[0..NS).
_REDUCE = r"""
extern "C" __global__ void reduce(PARAMS, const long long N, double* part,
                                  unsigned int* count, double* res) {
    double acc[NS];
    #pragma unroll
    for (int s = 0; s < NS; ++s) acc[s] = 0.0;
    GRID_LOOP(i, N) {
        BODY
    }
    const double* tot = grid_sums<NS>(acc, part, count);
    if (tot != nullptr && threadIdx.x < NS) res[threadIdx.x] = tot[threadIdx.x];
}
"""

_COMBINE = r"""
extern "C" __global__ void combine(T* out, const T* y, const T* __restrict__ K,
                                   const long long N, const long long ldk, PARAMS) {
    GRID_LOOP(i, N) {
        out[i] = (T)((double)y[i] + (SUM));
    }
}
"""

_ERRSQ_BODY = r"""
#if HAS_KEEP
        if (!keep[i]) continue;
        acc[2] += 1.0;
#endif
        const double k5 = (SUM5);
#if HAS_REF
        const double r = (double)ref[i];
        const double u = fabs((double)y[i] - r), v = fabs((double)y_new[i] - r);
#else
        const double u = fabs((double)y[i]), v = fabs((double)y_new[i]);
#endif
        const double sc = atol + rtol * ((u >= v || u != u) ? u : v);   // NaN propagates
        const double r5 = k5 / sc;
        acc[0] += r5 * r5;
#if HAS_E3
        const double r3 = (SUM3) / sc;
        acc[1] += r3 * r3;
#endif
"""

_DIFFSQ_BODY = r"""
        const double b = (double)u0[i], d = (double)u[i] - b;
        acc[0] += d * d;
        acc[1] += b * b;
"""

_NONFINITE_BODY = r"""
        const T x = a[i];
        acc[0] += (x - x == T(0)) ? 0.0 : 1.0;      // x - x is NaN for NaN and +-inf
"""

# sigma and sigma' of the activation ACT; the codes and formulas of ._nb_activations.
_ACTIVATION = r"""
__device__ __forceinline__ void sd(const T u, T& s, T& ds) {
#if ACT == 0
    s = u > T(0) ? u : T(0);
    ds = u > T(0) ? T(1) : T(0);
#elif ACT == 1
    s = u > T(0) ? u : T(SLOPE) * u;
    ds = u > T(0) ? T(1) : T(SLOPE);
#elif ACT == 2
    s = u;
    ds = T(1);
#elif ACT == 3
    const T t = MF(tanh)(u);
    s = t;
    ds = T(1) - t * t;
#elif ACT == 4
    const T q = T(0.5) * (T(1) + MF(tanh)(T(0.5) * u));
    s = q;
    ds = q * (T(1) - q);
#elif ACT == 5
    s = MF(log1p)(MF(exp)(-MF(fabs)(u))) + (u > T(0) ? u : T(0));
    ds = T(0.5) * (T(1) + MF(tanh)(T(0.5) * u));
#elif ACT == 6
    const T t = MF(tanh)(u);
    s = u * t;
    ds = t + u * (T(1) - t * t);
#elif ACT == 7
    const T t = MF(tanh)(u);
    s = u * u * t;
    ds = T(2) * u * t + u * u * (T(1) - t * t);
#else
    const T r = T(0.5) * (T(1) + MF(erf)(u * T(SQRT1_2)));
    s = u * r;
    ds = r + u * T(INV_SQRT_2PI) * MF(exp)(T(-0.5) * u * u);
#endif
}
"""

# The two-layer kernels, for NS samples and DD = d + 1 input components (bias last).
# y = [a (M), W (M, DD)]; xs = s x~ (NS, DD); xt = x~ (NS, DD).
_TWO_LAYER = r"""
__device__ __forceinline__ void preact(const T* __restrict__ w, const T* __restrict__ xs,
                                       T (&pre)[NS]) {
    #pragma unroll
    for (int i = 0; i < NS; ++i) pre[i] = T(0);
    #pragma unroll 4
    for (int j = 0; j < DD; ++j) {
        const T wj = w[j];
        #pragma unroll
        for (int i = 0; i < NS; ++i) pre[i] += wj * xs[i * DD + j];
    }
}

// res[i] = e_i = cf sum_k a_k sigma(pre_ki) - Y_i (i < NS); res[NS] = sum e^2 / (2 NS)
extern "C" __global__ void forward(const T* __restrict__ y, const long long M,
                                   const T* __restrict__ xs, const double* __restrict__ Y,
                                   const double cf, double* part, unsigned int* count,
                                   double* res) {
    double acc[NS];
    #pragma unroll
    for (int i = 0; i < NS; ++i) acc[i] = 0.0;
    GRID_LOOP(k, M) {
        T pre[NS];
        preact(y + M + k * DD, xs, pre);
        const double ak = (double)y[k];
        #pragma unroll
        for (int i = 0; i < NS; ++i) {
            T s, ds;
            sd(pre[i], s, ds);
            acc[i] += ak * (double)s;
        }
    }
    const double* f = grid_sums<NS>(acc, part, count);
    if (f == nullptr) return;
    if (threadIdx.x < NS) res[threadIdx.x] = cf * f[threadIdx.x] - Y[threadIdx.x];
    if (threadIdx.x == 0) {
        double loss = 0.0;
        for (int i = 0; i < NS; ++i) {
            const double e = cf * f[i] - Y[i];
            loss += e * e;
        }
        res[NS] = loss / (2.0 * NS);
    }
}

// out = [ca_n sum_i e_i sigma(pre_ki), cw_n a_k sum_i e_i sigma'(pre_ki) x~_i]
// (ca_n = -c_a / n, cw_n = -c_w / n), one thread per neuron k
extern "C" __global__ void backward(const T* __restrict__ y, T* __restrict__ out,
                                    const long long M, const T* __restrict__ xs,
                                    const T* __restrict__ xt, const double* __restrict__ res,
                                    const double ca_n, const double cw_n) {
    __shared__ double e[NS];
    if (threadIdx.x < NS) e[threadIdx.x] = res[threadIdx.x];
    __syncthreads();
    GRID_LOOP(k, M) {
        T pre[NS];
        preact(y + M + k * DD, xs, pre);
        double da = 0.0, g[NS];
        #pragma unroll
        for (int i = 0; i < NS; ++i) {
            T s, ds;
            sd(pre[i], s, ds);
            da += e[i] * (double)s;
            g[i] = e[i] * (double)ds;
        }
        out[k] = (T)(ca_n * da);
        const double c = cw_n * (double)y[k];
        T* o = out + M + k * DD;
        #pragma unroll 4
        for (int j = 0; j < DD; ++j) {
            double v = 0.0;
            #pragma unroll
            for (int i = 0; i < NS; ++i) v += g[i] * (double)xt[i * DD + j];
            o[j] = (T)(c * v);
        }
    }
}
"""


def _header(dtype, **defines) -> str:
    """``#define`` lines selecting the element type ``T`` (and its math functions ``MF``)
    and the given compile-time constants."""
    name = np.dtype(dtype).name
    if name not in _CTYPES:
        raise ConfigError(f"the cupy backend runs float32 or float64, got {name}")
    lines = [f"typedef {_CTYPES[name]} T;",
             "#define MF(fn) fn##f" if name == "float32" else "#define MF(fn) fn",
             f"#define BLOCK {BLOCK}"]
    lines += [f"#define {k} {v}" for k, v in defines.items()]
    return "\n".join(lines) + "\n"


def _weighted_sum(prefix, rows) -> tuple[str, str]:
    """Kernel parameters ``double {prefix}0, ...`` and the expression
    ``sum_t {prefix}t K[rows[t], i]`` (float64) for the rows with nonzero weights."""
    params = ", ".join(f"const double {prefix}{t}" for t in range(len(rows)))
    terms = [f"{prefix}{t} * (double)K[{r}LL * ldk + i]" for t, r in enumerate(rows)]
    return params, " + ".join(terms) or "0.0"


def _nonzero(coeffs) -> tuple[tuple, list]:
    """``(rows, weights)`` of the nonzero coefficients."""
    rows = tuple(j for j, c in enumerate(coeffs) if c != 0.0)
    return rows, [float(coeffs[j]) for j in rows]


class CupyBackend:
    """CUDA kernels through CuPy behind the backend protocol (see :mod:`flowsolve.backends`).

    Parameters
    ----------
    path : {"auto", "fused", "xp"}
        Two-layer RHS: ``auto`` takes the fused kernels for ``n <= MAX_FUSED_N`` samples and
        the model's own CuPy code (cuBLAS) above; ``fused`` insists on the kernels (a
        ConfigError for larger n); ``xp`` always runs the model's CuPy code.
    blocks_per_sm : int
        Blocks of the grid-stride reduction and two-layer kernels per multiprocessor.

    Raises
    ------
    BackendUnavailable
        When CuPy is not installed or no CUDA device is visible.
    """

    name = "cupy"

    def __init__(self, path="auto", blocks_per_sm=4):
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailable(
                f"the cupy backend needs CuPy (pip install 'flowsolve[gpu]'): {exc}") from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001 - CUDA runtime/driver missing or broken
            raise BackendUnavailable(f"the cupy backend found no usable CUDA device: {exc}"
                                     ) from exc
        if count == 0:
            raise BackendUnavailable("the cupy backend found no CUDA device")
        if path not in ("auto", "fused", "xp"):
            raise ConfigError(f"path must be 'auto', 'fused' or 'xp', got {path!r}")
        if isinstance(blocks_per_sm, bool) or not isinstance(blocks_per_sm, (int, np.integer)) \
                or blocks_per_sm < 1:
            raise ConfigError(f"blocks_per_sm must be a positive integer, got {blocks_per_sm!r}")
        self.xp = cupy
        self.path = path
        sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
        #: grid size limit of the reductions (and of the two-layer kernels)
        self.max_blocks = int(blocks_per_sm) * sms
        #: grid size limit of the elementwise kernels (grid-stride loops above it)
        self.max_grid = 32 * sms
        self.device = cupy.cuda.Device().id
        # shared scratch of the reductions: per-block partial sums, the finish counter
        # (always back at 0 after a launch) and the totals; kernels run in stream order
        self._part = cupy.empty(self.max_blocks * (MAX_FUSED_N + 1), dtype=np.float64)
        self._count = cupy.zeros(1, dtype=np.uint32)
        self._res = cupy.zeros(4, dtype=np.float64)
        # page-locked landing place of the small results read back (no staging copy)
        self._host = np.frombuffer(cupy.cuda.alloc_pinned_memory(8 * (MAX_FUSED_N + 1)),
                                   dtype=np.float64)
        self._no_keep = cupy.ones(1, dtype=np.bool_)

    # -- compiled kernels -------------------------------------------------------------
    def _kernel(self, key, name, source):
        """Kernel ``name`` of the source ``source()`` builds, compiled once per ``key`` and
        device (shared by every backend object of the process)."""
        key = (self.device, key)
        fn = _KERNELS.get((key, name))
        if fn is None:
            mod = _MODULES.get(key)
            if mod is None:
                with self.xp.cuda.Device(self.device):
                    mod = _MODULES[key] = self.xp.RawModule(code=source())
            fn = _KERNELS[(key, name)] = mod.get_function(name)
        return fn

    def _grid(self, n, limit=None) -> int:
        return max(1, min(-(-n // BLOCK), limit or self.max_blocks))

    def _reduce(self, key, source, args, N, ns) -> list:
        """Run the reduction kernel (``key``, ``source()``) over ``N`` items; its ``ns``
        sums as Python floats."""
        fn = self._kernel(key, "reduce", source)
        fn((self._grid(N),), (BLOCK,), (*args, np.int64(N), self._part, self._count, self._res))
        return self._read(self._res[:ns])

    def _read(self, a) -> list:
        """The float64 device array ``a`` (a few entries) as Python floats (synchronises)."""
        host = self._host[:a.size]
        a.get(stream=self.xp.cuda.get_current_stream(), out=host)   # copy, then stream sync
        return host.tolist()

    @staticmethod
    def _contiguous(*arrays):
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ConfigError("the cupy backend's kernels need C-contiguous arrays, got "
                                  f"strides {a.strides} for shape {a.shape}")

    # -- arrays -----------------------------------------------------------------------
    def asarray(self, a, dtype=np.float64):
        """``a`` on the device as a C-contiguous ``dtype`` array (a copy if needed)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    # -- model kernels ----------------------------------------------------------------
    def kernel_plan(self, model, data) -> str:
        """Which code :meth:`make_rhs` runs: ``fused`` (two-layer kernels) or ``xp``
        (the model's own code on CuPy arrays)."""
        from ._nb_activations import CODES

        fits = (getattr(model, "name", None) == "two_layer"
                and getattr(model.activation, "name", None) in CODES)
        if self.path == "xp" or not fits:
            return "xp"
        if data.n <= MAX_FUSED_N:
            return "fused"
        if self.path == "fused":
            raise ConfigError(f"the fused two-layer kernels take at most {MAX_FUSED_N} "
                              f"samples, got n = {data.n}; use path='auto' or 'xp'")
        return "xp"

    def make_rhs(self, model, data, dtype):
        """``rhs(y, out) -> loss`` on device arrays (see the module docstring)."""
        if self.kernel_plan(model, data) == "fused":
            return _TwoLayerFused(self, model, data, dtype).rhs
        return model.make_rhs(self.xp, data, dtype)

    def make_loss(self, model, data, dtype):
        """``loss(y) -> float`` (one forward pass)."""
        if self.kernel_plan(model, data) == "fused":
            return _TwoLayerFused(self, model, data, dtype).loss
        return model.make_loss(self.xp, data, dtype)

    def switching_host(self, model, data, dtype):
        """The switching structure of ``model`` on NumPy arrays, with the Numba backend's
        compiled per-neuron kernels where they apply: a device
        :class:`~flowsolve.models.two_layer_structure.Switching` hands it the
        re-integration of its event neurons (a few neurons through many small substeps,
        which on the device would cost a kernel launch per array operation)."""
        from .numba_backend import NumbaBackend
        kernels = NumbaBackend().switching_kernels(model, data, dtype)
        return model.make_switching(np, data, dtype, kernels=kernels)

    def switching_rhs(self, model, data, dtype):
        """The fused two-layer RHS for the sliding-mode flow (``rhs(y, out)``, the
        residual in ``last_r``), or None where :meth:`kernel_plan` is not ``fused``."""
        if getattr(model, "name", None) != "two_layer" \
                or self.kernel_plan(model, data) != "fused":
            return None
        return _TwoLayerFused(self, model, data, dtype)

    # -- Runge-Kutta stage arithmetic -------------------------------------------------
    def combine(self, out, y, h, K, coeffs):
        """``out = y + h sum_j coeffs[j] K[j]`` in one kernel pass (the sum in float64).

        Parameters
        ----------
        out, y : cupy.ndarray, shape (N,)
            C-contiguous; ``out`` may be ``y``.
        h : float
        K : cupy.ndarray, shape (rows, N)
            C-contiguous, ``rows >= len(coeffs)``.
        coeffs : sequence of float
            Stage weights (a zero weight skips its row).

        Returns
        -------
        out
        """
        self._contiguous(out, y, K)
        rows, w = _nonzero(coeffs)
        fn = self._kernel(("combine", y.dtype.name, rows), "combine",
                          lambda: _combine_source(y.dtype, rows))
        N = y.shape[0]
        hw = [np.float64(h * c) for c in w] or [np.int32(0)]
        fn((self._grid(N, self.max_grid),), (BLOCK,),
           (out, y, K, np.int64(N), np.int64(K.shape[1]), *hw))
        return out

    def error_norm(self, y, y_new, h, K, e, rtol, atol, e3=None, ref=None, keep=None):
        """Scaled RMS norm of the embedded error ``h sum_j e_j K[j]``, one reduction pass.

        Same definition as :meth:`NumpyBackend.error_norm`: the scale is
        ``atol + rtol max(|y - ref|, |y_new - ref|)`` (``ref = 0`` if None); with ``e3``
        (DOP853) the two estimates are combined as in Hairer's code; ``keep`` (bool (N,))
        restricts the RMS to those components (0.0 if there are none).

        Parameters
        ----------
        y, y_new : cupy.ndarray, shape (N,)
        h : float
        K : cupy.ndarray, shape (rows, N)
        e, e3 : sequence of float
            Error weights (``e3``: DOP853's third-order estimate, or None).
        rtol, atol : float
        ref : cupy.ndarray, shape (N,), optional
        keep : array of bool, shape (N,), optional

        Returns
        -------
        float
        """
        self._contiguous(y, y_new, K)
        rows5, w5 = _nonzero(e)
        rows3, w3 = _nonzero(e3) if e3 is not None else (None, [])
        flags = (ref is not None, keep is not None)
        fn_key = ("errsq", y.dtype.name, rows5, rows3, flags)
        if ref is not None:
            self._contiguous(ref)
        if keep is not None:
            keep = self.asarray(keep, np.bool_)
        args = (y, y_new, y if ref is None else ref, self._no_keep if keep is None else keep,
                K, np.int64(K.shape[1]), np.float64(atol), np.float64(rtol),
                *map(np.float64, w5), *map(np.float64, w3))
        n5, n3, kept = self._reduce(fn_key, lambda: _errsq_source(y.dtype, rows5, rows3,
                                                                 *flags),
                                    args, y.shape[0], 3)
        return _rms(h, n5, n3 if e3 is not None else None,
                    int(kept) if keep is not None else y.shape[0])

    def diff_norms(self, u, u0) -> tuple:
        """``(sum (u - u0)^2, sum u0^2)`` over two (N,) arrays, in float64, one reduction
        pass (the relative changes' sums, see ``model.relative_changes``)."""
        self._contiguous(u, u0)
        d, b = self._reduce(("diffsq", u.dtype.name),
                            lambda: _reduce_source(u.dtype, 2, "const T* u, const T* u0",
                                                   _DIFFSQ_BODY),
                            (u, u0), u.shape[0], 2)
        return d, b

    def all_finite(self, a) -> bool:
        """Whether ``a`` holds no NaN or infinity (one reduction pass for 1-D arrays)."""
        if a.ndim != 1 or not a.flags.c_contiguous:
            return bool(self.xp.isfinite(a).all())
        bad, = self._reduce(("nonfinite", a.dtype.name),
                            lambda: _reduce_source(a.dtype, 1, "const T* a", _NONFINITE_BODY),
                            (a,), a.shape[0], 1)
        return bad == 0.0


def _combine_source(dtype, rows) -> str:
    params, total = _weighted_sum("c", rows)
    return (_header(dtype) + _PREAMBLE
            + _COMBINE.replace("PARAMS", params or "const int unused").replace("SUM", total))


def _reduce_source(dtype, ns, params, body, **defines) -> str:
    return (_header(dtype, NS=ns, **defines) + _PREAMBLE
            + _REDUCE.replace("PARAMS", params).replace("BODY", body))


def _errsq_source(dtype, rows5, rows3, has_ref, has_keep) -> str:
    p5, s5 = _weighted_sum("e", rows5)
    p3, s3 = _weighted_sum("f", rows3 or ())
    params = ", ".join(p for p in ("const T* y, const T* y_new, const T* ref, const bool* keep, "
                                   "const T* __restrict__ K, const long long ldk, "
                                   "const double atol, const double rtol", p5, p3) if p)
    return _reduce_source(dtype, 3, params, _ERRSQ_BODY.replace("SUM5", s5).replace("SUM3", s3),
                          HAS_REF=int(has_ref), HAS_KEEP=int(has_keep),
                          HAS_E3=int(rows3 is not None))


def _rms(h, n5, n3, N) -> float:
    """The scaled RMS error from the sums of squares ``n5`` (and DOP853's ``n3``) over
    ``N`` components (as :meth:`NumpyBackend.error_norm`)."""
    if N == 0:
        return 0.0
    if n3 is None:
        return abs(h) * math.sqrt(n5 / N)
    if n5 == 0.0 and n3 == 0.0:
        return 0.0
    return abs(h) * n5 / math.sqrt((n5 + 0.01 * n3) * N)


class _TwoLayerFused:
    """The two-layer RHS and loss of one (model, data, dtype) as two CUDA kernels.

    ``forward`` leaves the residual ``e`` (n,) and the loss in ``res`` (n + 1,) on the
    device; ``backward`` reads ``e`` from there, so one RHS is two launches and one
    synchronisation (reading the loss).
    """

    def __init__(self, be, model, data, dtype):
        from ..models.activations import LEAKY_SLOPE
        from ._nb_activations import CODES

        cp = be.xp
        self.be = be
        self.dtype = np.dtype(dtype)
        self.n, self.D, self.M = data.n, data.d + 1, model.n_neurons
        cf, ca, cw, s = model.coefficients()
        xt = data.x_tilde()
        self.xt = cp.asarray(np.ascontiguousarray(xt, dtype=self.dtype))        # (n, D)
        self.xs = cp.asarray(np.ascontiguousarray(s * xt, dtype=self.dtype))    # (n, D)
        self.Y = cp.asarray(np.ascontiguousarray(data.y, dtype=np.float64))     # (n,)
        self.cf = np.float64(cf)
        self.ca_n, self.cw_n = np.float64(-ca / data.n), np.float64(-cw / data.n)
        self.res = cp.zeros(self.n + 1, dtype=np.float64)          # e (n,), loss
        code = CODES[model.activation.name]

        def source():
            return (_header(self.dtype, NS=self.n, DD=self.D, ACT=code,
                            SLOPE=repr(float(LEAKY_SLOPE)), SQRT1_2=repr(1.0 / math.sqrt(2.0)),
                            INV_SQRT_2PI=repr(1.0 / math.sqrt(2.0 * math.pi)))
                    + _PREAMBLE + _ACTIVATION + _TWO_LAYER)

        key = ("two_layer", self.dtype.name, code, self.n, self.D)
        self._forward = be._kernel(key, "forward", source)
        self._backward = be._kernel(key, "backward", source)
        self.grid = (be._grid(self.M),)

    def _check(self, *arrays):
        for a in arrays:
            if a.dtype != self.dtype or a.shape != (self.M * (self.D + 1),):
                raise ConfigError(f"state must be a ({self.M * (self.D + 1)},) {self.dtype} "
                                  f"array, got {a.shape} {a.dtype}")
        self.be._contiguous(*arrays)

    def forward(self, y):
        """Launch the forward kernel: ``res = [e_0 .. e_{n-1}, loss]``."""
        self._forward(self.grid, (BLOCK,), (y, np.int64(self.M), self.xs, self.Y, self.cf,
                                            self.be._part, self.be._count, self.res))

    def launch(self, y, out):
        """Enqueue both kernels: ``dy/dt^`` (P,) into ``out``, ``res`` as in
        :meth:`forward` (no synchronisation)."""
        self._check(y, out)
        self.forward(y)
        self._backward(self.grid, (BLOCK,), (y, out, np.int64(self.M), self.xs, self.xt,
                                             self.res, self.ca_n, self.cw_n))

    def rhs(self, y, out) -> float:
        """Write ``dy/dt^`` (P,) into ``out``; return the loss at ``y``."""
        self.launch(y, out)
        return self.be._read(self.res[self.n:])[0]

    def loss(self, y) -> float:
        """The loss ``1/(2n) sum e^2`` at ``y`` (the forward kernel alone)."""
        self._check(y)
        self.forward(y)
        return self.be._read(self.res[self.n:])[0]

    @property
    def last_r(self):
        """The residual (n,) float64 of the last :meth:`rhs` (a device copy)."""
        return self.res[:self.n].copy()

    def residual(self, y):
        """The residual ``e`` (n,) float64 at ``y`` (NumPy)."""
        self._check(y)
        self.forward(y)
        return self.res[:self.n].get()
