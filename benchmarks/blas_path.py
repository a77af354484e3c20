"""The two-layer BLAS path (d >= 2, n > 8): BLAS's threads vs Numba's threads, side by side.

"BLAS's threads": OpenBLAS runs each product on its own threads and the elementwise passes
run serially (the numba backend with ``blas_threshold`` out of reach: what it did before
the threaded path). "Numba's threads": Numba's threads each run single-threaded BLAS on
sub-blocks that stay in L2 (the default from ``blas_threshold`` = 1.5e5
pre-activations). Also a dopri5 solve on scikit-learn's digits in the linear regime
(gamma = 0.5), which spends nearly all its time in this RHS, and the two paths'
agreement. Prints a markdown table; ms per RHS, best of
5 interleaved rounds; seconds per solve.

    .venv/bin/python benchmarks/blas_path.py --shapes 64x64 256x64 16x64 64x8 --widths 3e4 1e5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _peers import side_by_side

import flowsolve as fs
from flowsolve.backends.numba_backend import NumbaBackend

OLD = dict(blas_threshold=10**15)          # never on Numba's threads: the BLAS-threaded path


def rhs_row(n, d, m, dtype):
    rng = np.random.default_rng(0)
    data = fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))
    sc = fs.Scaling.from_gammas(gamma=1.0, gamma_prime=0.0, width=m)
    model = fs.TwoLayer(width=m, scaling=sc, activation="relu", asi=False)
    old = fs.Problem(model, data, seed=0, backend=NumbaBackend(**OLD), dtype=dtype)
    new = fs.Problem(model, data, seed=0, backend=NumbaBackend(), dtype=dtype)
    y = old.y0
    o1, o2 = np.empty_like(y), np.empty_like(y)
    old.rhs_into(y, o1)
    new.rhs_into(y, o2)
    diff = float(np.abs(o1 - o2).max() / np.abs(o1).max())
    best = side_by_side({"old": lambda: old.rhs_into(y, o1), "new": lambda: new.rhs_into(y, o2)})
    return best["old"] * 1e3, best["new"] * 1e3, diff


def solve_row(m, t_end):
    data = fs.datasets.digits(n=256)
    sc = fs.Scaling.from_gammas(gamma=0.5, gamma_prime=0.0, width=m)
    model = fs.TwoLayer(width=m, scaling=sc, activation="relu", asi=True)
    out = {}
    for label, opts in (("old", OLD), ("new", {})):
        prob = fs.Problem(model, data, seed=0, backend=NumbaBackend(**opts))
        fs.solve(prob, "dopri5", t_end=1e-3, progress=False)            # warm
        t0 = time.perf_counter()
        sol = fs.solve(prob, "dopri5", rtol=1e-5, atol=1e-8, t_end=t_end, progress=False)
        out[label] = (time.perf_counter() - t0, sol)
    (t_old, s_old), (t_new, s_new) = out["old"], out["new"]
    diff = float(np.abs(s_old.y_final - s_new.y_final).max())
    return t_old, t_new, s_new.stats.nfev, diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["64x64", "256x64", "16x64", "64x8"])
    ap.add_argument("--widths", type=float, nargs="+", default=[2e3, 1e4, 3e4, 1e5])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--solve-width", type=int, default=10_000,
                    help="m of the digits dopri5 solve (0: skip)")
    ap.add_argument("--solve-t", type=float, default=20.0)
    a = ap.parse_args()
    print("| n | d | m | dtype | BLAS's threads (ms) | Numba's threads (ms) | speed-up | "
          "max rel. difference |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in a.shapes:
        n, d = (int(v) for v in shape.split("x"))
        for m in a.widths:
            t_old, t_new, diff = rhs_row(n, d, int(m), a.dtype)
            print(f"| {n} | {d} | {m:.0e} | {a.dtype} | {t_old:.3g} | {t_new:.3g} | "
                  f"{t_old / t_new:.2f}x | {diff:.1e} |", flush=True)
    if a.solve_width:
        t_old, t_new, nfev, diff = solve_row(a.solve_width, a.solve_t)
        print(f"\ndigits (n = 256, d = 64), m = {a.solve_width} (ASI), gamma = 0.5, dopri5 "
              f"rtol 1e-5 to t = {a.solve_t:g} ({nfev} RHS): BLAS's threads {t_old:.2f} s, "
              f"Numba's threads {t_new:.2f} s ({t_old / t_new:.2f}x); final states differ "
              f"by {diff:.1e} (max abs)")


if __name__ == "__main__":
    main()
