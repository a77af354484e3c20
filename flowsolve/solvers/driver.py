"""``solve()``: integrate a Problem's flow with any method and record its observables."""

from __future__ import annotations

import contextlib
import math
import sys
import time

import numpy as np

from .._validate import positive_float, positive_int
from ..errors import ConfigError
from .auto import STRUCTURED, build_structured
from .rk import RKStepper, StepFailure, secant_crossing
from .scipy_ivp import SCIPY_METHODS, ScipyStepper
from .solution import Solution
from .status import Stats, Status
from .tableaus import ADAPTIVE, get_tableau

__all__ = ["solve", "log_grid", "METHODS"]

#: fixed-step methods need ``dt`` (or ``lr`` for gd)
FIXED_STEP = ("gd", "euler", "rk4")
METHODS = ADAPTIVE + FIXED_STEP + tuple(f"scipy:{m}" for m in SCIPY_METHODS) + STRUCTURED


def log_grid(t_end: float, t_min: float = 1e-3, per_decade: int = 10) -> np.ndarray:
    """The default save grid: 0, then ``per_decade`` log-spaced times per decade from
    ``t_min`` up to ``t_end`` (``t_end`` included; capped at 1e16 for an infinite end).

    The grid is anchored at powers of ten, so runs with different ``t_end`` share times.
    """
    t_top = min(t_end, 1e16)
    k0 = round(math.log10(t_min) * per_decade)
    k1 = math.floor(math.log10(t_top) * per_decade + 1e-9)
    grid = 10.0 ** (np.arange(k0, k1 + 1) / per_decade)
    grid = grid[grid < t_top * (1 - 1e-12)]
    return np.concatenate([[0.0], grid, [t_top]])


class _Recorder:
    """Observables at save times, and the running maxima of the relative changes."""

    def __init__(self, problem):
        self.problem = problem
        self.rd_names = problem.model.rd_names
        self.t = []
        self.values = {k: [] for k in ("loss",) + self.rd_names
                       + tuple(n + "_max" for n in self.rd_names)}
        self.running_max = dict.fromkeys(self.rd_names, 0.0)
        self.current = None
        self.snapshots = []

    def update(self, y):
        rds = self.problem.relative_changes(y)
        for k, v in rds.items():
            if v > self.running_max[k] or not math.isfinite(v):
                self.running_max[k] = v
        self.current = rds
        return rds

    def record(self, t, loss, rds=None):
        rds = self.current if rds is None else rds
        if self.t and t <= self.t[-1]:
            return
        self.t.append(float(t))
        self.values["loss"].append(float(loss))
        for k in self.rd_names:
            self.values[k].append(rds[k])
            self.values[k + "_max"].append(self.running_max[k])

    def snapshot(self, t, y):
        self.snapshots.append((float(t), np.array(self.problem.backend.to_numpy(y),
                                                  dtype=np.float64)))


