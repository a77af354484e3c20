"""Numba kernels of the two-layer right-hand side (see ``models/two_layer.py`` for the flow).

Two kernels families:

- *fused streaming* (small n): two passes over the neurons, in blocks of ``_B`` neurons
  held in L1 (``w`` transposed into a (D, B) buffer so every inner loop is a unit-stride,
  vectorisable loop over neurons). Pass 1 accumulates the network output ``f`` (n,);
  pass 2 writes ``dy/dt`` for each block. No n x m temporaries.
- *BLAS* (larger n d): ``pre = W Xs^T`` and ``G Xt`` by matrix products, with the
  activation, the output reduction and the error scaling fused in one pass around them.

Every kernel exists serial and parallel (prange over chunks of neurons); callers choose.
All loops are zero-based over slices (PERFORMANCE.md pitfall 3).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import njit, prange

from ._nb_activations import sd

_FM = {"reassoc", "nsz", "contract"}   # reassociation for vectorised sums; NaN/inf kept
_B = 256                               # neurons per L1 block


# -- fused streaming kernels (one chunk of neurons) -----------------------------------
@njit(inline="always")
def _load_block(w, b0, bs, D, wT):
    for k in range(bs):
        for j in range(D):
            wT[j, k] = w[(b0 + k) * D + j]


@njit(inline="always")
def _preact(wT, xs, i, bs, D, pre):
    x0 = xs[i, 0]
    w0 = wT[0]
    for k in range(bs):
        pre[k] = w0[k] * x0
    for j in range(1, D):
        xj = xs[i, j]
        wj = wT[j]
        for k in range(bs):
            pre[k] += wj[k] * xj


@njit(inline="always")
def _fwd_chunk(a, w, xs, code, f):
    """Add ``sum_k a_k sigma(xs_i . w_k)`` over this chunk's neurons to ``f`` (n,)."""
    n, D = xs.shape
    cnt = a.shape[0]
    wT = np.empty((D, _B), dtype=w.dtype)
    pre = np.empty(_B, dtype=w.dtype)
    for b0 in range(0, cnt, _B):
        bs = min(_B, cnt - b0)
        _load_block(w, b0, bs, D, wT)
        ab = a[b0:b0 + bs]
        if D == 2:                       # d = 1: one sweep per sample, pre in registers
            w0, w1 = wT[0], wT[1]
            for i in range(n):
                x0, x1 = xs[i, 0], xs[i, 1]
                acc = 0.0
                for k in range(bs):
                    acc += ab[k] * sd(w0[k] * x0 + w1[k] * x1, code)[0]
                f[i] += acc
            continue
        for i in range(n):
            _preact(wT, xs, i, bs, D, pre)
            acc = 0.0
            for k in range(bs):
                acc += ab[k] * sd(pre[k], code)[0]
            f[i] += acc


@njit(inline="always")
def _bwd_chunk(a, w, xs, xt, e, code, ca_n, cw_n, out_a, out_w):
    """This chunk's ``dy/dt``: ``out_a = ca_n sigma(pre) e``, ``out_w = cw_n a sigma'(pre) e xt``."""
    n, D = xs.shape
    cnt = a.shape[0]
    wT = np.empty((D, _B), dtype=w.dtype)
    gT = np.empty((D, _B), dtype=w.dtype)
    pre = np.empty(_B, dtype=w.dtype)
    oa = np.empty(_B, dtype=w.dtype)
    for b0 in range(0, cnt, _B):
        bs = min(_B, cnt - b0)
        _load_block(w, b0, bs, D, wT)
        oa[:] = 0.0
        gT[:, :] = 0.0
        if D == 2:                       # d = 1: one sweep per sample
            w0, w1, g0, g1 = wT[0], wT[1], gT[0], gT[1]
            for i in range(n):
                x0, x1, t0, t1, ei = xs[i, 0], xs[i, 1], xt[i, 0], xt[i, 1], e[i]
                for k in range(bs):
                    h, g = sd(w0[k] * x0 + w1[k] * x1, code)
                    oa[k] += h * ei
                    gg = g * ei
                    g0[k] += gg * t0
                    g1[k] += gg * t1
        for i in range(n if D != 2 else 0):
            _preact(wT, xs, i, bs, D, pre)
            ei = e[i]
            for k in range(bs):
                h, g = sd(pre[k], code)
                oa[k] += h * ei
                pre[k] = g * ei
            for j in range(D):
                xij = xt[i, j]
                gj = gT[j]
                for k in range(bs):
                    gj[k] += pre[k] * xij
        ab = a[b0:b0 + bs]
        oab = out_a[b0:b0 + bs]
        for k in range(bs):
            oab[k] = ca_n * oa[k]
        for k in range(bs):
            ck = cw_n * ab[k]
            for j in range(D):
                out_w[(b0 + k) * D + j] = ck * gT[j, k]


