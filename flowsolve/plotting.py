"""Matplotlib figures from Datasets only (a sweep's, its exponents', or one run's).

Every function returns the :class:`matplotlib.figure.Figure` and, given ``path``, saves it
(PNG/PDF/SVG by extension, parent directories created). Matplotlib is imported lazily;
pass ``ax`` to draw into an existing axes where a function draws a single panel.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import ConfigError

__all__ = [
    "condensation_dynamics",
    "cosine_map",
    "layer_phase_diagrams",
    "loss_curves",
    "orientation_scatter",
    "phase_diagram",
    "rd_vs_width",
    "savefig",
]


def _plt():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savefig(fig, path, dpi: int = 130):
    """Save ``fig`` to ``path`` (directories created); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _new(ax, figsize):
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    return fig, ax


def _finish(fig, path):
    if path is not None:
        savefig(fig, path)
    return fig


def _edges(v):
    """Cell edges for a (possibly non-uniform) sorted grid of centres."""
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def _select(exps, quantity):
    if "quantity" in exps.dims:
        if quantity not in exps["quantity"].values:
            raise ConfigError(f"quantity {quantity!r} was not fitted; have "
                              f"{list(map(str, exps['quantity'].values))}")
        return exps.sel(quantity=quantity)
    return exps


def _heat(ax, S, xdim, ydim, vmax=None, cmap="RdBu_r", label="S"):
    from matplotlib.colors import TwoSlopeNorm

    S = S.sortby(xdim).sortby(ydim).transpose(ydim, xdim)
    vals = np.asarray(S.values, dtype=float)
    if vmax is None:
        finite = np.abs(vals[np.isfinite(vals)])
        vmax = float(finite.max()) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    mesh = ax.pcolormesh(_edges(S[xdim].values), _edges(S[ydim].values),
                         np.ma.masked_invalid(vals), cmap=cmap, norm=norm, shading="flat")
    ax.figure.colorbar(mesh, ax=ax, label=label)
    ax.set_xlabel(xdim.replace("gamma_prime", "gamma'"))
    ax.set_ylabel(ydim.replace("gamma_prime", "gamma'"))
    return mesh


def phase_diagram(exps, quantity: str = "rd_w_final", *, ax=None, path=None,
                  crossings: bool = True, theory: bool = True, labels=None, vmax=None,
                  title=None):
    """Heat map of the scaling exponent S over ``(gamma', gamma)`` for two layers.

    Diverging colour map centred at S = 0 (blue: linear, red: condensed); the [L21]
    boundary (black line) and the measured zero crossings ``gamma*(gamma')`` with their
    standard errors (stars). ``labels``: an optional :func:`~flowsolve.analysis.classify`
    result, marked per cell (``o`` where the measured label disagrees with the theory).
    """
    from .analysis import theory_gamma_star, zero_crossings

    ex = _select(exps, quantity)
    fig, ax = _new(ax, (6.0, 4.8))
    _heat(ax, ex["slope"], "gamma_prime", "gamma", vmax=vmax, label=f"S ({quantity})")
    gps = np.sort(np.asarray(ex["gamma_prime"].values, float))
    if theory:
        lo, hi = _edges(gps)[[0, -1]]
        xs = np.linspace(lo, hi, 200)
        ax.plot(xs, theory_gamma_star(xs), "k-", lw=1.5, label="theory boundary [L21]")
    if crossings and ex.sizes["gamma"] >= 2:
        zc = zero_crossings(ex.expand_dims(quantity=[quantity]), quantity)
        ok = np.isfinite(zc["gamma_star"].values)
        if ok.any():
            ax.errorbar(zc["gamma_prime"].values[ok], zc["gamma_star"].values[ok],
                        yerr=zc["gamma_star_err"].values[ok], fmt="*", mfc="gold",
                        mec="k", ecolor="k", ms=13, capsize=3, label="measured S = 0")
    if labels is not None and "agree" in labels:
        bad = labels["agree"].values == 0
        G, GP = np.meshgrid(labels["gamma"].values, labels["gamma_prime"].values,
                            indexing="ij")
        dims = labels["agree"].dims
        if dims != ("gamma", "gamma_prime"):
            bad = labels["agree"].transpose("gamma", "gamma_prime").values == 0
        ax.plot(GP[bad], G[bad], "o", mfc="none", mec="k", ms=5, label="label != theory")
    g = np.asarray(ex["gamma"].values, float)
    ax.set_ylim(*_edges(np.sort(g))[[0, -1]])
    ax.set_xlim(*_edges(gps)[[0, -1]])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8)
    ax.set_title(title or "phase diagram: slope of log RD vs log m")
    return _finish(fig, path)


