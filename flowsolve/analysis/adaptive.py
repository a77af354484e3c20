"""Adaptive phase boundary: bisection in ``gamma`` per ``gamma'`` instead of a dense grid.

The driver only chooses points; an *evaluator* runs them and returns their scaling
exponents. :func:`solve_evaluator` runs each point with :func:`flowsolve.solve` over the
widths and seeds (serially, in this process), :func:`sweep_evaluator` through the sweep
engine (:func:`flowsolve.run_sweep`, parallel, resumable); both hand the results to
:func:`~flowsolve.analysis.scaling_exponents`, so the analysis stays a reader of Datasets.

Cost: bisection from a bracket ``[lo, hi]`` to a bracket of width ``tol`` takes
``2 + ceil(log2((hi - lo) / tol))`` evaluations per ``gamma'``, against
``(hi - lo) / tol + 1`` for a uniform grid of the same resolution.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError

__all__ = ["bisect_boundary", "solve_evaluator", "sweep_evaluator"]


def _per_gp(value, gps, name):
    arr = np.broadcast_to(np.asarray(value, dtype=float), (len(gps),)).copy()
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return arr


def bisect_boundary(evaluate, gamma_primes, lo=0.6, hi=1.6, *, tol: float = 0.05,
                    max_rounds: int = 12):
    """Locate ``gamma*(gamma')`` where the slope changes sign, by bisection.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(points) -> slopes``: ``points`` a list of ``(gamma, gamma')`` pairs, the
        return value an array of their slopes ``S`` (same order). One call per round, so an
        evaluator can run a round's points in parallel.
    gamma_primes : array_like, shape (G,)
    lo, hi : float or array_like (G,)
        Initial brackets in ``gamma`` (the slope must change sign between them).
    tol : float
        Stop when a bracket is at most ``tol`` wide.
    max_rounds : int
        Bisection rounds at most (after the bracket ends).

    Returns
    -------
    xarray.Dataset
        Over ``gamma_prime``: ``gamma_star`` (linear interpolation of S between the final
        bracket ends), ``gamma_star_err`` (half the final bracket), ``bracket_low``,
        ``bracket_high``, ``n_evaluations``, ``bracketed`` (False where S has one sign at
        both initial ends; gamma_star is NaN there); attrs ``evaluations`` (total),
        ``uniform_equivalent`` (points of a uniform grid with spacing ``tol``) and
        ``wall_time``; and ``history`` in ``.attrs`` as flat lists (gamma, gamma', S).
    """
    import xarray as xr

    gps = np.atleast_1d(np.asarray(gamma_primes, dtype=float))
    if gps.ndim != 1 or gps.size == 0 or not np.isfinite(gps).all():
        raise ConfigError(f"gamma_primes must be a non-empty list of numbers, got {gamma_primes!r}")
    a, b = _per_gp(lo, gps, "lo"), _per_gp(hi, gps, "hi")
    if not (b > a).all():
        raise ConfigError(f"need lo < hi for every gamma', got lo={lo!r}, hi={hi!r}")
    tol = float(tol)
    if not tol > 0:
        raise ConfigError(f"tol must be positive, got {tol!r}")
    hist_g, hist_gp, hist_s = [], [], []
    t0 = time.perf_counter()

    def run(points):
        s = np.asarray(evaluate([(float(g), float(p)) for g, p in points]), dtype=float)
        if s.shape != (len(points),):
            raise ConfigError(f"evaluate returned shape {s.shape} for {len(points)} points")
        for (g, p), v in zip(points, s):
            hist_g.append(float(g))
            hist_gp.append(float(p))
            hist_s.append(float(v))
        return s

    G = len(gps)
    ends = run([(a[i], gps[i]) for i in range(G)] + [(b[i], gps[i]) for i in range(G)])
    sa, sb = ends[:G].copy(), ends[G:].copy()
    n_eval = np.full(G, 2)
    bracketed = np.isfinite(sa) & np.isfinite(sb) & (sa * sb <= 0)
    for _ in range(max_rounds):
        todo = np.nonzero(bracketed & (b - a > tol) & (sa != 0) & (sb != 0))[0]
        if not todo.size:
            break
        mids = 0.5 * (a[todo] + b[todo])
        sm = run([(mids[j], gps[i]) for j, i in enumerate(todo)])
        for j, i in enumerate(todo):
            n_eval[i] += 1
            if not np.isfinite(sm[j]):
                bracketed[i] = False
            elif sm[j] * sa[i] > 0:
                a[i], sa[i] = mids[j], sm[j]
            else:
                b[i], sb[i] = mids[j], sm[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        star = np.where(sb != sa, a - sa * (b - a) / (sb - sa), 0.5 * (a + b))
    star = np.where(bracketed, star, np.nan)
    lo0, hi0 = _per_gp(lo, gps, "lo"), _per_gp(hi, gps, "hi")
    uniform = int(np.sum(np.floor((hi0 - lo0) / tol + 1e-9) + 1))
    out = xr.Dataset(
        {"gamma_star": ("gamma_prime", star, {"long_name": "critical gamma by bisection"}),
         "gamma_star_err": ("gamma_prime", np.where(bracketed, 0.5 * (b - a), np.nan),
                            {"long_name": "half the final bracket"}),
         "bracket_low": ("gamma_prime", a), "bracket_high": ("gamma_prime", b),
         "n_evaluations": ("gamma_prime", n_eval), "bracketed": ("gamma_prime", bracketed)},
        coords={"gamma_prime": gps})
    out.attrs.update({"evaluations": int(n_eval.sum()), "uniform_equivalent": uniform,
                      "tol": tol, "wall_time": time.perf_counter() - t0,
                      "history_gamma": hist_g, "history_gamma_prime": hist_gp,
                      "history_slope": hist_s})
    return out


def solve_evaluator(widths, seeds=(0,), *, quantity: str = "rd_w_final", data=None,
                    activation: str = "relu", asi: bool = True, solver=None, n_boot: int = 0):
    """An evaluator running each point with :func:`flowsolve.solve` in this process.

    Builds, per point, a small Dataset of ``quantity`` over (width, seed) and fits it with
    :func:`~flowsolve.analysis.scaling_exponents` (the same code path as for sweeps).
    ``solver``: keyword arguments of :func:`flowsolve.solve` (default dopri5, rtol 1e-5,
    stop at loss 5e-7). The evaluator's ``datasets`` attribute keeps every point's Dataset.
    """
    import xarray as xr

    import flowsolve as fs

    from .exponents import scaling_exponents

    data = fs.datasets.four_points() if data is None else data
    solver = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-8, "stop_at_loss": 5e-7,
              "t_end": 1e14, **(solver or {})}
    widths, seeds = [int(m) for m in widths], [int(s) for s in seeds]
    if len(widths) < 2:
        raise ConfigError(f"need at least two widths to fit a slope, got {widths!r}")
    kept = []

    def evaluate(points):
        slopes = []
        for g, gp in points:
            vals = np.full((len(widths), len(seeds)), np.nan)
            for i, m in enumerate(widths):
                for j, sd in enumerate(seeds):
                    sc = fs.Scaling.from_gammas(gamma=g, gamma_prime=gp, width=m)
                    prob = fs.Problem(fs.TwoLayer(m, sc, activation, asi=asi), data, seed=sd)
                    sol = fs.solve(prob, progress=False, **solver)
                    if sol.status.ok:
                        vals[i, j] = sol.final[quantity[:-len("_final")]]
            ds = xr.Dataset({quantity: (("width", "seed"), vals)},
                            coords={"width": widths, "seed": seeds})
            kept.append(ds.assign_coords(gamma=g, gamma_prime=gp))
            ex = scaling_exponents(ds, quantity, n_boot=n_boot, require_success=False)
            slopes.append(float(ex["slope"].sel(quantity=quantity)))
        return slopes

    evaluate.datasets = kept
    return evaluate


def sweep_evaluator(spec, out_dir, *, quantity: str = "rd_w_final", n_boot: int = 0,
                    **run_kwargs):
    """An evaluator running each round's points through the sweep engine in parallel.

    Each round becomes one sweep under ``out_dir/round-<k>``: its grid is the product of
    the round's distinct ``gamma`` and ``gamma'`` values, of which only the requested
    pairs run (``run_sweep(..., runs=...)``); the round's Dataset
    (:func:`flowsolve.open_sweep`) is fitted with
    :func:`~flowsolve.analysis.scaling_exponents`. Rerunning the same bisection reuses
    the finished run files (the rounds are deterministic).

    Parameters
    ----------
    spec : SweepSpec or dict
        The template (model, data, widths, seeds, solver, ...); its grid is replaced.
    out_dir : path
        Parent directory of the rounds' sweep directories.
    **run_kwargs
        Passed to :func:`flowsolve.run_sweep` (``scheduler``, ``workers``, ``progress``).
        Pass a ``distributed.Client`` as ``scheduler`` to keep one cluster for all rounds.
    """
    import os

    import flowsolve as fs

    from .exponents import scaling_exponents

    base = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    rounds = []

    def evaluate(points):
        gs = sorted({g for g, _ in points})
        gps = sorted({p for _, p in points})
        sp = fs.SweepSpec.from_dict(dict(base, grid={"gamma": gs, "gamma_prime": gps}))
        want = set(points)
        idx = [r.index for r in sp.runs()
               if (r.coords["gamma"], r.coords["gamma_prime"]) in want]
        sub = os.path.join(os.fspath(out_dir), f"round-{len(rounds)}")
        report = fs.run_sweep(sp, sub, runs=idx, **run_kwargs)
        rounds.append(report)
        ex = scaling_exponents(fs.open_sweep(sub), quantity, n_boot=n_boot)
        ex = ex.sel(quantity=quantity)
        return [float(ex["slope"].sel(gamma=g, gamma_prime=p)) for g, p in points]

    evaluate.reports = rounds
    return evaluate
