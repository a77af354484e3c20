"""Initial condensation with small initialisation [C23, Z22b]: tanh, x tanh(x) and ReLU.

For each activation, one two-layer run from a small initialisation on a 1-D target, with
parameter snapshots; the analysis finds the time at which the active neurons first
concentrate on one axis (condensation degree lambda_max/trace >= 0.9), compares the axis
with +-z/|z|, z = (1/n) sum_i y_i (x_i, 1), and counts orientation clusters over time
against the bound 2p (p: the activation's multiplicity).

    .venv/bin/python examples/initial_condensation.py
"""

import argparse
import os
import sys

import numpy as np

import flowsolve as fs
import flowsolve.analysis as fa
import flowsolve.plotting as fp

#: the runs stop after this many steps (the initial stage is over long before)
MAX_STEPS = 6000


def data():
    x = np.linspace(-1, 1, 12)[:, None]
    return fs.Dataset(x, np.sin(np.pi * x[:, 0]) + 0.5, name="sin_plus_half")


def run(activation, width, scale_exp, seed=0, t_end=1e9):
    beta = width ** -scale_exp
    sc = fs.Scaling(alpha=1.0, beta1=beta, beta2=beta, width=width)
    prob = fs.Problem(fs.TwoLayer(width, sc, activation), data(), seed=seed)
    snaps = np.concatenate([[0.0], np.geomspace(t_end * 1e-7, t_end, 36)])
    return fs.solve(prob, "dopri5", rtol=1e-6, atol=1e-12, t_end=t_end, snapshots=snaps,
                    stop_at_loss=1e-5, max_steps=MAX_STEPS, progress=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--scale-exp", type=float, default=1.0,
                   help="beta1 = beta2 = width**-scale_exp, alpha = 1 (small init)")
    p.add_argument("--img", default="docs/img")
    p.add_argument("--out", default="out/initial_condensation")
    a = p.parse_args(argv)
    import matplotlib.pyplot as plt

    acts = ("tanh", "xtanh", "relu")
    fig, axes = plt.subplots(len(acts), 3, figsize=(15, 4.2 * len(acts)))
    for row, act in enumerate(acts):
        sol = run(act, a.width, a.scale_exp)
        ds = sol.to_xarray()
        fs.io.save(ds, os.path.join(a.out, f"{act}.nc"))
        res = fa.initial_condensation(ds, threshold=0.9)
        zang = np.arctan2(res["z_direction"][1], res["z_direction"][0])
        ts = res["snapshot_time"]
        # the first snapshot at or after the condensation time (the last one if none)
        j = int(np.searchsorted(ts, res["time"])) if np.isfinite(res["time"]) else len(ts) - 1
        j = min(j, len(ts) - 1)
        w, av = ds["w_snapshot"].values[j], ds["a_snapshot"].values[j]
        amp = np.abs(av) * np.linalg.norm(w, axis=1)
        print(f"{act}: {sol.status} at t={sol.t_final:.3g}, loss {sol.final['loss']:.3g}; "
              f"condensation time {res['time']:.3g}"
              + (f" (x growth rate = {res['time_scaled']:.2f})" if "time_scaled" in res else "")
              + f", |cos(axis, z)| = {res['alignment']:.4f}, clusters at t={ts[j]:.3g}: "
              f"{res['clusters'][j]}, final {res['clusters'][-1]}, bound 2p = "
              f"{res.get('bound', 'n/a')}")
        ax = axes[row, 0]
        ax.scatter(np.arctan2(w[:, 1], w[:, 0]), amp / amp.max(), s=8, c="tab:red",
                   label=f"t = {ts[j]:.2g}")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 2)
        w0 = ds["w_init"].values
        amp0 = np.abs(ds["a_init"].values) * np.linalg.norm(w0, axis=1)
        ax.scatter(np.arctan2(w0[:, 1], w0[:, 0]), amp0 / amp0.max(), s=8, c="0.6",
                   label="initial", zorder=0)
        for ang in (zang, zang - np.sign(zang) * np.pi):
            ax.axvline(ang, color="k", ls="--", lw=1)
        ax.set_xlim(-np.pi, np.pi)
        ax.set_xlabel("orientation atan2(b, w) [rad]  (dashed: +-z/|z|)")
        ax.set_ylabel("amplitude / max")
        ax.set_title(f"{act}: neurons at t = {ts[j]:.2g}")
        ax.legend(fontsize=8)
        fp.cosine_map(w, ax=axes[row, 1], title=f"{act}: ordered cosine map at t = {ts[j]:.2g}")
        fp.condensation_dynamics(res, ax=axes[row, 2], title=f"{act}: condensation over time")
    fig.suptitle(f"initial condensation, small init beta = m^-{a.scale_exp}, m = {a.width}")
    fig.tight_layout()
    fp.savefig(fig, os.path.join(a.img, "initial_condensation.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
