"""OpenMP wait policy: the two-thread numba RHS with a passive wait vs a bounded spin.

Each setting runs in its own subprocess (the OpenMP runtime reads its environment once):
one thread; two threads with ``OMP_WAIT_POLICY=PASSIVE`` only (idle threads sleep at once,
every parallel region pays a wake-up); two threads with ``GOMP_SPINCOUNT=10000`` (what
``flowsolve.backends.numba_backend`` sets: spin ~0.1 ms, then sleep). Prints ms per
two-layer RHS (ReLU, n = 4, d = 1, no ASI, best of 5) and one dopri5 solve.

    .venv/bin/python benchmarks/threads.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import flowsolve as fs
from flowsolve.backends.numba_backend import NumbaBackend
threads = int(sys.argv[1])
def best(fn, reps):
    b = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        b = min(b, (time.perf_counter() - t) / reps)
    return b * 1e3
data = fs.datasets.four_points()
out = {}
for m in (30000, 100000, 1000000):
    model = fs.TwoLayer(width=m, scaling=fs.Scaling.from_gammas(1.0, 0.0, m), asi=False)
    prob = fs.Problem(model, data, seed=0, backend=NumbaBackend(threads=threads,
                                                                  parallel_threshold=1))
    y, o = prob.y0_host.copy(), np.empty_like(prob.y0_host)
    prob.rhs_into(y, o)
    out[f"rhs m={m:.0e}"] = best(lambda: prob.rhs_into(y, o), max(3, int(3e6 // m)))
model = fs.TwoLayer(width=50000, scaling=fs.Scaling.from_gammas(0.5, 0.0, 50000), asi=True)
prob = fs.Problem(model, data, seed=0, backend=NumbaBackend(threads=threads))
kw = dict(method="dopri5", rtol=1e-4, atol=1e-7, t_end=50.0, progress=False)
fs.solve(prob, **kw)
t = time.perf_counter()
sol = fs.solve(prob, **kw)
out[f"dopri5 solve, m=5e4 ASI ({sol.stats.nfev} RHS), s"] = time.perf_counter() - t
print(json.dumps(out))
"""

SETTINGS = {
    "1 thread": ("1", {}),
    "2 threads, passive wait": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, GOMP_SPINCOUNT=10000": ("2", {"OMP_WAIT_POLICY": "PASSIVE",
                                              "GOMP_SPINCOUNT": "10000"}),
}


def main():
    rows = {}
    for label, (threads, extra) in SETTINGS.items():
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update(extra, NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1")
        res = subprocess.run([sys.executable, "-c", CHILD, threads], env=env,
                             capture_output=True, text=True, check=True)
        rows[label] = json.loads(res.stdout.strip().splitlines()[-1])
    keys = list(next(iter(rows.values())))
    print(f"load average {os.getloadavg()[0]:.1f}; ms per RHS (n = 4, d = 1), seconds per solve\n")
    print("| setting | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[k]:.3g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
