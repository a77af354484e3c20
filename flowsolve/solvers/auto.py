"""Structure-aware methods and ``method="auto"``.

``build_structured`` constructs the steppers of the methods listed in :data:`STRUCTURED`
for :func:`flowsolve.solvers.driver.solve`:

- ``"expgn2"``, ``"expgn3"``: exponential (ETD2RK; ETDRK3 with an embedded
  second-order solution) steps with the Gauss-Newton linearisation
  (:mod:`.exponential`); need ``model.make_jacobian``.
- ``"sliding"``: explicit Runge-Kutta (Bogacki-Shampine 3(2)) on the ReLU flow with
  sliding neurons held on their switching surfaces (:mod:`.sliding`); needs
  ``model.make_switching`` (ReLU family).
- ``"auto"``: picks one of them (or ``"dopri5"``) from the problem and the horizon (see
  :func:`choose`), and records the choice as ``stepper.method_name`` (``Stats.method``,
  attribute ``stats_method``) and the reason as ``stepper.method_reason``
  (``Stats.extra["method_reason"]``, attribute ``stats_method_reason``).
"""

from __future__ import annotations

import math

import numpy as np

from ..analysis.regimes import LINEAR, theory_regime
from ..errors import ConfigError

__all__ = ["STRUCTURED", "STIFF_HORIZON", "RELU_STIFF_HORIZON", "build_structured", "choose",
           "kernel_horizon", "kernel_modes", "linearised_time_to_loss"]

STRUCTURED = ("auto", "expgn2", "expgn3", "sliding")

#: smooth activations: ``auto`` runs ``expgn3`` when ``lambda_max(K/n) t_end`` at
#: initialisation reaches this, else ``dopri5`` (docs/benchmarks.md, session 15)
STIFF_HORIZON = 10.0

#: ReLU family in the linear regime: ``auto`` runs ``expgn2`` when ``lambda_max(K/n)``
#: times the horizon (``t_end``, or the time the linearised flow takes to the loss asked
#: for, if sooner) reaches this, else ``sliding`` (docs/benchmarks.md, session 23: on 32
#: digits, m = 100, level with ``sliding`` at 1e3, ahead at 3e3, 2x at 1e4)
RELU_STIFF_HORIZON = 3e3


def kernel_modes(problem):
    """Eigenvalues (ascending, >= 0) of ``K/n`` at ``y0`` (``K = J C J^T``, the
    Gauss-Newton Gram matrix, n x n) and the residual's coefficients in its eigenvectors:
    ``(lam (n,), e_hat (n,))``. One Gram matrix and one ``n x n`` eigendecomposition."""
    be = problem.backend
    lin = problem.model.make_jacobian(be.xp, problem.data, problem.dtype)(problem.y0)
    K = np.asarray(be.to_numpy(lin.gram()), dtype=np.float64) / problem.data.n
    lam, V = np.linalg.eigh(0.5 * (K + K.T))
    e = np.asarray(be.to_numpy(lin.e), dtype=np.float64)
    return np.maximum(lam, 0.0), V.T @ e


def kernel_horizon(problem, t_end) -> float:
    """``lambda_max(K/n) t_end`` at ``y0``: how many of the kernel's fastest time scales
    the horizon spans (one Gram matrix's work)."""
    return float(kernel_modes(problem)[0][-1]) * t_end


def linearised_time_to_loss(lam, e_hat, n, loss) -> float:
    """The time at which the linearised flow ``e(t) = V exp(-t Lambda) V^T e(0)`` (the
    kernel frozen at its initial value, the NTK limit) brings the loss
    ``|e|^2 / (2n)`` down to ``loss``: ``inf`` if it never does (the null modes' share
    is above it), 0 if it starts there. Bisection to relative 1e-6.

    Parameters
    ----------
    lam, e_hat : arrays (n,)
        :func:`kernel_modes`.
    n : int
        Number of data points.
    loss : float
    """
    def at(t):
        return float(np.sum((np.exp(-lam * t) * e_hat) ** 2)) / (2.0 * n)

    if at(0.0) <= loss:
        return 0.0
    if float(np.sum(e_hat[lam <= 0.0] ** 2)) / (2.0 * n) > loss:   # the t -> inf limit
        return math.inf
    hi = 1.0 / max(float(lam[-1]), 1e-300)
    while at(hi) > loss:
        hi *= 2.0
    lo = 0.0
    while hi - lo > 1e-6 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if at(mid) > loss else (lo, mid)
    return hi


