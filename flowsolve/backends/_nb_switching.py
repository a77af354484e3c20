"""Numba kernels of the sliding method's event handling (ReLU-family two-layer flows).

Compiled twins of the NumPy code in :class:`flowsolve.models.two_layer_structure.Switching`:

- :func:`neuron_rhs` is ``Switching._neuron_rhs`` plus the equivalent controls, for the
  rows of neurons with sliding pairs (``Switching.rhs`` on the compiled path);
  :func:`sliding_rows` is its middle part, for the caller that does the two O(q n D)
  products in BLAS;
- :func:`integrate_neurons` is ``Switching.integrate_neurons``: the event neurons of a
  step re-integrated through their switching events against the cubic Hermite residual
  of the step, one neuron at a time (the NumPy code is batched over neurons; the steps,
  events and decisions are the same, the rounding differs).

Every neuron is independent given the residual, so the entry points loop over neurons
serially or, with ``nchunks > 1``, ``prange`` over chunks of them. Per neuron the work is
O(n D) per stage on arrays of n and D entries (scratch allocated once per chunk); a
neuron's velocity within a substep is linear in its parameters, so an RK4 substep needs
one or two O(n D) passes (:func:`_rk4`). Also here: the exponential steps' event test
(:func:`event_pairs`) and a linearisation's ReLU pattern (:func:`relu_pattern`), one
pass over the (M, n) pairs each.

Conventions as in the model: ``X`` (n, D) the augmented inputs ``x~_i``, ``XX = X X^T``,
``P`` the frozen ``sigma'`` pattern (1 above the surface, ``lo`` below), ``S`` the
sliding pairs, ``ca_n = -c_a / n``, ``cw_n = -c_w / n``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..models.two_layer_structure import MAX_EVENTS_PER_SUBSTEP as _MAX_EVENTS

_EPS = np.finfo(np.float64).eps
#: reassociation lets LLVM vectorise the dot products over the D inputs (a sum in a loop
#: is otherwise one serial chain of adds): 3x on the n = 256, D = 65 digits problem
_FAST = {"reassoc", "contract"}


@njit(cache=True, fastmath=_FAST)
def _ge_dot(g, e, XX, i):
    """``sum_j g_j e_j XX_ij`` (reassociated: vectorised)."""
    s = 0.0
    for j in range(g.shape[0]):
        s += g[j] * e[j] * XX[i, j]
    return s


@njit(cache=True)
def _controls(g, S, e, XX):
    """Equivalent controls of one neuron's sliding pairs, written into ``g`` (n,) on
    ``S`` (see ``two_layer_structure.controls``): ``sum_j e_j g_j XX_ji = 0`` for ``i`` in
    ``S``; one pair in closed form, several through the Cholesky factor of ``XX`` on
    ``S`` (the system is ``XX_SS diag(e_S) theta = b``), by least squares where that is
    singular or ill-conditioned. ``XX`` is symmetric (rows are read for columns)."""
    n = g.shape[0]
    p = 0
    for i in range(n):
        if S[i]:
            g[i] = 0.0
            p += 1
    if p == 0:
        return
    if p == 1:
        i = 0
        while not S[i]:
            i += 1
        num = _ge_dot(g, e, XX, i)
        den = e[i] * XX[i, i]
        g[i] = -num / den if den != 0.0 else 0.0
        return
    idx = np.empty(p, dtype=np.int64)
    q = 0
    for i in range(n):
        if S[i]:
            idx[q] = i
            q += 1
    b = np.empty(p)
    emax = 0.0
    dmax = 0.0
    for r in range(p):
        b[r] = -_ge_dot(g, e, XX, idx[r])
        emax = max(emax, abs(e[idx[r]]))
        dmax = max(dmax, XX[idx[r], idx[r]])
    # Cholesky XX_SS = L L^T while the system is well conditioned (pivots above 1e-6 of
    # the largest diagonal, |e| on S within 1e4 of its largest): there least squares
    # (rcond ~ p eps) would return the same unique solution
    L = np.zeros((p, p))
    ok = emax > 0.0
    for r in range(p):
        if abs(e[idx[r]]) <= 1e-4 * emax:
            ok = False
    c = 0
    while ok and c < p:
        s = XX[idx[c], idx[c]]
        for k in range(c):
            s -= L[c, k] * L[c, k]
        if s <= 1e-6 * dmax:
            ok = False
            break
        L[c, c] = np.sqrt(s)
        for r in range(c + 1, p):
            s = XX[idx[r], idx[c]]
            for k in range(c):
                s -= L[r, k] * L[c, k]
            L[r, c] = s / L[c, c]
        c += 1
    if ok:
        for r in range(p):                  # L z = b
            s = b[r]
            for k in range(r):
                s -= L[r, k] * b[k]
            b[r] = s / L[r, r]
        for r in range(p - 1, -1, -1):      # L^T u = z, theta = u / e_S
            s = b[r]
            for k in range(r + 1, p):
                s -= L[k, r] * b[k]
            b[r] = s / L[r, r]
        for r in range(p):
            g[idx[r]] = b[r] / e[idx[r]]
        return
    A = np.empty((p, p))
    for r in range(p):
        for c in range(p):
            A[r, c] = XX[idx[r], idx[c]] * e[idx[c]]
    th = np.linalg.lstsq(A, b, rcond=_EPS * p)[0]
    for r in range(p):
        g[idx[r]] = th[r]


@njit(cache=True, fastmath=_FAST)
def _rhs1(a, w, P, S, e, X, XX, ca_n, cw_n, g, dw):
    """Velocity of one neuron with frozen pattern ``P`` and sliding pairs ``S`` held by
    their equivalent controls: writes ``dw`` (D,) and the controls into ``g`` (n,),
    returns ``da``."""
    n, D = X.shape
    sliding = False
    for i in range(n):
        if S[i]:
            sliding = True
            break
    for j in range(D):
        dw[j] = 0.0
    sda = 0.0
    for i in range(n):
        if S[i]:
            g[i] = 0.0
            continue
        p = 0.0
        for j in range(D):
            p += w[j] * X[i, j]
        sda += P[i] * p * e[i]
        g[i] = P[i]
        if not sliding:             # one pass over X: the row is used again while in cache
            c = P[i] * e[i]
            for j in range(D):
                dw[j] += c * X[i, j]
    if sliding:                     # the controls need every pair's sigma' first
        _controls(g, S, e, XX)
        for i in range(n):
            c = g[i] * e[i]
            for j in range(D):
                dw[j] += c * X[i, j]
    f = cw_n * a
    for j in range(D):
        dw[j] *= f
    return ca_n * sda


@njit(cache=True)
def _herm(R, h, tau, out):
    """The step's residual ``e(tau)`` (n,) on ``[0, h]`` (``StepResidual``): the cubic
    Hermite interpolant ``R[0] = (e0, r0, e1, r1)`` (4, n) plus the linear modes
    ``sum_j V_j exp(-tau lam_j) c_j`` with ``R[1] = V^T`` (r, n), ``R[2] = (lam, c)``
    (2, r) (r = 0: none)."""
    E, VT, LC = R
    s = tau / h
    h00 = (1 + 2 * s) * (1 - s) ** 2
    h10 = h * (s * (1 - s) ** 2)
    h01 = s * s * (3 - 2 * s)
    h11 = h * (s * s * (s - 1))
    n = out.shape[0]
    for i in range(n):
        out[i] = h00 * E[0, i] + h10 * E[1, i] + h01 * E[2, i] + h11 * E[3, i]
    for j in range(VT.shape[0]):
        cj = np.exp(-tau * LC[0, j]) * LC[1, j]
        for i in range(n):
            out[i] += cj * VT[j, i]


@njit(cache=True)
def _residual_at(R, h, t, G, gi, e):
    """``e(t)`` into ``e``: row ``gi`` of the grid table ``G`` if ``gi >= 0``, else
    :func:`_herm`."""
    if gi >= 0:
        for i in range(e.shape[0]):
            e[i] = G[gi, i]
    else:
        _herm(R, h, t, e)


@njit(cache=True)
def _grid_table(R, h, substeps):
    """``e`` (2 substeps + 1, n) at the regular substeps' RK4 stage times ``k h /
    (2 substeps)``: shared by every neuron (with the linear modes one evaluation costs
    r n)."""
    n = R[0].shape[1]
    dt = h / substeps
    G = np.empty((2 * substeps + 1, n))
    for sub in range(substeps):
        t0 = sub * h / substeps
        _herm(R, h, t0, G[2 * sub])
        _herm(R, h, t0 + 0.5 * dt, G[2 * sub + 1])
    _herm(R, h, h, G[2 * substeps])
    return G


@njit(cache=True, fastmath=_FAST)
def _pattern_sum(P, e, X, v):
    """``v = X^T (P e)`` (D,): with the pattern ``P`` frozen and no sliding pair, a
    neuron's velocity is ``da = ca_n w . v``, ``dw = cw_n a v``."""
    n, D = X.shape
    for j in range(D):
        v[j] = 0.0
    for i in range(n):
        c = P[i] * e[i]
        for j in range(D):
            v[j] += c * X[i, j]


