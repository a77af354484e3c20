"""Switching-aware explicit Runge-Kutta steps for ReLU flows (docs/nonsmooth.md).

The ReLU flow has a discontinuous right-hand side: ``sigma'`` jumps where a
pre-activation ``w_k . x~_i`` changes sign. A plain adaptive method either shrinks its
step onto every crossing or, where neurons are pushed onto a surface from both sides,
chatters along it at a cost ~ 1/tol. This stepper

1. steps the whole state with an explicit tableau of the shared engine (Bogacki-Shampine
   3(2) by default) on the *sliding-mode* right-hand side: pairs in the sliding set
   ``S`` are held on their surfaces by the Filippov equivalent control
   ``sigma'(0) = theta`` (smooth between events);
2. finds the *event neurons* of the trial step: a pair outside ``S`` whose
   pre-activation changed sign between the step's ends, or a sliding pair whose control
   left ``[sigma'(0-), 1]``;
3. re-integrates only the event neurons through their events (the model's
   ``integrate_neurons``: per-neuron event location on a cubic, crossing vs
   sliding decided by the equivalent control, releases) against a cubic Hermite
   interpolant of the residual over the step, batching every event of the step;
4. controls the error of the other components with the embedded estimate (the event
   neurons' kinks are excluded from it: the re-integration replaced them).

The events of a step are thus handled together, whatever their number; a neuron that
slides costs nothing more once it is in ``S``.

Why a third-order base tableau: the event handling is first order in the step (the
event neurons' feedback on the residual within a step is neglected, docs/nonsmooth.md),
and it limits the accuracy wherever neurons cross surfaces. So the base step's own
order buys little, and cheaper steps win. ``bs3`` (3 RHS per step) reached the same
errors with 1.3-4x fewer RHS-equivalents than ``dopri5`` (6 per step) on the four points
at every measured regime, and 1.7x fewer in the critical regime on digits
(docs/benchmarks.md, session 15).
"""

from __future__ import annotations

import math

from ..models.two_layer_structure import StepResidual
from .rk import RKStepper
from .tableaus import get_tableau

__all__ = ["SlidingStepper"]


class _MaskedBackend:
    """The backend, with an error norm that ignores the components the owner masks out
    (``owner.keep``: the event neurons, re-integrated separately)."""

    def __init__(self, be, owner):
        self._be = be
        self._owner = owner

    def __getattr__(self, name):
        return getattr(self._be, name)

    def error_norm(self, y, y_new, h, K, e, rtol, atol, e3=None, ref=None):
        return self._be.error_norm(y, y_new, h, K, e, rtol, atol, e3, ref,
                                   keep=self._owner.keep)


class SlidingStepper(RKStepper):
    """Explicit Runge-Kutta steps (``tableau``, default ``"bs3"``) with batched switching
    events (see the module docstring).

    Parameters
    ----------
    switching : object
        ``model.make_switching(...)``: ``rhs``, ``pre``, ``residual_rate``,
        ``integrate_neurons``, ``set_sliding``, ``project`` and the sliding set ``S``.
    backend, y0, rtol, atol, dt, error_ref, status_enum
        As for :class:`~.rk.RKStepper`.
    substeps : int
        RK4 substeps of the event re-integration per step.
    tableau : str
        The base step's tableau (:data:`~.tableaus.TABLEAUS`, adaptive ones).
    """

    def __init__(self, switching, backend, y0, *, rtol=1e-6, atol=1e-9, dt=None,
                 error_ref=None, status_enum=None, substeps=8, tableau="bs3"):
        self.sw = switching
        self.keep = None
        self.substeps = int(substeps)
        self.events = 0
        self.event_steps = 0
        self.aux_work = 0.0
        self._expect_events = False        # the last step had events: so will this one
        xp = backend.xp
        self.S_start = xp.zeros_like(switching.S)
        self._changed = False              # sliding set differs from S_start
        super().__init__(get_tableau(tableau), switching.rhs, _MaskedBackend(backend, self),
                         y0, rtol=rtol, atol=atol, dt=dt, error_ref=error_ref,
                         status_enum=status_enum)

    @property
    def has_dense(self) -> bool:
        return False    # event neurons are re-integrated: the stages do not describe them

    @property
    def njev(self) -> int:
        return math.ceil(self.aux_work)

    @property
    def extra_stats(self) -> dict:
        return {"event_neurons": self.events, "event_steps": self.event_steps,
                "sliding_pairs": int(self.sw.S.sum()), "event_rhs_equiv": round(self.aux_work, 2)}

    # -- one trial step with event handling ----------------------------------------------
    def attempt(self, y, h, y_out):
        sw, xp = self.sw, self.be.xp
        if self._changed:                  # a rejected attempt moved the sliding set
            sw.set_sliding(self.S_start.copy())
            self._changed = False
        self.keep = None
        self._rows = 0
        loss_i, row = super().attempt(y, h, y_out)
        c = sw.c
        M, D = c.M, c.D
        S0 = self.S_start
        ends = None
        if self._expect_events and sw.fuses_step_ends:
            # the residual rates in the crossings' pass: two products more than the
            # crossings (one RHS-equivalent), spent even if no event follows
            cross, *ends = sw.step_ends(y, y_out, self.K[0], self.K[row], S0)
            self.aux_work += 1.0
        else:
            cross = sw.crossings(y, y_out, S0)
        ev = sw.significant(cross, y_out, sw.last_e, h, self.rtol, self.atol)
        if sw.n_sliding:                   # releases: controls at y_out (the FSAL stage)
            srows, sub = sw.sliding_rows
            th = sw.last_row_theta
            lo = sw.lo
            ev[srows] |= (sub & ((th < lo - 1e-12) | (th > 1.0 + 1e-12))).any(axis=1)
        rows = xp.nonzero(ev)[0]
        self._expect_events = bool(rows.size)
        if rows.size == 0:
            return loss_i, row
        # cubic Hermite interpolant of the residual over the step
        if ends is None:
            ends = sw.residual_rate(y, self.K[0]), sw.residual_rate(y_out, self.K[row])
            self.aux_work += 2.0
        (e0, r0), (e1, r1) = ends
        e_of = StepResidual(xp, e0, r0, e1, r1, h)
        a0 = y[:M][rows]
        w0 = y[M:].reshape(M, D)[rows]
        a1, w1, S1, cost = sw.integrate_neurons(a0, w0, S0[rows], e_of, h, self.substeps)
        self.aux_work += cost / M
        y_out[:M][rows] = a1
        y_out[M:].reshape(M, D)[rows] = w1
        S = S0.copy()
        S[rows] = S1
        sw.set_sliding(S)
        self._changed = True
        keep = xp.ones(y.shape[0], dtype=bool)
        keep[rows] = False
        keep[M:].reshape(M, D)[rows] = False
        self.keep = keep
        self._rows = rows.size
        return self._f(y_out, self.K[self.tab.stages]), self.tab.stages

    def step(self, t_stop: float = math.inf, h_min_rel: float = 1e-14):
        self.S_start = self.sw.S.copy()
        self._changed = False
        self._rows = 0
        super().step(t_stop, h_min_rel)
        if self._rows:
            self.events += self._rows
            self.event_steps += 1
        self.keep = None

    def state_at(self, t):
        S_end = self.sw.S.copy()
        self.sw.set_sliding(self.S_start.copy())
        out = super().state_at(t)
        self.sw.set_sliding(S_end)
        self._changed = True
        return out
