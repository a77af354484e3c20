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

__all__ = ["Linearization", "make_linearize", "Switching"]


class _Consts:
    """Constants shared by the structure objects of one (model, data, dtype)."""

    def __init__(self, model, xp, data, dtype):
        self.xp = xp
        self.Xt = xp.asarray(data.x_tilde(), dtype=dtype)          # (n, D)
        self.XtT = xp.ascontiguousarray(self.Xt.T)                 # (D, n)
        self.Y = xp.asarray(data.y, dtype=dtype)                   # (n,)
        self.XX = self.Xt @ self.XtT                               # (n, n)
        self.n, self.D, self.M = data.n, data.d + 1, model.n_neurons
        self.cf, self.ca, self.cw, self.s = model.coefficients()
        self.act = model.activation
        self.dtype = dtype
        M, D = self.M, self.D
        mob = xp.empty(M * (D + 1), dtype=dtype)
        mob[:M] = self.ca / self.cf
        mob[M:] = self.cw / (self.cf * self.s)
        #: (P,) diagonal mobility C: dy/dt = -C J^T e / n
        self.mobility = mob
        self.gram_cost = max(0.5, self.n / (2.0 * self.D))


class Linearization:
    """The residual and its Jacobian at one state ``y`` (matrix-free).

    Attributes
    ----------
    e : array, shape (n,)
        Residual ``e_i = c_f sum_k a_k sigma(s w_k . x~_i) - y_i``.
    loss : float
        ``|e|^2 / (2n)``.
    mobility : array, shape (P,)
        The diagonal ``C`` with ``dy/dt = -C J^T e / n``.
    """

    def __init__(self, consts: _Consts, y):
        c = self.c = consts
        xp = c.xp
        M, D = c.M, c.D
        self.a = y[:M]
        pre = y[M:].reshape(M, D) @ c.XtT                       # (M, n)
        if c.s != 1.0:
            pre *= c.s
        self.h = c.act.sigma(xp, pre)                           # (M, n)
        self.ag = c.act.dsigma(xp, pre) * self.a[:, None]       # (M, n): a_k sigma'_ki
        self.e = c.cf * (self.a @ self.h) - c.Y
        self.loss = float(self.e @ self.e) / (2.0 * c.n)
        self.mobility = c.mobility

    def jv(self, v):
        """``J v`` for ``v`` of shape (P,); returns shape (n,)."""
        c = self.c
        M, D = c.M, c.D
        vw = v[M:].reshape(M, D) @ c.XtT                        # (M, n)
        return c.cf * (v[:M] @ self.h + c.s * (self.ag * vw).sum(axis=0))

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
        xp.multiply((self.ag * u) @ c.Xt, c.cw, out=out[M:].reshape(M, D))
        return out

    def gram(self):
        """``J C J^T`` (n, n), symmetric positive semi-definite."""
        c = self.c
        return c.cf * (c.ca * (self.h.T @ self.h)
                       + c.cw * c.s * c.XX * (self.ag.T @ self.ag))

    def dense(self):
        """The Jacobian ``J`` as a dense (n, P) array (tests and small problems only)."""
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        J = xp.empty((c.n, M * (D + 1)), dtype=self.h.dtype)
        J[:, :M] = c.cf * self.h.T
        J[:, M:] = (c.cf * c.s * self.ag.T[:, :, None] * c.Xt[:, None, :]).reshape(c.n, M * D)
        return J