def rd_vs_width(ds, exps=None, quantity: str = "rd_w_final", *, select=None, along="gamma",
                ax=None, path=None, title=None):
    """RD against width (log-log) with the fitted power laws, one colour per ``along`` value.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep with ``width`` (and optionally ``seed``) and ``quantity``.
    exps : xarray.Dataset, optional
        Its exponents; computed (without bootstrap) if omitted.
    select : dict, optional
        Fixes the other grid coordinates, e.g. ``{"gamma_prime": 0.0}``.
    """
    from .analysis import scaling_exponents, seed_mean

    plt = _plt()
    if quantity not in ds:
        raise ConfigError(f"no variable {quantity!r} in the Dataset")
    sel = dict(select or {})
    da = ds[quantity].sel(sel) if sel else ds[quantity]
    if exps is None:
        exps = scaling_exponents(ds, quantity, n_boot=0)
    ex = _select(exps, quantity)
    ex = ex.sel(sel) if sel else ex
    fig, ax = _new(ax, (5.6, 4.2))
    vals = da[along].values if along in da.dims else [None]
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(vals)))
    m = np.asarray(da["width"].values, float)
    mm = np.geomspace(m.min(), m.max(), 50)
    for c, v in zip(colors, vals):
        d = da.sel({along: v}) if v is not None else da
        e = ex.sel({along: v}) if v is not None else ex
        pts = d.transpose("width", ...).values.reshape(len(m), -1)
        ax.plot(np.repeat(m, pts.shape[1]), pts.ravel(), ".", color=c, alpha=0.4, ms=4)
        ax.plot(m, seed_mean(d).values, "o", color=c, ms=5)
        s, icpt = float(e["slope"]), float(e["intercept"])
        err = float(e["stderr"]) if np.isfinite(float(e["stderr"])) else float("nan")
        lab = f"{along}={v:g}: S={s:.3f}" + (f"$\\pm${err:.3f}" if np.isfinite(err) else "")
        if np.isfinite(s):
            ax.plot(mm, np.exp(icpt) * mm**s, "-", color=c, lw=1.2, label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width m")
    ax.set_ylabel(quantity)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title or "relative change vs width")
    return _finish(fig, path)


def loss_curves(ds, *, hue="width", select=None, ax=None, path=None, title=None):
    """Loss against normalised time (log-log), one line per ``hue`` value (seeds: first).

    ``ds`` is a sweep Dataset (``loss`` over ``time``) or a single run's Dataset.
    """
    plt = _plt()
    if "loss" not in ds:
        raise ConfigError("the Dataset has no 'loss' variable")
    da = ds["loss"]
    if select:
        da = da.sel(select)
    fig, ax = _new(ax, (5.6, 4.2))
    t = np.asarray(ds["time"].values, float)
    hues = da[hue].values if hue in da.dims else [None]
    colors = plt.get_cmap("plasma")(np.linspace(0, 0.85, len(hues)))
    for c, h in zip(colors, hues):
        d = da.sel({hue: h}) if h is not None else da
        extra = [k for k in d.dims if k != "time"]
        if extra:
            d = d.isel({k: 0 for k in extra})
        ok = (t > 0) & np.isfinite(d.values) & (d.values > 0)
        ax.plot(t[ok], d.values[ok], color=c, label=f"{hue}={h:g}" if h is not None else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("normalised time")
    ax.set_ylabel("loss")
    if hues[0] is not None:
        ax.legend(fontsize=8)
    ax.set_title(title or "training loss")
    return _finish(fig, path)


def orientation_scatter(run, *, ax=None, path=None, title=None, log_amplitude=False):
    """Per-neuron amplitude against orientation, initial (grey) and final (red), as in
    [L21] Figure 2 (1-D inputs: orientation ``atan2(b, w)``)."""
    from .analysis import orientation_amplitude

    oa = orientation_amplitude(run)
    if "orientation_init" not in oa:
        raise ConfigError("orientation scatter needs 1-D inputs (orientation_* variables)")
    fig, ax = _new(ax, (5.6, 4.0))
    ax.scatter(oa["orientation_init"], oa["amplitude_init"], s=6, c="0.55", label="initial")
    ax.scatter(oa["orientation_final"], oa["amplitude_final"], s=6, c="tab:red", label="final")
    ax.set_xlim(-np.pi, np.pi)
    ax.set_xlabel("orientation atan2(b, w) [rad]")
    ax.set_ylabel("amplitude |a| |w|")
    if log_amplitude:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title or "neurons: initial vs final")
    return _finish(fig, path)


