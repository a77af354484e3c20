"""Smooth activations: the exponential Gauss-Newton methods against explicit RK.

Work-precision on tanh networks (ASI, gamma' = 0; numba backend unless --backend says
otherwise, the reference on the same backend): for each method and
tolerance (rtol = atol), the error ``max |y(T) - y_ref(T)|`` against ``dop853`` at
rtol = atol = 1e-12, the work (``nfev + njev``, RHS-equivalents) and the wall time.

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/smooth_wp.py --problem four
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/smooth_wp.py --problem digits
    python benchmarks/smooth_wp.py --problem four --width 1000000 --backend cupy   # on a GPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import flowsolve as fs

PROBLEMS = {
    # name: (data, width, gamma, T)
    "four": (lambda: fs.datasets.four_points(), 10_000, 0.5, 50.0),
    "digits": (lambda: fs.datasets.digits(n=256), 1000, 0.5, 20.0),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), default="four")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--t-end", type=float, default=None)
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--methods", nargs="+", default=["expgn2", "expgn3", "dopri5"])
    ap.add_argument("--tols", nargs="+", type=float, default=[1e-4, 1e-6, 1e-8])
    ap.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"])
    args = ap.parse_args(argv)
    make_data, m, gamma, T = PROBLEMS[args.problem]
    m = args.width or m
    gamma = args.gamma if args.gamma is not None else gamma
    T = args.t_end or T
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(gamma, 0.0, m),
                                  activation=args.activation, asi=True),
                      make_data(), seed=0, backend=args.backend)

    def run(method, tol):
        t0 = time.perf_counter()
        s = fs.solve(prob, method, t_end=T, save_at=[0.0], progress=False, rtol=tol,
                     atol=tol, max_steps=10**6)
        return s, time.perf_counter() - t0

    for method in args.methods:                      # compile every method's kernels
        run(method, 1e-2)
    ref, w = run("dop853", 1e-12)
    lam_t = fs.solvers.auto.kernel_horizon(prob, T)
    print(f"# lambda_max(K/n) T = {lam_t:.3g} at initialisation: auto runs "
          f"{fs.solvers.auto.choose(prob, T)[0]}")
    print(f"# {args.problem}: {args.activation}, m = {m}, gamma = {gamma}, T = {T}, "
          f"backend {args.backend}; "
          f"reference dop853 1e-12 ({ref.stats.nfev} RHS, {w:.1f} s)")
    print(f"{'method':>8} {'tol':>7} {'error':>9} {'RHS-eq':>8} {'steps':>6} {'wall s':>7}")
    for method in args.methods:
        for tol in args.tols:
            s, w = run(method, tol)
            err = np.abs(s.y_final - ref.y_final).max()
            print(f"{method:>8} {tol:7.0e} {err:9.2e} {s.stats.nfev + s.stats.njev:8d} "
                  f"{s.stats.steps:6d} {w:7.2f}")


if __name__ == "__main__":
    main()
