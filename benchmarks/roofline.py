"""Roofline of the right-hand sides: this machine's limits, then one RHS per backend.

Prints (markdown tables):

1. memory bandwidth (STREAM-like triad ``a = b + s c`` in Numba, 24 bytes per element)
   and BLAS throughput (square GEMM);
2. Numba compile time, cold (fresh cache directory) and from the on-disk cache, measured
   in subprocesses;
3. the two-layer RHS at m = 1e3 .. 1e6 for (n, d) in {4, 64} x {1, 64}: time per backend
   and the fraction of the roofline reached, roofline = max(bytes / bandwidth,
   flops / GEMM peak) with bytes = the compulsory traffic (read the state once, write the
   derivative once: 2 P itemsize) and flops = m n (4 (d + 1) + 6);
4. the three-layer RHS at m = 250 .. 4000 against the BLAS time of its three m x m
   products alone (``W2 H``, ``Delta2^T W2``, ``Delta2 H^T``).

Backends are timed side by side (interleaved rounds, best of) because the machine may be
shared. Example::

    .venv/bin/python benchmarks/roofline.py --quick
    .venv/bin/python benchmarks/roofline.py --threads 1     # as in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peers import TorchTwoLayer, machine, side_by_side, torch_or_none

import flowsolve as fs
from flowsolve.backends.numba_backend import NumbaBackend


# -- machine limits ---------------------------------------------------------------------------
def triad_bandwidth(N, threads=None):
    """Best triad bandwidth (GB/s, 24 bytes per element) with Numba, all or ``threads``."""
    import numba
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def triad(a, b, c, s):
        for i in prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    a, b, c = np.empty(N), np.random.rand(N), np.random.rand(N)
    saved = numba.get_num_threads()
    threads = threads or THREADS
    if threads:
        numba.set_num_threads(threads)
    try:
        t = side_by_side({"t": lambda: triad(a, b, c, 1.5)}, min_time=0.2, rounds=5)["t"]
    finally:
        numba.set_num_threads(saved)
    return 24.0 * N / t / 1e9


def gemm_peak(k, dtype):
    A = np.random.rand(k, k).astype(dtype)
    B = np.random.rand(k, k).astype(dtype)
    C = np.empty((k, k), dtype=dtype)
    t = side_by_side({"g": lambda: np.matmul(A, B, out=C)}, min_time=0.3, rounds=3)["g"]
    return 2.0 * k**3 / t / 1e9


# -- compile time ---------------------------------------------------------------------------
_COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
import flowsolve as fs
t1 = time.perf_counter()
m = fs.TwoLayer(width=1000, activation="relu", asi=True)
p = fs.Problem(m, fs.datasets.four_points(), seed=0, backend="numba")
out = np.empty_like(p.y0); p.rhs_into(p.y0, out)
t2 = time.perf_counter()
fs.solve(p, method="dopri5", t_end=1.0, progress=False)
t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
"""


