"""Work-precision of gradient-flow solvers on the 1-D four points of [L21].

For each width m and each regime (gamma' = 0; gamma = 0.5 linear, 1 critical, 1.75
condensed; ReLU, ASI) every run integrates the same flow on [0, T], T = the time at which
the reference loss ``1/(2n) sum e^2`` reaches ``--loss-tol``, and is scored by

- ``loss err``: max over the save times of |L(t) - L_ref(t)| / L_ref(t) (log-log
  interpolation of the reference where a run records other times, as fixed steps do);
- ``RD* err``: |RD_w(T) - RD_w,ref(T)| / RD_w,ref(T), the quantity whose scaling in m
  classifies the regime;

against its wall time and its RHS evaluations. Runs:

- flowsolve: dopri5 / tsit5 / dop853 / bs3 on the numba backend, dopri5 on the numpy
  backend, fixed-step gd on numba (dt from min(1.9 / lambda_max(0), T / 50) down by 4x);
- SciPy ``solve_ivp`` RK45 / DOP853 / LSODA called directly on the NumPy RHS;
- torchdiffeq ``odeint`` dopri5 on a PyTorch autograd RHS, and full-batch gradient
  descent in PyTorch (``torch.optim.SGD``, one parameter group per layer so that it is the
  Euler step of the same normalised flow) — the papers' method. Skipped without torch.

The reference is flowsolve's DOP853 on the numba backend at the tightest rtol it reaches
within ``--ref-budget`` seconds, starting at 1e-6 and tightening tenfold (ReLU's kinks
make the cost of explicit RK grow like 1/tol, see docs/benchmarks.md); its error is
estimated by the difference to the previous, tenfold looser, reference.

Tables are printed as markdown; ``--json`` saves every run, ``--plot`` the figure::

    .venv/bin/python benchmarks/work_precision.py --quick
    .venv/bin/python benchmarks/work_precision.py --widths 1e3 1e4 --json out/wp.json \\
        --plot docs/img/work_precision.png
    .venv/bin/python benchmarks/work_precision.py --replot out/wp.json --plot fig.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

# idle OpenMP threads (torch's, numba's) must sleep, not spin, on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")   # as flowsolve.backends.numba_backend
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peers import Budget, TorchTwoLayer, machine, torch_or_none, torchdiffeq_or_none

import flowsolve as fs
from flowsolve.solvers.driver import log_grid


# -- problems and the reference ---------------------------------------------------------------
def make_problem(m, gamma, gamma_prime, seed, backend="numba"):
    s = fs.Scaling.from_gammas(gamma=gamma, gamma_prime=gamma_prime, width=m)
    model = fs.TwoLayer(width=m, scaling=s, activation="relu", asi=True)
    return fs.Problem(model, fs.datasets.four_points(), seed=seed, backend=backend)


def reference(prob, loss_tol, budget, rtol0=1e-6, rtol_min=1e-12):
    """Tightest affordable DOP853 run to ``loss_tol``; returns (T, grid, curve, info)."""
    runs = []
    rtol = rtol0
    while rtol >= rtol_min * (1 - 1e-9):
        t0 = time.perf_counter()
        sol = fs.solve(prob, method="dop853", rtol=rtol, atol=rtol * 1e-3, t_end=1e12,
                       stop_at_loss=loss_tol, save_at=40, progress=False,
                       max_steps=10**8)
        wall = time.perf_counter() - t0
        runs.append((rtol, sol, wall))
        if wall * 12 > budget:           # the next, tenfold tighter, one would not fit
            break
        rtol /= 10
    rtol, sol, wall = runs[-1]
    info = {"rtol": rtol, "nfev": sol.stats.nfev, "wall": wall, "T": sol.t_final,
            "rd": sol.final["rd_w"], "self_err_rd": math.nan, "self_err_T": math.nan}
    if len(runs) > 1:
        prev = runs[-2][1]
        info["self_err_rd"] = abs(prev.final["rd_w"] - info["rd"]) / info["rd"]
        info["self_err_T"] = abs(prev.t_final - info["T"]) / info["T"]
    return sol, info


class Scorer:
    """Errors of a run's loss curve and RD* against the reference solution."""

    def __init__(self, ref_sol, T):
        t, L = np.asarray(ref_sol.t), np.asarray(ref_sol["loss"])
        keep = (t > 0) & (t <= T * (1 + 1e-12))
        self.lt, self.lL = np.log(t[keep]), np.log(L[keep])
        self.T = T
        self.rd = None

    def loss_ref(self, t):
        return np.exp(np.interp(np.log(t), self.lt, self.lL))

    def score(self, t, L, rd):
        t, L = np.asarray(t, float), np.asarray(L, float)
        ok = (t > 0) & (t <= self.T * (1 + 1e-9)) & (t >= np.exp(self.lt[0]))
        if not np.isfinite(L[ok]).all() or not math.isfinite(rd):
            return math.inf, math.inf
        lerr = float(np.max(np.abs(L[ok] / self.loss_ref(t[ok]) - 1.0))) if ok.any() else math.nan
        return lerr, abs(rd - self.rd) / self.rd


