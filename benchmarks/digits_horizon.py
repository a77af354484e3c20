"""Digits (n = 256, d = 64) at a short horizon: `sliding`, `dopri5` and gradient descent.

The issue's T* (loss 1e-4) is out of reach on digits on this machine (docs/benchmarks.md,
"Compiled event handling..."), so this compares the methods at ``t = --t-end``: the
reference is `sliding` at rtol = atol = ``--ref-tol`` (its distance to the run at 10x that
tolerance is printed), the methods run at ``--tols``, GD at ``N = t lambda_max x
--gd-factors`` steps (or ``--gd-steps``); errors are ``max |y - y_ref|``, work ``nfev + njev``
(RHS-equivalents), wall time in seconds. Each configuration runs ``--repeats`` times
after one warm-up solve per method (compilation), methods interleaved, so that a run's
times can be compared side by side.

``--ref-cache FILE.npy`` keeps the reference state between runs (it is computed and
saved when the file does not exist; the file name should say the configuration).

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/digits_horizon.py --width 1000
    ... --gamma 1 --t-end 300 --ref-tol 1e-12 --tols 1e-8 1e-9 --gd-steps 2048 4096
    ... --gamma 1.75 --t-end 1e6 --methods sliding --tols 1e-6 1e-7 1e-8 --ref-tol 1e-9 \
        --ref-substeps 32 --gd-steps 4000 16000 64000       # the condensed regime
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import flowsolve as fs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--t-end", type=float, default=20.0)
    ap.add_argument("--methods", nargs="+", default=["sliding", "dopri5"])
    ap.add_argument("--tols", nargs="+", type=float, default=[1e-6, 1e-7, 1e-8, 1e-9])
    ap.add_argument("--gd-factors", nargs="+", type=float, default=[1, 2, 8, 32])
    ap.add_argument("--gd-steps", nargs="+", type=int, default=None,
                    help="GD step counts (instead of --gd-factors)")
    ap.add_argument("--ref-tol", type=float, default=1e-11)
    ap.add_argument("--ref-substeps", type=int, default=None,
                    help="RK4 substeps of the reference's event re-integration "
                         "(solve's event_substeps; default 8)")
    ap.add_argument("--ref-cache", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    m, tend = args.width, args.t_end
    data = fs.datasets.digits(n=256)
    prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(args.gamma, 0.0, m), asi=True),
                      data, seed=0, backend="numba")

    def run(method, tol=None, **kw):
        kw = {k: v for k, v in kw.items() if v is not None}
        t = time.perf_counter()
        s = fs.solve(prob, method, t_end=tend, save_at=[0.0], progress=False, rtol=tol or 1e-3,
                     atol=tol or 1e-3, max_steps=10**7, **kw)
        return s, time.perf_counter() - t

    if args.ref_cache and os.path.exists(args.ref_cache):
        y_ref = np.load(args.ref_cache)
        print(f"# reference: {args.ref_cache}")
    else:
        ref, w = run("sliding", args.ref_tol, event_substeps=args.ref_substeps)
        loose, _ = run("sliding", 10 * args.ref_tol, event_substeps=args.ref_substeps)
        y_ref = ref.y_final
        print(f"# reference: sliding at {args.ref_tol:g}, "
              f"{ref.stats.nfev + ref.stats.njev} RHS-eq, {w:.1f} s; distance to "
              f"{10 * args.ref_tol:g}: {np.abs(loose.y_final - y_ref).max():.2e}")
        if args.ref_cache:                        # atomically: a killed run leaves no file
            fs.io.write_atomic(args.ref_cache, lambda tmp: np.save(tmp, y_ref))
    lin = prob.model.make_jacobian(np, data, np.float64)(prob.y0_host)
    lam = float(np.linalg.eigvalsh(lin.gram() / data.n)[-1])
    gd_steps = args.gd_steps or [max(1, math.ceil(f * tend * lam)) for f in args.gd_factors]
    print(f"# digits m = {m}, gamma = {args.gamma}, t = {tend}; lambda_max(K/n) = {lam:.3g}")
    for method in args.methods:
        run(method, 1e-3)                                      # compile
    run("euler", dt=tend)
    print(f"{'method':>8} {'rtol / N':>9} {'error':>9} {'RHS-eq':>8} {'steps':>7} {'wall s':>7}")
    for _ in range(args.repeats):
        for method in args.methods:
            for tol in args.tols:
                s, w = run(method, tol)
                print(f"{method:>8} {tol:9.1e} {np.abs(s.y_final - y_ref).max():9.2e} "
                      f"{s.stats.nfev + s.stats.njev:8d} {s.stats.steps:7d} {w:7.2f}",
                      flush=True)
        for N in gd_steps:
            s, w = run("euler", dt=tend / N)
            print(f"{'gd':>8} {N:9d} {np.abs(s.y_final - y_ref).max():9.2e} "
                  f"{s.stats.nfev:8d} {s.stats.steps:7d} {w:7.2f}", flush=True)


if __name__ == "__main__":
    main()
