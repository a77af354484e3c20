"""Digits runs one process at a time: the large-width measurements of docs/benchmarks.md.

At m = 10^4 in the condensed regime and at m = 10^5, one solve takes minutes to an hour,
so ``digits_horizon.py`` (everything in one process) would run for hours with one core
idle. This script makes one run per call and saves its final state and stats
(atomically, under ``--out``), so runs go side by side on the cores and survive each
other's failures; the ``table`` command then compares every saved run with a reference run:

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/digits_runs.py \\
        --width 10000 --gamma 2 --t-end 1e8 --out out/c5 run sliding 1e-9 --substeps 32
    ... run sliding 1e-6          # another core: ... run gd 16000
    ... table sliding_1e-9_s32

Files are ``{method}_{tol or steps}[_s{substeps}].npy`` (the final state) and ``.json``
(RHS evaluations, Jacobian work, steps, wall time). The problem is
``digits_tstar.problem`` (the same as ``digits_horizon.py``'s): digits (n = 256),
two-layer ReLU with ASI, ``gamma' = 0``, seed 0, numba backend. Errors are
``max |y - y_ref|``, work ``nfev + njev``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

import flowsolve as fs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from digits_tstar import problem  # noqa: E402  (the digits problem of these benchmarks)


def _dump_json(obj, path):
    with open(path, "w") as fh:
        json.dump(obj, fh)


def run_one(args):
    """One solve to ``--t-end``; writes ``NAME.npy`` and ``NAME.json``, returns NAME."""
    prob = problem(args.width, args.gamma)
    t0 = time.perf_counter()
    if args.method == "gd":
        n = int(args.value)
        sol = fs.solve(prob, "euler", dt=args.t_end / n, t_end=args.t_end, save_at=[0.0],
                       max_steps=n + 2, progress=False)
        name = f"gd_{n}"
    else:
        tol = float(args.value)
        kw = {"event_substeps": args.substeps} if args.substeps else {}
        sol = fs.solve(prob, args.method, rtol=tol, atol=tol, t_end=args.t_end,
                       save_at=[0.0], max_steps=10**7, progress=False, **kw)
        name = f"{args.method}_{args.value}" + (f"_s{args.substeps}" if args.substeps else "")
    wall = time.perf_counter() - t0
    st = sol.stats
    info = {"method": args.method, "value": args.value, "substeps": args.substeps,
            "width": args.width, "gamma": args.gamma, "t_end": args.t_end,
            "status": str(sol.status), "nfev": st.nfev, "njev": st.njev, "steps": st.steps,
            "wall": wall, "loss": float(prob.loss(sol.y_final)), "extra": dict(st.extra)}
    base = os.path.join(args.out, name)
    fs.io.write_atomic(base + ".npy", lambda tmp: np.save(tmp, sol.y_final))
    fs.io.write_atomic(base + ".json", lambda tmp: _dump_json(info, tmp))
    print(json.dumps(info), flush=True)
    return name


def table(out, ref_name):
    """Rows ``(name, error, RHS-eq, steps, wall)`` of every run in ``out`` against
    ``ref_name``'s state, sorted by method and work."""
    y_ref = np.load(os.path.join(out, ref_name + ".npy"))
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(path) as fh:
            info = json.load(fh)
        y = np.load(path[:-5] + ".npy")
        rows.append((os.path.basename(path)[:-5], float(np.abs(y - y_ref).max()),
                     info["nfev"] + info["njev"], info["steps"], info["wall"]))
    rows.sort(key=lambda r: (r[0].split("_")[0], r[2]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--gamma", type=float, required=True)
    ap.add_argument("--t-end", type=float, required=True)
    ap.add_argument("--out", required=True, help="folder of the saved runs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one solve: METHOD (sliding, expgn2, auto, ... or gd) "
                                   "and its rtol = atol, or GD's number of steps")
    r.add_argument("method")
    r.add_argument("value")
    r.add_argument("--substeps", type=int, default=0,
                   help="RK4 substeps of the event re-integration (default: the method's)")
    t = sub.add_parser("table", help="every saved run against the run REF (a file stem)")
    t.add_argument("ref")
    args = ap.parse_args(argv)
    if args.width < 1:
        ap.error(f"--width must be a positive integer, got {args.width}")
    if not (0 < args.t_end < float("inf")):
        ap.error(f"--t-end must be a positive finite time, got {args.t_end:g}")
    if args.cmd == "run":
        try:
            value = int(args.value) if args.method == "gd" else float(args.value)
        except ValueError:
            value = -1
        if not value > 0:
            ap.error(f"run {args.method}: expected a positive "
                     f"{'number of steps' if args.method == 'gd' else 'tolerance'}, "
                     f"got {args.value!r}")
        return run_one(args)
    if not os.path.exists(os.path.join(args.out, args.ref + ".npy")):
        runs = sorted(os.path.basename(p)[:-5]
                      for p in glob.glob(os.path.join(args.out, "*.json")))
        ap.error(f"no run {args.ref!r} in {args.out} (saved runs: {runs})")
    print(f"# digits m = {args.width}, gamma = {args.gamma}, t = {args.t_end:g}; "
          f"errors against {args.ref}")
    print(f"{'run':>22} {'error':>9} {'RHS-eq':>8} {'steps':>7} {'wall s':>8}")
    for name, err, work, steps, wall in table(args.out, args.ref):
        print(f"{name:>22} {err:9.2e} {work:8d} {steps:7d} {wall:8.1f}")


if __name__ == "__main__":
    main()
