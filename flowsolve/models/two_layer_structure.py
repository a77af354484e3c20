"""Structure of the two-layer flow used by the structure-aware integrators.

Two pieces, both in the array namespace ``xp`` (numpy or cupy):

- **Gauss-Newton structure.** The normalised flow is ``dy/dt = -C J(y)^T e(y) / n`` with
  ``e`` (n,) the residual, ``J = de/dy`` (n, P) and ``C`` (P,) a positive diagonal
  mobility (``c_a / c_f`` on the output weights, ``c_w / (c_f s)`` on the input weights;
  see :meth:`TwoLayer.coefficients`). :class:`Linearization` holds the activation pattern
  at one state and applies ``J``, ``C J^T`` and the ``n x n`` Gram matrix ``J C J^T``
  without forming ``J`` (which has ``n P`` entries).
- **Switching structure** (ReLU family). The right-hand side jumps where a
  pre-activation ``w_k . x~_i`` changes sign. :class:`Switching` evaluates the flow with a
  set of *sliding* pairs ``(k, i)`` held on their surface ``w_k . x~_i = 0`` by the
  Filippov equivalent control ``sigma'(0) = theta_ki`` (docs/nonsmooth.md).

Work is reported in right-hand-side equivalents (``rhs_cost`` fractions) so solvers can
count Jacobian work honestly: a forward pass (pre-activations, residual) or one of the
products ``J v``, ``C J^T u`` costs about half an RHS; the Gram matrix costs
``max(1/2, n / (2 (d+1)))`` RHS (its two ``(n x M)(M x n)`` products against the RHS's
``(M x D)(D x n)`` ones).
"""

from __future__ import annotations

import numpy as np

from .activations import LEAKY_SLOPE

__all__ = ["Linearization", "StepResidual", "Switching", "controls", "dip_fraction",
           "make_linearize"]


class _Consts:
    """Constants shared by the structure objects of one (model, data, dtype)."""

    def __init__(self, model, xp, data, dtype):
        self.xp = xp
        self.Xt = xp.asarray(data.x_tilde(), dtype=dtype)          # (n, D)
        self.XtT = xp.ascontiguousarray(self.Xt.T)                 # (D, n)
        self.Y = xp.asarray(data.y, dtype=dtype)                   # (n,)
        XX = self.Xt @ self.XtT
        self.XX = 0.5 * (XX + XX.T)    # (n, n), exactly symmetric: kernels read rows
        self.xnorm = xp.sqrt(xp.diagonal(self.XX))                 # (n,) |x~_i|
        self.n, self.D, self.M = data.n, data.d + 1, model.n_neurons
        self.cf, self.ca, self.cw, self.s = model.coefficients()
        self.act = model.activation
        #: the ReLU family's sigma' below the surface (None for other activations)
        self.lo = {"relu": 0.0, "leaky_relu": LEAKY_SLOPE}.get(self.act.name)
        self.dtype = dtype
        M, D = self.M, self.D
        mob = xp.empty(M * (D + 1), dtype=dtype)
        mob[:M] = self.ca / self.cf
        mob[M:] = self.cw / (self.cf * self.s)
        #: (P,) diagonal mobility C: dy/dt = -C J^T e / n
        self.mobility = mob
        self.gram_cost = max(0.5, self.n / (2.0 * self.D))
        #: compiled controls of the sliding rows (a backend's ``controls_rows``), or None
        self.controls_rows = None
        #: compiled ``(h, a sigma')`` of a ReLU-family linearisation (a backend's
        #: ``relu_pattern``), or None
        self.relu_pattern = None
        #: with sliding pairs, linearise the sliding-mode flow in the surfaces' tangent
        #: spaces (:class:`Linearization`); False: ``sigma'`` = the controls, held fixed
        self.tangent = True
        self._tangent_cache = []

    def tangent_spaces(self, rows, S):
        """:func:`_tangent_spaces` for the sliding set ``S``, reused for the last two sets
        (it depends on the data and ``S`` only; an exponential step linearises at its end
        with the sliding set of its start and of its end); for a new set, the rows whose
        sliding pairs did not change are copied from the last one (late on digits a step
        changes a few of ~840 rows)."""
        for S_known, spaces in self._tangent_cache:
            if S_known.shape == S.shape and bool((S_known == S).all()):
                return spaces
        spaces = None
        if self._tangent_cache:
            spaces = _tangent_spaces_update(self, rows, S, *self._tangent_cache[0])
        if spaces is None:
            spaces = _tangent_spaces(self, rows, S)
        self._tangent_cache = [(S.copy(), spaces)] + self._tangent_cache[:1]
        return spaces