def save_grid(T, per_decade=10):
    g = log_grid(T, t_min=1e-2, per_decade=per_decade)
    return g[g > 0]


# -- runners: each returns dict(nfev, steps, wall, t, loss, rd) or raises Budget ------------------
def run_flowsolve(prob, method, T, budget, **kw):
    grid = save_grid(T)
    t0 = time.perf_counter()
    rhs = prob._rhs

    def timed(y, out):
        if time.perf_counter() - t0 > budget:
            raise Budget
        return rhs(y, out)

    prob._rhs = timed
    try:
        sol = fs.solve(prob, method=method, t_end=T, save_at=grid, progress=False,
                       max_steps=10**8, **kw)
    finally:
        prob._rhs = rhs
    wall = time.perf_counter() - t0
    if sol.status != fs.Status.SUCCESS:
        raise Budget(sol.message)
    return {"nfev": sol.stats.nfev, "steps": sol.stats.steps, "wall": wall,
            "t": sol.t, "loss": sol["loss"], "rd": sol.final["rd_w"]}


def run_scipy(prob_np, method, T, budget, rtol, atol):
    from scipy.integrate import solve_ivp

    P = prob_np.size
    if method in ("LSODA", "BDF", "Radau") and 8.0 * P * P > 2e9:
        raise Budget(f"dense {P} x {P} Jacobian ({8.0 * P * P / 1e9:.0f} GB)")
    grid = save_grid(T)
    t0 = time.perf_counter()

    def fun(t, y):
        if time.perf_counter() - t0 > budget:
            raise Budget
        return prob_np.rhs(t, y)

    sol = solve_ivp(fun, (0.0, T), prob_np.y0_host, method=method, rtol=rtol, atol=atol,
                    t_eval=grid)
    if sol.status != 0:
        raise Budget(sol.message)
    loss = [prob_np.loss(y) for y in sol.y.T]
    wall = time.perf_counter() - t0
    rd = prob_np.relative_changes(sol.y[:, -1])["rd_w"]
    return {"nfev": sol.nfev, "steps": len(sol.t), "wall": wall, "t": sol.t, "loss": loss,
            "rd": rd}


def run_torchdiffeq(tt, T, budget, rtol, atol):
    torch, tde = tt.torch, torchdiffeq_or_none()
    grid = torch.tensor(np.r_[0.0, save_grid(T)], dtype=tt.dtype)
    t0 = time.perf_counter()
    tt.nfev = 0

    def func(t, y):
        if time.perf_counter() - t0 > budget:
            raise Budget
        return tt.grad_flow(y)[0]

    with torch.no_grad():
        ys = tde.odeint(func, tt.y0, grid, method="dopri5", rtol=rtol, atol=atol)
        loss = [float(tt.loss_t(y)) for y in ys[1:]]
    wall = time.perf_counter() - t0
    return {"nfev": tt.nfev, "steps": math.nan, "wall": wall, "t": grid[1:].numpy(),
            "loss": loss, "rd": tt.rd_w(ys[-1])}


