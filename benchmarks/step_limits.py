"""What limits the exponential steps on digits, phase by phase of the flow.

Runs ``expgn2`` (or ``expgn3``) on digits (n = 256, m = ``--width``, ASI ReLU, gamma' = 0,
seed 0, numba backend) from t = 0 to ``--t-end`` with the stepper's ``trace`` on, and
prints per time bin: accepted steps and rejections, the median step ``h`` and
``h lambda_max`` (``lambda_max`` the largest eigenvalue of ``K/n``), the event neurons per
step, the median scaled error of the base step alone and with the event re-integration's
estimate (the controller's), the sliding pairs, the milliseconds per step, and the
time units per second against gradient descent at ``--gd-dt`` (its ms per step measured
in the same process); then, at the run's first and last state, the largest rate of the
residual-weighted curvature that the Gauss-Newton split leaves out (for ReLU it couples
each neuron's ``a_k`` and ``w_k``: ``mu_k = c_f sqrt(c_a c_w s) |sum_i sigma'_ik e_i
x~_i| / n``) beside ``lambda_max``; and at the accepted steps ``--kink-steps``, the
nonlinear remainder of the residual over a trial step of the current size
(``e(y1) - e(y) - J (y1 - y)``, per neuron), summed over the neurons whose activation
pattern changes in the step and over all others (ReLU). ``--start FILE --at T`` starts
instead from the snapshot nearest ``T`` of a ``benchmarks/digits_tstar.py run`` file
(``snap_t``, ``snap_y``); the times printed are then from that start.

Usage (one thread, as in docs/benchmarks.md)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/step_limits.py --t-end 600 --tol 1e-7
    ... --start out/tstar/gd_0.125.npz --at 10000 --t-end 1000 --bins 100 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import flowsolve as fs
from digits_tstar import problem as digits_problem
from flowsolve.solvers.auto import build_structured


def curvature_rate(lin):
    """``max_k mu_k`` at the linearisation ``lin`` (ReLU family: ``sigma'`` from
    ``a sigma'`` where ``a != 0``; sliding pairs count as ``sigma' = 0``, as in the
    tangent linearisation)."""
    c = lin.c
    a = c.xp.asarray(lin.a)[:, None]
    g = np.divide(lin.ag, a, out=np.zeros_like(lin.ag), where=a != 0)
    v = (g * lin.e[None, :]) @ c.Xt / c.n
    return float(abs(c.cf) * np.sqrt(abs(c.ca * c.cw * c.s)) * np.linalg.norm(v, axis=1).max())


def kink_split(st, h):
    """``(crossing neurons, |remainder| from them, |remainder| from the others)`` of a
    trial step ``h`` from the stepper's state (ReLU; the trial is discarded)."""
    lin = st.cur[0]
    c = lin.c
    M, D = c.M, c.D
    y = st.y
    y1 = np.empty_like(y)
    counts = st.nfev, st.njev_f
    st.attempt(y, st.cur, h, y1)
    st.nfev, st.njev_f = counts                       # not the run's work
    a0, a1 = y[:M, None], y1[:M, None]
    pre0 = c.s * (y[M:].reshape(M, D) @ c.XtT)
    pre1 = c.s * (y1[M:].reshape(M, D) @ c.XtT)
    on0 = pre0 > 0
    predicted = a1 * np.maximum(pre0, 0) + a0 * on0 * (pre1 - pre0)
    rem = c.cf * (a1 * np.maximum(pre1, 0) - predicted)          # (M, n)
    cross = (on0 != (pre1 > 0)).any(axis=1)
    return (int(cross.sum()), float(np.linalg.norm(rem[cross].sum(axis=0))),
            float(np.linalg.norm(rem[~cross].sum(axis=0))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="expgn2", choices=["expgn2", "expgn3"])
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--tol", type=float, default=1e-7, help="rtol = atol")
    ap.add_argument("--t-end", type=float, default=600.0)
    ap.add_argument("--bins", type=float, nargs="+", default=[1, 3, 10, 30, 100, 300],
                    help="bin edges below --t-end (0 and --t-end are added)")
    ap.add_argument("--gd-dt", type=float, default=1 / 32)
    ap.add_argument("--kink-steps", type=int, nargs="*", default=[5, 40, 120, 300, 600])
    ap.add_argument("--start", help="a digits_tstar.py run file with snapshots")
    ap.add_argument("--at", type=float, default=0.0, help="the snapshot time to start from")
    args = ap.parse_args(argv)

    prob = digits_problem(args.width, args.gamma)
    t_start = 0.0
    if args.start:
        snaps = np.load(args.start)
        i = int(np.argmin(np.abs(snaps["snap_t"] - args.at)))
        t_start = float(snaps["snap_t"][i])
        prob.y0_host = snaps["snap_y"][i].copy()
        prob.y0 = prob.backend.asarray(prob.y0_host, prob.dtype)
    fs.solve(prob, args.method, t_end=1.0, rtol=1e-3, atol=1e-3)          # compile
    gd = fs.solve(prob, "gd", t_end=200 * args.gd_dt, dt=args.gd_dt)
    gd_ms = 1e3 * gd.stats.wall_time / gd.stats.steps

    st = build_structured(args.method, prob, rtol=args.tol, atol=args.tol, t_end=args.t_end)
    st.trace = []
    mu_start, lam_start = curvature_rate(st.cur[0]), float(st.cur[1][-1])
    walls = []
    t0 = time.perf_counter()
    kinks = []
    while st.t < args.t_end:
        if st.steps in args.kink_steps:
            t_check = time.perf_counter()
            kinks.append((st.steps, st.t, st.h, *kink_split(st, st.h)))
            t0 += time.perf_counter() - t_check                  # not in the step times
        st.step(args.t_end)
        walls.append(time.perf_counter() - t0)
    tr = np.array(st.trace, dtype=float)
    t, h, rej, nev, e_base, e_full, lmax, S = tr.T
    step_wall = np.diff(np.r_[0.0, walls])

    print(f"{args.method} rtol = atol = {args.tol:g}, digits m = {args.width}, "
          f"gamma = {args.gamma}: {st.steps} steps, {st.rejected} rejected, "
          f"{st.nfev + st.njev} RHS-eq, {walls[-1]:.1f} s from t = {t_start:g} over "
          f"{args.t_end:g}; "
          f"GD at dt = {args.gd_dt:g}: {gd_ms:.2f} ms per step\n")
    print("| t | steps | rejected | median h | h lambda_max | event neurons / step | "
          "error base / with events (median) | sliding pairs | ms / step | "
          "time units / s, method / GD |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    edges = [0.0] + [b for b in args.bins if b < args.t_end] + [args.t_end]
    for a, b in zip(edges[:-1], edges[1:]):
        m = (t > a) & (t <= b)
        if not m.any():
            continue
        span = t[m].max() - (t[~m & (t <= a)].max() if (~m & (t <= a)).any() else 0.0)
        rate = span / step_wall[m].sum()
        print(f"| {a:g}-{b:g} | {m.sum()} | {int(rej[m].sum())} | {np.median(h[m]):.3g} | "
              f"{np.median(h[m] * lmax[m]):.2g} | {nev[m].mean():.1f} | "
              f"{np.median(e_base[m]):.2f} / {np.median(e_full[m]):.2f} | "
              f"{S[m][-1]:.0f} | {1e3 * step_wall[m].mean():.0f} | "
              f"{rate:.2f} / {1e3 / (gd_ms / args.gd_dt):.2f} |")
    print(f"\nmax mu_k (a-w curvature rate) / lambda_max: {mu_start:.3g} / {lam_start:.3g} at "
          f"the start, {curvature_rate(st.cur[0]):.3g} / {float(st.cur[1][-1]):.3g} at the end")
    if kinks:
        print("\n| step | t | h | crossing neurons | remainder of e from them | from the others |")
        print("|---|---|---|---|---|---|")
        for k, t_k, h_k, n_cross, r_cross, r_other in kinks:
            print(f"| {k} | {t_k:.3g} | {h_k:.3g} | {n_cross} | {r_cross:.2g} | {r_other:.2g} |")


if __name__ == "__main__":
    main()
