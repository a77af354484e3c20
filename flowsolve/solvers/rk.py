"""One explicit Runge-Kutta engine for every tableau, with a PI step-size controller.

The stepper advances an autonomous flow ``dy/dt = f(y)`` one accepted step at a time;
:func:`flowsolve.solvers.driver.solve` decides where to stop and what to record. The
right-hand side has the solver interface ``rhs(y, out) -> loss``: it writes ``f(y)`` and
returns the loss at ``y``, so the loss at every accepted state comes for free with the
next step's first stage.
"""

from __future__ import annotations

import math

from .status import Status
from .tableaus import Tableau

__all__ = ["RKStepper", "StepFailure"]


def pi_factor(err, err_prev, k, safety=0.9, min_factor=0.2, max_factor=10.0,
              rejected_once=False, beta=None):
    """Step-size factor after an accepted step (PI controller).

    ``err`` and ``err_prev`` are the scaled error norms of this and the previous accepted
    step, ``k`` the order of the error estimate plus one:
    ``safety err^-(1/k - 0.75 beta) err_prev^beta``, clipped to ``[min_factor,
    max_factor]``, and to at most 1 right after a rejection. The default ``beta = 0.4/k`` is
    Gustafsson's ``err^(-0.7/k) err_prev^(0.4/k)`` (0.08 for dopri5, k = 5); ``beta = 0.04``
    is Hairer's DOPRI5 and ``beta = 0`` the I controller (SciPy's). On a smooth stretch
    (``err = err_prev``) they settle at ``err = safety^(1 / (1/k - 1.75 beta))``: 0.17,
    0.44 and 0.59 for dopri5. Hairer's took 4-42% fewer steps on the four-point flows but
    left a loss floor above ``stop_at_loss`` in the stability-limited linear regime (the
    stiff modes held at the tolerance) and cost the sliding method accuracy, so the default
    aims lower (docs/benchmarks.md, "Save times from the continuous extension").
    """
    if beta is None:
        beta = 0.4 / k
    if err == 0.0:
        fac = max_factor
    else:
        fac = safety * err ** (-(1.0 / k - 0.75 * beta)) * err_prev ** beta
    fac = min(max_factor, max(min_factor, fac))
    return min(fac, 1.0) if rejected_once else fac


