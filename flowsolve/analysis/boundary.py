"""The phase boundary: where the scaling exponent changes sign.

For each value of the other grid coordinate (``gamma'`` for two layers), walk along
``gamma`` (sorted) and locate each sign change of ``S`` between neighbouring grid points by
linear interpolation ([L21] marks these as stars):

    gamma* = g1 - S1 (g2 - g1) / (S2 - S1)

Its uncertainty propagates the slopes' standard errors ``e1, e2`` through this formula
(delta method, independent errors):

    var gamma* = (g2 - g1)^2 (S2^2 e1^2 + S1^2 e2^2) / (S2 - S1)^4

and, more conservatively, ``gamma_star_low`` / ``gamma_star_high`` are the crossings of the
envelopes ``S + u`` and ``S - u`` (``u`` the interval half-width) nearest to ``gamma*``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["crossings_1d", "theory_gamma_star", "zero_crossings"]


def theory_gamma_star(gamma_prime):
    """[L21]'s critical ``gamma*(gamma') = 1 + max(gamma', 0)`` (THEORY.md section 2)."""
    return 1.0 + np.maximum(np.asarray(gamma_prime, dtype=float), 0.0)


def crossings_1d(x, s, err=None) -> list[tuple[float, float]]:
    """All sign changes of ``s(x)`` by linear interpolation between neighbours.

    Parameters
    ----------
    x : array_like, shape (N,)
        Grid (any order; sorted here). Points with non-finite ``s`` are skipped.
    s : array_like, shape (N,)
    err : array_like, shape (N,), optional
        Standard errors of ``s`` for the delta-method uncertainty.

    Returns
    -------
    list of (x_star, x_star_err)
        In increasing ``x``; a grid point where ``s`` is exactly 0 is a crossing itself.
    """
    x = np.asarray(x, dtype=float).ravel()
    s = np.asarray(s, dtype=float).ravel()
    if x.shape != s.shape:
        raise ConfigError(f"x and s must have the same length, got {x.shape} and {s.shape}")
    e = np.zeros_like(s) if err is None else np.nan_to_num(np.asarray(err, float).ravel())
    good = np.isfinite(s) & np.isfinite(x)
    order = np.argsort(x[good], kind="stable")
    x, s, e = x[good][order], s[good][order], e[good][order]
    out = []
    for i in range(len(x) - 1):
        s1, s2 = s[i], s[i + 1]
        if s1 == 0.0:
            out.append((float(x[i]), float(e[i] / max(abs(s2), 1e-300) * (x[i + 1] - x[i]))))
            continue
        if s1 * s2 < 0:
            dx = x[i + 1] - x[i]
            xs = x[i] - s1 * dx / (s2 - s1)
            var = dx**2 * (s2**2 * e[i] ** 2 + s1**2 * e[i + 1] ** 2) / (s2 - s1) ** 4
            out.append((float(xs), float(np.sqrt(var))))
    if len(s) and s[-1] == 0.0:
        out.append((float(x[-1]), float("nan")))
    return out


def _nearest(crossings, x0):
    if not crossings or not np.isfinite(x0):
        return np.nan
    xs = np.array([c[0] for c in crossings])
    return float(xs[np.argmin(np.abs(xs - x0))])


def zero_crossings(exps, quantity: str = "rd_w_final", along: str = "gamma", *,
                   which: str = "max"):
    """The critical ``gamma*`` for every value of the other grid coordinates.

    Parameters
    ----------
    exps : xarray.Dataset
        Output of :func:`~flowsolve.analysis.scaling_exponents` (or any Dataset with
        ``slope`` and optionally ``stderr``, ``ci_*``, ``boot_*``).
    quantity : str
        Fitted variable whose slope is used (ignored when ``exps`` has no ``quantity``).
    along : str
        Grid dimension to interpolate along (``"gamma"``; ``"gamma3"`` for three layers).
    which : str
        Interval used for the envelopes (see :func:`~flowsolve.analysis.uncertainty`).

    Returns
    -------
    xarray.Dataset
        Over the remaining grid dimensions: ``gamma_star`` (the first crossing, in
        increasing ``along``), ``gamma_star_err`` (delta method), ``gamma_star_low`` and
        ``gamma_star_high`` (envelope crossings), ``n_crossings``; and, when ``along`` is
        ``gamma`` with a ``gamma_prime`` coordinate, ``theory`` (:func:`theory_gamma_star`).
        Names keep the ``gamma_star`` prefix whatever ``along`` is.
    """
    import xarray as xr

    from .regimes import uncertainty

    if "quantity" in exps.dims:
        if quantity not in exps["quantity"].values:
            raise ConfigError(f"quantity {quantity!r} was not fitted")
        exps = exps.sel(quantity=quantity)
    if along not in exps["slope"].dims:
        raise ConfigError(f"slope has no dimension {along!r}; dims {exps['slope'].dims}")
    slope = exps["slope"]
    err = exps["stderr"] if "stderr" in exps else xr.zeros_like(slope)
    if "boot_std" in exps:
        err = np.fmax(err, exps["boot_std"])
    u = uncertainty(exps, which) if "ci_low" in exps else xr.zeros_like(slope)
    other = [d for d in slope.dims if d != along]
    stacked = [a.transpose(*other, along) for a in (slope, err, u)]
    shape = stacked[0].shape[:-1]
    res = {k: np.full(shape, np.nan) for k in ("gamma_star", "gamma_star_err",
                                               "gamma_star_low", "gamma_star_high")}
    ncross = np.zeros(shape, dtype=np.int64)
    x = np.asarray(exps[along].values, dtype=float)
    for idx in np.ndindex(*shape):
        s, e, uu = (np.asarray(a.values[idx], float) for a in stacked)
        cr = crossings_1d(x, s, e)
        ncross[idx] = len(cr)
        if not cr:
            continue
        res["gamma_star"][idx], res["gamma_star_err"][idx] = cr[0]
        g0 = cr[0][0]
        up, lo = _nearest(crossings_1d(x, s + uu), g0), _nearest(crossings_1d(x, s - uu), g0)
        if np.isfinite(up) and np.isfinite(lo):
            res["gamma_star_low"][idx], res["gamma_star_high"][idx] = min(up, lo), max(up, lo)
        else:
            res["gamma_star_low"][idx] = up if np.isfinite(up) else lo
            res["gamma_star_high"][idx] = lo if np.isfinite(lo) else up
    coords = {d: slope[d] for d in other if d in slope.coords}
    out = xr.Dataset({k: (other, v) for k, v in res.items()}, coords=coords)
    out["n_crossings"] = (other, ncross)
    out["gamma_star"].attrs["long_name"] = f"first sign change of S along {along}"
    out["gamma_star_err"].attrs["long_name"] = "delta-method standard error of gamma_star"
    if along == "gamma" and "gamma_prime" in out.coords:
        out["theory"] = ("gamma_prime", theory_gamma_star(out["gamma_prime"].values),
                         {"long_name": "[L21] critical gamma*: 1 + max(gamma', 0)"})
    out.attrs.update({"along": along, "quantity": quantity})
    return out