@njit(cache=True, fastmath=_FAST)
def _pattern_sum2(P, e1, e2, X, v1, v2):
    """:func:`_pattern_sum` at two times in one pass over ``X`` (it streams from L2)."""
    n, D = X.shape
    for j in range(D):
        v1[j] = 0.0
        v2[j] = 0.0
    for i in range(n):
        c1 = P[i] * e1[i]
        c2 = P[i] * e2[i]
        for j in range(D):
            x = X[i, j]
            v1[j] += c1 * x
            v2[j] += c2 * x


@njit(cache=True, fastmath=_FAST)
def _dot(u, v):
    s = 0.0
    for j in range(u.shape[0]):
        s += u[j] * v[j]
    return s


_RK4_C = (0.0, 0.5, 0.5, 1.0)      # classical RK4: nodes,
_RK4_B = (1.0, 2.0, 2.0, 1.0)      # weights times 6,
_RK4_V = (0, 1, 1, 2)              # and which of v(t0), v(t0 + dt/2), v(t0 + dt) each uses


@njit(cache=True)
def _rk4_linear(a, w, dt, ca_n, cw_n, V, U, kw, wt, w_out):
    """One classical RK4 step of a neuron whose velocity is linear in ``(a, w)``:
    ``da = ca_n w . u(tau)``, ``dw = cw_n a v(tau)``, given ``v`` and ``u`` at the substep's
    start, middle and end (rows 0, 1, 2 of ``V``, ``U`` (3, D)); writes ``w_out`` (D,),
    returns the new ``a``. ``kw`` (4, D), ``wt`` (D,): scratch."""
    D = w.shape[0]
    for j in range(D):
        wt[j] = w[j]
    at = a
    acc = 0.0                               # sum of b_s k_s for a (times 6)
    for s in range(4):
        v = V[_RK4_V[s]]
        ks = ca_n * _dot(wt, U[_RK4_V[s]])
        acc += _RK4_B[s] * ks
        f = cw_n * at
        for j in range(D):
            kw[s, j] = f * v[j]
        if s < 3:                           # the next stage's state
            c = _RK4_C[s + 1] * dt
            at = a + c * ks
            for j in range(D):
                wt[j] = w[j] + c * kw[s, j]
    for j in range(D):
        sw = 0.0
        for s in range(4):
            sw += _RK4_B[s] * kw[s, j]
        w_out[j] = w[j] + dt / 6.0 * sw
    return a + dt / 6.0 * acc