def cosine_map(run_or_w, *, which="final", active=None, ax=None, path=None, title=None,
               max_neurons: int = 2000):
    """The cosine-similarity matrix of normalised input weights ordered by its leading
    eigenvector (blocks: condensed groups).

    ``run_or_w``: a run Dataset (uses ``w_<which>`` of the first copy) or an (M, D) array.
    ``active``: keep neurons with amplitude >= active * max (run Datasets only).
    """
    from .analysis import active_mask, cosine_matrix, first_copy, leading_order

    if hasattr(run_or_w, "data_vars"):
        run = run_or_w
        name = f"w_{which}"
        if name not in run:
            raise ConfigError(f"the run Dataset has no {name!r}")
        k = first_copy(run)
        w = np.asarray(run[name].values, float)[:k]
        if active is not None:
            amp = np.asarray(run[f"amplitude_{which}"].values, float)[:k]
            w = w[active_mask(amp, active)]
    else:
        w = np.asarray(run_or_w, float)
    if len(w) > max_neurons:
        w = w[np.random.default_rng(0).choice(len(w), max_neurons, replace=False)]
    C = cosine_matrix(w)
    order = leading_order(C)
    fig, ax = _new(ax, (4.8, 4.2))
    im = ax.imshow(C[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_xlabel("neuron (ordered)")
    ax.set_ylabel("neuron (ordered)")
    ax.set_title(title or f"cosine similarity of input weights ({which})")
    return _finish(fig, path)


def layer_phase_diagrams(exps, quantities=("rd_w1_final", "rd_w2_final"), *, x="gamma2",
                         y="gamma3", tol: float = 0.05, path=None, title=None):
    """Three layers: one S heat map per layer, and the four-regime map of [Z22]."""
    from matplotlib.colors import ListedColormap

    from .analysis import FOUR_REGIME_NAMES, classify, crossings_1d, four_regimes

    plt = _plt()
    n = len(quantities)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.8 * (n + 1), 4.0))
    labels = []
    for ax, q in zip(axes, quantities):
        ex = _select(exps, q)
        _heat(ax, ex["slope"], x, y, label=f"S ({q})")
        S = ex["slope"].transpose(x, y)
        pts = [(xv, c[0]) for i, xv in enumerate(S[x].values)
               for c in crossings_1d(S[y].values, S.values[i])]
        if pts:
            ax.plot(*np.array(pts).T, "*", color="gold", mec="k", ms=11, label="S = 0")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_title(q)
        labels.append(classify(exps, q, tol=tol)["regime"])
    four = four_regimes(labels[0], labels[1]).transpose(y, x)
    ax = axes[-1]
    cmap = ListedColormap(["0.85", "tab:blue", "tab:green", "tab:orange", "tab:red"])
    ax.pcolormesh(_edges(four[x].values), _edges(four[y].values), four.values, cmap=cmap,
                  vmin=-1.5, vmax=3.5, shading="flat")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=cmap(i + 1), label=FOUR_REGIME_NAMES[i])
                       for i in range(-1, 4)], fontsize=7, loc="upper left")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title("four regimes")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def condensation_dynamics(result, *, ax=None, path=None, title=None):
    """Condensation degree and cluster count of active neurons over time, from
    :func:`~flowsolve.analysis.initial_condensation`'s result."""
    fig, ax = _new(ax, (5.6, 4.0))
    t = np.asarray(result["snapshot_time"], float)
    ok = t > 0
    ax.plot(t[ok], result["degree"][ok], "o-", color="tab:blue", label="degree")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("normalised time")
    ax.set_ylabel("condensation degree  lambda_max / trace", color="tab:blue")
    if np.isfinite(result.get("time", np.nan)):
        ax.axvline(result["time"], color="k", ls="--", lw=1, label="condensation time")
    ax2 = ax.twinx()
    ax2.plot(t[ok], result["clusters"][ok], "s-", color="tab:red", ms=4)
    ax2.set_ylabel("clusters of active neurons", color="tab:red")
    if "bound" in result:
        ax2.axhline(result["bound"], color="tab:red", ls=":", lw=1)
    ax2.set_ylim(0, max(np.max(result["clusters"]) + 1, 3))
    ax.legend(fontsize=8, loc="center right")
    ax.set_title(title or "initial condensation")
    return _finish(fig, path)
