"""SciPy's ``solve_ivp`` methods behind the stepper interface of the driver.

The adapter advances one of SciPy's ``OdeSolver`` objects step by step; states at save
times come from its dense output, so the driver records the same observables as for the
built-in engine. SciPy integrates in float64 NumPy arrays, whatever the problem's backend.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

SCIPY_METHODS = ("RK23", "RK45", "DOP853", "LSODA", "BDF", "Radau")


class ScipyStepper:
    """Drive ``scipy.integrate.<method>`` one accepted step at a time.

    ``rhs(y, out) -> loss`` is the problem's solver interface; ``loss(y)`` evaluates the
    loss at accepted states (counted in ``loss_evals``, not in ``nfev``).
    """

    interpolates = True

    def __init__(self, method, rhs, loss, y0, t_end, rtol, atol, first_step=None,
                 status_enum=None):
        import scipy.integrate as si

        if method not in SCIPY_METHODS:
            raise ConfigError(f"unknown SciPy method {method!r}; expected one of "
                              f"{list(SCIPY_METHODS)}")
        self.Status = status_enum
        self._rhs, self._loss = rhs, loss
        self.calls = 0

        def fun(t, y):
            out = np.empty_like(y)
            rhs(y, out)
            return out

        cls = getattr(si, method)
        kw = {"rtol": rtol, "atol": atol}
        if first_step is not None:
            kw["first_step"] = first_step
        self.solver = cls(fun, 0.0, np.asarray(y0, dtype=np.float64), t_end, **kw)
        self.y = self.solver.y
        self.t = 0.0
        self.t_old = 0.0
        self.loss = loss(self.y)
        self.loss_old = self.loss
        self.loss_evals = 1
        self.steps = 0
        self.rejected = 0
        self._dense = None

    @property
    def nfev(self):
        return self.solver.nfev

    @property
    def njev(self):
        return getattr(self.solver, "njev", 0)

    def step(self, t_stop=None):
        from .rk import StepFailure

        msg = self.solver.step()
        if self.solver.status == "failed":
            kind = self.Status.STEP_UNDERFLOW if "step size" in str(msg) else self.Status.FAILED
            raise StepFailure(kind, f"scipy {type(self.solver).__name__}: {msg}")
        self._dense = None
        self.t_old, self.t = self.solver.t_old, self.solver.t
        self.y = self.solver.y
        if not np.isfinite(self.y).all():
            raise StepFailure(self.Status.NON_FINITE, f"non-finite state at t = {self.t:.6g}")
        self.loss_old, self.loss = self.loss, self._loss(self.y)
        self.loss_evals += 1
        self.steps += 1

    def state_at(self, t):
        if self._dense is None:
            self._dense = self.solver.dense_output()
        y = self._dense(t)
        self.loss_evals += 1
        return y, self._loss(y)

    interpolate = state_at      # the driver's name for output between accepted states
