"""[L21] Figures 3(d) and 4 on the 1-D four points: RD vs m, and the phase diagram.

Runs a two-layer ReLU sweep (ASI, dopri5, stop at MSE 1e-6) through flowsolve.run_sweep
(resumable: rerunning reuses finished run files under --out), then the analysis:
scaling exponents S of RD* vs m with fit and seed intervals, regime labels against the
theory, zero crossings gamma*(gamma'), and the figures in docs/img/.

    .venv/bin/python examples/l21_phase_diagram.py              # reduced grid (this machine)
    .venv/bin/python examples/l21_phase_diagram.py --full       # [L21]'s grid and widths (~45 min)

The reduced grid (default) keeps gamma' in {-0.4, -0.2, 0, 0.2, 0.4}, gamma in
{0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.6} and widths 250..2000 (one seed). --full runs
[L21]'s widths 1000..40000 on gamma' -0.4..0.4 x gamma 0.6..1.4 (step 0.1, plus 0.95 and
1.05): 495 runs, 5,325 s of compute, 36 min wall on 2 cores shared with other work
(docs/gallery.md), and replays the adaptive boundary mode on those runs.
"""

import argparse
import os
import sys
import time

import numpy as np

import flowsolve as fs
import flowsolve.analysis as fa
import flowsolve.plotting as fp

REDUCED = {"gamma": [0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.6],
               "gamma_prime": [-0.4, -0.2, 0.0, 0.2, 0.4], "widths": [250, 500, 1000, 2000],
               "seeds": [0]}
#: THEORY.md section 3: gamma' -0.4..0.4 step 0.1, gamma 0.6..1.4 step 0.1 and finer near 1
FULL = {"gamma": [0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4],
            "gamma_prime": [round(-0.4 + 0.1 * i, 1) for i in range(9)],
            "widths": [1000, 5000, 10000, 20000, 40000], "seeds": [0]}
#: rtol 1e-4 on the displacement: RD* within 0.01% of rtol 1e-6 runs at 10-50x less work
#: (ReLU kinks make the cost of tight tolerances grow like 1/tol; docs/gallery.md)
SOLVER = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-7, "error_norm": "displacement",
          "stop_at_loss": 5e-7, "t_end": 1e13, "max_steps": 300000, "backend": "numba"}


def spec_for(grid):
    return fs.SweepSpec(model="two_layer", data="four_points",
                        grid={"gamma": grid["gamma"], "gamma_prime": grid["gamma_prime"]},
                        widths=grid["widths"], seeds=grid["seeds"], solver=dict(SOLVER),
                        model_options={"activation": "relu", "asi": True},
                        save={"params": False})


def adaptive_replay(exps, ds, quantity="rd_w_final", tol=0.1 + 1e-9):
    """The adaptive boundary mode (bisection in gamma per gamma') replayed on this grid's
    own runs: an evaluator that looks the slopes up instead of running them, so it shows
    which points the adaptive mode would have run and what they cost (their summed run
    time) against the whole grid. Brackets [min gamma, max gamma] halved to ``tol`` land on
    grid points when the grid's step divides them (0.8 / 2^k here)."""
    ex = exps.sel(quantity=quantity) if "quantity" in exps.dims else exps
    gammas = ex["gamma"].values
    used = set()

    def lookup(points):
        out = []
        for g, gp in points:
            i = int(np.argmin(np.abs(gammas - g)))
            if abs(gammas[i] - g) > 1e-9:
                raise ValueError(f"adaptive replay needs gamma = {g:g} on the grid")
            used.add((float(gammas[i]), float(gp)))
            out.append(float(ex["slope"].sel(gamma=gammas[i], gamma_prime=gp,
                                             method="nearest")))
        return out

    gps = ex["gamma_prime"].values
    res = fa.bisect_boundary(lookup, gps, lo=float(gammas.min()), hi=float(gammas.max()),
                             tol=tol)
    wall = ds["wall_time"]
    wall = wall.sum([d for d in wall.dims if d not in ("gamma", "gamma_prime")])
    cost = sum(float(wall.sel(gamma=g, gamma_prime=gp, method="nearest")) for g, gp in used)
    print(f"adaptive replay (bisection to {tol:g} in gamma): {len(used)} grid points "
          f"({res.attrs['evaluations']} evaluations) against {gammas.size * gps.size} for the "
          f"grid; run time {cost:.0f} s against {float(wall.sum()):.0f} s")
    print(f"{'gamma_prime':>11} {'gamma* (adaptive)':>18} {'+-':>6} {'theory':>7}")
    theory = fa.theory_gamma_star(gps)
    for j, gp in enumerate(gps):
        r = res.sel(gamma_prime=gp)
        print(f"{gp:11.2f} {float(r['gamma_star']):18.3f} {float(r['gamma_star_err']):6.3f} "
              f"{float(theory[j]):7.3f}")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="[L21]'s grid and widths (hours)")
    p.add_argument("--out", default="out/l21_phase")
    p.add_argument("--img", default="docs/img")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-run", action="store_true", help="only analyse the existing --out")
    a = p.parse_args(argv)
    grid = FULL if a.full else REDUCED
    t0 = time.perf_counter()
    if not a.no_run:
        rep = fs.run_sweep(spec_for(grid), a.out, workers=a.workers,
                           progress=fs.sweep.print_run)
        print(f"sweep: {rep.ran} runs computed, {rep.skipped} reused, {len(rep.failed)} "
              f"failed, {rep.wall_time:.0f} s")
    ds = fs.open_sweep(a.out)
    cpu = float(np.nansum(ds["wall_time"].values))
    exps = fa.scaling_exponents(ds)
    fs.io.save(exps, os.path.join(a.out, "exponents.nc"))
    print(fa.summarize(exps, "rd_w_final"))
    print()
    print(fa.slope_table(exps, "rd_w_max_final"))
    lab = fa.classify(exps, "rd_w_final")
    fp.phase_diagram(exps, "rd_w_final", labels=lab,
                     path=os.path.join(a.img, "l21_phase_diagram.png"),
                     title=f"[L21] Fig. 4 ({'full' if a.full else 'reduced'} grid, m = "
                           f"{grid['widths'][0]}..{grid['widths'][-1]}): S of RD* vs m")
    fp.rd_vs_width(ds, exps, "rd_w_final", select={"gamma_prime": 0.0},
                   path=os.path.join(a.img, "l21_rd_vs_m_grid.png"),
                   title="RD* vs m at gamma' = 0 (sweep grid)")
    fp.loss_curves(ds, hue="gamma", select={"gamma_prime": 0.0, "width": grid["widths"][-1]},
                   path=os.path.join(a.img, "l21_loss_curves.png"),
                   title=f"loss, gamma' = 0, m = {grid['widths'][-1]}")
    if a.full:
        adaptive_replay(exps, ds)
    print(f"compute: {cpu:.0f} s summed over runs; wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
