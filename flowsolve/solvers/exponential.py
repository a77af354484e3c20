"""Exponential integrators with the Gauss-Newton linearisation of the squared loss.

The flow ``dy/dt = f(y) = -C J(y)^T e(y) / n`` (``e`` the residual (n,), ``J = de/dy``
(n, P), ``C`` a positive diagonal mobility) is split at the start ``y0`` of every step as
``f(y) = f(y0) + A (y - y0) + g(y)`` with the Gauss-Newton matrix ``A = -C J0^T J0 / n``
(rank n). A step is an explicit exponential Runge-Kutta method for that split (Hochbruck
and Ostermann, Acta Numerica 2010), given as data (:class:`ExpTableau`)::

    U_i = y0 + c_i h phi1(c_i hA) f(y0) + h sum_j a_ij(c_i hA) D_j,   D_j = g(U_j) - g(y0)
    y1  = y0 + h phi1(hA) f(y0)         + h sum_j b_j(hA) D_j

with ``g(U) - g(y0) = f(U) - f(y0) - A (U - y0)``, the nonlinearity the linearisation
missed; ``a_ij`` and ``b_j`` are linear combinations of the ``phi_k``. The embedded
solution (weights ``bhat_j``) gives the error estimate ``y1 - yhat``. Two tableaus:

- ``"expgn2"``: ETD2RK of Cox and Matthews (one stage at ``c = 1``, the exponential Euler
  step ``U``; ``b = phi2``); ``U`` is the embedded solution, so the estimate is that of a
  first-order step (``error_order`` 1).
- ``"expgn3"``: ETDRK3 of Cox and Matthews (stages at ``c = 1/2`` and ``1``, third order
  for a fixed ``A``) with the exponential midpoint rule (``bhat_2 = 2 phi2``, second
  order) as the embedded solution (``error_order`` 2): the controller sees the error of a
  second-order solution and keeps the third-order one.

Because ``A`` has rank ``n``,
``phi_k(hA) v = v / k! - (h/n) C J0^T phi_{k+1}(-h K/n) J0 v`` with the ``n x n`` Gram
matrix ``K = J0 C J0^T``: every matrix function is taken of ``K/n`` by one symmetric
eigendecomposition per accepted step, the ``P``-sized work is ``J v`` / ``C J^T u``
products. For a flow that is linear in the parameters (the linearised/NTK model, frozen
features) the step is exact, whatever ``h``.

Work accounting (``njev``, in right-hand-side equivalents): a linearisation (forward pass)
0.5, each ``J v`` or ``C J^T u`` 0.5, a Gram matrix ``linearize.gram_cost``. ``nfact``
counts eigendecompositions. Per attempt, ``expgn2`` costs 1 RHS and 1.5 RHS-equivalents of
products, ``expgn3`` 2 RHS and 3 (its embedded solution is not a stage: one more product).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..models.two_layer_structure import StepResidual, compact
from .rk import StepFailure, pi_factor
from .status import Status

__all__ = ["ExpGNStepper", "ExpTableau", "EXP_TABLEAUS", "phi_functions"]


def phi_functions(z, kmax=3):
    """``phi_0 .. phi_kmax`` at ``z`` (array, z <= 0 expected), stable near 0.

    ``phi_0 = exp``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``, ``phi_k(0) = 1/k!``.
    Returns a list of arrays of the shape of ``z``.
    """
    z = np.asarray(z, dtype=np.float64)
    small = np.abs(z) < 0.5
    zs = np.where(small, z, 1.0)
    zl = np.where(small, -1.0, z)
    out = [np.exp(z)]
    big = np.exp(zl)
    fact = 1.0
    for k in range(1, kmax + 1):
        # large |z|: recursion; small |z|: Taylor series sum_j z^j / (j + k)!
        big = (big - 1.0 / fact) / zl
        fact *= k
        ser = np.zeros_like(zs)
        term = 1.0 / math.factorial(k)
        for j in range(20):
            ser += term
            term = term * zs / (j + k + 1)
        out.append(np.where(small, ser, big))
    return out


def _at_zero(w) -> float:
    """The value at ``Z = 0`` of ``sum_k c_k phi_k(Z)`` (``phi_k(0) = 1/k!``)."""
    return sum(c / math.factorial(k) for k, c in w)


@dataclass(frozen=True)
class ExpTableau:
    """An explicit exponential Runge-Kutta method with an embedded solution (as data).

    Attributes
    ----------
    name : str
    c : tuple of float
        Nodes of the nonlinear stages ``U_2 .. U_s`` (``U_1 = y0``).
    a : tuple of tuples of weights
        ``a[i][j]``: ``a_ij(c_i hA)`` as ``((k, coef), ...)`` (sum of ``coef phi_k``),
        applied to ``D_j`` of the earlier nonlinear stage ``j < i``; ``k >= 1``.
    b, bhat : tuple of weights
        Weights of ``D_j`` in the solution and in the embedded solution, as
        ``((k, coef), ...)`` of ``phi_k(hA)``.
    order, error_order : int
        Orders of the solution and of the embedded one (the controller's exponent).
    """

    name: str
    c: tuple
    a: tuple
    b: tuple
    bhat: tuple
    order: int
    error_order: int

    @property
    def kmax(self) -> int:
        """The highest ``phi_k`` the low-rank formulas need (``phi_{k+1}`` of each term)."""
        ks = [k for row in self.a for w in row for k, _ in w] + \
             [k for w in self.b + self.bhat for k, _ in w]
        return max(ks + [1]) + 1

    @property
    def err_weights(self) -> tuple:
        """Weights of ``D_j`` in ``y1 - yhat`` (``b_j - bhat_j``)."""
        return tuple(tuple(b) + tuple((k, -ck) for k, ck in bh)
                     for b, bh in zip(self.b, self.bhat))

    @property
    def embedded_stage(self):
        """Index of the stage equal to the embedded solution (``c = 1``, same weights),
        or ``None`` when it needs its own product."""
        s = len(self.c)
        for i, ci in enumerate(self.c):
            if ci == 1.0 and tuple(self.a[i]) + ((),) * (s - i) == tuple(self.bhat):
                return i
        return None


EXP_TABLEAUS = {
    "expgn2": ExpTableau("expgn2", c=(1.0,), a=((),), b=(((2, 1.0),),), bhat=((),),
                         order=2, error_order=1),
    "expgn3": ExpTableau("expgn3", c=(0.5, 1.0), a=((), (((1, 2.0),),)),
                         b=(((2, 4.0), (3, -8.0)), ((2, -1.0), (3, 4.0))),
                         bhat=(((2, 2.0),), ()), order=3, error_order=2),
}


class ExpGNStepper:
    """Adaptive exponential Runge-Kutta steps with the Gauss-Newton linear part (see the
    module docstring).

    Parameters
    ----------
    linearize : callable
        ``linearize(y)`` -> object with ``e`` (n,), ``loss``, ``jv(v)`` (n,), ``cjt(u)``
        (P,), ``gram()`` (n, n); the function has attributes ``n`` and ``gram_cost``
        (``model.make_jacobian``).
    rhs : callable
        ``rhs(y, out) -> loss``.
    backend : backend object
    y0 : array, shape (P,)
    rtol, atol : float
        Tolerances of the scaled RMS norm of the local error estimate.
    dt : float, optional
        First step (default: from the largest Gram eigenvalue and the first-step
        heuristic of the explicit engine).
    error_ref : array, optional
        Scale errors by ``|y - error_ref|`` (displacement control) instead of ``|y|``.
    tableau : str or ExpTableau
        The method (a key of :data:`EXP_TABLEAUS`, default ``"expgn2"``).

    Attributes
    ----------
    trace : list or None
        Set it to a list to record what limits the steps: each accepted step appends
        ``(t, h, rejected, event_neurons, err_base, err, lam_max, sliding_pairs)``:
        its end time and size, the attempts rejected before it, the neurons its events
        re-integrated, the scaled error norm of the base step alone (the components
        left to it; with events, as :meth:`_events` took it before the sliding neurons
        are projected back onto their surfaces) and the norm the controller took (with
        the event re-integration's estimate, :meth:`_consistency`), the largest
        eigenvalue of ``K/n`` at its start, and the sliding pairs at its end. ``None``
        (default): nothing recorded.
    """

    #: the most RK4 substeps one event re-integration may take (``substeps`` per
    #: ``1/lam_max`` of the step): a longer step with events is rejected and shortened
    max_substeps = 4096

    def __init__(self, linearize, rhs, backend, y0, *, rtol=1e-6, atol=1e-9, dt=None,
                 error_ref=None, status_enum=None, safety=0.9, max_factor=10.0,
                 switching=None, substeps=8, tableau="expgn2"):
        if isinstance(tableau, str):
            if tableau not in EXP_TABLEAUS:
                raise ConfigError(f"unknown exponential tableau {tableau!r}; expected one of "
                                  f"{sorted(EXP_TABLEAUS)}")
            tableau = EXP_TABLEAUS[tableau]
        self.tab = tableau
        self.error_order = self.tab.error_order
        self.linearize = linearize
        self.sw = switching
        self.substeps = int(substeps)
        self.events = 0
        self.aux_work = 0.0
        if switching is not None:
            self.S = switching.S.copy()
            self.S_old = self.S.copy()
        self.rhs = rhs
        self.be = backend
        self.xp = backend.xp
        self.rtol, self.atol = float(rtol), float(atol)
        self.error_ref = error_ref
        self.Status = status_enum or Status
        self.safety, self.max_factor = safety, max_factor
        self.n = linearize.n
        if switching is not None:                    # the largest entry of C
            self._mob_max = float(linearize.mobility.max())
        self.nfev = 0
        self.njev_f = 0.0
        self.nfact = 0
        self.steps = 0
        self.rejected = 0
        self.t = self.t_old = 0.0
        self.y = y0.copy()
        self.y_old = y0.copy()
        self._fU = [backend.empty(y0.shape, y0.dtype) for _ in self.tab.c]
        self._U = [backend.empty(y0.shape, y0.dtype) for _ in self.tab.c]
        self._f_of = self._f_at = None           # the flow at the last point asked for
        self._set_point(self.y)
        self.old = self.cur
        self.loss = self.loss_old = self.cur[0].loss
        self.err_prev = 1.0
        self.h = float(dt) if dt is not None else self._initial_step()
        self.trace = None

    @property
    def njev(self) -> int:
        return math.ceil(self.njev_f + self.aux_work)

    @property
    def extra_stats(self) -> dict:
        out = {"factorizations": self.nfact, "jacobian_rhs_equiv": round(self.njev_f, 2)}
        if self.sw is not None:
            out.update({"event_neurons": self.events, "event_rhs_equiv": round(self.aux_work, 2),
                        "sliding_pairs": int(self.S.sum())})
        return out

    # -- linear algebra in the n-dimensional residual space -------------------------------
    def _set_point(self, y, lin=None):
        if lin is None:                          # else made (and counted) by the caller
            lin = self.linearize(y) if self.sw is None else self.linearize(y, self.S)
            self.njev_f += 0.5
        K = self.be.to_numpy(lin.gram()) / self.n
        lam, V = np.linalg.eigh(0.5 * (K + K.T))
        lam = np.maximum(lam, 0.0)
        self.njev_f += self.linearize.gram_cost
        self.nfact += 1
        self.cur = (lin, lam, V, None if self.sw is None else self.S)

    def _initial_step(self):
        lin, lam = self.cur[:2]
        f0 = lin.cjt(-lin.e / self.n)
        self.njev_f += 0.5
        xp = self.xp
        ref = self.error_ref
        scale = self.atol + self.rtol * xp.abs(self.y if ref is None else self.y - ref)
        d1 = float(xp.sqrt(xp.mean((f0 / scale) ** 2)))
        if ref is None:
            d0 = float(xp.sqrt(xp.mean((self.y / scale) ** 2)))
            h = 0.01 * d0 / d1 if d1 > 0 and d0 > 1e-5 else 1e-6
        else:
            h = 0.01 / d1 if d1 > 0 else 1e-6
        lmax = float(lam[-1]) if lam.size else 0.0
        if lmax > 0:
            h = max(h, 0.5 / lmax)
        return h if math.isfinite(h) and h > 0 else 1e-6

    # -- one trial step -----------------------------------------------------------------
    def attempt(self, y, point, h, y_out):
        """One step of the tableau, of size ``h`` from ``y`` with ``point = (lin, lam, V,
        S)`` at ``y``. Writes the solution into ``y_out``; returns the error vector
        ``y1 - yhat`` (P,).

        Work is in the eigenbasis of ``K/n`` (n-vectors, NumPy): for each stage the
        coefficient ``u`` of ``U_i - y = h sum_j a_ij(0) f(U_j) + C J0^T V u / n``, with
        ``J0 (U_i - y)`` from the products ``J0 f(U_j)`` already taken, so a stage costs
        one ``C J^T u``, one RHS and one ``J v``.
        """
        lin, lam, V, self._S_attempt = point
        tab, n, be = self.tab, self.n, self.be
        phis = {}

        def phi(c, k):                  # phi_k(-c h lam), cached per node
            if c not in phis:
                phis[c] = phi_functions(-c * h * lam, tab.kmax)
            return phis[c][k]

        def combine(c, weights, ehat_term):
            """P-space weights of ``f(U_j)`` and the eigen-coefficient of ``C J^T V . / n``
            for ``y + c h phi1(c hA) f(y) + h sum_j w_j(c hA) D_j`` (without the
            ``phi1`` term when ``ehat_term`` is false)."""
            coef = -c * h * phi(c, 1) * e_hat if ehat_term else np.zeros_like(e_hat)
            fw = []
            for j, w in enumerate(weights):
                if not w:
                    continue
                w0 = _at_zero(w)
                coef = coef + h * w0 * d_hat[j]
                for k, ck in w:
                    coef = coef - (c * h * h * ck) * phi(c, k + 1) * jd_hat[j]
                fw.append((j, h * w0))
            return fw, coef

        def assemble(base, fw, coef, out=None):
            """``base + sum w f(U_j) + C J^T V coef / n`` on the backend, into ``out``
            (a new array without ``base`` and ``out``)."""
            v = lin.cjt(be.asarray(V @ coef, y.dtype) / n)
            self.njev_f += 0.5
            if base is None:
                out = v
            else:
                self.xp.add(base, v, out=out)
            for j, wj in fw:
                out += wj * self._fU[j]
            return out

        e_hat = V.T @ be.to_numpy(lin.e).astype(np.float64)
        d_hat, jd_hat, jf_hat, stages = [], [], [], []
        for i, ci in enumerate(tab.c):
            fw, coef = combine(ci, tab.a[i][:i], True)
            U = assemble(y, fw, coef, self._U[i])
            stages.append(U)
            # J0 (U_i - y) = sum_j w_j J0 f(U_j) + (K/n) V coef
            ju = lam * coef
            for j, wj in fw:
                ju = ju + wj * jf_hat[j]
            fU = self._fU[i]
            if self.sw is not None:
                self.sw.set_sliding(self._S_attempt)
                self.sw.rhs(U, fU)                     # the sliding-mode flow
            else:
                self.rhs(U, fU)
            self.nfev += 1
            jf_hat.append(V.T @ be.to_numpy(lin.jv(fU)).astype(np.float64))
            self.njev_f += 0.5
            d_hat.append(e_hat + ju)                   # D_i = f(U_i) + C J0^T V d_i / n
            jd_hat.append(jf_hat[i] + lam * d_hat[i])  # J0 D_i
        fw, coef = combine(1.0, tab.err_weights, False)
        err = assemble(None, fw, coef)
        if tab.embedded_stage is not None:
            yhat = stages[tab.embedded_stage]
        else:
            fw, coef = combine(1.0, tab.bhat, True)
            yhat = assemble(y, fw, coef, y_out)
        self.xp.add(yhat, err, out=y_out)
        self._jd = (lin.e, be.asarray(-(V @ (lam * e_hat)), y.dtype))  # e, de/dt at y
        self._lin0 = lin
        self._V, self._lam = V, lam                     # the linear modes of the step
        return err

    def _events(self, y, h, y1, S, err_vec=None):
        """Re-integrate the neurons with switching events (or sliding pairs) in the step
        ``y -> y1`` through their events (see :mod:`.sliding`); returns
        ``(keep, S_new, rows)``, ``keep`` the mask of components left to the error norm,
        or, with ``y1`` untouched, the string ``"too long"`` when the re-integration would
        need more than :attr:`max_substeps` substeps, or ``"base error"`` when the base
        step's error over the components left to it (``err_vec``; not checked when
        ``None``) already exceeds 1: the step fails whatever the re-integration gives (it
        only adds to the norm), so it is not made (``self._err_base`` holds that norm for
        the controller)."""
        sw, xp = self.sw, self.xp
        c = sw.c
        M, D = c.M, c.D
        lin1 = self.linearize(y1, S)
        pre0, pre1 = self._lin0.pre, lin1.pre          # s w . x~ at y and y1
        w1 = y1[M:].reshape(M, D)
        # crossings, and arrivals, where the start's rate reaches the surface within the
        # step: at an attractive surface the stages cross it, meet the other side's
        # velocity and are pushed back, so the ends need not differ in sign, and the
        # neuron, left to the base step, held the error estimate to h ~ 1 late on digits
        # (docs/benchmarks.md, session 18). Arrivals include the excursions across a
        # surface and back within the step (a step spans many 1/lam): the quadratic
        # through the value and rate at y and the value at y1 dips only from a start
        # within half the rate's reach (Switching.event_pairs)
        v0 = self._velocity(self._lin0)
        rate0 = (v0[M:].reshape(M, D) @ c.XtT) * (c.s * h)
        pairs, near = sw.event_pairs(pre0, pre1, rate0, S,
                                     c.s * xp.sqrt((w1 * w1).sum(axis=1)))
        self.aux_work += 0.5
        ev = sw.significant(compact(xp, pairs), y1, lin1.e, h, self.rtol, self.atol) | near
        ev |= lin1.controls_left()
        rows = xp.nonzero(ev)[0]
        if rows.size == 0:
            return None, S, 0
        if self._substeps(h) > self.max_substeps:
            return "too long", S, rows.size
        keep = xp.ones(y.shape[0], dtype=bool)
        keep[rows] = False
        keep[M:].reshape(M, D)[rows] = False
        if err_vec is not None:
            self._err_base = self._norm(y, y1, err_vec, keep)
            if not self._err_base <= 1.0:
                return "base error", S, rows.size
        e0, r0 = self._jd
        e1 = self._e1 = lin1.e
        r1 = lin1.jv(lin1.cjt(-e1 / self.n))          # de/dt = J f at y1: two products,
        self.aux_work += 0.5 + 1.0                    # cheaper than the Gram matrix (n > D)
        e_of = StepResidual(xp, e0, r0, e1, r1, h, modes=(self._V, self._lam))
        a1, w1, S1, cost = sw.integrate_neurons(y[:M][rows], y[M:].reshape(M, D)[rows],
                                                S[rows], e_of, h, self._substeps(h))
        self.aux_work += cost / M
        y1[:M][rows] = a1
        y1[M:].reshape(M, D)[rows] = w1
        S_new = S.copy()
        S_new[rows] = S1
        return keep, S_new, rows.size

    def _consistency(self, y1, S1, h):
        """The error the event re-integration leaves in a step ``h`` that ended at ``y1``
        (sliding pairs ``S1``): the neurons were integrated against the residual model
        ``e(tau)`` (:class:`StepResidual`), which ends at the base step's residual
        ``e1``, not at the re-integrated state's own ``e(y1)``. Their mismatch ``de``,
        grown from 0 over the step, moves every neuron's velocity by ``-C J^T de / n``:
        returns ``(lin, (h / 2) C J^T de / n)``, ``lin`` the linearisation at ``y1``
        (the next step's point when the step is accepted), or ``(lin, None)`` when a
        bound puts the estimate's norm below 0.1: ``|C J^T u|^2 <= c_max u^T J C J^T u
        <= c_max n lam_max |u|^2`` (``c_max`` the largest entry of the diagonal mobility
        ``C``, ``lam_max`` the largest eigenvalue of ``J C J^T / n``) and every scale is
        at least ``atol``. ``lam_max`` is the step start's, not the end's (the end's Gram
        matrix is made only once the step is accepted), so the bound is approximate by
        the change of ``lam_max`` over one step; at 0.1 its share of the squared norm is
        1e-2. That skips the product in most steps with events (the mismatch is small
        where the event neurons are light).

        Without it a step in which every neuron is an event neuron had no error estimate
        at all (docs/nonsmooth.md)."""
        lin = self.linearize(y1, S1)
        self.njev_f += 0.5
        u = (0.5 * h / self.n) * (lin.e - self._e1)
        lmax = float(self._lam[-1]) if self._lam.size else 0.0
        bound = math.sqrt(self._mob_max * self.n * lmax) * float(self.xp.linalg.norm(u)) \
            / (math.sqrt(y1.shape[0]) * self.atol)
        if bound < 0.1:
            return lin, None
        self.njev_f += 0.5
        return lin, lin.cjt(u)

    def _substeps(self, h):
        """RK4 substeps of the event re-integration over a step ``h``: ``substeps`` per
        ``1/lam_max`` (the residual's fastest time scale), at least ``substeps``. The
        neurons are re-integrated against ``e(tau)``; a neuron whose pre-activation turns
        back just short of a surface is decided by that integration's accuracy."""
        lmax = float(self._lam[-1]) if self._lam.size else 0.0
        return max(self.substeps, math.ceil(self.substeps * h * lmax))

    def _velocity(self, lin):
        """The flow ``-C J^T e / n`` at the linearisation ``lin`` (kept for its point)."""
        if self._f_of is not lin:
            self._f_at = lin.cjt(-lin.e / self.n)
            self._f_of = lin
            self.njev_f += 0.5
        return self._f_at

    def _norm(self, y, y1, err, keep=None, extra=None):
        """Scaled RMS norm of the error over all components: ``err`` where ``keep``
        (the components left to the base step), plus ``extra`` everywhere (the event
        re-integration's, :meth:`_consistency`)."""
        xp = self.xp
        ref = self.error_ref
        if ref is None:
            scale = xp.maximum(xp.abs(y), xp.abs(y1))
        else:
            scale = xp.maximum(xp.abs(y - ref), xp.abs(y1 - ref))
        scale = self.atol + self.rtol * scale
        r2 = (err / scale) ** 2
        if keep is not None:
            r2[~keep] = 0.0
        if extra is not None:
            r2 += (extra / scale) ** 2
        return float(xp.sqrt(xp.mean(r2)))

    # -- one accepted step --------------------------------------------------------------
    def step(self, t_stop: float = math.inf, h_min_rel: float = 1e-14):
        """Advance to the next accepted state, never past ``t_stop``."""
        S = self.Status
        rejected_once = False
        self._rejected_before = self.rejected
        y1 = self.be.empty(self.y.shape, self.y.dtype)
        k = self.error_order + 1
        while True:
            h = self.h
            clipped = False
            if self.t + h >= t_stop * (1 - 1e-13) - 1e-300:
                h, clipped = t_stop - self.t, True
            err_vec = self.attempt(self.y, self.cur, h, y1)
            keep, S_new, nev = None, None, 0
            too_long = False
            if self.sw is not None and self.be.all_finite(y1):
                keep, S_new, nev = self._events(self.y, h, y1, self.S, err_vec)
                too_long = isinstance(keep, str) and keep == "too long"
                if not isinstance(keep, str) and S_new.any():
                    self.sw.project(y1, S_new)      # sliding neurons back onto their surfaces
            if too_long:
                # the events cannot be re-integrated at this length: shorten it to what
                # max_substeps resolves (the last step's lam_max), as a rejected step
                lmax = float(self._lam[-1])
                h_new = min(0.5 * h, 0.9 * self.max_substeps / (self.substeps * lmax))
                kind = S.STEP_UNDERFLOW
                why = (f"the event re-integration needs more than {self.max_substeps} "
                       f"substeps: lambda_max(K/n) = {lmax:.3g}")
            else:
                err, lin_end = math.nan, None
                if isinstance(keep, str):          # "base error": failed before the events
                    err = self._err_base
                elif self.be.all_finite(y1):
                    extra = None
                    if nev:                        # re-integrated neurons: their residual
                        lin_end, extra = self._consistency(y1, S_new, h)
                    err = self._norm(self.y, y1, err_vec, keep, extra)
                    err_base = self._err_base if nev else err  # for the trace
                if math.isfinite(err) and err <= 1.0:
                    fac = pi_factor(err, self.err_prev, k, self.safety, 0.2, self.max_factor,
                                    rejected_once)
                    self.err_prev = max(err, 1e-4)
                    if not clipped or h >= self.h:
                        self.h = h * fac
                    break
                fac = 0.25 if not math.isfinite(err) else max(1e-3,
                                                              self.safety * err ** (-1.0 / k))
                h_new = h * min(fac, 0.9)
                kind = S.NON_FINITE if not math.isfinite(err) else S.STEP_UNDERFLOW
                why = "exponential Gauss-Newton steps"
            self.rejected += 1
            rejected_once = True
            self.h = h_new
            if self.h <= h_min_rel * max(abs(self.t), 1e-300):
                raise StepFailure(kind, f"step size underflow: h = {self.h:.3g} at "
                                        f"t = {self.t:.6g} ({why})")
        if self.trace is not None:
            lmax = float(self.cur[1][-1]) if self.cur[1].size else 0.0
            n_rej = self.rejected - self._rejected_before
            self.trace.append((self.t + h, h, n_rej, nev, err_base, err, lmax,
                               int(S_new.sum()) if self.sw is not None else 0))
        self.y_old, self.y = self.y, y1
        self.old = self.cur
        if self.sw is not None:
            self.S_old, self.S = self.S, S_new
            self.events += nev
        self._set_point(self.y, lin_end)
        self.t_old, self.t = self.t, self.t + h
        self.loss_old, self.loss = self.loss, self.cur[0].loss
        if not math.isfinite(self.loss):
            raise StepFailure(S.NON_FINITE, f"non-finite loss at t = {self.t:.6g}")
        self.steps += 1

    def state_at(self, t):
        """State and loss at ``t`` in the last accepted step (re-stepping from its start)."""
        out = self.be.empty(self.y.shape, self.y.dtype)
        self.attempt(self.y_old, self.old, t - self.t_old, out)
        if self.sw is not None:
            self._events(self.y_old, t - self.t_old, out, self.S_old)
        lin = self.linearize(out)
        self.njev_f += 0.5
        return out, lin.loss
