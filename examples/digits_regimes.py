"""A digits version of [L21] Figure 5: RD vs m and the slope S across gamma on real data.

[L21] used the first 45 MNIST images (784-dim, scalar label 0-9, full batch). flowsolve
downloads nothing at run time, so this uses scikit-learn's bundled 8x8 digits (64-dim,
unit-norm images, scalar label 0-9) with gamma' = 0 through flowsolve.run_sweep. On this
2-core machine the default is n = 20 images, widths 50..400, and training until the loss
1/(2n) sum e^2 is 1e-2 (about 1e-3 of its initial value): with n = 45 the smallest kernel
eigenvalue makes the linear-regime runs ~10^5 steps long (--n 45 to run [L21]'s size).

    .venv/bin/python examples/digits_regimes.py
"""

import argparse
import os
import sys

import numpy as np

import flowsolve as fs
import flowsolve.analysis as fa
import flowsolve.plotting as fp

GAMMAS = [0.5, 1.0, 1.75]
WIDTHS = [50, 100, 200, 400]
SOLVER = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-7, "error_norm": "displacement",
          "stop_at_loss": 1e-2, "t_end": 1e13, "max_steps": 400000}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="number of digits images")
    p.add_argument("--out", default="out/digits_regimes")
    p.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    p.add_argument("--img", default="docs/img")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    spec = fs.SweepSpec(model="two_layer", data="digits", data_options={"n": a.n},
                        grid={"gamma": GAMMAS, "gamma_prime": [0.0]}, widths=a.widths,
                        seeds=[0], solver=dict(SOLVER), save={"params": False})
    rep = fs.run_sweep(spec, a.out, workers=a.workers, progress=fs.sweep.print_run)
    print(f"sweep: {rep.ran} computed, {rep.skipped} reused, {len(rep.failed)} failed, "
          f"{rep.wall_time:.0f} s")
    ds = fs.open_sweep(a.out)
    exps = fa.scaling_exponents(ds)
    print(fa.slope_table(exps, "rd_w_final"))
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    fp.rd_vs_width(ds, exps, "rd_w_final",
                   select={"gamma_prime": 0.0}, ax=axes[0],
                   title=f"digits (n = {a.n}, d = 64): RD* vs m, gamma' = 0")
    ex = exps.sel(quantity="rd_w_final", gamma_prime=0.0)
    u = fa.uncertainty(ex.expand_dims(quantity=["rd_w_final"])).isel(quantity=0)
    axes[1].errorbar(ex["gamma"], ex["slope"], yerr=u, fmt="o-", capsize=3, label="digits")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].axvline(1, color="k", ls="--", lw=0.8, label="theory: gamma* = 1")
    ref = np.array(sorted(fa.summary.L21_SLOPES.items()))
    axes[1].plot(ref[:, 0], ref[:, 1], "s", color="tab:red", label="[L21] 1-D data")
    axes[1].set_xlabel("gamma")
    axes[1].set_ylabel("S (slope of log RD* vs log m)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("scaling exponent across gamma")
    fig.tight_layout()
    fp.savefig(fig, os.path.join(a.img, "digits_regimes.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
