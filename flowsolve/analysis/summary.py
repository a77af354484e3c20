"""Printable summaries of an analysed sweep (used by the CLI and the demo)."""

from __future__ import annotations

import numpy as np

from .boundary import zero_crossings
from .regimes import REGIME_NAMES, classify

__all__ = ["L21_SLOPES", "crossing_table", "grid_table", "slope_table", "summarize"]

#: [L21]'s fitted S_w at gamma' = 0 (THEORY.md section 3)
L21_SLOPES = {0.5: -0.506, 1.0: 0.007, 1.75: 0.372}


def slope_table(exps, quantity: str = "rd_w_final", gamma_prime: float = 0.0) -> str:
    """Slopes along ``gamma`` at one ``gamma'`` with their intervals, beside [L21]'s."""
    ex = exps.sel(quantity=quantity) if "quantity" in exps.dims else exps
    if "gamma_prime" in ex.dims:
        gps = ex["gamma_prime"].values
        j = int(np.argmin(np.abs(gps - gamma_prime)))
        if abs(gps[j] - gamma_prime) > 1e-9:
            return f"(no gamma' = {gamma_prime} in the grid)"
        ex = ex.isel(gamma_prime=j)
    lines = [f"{quantity} at gamma' = {gamma_prime:g}",
             f"{'gamma':>7} {'S':>8} {'stderr':>8} {'interval':>19} {'[L21]':>7}"]
    for g in ex["gamma"].values:
        e = ex.sel(gamma=g)
        ref = next((v for k, v in L21_SLOPES.items() if abs(k - g) < 1e-9), None)
        lo = float(np.fmin(e["ci_low"], e["boot_low"])) if "boot_low" in e else float(e["ci_low"])
        hi = float(np.fmax(e["ci_high"], e["boot_high"])) if "boot_high" in e \
            else float(e["ci_high"])
        lines.append(f"{g:7.3f} {float(e['slope']):8.3f} {float(e['stderr']):8.3f} "
                     f"[{lo:8.3f},{hi:8.3f}] " + (f"{ref:7.3f}" if ref is not None else "      -"))
    return "\n".join(lines)


def crossing_table(exps, quantity: str = "rd_w_final") -> str:
    """Measured zero crossings ``gamma*`` per ``gamma'`` beside the theory's."""
    zc = zero_crossings(exps, quantity)
    lines = [f"{'gamma_prime':>11} {'gamma*':>8} {'+-':>6} {'theory':>7} {'crossings':>9}"]
    for gp in zc["gamma_prime"].values:
        z = zc.sel(gamma_prime=gp)
        lines.append(f"{gp:11.2f} {float(z['gamma_star']):8.3f} {float(z['gamma_star_err']):6.3f}"
                     f" {float(z['theory']):7.3f} {int(z['n_crossings']):9d}")
    return "\n".join(lines)


def grid_table(exps, quantity: str, tol: float = 0.05) -> str:
    """Every grid point's slope, interval half-width and label (any grid dimensions)."""
    lab = classify(exps, quantity, tol=tol)
    flat = lab.to_dataframe().reset_index()
    dims = [d for d in lab["slope"].dims]
    lines = [quantity, " ".join(f"{d:>8}" for d in dims) + f" {'S':>8} {'+-':>7} label"]
    for _, r in flat.iterrows():
        lines.append(" ".join(f"{r[d]:8.3f}" for d in dims)
                     + f" {r['slope']:8.3f} {r['uncertainty']:7.3f} "
                     + REGIME_NAMES[int(r['regime'])])
    return "\n".join(lines)


def summarize(exps, quantity: str = "rd_w_final", tol: float = 0.05) -> str:
    """Slope table at gamma' = 0, zero crossings, and label agreement with the theory
    (two-layer grids); the full table of slopes and labels otherwise."""
    ex = exps.sel(quantity=quantity) if "quantity" in exps.dims else exps
    if not {"gamma", "gamma_prime"} <= set(ex["slope"].dims):
        return grid_table(exps, quantity, tol)
    parts = [slope_table(exps, quantity)]
    if "gamma_prime" in exps.dims and "gamma" in exps.dims:
        parts.append(crossing_table(exps, quantity))
    lab = classify(exps, quantity, tol=tol)
    if "theory" in lab:
        n = int(lab["regime"].size)
        counts = {REGIME_NAMES[c]: int((lab["regime"] == c).sum()) for c in (-1, 0, 1, -2)}
        parts.append(f"labels {counts}; agree with theory at {int(lab['agree'].sum())}/{n} "
                     f"points, conflicts (linear vs condensed) at {int(lab['conflict'].sum())}")
    return "\n\n".join(parts)