class Linearization:
    """The residual and its Jacobian at one state ``y`` (matrix-free).

    Attributes
    ----------
    e : array, shape (n,)
        Residual ``e_i = c_f sum_k a_k sigma(s w_k . x~_i) - y_i``.
    pre : array, shape (M, n)
        Pre-activations ``s w_k . x~_i``.
    loss : float
        ``|e|^2 / (2n)``.
    mobility : array, shape (P,)
        The diagonal ``C`` with ``dy/dt = -C J^T e / n``.

    Notes
    -----
    With sliding pairs ``S`` the flow is the sliding-mode flow: a neuron ``k`` with
    sliding pairs ``I_k`` moves its input weights in the tangent space of its surfaces,
    ``dw_k/dt = Pi_k v_k`` with ``Pi_k`` the orthogonal projector onto
    ``{x~_i : i in I_k}^perp`` (constant: the data are) and ``v_k`` its velocity without
    the sliding pairs; the equivalent controls ``theta`` (:func:`controls`) give the same
    velocity. Its Jacobian is therefore that of the plain flow with ``sigma' = 0`` on the
    sliding pairs and ``Pi_k`` applied to the neuron's input weights: ``J_S = J' Pi``,
    ``C J_S^T = Pi C J'^T``, Gram matrix ``J' C Pi J'^T``. That is what ``jv``, ``cjt``,
    ``gram`` and ``dense`` apply (``consts.tangent``, the default). Holding ``sigma'`` at
    the controls' values instead (``tangent`` False) lets a change of the residual push
    the sliding neurons off their surfaces in the linear model, which the flow does not
    do: the exponential steps then treat that difference explicitly, and it held them to
    ``h lambda_max ~ 9`` late on digits (docs/benchmarks.md, session 23).
    """

    def __init__(self, consts: _Consts, y, S=None):
        c = self.c = consts
        xp = c.xp
        M, D = c.M, c.D
        self.a = y[:M]
        pre = y[M:].reshape(M, D) @ c.XtT                       # (M, n)
        if c.s != 1.0:
            pre *= c.s
        self.pre = pre
        sliding = S is not None and bool(S.any())
        self.S = S if sliding else None
        self._theta_rows = None                                  # (rows, controls (r, n))
        if c.relu_pattern is not None:
            # compiled ReLU family: h and a_k sigma' in one pass, then the rows with
            # sliding pairs get their controls
            self.h, self.ag = c.relu_pattern(pre, self.a, S if sliding else None, c.lo)
            self.e = c.cf * (self.a @ self.h) - c.Y
            if sliding:
                rows = _rows_with_any(xp, S)
                G, th = c.controls_rows(c.act.dsigma(xp, pre[rows]), S[rows], self.e, c.XX)
                self.ag[rows] = G * self.a[rows][:, None]
                self._theta_rows = (rows, th)
        else:
            self.h = c.act.sigma(xp, pre)                       # (M, n)
            g = c.act.dsigma(xp, pre)
            if sliding:
                self.h[S] = 0.0
            self.e = c.cf * (self.a @ self.h) - c.Y
            if sliding:
                if c.controls_rows is not None:
                    self._theta_rows = _controls_on_rows(xp, g, S, self.e, c.XX,
                                                         c.controls_rows)
                else:
                    theta = controls(xp, g, S, self.e, c.XX)
                    rows = _rows_with_any(xp, S)
                    self._theta_rows = (rows, theta[rows])
            self.ag = g * self.a[:, None]                       # (M, n): a_k sigma'_ki
        self.loss = float(self.e @ self.e) / (2.0 * c.n)
        self.mobility = c.mobility
        self._tangent = None
        if sliding and c.tangent:
            self._tangent = c.tangent_spaces(self._theta_rows[0], S)
            rows = self._tangent[0]
            self.ag[rows] = xp.where(S[rows], 0.0, self.ag[rows])

    @property
    def theta(self):
        """The equivalent controls (M, n), zero outside the sliding pairs (None without
        them)."""
        if self._theta_rows is None:
            return None
        rows, th = self._theta_rows
        theta = self.c.xp.zeros_like(self.h)
        theta[rows] = th
        return theta

    def controls_left(self):
        """Neurons (bool (M,)) with a sliding pair whose equivalent control is outside
        ``[lo, 1]`` (beyond 1e-12; ``lo`` the slope below the surface): their pairs are
        released."""
        out = self.c.xp.zeros(self.c.M, dtype=bool)
        if self._theta_rows is not None:
            rows, th = self._theta_rows
            lo = self.c.lo
            out[rows] = (self.S[rows] & ((th < lo - 1e-12) | (th > 1.0 + 1e-12))).any(axis=1)
        return out

    def jv(self, v):
        """``J v`` for ``v`` of shape (P,); returns shape (n,)."""
        c = self.c
        M, D = c.M, c.D
        vw = v[M:].reshape(M, D) @ c.XtT                        # (M, n)
        if self._tangent is not None:                            # J' Pi v
            rows = self._tangent[0]
            vw[rows] = self._project(v[M:].reshape(M, D)[rows]) @ c.XtT
        vw *= self.ag
        return c.cf * (v[:M] @ self.h + c.s * vw.sum(axis=0))

    def cjt(self, u, out=None):
        """``C J^T u`` for ``u`` of shape (n,); returns shape (P,) (``out`` if given).

        With ``u = -e / n`` this is the right-hand side of the flow.
        """
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        if out is None:
            out = xp.empty(M * (D + 1), dtype=self.h.dtype)
        xp.multiply(self.h @ u, c.ca, out=out[:M])
        # (ag u) Xt as ag (u Xt): an (n, D) scaling instead of an (M, n) temporary
        xp.multiply(self.ag @ (u[:, None] * c.Xt), c.cw, out=out[M:].reshape(M, D))
        if self._tangent is not None:                            # Pi C J'^T u
            rows = self._tangent[0]
            w = out[M:].reshape(M, D)
            w[rows] = self._project(w[rows])
        return out

    def _project(self, vw):
        """``Pi_k`` on the input-weight blocks ``vw`` (r, D) of the sliding rows."""
        Q = self._tangent[1]
        coef = Q @ vw[:, :, None]                                       # (r, p, 1)
        return vw - (Q.transpose(0, 2, 1) @ coef)[:, :, 0]

    def gram(self):
        """``J C J^T`` (n, n), symmetric positive semi-definite."""
        c = self.c
        K = c.cf * (c.ca * (self.h.T @ self.h)
                    + c.cw * c.s * c.XX * (self.ag.T @ self.ag))
        if self._tangent is not None:
            # x~_i . Pi_k x~_j = XX_ij - (X~ Q_k^T Q_k X~^T)_ij: a rank-|I_k| correction
            # per sliding row, Z Z^T over the sliding pairs' columns z = ag_k * X~ q
            rows, _, XQ, valid = self._tangent
            Z = (self.ag[rows][:, :, None] * XQ).transpose(0, 2, 1)[valid]     # (pairs, n)
            K -= (c.cf * c.cw * c.s) * (Z.T @ Z)
        return K

    def dense(self):
        """The Jacobian ``J`` as a dense (n, P) array (tests and small problems only)."""
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        J = xp.empty((c.n, M * (D + 1)), dtype=self.h.dtype)
        J[:, :M] = c.cf * self.h.T
        Jw = c.cf * c.s * self.ag.T[:, :, None] * c.Xt[:, None, :]          # (n, M, D)
        if self._tangent is not None:
            rows = self._tangent[0]
            Jw[:, rows] = xp.stack([self._project(Jw[i, rows]) for i in range(c.n)])
        J[:, M:] = Jw.reshape(c.n, M * D)
        return J


def make_linearize(model, xp, data, dtype, kernels=None, tangent=True):
    """``linearize(y, S=None) -> Linearization`` for ``model`` on ``data`` (``S``: bool
    (M, n) sliding pairs of a ReLU flow, whose ``sigma'`` becomes the equivalent control
    ``theta`` and ``sigma`` zero: then ``-C J^T e / n`` is the sliding-mode flow and
    ``lin.theta`` holds the controls); the function carries
    ``mobility`` (P,), ``gram_cost`` (RHS-equivalents of one Gram matrix) and ``n``.
    ``kernels``: a backend's switching kernels; their ``controls_rows``, if any, solves
    the controls (compiled, as the sliding method's RHS does), and for ReLU-family
    activations their ``relu_pattern`` computes ``sigma`` and ``a sigma'`` in one pass.
    ``tangent``: linearise the sliding-mode flow in the surfaces' tangent spaces (default;
    :class:`Linearization`), else hold ``sigma'`` at the controls (for comparisons)."""
    consts = _Consts(model, xp, data, dtype)
    consts.tangent = bool(tangent)
    consts.controls_rows = getattr(kernels, "controls_rows", None)
    if consts.controls_rows is not None and consts.lo is not None:
        consts.relu_pattern = getattr(kernels, "relu_pattern", None)

    def linearize(y, S=None):
        return Linearization(consts, y, S)

    linearize.mobility = consts.mobility
    linearize.gram_cost = consts.gram_cost
    linearize.n = consts.n
    return linearize


