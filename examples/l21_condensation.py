"""[L21] Figure 2: condensation at gamma = 1.75 vs none at gamma = 0.5 (m = 1000, gamma' = 0).

Two ReLU runs on the 1-D four points (ASI, trained to MSE 1e-6); for each, the scatter of
per-neuron amplitude |a||w| against orientation atan2(b, w), initial vs final, the ordered
cosine-similarity map of the final input weights, and the learned function.

    .venv/bin/python examples/l21_condensation.py
"""

import argparse
import os
import sys

import numpy as np

import flowsolve as fs
import flowsolve.analysis as fa
import flowsolve.plotting as fp


def run(gamma, width, seed=0):
    data = fs.datasets.four_points()
    sc = fs.Scaling.from_gammas(gamma=gamma, gamma_prime=0.0, width=width)
    prob = fs.Problem(fs.TwoLayer(width, sc, "relu", asi=True), data, seed=seed)
    sol = fs.solve(prob, "dopri5", rtol=1e-4, atol=1e-7, error_norm="displacement",
                   t_end=1e13, stop_at_loss=5e-7, progress=False)
    return sol


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--img", default="docs/img")
    p.add_argument("--out", default="out/l21_condensation")
    a = p.parse_args(argv)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for row, gamma in enumerate((1.75, 0.5)):
        sol = run(gamma, a.width)
        ds = sol.to_xarray()
        fs.io.save(ds, os.path.join(a.out, f"gamma={gamma}.nc"))
        oa = fa.orientation_amplitude(ds)
        act = fa.active_mask(oa["amplitude_final"], 0.1)
        k = fa.first_copy(ds)
        nclu = fa.count_clusters(ds["w_final"].values[:k], act)
        print(f"gamma={gamma}: {sol.status}, t={sol.t_final:.3g}, RD*={sol.final['rd_w']:.4g}, "
              f"active neurons {act.sum()}/{k}, orientation clusters {nclu}")
        fp.orientation_scatter(ds, ax=axes[row, 0],
                               title=f"gamma = {gamma}: {nclu} clusters of active neurons")
        fp.cosine_map(ds, active=0.1, ax=axes[row, 1],
                      title=f"gamma = {gamma}: cosine map (active neurons)")
        xs = np.linspace(-0.6, 0.6, 241)
        ax = axes[row, 2]
        ax.plot(xs, sol.problem.model.predict(sol.y_final, xs[:, None]), label="network")
        ax.plot(ds["x"].values[:, 0], ds["y"].values, "ko", label="data")
        ax.set_title(f"gamma = {gamma}: learned function")
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    fig.suptitle(f"[L21] Fig. 2: ReLU, m = {a.width}, gamma' = 0")
    fig.tight_layout()
    fp.savefig(fig, os.path.join(a.img, "l21_condensation.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