def make_linearize(model, xp, data, dtype):
    """``linearize(y) -> Linearization`` for ``model`` on ``data``; the function carries
    ``mobility`` (P,), ``gram_cost`` (RHS-equivalents of one Gram matrix) and ``n``."""
    consts = _Consts(model, xp, data, dtype)

    def linearize(y):
        return Linearization(consts, y)

    linearize.mobility = consts.mobility
    linearize.gram_cost = consts.gram_cost
    linearize.n = consts.n
    return linearize


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
    """

    def __init__(self, model, xp, data, dtype):
        c = self.c = _Consts(model, xp, data, dtype)
        name = model.activation.name
        if name not in ("relu", "leaky_relu"):
            raise ValueError(f"switching structure needs a ReLU-family activation, got {name!r}")
        from .activations import LEAKY_SLOPE
        self.lo = LEAKY_SLOPE if name == "leaky_relu" else 0.0
        self.S = xp.zeros((c.M, c.n), dtype=bool)
        self.theta = xp.zeros((c.M, c.n), dtype=dtype)
        self.n_sliding = 0

    def pre(self, y):
        """Pre-activations ``w_k . x~_i`` (M, n) (the sign decides sigma')."""
        c = self.c
        return y[c.M:].reshape(c.M, c.D) @ c.XtT

    def _gprime(self, pre):
        xp = self.c.xp
        return xp.where(pre > 0, 1.0, self.lo).astype(pre.dtype)

    def controls(self, y, pre, e, g):
        """Equivalent controls for the sliding pairs at ``y``; writes them into ``g``.

        Solves, per neuron with sliding pairs ``I``, ``sum_j e_j g_kj (x~_j . x~_i) = 0``
        for ``i`` in ``I``, with ``g_kj`` free for ``j`` in ``I`` (``a_k != 0``; a neuron
        with ``a_k = 0`` does not move its input weights and keeps any value).
        Returns ``theta`` (M, n) (zero outside ``S``).
        """
        xp, c = self.c.xp, self.c
        theta = xp.zeros_like(g)
        if not self.n_sliding:
            return theta
        S = self.S
        rows = xp.nonzero(S.any(axis=1))[0]
        counts = S[rows].sum(axis=1)
        XX = c.XX
        single = rows[counts == 1]
        if single.size:
            i = xp.argmax(S[single], axis=1)                       # the sliding pair's point
            gs = g[single]
            gs[xp.arange(single.size), i] = 0.0
            num = (gs * e) @ XX                                     # (k, n): sum_j e_j g_kj XX_ji
            num = num[xp.arange(single.size), i]
            den = e[i] * XX[i, i]
            th = xp.where(den != 0, -num / xp.where(den != 0, den, 1.0), 0.0)
            theta[single, i] = th
            gs[xp.arange(single.size), i] = th
            g[single] = gs
        for k in rows[counts > 1].tolist():                         # rare: several surfaces
            I = xp.nonzero(S[k])[0]
            gk = g[k].copy()
            gk[I] = 0.0
            rhs = -((gk * e) @ XX[:, I])
            A = XX[xp.ix_(I, I)] * e[I][None, :]
            try:
                th = xp.linalg.solve(A, rhs)
            except Exception:                                       # singular: least squares
                th = xp.linalg.lstsq(A, rhs, rcond=None)[0]
            gk[I] = th
            g[k] = gk
            theta[k, I] = th
        return theta

    def rhs(self, y, out):
        """The sliding-mode right-hand side; writes ``dy/dt`` into ``out``, returns the loss.

        Also leaves ``self.last_theta`` (M, n) for the release test.
        """
        c = self.c
        xp = c.xp
        M, D = c.M, c.D
        a = y[:M]
        pre = self.pre(y)
        h = xp.maximum(pre, 0.0) if self.lo == 0.0 else xp.where(pre > 0, pre, self.lo * pre)
        if self.n_sliding:
            h[self.S] = 0.0
        e = c.cf * (a @ h) - c.Y
        xp.multiply(h @ e, -c.ca / c.n, out=out[:M])
        g = self._gprime(pre)
        self.last_theta = self.controls(y, pre, e, g)
        g *= e
        xp.multiply(((-c.cw / c.n) * a)[:, None], g @ c.Xt, out=out[M:].reshape(M, D))
        return float(e @ e) / (2.0 * c.n)

    def surface_velocity(self, y, k, i, gk_value, e):
        """(test helper) ``d/dt (w_k . x~_i)`` with ``sigma'_ki = gk_value``."""
        c = self.c
        pre = self.pre(y)
        g = self._gprime(pre[k])
        g[i] = gk_value
        return float(-(c.cw / c.n) * y[k] * ((g * e) @ c.XX[:, i]))