def run_torch_gd(tt, T, budget, dt):
    """Full-batch GD: SGD with one group per layer (lr = dt * mobility)."""
    torch = tt.torch
    M = tt.M
    a = tt.y0[:M].clone().requires_grad_(True)
    w = tt.y0[M:].clone().requires_grad_(True)
    mu_a, mu_w = float(tt.mu[0]), float(tt.mu[-1])
    opt = torch.optim.SGD([{"params": [a], "lr": dt * mu_a}, {"params": [w], "lr": dt * mu_w}])
    grid = save_grid(T)
    steps = math.ceil(T / dt * (1 - 1e-12))
    ts, losses = [], []
    gi = 0
    t0 = time.perf_counter()
    for k in range(steps + 1):
        opt.zero_grad()
        loss = tt.loss_t(torch.cat([a, w]))
        tk = k * dt
        while gi < len(grid) and grid[gi] <= tk * (1 + 1e-12):
            ts.append(tk)
            losses.append(float(loss))
            gi += 1
        if k == steps:
            break
        loss.backward()
        opt.step()
        if k % 64 == 0 and time.perf_counter() - t0 > budget:
            raise Budget
    wall = time.perf_counter() - t0
    if not math.isfinite(losses[-1]):
        raise Budget("diverged")
    with torch.no_grad():
        rd = tt.rd_w(torch.cat([a, w]))
    return {"nfev": steps + 1, "steps": steps, "wall": wall, "t": ts, "loss": losses, "rd": rd}


def lambda_max(prob, iters=30):
    """Largest eigenvalue of -d(rhs)/dy at y0 (power iteration, finite differences)."""
    y0 = prob.backend.to_numpy(prob.y0).astype(float)
    f0 = np.empty_like(y0)
    pn = prob.with_backend("numpy")
    pn.rhs_into(y0, f0)
    v = np.random.default_rng(1).standard_normal(y0.size)
    lam = 0.0
    for _ in range(iters):
        v /= np.linalg.norm(v)
        eps = 1e-7 * max(1.0, np.linalg.norm(y0))
        f1 = np.empty_like(y0)
        pn.rhs_into(y0 + eps * v, f1)
        Jv = -(f1 - f0) / eps
        lam = float(v @ Jv)
        v = Jv
    return abs(lam)


# -- one regime ----------------------------------------------------------------------------------
def regime(m, gamma, args, torch_on):
    gp = args.gamma_prime
    prob = make_problem(m, gamma, gp, args.seed, "numba")
    prob_np = prob.with_backend("numpy")
    ref_sol, info = reference(prob, args.loss_tol, args.ref_budget, rtol_min=args.ref_rtol)
    T = info["T"]
    sc = Scorer(ref_sol, T)
    sc.rd = info["rd"]
    rows = []
    dead = set()           # series that failed: their costlier settings are skipped

    def add(tool, method, backend, setting, fn):
        key = (tool, method, backend)
        if key in dead:
            rows.append({"tool": tool, "method": method, "backend": backend,
                         "setting": setting, "failed": "skipped (looser setting failed)"})
            return
        try:
            r = fn()
        except MemoryError:
            dead.add(key)
            rows.append({"tool": tool, "method": method, "backend": backend,
                         "setting": setting, "failed": "out of memory"})
            return
        except Budget as exc:
            dead.add(key)
            rows.append({"tool": tool, "method": method, "backend": backend,
                         "setting": setting, "failed": str(exc) or f"> {args.budget:g} s"})
            print(f"    {tool:10s} {method:7s} {backend:6s} {setting:12s} failed", flush=True)
            return
        lerr, rerr = sc.score(r["t"], r["loss"], r["rd"])
        rows.append({"tool": tool, "method": method, "backend": backend, "setting": setting,
                     "nfev": int(r["nfev"]), "steps": r["steps"], "wall": r["wall"],
                     "loss_err": lerr, "rd_err": rerr})
        print(f"    {tool:10s} {method:7s} {backend:6s} {setting:12s} nfev {r['nfev']:>8} "
              f"wall {r['wall']:8.3f} s  loss err {lerr:.2e}  RD* err {rerr:.2e}", flush=True)

    B = args.budget
    for rt in args.rtols:
        at = rt * 1e-3
        kw = {"rtol": rt, "atol": at}
        for meth in args.methods:
            add("flowsolve", meth, "numba", f"rtol {rt:.0e}",
                lambda meth=meth, kw=kw: run_flowsolve(prob, meth, T, B, **kw))
        add("flowsolve", "dopri5", "numpy", f"rtol {rt:.0e}",
            lambda kw=kw: run_flowsolve(prob_np, "dopri5", T, B, **kw))
        for meth in args.scipy:
            add("scipy", meth, "numpy", f"rtol {rt:.0e}",
                lambda meth=meth, rt=rt, at=at: run_scipy(prob_np, meth, T, B, rt, at))
        if torch_on and torchdiffeq_or_none() is not None:
            tt = TorchTwoLayer(prob_np)
            add("torchdiffeq", "dopri5", "torch", f"rtol {rt:.0e}",
                lambda tt=tt, rt=rt, at=at: run_torchdiffeq(tt, T, B, rt, at))
    lam = lambda_max(prob)
    dt0 = min(1.9 / lam, T / 50)    # lambda_max grows as the weights do (condensed regime)
    for k in range(args.gd_rates):
        dt = dt0 / 4**k
        add("flowsolve", "gd", "numba", f"dt {dt:.2e}",
            lambda dt=dt: run_flowsolve(prob, "gd", T, B, dt=dt))
        if torch_on:
            tt = TorchTwoLayer(prob_np)
            add("torch", "gd", "torch", f"dt {dt:.2e}",
                lambda tt=tt, dt=dt: run_torch_gd(tt, T, B, dt))
    return {"m": m, "gamma": gamma, "gamma_prime": gp, "reference": info, "rows": rows,
            "lambda_max": lam}


