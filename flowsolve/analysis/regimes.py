"""Regime labels from scaling exponents, and the theory's labels ([L21], THEORY.md 2).

The rule (documented in docs/analysis.md): let ``S`` be the fitted slope and ``u`` its
uncertainty half-width, the largest of the Student-t interval's and the bootstrap
interval's half-widths that are available (see :func:`uncertainty`). With a tolerance
``tol >= 0`` (default 0.05, the size of slope that finite widths cannot tell from 0):

* **linear** (code -1) when ``S + u < -tol``: the whole interval is below ``-tol``;
* **condensed** (code +1) when ``S - u > tol``;
* **critical** (code 0) otherwise: the interval ``[S - u, S + u]`` meets ``[-tol, tol]``;
* **undetermined** (code -2) when ``S`` is not finite (too few successful runs).

Layer labels combine into the four regimes of [Z22] with :func:`four_regimes`.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = [
    "CONDENSED",
    "CRITICAL",
    "FOUR_REGIME_NAMES",
    "LINEAR",
    "REGIME_NAMES",
    "UNDETERMINED",
    "classify",
    "four_regimes",
    "label_slopes",
    "regime_name",
    "theory_regime",
    "uncertainty",
]

LINEAR, CRITICAL, CONDENSED, UNDETERMINED = -1, 0, 1, -2
REGIME_NAMES = {LINEAR: "linear", CRITICAL: "critical", CONDENSED: "condensed",
                UNDETERMINED: "undetermined"}
_FLAGS = {"flag_values": np.array([-2, -1, 0, 1], dtype=np.int8),
          "flag_meanings": "undetermined linear critical condensed"}
#: four-regime codes of a three-layer network: 2 * (layer 1 condensed) + (layer 2 condensed)
FOUR_REGIME_NAMES = {0: "W1 linear, W2 linear", 1: "W1 linear, W2 condensed",
                     2: "W1 condensed, W2 linear", 3: "W1 condensed, W2 condensed",
                     -1: "critical or undetermined"}


def regime_name(code) -> str:
    """``"linear"``, ``"critical"``, ``"condensed"`` or ``"undetermined"`` for a code."""
    return REGIME_NAMES[int(code)]


def uncertainty(exps, which: str = "max"):
    """Half-width ``u`` of the slope's interval.

    Parameters
    ----------
    exps : xarray.Dataset
        Output of :func:`flowsolve.analysis.scaling_exponents`.
    which : {"max", "fit", "seeds"}
        ``"fit"``: the Student-t interval; ``"seeds"``: the bootstrap percentile interval;
        ``"max"``: the larger of the two where both exist (else whichever exists; 0 when
        neither does, e.g. two widths and one seed).
    """
    s = exps["slope"]
    fit = np.maximum(exps["ci_high"] - s, s - exps["ci_low"])
    seeds = np.maximum(exps["boot_high"] - s, s - exps["boot_low"])
    if which == "fit":
        return fit.fillna(0.0)
    if which == "seeds":
        return seeds.fillna(0.0)
    if which == "max":
        return np.fmax(fit, seeds).fillna(0.0)
    raise ConfigError(f"which must be 'max', 'fit' or 'seeds', got {which!r}")


def label_slopes(slope, u=0.0, tol: float = 0.05) -> np.ndarray:
    """Regime codes (int8) from slopes and uncertainty half-widths (broadcast together)."""
    tol = float(tol)
    if not (tol >= 0 and np.isfinite(tol)):
        raise ConfigError(f"tol must be a finite number >= 0, got {tol!r}")
    s = np.asarray(slope, dtype=float)
    u = np.abs(np.nan_to_num(np.asarray(u, dtype=float), nan=0.0))
    out = np.full(np.broadcast(s, u).shape, CRITICAL, dtype=np.int8)
    out[s + u < -tol] = LINEAR
    out[s - u > tol] = CONDENSED
    out[~np.isfinite(np.broadcast_to(s, out.shape))] = UNDETERMINED
    return out


def theory_regime(gamma, gamma_prime, atol: float = 1e-9) -> np.ndarray:
    """The [L21] regime of two-layer points (codes as :data:`REGIME_NAMES`).

    Linear iff ``gamma < 1`` or ``gamma' > gamma - 1``; condensed iff ``gamma > 1`` and
    ``gamma' < gamma - 1``; critical on ``{gamma = 1, gamma' <= 0}`` and
    ``{gamma' = gamma - 1, gamma' >= 0}`` (to within ``atol``).
    """
    g = np.asarray(gamma, dtype=float)
    gp = np.asarray(gamma_prime, dtype=float)
    g, gp = np.broadcast_arrays(g, gp)
    out = np.full(g.shape, CRITICAL, dtype=np.int8)
    lin = (g < 1 - atol) | (gp > g - 1 + atol)
    cond = (g > 1 + atol) & (gp < g - 1 - atol)
    out[lin] = LINEAR
    out[cond] = CONDENSED
    out[~(np.isfinite(g) & np.isfinite(gp))] = UNDETERMINED
    return out


def classify(exps, quantity: str = "rd_w_final", *, tol: float = 0.05, which: str = "max",
             gamma_dim: str = "gamma", gamma_prime_dim: str = "gamma_prime"):
    """Regime of every grid point for one fitted quantity, and the theory's where defined.

    Parameters
    ----------
    exps : xarray.Dataset
        Output of :func:`~flowsolve.analysis.scaling_exponents`.
    quantity : str
        Which fitted variable (``"rd_w_final"``, ``"rd_w_max_final"``, ``"rd_w1_final"``...).
    tol, which
        See the module docstring and :func:`uncertainty`.

    Returns
    -------
    xarray.Dataset
        ``slope``, ``uncertainty``, ``regime`` (int8 codes with CF flag attributes); for
        two-layer grids (coordinates ``gamma`` and ``gamma_prime``) also ``theory``,
        ``agree`` (same label) and ``conflict`` (one says linear, the other condensed).
    """
    import xarray as xr

    if "quantity" in exps.dims:
        if quantity not in exps["quantity"].values:
            raise ConfigError(f"quantity {quantity!r} was not fitted; have "
                              f"{list(map(str, exps['quantity'].values))}")
        exps = exps.sel(quantity=quantity)
    u = uncertainty(exps, which)
    s = exps["slope"]
    reg = xr.DataArray(label_slopes(s.values, u.values, tol), dims=s.dims, coords=s.coords,
                       attrs=dict(_FLAGS, long_name=f"measured regime from {quantity}"))
    out = xr.Dataset({"slope": s, "uncertainty": u, "regime": reg})
    out["uncertainty"].attrs["long_name"] = f"half-width of the slope interval ({which})"
    if gamma_dim in exps.coords and gamma_prime_dim in exps.coords:
        g, gp = xr.broadcast(exps[gamma_dim], exps[gamma_prime_dim])
        th = xr.DataArray(theory_regime(g.values, gp.values), dims=g.dims, coords=g.coords)
        th = th.broadcast_like(reg)
        out["theory"] = th.assign_attrs(dict(_FLAGS, long_name="regime by the [L21] theory"))
        out["agree"] = (reg == th).assign_attrs(long_name="measured label equals theory's")
        out["conflict"] = ((reg * th) == -1).assign_attrs(
            long_name="one label is linear and the other condensed")
    out.attrs.update({"quantity": quantity, "tol": float(tol), "uncertainty": which,
                      "rule": "linear if S+u < -tol; condensed if S-u > tol; else critical"})
    return out


def four_regimes(regime_w1, regime_w2):
    """The [Z22] four-regime code ``2 (W1 condensed) + (W2 condensed)``; -1 where either
    layer is critical or undetermined (names in :data:`FOUR_REGIME_NAMES`)."""
    r1 = np.asarray(regime_w1)
    r2 = np.asarray(regime_w2)
    code = 2 * (r1 == CONDENSED) + (r2 == CONDENSED)
    sure = np.isin(r1, (LINEAR, CONDENSED)) & np.isin(r2, (LINEAR, CONDENSED))
    out = np.where(sure, code, -1).astype(np.int8)
    if hasattr(regime_w1, "dims"):
        import xarray as xr

        return xr.DataArray(out, dims=regime_w1.dims, coords=regime_w1.coords,
                            attrs={"flag_values": np.arange(-1, 4, dtype=np.int8),
                                   "flag_meanings": "uncertain w1lin_w2lin w1lin_w2cond "
                                                    "w1cond_w2lin w1cond_w2cond"})
    return out