def compile_times():
    """(import, first RHS, first solve) seconds: cold cache, then warm cache."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (empty cache)", "warm (on-disk cache)"):
            out = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            rows.append((label, *map(float, out[-3:])))
    return rows


# -- two-layer RHS -----------------------------------------------------------------------------
def two_layer_row(m, n, d, dtype, bw, peak, torch_on):
    rng = np.random.default_rng(0)
    data = fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))
    model = fs.TwoLayer(width=m, activation="relu", asi=False)
    backends = {"numpy": "numpy", "numba": NumbaBackend(threads=THREADS)}
    if n >= 16 or d > 1:
        other = "blas" if backends["numba"].kernel_plan(model, data) == "fused" else "fused"
        backends[f"numba-{other}"] = NumbaBackend(path=other, threads=THREADS)
    fns = {}
    probs = {}
    for name, be in backends.items():
        p = fs.Problem(model, data, seed=0, backend=be, dtype=dtype)
        out = np.empty_like(p.y0)
        probs[name] = p
        fns[name] = (lambda p=p, out=out: p.rhs_into(p.y0, out))
    if torch_on:
        tt = TorchTwoLayer(probs["numpy"])
        y = tt.y0.clone()
        fns["torch-autograd"] = lambda: tt.grad_flow(y)
    times = side_by_side(fns, min_time=0.05 if m < 10**6 else 0.3, rounds=5)
    P = probs["numpy"].size
    item = np.dtype(dtype).itemsize
    t_mem = 2.0 * P * item / (bw * 1e9)
    t_flop = m * n * (4.0 * (d + 1) + 6.0) / (peak * 1e9)
    roof = max(t_mem, t_flop)
    best = times["numba"]
    plan = backends["numba"].kernel_plan(model, data)
    return {"times": times, "roof": roof, "bound": "mem" if t_mem >= t_flop else "flop",
            "frac": roof / best, "P": P, "plan": plan}


def three_layer_row(m, n, d, dtype):
    rng = np.random.default_rng(0)
    data = fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))
    model = fs.ThreeLayer(width=m, activation="relu", asi=False)
    fns = {}
    for name, be in (("numpy", "numpy"), ("numba", NumbaBackend(threads=THREADS))):
        p = fs.Problem(model, data, seed=0, backend=be, dtype=dtype)
        out = np.empty_like(p.y0)
        fns[name] = (lambda p=p, out=out: p.rhs_into(p.y0, out))
    W2 = rng.standard_normal((m, m + 1)).astype(dtype)
    H = rng.standard_normal((m + 1, n)).astype(dtype)
    Dl = rng.standard_normal((m, n)).astype(dtype)
    U, G, O2 = np.empty((m, n), dtype), np.empty((n, m + 1), dtype), np.empty((m, m + 1), dtype)

    def products():
        np.matmul(W2, H, out=U)
        np.matmul(Dl.T, W2, out=G)
        np.matmul(Dl, H.T, out=O2)

    fns["BLAS products"] = products
    return side_by_side(fns, min_time=0.05, rounds=5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6])
    ap.add_argument("--shapes", nargs="+", default=["4x1", "4x64", "64x1", "64x64"],
                    help="n x d pairs")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--three-widths", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    ap.add_argument("--triad-n", type=float, default=5e7)
    ap.add_argument("--max-state-mb", type=float, default=600.0,
                    help="skip two-layer cases whose temporaries would exceed ~this")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for Numba, BLAS and torch alike (default: each its own)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-time table")
    ap.add_argument("--quick", action="store_true",
                    help="m <= 1e5, shapes 4x1 and 64x64, three-layer m <= 1000")
    args = ap.parse_args(argv)
    if args.quick:
        args.widths = [w for w in args.widths if w <= 1e5]
        args.shapes = ["4x1", "64x64"]
        args.three_widths = [m for m in args.three_widths if m <= 1000]
        args.triad_n = min(args.triad_n, 2e7)
    torch_on = not args.no_torch and torch_or_none() is not None
    global THREADS
    THREADS = args.threads
    if THREADS:
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(THREADS)
        args._limits = threadpool_limits(THREADS)      # held for the whole run
        if torch_on:
            torch_or_none().set_num_threads(THREADS)

    bw1 = triad_bandwidth(int(args.triad_n), threads=1)
    bw = triad_bandwidth(int(args.triad_n))
    print(f"machine: {machine()}\n")
    peak = gemm_peak(2000, np.float64 if args.dtype == "float64" else np.float32)
    print("| limit | value |\n|---|---|")
    print(f"| triad bandwidth, 1 thread | {bw1:.1f} GB/s |")
    print(f"| triad bandwidth, all threads | {bw:.1f} GB/s |")
    print(f"| GEMM 2000^3 {args.dtype} | {peak:.1f} GFLOP/s |\n")
    bw = max(bw, bw1)

    if not args.no_compile:
        print("| numba cache | import flowsolve (s) | first two-layer RHS (s) | "
              "first dopri5 solve (s) |\n|---|---|---|---|")
        for label, a, b, c in compile_times():
            print(f"| {label} | {a:.2f} | {b:.2f} | {c:.2f} |")
        print()

    print(f"Two-layer RHS, ReLU, {args.dtype}, ms per evaluation (best of interleaved rounds)\n")
    print("| n | d | m | P | kernel | numpy | numba | other | roofline | bound | "
          "numba / roofline | numpy / numba |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    item = np.dtype(args.dtype).itemsize
    for shape in args.shapes:
        n, d = (int(v) for v in shape.split("x"))
        for w in args.widths:
            m = int(w)
            if m * max(n, d + 2) * item * 4 / 2**20 > args.max_state_mb:
                print(f"| {n} | {d} | {m:.0e} | | skipped (memory) | | | | | | | |")
                continue
            r = two_layer_row(m, n, d, args.dtype, bw, peak, torch_on and m <= 10**6)
            t = r["times"]
            other = ", ".join(f"{k} {v * 1e3:.3g}" for k, v in t.items()
                              if k not in ("numpy", "numba"))
            print(f"| {n} | {d} | {m:.0e} | {r['P']:.2e} | {r['plan']} | "
                  f"{t['numpy'] * 1e3:.3g} | {t['numba'] * 1e3:.3g} | {other} | "
                  f"{r['roof'] * 1e3:.3g} | {r['bound']} | {r['frac'] * 100:.0f}% | "
                  f"{t['numpy'] / t['numba']:.1f}x |", flush=True)

    print(f"\nThree-layer RHS, ReLU, n = 4, d = 1, {args.dtype}, ms per evaluation\n")
    print("| m | numpy | numba | BLAS products alone | numba / products | numpy / products |")
    print("|---|---|---|---|---|---|")
    for m in args.three_widths:
        t = three_layer_row(m, 4, 1, args.dtype)
        b = t["BLAS products"]
        print(f"| {m} | {t['numpy'] * 1e3:.3g} | {t['numba'] * 1e3:.3g} | {b * 1e3:.3g} | "
              f"{t['numba'] / b:.2f} | {t['numpy'] / b:.2f} |", flush=True)
    print(f"\n(finished {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