@njit(cache=True)
def _rk4_frozen(a, w, P, R, h, t0, dt, X, ca_n, cw_n, e, e2, kw, wt, w_out, G, gi, vs,
                vkey):
    """:func:`_rk4` for a neuron without sliding pairs: its velocity is linear in
    ``(a, w)`` through ``v(tau) = X^T (P e(tau))``, so the four stages need ``v`` at
    ``t0``, ``t0 + dt/2`` and ``t0 + dt`` only: three passes over ``X`` (two where the
    substep before left ``v`` at ``t0``; the last two in one) instead of eight. ``e2`` (n,),
    ``vs`` (3, D) scratch; ``vkey`` (1,) int: the grid row ``vs[2]`` holds ``v`` at (-1:
    none), updated here."""
    D = w.shape[0]
    if gi >= 0 and vkey[0] == gi:
        for j in range(D):
            vs[0, j] = vs[2, j]
    else:
        _residual_at(R, h, t0, G, gi, e)
        _pattern_sum(P, e, X, vs[0])
    _residual_at(R, h, t0 + 0.5 * dt, G, gi + 1 if gi >= 0 else -1, e)
    _residual_at(R, h, t0 + dt, G, gi + 2 if gi >= 0 else -1, e2)
    _pattern_sum2(P, e, e2, X, vs[1], vs[2])
    vkey[0] = gi + 2 if gi >= 0 else -1
    V = vs[:3]
    return _rk4_linear(a, w, dt, ca_n, cw_n, V, V, kw, wt, w_out)


@njit(cache=True, fastmath=_FAST)
def _sliding_sums(P, S, e, X, XX, g, u, v):
    """A sliding neuron's velocity vectors at one time (residual ``e`` (n,)): the
    controls into ``g`` (n,) (``P`` outside ``S``), ``u = X^T (P e)`` over the pairs
    outside ``S`` and ``v = X^T (g e)`` (D,), one pass over ``X``."""
    n, D = X.shape
    for i in range(n):
        g[i] = 0.0 if S[i] else P[i]
    _controls(g, S, e, XX)
    for j in range(D):
        u[j] = 0.0
        v[j] = 0.0
    for i in range(n):
        cu = 0.0 if S[i] else P[i] * e[i]
        cv = g[i] * e[i]
        for j in range(D):
            x = X[i, j]
            u[j] += cu * x
            v[j] += cv * x


