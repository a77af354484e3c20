"""The two-layer BLAS path (d >= 2, n > 8): one thread of BLAS per block vs Numba's threads.

"serial": the products of each block in one BLAS call on one thread, the elementwise
passes serial (the numba backend below ``blas_threshold``). "Numba's threads": Numba's
threads each run single-threaded BLAS on sub-blocks that stay in L2 (the backend from
``blas_threshold`` = 5e5 multiply-adds per product, neurons x n x (d + 1)). Both agree
to rounding (last column). First one RHS alone (ms, best of 5 interleaved rounds), then
whole dopri5 solves (ASI,
gamma = 0.5, rtol 1e-5, to ``--solve-t``; random inputs, or scikit-learn's digits), where
the stage kernels run on Numba's threads between right-hand sides.

    .venv/bin/python benchmarks/blas_path.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _peers import side_by_side

import flowsolve as fs
from flowsolve.backends.numba_backend import NumbaBackend

OLD = dict(blas_threshold=10**15)          # never on Numba's threads
NEW = dict(blas_threshold=1)               # always on Numba's threads


def rhs_row(n, d, m, dtype):
    rng = np.random.default_rng(0)
    data = fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))
    sc = fs.Scaling.from_gammas(gamma=1.0, gamma_prime=0.0, width=m)
    model = fs.TwoLayer(width=m, scaling=sc, activation="relu", asi=False)
    old = fs.Problem(model, data, seed=0, backend=NumbaBackend(**OLD), dtype=dtype)
    new = fs.Problem(model, data, seed=0, backend=NumbaBackend(**NEW), dtype=dtype)
    y = old.y0
    o1, o2 = np.empty_like(y), np.empty_like(y)
    old.rhs_into(y, o1)
    new.rhs_into(y, o2)
    diff = float(np.abs(o1 - o2).max() / np.abs(o1).max())
    best = side_by_side({"old": lambda: old.rhs_into(y, o1), "new": lambda: new.rhs_into(y, o2)})
    return best["old"] * 1e3, best["new"] * 1e3, diff


def solve_row(n, d, m, t_end, digits=False):
    """A dopri5 solve (ASI, gamma = 0.5) on both paths: (s old, s new, nfev, max diff)."""
    if digits:
        data = fs.datasets.digits(n=n)
    else:
        rng = np.random.default_rng(0)
        data = fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)) / np.sqrt(d),
                                   rng.standard_normal(n))
    sc = fs.Scaling.from_gammas(gamma=0.5, gamma_prime=0.0, width=m)
    model = fs.TwoLayer(width=m, scaling=sc, activation="relu", asi=True)
    out = {}
    for label, opts in (("old", OLD), ("new", NEW)):
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
    ap.add_argument("--widths", type=float, nargs="+", default=[300, 2e3, 1e4, 1e5])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--solves", nargs="*", default=["16x64x1000", "64x64x300", "64x784x1000",
                                                      "9x2x3000", "9x2x30", "256x64x10000d"],
                    help="dopri5 solves, n x d x m (suffix d: scikit-learn digits, n = 256)")
    ap.add_argument("--solve-t", type=float, default=2.0)
    a = ap.parse_args()
    print("| n | d | m | dtype | serial (ms) | Numba's threads (ms) | speed-up | "
          "max rel. difference |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in a.shapes:
        n, d = (int(v) for v in shape.split("x"))
        for m in a.widths:
            t_old, t_new, diff = rhs_row(n, d, int(m), a.dtype)
            print(f"| {n} | {d} | {m:.0e} | {a.dtype} | {t_old:.3g} | {t_new:.3g} | "
                  f"{t_old / t_new:.2f}x | {diff:.1e} |", flush=True)
    if a.solves:
        print("\n| solve: n | d | m (ASI) | RHS | serial (s) | Numba's threads (s) | "
              "speed-up | max abs difference |")
        print("|---|---|---|---|---|---|---|---|")
    for spec in a.solves:
        digits = spec.endswith("d")
        n, d, m = (int(v) for v in spec.rstrip("d").split("x"))
        t_old, t_new, nfev, diff = solve_row(n, d, m, a.solve_t, digits)
        print(f"| {n} | {d}{' (digits)' if digits else ''} | {m} | {nfev} | {t_old:.3g} | "
              f"{t_new:.3g} | {t_old / t_new:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