def _tangent_spaces(c, rows, S, width=None):
    """Orthonormal bases of the sliding rows' surface normals, for the tangent projectors
    ``Pi_k = I - Q_k^T Q_k``: ``Q_k = Lambda^{-1/2} U^T X_k`` with ``X_k`` (p, D) the
    ``x~_i``, ``i`` in ``I_k``, and ``U Lambda U^T`` the eigendecomposition of
    ``X_k X_k^T`` (directions with eigenvalues below 1e-12 of the largest dropped, so a
    repeated or dependent data point costs nothing). Returns ``(rows (r,), Q (r, p, D),
    XQ (r, n, p), valid (r, p))``: ``XQ[r] = X~ Q_r^T`` (from the data Gram matrix, no
    D-sized work), ``p`` the most sliding pairs of a row (or ``width``, if given and not
    less); rows with fewer, and dropped directions, have zero basis vectors (``valid``
    False), which leave ``Pi_k`` unchanged. The small eigendecompositions are taken on
    the host."""
    xp = c.xp
    sub = S[rows]
    cnt = sub.sum(axis=1)
    p = max(int(cnt.max()), 1) if rows.size else 1
    p = max(p, width or 0)
    # the sliding pairs of each row first (a stable sort puts the True columns first)
    order = xp.argsort(~sub, axis=1, kind="stable")[:, :p]
    pair = xp.arange(p)[None, :] < cnt[:, None]
    idx = xp.where(pair, order, 0)
    both = pair[:, :, None] & pair[:, None, :]
    G = xp.where(both, c.XX[idx[:, :, None], idx[:, None, :]], 0.0)
    to_host = _to_numpy(xp)
    lam, U = np.linalg.eigh(to_host(G).astype(np.float64))
    keep = lam > 1e-12 * np.maximum(lam.max(axis=1, keepdims=True), 1e-300)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    Linv = xp.asarray((U * scale[:, None, :]).transpose(0, 2, 1), dtype=c.Xt.dtype)
    Q = Linv @ c.Xt[idx]                                                 # (r, p, D)
    XQ = c.XX[:, idx].transpose(1, 0, 2) @ Linv.transpose(0, 2, 1)        # (r, n, p)
    return rows, Q, XQ, xp.asarray(keep)


def _tangent_spaces_update(c, rows, S, S_old, old):
    """:func:`_tangent_spaces` for ``S`` from the spaces ``old`` of ``S_old``: rows whose
    sliding pairs are unchanged are copied, the others computed (the same arithmetic per
    row, so the result equals a full computation). ``None`` when the widest row no
    longer fits the old width, or nothing can be reused."""
    xp = c.xp
    rows_old, Q_old, XQ_old, keep_old = old
    p = Q_old.shape[1]
    if not rows.size or not rows_old.size or int(S[rows].sum(axis=1).max()) > p:
        return None
    pos = xp.minimum(xp.searchsorted(rows_old, rows), rows_old.size - 1)
    same = (rows_old[pos] == rows) & (S[rows] == S_old[rows]).all(axis=1)
    if not bool(same.any()):
        return None
    Q = xp.empty((rows.size, p, Q_old.shape[2]), dtype=Q_old.dtype)
    XQ = xp.empty((rows.size, XQ_old.shape[1], p), dtype=XQ_old.dtype)
    keep = xp.empty((rows.size, p), dtype=bool)
    Q[same], XQ[same], keep[same] = Q_old[pos[same]], XQ_old[pos[same]], keep_old[pos[same]]
    fresh = ~same
    if bool(fresh.any()):
        _, Qf, XQf, keepf = _tangent_spaces(c, rows[fresh], S, width=p)
        Q[fresh], XQ[fresh], keep[fresh] = Qf, XQf, keepf
    return rows, Q, XQ, keep


def controls(xp, g, S, e, XX, rows_kernel=None):
    """Equivalent controls ``theta`` of sliding pairs (Filippov), in place in ``g``.

    For every neuron ``k`` with sliding pairs ``I = {i : S[k, i]}`` solve
    ``sum_j e_j g_kj XX_ji = 0`` for ``i`` in ``I`` with ``g_kj`` (j in I) unknown, i.e.
    ``d/dt (w_k . x~_i) = 0`` (the velocity of the input weights is
    ``-(c_w/n) a_k sum_j e_j g_kj x~_j``). A degenerate system (``e_i = 0``) gives the
    least-squares solution.

    Parameters
    ----------
    g : array (q, n)
        ``sigma'`` of every pair (overwritten on sliding pairs).
    S : bool array (q, n)
    e : array (n,) or (q, n)
        Residual (per neuron when 2-D).
    XX : array (n, n)
        ``x~_i . x~_j``.
    rows_kernel : callable, optional
        ``rows_kernel(G, S, e, XX) -> (G, theta)`` on the rows with sliding pairs (a
        compiled twin, e.g. the numba backend's ``controls_rows``; 1-D ``e`` only).

    Returns
    -------
    theta : array (q, n), zero outside ``S``.
    """
    if rows_kernel is not None and e.ndim == 1:
        rows, th = _controls_on_rows(xp, g, S, e, XX, rows_kernel)
        theta = xp.zeros_like(g)
        theta[rows] = th
        return theta
    theta = xp.zeros_like(g)
    E = xp.broadcast_to(e, g.shape)
    cnt = S.sum(axis=1)
    single = xp.nonzero(cnt == 1)[0]
    if single.size:
        i = xp.argmax(S[single], axis=1)
        r = xp.arange(single.size)
        gs = g[single]
        gs[r, i] = 0.0
        Es = E[single]
        num = ((gs * Es) @ XX)[r, i]
        den = Es[r, i] * XX[i, i]
        ok = den != 0
        th = xp.where(ok, -num / xp.where(ok, den, 1.0), 0.0)
        gs[r, i] = th
        g[single] = gs
        theta[single, i] = th
    for k in xp.nonzero(cnt > 1)[0].tolist():                   # rare: several surfaces
        idx = xp.nonzero(S[k])[0]
        gk = g[k].copy()
        gk[idx] = 0.0
        rhs = -((gk * E[k]) @ XX[:, idx])
        A = XX[xp.ix_(idx, idx)] * E[k][idx][None, :]
        th = xp.linalg.lstsq(A, rhs, rcond=None)[0]
        gk[idx] = th
        g[k] = gk
        theta[k, idx] = th
    return theta


def spans_space(xp, Xt, S):
    """Rows of ``S`` (q, n) bool whose pairs' inputs ``x~_i`` span all of ``R^D`` (q,)
    bool: a neuron on all of those surfaces has ``w = 0`` (the common point of every
    switching surface; docs/nonsmooth.md, "Neurons that reach w = 0"). Needs at least
    ``D`` pairs, so it is rare beyond the 1-D problems; the rank by SVD as
    ``matrix_rank``."""
    D = Xt.shape[1]
    out = xp.zeros(S.shape[0], dtype=bool)
    for k in xp.nonzero(S.sum(axis=1) >= D)[0].tolist():
        out[k] = int(xp.linalg.matrix_rank(Xt[S[k]])) == D
    return out


def _controls_on_rows(xp, g, S, e, XX, rows_kernel):
    """:func:`controls` by ``rows_kernel`` on the rows with sliding pairs only; returns
    ``(rows (r,), theta[rows] (r, n))``."""
    rows = _rows_with_any(xp, S)
    if not rows.size:
        return rows, xp.zeros((0, g.shape[1]), dtype=g.dtype)
    G, th = rows_kernel(g[rows], S[rows], e, XX)
    g[rows] = G
    return rows, th