@njit(cache=True)
def _rk4(a, w, P, S, R, h, t0, dt, X, XX, ca_n, cw_n, e, g, kw, wt, w_out, G, gi, vs, vkey):
    """One classical RK4 step of one neuron from ``t0`` by ``dt``; writes ``w_out``
    (D,), returns the new ``a``. ``e``, ``g`` (n,), ``kw`` (4, D), ``wt`` (D,): scratch.
    ``G``, ``gi``: the grid table and the row of ``t0`` in it (-1: off the grid);
    ``vs`` (6, D) scratch, ``vkey`` the cache of :func:`_rk4_frozen`.

    With or without sliding pairs the velocity is linear in ``(a, w)``: ``dw = cw_n a
    v(tau)``, ``da = ca_n w . u(tau)`` with ``v = X^T (g e)``, ``g`` the frozen pattern
    and the equivalent controls on the sliding pairs (which depend on ``e(tau)``, not on
    the neuron), and ``u = X^T (P e)`` over the pairs outside ``S`` (``sum P_i e_i w .
    x~_i``, the sliding pairs' ``sigma`` being 0). So the four stages need the two
    vectors at three times only (:func:`_rk4_linear`); without sliding pairs ``u = v``
    (:func:`_rk4_frozen`). Both reuse the substep before's end where ``vkey`` says it
    is on the grid at ``t0`` (callers reset it where ``P`` or ``S`` change)."""
    sliding = False
    for i in range(S.shape[0]):
        if S[i]:
            sliding = True
            break
    if not sliding:
        return _rk4_frozen(a, w, P, R, h, t0, dt, X, ca_n, cw_n, e, g, kw, wt, w_out, G,
                           gi, vs, vkey)
    r0 = 0
    if gi >= 0 and vkey[0] == gi:           # the substep before ended at t0 (same P, S)
        for j in range(w.shape[0]):
            vs[0, j] = vs[2, j]
            vs[3, j] = vs[5, j]
        r0 = 1
    for r in range(r0, 3):
        c = 0.5 * r * dt
        _residual_at(R, h, t0 + c, G, gi + r if gi >= 0 else -1, e)
        _sliding_sums(P, S, e, X, XX, g, vs[3 + r], vs[r])
    vkey[0] = gi + 2 if gi >= 0 else -1
    return _rk4_linear(a, w, dt, ca_n, cw_n, vs[:3], vs[3:], kw, wt, w_out)


@njit(cache=True, fastmath=_FAST)
def _dot_row(w, X, i):
    s = 0.0
    for j in range(w.shape[0]):
        s += w[j] * X[i, j]
    return s


@njit(cache=True)
def _dip(p0, b, p1, up):
    """``two_layer_structure.dip_fraction`` for one pair: the first root in [0, 1] of the
    quadratic through ``p0`` (rate ``b``) and ``p1`` where it leaves its side (``up``:
    the active side) and comes back inside the interval, else 2.0."""
    c = p1 - p0 - b
    if c == 0.0 or (b >= 0 if up else b <= 0):
        return 2.0
    s_ext = -b / (2.0 * c)
    ext = p0 - b * b / (4.0 * c)
    if not (s_ext > 0 and s_ext < 1 and (ext < 0 if up else ext > 0)):
        return 2.0
    root = 2.0 * abs(p0) / (abs(b) + np.sqrt(max(b * b - 4.0 * c * p0, 0.0)))
    return min(max(root, 0.0), 1.0)


@njit(cache=True)
def _onto_surface(w, X, XX, i):
    """Project ``w`` (D,) onto ``w . x~_i = 0`` along ``x~_i``; returns the multiple
    ``c`` of ``x~_i`` taken off (pre-activations move by ``-c XX[i]``)."""
    c = _dot_row(w, X, i) / XX[i, i]
    for j in range(w.shape[0]):
        w[j] -= c * X[i, j]
    return c