def choose(problem, t_end: float | None = None,
           stop_at_loss: float | None = None) -> tuple[str, str]:
    """The method ``"auto"`` runs on ``problem`` up to ``t_end`` (None or inf: open-ended)
    or until the loss reaches ``stop_at_loss``, and why.

    Rules (docs/benchmarks.md, "Beating gradient descent", has the measurements):

    - models without Gauss-Newton structure: ``dopri5``;
    - ReLU-family two-layer models in the linear regime (:func:`theory_regime`) over a
      long horizon: ``"expgn2"``, when ``lambda_max(K/n)`` at ``y0`` times the horizon
      (``t_end``, or the time the linearised flow takes to ``stop_at_loss``
      (:func:`linearised_time_to_loss`) if that is sooner) reaches
      :data:`RELU_STIFF_HORIZON`. Digits (n = 256, m = 1000, gamma = 0.5) to T*
      (horizon ~1e5): 1.4x less wall time than ``sliding``, 9.8x fewer
      RHS-equivalents than GD at dt = 1/32, whose error is 65x larger (session 23);
      the exponential steps linearise the sliding-mode flow, which lets them take
      steps of several ``1/lambda_max`` late in the flow;
    - other ReLU-family cases: ``"sliding"``. Their kinks, not stiffness, limit the step
      on the measured problems (the four points, horizon ~100 in every regime: sliding
      in less wall time than the exponential steps at gamma = 0.5 and 1 (m = 1e3) and
      by 10x at gamma = 2; digits at t = 20: level). Against
      gradient descent it wins on the four points at m = 1e3-1e5 in every regime
      measured (m = 1e5, gamma = 0.5 at error 1e-4 by the least: 2.2x in wall time,
      session 24); on digits (m = 1e3) ~17x in wall time in the linear regime at
      t = 20 and ~22x in the critical regime at t = 300, both at 1e-4 (session 24;
      at m = 1e4 ~4x, and >= 20x at t = 1e4, session 26; at m = 1e5 ~2x, session 27;
      critical at m = 1e5: a tie at t = 300, where the flow barely moves, ~12x at
      t = 1e4, session 28); in the condensed regime on digits
      (gamma = 1.75, 2) ~30x ahead in wall time at relative error 1e-4 (session 24),
      on the four points at m = 1e5 13-26x at 1e-4 at fixed horizons (session 26),
      on digits at m = 1e4 13-37x in RHS-equivalents, 5-34x in wall time (session 27),
      at m = 1e5 ~17x (gamma = 1.75, session 29) and ~68x (gamma = 2, session 28) in
      wall time;
    - smooth activations: ``"expgn3"`` where the horizon spans many of the kernel's time
      scales (``lambda_max(K/n) t_end >=`` :data:`STIFF_HORIZON` at initialisation, or
      no finite ``t_end``): stiffness from the kernel's spectrum is what limits explicit
      steps there, and the exponential step takes it exactly. It beat ``"expgn2"`` at
      equal accuracy on every tanh problem measured (session 14). Below that,
      ``"dopri5"``: nothing is stiff over the horizon, and plain dopri5 won every such
      case measured (lambda_max t_end = 0.34 and 3: by up to 7x); expgn3 won at 68 and
      above, except on digits at tight tolerances (t = 20: dopri5 2-3x). The kernel
      grows in the condensed regime, so this is a rule for the horizon asked for.
    """
    model = problem.model
    if not hasattr(model, "make_jacobian"):
        return "dopri5", "model has no Gauss-Newton structure"
    act = getattr(getattr(model, "activation", None), "name", "")
    if act in ("relu", "leaky_relu") and hasattr(model, "make_switching"):
        sc = model.scaling
        where = f"gamma={sc.gamma + 0.0:.3g}, gamma'={sc.gamma_prime + 0.0:.3g}"  # no -0
        if int(theory_regime(sc.gamma, sc.gamma_prime)) == LINEAR:
            lam, e_hat = kernel_modes(problem)
            horizon = t_end if t_end is not None else math.inf
            if stop_at_loss is not None:
                horizon = min(horizon, linearised_time_to_loss(lam, e_hat, problem.data.n,
                                                               stop_at_loss))
            stiff = float(lam[-1]) * horizon if math.isfinite(horizon) else math.inf
            if stiff >= RELU_STIFF_HORIZON:
                return "expgn2", (f"ReLU, linear regime ({where}), stiff over the horizon "
                                  f"(lambda_max(K/n) x horizon = {stiff:.3g} >= "
                                  f"{RELU_STIFF_HORIZON:g}): Gauss-Newton exponential steps")
            return "sliding", (f"ReLU kinks ({where}; linear regime, lambda_max(K/n) x "
                               f"horizon = {stiff:.3g} < {RELU_STIFF_HORIZON:g}): "
                               "switching-aware steps")
        return "sliding", f"ReLU kinks ({where}): switching-aware steps"
    if t_end is not None and math.isfinite(t_end):
        stiff = kernel_horizon(problem, t_end)
        if stiff < STIFF_HORIZON:
            return "dopri5", (f"smooth activation, kernel not stiff over the horizon "
                              f"(lambda_max(K/n) t_end = {stiff:.3g} < {STIFF_HORIZON:g})")
        return "expgn3", (f"smooth activation, stiff kernel (lambda_max(K/n) t_end = "
                          f"{stiff:.3g}): Gauss-Newton exponential steps")
    return "expgn3", "smooth activation: Gauss-Newton exponential steps"


