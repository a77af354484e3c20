"""Reproduce Figure 4 of Zhou et al. (NeurIPS 2022): RD(W1) vs width for three-layer ReLU nets.

Four points of [L21] (x in {-1/2, -1/6, 1/6, 1/2}, y = x^2), gamma2 = 0 (all betas 1,
alpha = m^gamma3), gamma3 in {0.9, 1.5, 2.1}, ASI, trained by the gradient flow until the
loss 1/(2n) sum e^2 reaches --stop-at-loss (MSE 1e-6). For each gamma3 the slope of the
least-squares line through (log m, log RD*(W1)) is S_W1 (negative: linear regime,
positive: condensed); the same for RD*(W2). RD* is the relative change at the end of
training (the running maximum is stored in the files too).

Writes under --out: one netCDF file per run, ``summary.nc`` (RD*, run time, peak memory
over gamma3 x width x seed; fitted slopes) and ``z22_figure4.png``.

    python examples/z22_figure4.py --out out/z22 --quick        # widths 50..400, minutes
    python examples/z22_figure4.py --out out/z22                # widths 100..10000, hours

Memory: the middle layer holds 2 m^2 numbers with ASI; dopri5 keeps about 16 state-sized
vectors, so m = 10^4 needs about 12 GiB in float32 (``--dtype auto`` switches to float32
from m = 5000 on) and about 21 GiB in float64.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

import numpy as np

import flowsolve as fs

FULL_WIDTHS = (100, 1000, 2000, 5000, 10000)
QUICK_WIDTHS = (50, 100, 200, 400)
GAMMA3 = (0.9, 1.5, 2.1)


def fit_slope(widths, rd) -> float:
    """Least-squares slope of log(rd) against log(width)."""
    return float(np.polyfit(np.log(widths), np.log(rd), 1)[0])


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every
    ``interval`` seconds from /proc/self/statm (Linux); elsewhere the process-wide
    ``ru_maxrss``. (tracemalloc would be exact but slows small runs several-fold.)"""

    def __init__(self, interval=0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def run_one(gamma3, width, seed, args):
    """One gradient-flow run; returns (solution, wall seconds, peak RSS bytes)."""
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if width >= 5000 else "float64"
    model = fs.ThreeLayer(width, fs.Scaling3.from_gammas(args.gamma2, gamma3, width),
                          activation="relu", asi=not args.no_asi)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        prob = fs.Problem(model, fs.datasets.four_points(), seed=seed, dtype=dtype)
        sol = fs.solve(prob, args.method, rtol=args.rtol, atol=args.rtol * 1e-3,
                       error_norm="displacement", stop_at_loss=args.stop_at_loss,
                       t_end=args.t_end, max_steps=args.max_steps, save_at=5, progress=False)
    wall = time.perf_counter() - t0
    return sol, wall, mem.peak


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    g3s = summary["gamma3"].values
    fig, axes = plt.subplots(1, len(g3s), figsize=(4.2 * len(g3s), 3.8), squeeze=False)
    widths = summary["width"].values
    for ax, g3 in zip(axes[0], g3s):
        for var, marker, color in (("rd_w1", "o", "C0"), ("rd_w2", "s", "C1")):
            rd = summary[var].sel(gamma3=g3).values            # (width, seed)
            geo = np.exp(np.log(rd).mean(axis=1))
            slope = float(summary["slope_" + var].sel(gamma3=g3))
            fit = np.polyfit(np.log(widths), np.log(geo), 1)
            ax.loglog(np.repeat(widths, rd.shape[1]), rd.ravel(), marker, color=color,
                      alpha=0.35, ms=4, mfc="none")
            ax.loglog(widths, geo, marker, color=color,
                      label=f"RD({var[3:].upper()}): slope {slope:+.3f}")
            ax.loglog(widths, np.exp(np.polyval(fit, np.log(widths))), "-", color=color, lw=1)
        ax.set_title(f"gamma3 = {g3:g}, gamma2 = {float(summary.attrs['gamma2']):g}")
        ax.set_xticks(widths)
        ax.set_xticklabels([str(w) for w in widths])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("width m")
        ax.set_ylabel("RD at the end of training")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Three-layer ReLU, four points: relative change vs width "
                 "(after Zhou et al. 2022, Fig. 4)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help=f"widths {QUICK_WIDTHS}")
    p.add_argument("--widths", type=lambda s: tuple(int(v) for v in s.split(",")),
                   help="comma-separated widths (overrides --quick)")
    p.add_argument("--gamma3", type=lambda s: tuple(float(v) for v in s.split(",")),
                   default=GAMMA3)
    p.add_argument("--gamma2", type=float, default=0.0)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--method", default="dopri5")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="relative tolerance on the displacement |y - y0| (default 1e-3)")
    p.add_argument("--stop-at-loss", type=float, default=5e-7,
                   help="loss 1/(2n) sum e^2 at which training stops (5e-7: MSE 1e-6)")
    p.add_argument("--t-end", type=float, default=1e12)
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--dtype", choices=("auto", "float64", "float32"), default="auto")
    p.add_argument("--no-asi", action="store_true", help="plain initialisation (f(0) != 0)")
    p.add_argument("--params-max-width", type=int, default=1000,
                   help="store initial/final parameters in the run files up to this width")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads (the m x m products are memory-bound; 0: library default)")
    args = p.parse_args(argv)
    widths = args.widths or (QUICK_WIDTHS if args.quick else FULL_WIDTHS)
    os.makedirs(args.out, exist_ok=True)

    limiter = None
    if args.blas_threads > 0:
        try:
            from threadpoolctl import threadpool_limits
            limiter = threadpool_limits(args.blas_threads, user_api="blas")
        except ImportError:
            pass

    import xarray as xr

    shape = (len(args.gamma3), len(widths), args.seeds)
    rec = {k: np.full(shape, np.nan) for k in
           ("rd_w1", "rd_w2", "rd_a", "rd_w1_max", "rd_w2_max", "t_final", "loss_final",
            "wall_time", "peak_rss_bytes", "nfev")}
    status = np.empty(shape, dtype=object)
    t_all = time.perf_counter()
    for i, g3 in enumerate(args.gamma3):
        for j, m in enumerate(widths):
            for k in range(args.seeds):
                sol, wall, peak = run_one(g3, m, k, args)
                fin = sol.final
                for key in ("rd_w1", "rd_w2", "rd_a", "rd_w1_max", "rd_w2_max"):
                    rec[key][i, j, k] = fin[key]
                rec["t_final"][i, j, k] = sol.t_final
                rec["loss_final"][i, j, k] = fin["loss"]
                rec["wall_time"][i, j, k] = wall
                rec["peak_rss_bytes"][i, j, k] = peak
                rec["nfev"][i, j, k] = sol.stats.nfev
                status[i, j, k] = sol.status.name
                ds = sol.to_xarray(params=m <= args.params_max_width)
                fs.io.save(ds, os.path.join(args.out, f"run_g3={g3:g}_m={m}_seed={k}.nc"))
                print(f"gamma3={g3:g} m={m:>6} seed={k} {sol.status.name:<9} "
                      f"t={sol.t_final:9.3g} RD(W1)={fin['rd_w1']:.4g} RD(W2)={fin['rd_w2']:.4g} "
                      f"RD(a)={fin['rd_a']:.4g} nfev={sol.stats.nfev:>6} {wall:7.1f} s "
                      f"peak RSS {peak / 2**30:.2f} GiB", flush=True)
    total = time.perf_counter() - t_all
    if limiter is not None:
        limiter.restore_original_limits()

    dims = ("gamma3", "width", "seed")
    summary = xr.Dataset(
        {k: (dims, v) for k, v in rec.items()},
        coords={"gamma3": list(args.gamma3), "width": list(widths), "seed": range(args.seeds)})
    summary["status"] = (dims, status.astype(str))
    for var in ("rd_w1", "rd_w2"):
        geo = np.exp(np.log(rec[var]).mean(axis=2))            # geometric mean over seeds
        summary["slope_" + var] = ("gamma3", [fit_slope(widths, row) for row in geo])
    summary.attrs.update({
        "title": "Zhou et al. 2022 Figure 4: RD vs width, three-layer ReLU, four points",
        "gamma2": args.gamma2, "method": args.method, "rtol": args.rtol,
        "error_norm": "displacement", "stop_at_loss": args.stop_at_loss,
        "asi": int(not args.no_asi),
        "dtype": args.dtype, "total_wall_time": total,
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "flowsolve_version": fs.__version__, "model": "three_layer", "status": "done",
        "command": " ".join(sys.argv),
    })
    fs.io.save(summary, os.path.join(args.out, "summary.nc"))
    png = os.path.join(args.out, "z22_figure4.png")
    plot(summary, png)

    print(f"\nslopes (least squares of log RD* vs log m over m = {list(widths)}):")
    for i, g3 in enumerate(args.gamma3):
        print(f"  gamma3 = {g3:g}: S_W1 = {float(summary['slope_rd_w1'][i]):+.3f}   "
              f"S_W2 = {float(summary['slope_rd_w2'][i]):+.3f}   "
              f"run time {np.nansum(rec['wall_time'][i]):.1f} s")
    print(f"total {total:.1f} s; peak RSS during one run "
          f"{np.nanmax(rec['peak_rss_bytes']) / 2**30:.2f} GiB; process peak RSS "
          f"{summary.attrs['process_peak_rss_bytes'] / 2**30:.2f} GiB")
    print(f"wrote {png} and {len(args.gamma3) * len(widths) * args.seeds + 1} netCDF files "
          f"under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