@njit(cache=True)
def _spans_space(S, X):
    """``two_layer_structure.spans_space`` for one neuron: whether the inputs of its
    pairs ``S`` (n,) span ``R^D`` (then ``w = 0`` on all of their surfaces); the rank
    by SVD with ``matrix_rank``'s threshold."""
    n, D = X.shape
    p = 0
    for i in range(n):
        if S[i]:
            p += 1
    if p < D:
        return False
    A = np.empty((p, D))
    r = 0
    for i in range(n):
        if S[i]:
            for j in range(D):
                A[r, j] = X[i, j]
            r += 1
    sv = np.linalg.svd(A)[1]
    tol = sv[0] * max(p, D) * _EPS
    rank = 0
    for j in range(sv.shape[0]):
        if sv[j] > tol:
            rank += 1
    return rank == D


#: as in the NumPy code (the same algorithm)
MAX_EVENTS_PER_SUBSTEP = _MAX_EVENTS


@njit(cache=True)
def _cubic_root(p0, d0, p1, d1, s):
    """The root in ``[0, 1]`` of the cubic Hermite ``p(s)`` through ``p0`` (slope ``d0``)
    and ``p1`` (slope ``d1``), ``p0 p1 <= 0``: safeguarded Newton from ``s`` (the linear
    interpolant's root), bisection where a Newton step leaves the bracket."""
    lo_s, hi_s = 0.0, 1.0
    for _ in range(8):
        u = 1.0 - s
        val = (1 + 2 * s) * u * u * p0 + s * u * u * d0 + s * s * (3 - 2 * s) * p1 \
            + s * s * (s - 1) * d1
        if val == 0.0:
            return s
        if (val > 0) == (p0 > 0):
            lo_s = s
        else:
            hi_s = s
        der = 6 * s * (s - 1) * (p0 - p1) + (1 - 4 * s + 3 * s * s) * d0 \
            + (3 * s * s - 2 * s) * d1
        if der != 0.0:
            s_new = s - val / der
            if abs(s_new - s) <= 1e-13:         # converged (before the bracket test:
                return s_new                    # s itself may be the bracket's end)
        else:
            s_new = -1.0
        if not (s_new > lo_s and s_new < hi_s):
            s_new = 0.5 * (lo_s + hi_s)
        s = s_new
    return s


@njit(cache=True)
def _first_event(p, q, w1, kw, vs, f_end, ds, S, P, X, xn, last):
    """The first event pair of a segment of length ``ds`` and its fraction of it:
    ``(i, f)``, ``(-1, 2.0)`` if none. ``p`` (n,): pre-activations at the start
    (pairs outside ``S``); fills ``q`` with those at the end (``w1``). A crossing is
    located on the cubic through both ends' values and rates (``kw[0]`` the input
    weights' velocity at the start, ``f_end vs[2]`` at the end); an excursion across and
    back on the quadratic through the start's value and rate and the end's value.
    ``last``: the pair put on its surface at the segment's start (skipped: it starts at
    0; should it end on the wrong side, the next substep starts with its event).
    ``p(s) >= min(p0, p1) - (|b| + |p1 - p0|) / 4`` on the active side (mirrored below),
    ``|b| <= ds |kw[0]| |x~_i|``: the rate ``b`` is needed only where that bound allows
    an excursion."""
    n, D = X.shape
    vb = 0.0
    for j in range(D):
        vb += kw[0, j] * kw[0, j]
    vb = ds * np.sqrt(vb)
    first = -1
    fmin = 2.0
    for i in range(n):
        if S[i]:
            continue
        p0 = p[i]
        p1 = _dot_row(w1, X, i)
        q[i] = p1
        if i == last:
            continue
        if (P[i] == 1.0 and p1 < 0) or (P[i] != 1.0 and p1 > 0):
            fr = min(max(p0 / (p0 - p1), 0.0), 1.0)
            d0 = ds * _dot_row(kw[0], X, i)
            d1 = ds * f_end * _dot_row(vs[2], X, i)
            fr = _cubic_root(p0, d0, p1, d1, fr)
        else:                                   # across the surface and back
            slack = 0.25 * (vb * xn[i] + abs(p1 - p0))
            if (min(p0, p1) > slack) if P[i] == 1.0 else (max(p0, p1) < -slack):
                continue
            fr = _dip(p0, ds * _dot_row(kw[0], X, i), p1, P[i] == 1.0)
        if fr < fmin:
            fmin = fr
            first = i
    return first, fmin


