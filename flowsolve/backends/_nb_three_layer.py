"""Numba kernels of the three-layer right-hand side (see ``models/three_layer.py``).

The three m x m products (``W2 H``, ``Delta2^T W2``, ``Delta2 H^T``) stay in BLAS; the
elementwise work around them is fused into four serial passes over (M, n) arrays, and
the whole sequence runs as one compiled call (``rhs``: ``np.dot`` calls BLAS directly,
without ~14 Python round trips per RHS, which cost ~25 us at m = 250):

1. ``layer1``: ``H = sigma(s1 pre1)`` into the per-copy block, ``pre1 <- sigma'(s1 pre1)``;
2. ``layer2``: ``h2 = sigma(s2 U2)``, ``f += a_k h2`` (n,), ``U2 <- sigma'(s2 U2)``;
3. ``delta``: ``o3 = g3 h2 e`` and, in place, ``U2 <- q cf a_k sigma'(.) e``;
4. ``back``: ``pre1 <- r G^T sigma'(s1 pre1)`` from ``G = Delta2^T W2`` (n, m1 + 1).

Serial on purpose: BLAS owns the threads here (PERFORMANCE.md pitfall 1).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import njit

from ._nb_activations import sd

_FM = {"reassoc", "nsz", "contract"}
_KERNELS = {}


@njit(fastmath=_FM)
def _layer1(pre1, s1, H, m1, code):
    """``pre1`` (M1, n) -> ``H[c, :m1]`` = sigma, ``pre1`` <- sigma' (in place)."""
    M1, n = pre1.shape
    for k in range(M1):
        c, r = k // m1, k % m1
        row = pre1[k]
        hrow = H[c, r]
        for i in range(n):
            h, g = sd(s1 * row[i], code)
            hrow[i] = h
            row[i] = g

@njit(fastmath=_FM)
def _layer2(U2, s2, a, H2, f, code):
    """``H2 = sigma(s2 U2)``, ``f += H2^T a``, ``U2 <- sigma'(s2 U2)``."""
    M2, n = U2.shape
    for k in range(M2):
        ak = a[k]
        row = U2[k]
        hrow = H2[k]
        for i in range(n):
            h, g = sd(s2 * row[i], code)
            hrow[i] = h
            f[i] += ak * h
            row[i] = g

@njit(fastmath=_FM)
def _delta(U2, H2, a, e, cfq, g3, o3):
    """``o3 = g3 H2 e``; ``U2 <- cfq a_k U2 e`` (in place)."""
    M2, n = U2.shape
    for k in range(M2):
        row = U2[k]
        hrow = H2[k]
        acc = 0.0
        ck = cfq * a[k]
        for i in range(n):
            acc += hrow[i] * e[i]
            row[i] = ck * row[i] * e[i]
        o3[k] = g3 * acc

@njit(fastmath=_FM)
def _back(G, pre1, r, c, m1):
    """``pre1[c m1 + k, i] *= r G[i, k]`` for the copy ``c`` (G: (n, m1 + 1))."""
    n = G.shape[0]
    for k in range(m1):
        row = pre1[c * m1 + k]
        for i in range(n):
            row[i] = r * G[i, k] * row[i]


def kernels(code: int) -> SimpleNamespace:
    """Entry kernels for activation ``code`` (compiled or loaded from cache on first use)."""
    if code in _KERNELS:
        return _KERNELS[code]

    # the closures capture only ``code`` (an int): a captured dispatcher would change the
    # cache key in every process and recompile them each time
    def layer1(pre1, s1, H, m1):
        _layer1(pre1, s1, H, m1, code)

    def layer2(U2, s2, a, H2, f):
        _layer2(U2, s2, a, H2, f, code)

    jit = njit(cache=True, fastmath=_FM)

    def rhs(y, out, sizes, XtT, Xt, H, pre1, U2, H2, Y, coef):
        """The whole RHS in one call (the products by ``np.dot``, i.e. BLAS, without a
        Python round trip each); returns the loss. ``sizes = (n1, n2, M1, M2, D,
        m1, m2, C)``, ``coef = (s1, s2, cf, q, g1, g2, g3)``."""
        n1, n2, M1, M2, D, m1, m2, C = sizes
        s1, s2, cf, q, g1, g2, g3 = coef
        w1 = y[:n1].reshape((M1, D))
        w2 = y[n1:n1 + n2].reshape((M2, m1 + 1))
        a = y[n1 + n2:]
        np.dot(w1, XtT, pre1)
        _layer1(pre1, s1, H, m1, code)
        for c in range(C):
            np.dot(w2[c * m2:(c + 1) * m2], H[c], U2[c * m2:(c + 1) * m2])
        f = np.zeros(Y.shape[0])
        _layer2(U2, s2, a, H2, f, code)
        r = cf * f - Y
        e = r.astype(pre1.dtype)
        o1 = out[:n1].reshape((M1, D))
        o2 = out[n1:n1 + n2].reshape((M2, m1 + 1))
        _delta(U2, H2, a, e, cf * q, g3, out[n1 + n2:])
        if g1 != 0.0:
            for c in range(C):
                G = np.dot(U2[c * m2:(c + 1) * m2].T, w2[c * m2:(c + 1) * m2])
                _back(G, pre1, g1 / q, c, m1)
            np.dot(pre1, Xt, o1)
        else:
            o1[:, :] = 0.0
        if g2 != 0.0:
            for c in range(C):
                np.dot(U2[c * m2:(c + 1) * m2], H[c].T, o2[c * m2:(c + 1) * m2])
        else:
            o2[:, :] = 0.0
        return np.dot(r, r) / (2.0 * r.shape[0])

    ns = SimpleNamespace(layer1=jit(layer1), layer2=jit(layer2), rhs=jit(rhs))
    _KERNELS[code] = ns
    return ns


