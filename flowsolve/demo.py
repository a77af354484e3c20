"""`make demo`: the [L21] width sweep at gamma' = 0, then a coarse phase diagram.

Part 1 (the foundation demo): on the 1-D four points, gamma' = 0, gamma in {0.5, 1, 1.75},
widths m in {1000, 5000, 10000, 20000, 40000}; every run is integrated until the loss
(1/(2n) sum e^2) falls to 5e-7 (mean squared error 1e-6, as [L21] trains); prints RD* per
run and the fitted slope S_w per gamma beside [L21]'s; writes one netCDF file per run and
a figure of RD* vs m.

Part 2 (the analysis demo): a coarse (gamma, gamma') grid (18 points) at widths 500..4000, run as a
sweep on the default Dask LocalCluster, then the phase-diagram heat map with the theory's
boundary and the measured zero crossings.

Tolerances: Dormand-Prince 5(4) at rtol 1e-4 (atol 1e-7) on the numba backend. RD* moves
by <= 0.3% between rtol 1e-3 and 1e-4 at m = 1e3 and 1e4 (docs/getting-started.md), far
below the spread that decides a slope; tighter tolerances cost ~1/tol in the condensed
regime (shared/PERFORMANCE.md).

Usage: flowsolve demo --out out [--quick] [--workers 2] [--skip-phase-diagram]
(``make demo`` runs ``flowsolve demo --out out``).
"""

from __future__ import annotations

import os
import sys
import time

from . import analysis, plotting
from .io import save
from .sweep import SweepSpec, open_sweep, run_sweep

SOLVER = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-7, "stop_at_loss": 5e-7,
          "backend": "numba"}


def width_sweep(out, widths, workers):
    spec = SweepSpec(model="two_layer", data="four_points",
                        grid={"gamma": [0.5, 1.0, 1.75], "gamma_prime": [0.0]},
                        widths=widths, seeds=[0], solver=SOLVER,
                        model_options={"activation": "relu", "asi": True},
                        save={"params": False})
    t0 = time.perf_counter()
    run_sweep(spec, out=os.path.join(out, "widths"), workers=workers, progress=True)
    ds = open_sweep(os.path.join(out, "widths")).isel(seed=0, gamma_prime=0)
    print(f"\nPart 1: [L21] width sweep at gamma' = 0 ({time.perf_counter() - t0:.1f} s)")
    print(f"{'gamma':>6} {'width':>7} {'RD*':>10} {'sup RD':>10} {'t_final':>10} "
          f"{'RHS':>8} {'seconds':>8} status")
    for g in ds.gamma.values:
        for m in ds.width.values:
            r = ds.sel(gamma=g, width=m)
            print(f"{g:6.2f} {m:7d} {float(r.rd_w_final):10.4g} {float(r.rd_w_max_final):10.4g}"
                  f" {float(r.t_final):10.3g} {int(r.nfev):8d} {float(r.wall_time):8.1f} "
                  f"{r.status.values!s}")
    full = open_sweep(os.path.join(out, "widths"))
    exps = analysis.scaling_exponents(full, "rd_w_final", n_boot=0)
    print()
    print(analysis.slope_table(exps, "rd_w_final"))
    png = os.path.join(out, "rd_vs_width.png")
    plotting.rd_vs_width(full, exps, "rd_w_final", select={"gamma_prime": 0.0}, path=png,
                         title="RD* vs m at gamma' = 0 (four points)")
    print(f"wrote {png} and {len(widths) * 3} netCDF files under {out}/widths/")


def phase_diagram(out, widths, gammas, gamma_primes, workers):
    spec = SweepSpec(model="two_layer", data="four_points",
                        grid={"gamma": gammas, "gamma_prime": gamma_primes},
                        widths=widths, seeds=[0], solver=SOLVER,
                        model_options={"activation": "relu", "asi": True},
                        save={"params": False})
    t0 = time.perf_counter()
    run_sweep(spec, out=os.path.join(out, "phase"), workers=workers, progress=True)
    ds = open_sweep(os.path.join(out, "phase"))
    exps = analysis.scaling_exponents(ds, "rd_w_final", n_boot=0)
    print(f"\nPart 2: coarse phase diagram, {ds.sizes['gamma'] * ds.sizes['gamma_prime']} grid "
          f"points x {len(widths)} widths ({time.perf_counter() - t0:.1f} s)")
    print(analysis.summarize(exps, "rd_w_final"))
    png = os.path.join(out, "phase_diagram.png")
    plotting.phase_diagram(exps, "rd_w_final", labels=analysis.classify(exps, "rd_w_final"),
                           path=png)
    nc = save(exps, os.path.join(out, "phase_exponents.nc"))
    print(f"wrote {png}, {nc} and the sweep store {out}/phase/")


def run(args) -> int:
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    widths = [100, 200, 400] if args.quick else [1000, 5000, 10000, 20000, 40000]
    width_sweep(args.out, widths, args.workers)
    if not args.skip_phase_diagram:
        phase_diagram(args.out, [100, 200, 400] if args.quick else [500, 1000, 2000, 4000],
                      [0.6, 0.8, 1.0, 1.2, 1.4, 1.6], [-0.4, 0.0, 0.4], args.workers)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    from .cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