class StepFailure(Exception):
    """Raised by :meth:`RKStepper.step`; ``kind`` is a :class:`~.status.Status`."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class RKStepper:
    """Explicit Runge-Kutta stepper on a backend's arrays.

    Parameters
    ----------
    tableau : Tableau
    rhs : callable
        ``rhs(y, out) -> loss``.
    backend : backend object
        Supplies ``combine`` and ``error_norm`` (the stage arithmetic).
    y0 : array, shape (N,)
    rtol, atol : float
        Tolerances of the scaled RMS error norm (adaptive mode).
    dt : float, optional
        Fixed step (fixed-step mode when ``adaptive`` is False), or the first step.
    adaptive : bool
        Adaptive (embedded error estimate + PI controller) or fixed steps of ``dt``.
    error_ref : array, optional
        Measure the error relative to ``|y - error_ref|`` instead of ``|y|`` (the
        displacement norm; ``error_ref = y0``).
    safety, min_factor, max_factor : float
        Controller limits.
    pi_beta : float, optional
        The controller's memory exponent (:func:`pi_factor`: default Gustafsson's 0.4/k;
        0.04 Hairer's; 0 the I controller).
    loss : callable, optional
        ``loss(y) -> float``, for :meth:`interpolate` (else it costs a right-hand side).
    """

    def __init__(self, tableau: Tableau, rhs, backend, y0, *, rtol=1e-6, atol=1e-9, dt=None,
                 adaptive=True, error_ref=None, safety=0.9, min_factor=0.2, max_factor=10.0,
                 status_enum=None, loss=None, pi_beta=None):
        self.tab = tableau
        self.rhs = rhs
        self.be = backend
        self.rtol, self.atol = float(rtol), float(atol)
        self.adaptive = adaptive
        self.error_ref = error_ref
        self.safety, self.min_factor, self.max_factor = safety, min_factor, max_factor
        self.pi_beta = None if pi_beta is None else float(pi_beta)
        self.Status = status_enum or Status
        s, N = tableau.stages, y0.shape[0]
        self.K = backend.empty((s + 1, N), y0.dtype)
        self.y = y0.copy()
        self.y_new = backend.empty(N, y0.dtype)
        self.ytmp = backend.empty(N, y0.dtype)
        self.t = 0.0
        self.t_old = 0.0
        self._loss_fn = loss
        self.loss_evals = 0
        self._f_row = 0         # the row of K holding f(y) when it is not row 0 (FSAL)
        self.nfev = 0
        self.steps = 0
        self.rejected = 0
        self.loss = self._f(self.y, self.K[0])
        self.loss_old = self.loss
        self.err_prev = 1.0     # PI controller memory (see pi_factor)
        if adaptive:
            self.h = float(dt) if dt is not None else self._initial_step()
        else:
            self.h = float(dt)
        self.h_last = 0.0

    # -- helpers ---------------------------------------------------------------------
    def _f(self, y, out):
        self.nfev += 1
        return self.rhs(y, out)

    def _initial_step(self) -> float:
        """Hairer's starting step: one extra right-hand side evaluation."""
        be, y, f0 = self.be, self.y, self.K[0]
        xp = be.xp
        scale = self.atol + self.rtol * xp.abs(y if self.error_ref is None else y - self.error_ref)
        d0 = float(xp.sqrt(xp.mean((y / scale) ** 2))) if self.error_ref is None else 0.0
        d1 = float(xp.sqrt(xp.mean((f0 / scale) ** 2)))
        if not math.isfinite(d1) or d1 == 0.0:
            return 1e-6
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        if self.error_ref is not None:
            h0 = 0.01 / d1
        be.combine(self.ytmp, y, h0, self.K, (1.0,))
        self._f(self.ytmp, self.K[1])
        d2 = float(xp.sqrt(xp.mean(((self.K[1] - f0) / scale) ** 2))) / h0
        p = self.tab.error_order + 1
        if max(d1, d2) <= 1e-15 or not math.isfinite(d2):
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / p)
        return min(100.0 * h0, h1)

    def attempt(self, y, h, y_out):
        """One trial step of size ``h`` from ``y`` (with ``K[0] = f(y)`` already set).

        Returns ``(loss_new, f_row)``: the loss at ``y_out`` and the row of ``K`` holding
        ``f(y_out)``.
        """
        tab, K, be = self.tab, self.K, self.be
        s = tab.stages
        for i in range(1, s):
            # FSAL: the last stage's state is y_out (a[s-1] = b, Tableau.check), so it is
            # combined there once instead of twice (one state-sized pass less per step)
            dst = y_out if (tab.fsal and i == s - 1) else self.ytmp
            be.combine(dst, y, h, K, tab.a[i])
            loss_i = self._f(dst, K[i])
        if tab.fsal:
            return loss_i, s - 1
        be.combine(y_out, y, h, K, tab.b)
        return self._f(y_out, K[s]), s

    # -- one accepted step -----------------------------------------------------------
    def step(self, t_stop: float = math.inf, h_min_rel: float = 1e-14):
        """Advance to the next accepted state, never past ``t_stop`` in adaptive mode.

        Raises
        ------
        StepFailure
            With kind ``NON_FINITE`` or ``STEP_UNDERFLOW``.
        """
        S = self.Status
        rejected_once = False
        if self._f_row:
            # deferred from the last accepted step, whose stages the interpolant still used
            self.K[0][...] = self.K[self._f_row]
            self._f_row = 0
        while True:
            h = self.h
            clipped = False
            if self.adaptive and self.t + h >= t_stop * (1 - 1e-13) - 1e-300:
                h = t_stop - self.t
                clipped = True
            loss_new, row = self.attempt(self.y, h, self.y_new)
            finite = math.isfinite(loss_new) and self.be.all_finite(self.y_new)
            if not self.adaptive:
                if not finite:
                    raise StepFailure(S.NON_FINITE, f"non-finite state after the step to t = "
                                                   f"{self.t + h:.6g} (step {self.steps + 1})")
                break
            if finite:
                err = self.be.error_norm(self.y, self.y_new, h, self.K, self.tab.e, self.rtol,
                                         self.atol, self.tab.e3, self.error_ref)
                finite = math.isfinite(err)
            if not finite:
                self.rejected += 1
                self.h = 0.25 * h
                rejected_once = True
                if self.h <= h_min_rel * max(abs(self.t), 1e-300):
                    raise StepFailure(S.NON_FINITE, f"non-finite state: every trial step from "
                                                    f"t = {self.t:.6g} overflowed")
                continue
            if err <= 1.0:
                fac = pi_factor(err, self.err_prev, self.tab.error_order + 1, self.safety,
                                self.min_factor, self.max_factor, rejected_once, self.pi_beta)
                self.err_prev = max(err, 1e-4)
                if not clipped or h >= self.h:
                    self.h = h * fac
                break
            self.rejected += 1
            rejected_once = True
            fac = max(self.min_factor, self.safety * err ** (-1.0 / (self.tab.error_order + 1)))
            self.h = h * fac
            if self.h <= h_min_rel * max(abs(self.t), 1e-300) or self.h == 0.0:
                raise StepFailure(S.STEP_UNDERFLOW, f"step size underflow: h = {self.h:.3g} at "
                                                    f"t = {self.t:.6g}")
        # accept: y_new becomes y; the old state stays in y_new for event location
        self.y, self.y_new = self.y_new, self.y
        self._f_row = row       # K[0] = f(y) is set at the next step, after any interpolation
        self.t_old, self.t = self.t, self.t + h
        self.loss_old, self.loss = self.loss, loss_new
        self.h_last = h
        self.steps += 1

    # -- output between accepted states -------------------------------------------------
    @property
    def has_dense(self) -> bool:
        """Whether :meth:`interpolate` is available (a tableau with a continuous extension)."""
        return self.adaptive and self.tab.dense is not None

    def interpolate(self, t) -> tuple:
        """State and loss at ``t`` in the last accepted step, from the continuous extension.

        Costs one state-sized pass and one loss evaluation; the stepper can continue.
        """
        h = self.h_last
        theta = 1.0 if h == 0.0 else min(1.0, max(0.0, (t - self.t_old) / h))
        out = self.be.empty(self.y.shape, self.y.dtype)
        # y_new holds the step's starting state; K its stages (the FSAL row is not yet
        # copied to row 0, see step)
        self.be.combine(out, self.y_new, h, self.K, self.tab.dense_weights(theta))
        self.loss_evals += 1
        if self._loss_fn is not None:
            return out, float(self._loss_fn(out))
        return out, self._f(out, self.be.empty(out.shape, out.dtype))

    # -- event location ----------------------------------------------------------------
    def state_at(self, t) -> tuple:
        """State and loss at ``t`` in the last accepted step, by re-stepping from its start.

        Used to locate where the loss crosses a tolerance; the stepper cannot continue
        afterwards.
        """
        h = t - self.t_old
        base = self.y_new.copy()           # the state at t_old
        self._f(base, self.K[0])
        out = self.be.empty(base.shape, base.dtype)
        loss, _ = self.attempt(base, h, out)
        return out, loss


def secant_crossing(fn, t0, t1, g0, g1, xtol, maxiter=8):
    """Root of a scalar function ``fn(t)`` bracketed by ``g0 = fn(t0) > 0 >= g1 = fn(t1)``
    (Illinois false position). Returns ``(t, value, payload)`` of the first evaluation with
    ``|value| <= xtol``, else of the last one with ``value <= 0`` (a point that has
    crossed), or ``(t1, g1, None)`` when no evaluation crossed."""
    best = (t1, g1, None)
    side = 0
    for _ in range(maxiter):
        t = t1 - g1 * (t1 - t0) / (g1 - g0)
        if not (min(t0, t1) < t < max(t0, t1)):
            t = 0.5 * (t0 + t1)
        g, payload = fn(t)
        if abs(g) <= xtol:
            return t, g, payload
        if g <= 0:
            best = (t, g, payload)
            t1, g1 = t, g
            if side == -1:
                g0 *= 0.5
            side = -1
        else:
            t0, g0 = t, g
            if side == 1:
                g1 *= 0.5
            side = 1
    return best
