"""Cost per step of the structure-aware method against dopri5 and gradient descent.

Four points, ASI ReLU, gamma' = 0, seed 0: ``--methods`` (default ``sliding`` and
``dopri5``) at rtol = atol = ``--tol``, GD at ``--gd-steps`` steps, to ``t = 20``
(gamma = 0.5) and ``t = 2000`` (gamma = 1); the second of two runs in one process is
printed (milliseconds per step, steps, RHS-equivalents, the event statistics). On the
cupy backend this is the table "Structure-aware methods on the GPU" of
docs/benchmarks.md.

Usage::

    python benchmarks/step_cost.py --backend cupy --width 100000
"""

from __future__ import annotations

import argparse
import time

import flowsolve as fs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"])
    ap.add_argument("--width", type=int, default=100_000)
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--gd-steps", type=int, default=2000)
    ap.add_argument("--methods", nargs="+", default=["sliding", "dopri5", "gd"],
                    help="adaptive methods at rtol = atol = --tol, and gd")
    args = ap.parse_args(argv)
    m = args.width
    print("| gamma | method | steps | RHS-eq | wall (s) | ms/step | event neurons |")
    print("|---|---|---|---|---|---|---|")
    for gamma, t_end in [(0.5, 20.0), (1.0, 2000.0)]:
        prob = fs.Problem(fs.TwoLayer(m, fs.Scaling.from_gammas(gamma, 0.0, m), asi=True),
                          fs.datasets.four_points(), seed=0, backend=args.backend)
        for name in args.methods:
            method, kw = (("euler", {"dt": t_end / args.gd_steps}) if name == "gd" else
                          (name, {"rtol": args.tol, "atol": args.tol}))
            for _ in range(2):                       # the first run compiles
                t0 = time.perf_counter()
                s = fs.solve(prob, method, t_end=t_end, save_at=[0.0], progress=False,
                             max_steps=10**6, **kw)
                wall = time.perf_counter() - t0
            print(f"| {gamma} | {name} | {s.stats.steps} | {s.stats.nfev + s.stats.njev} | "
                  f"{wall:.3f} | {1e3 * wall / max(1, s.stats.steps):.2f} | "
                  f"{s.stats.extra.get('event_neurons', '-')} |", flush=True)


if __name__ == "__main__":
    main()
