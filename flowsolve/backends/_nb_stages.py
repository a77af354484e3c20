"""Numba kernels of the Runge-Kutta stage arithmetic (one pass over the state each).

- :func:`combine_*`: ``out = y + sum_j (h c_j) K[j]`` (zero weights skipped), blocked so
  that the running sum stays in L1 and every row of ``K`` is read once.
- :func:`errsq_*`: the sums ``sum_i (err5_i / sc_i)^2`` and ``sum_i (err3_i / sc_i)^2``
  with ``err = sum_j e_j K[j]`` and ``sc = atol + rtol max(|y - ref|, |y_new - ref|)``;
  the caller turns them into the (DOP853 two-estimate) RMS norm.
- :func:`nonfinite_*`: whether any entry is NaN or infinite (no temporaries).
- :func:`diffsq_*`: ``(sum (y - y0)^2, sum y0^2)`` in float64 (the relative changes
  recorded after every step; NumPy's ``dot`` would wake OpenBLAS's threads, which then
  spin against Numba's, docs/benchmarks.md).

Each exists serial and parallel (prange over chunks).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_FM = {"reassoc", "nsz", "contract"}
_BS = 1024


@njit(cache=True, fastmath=_FM)
def _combine_range(out, y, K, coef, h, lo, hi):
    ns = coef.shape[0]
    for b0 in range(lo, hi, _BS):
        b1 = min(b0 + _BS, hi)
        bs = b1 - b0
        o = out[b0:b1]
        yy = y[b0:b1]
        first = True
        for j in range(ns):
            if coef[j] == 0.0:
                continue
            c = h * coef[j]
            kj = K[j, b0:b1]
            if first:
                for i in range(bs):
                    o[i] = yy[i] + c * kj[i]
                first = False
            else:
                for i in range(bs):
                    o[i] += c * kj[i]
        if first:
            for i in range(bs):
                o[i] = yy[i]


@njit(cache=True)
def combine_serial(out, y, K, coef, h):
    """``out = y + sum_j (h coef[j]) K[j]`` (``out`` may be ``y``)."""
    _combine_range(out, y, K, coef, h, 0, y.shape[0])


@njit(cache=True, parallel=True)
def combine_parallel(out, y, K, coef, h, nchunks):
    N = y.shape[0]
    for c in prange(nchunks):
        _combine_range(out, y, K, coef, h, (c * N) // nchunks, ((c + 1) * N) // nchunks)


@njit(inline="always")
def _accumulate(buf, K, coef, b0, b1):
    """``buf[:b1-b0] = sum_j coef[j] K[j, b0:b1]`` (zero coefficients skipped)."""
    bs = b1 - b0
    for i in range(bs):
        buf[i] = 0.0
    for j in range(coef.shape[0]):
        c = coef[j]
        if c != 0.0:
            kj = K[j][b0:b1]
            for i in range(bs):
                buf[i] += c * kj[i]


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _errsq_range(y, y_new, ref, has_ref, K, e, e3, has_e3, rtol, atol, lo, hi, keep,
                 has_keep):
    # the scale and the squared ratios in one vectorised loop per block. error_model
    # "numpy": Python's ZeroDivisionError check on "/" kept this loop scalar (division by a
    # zero scale gives inf, as in the NumPy backend, and the step is rejected)
    buf5 = np.empty(_BS)
    buf3 = np.empty(_BS)
    s5 = 0.0
    s3 = 0.0
    for b0 in range(lo, hi, _BS):
        b1 = min(b0 + _BS, hi)
        bs = b1 - b0
        _accumulate(buf5, K, e, b0, b1)
        if has_e3:
            _accumulate(buf3, K, e3, b0, b1)
        yy = y[b0:b1]
        yn = y_new[b0:b1]
        rr = ref[b0:b1]
        kk = keep[b0:b1] if has_keep else keep[:0]
        a5 = 0.0
        a3 = 0.0
        for i in range(bs):
            u = abs(yy[i] - rr[i]) if has_ref else abs(yy[i])
            v = abs(yn[i] - rr[i]) if has_ref else abs(yn[i])
            inv = 1.0 / (atol + rtol * (u if u > v else v))
            if has_keep:
                inv *= 1.0 if kk[i] else 0.0     # left-out components count 0
            r5 = buf5[i] * inv
            a5 += r5 * r5
            if has_e3:
                r3 = buf3[i] * inv
                a3 += r3 * r3
        s5 += a5
        s3 += a3
    return s5, s3


@njit(cache=True, error_model="numpy")
def errsq_serial(y, y_new, ref, has_ref, K, e, e3, has_e3, rtol, atol, keep, has_keep):
    """``(sum (err5/sc)^2, sum (err3/sc)^2)`` over the whole state (float64), or over the
    components where ``keep`` (bool) is set when ``has_keep``."""
    return _errsq_range(y, y_new, ref, has_ref, K, e, e3, has_e3, rtol, atol, 0, y.shape[0],
                        keep, has_keep)


@njit(cache=True, parallel=True, error_model="numpy")
def errsq_parallel(y, y_new, ref, has_ref, K, e, e3, has_e3, rtol, atol, keep, has_keep,
                   nchunks):
    N = y.shape[0]
    s5 = 0.0
    s3 = 0.0
    for c in prange(nchunks):
        a, b = _errsq_range(y, y_new, ref, has_ref, K, e, e3, has_e3, rtol, atol,
                            (c * N) // nchunks, ((c + 1) * N) // nchunks, keep, has_keep)
        s5 += a
        s3 += b
    return s5, s3


@njit(cache=True, fastmath=_FM)
def _nonfinite_range(a, lo, hi):
    s = 0.0
    x = a[lo:hi]
    for i in range(hi - lo):
        s += x[i] * 0.0          # NaN iff some entry is NaN or infinite
    return math.isnan(s)


@njit(cache=True)
def nonfinite_serial(a):
    """Whether ``a`` holds a NaN or an infinity (one branch-free pass)."""
    return _nonfinite_range(a, 0, a.shape[0])


@njit(cache=True, parallel=True)
def nonfinite_parallel(a, nchunks):
    N = a.shape[0]
    bad = 0
    for c in prange(nchunks):
        if _nonfinite_range(a, (c * N) // nchunks, ((c + 1) * N) // nchunks):
            bad += 1
    return bad > 0


@njit(cache=True, fastmath=_FM)
def _diffsq_range(y, y0, lo, hi):
    d = 0.0
    b = 0.0
    for i in range(lo, hi):
        u = np.float64(y0[i])
        v = np.float64(y[i]) - u
        d += v * v
        b += u * u
    return d, b


@njit(cache=True)
def diffsq_serial(y, y0):
    """``(sum (y - y0)^2, sum y0^2)`` accumulated in float64."""
    return _diffsq_range(y, y0, 0, y.shape[0])


@njit(cache=True, parallel=True)
def diffsq_parallel(y, y0, nchunks):
    N = y.shape[0]
    d = 0.0
    b = 0.0
    for c in prange(nchunks):
        dd, bb = _diffsq_range(y, y0, (c * N) // nchunks, ((c + 1) * N) // nchunks)
        d += dd
        b += bb
    return d, b