class ThreeLayerKernels:
    """The three-layer RHS and loss of one (model, data, dtype) on the kernels above.

    ``rhs(y, out) -> loss`` and ``loss(y)`` follow the model's reference ``make_rhs`` and
    ``make_loss`` exactly (same layout, ASI copies, frozen layers).
    """

    def __init__(self, be, model, data, dtype, code):
        dtype = np.dtype(dtype)
        self.be = be
        self.kern = kernels(code)
        k = model.coefficients()
        n, D = data.n, data.d + 1
        self.n, self.D = n, D
        self.m1, self.m2, self.C = model.width, model.width2, model.copies
        self.M1, self.M2 = model.n_neurons, model.n_neurons2
        self.n1, self.n2, _ = model.sizes(data.d)
        self.s1, self.s2, self.cf = k["s1"], k["s2"], k["cf"]
        self.g1 = -k["mu_w1"] * k["s1"] * k["s2"] / n
        self.g2 = -k["mu_w2"] * k["s2"] / n
        self.g3 = -k["mu_a"] * k["cf"] / n
        self.q = self.g2 if self.g2 != 0.0 else 1.0       # Delta2 carries g2 for o2
        xt = data.x_tilde()
        self.Xt = np.ascontiguousarray(xt, dtype=dtype)    # (n, D)
        self.XtT = np.ascontiguousarray(xt.T, dtype=dtype) # (D, n)
        self.Y = np.ascontiguousarray(data.y, dtype=np.float64)
        self.H = np.empty((self.C, self.m1 + 1, n), dtype=dtype)
        self.H[:, self.m1, :] = k["c"]
        self.pre1 = np.empty((self.M1, n), dtype=dtype)
        self.U2 = np.empty((self.M2, n), dtype=dtype)
        self.H2 = np.empty((self.M2, n), dtype=dtype)
        self._sizes = (self.n1, self.n2, self.M1, self.M2, self.D, self.m1, self.m2, self.C)
        self._coef = (float(self.s1), float(self.s2), float(self.cf), float(self.q),
                      float(self.g1), float(self.g2), float(self.g3))

    def _forward(self, y):
        """The residual (n,) at ``y`` (the forward half of :meth:`rhs`, for the loss)."""
        m1, m2, C = self.m1, self.m2, self.C
        w1 = y[:self.n1].reshape(self.M1, self.D)
        w2 = y[self.n1:self.n1 + self.n2].reshape(self.M2, m1 + 1)
        a = y[self.n1 + self.n2:]
        np.matmul(w1, self.XtT, out=self.pre1)
        self.kern.layer1(self.pre1, self.s1, self.H, m1)
        for c in range(C):
            np.matmul(w2[c * m2:(c + 1) * m2], self.H[c], out=self.U2[c * m2:(c + 1) * m2])
        f = np.zeros(self.n)
        self.kern.layer2(self.U2, self.s2, a, self.H2, f)
        return self.cf * f - self.Y

    def rhs(self, y, out):
        """Write ``dy/dt^`` into ``out``; return the loss at ``y`` (one compiled call)."""
        args = (y, out, self._sizes, self.XtT, self.Xt, self.H, self.pre1, self.U2, self.H2,
                self.Y, self._coef)
        if self.be.user_threads is None:        # no BLAS limit to set (a few us at m = 250)
            return self.kern.rhs(*args)
        with self.be.blas_threads():
            return self.kern.rhs(*args)

    def loss(self, y) -> float:
        with self.be.blas_threads():
            r = self._forward(y)
        return float(r @ r) / (2.0 * self.n)
