"""Digits (n = 256, d = 64) to the issue's T*: `sliding` against gradient descent.

The issue's measure is the parameter error at T*, the time at which the loss falls to
1e-4. On digits in the linear regime (m = 1000, gamma = 0.5) T* is ~2e4 in normalised
time, so every run here takes minutes to an hour on one thread, and the runs are made one
per process and kept on disk (``--out DIR``), then compared (``report``):

``run METHOD TOL``
    ``sliding`` (or another adaptive method) at rtol = atol = TOL, stopping at loss
    1e-4; ``gd`` with ``dt = TOL``, to ``--t-end``. Full states are kept at the
    snapshot times ``--snap-from``, ``--snap-from + --snap-every``, ... (landed exactly
    by GD when they are multiples of dt). Writes ``DIR/METHOD_TOL.npz`` atomically.
``report``
    The reference is GD at its smallest dt (gradient descent converges to the Filippov
    solution as dt -> 0, docs/nonsmooth.md); the distances between GD runs at dt and
    dt/2 show how fast it converges, and so how far the reference is from the limit.
    (A Richardson limit ``2 y(dt/2) - y(dt)`` was tried first and dropped: the GD runs
    at these steps are not yet first order, and a linear combination of parameter
    vectors that differ by O(1) in single neurons is not a network near either.)
    T* is the first time an adaptive run's loss is below 1e-4; distances in four norms
    (max, median neuron, RMS, outputs) are taken at the last snapshot time before the
    earliest T* (the loss there is printed).

Usage (one thread each; two runs at a time on this 2-core machine)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        python benchmarks/digits_tstar.py --out out/tstar run gd 0.5
    ... run gd 0.25;  ... run gd 0.125;  ... --t-end 21000 run gd 0.0625
    ... --t-end 19000 run gd 0.03125;  ... run sliding 1e-6;  ... run sliding 1e-7
    ... --t-end 19000 run auto 1e-6 --atol 1e-9      # fs.solve's defaults
    python benchmarks/digits_tstar.py --out out/tstar report

``cost TOL DT``
    The cost of a step late in the flow, side by side: from the state at ``--at`` (a
    snapshot of the finest GD run in ``DIR``), ``sliding`` at rtol = atol = TOL and GD
    at ``dt = DT`` over ``--span`` time units, alternately, ``--repeats`` times (the
    fastest of each is printed); ``--profile`` adds cProfile's top functions of one
    more sliding run, ``--backend cupy`` runs both on a GPU.
``window SPAN RUN [RUN ...]``
    Work and accuracy over a window of the late flow: from the same start as ``cost``
    (``--at``), each ``RUN`` (``METHOD:TOL``, rtol = atol = TOL; ``gd:DT``) integrates
    ``SPAN`` time units, one after another in one process, and is compared with
    ``sliding`` at ``--ref-tol`` over the same window (kept in ``DIR`` and reused).
    It separates the local cost of accuracy from the grazing decisions that set the
    errors at T*. ``--backend cupy`` runs them on a GPU (the cached reference is reused
    whichever backend made it).
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

import flowsolve as fs


def problem(width, gamma, backend="numba"):
    data = fs.datasets.digits(n=256)
    return fs.Problem(fs.TwoLayer(width, fs.Scaling.from_gammas(gamma, 0.0, width), asi=True),
                      data, seed=0, backend=backend)


def save_npz(path, **arrays):
    """Write ``path`` atomically (``flowsolve.io.write_atomic``)."""
    fs.io.write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def run(args):
    prob = problem(args.width, args.gamma)
    snaps = np.arange(args.snap_from, args.t_end + 1e-9, args.snap_every)
    fs.solve(prob, args.method, t_end=1.0, dt=0.5, rtol=1e-3, atol=1e-3, progress=False)  # compile
    if args.method == "gd":
        kw = dict(dt=args.tol, t_end=args.t_end)
    else:
        atol = args.tol if args.atol is None else args.atol
        kw = dict(rtol=args.tol, atol=atol, t_end=args.t_end, stop_at_loss=args.loss)
    t0 = time.perf_counter()
    sol = fs.solve(prob, args.method, save_at=20, snapshots=snaps, progress=args.progress,
                   max_steps=10**8, **kw)
    wall = time.perf_counter() - t0
    st = sol.stats
    print(f"{args.method} {args.tol:g}: {sol.message}; nfev {st.nfev}, njev {st.njev}, "
          f"steps {st.steps}, rejected {st.rejected}, {wall:.1f} s")
    name = f"{args.method}_{args.tol:g}" + ("" if args.atol is None else f"_atol{args.atol:g}")
    save_npz(os.path.join(args.out, name + ".npz"),
             method=args.method, tol=args.tol, t=sol.t, loss=sol.loss, wall=wall,
             nfev=st.nfev, njev=st.njev, steps=st.steps, rejected=st.rejected,
             snap_t=np.array([t for t, _ in sol.snapshots]),
             snap_y=np.array([y for _, y in sol.snapshots]))


def load(out):
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*.npz"))):
        if os.path.basename(path).startswith("window_"):      # window references
            continue
        z = np.load(path)
        runs[(str(z["method"]), float(z["tol"]))] = {k: z[k] for k in z.files}
    return runs


def distances(y, y_ref, model, x):
    """``(max, median neuron, rms, output)`` distances between two states: the max norm,
    the median over neurons of each neuron's max norm, the RMS norm, and the max over the
    data of the network outputs' difference."""
    d = np.abs(y - y_ref)
    parts = model.unpack(d)
    per_neuron = np.maximum(parts["a"], parts["w"].max(axis=1))
    out = np.abs(model.predict(y, x) - model.predict(y_ref, x)).max()
    return d.max(), float(np.median(per_neuron)), float(np.sqrt((d**2).mean())), float(out)