@njit(inline="always")
def _bounds(c, nchunks, M):
    return (c * M) // nchunks, ((c + 1) * M) // nchunks


# -- BLAS path: elementwise work fused around the matrix products ---------------------
@njit(inline="always")
def _rows_fwd(pre, a, f, code):
    bs, n = pre.shape
    for k in range(bs):
        ak = a[k]
        row = pre[k]
        for i in range(n):
            f[i] += ak * sd(row[i], code)[0]


@njit(inline="always")
def _rows_bwd(pre, a, e, ca_n, cw_n, out_a, code):
    bs, n = pre.shape
    for k in range(bs):
        row = pre[k]
        acc = 0.0
        ck = cw_n * a[k]
        for i in range(n):
            h, g = sd(row[i], code)
            acc += h * e[i]
            row[i] = ck * g * e[i]
        out_a[k] = ca_n * acc


# -- entry points, specialised per activation ------------------------------------------
_KERNELS = {}


def kernels(code: int) -> SimpleNamespace:
    """The entry kernels for activation ``code``, compiled (or loaded from the on-disk
    cache) on first use. ``code`` is a closure constant, so each activation gets its own
    vectorised loops and Numba caches each one under its own key.

    Returns a namespace with ``forward_serial(y, M, xs)``,
    ``forward_parallel(y, M, xs, nchunks)`` -> outputs (n,) float64;
    ``rhs_serial(y, out, M, xs, xt, Y, cf, ca_n, cw_n)``,
    ``rhs_parallel(..., nchunks)`` -> loss; ``blas_forward(pre, a, f)`` and
    ``blas_backward(pre, a, e, ca_n, cw_n, out_a)``.
    """
    if code in _KERNELS:
        return _KERNELS[code]

    def forward_serial(y, M, xs):
        n, _D = xs.shape
        f = np.zeros(n)
        _fwd_chunk(y[:M], y[M:], xs, code, f)
        return f

    def forward_parallel(y, M, xs, nchunks):
        n, D = xs.shape
        part = np.zeros((nchunks, n))
        for c in prange(nchunks):
            lo, hi = _bounds(c, nchunks, M)
            _fwd_chunk(y[lo:hi], y[M + lo * D:M + hi * D], xs, code, part[c])
        f = np.zeros(n)
        for c in range(nchunks):
            f += part[c]
        return f

    serial = njit(cache=True, fastmath=_FM)
    parallel = njit(cache=True, fastmath=_FM, parallel=True)
    fwd_serial, fwd_parallel = serial(forward_serial), parallel(forward_parallel)

    def rhs_serial(y, out, M, xs, xt, Y, cf, ca_n, cw_n):
        n, _D = xs.shape
        r = cf * fwd_serial(y, M, xs) - Y
        e = r.astype(y.dtype)
        _bwd_chunk(y[:M], y[M:], xs, xt, e, code, ca_n, cw_n, out[:M], out[M:])
        return np.sum(r * r) / (2.0 * n)

    def rhs_parallel(y, out, M, xs, xt, Y, cf, ca_n, cw_n, nchunks):
        n, D = xs.shape
        r = cf * fwd_parallel(y, M, xs, nchunks) - Y
        e = r.astype(y.dtype)
        for c in prange(nchunks):
            lo, hi = _bounds(c, nchunks, M)
            _bwd_chunk(y[lo:hi], y[M + lo * D:M + hi * D], xs, xt, e, code, ca_n, cw_n,
                       out[lo:hi], out[M + lo * D:M + hi * D])
        return np.sum(r * r) / (2.0 * n)

    def blas_forward(pre, a, f):
        _rows_fwd(pre, a, f, code)

    def blas_backward(pre, a, e, ca_n, cw_n, out_a):
        _rows_bwd(pre, a, e, ca_n, cw_n, out_a, code)

    ns = SimpleNamespace(
        forward_serial=fwd_serial, forward_parallel=fwd_parallel,
        rhs_serial=serial(rhs_serial), rhs_parallel=parallel(rhs_parallel),
        blas_forward=serial(blas_forward), blas_backward=serial(blas_backward))
    _KERNELS[code] = ns
    return ns
