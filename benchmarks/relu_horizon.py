"""Where ``auto`` should switch from ``sliding`` to ``expgn2`` on ReLU models.

``auto`` runs ``expgn2`` on ReLU-family models in the linear regime when
``lambda_max(K/n)`` at initialisation times the horizon reaches
``flowsolve.solvers.auto.RELU_STIFF_HORIZON``. This script measures both methods over
horizons ``H`` (``t_end = H / lambda_max``) on a subset of scikit-learn's digits (gamma =
0.5, gamma' = 0, ASI, numba backend, seed 0): each at a few rtols with ``fs.solve``'s
default atol (1e-9), its wall time (after a compiling run) and its parameter error
``max |y - y_ref|`` against ``sliding`` at rtol = atol = ``--ref-tol``.

Usage (one thread, as in docs/benchmarks.md)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/relu_horizon.py --n 32 --width 100 --horizons 1000 10000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import flowsolve as fs
from flowsolve.solvers.auto import kernel_modes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="digits used")
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--horizons", type=float, nargs="+", default=[1e3, 1e4])
    ap.add_argument("--runs", nargs="+",
                    default=["expgn2:1e-5", "expgn2:1e-6", "sliding:1e-5", "sliding:1e-6",
                             "sliding:1e-7"], help="METHOD:RTOL")
    ap.add_argument("--ref-tol", type=float, default=1e-9)
    args = ap.parse_args(argv)

    data = fs.datasets.digits(n=args.n)
    m = args.width
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(0.5, 0.0, m), asi=True), data,
                      backend="numba")
    lam_max = float(kernel_modes(prob)[0][-1])
    for method in ("expgn2", "sliding"):                                   # compile
        fs.solve(prob, method, t_end=1.0, progress=False)
    print(f"# digits n = {args.n}, m = {m}, gamma = 0.5; lambda_max(K/n) = {lam_max:.3g}; "
          f"errors against sliding at {args.ref_tol:g}, atol 1e-9")
    print("| horizon | t_end | run | error | steps | RHS-eq | wall |")
    print("|---|---|---|---|---|---|---|")
    for H in args.horizons:
        T = H / lam_max
        ref = fs.solve(prob, "sliding", rtol=args.ref_tol, atol=args.ref_tol, t_end=T,
                       save_at=[0.0], progress=False)
        for spec in args.runs:
            method, _, tol = spec.partition(":")
            t0 = time.perf_counter()
            sol = fs.solve(prob, method, rtol=float(tol), atol=1e-9, t_end=T, save_at=[0.0],
                           progress=False)
            wall = time.perf_counter() - t0
            err = np.abs(sol.y_final - ref.y_final).max()
            st = sol.stats
            print(f"| {H:g} | {T:.4g} | {spec} | {err:.2g} | {st.steps} | "
                  f"{st.nfev + st.njev} | {wall:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