@njit(cache=True)
def _one_neuron(a, w, S, R, h, substeps, X, XX, lo, ca_n, cw_n,
                P, e, g, kw, wt, w1, wr, G, xn, p, q, vs, vkey):
    """``Switching.integrate_neurons`` for one neuron, in place on ``w`` (D,) and ``S``
    (n,); returns ``(a, neuron-RHS evaluations)``. The other arguments after ``cw_n`` are
    scratch: ``P``, ``e``, ``g`` (n,), ``kw`` (4, D), ``wt``, ``w1``, ``wr`` (D,); ``G`` is
    the residual on the substeps' grid (:func:`_grid_table`), ``xn`` (n,) the norms
    ``|x~_i|``; ``p``, ``q`` (n,) scratch for the pre-activations at a substep's ends;
    ``vs`` (6, D), ``vkey`` (1,) the scratch and cache of :func:`_rk4`."""
    n, D = X.shape
    vkey[0] = -1
    for i in range(n):
        p[i] = _dot_row(w, X, i)
        P[i] = 1.0 if p[i] > 0 else lo
    dt = h / substeps
    stages = 0
    for sub in range(substeps):
        t0 = sub * h / substeps
        a1 = _rk4(a, w, P, S, R, h, t0, dt, X, XX, ca_n, cw_n, e, g, kw, wt, w1, G, 2 * sub,
                  vs, vkey)
        stages += 4
        # the segment [ts, ts + ds] of the substep still to be resolved, from (a, w)
        ts = t0
        ds = dt
        last = -1                               # the pair of the segment's start event
        for _ in range(MAX_EVENTS_PER_SUBSTEP):
            # w's velocity at the segment's ends: kw[0] at the start, cw_n a1 v(end)
            # (vs[2]: v at the end, left by _rk4) for the cubic through both ends
            f_end = cw_n * a1
            first, fmin = _first_event(p, q, w1, kw, vs, f_end, ds, S, P, X, xn, last)
            if first < 0:
                break
            f = fmin
            i = first
            vkey[0] = -1                        # the pattern changes: v is stale
            ar = _rk4(a, w, P, S, R, h, ts, f * ds, X, XX, ca_n, cw_n, e, g, kw, wt, wr,
                      G, -1, vs, vkey)
            _onto_surface(wr, X, XX, i)
            # the other pairs' pattern from their signs there (putting the neuron on
            # surface i moves them too: one that sat on its own surface may change side)
            for i2 in range(n):
                if not S[i2] and i2 != i:
                    p[i2] = _dot_row(wr, X, i2)
                    P[i2] = 1.0 if p[i2] > 0 else lo
            # slide or cross: the equivalent control with pair i free
            tm = ts + f * ds
            _herm(R, h, tm, e)
            for i2 in range(n):
                g[i2] = 0.0 if (S[i2] or i2 == i) else P[i2]
            S[i] = True
            _controls(g, S, e, XX)
            th = g[i]
            # at w = 0, the common point of all its surfaces (ReLU): dead
            dead = lo == 0.0 and _spans_space(S, X)
            if not (th >= lo and th <= 1.0):
                S[i] = False
                P[i] = lo if P[i] == 1.0 else 1.0
            if dead:
                for j in range(D):
                    wr[j] = 0.0
                for i2 in range(n):
                    S[i2] = False
                    P[i2] = lo
                    p[i2] = 0.0
            for j in range(D):
                w[j] = wr[j]
            a = ar
            ts = tm
            ds = (1.0 - f) * ds
            a1 = _rk4(a, w, P, S, R, h, ts, ds, X, XX, ca_n, cw_n,
                      e, g, kw, wt, w1, G, -1, vs, vkey)
            stages += 8
            p[i] = 0.0
            last = i
        else:
            # more events than MAX_EVENTS_PER_SUBSTEP: the rest follow the sign at the end
            for i2 in range(n):
                if not S[i2]:
                    q[i2] = _dot_row(w1, X, i2)
                    P[i2] = 1.0 if q[i2] > 0 else lo
        a = a1
        for j in range(D):
            w[j] = w1[j]
        for i in range(n):
            p[i] = q[i]                         # valid on the pairs outside S
        # release sliding pairs whose control left [lo, 1]
        ns = 0
        for i in range(n):
            if S[i]:
                ns += 1
        if ns:
            _residual_at(R, h, t0 + h / substeps, G, 2 * sub + 2, e)
            for i in range(n):
                g[i] = 0.0 if S[i] else P[i]
            _controls(g, S, e, XX)
            for i in range(n):
                if S[i]:
                    th = g[i]
                    if th < lo - 1e-12 or th > 1.0 + 1e-12:
                        up = a * e[i] > 0 if th > 1.0 else a * e[i] < 0
                        S[i] = False
                        P[i] = 1.0 if up else lo
                        p[i] = _dot_row(w, X, i)
                        ns -= 1
                        vkey[0] = -1            # a release changes the pattern
            if ns == 1:                         # keep it exactly on its surface
                i = 0
                while not S[i]:
                    i += 1
                c = _onto_surface(w, X, XX, i)
                for i2 in range(n):             # the velocity vectors do not move
                    p[i2] -= c * XX[i, i2]
    return a, stages


