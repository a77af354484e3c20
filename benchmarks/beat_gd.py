"""Work-precision of the structure-aware integrators against explicit RK and gradient descent.

For each regime (gamma' = 0; gamma in --gammas), width and data set: a tight reference
run (``--ref-method`` at rtol = atol = --ref-tol) gives the time T* at which the loss
falls below 1e-4, a second one landing on T* the state there (its own error, against a
run at a tenth of the tolerance, is printed); every method then integrates to T* at a ladder of
tolerances, and its parameter error is ``max_j |y_j(T*) - y_ref_j(T*)|`` over the
normalised state. For each target error the table reports the work of the first
tolerance that reaches it: RHS-equivalents (``nfev + njev``: Jacobian products, Gram
matrices and event re-integrations counted by their cost in right-hand sides) and wall
time. The tolerances go down in half decades (1e-3, 3.2e-4, ..., 3.2e-10).

Gradient descent runs at ``dt = T*/N`` (N steps land exactly on T*), N doubling from
``T* lambda_max`` (``dt ~ 1/lambda_max`` of the Gauss-Newton matrix at initialisation)
up to the step budget; its error is first order in the learning rate, so the steps it needs
for a target error are extrapolated from its finest run with ``err = c dt`` when the
target is out of reach (favourable to GD where its measured rate is worse), marked ``~``.
Where GD's last halving did not cut its error by 1.5x it is not yet in that regime
(e.g. short of a graze: its error stays, then drops), and only its finest run is given,
as a lower bound, marked ``>``.

Usage::

    python benchmarks/beat_gd.py --data four_points --widths 1000 10000 \
        --gammas 0.5 1 1.75 2 --json out/beat_gd.json

``--t-end T`` compares the states at ``t = T`` instead of at T* (where T* is out of
reach: the condensed regime at m = 1e5 spends hours in its plateau).

``--ref-cache DIR`` keeps each configuration's reference in ``DIR`` (computed once;
``--ref-only`` stops after the references), so that long references and the ladders can
run in separate processes, or on separate machines.

The machine is shared: timings are side by side within one process, not absolute.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

import flowsolve as fs

TARGETS = (1e-4, 1e-6)


def make_problem(data_name, m, gamma, gamma_prime=0.0, seed=0, backend="numpy"):
    data = fs.datasets.four_points() if data_name == "four_points" else fs.datasets.digits(n=256)
    sc = fs.Scaling.from_gammas(gamma, gamma_prime, m)
    return fs.Problem(fs.TwoLayer(m, sc, asi=True), data, seed=seed, backend=backend)


def run(prob, method, T, **kw):
    t0 = time.perf_counter()
    sol = fs.solve(prob, method, t_end=T, save_at=[0.0], progress=False, **kw)
    wall = time.perf_counter() - t0
    return sol, wall


def gd_points(prob, T, y_ref, max_steps, time_budget):
    """(dt, steps, error, wall) of GD runs landing on T, halving dt from ~1/lambda_max."""
    lin = prob.model.make_jacobian(np, prob.data, np.float64)(prob.y0_host)
    lam = np.linalg.eigvalsh(lin.gram() / prob.data.n)[-1]
    N = max(1, math.ceil(T * lam))
    pts = []
    spent = 0.0
    while N <= max_steps:
        sol, wall = run(prob, "euler", T, dt=T / N, max_steps=N + 2)
        spent += wall
        err = float(np.abs(sol.y_final - y_ref).max()) if sol.status.ok else math.inf
        pts.append((T / N, N, err, wall))
        if spent > time_budget or err < 1e-7:
            break
        N *= 2
    return pts


def gd_cost(pts, target):
    """Steps and wall time GD needs for ``target``: measured (mark ''); extrapolated
    at first order from its finest run ('~') where its last halving of the step cut
    the error by >= 1.5x (GD in its first-order regime); else only the lower bound of
    its finest run ('>'): GD short of a graze or a plateau can stay put over several
    halvings and then drop (docs/benchmarks.md, session 25), so no rate applies."""
    for _, N, err, wall in pts:
        if err <= target:
            return N, wall, ""
    good = [(dt, N, err, wall) for dt, N, err, wall in pts if math.isfinite(err) and err > 0]
    if not good:
        return math.nan, math.nan, "?"
    _, n2, e2, w2 = good[-1]
    if len(good) < 2 or good[-2][2] < 1.5 * e2:
        return n2, w2, ">"
    N = n2 * e2 / target
    return N, w2 * N / n2, "~"


def ladder(prob, method, T, y_ref, tols, max_steps, time_budget, **kw):
    pts = []
    spent = 0.0
    for tol in tols:
        sol, wall = run(prob, method, T, rtol=tol, atol=tol, max_steps=max_steps, **kw)
        spent += wall
        if not sol.status.ok:
            pts.append((tol, math.inf, sol.stats, wall))
            break
        err = float(np.abs(sol.y_final - y_ref).max())
        pts.append((tol, err, sol.stats, wall))
        if spent > time_budget or err < 0.1 * min(TARGETS):
            break
    return pts


def first_reaching(pts, target):
    for tol, err, st, wall in pts:
        if err <= target:
            return st.nfev + st.njev, wall, tol
    return math.nan, math.nan, math.nan


def reference(prob, data_name, m, gamma, args):
    """T*, the state there and its error (see the module docstring), from
    ``--ref-cache`` if it holds this configuration's, else computed (and saved there)."""
    path = None
    if args.ref_cache:
        end = f"t{args.t_end:g}" if args.t_end is not None else f"loss{args.loss:g}"
        path = os.path.join(args.ref_cache, f"{data_name}_m{m}_g{gamma:g}_{args.ref_method}_"
                                            f"{args.ref_tol:g}_{end}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                print(f"  reference from {path}", flush=True)
                return {k: z[k] if k == "y_ref" else z[k].item() for k in z.files}
    t0 = time.perf_counter()
    if args.t_end is None:
        ref = fs.solve(prob, args.ref_method, rtol=args.ref_tol, atol=args.ref_tol,
                       stop_at_loss=args.loss, save_at=[0.0], progress=args.progress,
                       max_steps=args.ref_max_steps)
        T = ref.t_final
        print(f"  reference: T* = {T:.6g}, {ref.stats.nfev + ref.stats.njev} "
              f"RHS-equivalents, {time.perf_counter() - t0:.1f} s", flush=True)
    else:
        T = args.t_end
    # the state at T* from a run landing on T* (a loss stop's state between steps is
    # interpolated, to lower order than the steps), and the reference's own error from
    # a run at a tenth of the tolerance
    landing = fs.solve(prob, args.ref_method, rtol=args.ref_tol, atol=args.ref_tol, t_end=T,
                       save_at=[0.0], progress=args.progress, max_steps=args.ref_max_steps)
    y_ref = landing.y_final
    if args.t_end is not None:                    # the landing run is the reference
        ref = landing
        print(f"  reference: to t = {T:.6g} (loss {prob.loss(y_ref):.3g}), "
              f"{ref.stats.nfev + ref.stats.njev} RHS-equivalents, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    ref_wall = time.perf_counter() - t0
    tight = 0.1 * args.ref_tol
    ref_err = float(np.abs(fs.solve(prob, args.ref_method, rtol=tight, atol=tight, t_end=T,
                                    save_at=[0.0], progress=args.progress,
                                    max_steps=args.ref_max_steps).y_final - y_ref).max())
    out = {"T": T, "y_ref": y_ref, "ref_err": ref_err, "ref_status": str(ref.status),
           "ref_nfev": ref.stats.nfev + ref.stats.njev, "ref_wall": ref_wall}
    if path is not None:                          # atomically: a killed run leaves no file
        fs.io.write_atomic(path, lambda tmp: np.savez(tmp, **out))
    return out


def bench_one(data_name, m, gamma, args):
    prob = make_problem(data_name, m, gamma, backend=args.backend)
    ref = reference(prob, data_name, m, gamma, args)
    T, y_ref = ref["T"], ref["y_ref"]
    rows = {"data": data_name, "m": m, "gamma": gamma, "backend": args.backend, "T": T,
            "ref_status": ref["ref_status"], "ref_scale": float(np.abs(y_ref).max()),
            "ref_nfev": ref["ref_nfev"], "ref_wall": ref["ref_wall"],
            "ref_err": ref["ref_err"], "auto": fs.solvers.auto.choose(prob, T)[0],
            "methods": {}}
    if args.ref_only:
        return rows
    tols = [10.0 ** (-k / 2) for k in range(6, 20)]     # 1e-3 .. 3e-10, half decades
    for method in args.methods:
        pts = ladder(prob, method, T, y_ref, tols, args.max_steps, args.time_budget)
        res = {}
        for target in TARGETS:
            work, wall, tol = first_reaching(pts, target)
            res[str(target)] = {"work": work, "wall": wall, "tol": tol}
        res["ladder"] = [(tol, err, st.nfev, st.njev, st.steps, st.rejected, wall)
                         for tol, err, st, wall in pts]
        rows["methods"][method] = res
        print(f"  {method}: " + ", ".join(f"tol {p[0]:.0e} err {p[1]:.2e} work "
                                         f"{p[2].nfev + p[2].njev} wall {p[3]:.2f}s"
                                         for p in pts), flush=True)
    pts = gd_points(prob, T, y_ref, args.gd_max_steps, args.time_budget)
    print("  gd: " + ", ".join(f"N {N} err {err:.2e} wall {wall:.2f}s"
                               for dt, N, err, wall in pts), flush=True)
    res = {}
    for target in TARGETS:
        N, wall, mark = gd_cost(pts, target)
        res[str(target)] = {"work": N, "wall": wall, "mark": mark}
    res["points"] = pts
    rows["methods"]["gd"] = res
    return rows


def table(all_rows):
    head = ("| data | m | gamma | auto | method | RHS-eq. @1e-4 | wall @1e-4 | "
            "RHS-eq. @1e-6 | wall @1e-6 |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in all_rows:
        for method, res in r["methods"].items():
            cells = []
            for target in TARGETS:
                c = res[str(target)]
                mark = c.get("mark", "")
                w = c["work"]
                cells += [f"{mark}{w:,.0f}" if math.isfinite(w) else "-",
                          f"{mark}{c['wall']:.3g} s" if math.isfinite(c["wall"]) else "-"]
            lines.append(f"| {r['data']} | {r['m']} | {r['gamma']} | {r['auto']} | {method} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="numpy", choices=["numpy", "numba", "cupy"],
                    help="backend of every run (GD included)")
    ap.add_argument("--data", nargs="+", default=["four_points"],
                    choices=["four_points", "digits"])
    ap.add_argument("--widths", nargs="+", type=int, default=[1000])
    ap.add_argument("--gammas", nargs="+", type=float, default=[0.5, 1.0, 1.75, 2.0])
    ap.add_argument("--methods", nargs="+", default=["expgn2", "sliding", "dopri5"])
    ap.add_argument("--loss", type=float, default=1e-4)
    ap.add_argument("--t-end", type=float, default=None,
                    help="compare the states at this time instead of at T* (where T* is "
                         "out of reach: m = 1e5 in the condensed regime)")
    ap.add_argument("--ref-method", default="sliding")
    ap.add_argument("--ref-tol", type=float, default=1e-10)
    ap.add_argument("--ref-max-steps", type=int, default=200_000)
    ap.add_argument("--max-steps", type=int, default=20_000)
    ap.add_argument("--gd-max-steps", type=int, default=200_000)
    ap.add_argument("--time-budget", type=float, default=60.0,
                    help="seconds per method ladder before stopping it")
    ap.add_argument("--json", default=None)
    ap.add_argument("--ref-cache", default=None,
                    help="folder keeping the references (T*, the state there, its error) "
                         "between runs, one .npz per configuration")
    ap.add_argument("--progress", action="store_true",
                    help="progress bars (stderr) for the reference runs, which take hours at "
                         "m = 1e5 outside the linear regime")
    ap.add_argument("--ref-only", action="store_true",
                    help="compute (or load) the references and stop")
    args = ap.parse_args(argv)
    if args.t_end is not None and not (math.isfinite(args.t_end) and args.t_end > 0):
        ap.error(f"--t-end must be a positive finite time, got {args.t_end:g}")
    all_rows = []
    for data_name in args.data:
        for m in args.widths:
            for g in args.gammas:
                print(f"{data_name} m={m} gamma={g}", flush=True)
                all_rows.append(bench_one(data_name, m, g, args))
                at = "T*" if args.t_end is None else "T"
                print(f"  {at}={all_rows[-1]['T']:.6g} ref work {all_rows[-1]['ref_nfev']} "
                      f"({all_rows[-1]['ref_wall']:.1f}s), max|y_ref| "
                      f"{all_rows[-1]['ref_scale']:.3g}, |ref - ref at tol/10| "
                      f"{all_rows[-1]['ref_err']:.2e}", flush=True)
    print(table(all_rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(all_rows, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
