"""The two-layer RHS of the numba backend over a grid of shapes, for comparing checkouts.

Times ``Problem.rhs_into`` (one thread: set ``NUMBA_NUM_THREADS=1``) for ReLU and tanh,
(n, d) in {4, 64} x {1, 64}, m = 10^3 and 10^5, float64 and float32, the ``fused`` and
``blas`` kernel paths (fused at d = 64 only at m = 10^3), best of ``--rounds`` blocks,
and writes the seconds per call as JSON. To compare two checkouts of flowsolve, run it
under each (``PYTHONPATH`` first on the path, from a directory that is neither
checkout), alternating, then print the best of each side by side::

    cd /tmp && for i in 1 2; do for c in /tmp/wt_old /work/main; do
        NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=$c \\
        /work/main/.venv/bin/python /work/main/benchmarks/rhs_grid.py --out $(basename $c)$i.json
    done; done
    python /work/main/benchmarks/rhs_grid.py --before wt_old1.json wt_old2.json \
        --after main1.json main2.json

(docs/benchmarks.md, "Cold compile and CI (session 22)").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _grid(only):
    for act in ("relu", "tanh"):
        for n, d in ((4, 1), (64, 1), (4, 64), (64, 64)):
            for m in (1000, 100_000):
                for dtype in ("float64", "float32"):
                    for path in ("fused", "blas"):
                        if d == 64 and path == "fused" and m > 1000:
                            continue
                        key = f"{act} n={n} d={d} m={m} {dtype} {path}"
                        if not only or any(f in key for f in only):
                            yield key, act, n, d, m, dtype, path


def measure(rounds, only):
    """``{configuration: best seconds per RHS}`` over the grid (``only``: substrings)."""
    import flowsolve as fs
    from flowsolve.backends.numba_backend import NumbaBackend

    times = {}
    for key, act, n, d, m, dtype, path in _grid(only):
        rng = np.random.default_rng(0)
        data = fs.datasets.Dataset(rng.uniform(-1, 1, (n, d)), rng.standard_normal(n))
        model = fs.TwoLayer(width=m, activation=act,
                            scaling=fs.Scaling.from_gammas(1.2, 0.3, width=m))
        prob = fs.Problem(model, data, seed=0, backend=NumbaBackend(path=path, threads=1),
                          dtype=dtype)
        y = prob.y0_host.astype(dtype)
        out = np.empty_like(y)
        prob.rhs_into(y, out)                              # compile or load
        reps = max(3, int(2e7 / (m * n * (d + 1))))
        best = np.inf
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                prob.rhs_into(y, out)
            best = min(best, (time.perf_counter() - t0) / reps)
        times[key] = best
    return times


def compare(before, after):
    """Markdown table: best of the ``before`` files, best of the ``after`` files, ratio."""
    load = [[json.load(open(f)) for f in files] for files in (before, after)]
    print("| configuration | before (ms) | after (ms) | after / before |")
    print("|---|---|---|---|")
    for key in load[0][0]:
        a, b = (min(run[key] for run in runs) for runs in load)
        print(f"| {key} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON here (default: print it)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=[],
                    help="configurations containing any of these substrings")
    ap.add_argument("--before", nargs="+", metavar="JSON", help="runs of the old checkout")
    ap.add_argument("--after", nargs="+", metavar="JSON", help="runs of the new checkout")
    args = ap.parse_args(argv)
    if bool(args.before) != bool(args.after):
        ap.error("--before and --after go together")
    if args.before:
        compare(args.before, args.after)
        return
    text = json.dumps(measure(args.rounds, args.only), indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