def report(args):
    runs = load(args.out)
    gd = sorted((tol, r) for (m, tol), r in runs.items() if m == "gd")
    adaptive = sorted((k, r) for k, r in runs.items() if k[0] != "gd")
    if len(gd) < 2 or not adaptive:
        raise SystemExit("report needs at least two GD runs and one adaptive run")
    prob = problem(args.width, args.gamma)
    model, x = prob.model, prob.data.x
    t_star = min(float(r["t"][-1]) for _, r in adaptive)
    common = set.intersection(*(set(np.round(r["snap_t"], 9)) for _, r in gd + adaptive))
    ts = max(t for t in common if t <= t_star)

    def at(r):
        return r["snap_y"][int(np.argmin(np.abs(r["snap_t"] - ts)))]

    def loss_at(r):
        return float(np.interp(ts, r["t"], r["loss"]))

    y_ref = at(gd[0][1])
    print(f"# digits m = {args.width}, gamma = {args.gamma}; T* (first adaptive loss stop) = "
          f"{t_star:.6g}; errors at t = {ts:g}")
    print(f"# reference: GD at dt = {gd[0][0]:g}; its distance to dt = {gd[1][0]:g} (the first "
          f"successive distance) bounds its error where those at least halve with dt")
    print("# distances: max |y - y_ref|, median over neurons of a neuron's max, RMS, "
          "max over the data of |f - f_ref|")
    head = f"{'run':>16} {'loss':>9} {'max':>9} {'neuron':>9} {'rms':>9} {'output':>9}"
    print(head + f" {'RHS-eq':>9} {'steps':>8} {'wall s':>8}")
    rows = [(f"{m} {tol:g}", r, int(r["nfev"] + r["njev"]), int(r["steps"]), float(r["wall"]))
            for (m, tol), r in adaptive]
    for tol, r in gd[1:]:
        n = int(round(ts / tol))
        rows.append((f"gd {tol:g}", r, n, n, float(r["wall"]) * ts / float(r["t"][-1])))
    for name, r, work, steps, wall in rows:
        dist = distances(at(r), y_ref, model, x)
        print(f"{name:>16} {loss_at(r):9.3e} " + " ".join(f"{v:9.2e}" for v in dist)
              + f" {work:9d} {steps:8d} {wall:8.1f}")
    print("# successive GD runs, |y(dt) - y(dt/2)| (first order: halves with dt)")
    for (dt2, r2), (dt1, r1) in zip(gd[:-1], gd[1:]):
        dist = distances(at(r1), at(r2), model, x)
        print(f"{f'{dt1:g} - {dt2:g}':>16} {'':>9} " + " ".join(f"{v:9.2e}" for v in dist))


def late_start(args, backend="numba"):
    """The problem started from the finest GD run's snapshot nearest ``args.at``;
    returns ``(problem, that GD step, the snapshot's time)``."""
    gd = sorted((tol, r) for (m, tol), r in load(args.out).items() if m == "gd")
    if not gd:
        raise SystemExit(f"{args.cmd} needs a GD run in --out (its snapshot is the start)")
    r = gd[0][1]
    i = int(np.argmin(np.abs(r["snap_t"] - args.at)))
    prob = problem(args.width, args.gamma, backend)
    prob.y0_host = r["snap_y"][i].copy()
    prob.y0 = prob.backend.asarray(prob.y0_host, prob.dtype)
    return prob, gd[0][0], float(r["snap_t"][i])


def _run_kw(method, tol):
    return dict(dt=tol) if method == "gd" else dict(rtol=tol, atol=tol)