def dip_fraction(xp, p0, b, p1, P):
    """Where a pre-activation leaves its side of the surface inside an interval and comes
    back: ``p(s) = p0 + b s + c s^2`` on ``s`` in [0, 1] with ``c = p1 - p0 - b``
    (value ``p0`` and rate ``b`` (per unit ``s``) at the start, ``p1`` at the end) dips
    below 0 on the active side (``P == 1``) or rises above it on the other. Returns the
    first root ``s`` of ``p`` (arrays of the broadcast shape), 2.0 where there is no such
    excursion (the ends' signs tell the ordinary crossings).

    Only the pairs that can dip are solved for: a dip needs a rate towards the surface
    and a start within half the rate's reach of it (on the active side ``b < 0``, and
    ``s_ext = -b/(2c) < 1`` gives ``c > |b|/2``, so ``p(s_ext) < 0`` needs
    ``p0 < b^2/(4c) < |b|/2``; likewise on the other side). On the whole state of digits
    (512,000 pairs) that test is a few passes; the quadratic on every pair had taken a
    third of a profiled ``expgn3`` run late on digits (docs/benchmarks.md, session 18)."""
    p0, b, p1, P = xp.broadcast_arrays(p0, b, p1, P)
    up = P == 1.0
    dist = xp.where(up, p0, -p0)                 # distance to the surface on its side
    toward = xp.where(up, b < 0, b > 0)
    cand = toward & (dist <= (0.5 + 1e-9) * xp.abs(b))
    out = xp.full(p0.shape, 2.0, dtype=xp.result_type(p0, b, p1))
    idx = xp.nonzero(cand)
    if idx[0].size:
        out[idx] = _dip_roots(xp, p0[idx], b[idx], p1[idx], up[idx])
    return out


def _dip_roots(xp, p0, b, p1, up):
    """:func:`dip_fraction`'s quadratic on every pair given (``up``: ``P == 1``)."""
    c = p1 - p0 - b
    inward = xp.where(up, b < 0, b > 0) & (c != 0)
    safe_c = xp.where(inward, c, 1.0)
    s_ext = -b / (2.0 * safe_c)
    ext = p0 - b * b / (4.0 * safe_c)
    dip = inward & (s_ext > 0) & (s_ext < 1) & xp.where(up, ext < 0, ext > 0)
    disc = xp.maximum(b * b - 4.0 * c * p0, 0.0)
    root = 2.0 * xp.abs(p0) / xp.where(dip, xp.abs(b) + xp.sqrt(disc), 1.0)
    return xp.where(dip, xp.clip(root, 0.0, 1.0), 2.0)


#: switching events located one after another inside one RK4 substep of
#: :meth:`Switching.integrate_neurons` (per neuron); beyond that the rest of the substep's
#: crossings take the sign at its end (the compiled kernel uses the same number)
MAX_EVENTS_PER_SUBSTEP = 8


def cubic_roots(xp, p0, d0, p1, d1, s):
    """Roots in ``[0, 1]`` of the cubic Hermite ``p(s)`` through ``p0`` (slope ``d0``, per
    unit ``s``) at 0 and ``p1`` (slope ``d1``) at 1, where ``p0 p1 <= 0`` (arrays of one
    shape): safeguarded Newton from ``s`` (the linear interpolant's root), bisection
    where a Newton step leaves the bracket, 8 iterations (stopping where a step moves
    ``s`` by <= 1e-13). A crossing located on the linear interpolant is off by
    ``O(dt^2)`` in time, and every crossing leaves that error times the jump of the
    velocity in the neuron; on the cubic through both ends' values and rates it is
    ``O(dt^4)`` (docs/benchmarks.md, session 24)."""
    s = s.copy()
    lo_s = xp.zeros_like(s)
    hi_s = xp.ones_like(s)
    live = xp.ones(s.shape, dtype=bool)
    pos = p0 > 0
    for _ in range(8):
        u = 1.0 - s
        val = ((1 + 2 * s) * u * u * p0 + s * u * u * d0 + s * s * (3 - 2 * s) * p1
               + s * s * (s - 1) * d1)
        live &= val != 0.0
        same = (val > 0) == pos
        lo_s = xp.where(live & same, s, lo_s)
        hi_s = xp.where(live & ~same, s, hi_s)
        der = (6 * s * (s - 1) * (p0 - p1) + (1 - 4 * s + 3 * s * s) * d0
               + (3 * s * s - 2 * s) * d1)
        ok = der != 0.0
        newton = s - val / xp.where(ok, der, 1.0)
        done = ok & (xp.abs(newton - s) <= 1e-13)      # before the bracket test: s may
        s_new = xp.where(ok & (newton > lo_s) & (newton < hi_s), newton,   # be its end
                         0.5 * (lo_s + hi_s))
        s_new = xp.where(done, newton, s_new)
        s = xp.where(live, s_new, s)
        live &= ~done
        if not live.any():
            break
    return s


def compact(xp, B):
    """A sparse bool matrix ``B`` (M, n) as ``(rows, B[rows])``: the rows with a True
    entry (r,), sorted, and those rows (r, n)."""
    rows = _rows_with_any(xp, B)
    return rows, B[rows]


def _to_numpy(xp):
    """The function that copies an array of the namespace ``xp`` to the host."""
    return getattr(xp, "asnumpy", np.asarray)


