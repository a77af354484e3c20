"""[L21] Figure 3(d): RD* vs m at gamma' = 0 for gamma = 0.5, 1 and 1.75, with seeds.

Three seeds per width give the seed-bootstrap interval beside the fit's. [L21] used widths
1000..40000; on this 2-core machine the default is 250..2000 (--widths to change).

    .venv/bin/python examples/l21_rd_vs_m.py
"""

import argparse
import os
import sys

import flowsolve as fs
import flowsolve.analysis as fa
import flowsolve.plotting as fp

SOLVER = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-7, "error_norm": "displacement",
          "stop_at_loss": 5e-7, "t_end": 1e13, "max_steps": 300000}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="out/l21_rd_vs_m")
    p.add_argument("--img", default="docs/img")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    spec = fs.SweepSpec(model="two_layer", data="four_points",
                        grid={"gamma": [0.5, 1.0, 1.75], "gamma_prime": [0.0]},
                        widths=a.widths, seeds=list(range(a.seeds)), solver=dict(SOLVER),
                        save={"params": False})
    rep = fs.run_sweep(spec, a.out, workers=a.workers, progress=fs.sweep.print_run)
    print(f"sweep: {rep.ran} computed, {rep.skipped} reused, {len(rep.failed)} failed, "
          f"{rep.wall_time:.0f} s")
    ds = fs.open_sweep(a.out)
    exps = fa.scaling_exponents(ds)
    print(fa.slope_table(exps, "rd_w_final"))
    print(fa.slope_table(exps, "rd_a_final"))
    print(fa.slope_table(exps, "rd_theta_final"))
    fp.rd_vs_width(ds, exps, "rd_w_final", select={"gamma_prime": 0.0},
                   path=os.path.join(a.img, "l21_rd_vs_m.png"),
                   title=f"[L21] Fig. 3(d): RD* vs m, gamma' = 0, {a.seeds} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
