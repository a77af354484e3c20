"""Scaling exponents: the slope S of log RD vs log m, with uncertainties.

For every grid point (every combination of the dimensions other than ``width`` and
``seed``) and every relative-change quantity (``rd_w_final``, ``rd_w_max_final``,
``rd_a_final``, ``rd_theta_final``, ``rd_w1_final``, ...), fit by ordinary least squares

    log RD(m, seed) = c + S log m + noise

pooling all (width, seed) points of that grid point (THEORY.md section 2). Two
uncertainties are reported:

* **fit**: the standard error of S from the residuals, and the two-sided Student-t
  interval at ``level`` with ``n - 2`` degrees of freedom (valid for independent Gaussian
  noise in log RD);
* **seeds**: a stratified bootstrap over seeds (for each width, resample its seeds with
  replacement; refit), giving the standard deviation and the percentile interval of S.
  Needs at least two seeds; NaN otherwise.

Runs whose ``status`` is not ``"success"`` (when ``require_success``) and values that are
not finite and positive are left out of the fit.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError

__all__ = ["fit_power_law", "ok_mask", "rd_quantities", "scaling_exponents", "seed_mean"]

#: what each output variable of :func:`scaling_exponents` means
_LONG_NAMES = {
    "slope": "scaling exponent S: least-squares slope of log RD vs log m",
    "intercept": "intercept c of log RD = c + S log m",
    "stderr": "standard error of S from the fit residuals",
    "ci_low": "lower end of the Student-t interval of S",
    "ci_high": "upper end of the Student-t interval of S",
    "boot_std": "standard deviation of S over a stratified bootstrap over seeds",
    "boot_low": "lower percentile of S over the bootstrap over seeds",
    "boot_high": "upper percentile of S over the bootstrap over seeds",
    "n_points": "number of (width, seed) points in the fit",
    "n_widths": "number of distinct widths in the fit",
}


def rd_quantities(ds, width_dim: str = "width") -> list[str]:
    """Names of the relative-change variables of ``ds`` that can be fitted against width.

    Every data variable named ``rd_*`` (per run final values and running maxima, e.g.
    ``rd_w_final``, ``rd_w_max_final``, ``rd_w1_final``) that has the ``width`` dimension and
    no ``time`` dimension.
    """
    return [str(k) for k, v in ds.data_vars.items()
            if str(k).startswith("rd_") and width_dim in v.dims and "time" not in v.dims]


def ok_mask(ds, require_success: bool = True):
    """Boolean DataArray (or None): runs that ended with status ``"success"``.

    ``status`` may hold strings (``"success"``), booleans, or integer codes (0 = success).
    Returns None when ``ds`` has no ``status`` variable or ``require_success`` is False.
    """
    if not require_success or "status" not in ds.data_vars:
        return None
    st = ds["status"]
    kind = st.dtype.kind
    if kind in "OUS":
        return st.astype(str) == "success"
    if kind == "b":
        return st
    if kind in "iu":
        return st == 0
    raise ConfigError(f"cannot read run status of dtype {st.dtype}")


def _ols(x, y, w):
    """Weighted (0/1) least squares along the last axis, vectorised over leading axes.

    x : (N,), y : (..., N), w : (..., N) of 0/1. Returns slope, intercept, stderr, n.
    """
    n = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xbar = (w * x).sum(-1) / n
        ybar = (w * y).sum(-1) / n
        dx = (x - xbar[..., None]) * w
        sxx = (dx * dx).sum(-1)
        slope = (dx * (y - ybar[..., None])).sum(-1) / sxx
        intercept = ybar - slope * xbar
        resid = (y - intercept[..., None] - slope[..., None] * x) * w
        rss = (resid * resid).sum(-1)
        stderr = np.sqrt(rss / (n - 2) / sxx)
    slope = np.where(sxx > 0, slope, np.nan)
    stderr = np.where((n > 2) & (sxx > 0), stderr, np.nan)
    return slope, intercept, stderr, n


def _t_quantile(level, dof):
    from scipy import stats

    dof = np.asarray(dof, dtype=float)
    with np.errstate(invalid="ignore"):
        q = stats.t.ppf(0.5 + level / 2.0, np.where(dof > 0, dof, np.nan))
    return q


def fit_power_law(m, rd, level: float = 0.95) -> dict:
    """Fit ``rd = C m^S`` by least squares in log-log coordinates.

    Parameters
    ----------
    m : array_like, shape (N,)
        Widths (positive).
    rd : array_like, shape (N,)
        Relative changes; entries that are not finite and positive are ignored.
    level : float
        Confidence level of the Student-t interval, in (0, 1).

    Returns
    -------
    dict
        ``slope``, ``intercept`` (of log rd vs log m), ``stderr``, ``ci_low``, ``ci_high``
        (NaN with fewer than three points), ``n_points``.
    """
    level = _check_level(level)
    m = np.asarray(m, dtype=float).ravel()
    rd = np.asarray(rd, dtype=float).ravel()
    if m.shape != rd.shape:
        raise ConfigError(f"m and rd must have the same length, got {m.shape} and {rd.shape}")
    if not (np.isfinite(m).all() and (m > 0).all()):
        raise ConfigError(f"widths must be positive and finite, got {m!r}")
    good = np.isfinite(rd) & (rd > 0)
    y = np.log(np.where(good, rd, 1.0))
    slope, intercept, stderr, n = _ols(np.log(m), y, good.astype(float))
    q = _t_quantile(level, n - 2)
    return {"slope": float(slope), "intercept": float(intercept), "stderr": float(stderr),
            "ci_low": float(slope - q * stderr), "ci_high": float(slope + q * stderr),
            "n_points": int(n)}


def _check_level(level):
    try:
        level = float(level)
    except (TypeError, ValueError):
        raise ConfigError(f"level must be a number in (0, 1), got {level!r}") from None
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    return level


def scaling_exponents(ds, quantities=None, *, level: float = 0.95, n_boot: int = 1000,
                      seed: int = 0, require_success: bool = True, width_dim: str = "width",
                      seed_dim: str = "seed"):
    """Scaling exponents of every relative-change quantity at every grid point.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep's Dataset (or any Dataset) with a ``width`` dimension (coordinate: the
        widths), optionally a ``seed`` dimension, and any other dimensions (the grid,
        e.g. ``gamma``, ``gamma_prime``; ``gamma2``, ``gamma3``).
    quantities : str or list of str, optional
        Variables to fit; default :func:`rd_quantities` (all ``rd_*`` without time).
    level : float
        Level of the Student-t and bootstrap percentile intervals.
    n_boot : int
        Bootstrap resamples over seeds (0 to skip).
    seed : int
        Seed of the bootstrap's random generator (results are reproducible).
    require_success : bool
        Leave out runs whose ``status`` is not ``"success"``.

    Returns
    -------
    xarray.Dataset
        Dimension ``quantity`` (the fitted variable names) plus the grid dimensions;
        variables ``slope``, ``intercept``, ``stderr``, ``ci_low``, ``ci_high``,
        ``boot_std``, ``boot_low``, ``boot_high``, ``n_points``, ``n_widths``.
    """
    import xarray as xr

    level = _check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ConfigError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if width_dim not in ds.dims:
        raise ConfigError(f"the Dataset has no {width_dim!r} dimension (dims: {dict(ds.sizes)})")
    if quantities is None:
        quantities = rd_quantities(ds, width_dim)
    elif isinstance(quantities, str):
        quantities = [quantities]
    quantities = list(quantities)
    for q in quantities:
        if q not in ds.data_vars:
            raise ConfigError(f"no variable {q!r} in the Dataset; have {sorted(ds.data_vars)}")
        if width_dim not in ds[q].dims:
            raise ConfigError(f"variable {q!r} has no {width_dim!r} dimension")
    if not quantities:
        raise ConfigError("no rd_* variables with a width dimension to fit")
    widths = np.asarray(ds[width_dim].values, dtype=float)
    if not (np.isfinite(widths).all() and (widths > 0).all()):
        raise ConfigError(f"widths must be positive, got {widths!r}")
    okm = ok_mask(ds, require_success)
    rng = np.random.default_rng(seed)
    results = []
    for q in quantities:
        da = ds[q]
        if okm is not None:
            da = da.where(okm.broadcast_like(da))
        if seed_dim not in da.dims:
            da = da.expand_dims({seed_dim: 1})
        grid_dims = [d for d in da.dims if d not in (width_dim, seed_dim)]
        da = da.transpose(*grid_dims, width_dim, seed_dim)
        vals = np.asarray(da.values, dtype=float)
        fit = _fit_block(np.log(widths), vals, level, n_boot, rng)
        coords = {d: da[d] for d in grid_dims if d in da.coords}
        res = xr.Dataset({k: (grid_dims, v, {"long_name": _LONG_NAMES[k]})
                          for k, v in fit.items()}, coords=coords)
        results.append(res.expand_dims(quantity=[q]))
    out = xr.concat(results, dim="quantity", join="outer")
    out.attrs.update({"level": level, "n_boot": int(n_boot), "bootstrap_seed": int(seed),
                      "require_success": int(bool(require_success)),
                      "fit": "OLS of log RD on log m pooled over (width, seed)",
                      "widths": widths.tolist()})
    return out


def _fit_block(logm, vals, level, n_boot, rng):
    """vals: (..., W, K) -> dict of (...) arrays."""
    W, K = vals.shape[-2:]
    good = np.isfinite(vals) & (vals > 0)
    y = np.log(np.where(good, vals, 1.0))
    x = np.repeat(logm, K)                      # (W*K,) in (width, seed) order
    flat = y.reshape(vals.shape[:-2] + (W * K,))
    wflat = good.reshape(flat.shape).astype(float)
    slope, intercept, stderr, n = _ols(x, flat, wflat)
    q = _t_quantile(level, n - 2)
    out = {"slope": slope, "intercept": intercept, "stderr": stderr,
           "ci_low": slope - q * stderr, "ci_high": slope + q * stderr}
    boot = np.full((3,) + slope.shape, np.nan)
    if n_boot > 0 and K >= 2:
        idx = rng.integers(0, K, size=(n_boot, W, K))
        widx = np.arange(W)[None, :, None]
        yb = y[..., widx, idx]                  # (..., n_boot, W, K)
        gb = good[..., widx, idx].astype(float)
        sb, _, _, _ = _ols(x, yb.reshape(yb.shape[:-2] + (W * K,)),
                           gb.reshape(gb.shape[:-2] + (W * K,)))
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN grid points
            lo, hi = np.nanpercentile(sb, [50 * (1 - level), 50 * (1 + level)], axis=-1)
            boot = np.stack([np.nanstd(sb, axis=-1, ddof=1), lo, hi])
    out.update({"boot_std": boot[0], "boot_low": boot[1], "boot_high": boot[2]})
    out["n_points"] = n.astype(np.int64)
    out["n_widths"] = good.any(-1).sum(-1).astype(np.int64)
    return out


def seed_mean(da, seed_dim: str = "seed"):
    """Geometric mean over seeds (of positive finite values), for plotting RD vs m."""
    if seed_dim not in da.dims:
        return da
    pos = da.where(np.isfinite(da) & (da > 0))
    return np.exp(np.log(pos).mean(seed_dim))