def _rows_with_any(xp, B):
    """Sorted indices of the rows of the bool matrix ``B`` (M, n) with a True entry (the
    flat nonzeros: much faster than ``B.any(axis=1)`` over a short axis when B is sparse)."""
    return xp.unique(xp.flatnonzero(B) // B.shape[1])


class StepResidual:
    """The residual ``e(tau)`` over one step ``[0, h]``, for the event re-integration.

    A cubic Hermite interpolant through the residual's values and rates at both ends,
    optionally on top of *linear modes*: with ``modes = (V, lam)`` (V (n, r) orthonormal
    columns, lam (r,) >= 0, the eigenpairs of the Gauss-Newton Gram matrix ``K/n`` at the
    step's start) the linearised residual ``V exp(-tau lam) V^T e0`` is taken exactly
    and the Hermite interpolant carries only the rest. Over steps much longer than
    ``1/lam_max`` (the exponential integrator's) a cubic cannot follow ``exp(-tau lam)``;
    the modes can.

    Parameters
    ----------
    e0, r0, e1, r1 : array (n,)
        Residual and ``de/dt`` at ``tau = 0`` and ``tau = h``.
    h : float
        Step size (time units).
    modes : tuple (V, lam), optional

    Calling it with ``tau`` a scalar gives ``e`` (n,); with ``tau`` (q,), (q, n).
    ``table`` is ``(H, V^T, (lam, c))``: the Hermite data (4, n), the modes (r, n) and
    their rates and coefficients (2, r), for compiled kernels.
    """

    def __init__(self, xp, e0, r0, e1, r1, h, modes=None):
        self.xp = xp
        self.h = h = float(h)
        n = e0.shape[0]
        if modes is None:
            VT = xp.zeros((0, n), dtype=e0.dtype)
            LC = xp.zeros((2, 0), dtype=e0.dtype)
        else:
            V, lam = (xp.asarray(a, dtype=e0.dtype) for a in modes)
            c = V.T @ e0
            ex = xp.exp(-h * lam)
            e0 = e0 - V @ c                       # the Hermite part: what the modes miss
            r0 = r0 + V @ (lam * c)
            e1 = e1 - V @ (ex * c)
            r1 = r1 + V @ (lam * ex * c)
            VT, LC = xp.ascontiguousarray(V.T), xp.stack([lam, c])
        self.table = (xp.stack([e0, r0, e1, r1]), VT, LC)

    def moved(self, xp, convert):
        """The same residual with its table converted by ``convert`` into arrays of the
        namespace ``xp`` (a device residual for the host re-integration)."""
        out = object.__new__(StepResidual)
        out.xp, out.h = xp, self.h
        out.table = tuple(convert(t) for t in self.table)
        return out

    def __call__(self, tau):
        xp, h = self.xp, self.h
        H, VT, LC = self.table
        e0, r0, e1, r1 = H
        tau = xp.asarray(tau, dtype=H.dtype)
        s = tau / h
        s = s[..., None] if s.ndim else s
        h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
        h01, h11 = s * s * (3 - 2 * s), s * s * (s - 1)
        out = h00 * e0 + (h * h10) * r0 + h01 * e1 + (h * h11) * r1
        if VT.shape[0]:
            out = out + (xp.exp(-tau[..., None] * LC[0]) * LC[1]) @ VT
        return out


class Switching:
    """The ReLU flow with sliding pairs held on their switching surfaces.

    A *sliding set* is a boolean mask ``S`` of shape (M, n): pair ``(k, i)`` in ``S`` has
    ``w_k . x~_i = 0`` and ``sigma'`` replaced by the equivalent control ``theta_ki``
    chosen so that ``d/dt (w_k . x~_i) = 0`` for every sliding pair of neuron ``k``
    (a small linear system per neuron when several of its pairs slide).

    Parameters
    ----------
    model : TwoLayer
        Must use a ReLU-family activation (``sigma'(u) = 1`` for ``u > 0``,
        ``lo`` for ``u < 0``).
    kernels : object, optional
        A backend's compiled pieces (``NumbaBackend.switching_kernels``): ``rhs(y, out)
        -> loss`` of the plain flow leaving the residual in ``last_r``, ``pre(y)``,
        ``residual_rate(y, f, pairs, lo)`` (``pairs``: the sliding pairs as index arrays,
        or None), ``crossings(y0, y1, S0)`` (compact, as :meth:`crossings`),
        ``neuron_rhs(a, W, S, e, XX, lo)`` (the sliding-mode velocities and controls of a
        few neurons) and ``integrate_neurons(a, W, S, e_of, h, substeps, XX, lo)``.
        With them :meth:`rhs` runs the compiled RHS on every neuron and recomputes only
        the neurons with sliding pairs; the result is the same up to rounding (at a
        sliding pair ``pre`` is 0 to rounding, so its ``sigma`` is too), and
        :meth:`integrate_neurons` runs compiled, one neuron at a time.
    host : Switching, optional
        The same structure on NumPy arrays (``CupyBackend.switching_host``), to which a
        device ``Switching`` hands :meth:`integrate_neurons`: a few neurons through many
        small substeps, which on a GPU cost a kernel launch and a synchronisation per
        array operation (~170 ms per step at m = 10^5 on an H100), and on the host a
        fraction of a millisecond. The arrays cross the bus twice per step. The
        sliding rows of :meth:`rhs` go to the host too.
    plain_rhs : object, optional
        Without ``kernels``: a backend's RHS of the plain flow on every neuron,
        ``plain_rhs.rhs(y, out) -> loss`` leaving the residual in ``plain_rhs.last_r``
        (``CupyBackend.switching_rhs``); :meth:`rhs` then recomputes only the sliding
        rows, as with ``kernels``.
    """

    def __init__(self, model, xp, data, dtype, kernels=None, host=None, plain_rhs=None):
        self.kernels = kernels
        self.host = host
        self.plain = kernels if kernels is not None else plain_rhs
        c = self.c = _Consts(model, xp, data, dtype)
        name = model.activation.name
        if c.lo is None:
            raise ValueError(f"switching structure needs a ReLU-family activation, got {name!r}")
        self.lo = c.lo
        self._no_rows = xp.zeros((0, c.n), dtype=dtype)
        self._theta_rows = xp.zeros(0, dtype=xp.intp)
        self.last_row_theta = self._no_rows
        self.set_sliding(xp.zeros((c.M, c.n), dtype=bool))

    def pre(self, y):
        """Pre-activations ``w_k . x~_i`` (M, n) (the sign decides sigma')."""
        if self.kernels is not None:
            return self.kernels.pre(y)
        c = self.c
        return y[c.M:].reshape(c.M, c.D) @ c.XtT

    def _gprime(self, pre):
        if self.lo == 0.0:
            return (pre > 0).astype(pre.dtype)
        return self.c.xp.where(pre > 0, 1.0, self.lo).astype(pre.dtype)

    def controls(self, y, pre, e, g):
        """Equivalent controls of the sliding pairs at ``y``; writes them into ``g``
        (M, n) and returns ``theta`` (M, n) (zero outside ``S``); see :func:`controls`."""
        if not self.n_sliding:
            return self.c.xp.zeros_like(g)
        return controls(self.c.xp, g, self.S, e, self.c.XX)

    def rhs(self, y, out):
        """The sliding-mode right-hand side; writes ``dy/dt`` into ``out``, returns the loss.

        Also leaves ``self.last_e`` (n,) and, for the release test, the equivalent
        controls ``self.last_row_theta`` (r, n) on the rows of :attr:`sliding_rows` (zero
        outside their sliding pairs; :attr:`last_theta` is the dense (M, n) form).
        """
        if self.plain is not None:
            return self._rhs_compiled(y, out)
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        a = y[:M]
        pre = self.pre(y)
        h = xp.maximum(pre, 0.0) if self.lo == 0.0 else xp.where(pre > 0, pre, self.lo * pre)
        rows, sub = (self._rows, self._sub) if self.n_sliding else (None, None)
        if self.n_sliding:
            hr = h[rows]
            hr[sub] = 0.0
            h[rows] = hr
        e = c.cf * (a @ h) - c.Y
        self.last_e = e
        xp.multiply(h @ e, -c.ca / c.n, out=out[:M])
        g = self._gprime(pre)
        self._theta_rows = rows if self.n_sliding else self._theta_rows[:0]
        self.last_row_theta = self._no_rows
        on_host = self.n_sliding and self.host is not None
        if self.n_sliding and not on_host:  # equivalent controls on the few sliding rows
            gr = g[rows]
            self.last_row_theta = controls(xp, gr, sub, e, c.XX)
            g[rows] = gr
        g *= e
        xp.multiply(((-c.cw / c.n) * a)[:, None], g @ c.Xt, out=out[M:].reshape(M, D))
        if on_host:                         # the sliding rows again, by the host
            da, dw, self.last_row_theta = self._row_velocities(
                a[rows], y[M:].reshape(M, D)[rows], sub, e)
            out[:M][rows] = da
            out[M:].reshape(M, D)[rows] = dw
        return float(e @ e) / (2.0 * c.n)

    def _row_velocities(self, a, w, S, e):
        """:meth:`sliding_velocities`, by the host structure if there is one."""
        if self.host is None:
            return self.sliding_velocities(a, w, S, e)
        xp = self.c.xp
        to_np = _to_numpy(xp)
        out = self.host.sliding_velocities(to_np(a), to_np(w), to_np(S), to_np(e))
        return tuple(xp.asarray(v) for v in out)

    def sliding_velocities(self, a, w, S, e):
        """Velocities and equivalent controls of a few neurons with sliding pairs.

        Parameters
        ----------
        a : array (q,)
        w : array (q, D)
        S : bool array (q, n)
            Their sliding pairs (pattern elsewhere from the sign of ``w . x~``).
        e : array (n,)
            The residual.

        Returns
        -------
        da (q,), dw (q, D), theta (q, n) (the controls; zero outside ``S``).
        """
        c = self.c
        if self.kernels is not None:
            return self.kernels.neuron_rhs(a, w, S, e, c.XX, self.lo)
        xp = c.xp
        pre = w @ c.XtT
        P = xp.where(pre > 0, 1.0, self.lo)
        g = xp.where(S, 0.0, P)
        theta = controls(xp, g, S, e, c.XX)
        da = (-c.ca / c.n) * (xp.where(S, 0.0, P * pre) @ e)
        dw = ((-c.cw / c.n) * a)[:, None] * ((g * e) @ c.Xt)
        return da, dw, theta

    def _rhs_compiled(self, y, out):
        """:meth:`rhs` with the backend's kernel on every neuron. The neurons with sliding
        pairs (few early on; late on digits a third to two fifths of them) get their
        equivalent controls inside the kernel's pass where it offers that
        (``rhs_sliding``), else they are recomputed afterwards."""
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        fold = getattr(self.plain, "rhs_sliding", None) if self.n_sliding else None
        folded = fold(y, out, self._rows, self._sub, c.XX, self.lo) if fold else None
        if folded is not None:              # the rows' controls inside the plain pass
            loss, self.last_row_theta = folded
            self._theta_rows = self._rows
            self.last_e = xp.asarray(self.plain.last_r, dtype=c.dtype)
            return loss
        loss = self.plain.rhs(y, out)
        e = xp.asarray(self.plain.last_r, dtype=c.dtype)
        self.last_e = e
        if not self.n_sliding:
            self._theta_rows = self._theta_rows[:0]
            self.last_row_theta = self._no_rows
            return loss
        rows, sub = self._rows, self._sub
        self._theta_rows = rows
        da, dw, self.last_row_theta = self._row_velocities(
            y[:M][rows], y[M:].reshape(M, D)[rows], sub, e)
        out[:M][rows] = da
        out[M:].reshape(M, D)[rows] = dw
        return loss

    @property
    def last_theta(self):
        """The equivalent controls of the last :meth:`rhs` as a dense (M, n) array (zero
        outside the sliding pairs); the solvers read ``last_row_theta``."""
        theta = self.c.xp.zeros((self.c.M, self.c.n), dtype=self.c.dtype)
        theta[self._theta_rows] = self.last_row_theta
        return theta

    @property
    def sliding_rows(self):
        """``(rows (r,), sub (r, n) bool)``: the neurons with sliding pairs and their pairs."""
        return self._rows, self._sub

    def set_sliding(self, S):
        """Replace the sliding set (bool (M, n))."""
        self.S = S
        self.n_sliding = int(self.c.xp.count_nonzero(S))
        self._rows = _rows_with_any(self.c.xp, S)              # neurons with sliding pairs
        self._sub = S[self._rows]
        r, i = self.c.xp.nonzero(self._sub)
        self._pairs = (self._rows[r], i)                       # the sliding pairs (k, i)

    def project(self, y, S=None):
        """Put the sliding pairs of ``y`` exactly on their surfaces (in place): each
        neuron's input weights move along the span of its sliding pairs' ``x~_i``."""
        c = self.c
        xp = c.xp
        S = self.S if S is None else S
        if not S.any():
            return y
        w = y[c.M:].reshape(c.M, c.D)
        rows = xp.nonzero(S.any(axis=1))[0]
        project_rows = getattr(self.kernels, "project_rows", None)
        if project_rows is not None:              # compiled, the same projection
            w[rows] = project_rows(w[rows], S[rows], c.XX)
            return y
        for k in rows.tolist() if S[rows].sum() > rows.size else []:
            idx = xp.nonzero(S[k])[0]
            X = c.Xt[idx]                                           # (p, D)
            w[k] -= X.T @ xp.linalg.lstsq(X @ X.T, X @ w[k], rcond=None)[0]
        if S[rows].sum() == rows.size:
            i = xp.argmax(S[rows], axis=1)
            X = c.Xt[i]                                             # (r, D)
            w[rows] -= ((w[rows] * X).sum(axis=1) / (X * X).sum(axis=1))[:, None] * X
        return y

    def event_pairs(self, pre0, pre1, rate, S, wn):
        """The pairs a step may take through a switching event, from the pre-activations
        at its ends and the start's rate.

        Parameters
        ----------
        pre0, pre1 : array (M, n)
            ``s w_k . x~_i`` at the start and the end of the step (any fixed positive
            scale ``s``, the same in ``rate`` and ``wn``).
        rate : array (M, n)
            The start's rate of ``pre0`` times the step (its linear reach).
        S : bool array (M, n)
            Sliding pairs (never reported).
        wn : array (M,)
            ``s |w_k|`` at the end of the step.

        Returns
        -------
        pairs : bool array (M, n)
            Outside ``S``: the ends differ in sign (a crossing) or the start's rate
            reaches the surface within the step (an arrival). This covers the
            excursions across the surface and back too: the quadratic through
            ``pre0``, ``rate`` and ``pre1`` can dip only from a start within half the
            rate's reach (:func:`dip_fraction`), which is an arrival.
        near : bool array (M,)
            Neurons with a pair outside ``S`` ending on its surface to rounding
            (``|pre1| <= 1e-10 wn_k |x~_i|``).
        """
        xn = self.c.xnorm
        if self.kernels is not None:
            return self.kernels.event_pairs(pre0, pre1, rate, S, wn, xn)
        xp = self.c.xp
        up = pre0 > 0
        pairs = ~S & ((up != (pre1 > 0)) | (up != (pre0 + rate > 0)))
        near = (~S & (xp.abs(pre1) <= (1e-10 * wn)[:, None] * xn[None, :])).any(axis=1)
        return pairs, near

    def significant(self, pairs, y, e, h, rtol, atol):
        """Neurons (bool (M,)) with a crossing pair in ``pairs`` whose kink matters at the
        tolerance: the jump of the neuron's velocity at the crossing,
        ``(c_w/n) |a_k e_i| |x~_i|``, times ``h``, above a tenth of the error scale
        ``atol + rtol |w_k|``. Smaller kinks are left to the base step's error estimate.

        ``pairs`` is ``(rows (r,), sub (r, n) bool)`` as :meth:`crossings` returns it."""
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        out = xp.zeros(M, dtype=bool)
        rows, sub = pairs
        if rows.size == 0:
            return out
        jump = (c.cw / c.n) * xp.abs(y[:M][rows])[:, None] * xp.abs(e)[None, :] \
            * c.xnorm[None, :]
        wmax = xp.abs(y[M:].reshape(M, D)[rows]).max(axis=1)
        scale = atol + rtol * wmax
        out[rows] = (sub & (h * jump > 0.1 * scale[:, None])).any(axis=1)
        return out

    def residual_rate(self, y, f):
        """Residual ``e`` (n,) at ``y`` and its rate ``de/dt`` (n,) along ``f = dy/dt``."""
        if self.kernels is not None:
            return self.kernels.residual_rate(y, f, self._pairs if self.n_sliding else None,
                                              self.lo)
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        a = y[:M]
        pre = self.pre(y)
        g = self._gprime(pre)
        h = xp.maximum(pre, 0.0) if self.lo == 0.0 else g * pre
        if self.n_sliding:
            h[self.S] = 0.0
            g[self.S] = 0.0              # sliding pairs: pre stays 0, d(sigma)/dt = 0
        e = c.cf * (a @ h) - c.Y
        vw = f[M:].reshape(M, D) @ c.XtT
        return e, c.cf * (f[:M] @ h + (a[:, None] * g * vw).sum(axis=0))

    def crossings(self, y0, y1, S0):
        """The pairs outside ``S0`` whose pre-activation changed sign between the states
        ``y0`` and ``y1`` (the switching events of a step), compact: ``(rows, sub)``, the
        neurons with such a pair (r,) and their pairs (r, n) bool."""
        if self.kernels is not None:
            return self.kernels.crossings(y0, y1, S0)
        return compact(self.c.xp, ~S0 & ((self.pre(y0) > 0) != (self.pre(y1) > 0)))

    @property
    def fuses_step_ends(self) -> bool:
        """Whether :meth:`step_ends` costs less than its parts: the backend's kernels
        share one pass over the neurons between them (numba, n > 8)."""
        return bool(getattr(self.kernels, "fuses_step_ends", False))

    def step_ends(self, y0, y1, f0, f1, S0):
        """:meth:`crossings` of ``y0``, ``y1`` and :meth:`residual_rate` at ``(y0, f0)``
        and ``(y1, f1)``: ``(rows, sub), (e0, r0), (e1, r1)``, in one pass where
        :attr:`fuses_step_ends`."""
        if self.fuses_step_ends:
            return self.kernels.step_ends(y0, y1, f0, f1, S0,
                                          self._pairs if self.n_sliding else None, self.lo)
        return (self.crossings(y0, y1, S0), self.residual_rate(y0, f0),
                self.residual_rate(y1, f1))

    def _neuron_rhs(self, a, w, P, S, e):
        """Velocities of neurons (q,), (q, D) with frozen pattern ``P`` (q, n) and sliding
        pairs ``S`` (q, n) held by equivalent controls, for the residual ``e`` (n,)."""
        c = self.c
        xp = c.xp
        pre = w @ c.XtT
        hv = xp.where(S, 0.0, P * pre)
        g = xp.where(S, 0.0, P)
        if S.any():
            controls(xp, g, S, e, c.XX)
        da = (-c.ca / c.n) * (hv * e).sum(axis=-1)
        dw = ((-c.cw / c.n) * a)[:, None] * ((g * e) @ c.Xt)
        return da, dw

    def _rk4(self, a, w, P, S, e_of, t0, dt):
        """One classical RK4 step of the neurons (per-neuron step ``dt`` (q,)); returns
        ``a1, w1`` and the input weights' velocity at the start (q, D)."""
        k1 = self._neuron_rhs(a, w, P, S, e_of(t0))
        k2 = self._neuron_rhs(a + 0.5 * dt * k1[0], w + (0.5 * dt)[:, None] * k1[1], P, S,
                              e_of(t0 + 0.5 * dt))
        k3 = self._neuron_rhs(a + 0.5 * dt * k2[0], w + (0.5 * dt)[:, None] * k2[1], P, S,
                              e_of(t0 + 0.5 * dt))
        k4 = self._neuron_rhs(a + dt * k3[0], w + dt[:, None] * k3[1], P, S, e_of(t0 + dt))
        a1 = a + dt / 6.0 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        w1 = w + (dt / 6.0)[:, None] * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return a1, w1, k1[1]

    def _first_events(self, a1, w, w1, dw0, P, S, e_of, ts, ds, last, rows):
        """The first event of each neuron ``rows`` in its segment ``[ts, ts + ds]`` (from
        ``w`` to ``w1``, ``a1`` at the end, ``dw0`` the input weights' velocity at the
        start): ``(rows, found (r,) bool, pair (r,), fraction of the segment (r,))``.
        A crossing is located on the cubic through both ends' pre-activations and rates
        (:func:`cubic_roots`), an excursion across and back on the quadratic through the
        start's value and rate and the end's value (:func:`dip_fraction`); the pair
        ``last`` (put on its surface at the segment's start) is skipped."""
        c = self.c
        xp = c.xp
        r = rows.size
        idx = xp.arange(r)
        Pr, Sr = P[rows], S[rows].copy()
        has_last = last[rows] >= 0
        Sr[idx[has_last], last[rows][has_last]] = True          # skipped like S
        pre0, pre1 = w[rows] @ c.XtT, w1[rows] @ c.XtT
        cross = ~Sr & (((Pr == 1.0) & (pre1 < 0)) | ((Pr != 1.0) & (pre1 > 0)))
        d0 = (dw0[rows] @ c.XtT) * ds[rows][:, None]
        frac = xp.where(Sr | cross, 2.0, dip_fraction(xp, pre0, d0, pre1, Pr))  # excursions
        ck, ci = xp.nonzero(cross)
        if ck.size:
            # the input weights' velocity at the segment's ends, for the cubic
            ku, inv = xp.unique(ck, return_inverse=True)
            rk = rows[ku]
            _, dw1 = self._neuron_rhs(a1[rk], w1[rk], P[rk], S[rk], e_of(ts[rk] + ds[rk]))
            p0, p1 = pre0[ck, ci], pre1[ck, ci]
            lin = xp.clip(p0 / (p0 - p1), 0.0, 1.0)
            d1 = (dw1[inv] * c.Xt[ci]).sum(axis=1) * ds[rows][ck]
            frac[ck, ci] = cubic_roots(xp, p0, d0[ck, ci], p1, d1, lin)
        i = xp.argmin(frac, axis=1)
        f = frac[idx, i]
        return rows, f <= 1.0, i, f

    def integrate_neurons(self, a, w, S, e_of, h, substeps=8):
        """Integrate a few neurons through their switching events over ``[0, h]``.

        The residual is a given function of time ``e_of(tau)`` (n,) (a
        :class:`StepResidual`: the neurons' feedback on ``e`` is neglected within the
        step). In each of ``substeps`` RK4 substeps the activation pattern is frozen; the
        first crossing ``w_k . x~_i = 0`` of a neuron inside a substep is located on the
        cubic through the pre-activation's values and rates at the substep's ends
        (:func:`cubic_roots`; or, for an excursion across the
        surface and back that the substep's ends do not show, by the quadratic through
        the start's value and rate and the end's value: :func:`dip_fraction`), the
        neuron is stepped to it, put on
        the surface, and either slides (the equivalent control lies in ``[lo, 1]``:
        attractive surface) or crosses (pattern flipped); the rest of the substep is
        re-stepped with the new pattern and searched for its next event, up to
        :data:`MAX_EVENTS_PER_SUBSTEP` events (then the rest take the sign at the
        substep's end). Sliding pairs whose control leaves ``[lo, 1]`` are released
        at the end of a substep, to the side their velocity points to.

        Parameters
        ----------
        a : array (q,)
        w : array (q, D)
        S : bool array (q, n)
            Sliding pairs at ``tau = 0`` (copied).
        e_of : StepResidual
            ``tau -> e`` (n,), ``tau`` a scalar or an array (q,) (then ``e`` is (q, n)).
        h : float
        substeps : int

        Returns
        -------
        a, w, S : the neurons at ``tau = h`` and their sliding pairs.
        cost : float
            Work in neuron-RHS evaluations summed over the neurons (divide by ``M`` for
            RHS-equivalents): 4 per substep, 8 more in a substep where the neuron
            crosses or reaches a surface.

        With the backend's compiled kernels the same algorithm runs one neuron at a time
        (same events and decisions; rounding differs).
        """
        c = self.c
        xp, lo = c.xp, self.lo
        if self.kernels is not None:
            return self.kernels.integrate_neurons(a, w, S, e_of, h, substeps, c.XX, lo)
        if self.host is not None:
            return self._integrate_on_host(a, w, S, e_of, h, substeps)
        a, w, S = a.copy(), w.copy(), S.copy()
        q = a.shape[0]
        P = xp.where(w @ c.XtT > 0, 1.0, lo)
        dt = xp.full(q, h / substeps)
        XXd = xp.diagonal(c.XX)
        stages = 0
        for sub in range(substeps):
            t0 = sub * h / substeps
            a1, w1, dw0 = self._rk4(a, w, P, S, e_of, t0, dt)
            stages += 4 * q
            # the segments [ts, ts + ds] of the substep still to be resolved, from (a, w)
            ts, ds = xp.full(q, t0), dt.copy()
            last = xp.full(q, -1)               # the pair of the segment's start event
            active = xp.arange(q)               # neurons whose segment may hold events
            for _ in range(MAX_EVENTS_PER_SUBSTEP):
                if active.size == 0:
                    break
                rows, found, i, f = self._first_events(a1, w, w1, dw0, P, S, e_of, ts, ds,
                                                       last, active)
                if not found.any():
                    active = rows[:0]
                    break
                rows, i, f = rows[found], i[found], f[found]
                Pr, Sr = P[rows], S[rows]
                ar, wr, _ = self._rk4(a[rows], w[rows], Pr, Sr, e_of, ts[rows], f * ds[rows])
                X = c.Xt[i]
                wr -= ((wr * X).sum(axis=1) / XXd[i])[:, None] * X    # onto the surface
                # the other pairs' pattern from their signs there (putting the neuron on
                # surface i moves them too: one that sat on its surface may change side)
                other = ~Sr
                other[xp.arange(rows.size), i] = False
                Pr = xp.where(other, xp.where(wr @ c.XtT > 0, 1.0, lo), Pr)
                # slide or cross: the equivalent control with pair i free
                tm = ts[rows] + f * ds[rows]
                Stry = Sr.copy()
                Stry[xp.arange(rows.size), i] = True
                g = xp.where(Stry, 0.0, Pr)
                controls(xp, g, Stry, e_of(tm), c.XX)    # each neuron at its own time
                th = g[xp.arange(rows.size), i]
                slide = (th >= lo) & (th <= 1.0)
                Sr[xp.arange(rows.size)[slide], i[slide]] = True
                flip = ~slide
                Pr[xp.arange(rows.size)[flip], i[flip]] = xp.where(
                    Pr[xp.arange(rows.size)[flip], i[flip]] == 1.0, lo, 1.0)
                if lo == 0.0:   # at w = 0, the common point of all its surfaces: dead
                    dead = spans_space(xp, c.Xt, Stry)
                    if dead.any():
                        wr[dead], Sr[dead], Pr[dead] = 0.0, False, lo
                dsr = (1.0 - f) * ds[rows]
                ar1, wr1, dwr = self._rk4(ar, wr, Pr, Sr, e_of, tm, dsr)
                stages += 8 * rows.size
                a[rows], w[rows], P[rows], S[rows] = ar, wr, Pr, Sr
                a1[rows], w1[rows], dw0[rows] = ar1, wr1, dwr
                ts[rows], ds[rows], last[rows] = tm, dsr, i
                active = rows
            if active.size:     # more events than that: the rest follow the sign at the end
                pre1r = w1[active] @ c.XtT
                P[active] = xp.where(S[active], P[active], xp.where(pre1r > 0, 1.0, lo))
            a, w = a1, w1
            # release sliding pairs whose control left [lo, 1]
            if S.any():
                e1 = e_of(t0 + h / substeps)
                g = xp.where(S, 0.0, P)
                th = controls(xp, g, S, e1, c.XX)
                out = S & ((th < lo - 1e-12) | (th > 1.0 + 1e-12))
                if out.any():
                    kk, ii = xp.nonzero(out)
                    up = xp.where(th[kk, ii] > 1.0, a[kk] * e1[ii] > 0, a[kk] * e1[ii] < 0)
                    S[kk, ii] = False
                    P[kk, ii] = xp.where(up, 1.0, lo)
                # keep sliding neurons exactly on their surfaces
                rows = xp.nonzero(S.any(axis=1) & (S.sum(axis=1) == 1))[0]
                if rows.size:
                    i = xp.argmax(S[rows], axis=1)
                    X = c.Xt[i]
                    w[rows] -= ((w[rows] * X).sum(axis=1) / XXd[i])[:, None] * X
        return a, w, S, float(stages)

    def _integrate_on_host(self, a, w, S, e_of, h, substeps):
        """:meth:`integrate_neurons` by the host structure (device arrays in and out)."""
        xp = self.c.xp
        to_np = _to_numpy(xp)
        a1, w1, S1, cost = self.host.integrate_neurons(
            to_np(a), to_np(w), to_np(S), e_of.moved(np, to_np), h, substeps)
        return (xp.asarray(a1), xp.asarray(w1), xp.asarray(S1), cost)

    def surface_velocity(self, y, k, i, gk_value, e):
        """(test helper) ``d/dt (w_k . x~_i)`` with ``sigma'_ki = gk_value``."""
        c = self.c
        pre = self.pre(y)
        g = self._gprime(pre[k])
        g[i] = gk_value
        return float(-(c.cw / c.n) * y[k] * ((g * e) @ c.XX[:, i]))