# -- reporting ---------------------------------------------------------------------------------
def print_regime(res, acc):
    info = res["reference"]
    print(f"\n#### m = {res['m']:g}, gamma = {res['gamma']}, gamma' = {res['gamma_prime']}\n")
    print(f"Reference: DOP853 rtol {info['rtol']:.0e} (numba), {info['nfev']} RHS, "
          f"{info['wall']:.1f} s; T = {info['T']:.5g}, RD* = {info['rd']:.6g}; "
          f"change from the 10x looser reference: RD* {info['self_err_rd']:.1e}, "
          f"T {info['self_err_T']:.1e}. lambda_max(0) = {res['lambda_max']:.3g}.\n")
    print("| tool | method | backend | setting | RHS evals | wall (s) | loss-curve err | RD* err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        if "failed" in r:
            print(f"| {r['tool']} | {r['method']} | {r['backend']} | {r['setting']} | "
                  f"| failed: {r['failed']} | | |")
        else:
            print(f"| {r['tool']} | {r['method']} | {r['backend']} | {r['setting']} | "
                  f"{r['nfev']} | {r['wall']:.3g} | {r['loss_err']:.1e} | {r['rd_err']:.1e} |")
    best = equal_accuracy(res["rows"], acc)
    if not best:
        return
    fs_best = min((v for k, v in best.items() if k[0] == "flowsolve"),
                  key=lambda r: r["wall"], default=None)
    print(f"\nFastest run per tool/method/backend with RD* err <= {acc:g}, and its time "
          f"relative to flowsolve's fastest:\n")
    print("| tool | method | backend | setting | wall (s) | RHS evals | time / flowsolve best |")
    print("|---|---|---|---|---|---|---|")
    for k, r in sorted(best.items(), key=lambda kv: kv[1]["wall"]):
        ratio = r["wall"] / fs_best["wall"] if fs_best else math.nan
        print(f"| {k[0]} | {k[1]} | {k[2]} | {r['setting']} | {r['wall']:.3g} | {r['nfev']} | "
              f"{ratio:.1f}x |")


def print_summary(results, acc):
    """One table over all regimes: each series' fastest time at RD* err <= acc, divided by
    flowsolve's fastest in that regime (``-`` where a series never got there)."""
    cols = [(r["m"], r["gamma"]) for r in results]
    table = {}
    for j, res in enumerate(results):
        best = equal_accuracy(res["rows"], acc)
        fs_best = min((v["wall"] for k, v in best.items() if k[0] == "flowsolve"),
                      default=math.nan)
        for r in res["rows"]:
            table.setdefault((r["tool"], r["method"], r["backend"]), [None] * len(cols))
        for k, v in best.items():
            table[k][j] = v["wall"] / fs_best
    print(f"\nTime to RD* err <= {acc:g}, relative to flowsolve's fastest run in each regime "
          f"(``-``: never reached it within the run budget):\n")
    print("| tool | method | backend | " + " | ".join(f"m={m:g}, gamma={g}" for m, g in cols)
          + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for k, vals in table.items():
        cells = ["-" if v is None else f"{v:.1f}x" for v in vals]
        print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")


def equal_accuracy(rows, acc):
    best = {}
    for r in rows:
        if "failed" in r or not r["rd_err"] <= acc:
            continue
        k = (r["tool"], r["method"], r["backend"])
        if k not in best or r["wall"] < best[k]["wall"]:
            best[k] = r
    return best


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 4.2 * rows_), squeeze=False)
    styles = {}
    markers = "osD^v<>px*h"
    for ax, res in zip(axes.ravel(), results):
        series = {}
        for r in res["rows"]:
            if "failed" in r:
                continue
            series.setdefault(f"{r['tool']} {r['method']} ({r['backend']})", []).append(
                (r["wall"], max(r["rd_err"], 1e-16)))
        for label, pts in sorted(series.items()):
            if label not in styles:        # one marker and colour per series, all panels
                k = len(styles)
                styles[label] = (markers[k % len(markers)], plt.get_cmap("tab20")(k % 20))
            pts.sort()
            x, y = zip(*pts)
            ax.loglog(x, y, marker=styles[label][0], color=styles[label][1], label=label,
                      lw=1, ms=4)
        ax.axhline(1e-3, color="grey", lw=0.8, ls="--")
        ax.set_title(f"m = {res['m']:g}, gamma = {res['gamma']}")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("relative error of RD*")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12 if len(labels) > 4 else 0.07, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nfigure: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[1e3, 1e4])
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.5, 1.0, 1.75])
    ap.add_argument("--gamma-prime", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss-tol", type=float, default=5e-7,
                    help="end of training: loss 1/(2n) sum e^2 (5e-7 = MSE 1e-6 of [L21])")
    ap.add_argument("--rtols", type=float, nargs="*", default=[1e-3, 1e-4, 1e-5, 1e-6])
    ap.add_argument("--methods", nargs="*", default=["dopri5", "tsit5", "dop853", "bs3"])
    ap.add_argument("--scipy", nargs="*", default=["RK45", "DOP853", "LSODA"])
    ap.add_argument("--gd-rates", type=int, default=4,
                    help="GD steps min(1.9/lambda_max(0), T/50) / 4^k")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per run")
    ap.add_argument("--ref-budget", type=float, default=300.0, help="seconds per reference")
    ap.add_argument("--ref-rtol", type=float, default=1e-12, help="tightest reference rtol")
    ap.add_argument("--accuracy", type=float, default=1e-3, help="equal-accuracy level")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (1 is fastest for these sizes here)")
    ap.add_argument("--json", help="save every run here")
    ap.add_argument("--plot", help="save the work-precision figure here (PNG)")
    ap.add_argument("--quick", action="store_true",
                    help="m = 1e3 only, loss tol 1e-4, rtols 1e-3 1e-5, 2 GD rates, 10 s runs")
    ap.add_argument("--replot", nargs="+", metavar="JSON",
                    help="no runs: print the tables and draw --plot from saved --json files")
    args = ap.parse_args(argv)
    if args.replot:
        results = []
        for path in args.replot:
            with open(path) as fh:
                results += json.load(fh)["results"]
        for res in results:
            print_regime(res, args.accuracy)
        print_summary(results, args.accuracy)
        if args.plot:
            plot(results, args.plot)
        return
    if args.quick:
        args.widths = [1e3]
        args.loss_tol = max(args.loss_tol, 1e-4)
        args.rtols = [1e-3, 1e-5]
        args.gd_rates = 2
        args.budget = min(args.budget, 10.0)
        args.ref_budget = min(args.ref_budget, 20.0)
    torch_on = not args.no_torch and torch_or_none() is not None
    if torch_on:
        torch_or_none().set_num_threads(args.torch_threads)
    print(f"machine: {machine()}")
    print(f"options: {vars(args)}")
    results = []
    for w in args.widths:
        for g in args.gammas:
            print(f"\n== m = {w:g}, gamma = {g}", flush=True)
            res = regime(int(w), g, args, torch_on)
            results.append(res)
            print_regime(res, args.accuracy)        # as soon as each regime is done
            if args.json:
                os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
                with open(args.json, "w") as fh:
                    json.dump({"machine": machine(), "options": vars(args),
                               "results": results}, fh, indent=1, default=float)
    print_summary(results, args.accuracy)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