def window(args):
    prob, dt_start, t_start = late_start(args, args.backend)
    specs = []
    for spec in args.runs:
        method, _, tol = spec.partition(":")
        try:
            specs.append((method, float(tol)))
        except ValueError:
            raise SystemExit(f"window: a run is METHOD:TOL (e.g. sliding:1e-7), "
                             f"got {spec!r}") from None
    for method in {m for m, _ in specs} | {"sliding"}:                     # compile
        fs.solve(prob, method, t_end=1.0, progress=False,
                 **_run_kw(method, 0.1 if method == "gd" else 1e-3))
    path = os.path.join(args.out, f"window_{t_start:g}_{args.span:g}_ref{args.ref_tol:g}.npz")
    if os.path.exists(path):
        ref = np.load(path)["y"]
    else:
        t0 = time.perf_counter()
        sol = fs.solve(prob, "sliding", t_end=args.span, progress=False,
                       **_run_kw("sliding", args.ref_tol))
        ref = sol.y_final
        save_npz(path, y=ref)
        print(f"# reference sliding {args.ref_tol:g}: {sol.stats.steps} steps, "
              f"{sol.stats.nfev + sol.stats.njev} RHS-eq, {time.perf_counter() - t0:.1f} s")
    print(f"# digits m = {args.width}, gamma = {args.gamma}, {args.backend}: from GD dt = "
          f"{dt_start:g} at t = {t_start:g}, {args.span:g} time units; distances to sliding at "
          f"{args.ref_tol:g} (max, median neuron, outputs)")
    print(f"{'run':>14} {'steps':>6} {'RHS-eq':>7} {'wall s':>7} {'events/step':>11} "
          f"{'max':>9} {'neuron':>9} {'output':>9}")
    for method, tol in specs:
        t0 = time.perf_counter()
        sol = fs.solve(prob, method, t_end=args.span, progress=False, **_run_kw(method, tol))
        wall = time.perf_counter() - t0
        st = sol.stats
        d = distances(sol.y_final, ref, prob.model, prob.data.x)
        ev = st.extra.get("event_neurons", 0) / max(st.steps, 1)
        print(f"{method + ':' + format(tol, 'g'):>14} {st.steps:6d} {st.nfev + st.njev:7d} "
              f"{wall:7.2f} {ev:11.1f} {d[0]:9.2e} {d[1]:9.2e} {d[3]:9.2e}", flush=True)


def cost(args):
    prob, dt_start, t_start = late_start(args, args.backend)
    kws = {"sliding": _run_kw("sliding", args.tol), "gd": _run_kw("gd", args.dt)}
    for method, kw in kws.items():                               # compile
        fs.solve(prob, method, t_end=1.0, progress=False, **kw)
    best = {}
    for _ in range(args.repeats):
        for method, kw in kws.items():
            t0 = time.perf_counter()
            sol = fs.solve(prob, method, t_end=args.span, progress=False, **kw)
            wall = time.perf_counter() - t0
            if method not in best or wall < best[method][0]:
                best[method] = (wall, sol.stats)
    print(f"# digits m = {args.width}, gamma = {args.gamma}, {args.backend}: from GD dt = "
          f"{dt_start:g} at t = {t_start:g}, over {args.span:g} time units, best of "
          f"{args.repeats}")
    print(f"{'method':>8} {'steps':>6} {'RHS-eq/step':>11} {'ms/step':>8} {'wall s':>7}  events")
    for method, (wall, st) in best.items():
        ev = st.extra.get("event_neurons", 0) / max(st.steps, 1)
        print(f"{method:>8} {st.steps:6d} {(st.nfev + st.njev) / st.steps:11.2f} "
              f"{1e3 * wall / st.steps:8.2f} {wall:7.2f}  {ev:.1f} neurons/step")
    if args.profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        fs.solve(prob, "sliding", t_end=args.span, progress=False, **kws["sliding"])
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--t-end", type=float, default=26000.0)
    ap.add_argument("--loss", type=float, default=1e-4)
    ap.add_argument("--snap-from", type=float, default=10000.0)
    ap.add_argument("--snap-every", type=float, default=500.0)
    ap.add_argument("--progress", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("method")
    r.add_argument("tol", type=float)
    r.add_argument("--atol", type=float, default=None,
                   help="atol of an adaptive run (default: TOL; fs.solve's own default is 1e-9)")
    sub.add_parser("report")
    c = sub.add_parser("cost")
    c.add_argument("tol", type=float)
    c.add_argument("dt", type=float)
    c.add_argument("--at", type=float, default=10000.0)
    c.add_argument("--span", type=float, default=60.0)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--profile", action="store_true")
    c.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"])
    w = sub.add_parser("window")
    w.add_argument("span", type=float)
    w.add_argument("runs", nargs="+", help="METHOD:TOL, e.g. sliding:1e-7 gd:0.0625")
    w.add_argument("--at", type=float, default=10000.0)
    w.add_argument("--ref-tol", type=float, default=1e-10)
    w.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"])
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    {"run": run, "report": report, "cost": cost, "window": window}[args.cmd](args)


if __name__ == "__main__":
    main()