class _Progress:
    """A tqdm bar over log-time and log-loss progress (whichever is further)."""

    def __init__(self, enabled, t_end, loss0, tol, desc):
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=1000, desc=desc, leave=False, unit="‰")
        self.t_end, self.loss0, self.tol = t_end, loss0, tol
        self.last = 0.0

    def update(self, t, loss, steps):
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.last < 0.2:
            return
        self.last = now
        frac = 0.0
        if math.isfinite(self.t_end) and t > 0:
            frac = max(frac, math.log1p(t) / math.log1p(self.t_end))
        if self.tol and self.loss0 > self.tol and loss > 0:
            frac = max(frac, math.log(self.loss0 / max(loss, self.tol))
                       / math.log(self.loss0 / self.tol))
        self.bar.n = int(1000 * min(frac, 1.0))
        self.bar.set_postfix_str(f"t={t:.3g} loss={loss:.3g} steps={steps}", refresh=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _check_method(method):
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    return method


def solve(problem, method: str = "auto", *, backend=None, rtol: float = 1e-6,
          atol: float = 1e-9, t_end: float | None = None, save_at=None,
          stop_at_loss: float | None = None, max_steps: int = 1_000_000, progress=None,
          dt: float | None = None, lr: float | None = None, first_step: float | None = None,
          snapshots=None, error_norm: str = "state",
          event_substeps: int | None = None) -> Solution:
    """Integrate the normalised gradient flow of ``problem``.

    Parameters
    ----------
    problem : Problem
    method : str
        ``"auto"`` (default): a structure-aware method chosen from the problem and named in
        ``Solution.stats.method`` (for ReLU-family two-layer models ``"expgn2"`` in the
        linear regime over long horizons, else ``"sliding"``; ``"expgn3"`` for smooth
        ones, ``"dopri5"`` for models without Gauss-Newton
        structure such as :class:`~flowsolve.ThreeLayer`; :func:`.auto.choose`). Or
        ``"sliding"``, ``"expgn2"``, ``"expgn3"`` by name (docs/nonsmooth.md;
        :mod:`flowsolve.solvers.exponential`);
        adaptive Runge-Kutta ``"bs3"``, ``"dopri5"``, ``"tsit5"``, ``"dop853"``; fixed-step
        ``"gd"`` (explicit Euler = full-batch gradient descent), ``"euler"``, ``"rk4"``;
        or ``"scipy:RK45"``, ``"scipy:DOP853"``, ``"scipy:LSODA"``, ... (SciPy's solve_ivp).
    backend : str, optional
        Run on this backend instead of the problem's own (same initial state).
    rtol, atol : float
        Tolerances of the adaptive methods (scaled RMS norm of the local error).
    t_end : float, optional
        End of the normalised time interval; may be omitted (infinite) when
        ``stop_at_loss`` is given.
    save_at : array_like or int, optional
        Times at which observables are recorded (sorted, >= 0); an int asks for that
        many log-spaced points per decade; default :func:`log_grid` with 10 per decade.
        The final state is always recorded as the last time.
    stop_at_loss : float, optional
        Stop when the loss ``1/(2n) sum e^2`` falls to this value. Adaptive methods
        locate the crossing time (secant on log loss, re-stepping the last step); fixed-
        step methods stop at the first step below it, as training loops do.
    max_steps : int
        Accepted-step limit; the run then ends with status ``MAX_STEPS``.
    progress : bool, optional
        Show a tqdm progress bar (default: only when stderr is a terminal).
    dt : float, optional
        Step of the fixed-step methods in normalised time (or the first step of adaptive ones).
    lr : float, optional
        For ``"gd"``: the learning rate in the original variables (``dt = lr/(beta1 beta2)``).
    first_step : float, optional
        First step of the adaptive methods (default: Hairer's estimate).
    snapshots : array_like, optional
        Times at which the full parameter vector is kept (per-neuron data in the Dataset).
    error_norm : {"state", "displacement"}
        Scale the local error by ``|y|`` (standard) or by the displacement ``|y - y0|``
        (tight control of small motions in the linear regime).
    event_substeps : int, optional
        ReLU-family models with ``"sliding"``, ``"expgn2"``, ``"expgn3"`` (or ``"auto"``
        choosing one): RK4 substeps per step of the event neurons' re-integration
        (default 8; ``"expgn2"``/``"expgn3"`` take that many per ``1/lambda_max`` of the
        step). Its error is not seen by the step's error estimate (docs/nonsmooth.md),
        so tight references on problems with many events take more (32 for the
        condensed digits references of docs/benchmarks.md, session 24).

    Returns
    -------
    Solution
    """
    _check_method(method)
    if backend is not None and backend != problem.backend.name:
        problem = problem.with_backend(backend)
    rtol = positive_float("rtol", rtol)
    if atol is None or not (float(atol) >= 0 and math.isfinite(float(atol))):
        raise ConfigError(f"atol must be a finite number >= 0, got {atol!r}")
    atol = float(atol)
    if stop_at_loss is not None:
        stop_at_loss = positive_float("stop_at_loss", stop_at_loss)
    if t_end is None:
        if stop_at_loss is None:
            raise ConfigError("t_end is required unless stop_at_loss is given, got t_end=None")
        t_end = math.inf
    t_end = positive_float("t_end", t_end, allow_inf=True)
    max_steps = positive_int("max_steps", max_steps)
    if error_norm not in ("state", "displacement"):
        raise ConfigError(f"error_norm must be 'state' or 'displacement', got {error_norm!r}")
    if event_substeps is not None:
        event_substeps = positive_int("event_substeps", event_substeps)
        if method not in STRUCTURED:
            raise ConfigError(f"event_substeps is for the structured methods "
                              f"{list(STRUCTURED)}, got method {method!r}")
    save_times = _save_times(save_at, t_end)
    snap_times = _snapshot_times(snapshots, t_end)

    fixed = method in FIXED_STEP
    if lr is not None:
        if method != "gd":
            raise ConfigError(f"lr is for method 'gd', got lr={lr!r} with method {method!r}")
        if dt is not None:
            raise ConfigError("give either dt or lr for gradient descent, not both")
        dt = problem.model.scaling.step_from_lr(positive_float("lr", lr))
    if fixed:
        if dt is None:
            raise ConfigError(f"method {method!r} takes fixed steps: give dt (or lr for gd)")
        dt = positive_float("dt", dt)
    elif dt is not None:
        first_step = positive_float("dt", dt)

    t_wall = time.perf_counter()
    if method.startswith("scipy:"):
        stepper = ScipyStepper(method.split(":", 1)[1], _host_rhs(problem),
                               lambda y: problem.loss(y), problem.backend.to_numpy(problem.y0),
                               t_end, rtol, atol, first_step=first_step, status_enum=Status)
        mode = "interpolate"
    elif method in STRUCTURED:
        stepper = build_structured(method, problem, rtol=rtol, atol=atol, first_step=first_step,
                                   error_ref=problem.y0 if error_norm == "displacement" else None,
                                   status_enum=Status, t_end=t_end, stop_at_loss=stop_at_loss,
                                   event_substeps=event_substeps)
        mode = "interpolate" if getattr(stepper, "has_dense", False) else "clip"
    else:
        tab = get_tableau("euler" if method == "gd" else method)
        ref = problem.y0 if error_norm == "displacement" else None
        stepper = RKStepper(tab, problem.rhs_into, problem.backend, problem.y0, rtol=rtol,
                            atol=atol, dt=dt if fixed else first_step, adaptive=not fixed,
                            error_ref=ref, status_enum=Status, loss=problem.loss)
        # save times from the continuous extension where the tableau has one: steps are
        # then the same with or without save_at (docs/benchmarks.md, "Save times")
        mode = "fixed" if fixed else ("interpolate" if stepper.has_dense else "clip")

    rec = _Recorder(problem)
    # the sliding method runs NumPy code between the backend's parallel kernels: a
    # multithreaded BLAS call there leaves OpenBLAS spinning against them (the Numba
    # backend's ``quiet_blas``; docs/benchmarks.md "Threads"). Not for expgn2/3, whose Gram
    # products are BLAS-bound, nor for auto's other choices.
    quiet = getattr(problem.backend, "quiet_blas", None)
    sliding = getattr(stepper, "method_name", method) == "sliding"
    guard = quiet() if (quiet is not None and sliding) else contextlib.nullcontext()
    with np.errstate(over="ignore", invalid="ignore"), guard:  # blow-ups end with a status
        status, message = _integrate(stepper, mode, rec, save_times, snap_times, t_end,
                                     stop_at_loss, max_steps, progress, method)
    stats = Stats(nfev=stepper.nfev, njev=getattr(stepper, "njev", 0), steps=stepper.steps,
                  rejected=stepper.rejected, wall_time=time.perf_counter() - t_wall,
                  method=getattr(stepper, "method_name", method))
    stats.extra.update(getattr(stepper, "extra_stats", {}))
    if hasattr(stepper, "method_reason"):             # what auto chose, and why
        stats.extra["method_reason"] = stepper.method_reason
    if hasattr(stepper, "loss_evals"):
        stats.extra["loss_evals"] = stepper.loss_evals
    options = {"method": method, "rtol": rtol, "atol": atol, "t_end": t_end,
               "stop_at_loss": stop_at_loss if stop_at_loss is not None else float("nan"),
               "max_steps": max_steps, "error_norm": error_norm,
               "dt": dt if dt is not None else float("nan")}
    if method == "gd":
        options["lr"] = problem.model.scaling.lr_from_step(dt)
    return Solution(problem=problem, t=np.asarray(rec.t),
                    observables={k: np.asarray(v) for k, v in rec.values.items()},
                    status=status, message=message, stats=stats,
                    y_final=rec.final_y, snapshots=rec.snapshots, options=options)


def _host_rhs(problem):
    """``problem.rhs_into`` on NumPy arrays (SciPy's), copying to and from the device for
    a GPU backend."""
    be, dtype = problem.backend, problem.dtype
    if be.xp is np:
        return problem.rhs_into

    def rhs(y, out):
        d_out = be.empty(y.shape, dtype)
        loss = problem.rhs_into(be.asarray(y, dtype), d_out)
        out[...] = be.to_numpy(d_out)
        return loss

    return rhs


def _save_times(save_at, t_end):
    if save_at is None:
        return log_grid(t_end)
    if isinstance(save_at, (int, np.integer)) and not isinstance(save_at, bool):
        return log_grid(t_end, per_decade=positive_int("save_at", save_at))
    ts = np.asarray(save_at, dtype=float).ravel()
    if ts.size == 0 or not np.isfinite(ts).all() or (ts < 0).any() or (np.diff(ts) <= 0).any():
        raise ConfigError(f"save_at must be increasing finite times >= 0, got {save_at!r}")
    return ts[ts <= t_end]


def _snapshot_times(snapshots, t_end):
    if snapshots is None:
        return np.array([])
    ts = np.atleast_1d(np.asarray(snapshots, dtype=float))
    if not np.isfinite(ts).all() or (ts < 0).any():
        raise ConfigError(f"snapshots must be finite times >= 0, got {snapshots!r}")
    return np.unique(ts[ts <= t_end])


def _integrate(st, mode, rec, save_times, snap_times, t_end, tol, max_steps, progress, method):
    """The loop shared by every method. Returns (status, message); sets rec.final_y."""
    stops = np.union1d(save_times, snap_times)
    snaps = set(snap_times.tolist())
    saves = set(save_times.tolist())
    i = 0  # index of the next stop time not yet recorded

    def record_due(t_now, y, loss):
        """Record every stop time <= t_now (exactly hit in clip mode)."""
        nonlocal i
        while i < len(stops) and stops[i] <= t_now * (1 + 1e-12):
            ts = stops[i]
            if ts in saves:
                rec.record(ts if mode == "clip" else t_now, loss)
            if ts in snaps:
                rec.snapshot(ts if mode == "clip" else t_now, y)
            i += 1

    rec.update(st.y)
    record_due(0.0, st.y, st.loss)
    bar = _Progress(progress, t_end, st.loss, tol, method)
    status, message = Status.SUCCESS, f"reached t_end = {t_end:g}"
    final_y, final_t, final_loss = st.y, st.t, st.loss
    try:
        if tol is not None and st.loss <= tol:
            return _finish(rec, st, Status.SUCCESS, f"loss {st.loss:.3g} <= {tol:g} at t = 0",
                           st.y, 0.0, st.loss)
        while True:
            if st.steps >= max_steps:
                status, message = Status.MAX_STEPS, (f"reached max_steps = {max_steps} at "
                                                     f"t = {st.t:.6g} (loss {st.loss:.3g})")
                break
            t_stop = stops[i] if (mode == "clip" and i < len(stops)) else t_end
            try:
                st.step(min(t_stop, t_end))
            except StepFailure as exc:
                status, message = exc.kind, str(exc)
                break
            crossed = tol is not None and st.loss <= tol
            if mode == "interpolate":
                # save points from the continuous extension (scipy's dense output, or the
                # tableau's), up to the crossing if there is one: located below, so found
                # here from the loss at the save point itself
                while i < len(stops) and stops[i] <= st.t:
                    y_s, loss_s = st.interpolate(stops[i])
                    if crossed and loss_s <= tol:
                        break
                    if stops[i] in saves:
                        rec.update(y_s)
                        rec.record(stops[i], loss_s)
                    if stops[i] in snaps:
                        rec.snapshot(stops[i], y_s)
                    i += 1
            if not crossed or mode == "fixed":
                rec.update(st.y)   # the running maxima see every accepted state
            final_y, final_t, final_loss = st.y, st.t, st.loss
            if crossed:
                if mode != "fixed":
                    final_t, final_y, final_loss = _locate(st, tol)
                    rec.update(final_y)
                status, message = Status.SUCCESS, (f"loss {final_loss:.3g} <= {tol:g} at "
                                                   f"t = {final_t:.6g}")
                if mode != "interpolate":
                    record_due(final_t if mode == "fixed" else final_t * (1 - 1e-12),
                               final_y, final_loss)
                break
            if mode != "interpolate":
                record_due(st.t, st.y, st.loss)
            bar.update(st.t, st.loss, st.steps)
            if st.t >= t_end * (1 - 1e-12):
                break
    finally:
        bar.close()
    return _finish(rec, st, status, message, final_y, final_t, final_loss)


def _locate(st, tol):
    """Time, state and loss where the loss crosses ``tol`` in the last step."""
    lt = math.log(tol)

    def g(t):
        y, loss = st.state_at(t)
        val = math.log(loss) - lt if loss > 0 else -math.inf
        return (val if math.isfinite(val) or val < 0 else 1e300), (y, loss)

    g0 = math.log(st.loss_old) - lt
    g1 = math.log(st.loss) - lt if st.loss > 0 else -1e300
    t, _, payload = secant_crossing(g, st.t_old, st.t, g0, g1, xtol=1e-6, maxiter=10)
    if payload is None:
        return st.t, st.y, st.loss
    return t, payload[0], payload[1]


def _finish(rec, st, status, message, y, t, loss):
    # the final state is the last time entry (unless it coincides with a save time)
    rds = rec.problem.relative_changes(y)
    if not rec.t or t > rec.t[-1]:
        rec.record(t, loss, rds)
    rec.final_y = np.array(rec.problem.backend.to_numpy(y), dtype=np.float64)
    rec.final = {"t": float(t), "loss": float(loss), **rds}
    return status, message