@njit(cache=True)
def _neuron_range(a, W, S, R, h, substeps, X, XX, lo, ca_n, cw_n, cost, k0, k1, G):
    n, D = X.shape
    xn = np.empty(n)
    for i in range(n):
        xn[i] = np.sqrt(XX[i, i])
    p = np.empty(n)
    q = np.empty(n)
    P = np.empty(n)
    e = np.empty(n)
    g = np.empty(n)
    kw = np.empty((4, D))
    wt = np.empty(D)
    w1 = np.empty(D)
    wr = np.empty(D)
    vs = np.empty((6, D))
    vkey = np.empty(1, dtype=np.int64)
    for k in range(k0, k1):
        a[k], cost[k] = _one_neuron(a[k], W[k], S[k], R, h, substeps, X, XX, lo, ca_n,
                                    cw_n, P, e, g, kw, wt, w1, wr, G, xn, p, q, vs, vkey)


@njit(cache=True, parallel=True)
def integrate_neurons(a, W, S, R, h, substeps, X, XX, lo, ca_n, cw_n, nchunks):
    """Integrate the neurons ``a`` (q,), ``W`` (q, D) and their sliding pairs ``S``
    (q, n) through their switching events over ``[0, h]`` against the step's residual
    ``R`` (see :func:`_herm`), in place; returns the work in neuron-RHS
    evaluations summed over the neurons (float64 arrays, C order)."""
    q = a.shape[0]
    cost = np.zeros(q)
    G = _grid_table(R, h, substeps)
    if nchunks <= 1:
        _neuron_range(a, W, S, R, h, substeps, X, XX, lo, ca_n, cw_n, cost, 0, q, G)
    else:
        for c in prange(nchunks):
            k0 = c * q // nchunks
            k1 = (c + 1) * q // nchunks
            _neuron_range(a, W, S, R, h, substeps, X, XX, lo, ca_n, cw_n, cost, k0, k1, G)
    return cost.sum()


@njit(cache=True)
def _pattern_range(pre, a, S, sliding, lo, h, ag, k0, k1):
    n = pre.shape[1]
    for k in range(k0, k1):
        ak = a[k]
        for i in range(n):
            p = pre[k, i]
            if p > 0:
                h[k, i] = p
                ag[k, i] = ak
            else:
                h[k, i] = lo * p
                ag[k, i] = lo * ak
            if sliding and S[k, i]:
                h[k, i] = 0.0


