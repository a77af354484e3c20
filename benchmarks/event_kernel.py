"""The event re-integration (``Switching.integrate_neurons``): compiled against NumPy.

Runs a digits solve (n = 256, m = ``--width``, gamma = 0.5, numba backend) to ``t = 3``
with ``--method`` (``sliding``: the cubic step residual; ``expgn2``: with the Gram matrix's
linear modes), captures the arguments of its first event re-integration and times the
compiled kernel and the NumPy reference on them (best of 3). Both must make the same
decisions: the script prints the largest state difference and whether the sliding sets
agree. docs/benchmarks.md, "Event re-integration on the CPU".

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/event_kernel.py --method expgn2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import flowsolve as fs
from flowsolve.models import two_layer_structure as tls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="sliding", choices=["sliding", "expgn2"])
    ap.add_argument("--width", type=int, default=1000)
    args = ap.parse_args(argv)
    m = args.width
    data = fs.datasets.digits(n=256)
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(0.5, 0.0, m), asi=True), data,
                      seed=0, backend="numba")
    captured = []
    real = tls.Switching.integrate_neurons

    def capture(self, *a, **k):
        if not captured:
            captured.append((self, a, k))
        return real(self, *a, **k)

    tls.Switching.integrate_neurons = capture
    try:
        fs.solve(prob, args.method, t_end=3.0, save_at=[0.0], progress=False, rtol=1e-7,
                 atol=1e-7)
    finally:
        tls.Switching.integrate_neurons = real
    compiled, a, k = captured[0]
    reference = prob.model.make_switching(np, data, np.float64)
    print(f"{args.method}: {a[0].shape[0]} event neurons, {a[5]} substeps")
    outs = {}
    for name, sw in (("compiled", compiled), ("numpy", reference)):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            outs[name] = sw.integrate_neurons(*a, **k)
            best = min(best, time.perf_counter() - t0)
        print(f"  {name}: {1e3 * best:.1f} ms, {outs[name][3]:.0f} neuron-RHS")
    c, r = outs["compiled"], outs["numpy"]
    print(f"  max |w difference| {np.abs(c[1] - r[1]).max():.1e}, same sliding sets: "
          f"{bool((c[2] == r[2]).all())}")


if __name__ == "__main__":
    main()
