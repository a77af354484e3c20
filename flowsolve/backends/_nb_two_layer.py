"""Numba kernels of the two-layer right-hand side (see ``models/two_layer.py`` for the flow).

Two kernels families:

- *fused streaming* (small n): two passes over the neurons, in blocks of ``_B`` neurons
  held in L1. Pass 1 accumulates the network output ``f`` (n,); pass 2 writes ``dy/dt``
  for each block. No n x m temporaries. For d = 1 (D = 2, the phase-diagram case) the
  samples are taken four at a time with their inputs in registers (``n`` padded to a
  multiple of 4 with zero samples of zero error), so each inner loop is one vectorised
  sweep over the interleaved ``w`` doing four samples' work per load; measured 2.5-5x
  faster than one sweep per sample (docs/benchmarks.md). For D > 2, ``w`` is transposed
  into a (D, B) buffer so every inner loop is a unit-stride loop over neurons.
- *BLAS* (larger n d): ``pre = W Xs^T`` and ``G Xt`` by matrix products, with the
  activation, the output reduction and the error scaling fused in one pass around them;
  for n <= 8 the two products are the row kernels ``rows_in`` / ``rows_out`` instead.
  *Threaded BLAS* (large m): Numba's threads each take a range of neurons and run
  single-threaded BLAS on sub-blocks small enough to stay in L2 between the product and
  the elementwise pass (no BLAS thread pool spinning against Numba's).

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


@njit(fastmath=_FM)
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
        for i in range(n):
            _preact(wT, xs, i, bs, D, pre)
            acc = 0.0
            for k in range(bs):
                acc += ab[k] * sd(pre[k], code)[0]
            f[i] += acc


# -- d = 1: four samples per sweep ----------------------------------------------------
@njit
def _pack4(v):
    """(n, 2) -> (ceil(n/4), 8): rows of four samples' (v_i0, v_i1), zero-padded."""
    n = v.shape[0]
    G = (n + 3) // 4
    out = np.zeros((G, 8), dtype=v.dtype)
    for i in range(n):
        out[i // 4, 2 * (i % 4)] = v[i, 0]
        out[i // 4, 2 * (i % 4) + 1] = v[i, 1]
    return out


@njit(fastmath=_FM)
def _fwd4_chunk(a, w, X, code, f):
    """As :func:`_fwd_chunk` for D = 2, four samples per sweep (``X`` from :func:`_pack4`,
    ``f`` of length ``4 * X.shape[0]``)."""
    cnt = a.shape[0]
    for b0 in range(0, cnt, _B):
        bs = min(_B, cnt - b0)
        ab = a[b0:b0 + bs]
        wb = w[2 * b0:2 * (b0 + bs)]
        for gi in range(X.shape[0]):
            x = X[gi]
            x00, x01, x10, x11 = x[0], x[1], x[2], x[3]
            x20, x21, x30, x31 = x[4], x[5], x[6], x[7]
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for k in range(bs):
                u0, u1, ak = wb[2 * k], wb[2 * k + 1], ab[k]
                s0 += ak * sd(u0 * x00 + u1 * x01, code)[0]
                s1 += ak * sd(u0 * x10 + u1 * x11, code)[0]
                s2 += ak * sd(u0 * x20 + u1 * x21, code)[0]
                s3 += ak * sd(u0 * x30 + u1 * x31, code)[0]
            f[4 * gi] += s0
            f[4 * gi + 1] += s1
            f[4 * gi + 2] += s2
            f[4 * gi + 3] += s3


@njit(fastmath=_FM)
def _bwd4_chunk(a, w, X, T, E, code, ca_n, cw_n, out_a, out_w):
    """As :func:`_bwd_chunk` for D = 2, four samples per sweep (``X``, ``T`` from
    :func:`_pack4`; ``E`` (G, 4) the errors, zero on padded samples)."""
    cnt = a.shape[0]
    s = np.empty(_B, dtype=w.dtype)
    q0 = np.empty(_B, dtype=w.dtype)
    q1 = np.empty(_B, dtype=w.dtype)
    for b0 in range(0, cnt, _B):
        bs = min(_B, cnt - b0)
        wb = w[2 * b0:2 * (b0 + bs)]
        for k in range(bs):
            s[k] = 0.0
            q0[k] = 0.0
            q1[k] = 0.0
        for gi in range(X.shape[0]):
            x, t, e = X[gi], T[gi], E[gi]
            x00, x01, x10, x11 = x[0], x[1], x[2], x[3]
            x20, x21, x30, x31 = x[4], x[5], x[6], x[7]
            t00, t01, t10, t11 = t[0], t[1], t[2], t[3]
            t20, t21, t30, t31 = t[4], t[5], t[6], t[7]
            e0, e1, e2, e3 = e[0], e[1], e[2], e[3]
            for k in range(bs):
                u0, u1 = wb[2 * k], wb[2 * k + 1]
                h0, g0 = sd(u0 * x00 + u1 * x01, code)
                h1, g1 = sd(u0 * x10 + u1 * x11, code)
                h2, g2 = sd(u0 * x20 + u1 * x21, code)
                h3, g3 = sd(u0 * x30 + u1 * x31, code)
                s[k] += h0 * e0 + h1 * e1 + h2 * e2 + h3 * e3
                m0, m1, m2, m3 = g0 * e0, g1 * e1, g2 * e2, g3 * e3
                q0[k] += m0 * t00 + m1 * t10 + m2 * t20 + m3 * t30
                q1[k] += m0 * t01 + m1 * t11 + m2 * t21 + m3 * t31
        ab = a[b0:b0 + bs]
        oab = out_a[b0:b0 + bs]
        owb = out_w[2 * b0:2 * (b0 + bs)]
        for k in range(bs):
            oab[k] = ca_n * s[k]
            ck = cw_n * ab[k]
            owb[2 * k] = ck * q0[k]
            owb[2 * k + 1] = ck * q1[k]


@njit
def _errors4(r, G, dtype_like):
    """The errors ``r`` (n,) as a zero-padded (G, 4) array of ``dtype_like``'s dtype
    (``G = ceil(n / 4)``: no bounds checks here)."""
    E = np.zeros((G, 4), dtype=dtype_like.dtype)
    for i in range(r.shape[0]):
        E[i // 4, i % 4] = r[i]
    return E


@njit(fastmath=_FM)
def _bwd_chunk(a, w, xs, xt, e, code, ca_n, cw_n, out_a, out_w):
    """This chunk's ``dy/dt``: ``out_a = ca_n sigma(pre) e`` and
    ``out_w = cw_n a sigma'(pre) e xt``."""
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
        for i in range(n):
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
@njit(fastmath=_FM)
def _rows_fwd(pre, a, f, code):
    bs, n = pre.shape
    for k in range(bs):
        ak = a[k]
        row = pre[k]
        for i in range(n):
            f[i] += ak * sd(row[i], code)[0]


@njit(fastmath=_FM)
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


# -- small n: the two products of the BLAS path as row kernels ------------------------
# OpenBLAS runs the skinny products (m x D by D x n, m x n by n x D) with n <= 8 well below
# the memory bandwidth (at m = 1e5, D = 65, n = 4: 9.1 and 7.3 ms against 3.8 and 3.8 ms
# for these loops, one thread, side by side); one row per neuron, the D-loop vectorised.
@njit(inline="always")
def _products_in(W, X, P, lo, hi):
    """``P[k] = W[k] @ X.T`` for rows ``lo..hi`` (W (M, D), X (n, D), P (M, n))."""
    n, D = X.shape
    for k in range(lo, hi):
        w = W[k]
        for i in range(n):
            x = X[i]
            acc = 0.0
            for j in range(D):
                acc += w[j] * x[j]
            P[k, i] = acc


@njit(inline="always")
def _products_out(G, X, out, lo, hi):
    """``out[k] = G[k] @ X`` for rows ``lo..hi`` (G (M, n), X (n, D), out (M, D))."""
    n, D = X.shape
    for k in range(lo, hi):
        o = out[k]
        g = G[k]
        g0 = g[0]
        x0 = X[0]
        for j in range(D):
            o[j] = g0 * x0[j]
        for i in range(1, n):
            gi = g[i]
            xi = X[i]
            for j in range(D):
                o[j] += gi * xi[j]


@njit(cache=True, fastmath=_FM, parallel=True)
def rows_in(W, X, P, nchunks):
    """``P = W @ X.T`` row by row (``nchunks`` > 1: prange over chunks of rows)."""
    M = W.shape[0]
    if nchunks <= 1:
        _products_in(W, X, P, 0, M)
        return
    for c in prange(nchunks):
        lo, hi = _bounds(c, nchunks, M)
        _products_in(W, X, P, lo, hi)


@njit(cache=True, fastmath=_FM, parallel=True)
def rows_out(G, X, out, nchunks):
    """``out = G @ X`` row by row (``nchunks`` > 1: prange over chunks of rows)."""
    M = G.shape[0]
    if nchunks <= 1:
        _products_out(G, X, out, 0, M)
        return
    for c in prange(nchunks):
        lo, hi = _bounds(c, nchunks, M)
        _products_out(G, X, out, lo, hi)


# -- switching structure (ReLU family): the sliding method's per-step passes -----------
@njit(inline="always")
def _load_pair(A, B, b0, bs, D, aT, bT):
    """Rows ``b0 .. b0 + bs`` of ``A`` and ``B`` (M, D) transposed into ``aT``, ``bT`` (D, B)."""
    for k in range(bs):
        for j in range(D):
            aT[j, k] = A[b0 + k, j]
            bT[j, k] = B[b0 + k, j]


@njit(inline="always")
def _preact_pair(aT, bT, X, i, bs, D, p, q):
    """``p[k] = aT[:, k] . X[i]`` and ``q[k] = bT[:, k] . X[i]`` for a block (unit-stride
    loops over its neurons)."""
    x0 = X[i, 0]
    for k in range(bs):
        p[k] = aT[0, k] * x0
        q[k] = bT[0, k] * x0
    for j in range(1, D):
        xj = X[i, j]
        for k in range(bs):
            p[k] += aT[j, k] * xj
            q[k] += bT[j, k] * xj


@njit(inline="always")
def _pair_terms(a, W, fa, FW, X, lo, k, i):
    """The terms of pair (k, i) in the residual and its rate."""
    p = 0.0
    v = 0.0
    for j in range(X.shape[1]):
        p += W[k, j] * X[i, j]
        v += FW[k, j] * X[i, j]
    g = 1.0 if p > 0 else lo
    return a[k] * g * p, fa[k] * g * p + a[k] * g * v


@njit(inline="always")
def _rate_range(a, W, fa, FW, X, lo, e, rate, k0, k1):
    """Blocks of neurons transposed into (D, B) buffers, so each inner loop is a
    unit-stride (vectorised) loop over the block's neurons."""
    n, D = X.shape
    wT = np.empty((D, _B), dtype=W.dtype)
    fT = np.empty((D, _B), dtype=W.dtype)
    p = np.empty(_B, dtype=W.dtype)
    v = np.empty(_B, dtype=W.dtype)
    for b0 in range(k0, k1, _B):
        bs = min(_B, k1 - b0)
        _load_pair(W, FW, b0, bs, D, wT, fT)
        ab = a[b0:b0 + bs]
        fab = fa[b0:b0 + bs]
        for i in range(n):
            _preact_pair(wT, fT, X, i, bs, D, p, v)
            se = 0.0
            sr = 0.0
            for k in range(bs):
                g = 1.0 if p[k] > 0 else lo
                h = g * p[k]
                se += ab[k] * h
                sr += fab[k] * h + ab[k] * g * v[k]
            e[i] += se
            rate[i] += sr


@njit(cache=True, fastmath=_FM, parallel=True)
def residual_rate(a, W, fa, FW, X, sk, si, lo, nchunks):
    """``(sum_k a_k sigma(p_ki), sum_k fa_k sigma(p_ki) + a_k sigma'(p_ki) FW_k . x_i)``
    (n,) each, float64, with ``p_ki = W_k . x_i`` (unscaled), ``sigma`` ReLU with slope
    ``lo`` below 0, and the sliding pairs ``(sk[r], si[r])`` left out (their terms are
    subtracted after the pass: they are few)."""
    M = W.shape[0]
    n = X.shape[0]
    k = max(1, nchunks)
    pe = np.zeros((k, n))
    pr = np.zeros((k, n))
    if nchunks <= 1:
        _rate_range(a, W, fa, FW, X, lo, pe[0], pr[0], 0, M)
    else:
        for c in prange(nchunks):
            lo_k, hi_k = _bounds(c, nchunks, M)
            _rate_range(a, W, fa, FW, X, lo, pe[c], pr[c], lo_k, hi_k)
    e = pe.sum(axis=0)
    rate = pr.sum(axis=0)
    _drop_pairs(e, rate, a, W, fa, FW, X, lo, sk, si)
    return e, rate


@njit(inline="always")
def _cross_range(W0, W1, X, flag, k0, k1):
    n, D = X.shape
    w0T = np.empty((D, _B), dtype=W0.dtype)
    w1T = np.empty((D, _B), dtype=W0.dtype)
    p0 = np.empty(_B, dtype=W0.dtype)
    p1 = np.empty(_B, dtype=W0.dtype)
    fb = np.empty(_B, dtype=np.uint8)
    for b0 in range(k0, k1, _B):
        bs = min(_B, k1 - b0)
        _load_pair(W0, W1, b0, bs, D, w0T, w1T)
        for k in range(bs):
            fb[k] = 0
        for i in range(n):
            _preact_pair(w0T, w1T, X, i, bs, D, p0, p1)
            for k in range(bs):
                fb[k] |= (p0[k] > 0) != (p1[k] > 0)
        for k in range(bs):
            flag[b0 + k] = fb[k] != 0


@njit(cache=True, fastmath=_FM, parallel=True)
def crossing_rows(W0, W1, X, flag, nchunks):
    """``flag[k]``: some pre-activation ``W_k . x_i`` of neuron k changed sign between
    ``W0`` and ``W1`` (bool (M,))."""
    M = W0.shape[0]
    if nchunks <= 1:
        _cross_range(W0, W1, X, flag, 0, M)
        return
    for c in prange(nchunks):
        lo_k, hi_k = _bounds(c, nchunks, M)
        _cross_range(W0, W1, X, flag, lo_k, hi_k)


# the same passes with the products in BLAS (n > SMALL_N): blocks of ``SB`` neurons per
# thread, each block's pre-activations ``W_b X^T`` (SB, n) by one single-threaded GEMM
@njit(inline="always")
def _block_pre(A, B, XT, s0, s1, P, Q):
    """Rows ``s0:s1`` of ``A XT`` and ``B XT`` into the leading rows of ``P``, ``Q``
    (two GEMMs); returns those views."""
    Pb = P[:s1 - s0]
    Qb = Q[:s1 - s0]
    np.dot(A[s0:s1], XT, Pb)
    np.dot(B[s0:s1], XT, Qb)
    return Pb, Qb


@njit(inline="always")
def _rate_block(P, Q, a, fa, lo, e, rate):
    bs, n = P.shape
    for k in range(bs):
        ak = a[k]
        fk = fa[k]
        for i in range(n):
            p = P[k, i]
            g = 1.0 if p > 0 else lo
            e[i] += ak * g * p
            rate[i] += g * (fk * p + ak * Q[k, i])


@njit(inline="always")
def _flag_block(A, B, flag, s0):
    """``flag[s0 + k]``: row ``k`` of ``A`` and ``B`` differ in the sign of an entry."""
    for kk in range(A.shape[0]):
        f = False
        for i in range(A.shape[1]):
            f |= (A[kk, i] > 0) != (B[kk, i] > 0)
        flag[s0 + kk] = f


@njit(inline="always")
def _drop_pairs(e, rate, a, W, fa, FW, X, lo, sk, si):
    """Subtract the sliding pairs' terms from ``e`` and ``rate`` (see
    :func:`residual_rate`)."""
    for r in range(sk.shape[0]):
        te, tr = _pair_terms(a, W, fa, FW, X, lo, sk[r], si[r])
        e[si[r]] -= te
        rate[si[r]] -= tr


@njit(cache=True, fastmath=_FM, parallel=True)
def residual_rate_blas(a, W, fa, FW, XT, sk, si, lo, SB, nchunks):
    """:func:`residual_rate` with ``XT`` (D, n) = ``X^T`` and the products ``W_b XT``,
    ``FW_b XT`` of blocks of ``SB`` neurons in BLAS."""
    M = W.shape[0]
    n = XT.shape[1]
    k = max(1, nchunks)
    pe = np.zeros((k, n))
    pr = np.zeros((k, n))
    for c in prange(k):
        lo_k, hi_k = _bounds(c, k, M)
        P = np.empty((SB, n), dtype=W.dtype)
        Q = np.empty((SB, n), dtype=W.dtype)
        for s0 in range(lo_k, hi_k, SB):
            s1 = min(s0 + SB, hi_k)
            Pb, Qb = _block_pre(W, FW, XT, s0, s1, P, Q)
            _rate_block(Pb, Qb, a[s0:s1], fa[s0:s1], lo, pe[c], pr[c])
    e = pe.sum(axis=0)
    rate = pr.sum(axis=0)
    if sk.shape[0]:
        _drop_pairs(e, rate, a, W, fa, FW, np.ascontiguousarray(XT.T), lo, sk, si)
    return e, rate


@njit(cache=True, fastmath=_FM, parallel=True)
def crossing_rows_blas(W0, W1, XT, flag, SB, nchunks):
    """:func:`crossing_rows` with the products of blocks of ``SB`` neurons in BLAS."""
    M = W0.shape[0]
    n = XT.shape[1]
    k = max(1, nchunks)
    for c in prange(k):
        lo_k, hi_k = _bounds(c, k, M)
        P0 = np.empty((SB, n), dtype=W0.dtype)
        P1 = np.empty((SB, n), dtype=W0.dtype)
        for s0 in range(lo_k, hi_k, SB):
            s1 = min(s0 + SB, hi_k)
            A, B = _block_pre(W0, W1, XT, s0, s1, P0, P1)
            _flag_block(A, B, flag, s0)


@njit(cache=True, fastmath=_FM, parallel=True)
def step_ends_blas(a0, W0, fa0, FW0, a1, W1, fa1, FW1, XT, flag, sk, si, lo, SB, nchunks):
    """:func:`crossing_rows_blas` of ``W0``, ``W1`` and :func:`residual_rate_blas` at both
    ends of a step (states ``a0, W0``, ``a1, W1``, velocities ``fa0, FW0``, ``fa1,
    FW1``) in one pass: the pre-activations at the two ends serve the crossing flags and
    the rates, four products per block instead of six. Returns ``(e0, r0, e1, r1)``."""
    M = W0.shape[0]
    n = XT.shape[1]
    k = max(1, nchunks)
    acc = np.zeros((4, k, n))
    for c in prange(k):
        lo_k, hi_k = _bounds(c, k, M)
        P0 = np.empty((SB, n), dtype=W0.dtype)
        Q0 = np.empty((SB, n), dtype=W0.dtype)
        P1 = np.empty((SB, n), dtype=W0.dtype)
        Q1 = np.empty((SB, n), dtype=W0.dtype)
        for s0 in range(lo_k, hi_k, SB):
            s1 = min(s0 + SB, hi_k)
            A0, B0 = _block_pre(W0, FW0, XT, s0, s1, P0, Q0)
            A1, B1 = _block_pre(W1, FW1, XT, s0, s1, P1, Q1)
            _flag_block(A0, A1, flag, s0)
            _rate_block(A0, B0, a0[s0:s1], fa0[s0:s1], lo, acc[0, c], acc[1, c])
            _rate_block(A1, B1, a1[s0:s1], fa1[s0:s1], lo, acc[2, c], acc[3, c])
    e0 = acc[0].sum(axis=0)
    r0 = acc[1].sum(axis=0)
    e1 = acc[2].sum(axis=0)
    r1 = acc[3].sum(axis=0)
    if sk.shape[0]:
        X = np.ascontiguousarray(XT.T)
        _drop_pairs(e0, r0, a0, W0, fa0, FW0, X, lo, sk, si)
        _drop_pairs(e1, r1, a1, W1, fa1, FW1, X, lo, sk, si)
    return e0, r0, e1, r1


# -- the network output, shared by the forward and RHS entry points -------------------
@njit(fastmath=_FM)
def _forward_serial(y, M, xs, code):
    n, D = xs.shape
    if D == 2:
        X = _pack4(xs)
        f4 = np.zeros(4 * X.shape[0])
        _fwd4_chunk(y[:M], y[M:], X, code, f4)
        return f4[:n].copy()
    f = np.zeros(n)
    _fwd_chunk(y[:M], y[M:], xs, code, f)
    return f


@njit(inline="always")
def _forward_parallel(y, M, xs, nchunks, code):
    n, D = xs.shape
    X = _pack4(xs) if D == 2 else xs[:0]
    width = 4 * X.shape[0] if D == 2 else n
    part = np.zeros((nchunks, width))
    for c in prange(nchunks):
        lo, hi = _bounds(c, nchunks, M)
        if D == 2:
            _fwd4_chunk(y[lo:hi], y[M + 2 * lo:M + 2 * hi], X, code, part[c])
        else:
            _fwd_chunk(y[lo:hi], y[M + lo * D:M + hi * D], xs, code, part[c])
    f = np.zeros(n)
    for c in range(nchunks):
        f += part[c, :n]
    return f


# -- entry points, specialised per activation ------------------------------------------
_KERNELS = {}


def kernels(code: int) -> SimpleNamespace:
    """The entry kernels for activation ``code``, compiled (or loaded from the on-disk
    cache) on first use. ``code`` is a closure constant, so each activation gets its own
    vectorised loops and Numba caches each one under its own key.

    Returns a namespace with ``forward_serial(y, M, xs)``,
    ``forward_parallel(y, M, xs, nchunks)`` -> outputs (n,) float64;
    ``rhs_serial(y, out, M, xs, xt, Y, cf, ca_n, cw_n)``,
    ``rhs_parallel(..., nchunks)`` -> the residual ``r`` (n,) float64 (loss
    ``r . r / (2 n)``); ``blas_forward(pre, a, f)`` and
    ``blas_backward(pre, a, e, ca_n, cw_n, out_a)``; ``threaded_forward(W, a, xsT, P, SB,
    store, nchunks)`` -> outputs (n,) and ``threaded_backward(W, a, xsT, xt, P, e, ca_n,
    cw_n, out_a, out_W, SB, store, nchunks)``: the BLAS path with Numba's threads, each
    running single-threaded BLAS on sub-blocks of ``SB`` rows (``store``: ``P`` (M, n) keeps
    the pre-activations between the two; else ``P`` is a (nchunks SB, n) workspace and
    the backward recomputes them).
    """
    if code in _KERNELS:
        return _KERNELS[code]

    # the closures capture only ``code`` (an int): a captured dispatcher would change the
    # cache key in every process and recompile them each time
    def forward_serial(y, M, xs):
        return _forward_serial(y, M, xs, code)

    def forward_parallel(y, M, xs, nchunks):
        return _forward_parallel(y, M, xs, nchunks, code)

    serial = njit(cache=True, fastmath=_FM)
    parallel = njit(cache=True, fastmath=_FM, parallel=True)
    fwd_serial, fwd_parallel = serial(forward_serial), parallel(forward_parallel)

    def rhs_serial(y, out, M, xs, xt, Y, cf, ca_n, cw_n):
        n, D = xs.shape
        r = cf * _forward_serial(y, M, xs, code) - Y
        if D == 2:
            X, T = _pack4(xs), _pack4(xt)
            _bwd4_chunk(y[:M], y[M:], X, T, _errors4(r, X.shape[0], y), code, ca_n, cw_n,
                        out[:M], out[M:])
        else:
            _bwd_chunk(y[:M], y[M:], xs, xt, r.astype(y.dtype), code, ca_n, cw_n,
                       out[:M], out[M:])
        return r

    def rhs_parallel(y, out, M, xs, xt, Y, cf, ca_n, cw_n, nchunks):
        n, D = xs.shape
        r = cf * _forward_parallel(y, M, xs, nchunks, code) - Y
        e = r.astype(y.dtype)
        if D == 2:
            X, T = _pack4(xs), _pack4(xt)
            E = _errors4(r, X.shape[0], y)
        else:                                   # unused placeholders of the same types
            X, T, E = xs[:0], xt[:0], np.zeros((0, 4), dtype=y.dtype)
        for c in prange(nchunks):
            lo, hi = _bounds(c, nchunks, M)
            if D == 2:
                _bwd4_chunk(y[lo:hi], y[M + 2 * lo:M + 2 * hi], X, T, E, code, ca_n, cw_n,
                            out[lo:hi], out[M + 2 * lo:M + 2 * hi])
            else:
                _bwd_chunk(y[lo:hi], y[M + lo * D:M + hi * D], xs, xt, e, code, ca_n, cw_n,
                           out[lo:hi], out[M + lo * D:M + hi * D])
        return r

    def blas_forward(pre, a, f):
        _rows_fwd(pre, a, f, code)

    def threaded_forward(W, a, xsT, P, SB, store, nchunks):
        M, n = W.shape[0], xsT.shape[1]
        part = np.zeros((nchunks, n))
        for c in prange(nchunks):
            lo, hi = _bounds(c, nchunks, M)
            for s0 in range(lo, hi, SB):
                s1 = min(s0 + SB, hi)
                Pb = P[s0:s1] if store else P[c * SB:c * SB + s1 - s0]
                np.dot(W[s0:s1], xsT, Pb)
                _rows_fwd(Pb, a[s0:s1], part[c], code)
        f = np.zeros(n)
        for c in range(nchunks):
            f += part[c]
        return f

    def threaded_backward(W, a, xsT, xt, P, e, ca_n, cw_n, out_a, out_W, SB, store, nchunks):
        M = W.shape[0]
        for c in prange(nchunks):
            lo, hi = _bounds(c, nchunks, M)
            for s0 in range(lo, hi, SB):
                s1 = min(s0 + SB, hi)
                if store:
                    Pb = P[s0:s1]
                else:
                    Pb = P[c * SB:c * SB + s1 - s0]
                    np.dot(W[s0:s1], xsT, Pb)
                _rows_bwd(Pb, a[s0:s1], e, ca_n, cw_n, out_a[s0:s1], code)
                np.dot(Pb, xt, out_W[s0:s1])

    def blas_backward(pre, a, e, ca_n, cw_n, out_a):
        _rows_bwd(pre, a, e, ca_n, cw_n, out_a, code)

    ns = SimpleNamespace(
        forward_serial=fwd_serial, forward_parallel=fwd_parallel,
        rhs_serial=serial(rhs_serial), rhs_parallel=parallel(rhs_parallel),
        blas_forward=serial(blas_forward), blas_backward=serial(blas_backward),
        threaded_forward=parallel(threaded_forward),
        threaded_backward=parallel(threaded_backward))
    _KERNELS[code] = ns
    return ns