@njit(cache=True, parallel=True)
def relu_pattern(pre, a, S, sliding, lo, h, ag, nchunks):
    """The ReLU-family activations of a linearisation in one pass over the (M, n) pairs:
    ``h = sigma(pre)`` (0 on the sliding pairs ``S`` where ``sliding``) and ``ag = a_k
    sigma'(pre)`` (1 above the surface, ``lo`` below; the caller overwrites the sliding
    rows with the equivalent controls)."""
    M = pre.shape[0]
    if nchunks <= 1:
        _pattern_range(pre, a, S, sliding, lo, h, ag, 0, M)
        return
    for c in prange(nchunks):
        _pattern_range(pre, a, S, sliding, lo, h, ag, c * M // nchunks,
                       (c + 1) * M // nchunks)


@njit(cache=True)
def _event_pair_range(pre0, pre1, rate, S, wn, xn, pairs, near, k0, k1):
    n = pre0.shape[1]
    for k in range(k0, k1):
        tiny = 1e-10 * wn[k]
        nk = False
        for i in range(n):
            if S[k, i]:
                pairs[k, i] = False
                continue
            p0, p1 = pre0[k, i], pre1[k, i]
            up = p0 > 0
            pairs[k, i] = (up != (p1 > 0)) or (up != (p0 + rate[k, i] > 0))
            if abs(p1) <= tiny * xn[i]:
                nk = True
        near[k] = nk


@njit(cache=True, parallel=True)
def event_pairs(pre0, pre1, rate, S, wn, xn, pairs, near, nchunks):
    """``Switching.event_pairs`` in one pass over the (M, n) pairs: writes ``pairs``
    (M, n) (outside ``S``: a crossing from ``pre0`` to ``pre1`` or an arrival, the
    start's ``rate`` reaching the surface) and ``near`` (M,) (a pair outside ``S`` with
    ``|pre1| <= 1e-10 wn_k xn_i``)."""
    M = pre0.shape[0]
    if nchunks <= 1:
        _event_pair_range(pre0, pre1, rate, S, wn, xn, pairs, near, 0, M)
        return
    for c in prange(nchunks):
        _event_pair_range(pre0, pre1, rate, S, wn, xn, pairs, near,
                          c * M // nchunks, (c + 1) * M // nchunks)


@njit(cache=True)
def sliding_rows(pre, rk, S, e, XX, lo, a, ca_n, cw_n, G, out_a, theta):
    """:func:`neuron_rhs` given the pre-activations ``pre[rk[j]]`` (n,) ``= W_j X^T`` of
    the q neurons ``a`` (q,), ``S`` (q, n) (computed by BLAS for large ``n D``): writes
    ``out_a`` (q,), the controls ``theta`` (q, n) and ``G`` (q, n), ``cw_n a sigma' e``
    with the controls on the sliding pairs, so that ``dw = G X`` (one more product, left
    to the caller)."""
    q = rk.shape[0]
    n = pre.shape[1]
    g = np.empty(n)
    for k in range(q):
        row = pre[rk[k]]
        sda = 0.0
        for i in range(n):
            if S[k, i]:
                g[i] = 0.0
            else:
                g[i] = 1.0 if row[i] > 0 else lo
                sda += g[i] * row[i] * e[i]
        _controls(g, S[k], e, XX)
        out_a[k] = ca_n * sda
        ck = cw_n * a[k]
        for i in range(n):
            theta[k, i] = g[i] if S[k, i] else 0.0
            G[k, i] = ck * g[i] * e[i]


@njit(cache=True)
def controls_rows(G, S, e, XX, theta):
    """``two_layer_structure.controls`` for the rows of ``G`` (q, n) (``sigma'`` of each
    pair; overwritten on the sliding pairs ``S`` (q, n) with their equivalent controls),
    residual ``e`` (n,): writes ``theta`` (q, n), zero outside ``S``. Each row by
    :func:`_controls` (Cholesky where well conditioned, else least squares)."""
    q, n = G.shape
    for k in range(q):
        _controls(G[k], S[k], e, XX)
        for i in range(n):
            theta[k, i] = G[k, i] if S[k, i] else 0.0


@njit(cache=True)
def project_rows(W, S, X, XX):
    """``Switching.project`` for the rows of ``W`` (q, D) with sliding pairs ``S`` (q,
    n), in place: each row moves along the span of its pairs' ``x~_i`` onto all of
    their surfaces (``XX_SS l = X_S w``, ``w -= X_S^T l``; one pair in closed form,
    several by least squares as the NumPy code)."""
    q, D = W.shape
    n = X.shape[0]
    idx = np.empty(n, dtype=np.int64)
    for k in range(q):
        p = 0
        for i in range(n):
            if S[k, i]:
                idx[p] = i
                p += 1
        if p == 0:
            continue
        if p == 1:
            _onto_surface(W[k], X, XX, idx[0])
            continue
        A = np.empty((p, p))
        b = np.empty(p)
        for r in range(p):
            b[r] = _dot_row(W[k], X, idx[r])
            for c in range(p):
                A[r, c] = XX[idx[r], idx[c]]
        lam = np.linalg.lstsq(A, b, rcond=_EPS * p)[0]
        for r in range(p):
            for j in range(D):
                W[k, j] -= lam[r] * X[idx[r], j]


@njit(cache=True)
def scatter_rows(P, rk, G, out_a, da):
    """``P[rk[j]] = G[j]`` and ``out_a[rk[j]] = da[j]`` (the folded sliding rows)."""
    for j in range(rk.shape[0]):
        P[rk[j]] = G[j]
        out_a[rk[j]] = da[j]


@njit(cache=True)
def neuron_rhs(a, W, S, e, X, XX, lo, ca_n, cw_n, out_a, out_w, theta):
    """The sliding-mode velocities of the neurons ``a`` (q,), ``W`` (q, D) with sliding
    pairs ``S`` (q, n), pattern from the sign of ``W x~``: writes ``out_a`` (q,),
    ``out_w`` (q, D) and the equivalent controls into ``theta`` (q, n) (zero outside
    ``S``)."""
    q = a.shape[0]
    n, D = X.shape
    P = np.empty(n)
    g = np.empty(n)
    for k in range(q):
        for i in range(n):
            P[i] = 1.0 if _dot_row(W[k], X, i) > 0 else lo
        out_a[k] = _rhs1(a[k], W[k], P, S[k], e, X, XX, ca_n, cw_n, g, out_w[k])
        for i in range(n):
            theta[k, i] = g[i] if S[k, i] else 0.0