def _switching(problem):
    """The model's switching structure, with what the backend has for it: compiled
    kernels (``switching_kernels``: the Numba backend), or a host structure for the
    per-neuron work and a device RHS of the plain flow (``switching_host`` and
    ``switching_rhs``: the cupy backend)."""
    be = problem.backend
    args = (problem.model, problem.data, problem.dtype)
    pieces = {}
    for key, hook in (("kernels", "switching_kernels"), ("host", "switching_host"),
                      ("plain_rhs", "switching_rhs")):
        make = getattr(be, hook, None)
        pieces[key] = make(*args) if make is not None else None
    return problem.model.make_switching(be.xp, problem.data, problem.dtype, **pieces)


def build_structured(method, problem, *, rtol, atol, first_step=None, error_ref=None,
                     status_enum=None, t_end=None, stop_at_loss=None, event_substeps=None):
    """The stepper for one of :data:`STRUCTURED` (``method_name`` says which ran;
    ``t_end`` and ``stop_at_loss`` inform ``auto``'s choice; ``event_substeps``: RK4
    substeps of the event re-integration, default 8)."""
    if method not in STRUCTURED:
        raise ConfigError(f"unknown structured method {method!r}; expected one of "
                          f"{list(STRUCTURED)}")
    name, why = (choose(problem, t_end, stop_at_loss) if method == "auto"
                 else (method, "requested"))
    be = problem.backend
    model, data = problem.model, problem.data
    sub_kw = {} if event_substeps is None else {"substeps": int(event_substeps)}
    if name in ("expgn2", "expgn3"):
        if not hasattr(model, "make_jacobian"):
            raise ConfigError(f"method {name!r} needs a model with make_jacobian, got "
                              f"{type(model).__name__}")
        from .exponential import ExpGNStepper
        sw = None
        if getattr(getattr(model, "activation", None), "name", "") in ("relu", "leaky_relu"):
            sw = _switching(problem)
        jac_kw = {"kernels": sw.kernels} if sw is not None and sw.kernels is not None else {}
        st = ExpGNStepper(model.make_jacobian(be.xp, data, problem.dtype, **jac_kw),
                          problem.rhs_into,
                          be, problem.y0, rtol=rtol, atol=atol, dt=first_step,
                          error_ref=error_ref, status_enum=status_enum, switching=sw,
                          tableau=name, **sub_kw)
    elif name == "sliding":
        if not hasattr(model, "make_switching"):
            raise ConfigError(f"method 'sliding' needs a model with make_switching, got "
                              f"{type(model).__name__}")
        try:
            sw = _switching(problem)
        except ValueError as exc:
            raise ConfigError(f"method 'sliding': {exc}") from None
        from .sliding import SlidingStepper
        st = SlidingStepper(sw, be, problem.y0, rtol=rtol, atol=atol, dt=first_step,
                            error_ref=error_ref, status_enum=status_enum, **sub_kw)
    else:
        from .rk import RKStepper
        from .tableaus import get_tableau
        st = RKStepper(get_tableau(name), problem.rhs_into, be, problem.y0, rtol=rtol,
                       atol=atol, dt=first_step, error_ref=error_ref, status_enum=status_enum,
                       loss=problem.loss)
    st.method_name = name
    st.method_reason = why
    return st
