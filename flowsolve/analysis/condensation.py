"""Condensation measures from one run's Dataset (a per-run file or ``sol.to_xarray()``).

* :func:`orientation_amplitude`: per neuron, initial and final orientation and amplitude.
* :func:`cosine_matrix` and :func:`leading_order`: cosine similarities of normalised input
  weights (bias included), rows ordered by the leading eigenvector of the matrix, so that
  condensed groups show as blocks near +1 (and -1 between opposite groups).
* :func:`count_clusters`: the number of orientation clusters of the active neurons
  (average-linkage clustering on the angle between normalised input weights, cut at
  ``angle``); :func:`clusters_over_time` over parameter snapshots.
* :func:`initial_condensation`: for small initialisations, the time at which the active
  neurons first concentrate on one axis (the condensation degree ``lambda_max / trace`` of
  their amplitude-weighted second-moment matrix reaches ``threshold``), the axis, and its
  alignment with ``z / |z|``, ``z = (1/n) sum_i y_i x~_i`` (THEORY.md section 5).

Active neurons: with ASI only the first copy is used (the second repeats its input weights);
a neuron is active when its amplitude ``|a_k| |w_k|`` is at least ``active`` times the
largest amplitude (default 0.1).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

__all__ = [
    "active_mask",
    "clusters_over_time",
    "condensation_degree",
    "cosine_matrix",
    "count_clusters",
    "first_copy",
    "growth_rate",
    "initial_condensation",
    "leading_order",
    "orientation_amplitude",
    "unit_rows",
    "z_direction",
]


def first_copy(run, n: int | None = None) -> int:
    """Number of neurons of the first copy: ``width`` with ASI, all neurons otherwise."""
    if n is None:
        n = run.sizes.get("neuron", 0)
    if int(run.attrs.get("asi", 0)) and "width" in run.attrs:
        return int(run.attrs["width"])
    return n


def _params(run, name):
    if name not in run:
        raise ConfigError(f"the run Dataset has no variable {name!r} (solve with params "
                          f"kept, to_xarray(params=True); snapshots need snapshots=[...])")
    return np.asarray(run[name].values, dtype=float)


def orientation_amplitude(run) -> dict:
    """Per-neuron orientation and amplitude, initial and final, of the first copy.

    Returns
    -------
    dict of ndarray, each shape (m,)
        ``amplitude_init``, ``amplitude_final`` (``|a_k| |w_k|`` in original variables), and
        for 1-D inputs ``orientation_init``, ``orientation_final`` (``atan2(b_k, w_k)``, rad).
    """
    k = first_copy(run)
    out = {}
    for name in ("orientation_init", "orientation_final", "amplitude_init", "amplitude_final"):
        if name in run:
            out[name] = np.asarray(run[name].values, float)[:k]
    if "amplitude_init" not in out:
        raise ConfigError("the run Dataset has no per-neuron amplitudes (amplitude_init)")
    return out


def unit_rows(w) -> np.ndarray:
    """Rows of ``w`` (M, D) divided by their norms (zero rows stay zero)."""
    w = np.asarray(w, dtype=float)
    if w.ndim != 2:
        raise ConfigError(f"input weights must have shape (M, D), got {w.shape}")
    nrm = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, nrm, out=np.zeros_like(w), where=nrm > 0)


def cosine_matrix(w) -> np.ndarray:
    """Cosine similarities ``C_kl = w_k . w_l / (|w_k| |w_l|)``, shape (M, M)."""
    u = unit_rows(w)
    return np.clip(u @ u.T, -1.0, 1.0)


def leading_order(C) -> np.ndarray:
    """Permutation sorting rows/columns of a symmetric matrix by its leading eigenvector.

    The eigenvector of the largest eigenvalue separates a block structure: entries of
    neurons in one condensed group share sign and size. Ties are broken by the second
    eigenvector. The sign is fixed so that the first entry is the most negative.
    """
    C = np.asarray(C, dtype=float)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ConfigError(f"C must be a square matrix, got shape {C.shape}")
    if C.shape[0] < 2:
        return np.arange(C.shape[0])
    _vals, vecs = np.linalg.eigh(0.5 * (C + C.T))
    v1, v2 = vecs[:, -1], vecs[:, -2]
    if v1.sum() < 0:
        v1 = -v1
    return np.lexsort((np.round(v2, 6), np.round(v1, 6)))


def active_mask(amplitude, active: float = 0.1) -> np.ndarray:
    """Neurons whose amplitude is at least ``active`` times the largest."""
    amp = np.asarray(amplitude, dtype=float)
    if not 0 <= active <= 1:
        raise ConfigError(f"active must be in [0, 1], got {active!r}")
    top = np.nanmax(amp) if amp.size else 0.0
    return amp >= active * top


def count_clusters(w, mask=None, angle: float = 0.2, max_neurons: int = 3000,
                   seed: int = 0) -> int:
    """Number of orientation clusters among the rows of ``w`` (optionally masked).

    Average-linkage hierarchical clustering on the angle ``arccos(cos)`` between rows,
    cut at ``angle`` radians. At most ``max_neurons`` rows are used (a fixed random
    subset beyond that), which keeps the cost at O(max_neurons^2).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    u = unit_rows(w)
    if mask is not None:
        u = u[np.asarray(mask, bool)]
    u = u[np.linalg.norm(u, axis=1) > 0]
    if len(u) > max_neurons:
        u = u[np.random.default_rng(seed).choice(len(u), max_neurons, replace=False)]
    if len(u) <= 1:
        return len(u)
    dist = np.arccos(np.clip(u @ u.T, -1.0, 1.0))
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(0.5 * (dist + dist.T), checks=False), method="average")
    return int(fcluster(z, t=angle, criterion="distance").max())


def _amplitude(a, w):
    return np.abs(a) * np.linalg.norm(w, axis=-1)


def clusters_over_time(run, active: float = 0.1, angle: float = 0.2):
    """Cluster counts of active neurons at each snapshot (first copy).

    Returns
    -------
    xarray.DataArray, dims (snapshot_time,)
    """
    import xarray as xr

    a = _params(run, "a_snapshot")
    w = _params(run, "w_snapshot")
    k = first_copy(run, a.shape[1])
    counts = [count_clusters(w[j, :k], active_mask(_amplitude(a[j, :k], w[j, :k]), active),
                             angle) for j in range(a.shape[0])]
    return xr.DataArray(np.array(counts), dims=("snapshot_time",),
                        coords={"snapshot_time": run["snapshot_time"].values},
                        attrs={"long_name": "orientation clusters of active neurons",
                               "active": active, "angle": angle})


def z_direction(x, y) -> np.ndarray:
    """``z / |z|`` with ``z = (1/n) sum_i y_i (x_i, 1)``, shape (d+1,)."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    y = np.asarray(y, dtype=float).ravel()
    xt = np.hstack([x, np.ones((x.shape[0], 1))])
    z = xt.T @ y / len(y)
    nz = np.linalg.norm(z)
    if nz == 0:
        raise ConfigError("z = (1/n) sum_i y_i x~_i is zero: no initial condensation direction")
    return z / nz


def condensation_degree(a, w, active: float = 0.0) -> tuple[float, np.ndarray]:
    """``lambda_max / trace`` of ``sum_k rho_k u_k u_k^T`` over (active) neurons, with
    ``u_k = w_k/|w_k|`` and weights ``rho_k`` the amplitudes; and its leading eigenvector.

    1 when every weighted neuron lies on one axis (either sign), ``1/D`` for isotropy.
    """
    amp = _amplitude(np.asarray(a, float), np.asarray(w, float))
    m = active_mask(amp, active) if active > 0 else np.ones(len(amp), bool)
    u = unit_rows(np.asarray(w, float)[m])
    M = (u * amp[m, None]).T @ u
    vals, vecs = np.linalg.eigh(M)
    tr = vals.sum()
    return (float(vals[-1] / tr) if tr > 0 else float("nan")), vecs[:, -1]


def growth_rate(run) -> float:
    """Early-time growth rate, in normalised time, of the linearised flow for an activation
    with ``sigma(0) = 0``, ``sigma'(0) = 1`` (THEORY.md section 5, docs/analysis.md):
    ``beta1 beta2 |z| / alpha``."""
    x, y = np.asarray(run["x"].values, float), np.asarray(run["y"].values, float)
    xt = np.hstack([x.reshape(len(y), -1), np.ones((len(y), 1))])
    z = np.linalg.norm(xt.T @ y / len(y))
    at = run.attrs
    return float(at["beta1"]) * float(at["beta2"]) * z / float(at["alpha"])


def initial_condensation(run, threshold: float = 0.9, active: float = 0.0,
                         angle: float = 0.2) -> dict:
    """When and where the input weights first condense (from parameter snapshots).

    Parameters
    ----------
    run : xarray.Dataset
        One run with ``a_snapshot``, ``w_snapshot`` over ``snapshot_time``, and ``x``, ``y``.
    threshold : float
        Condensation degree (:func:`condensation_degree`) that counts as condensed.
    active, angle
        For the cluster counts (see :func:`count_clusters`).

    Returns
    -------
    dict
        ``time`` (first snapshot time at which the degree reaches ``threshold``, log-linearly
        interpolated between snapshots; NaN if never), ``degree`` (per snapshot),
        ``direction`` (the leading axis at ``time``, sign chosen to align with ``z``),
        ``alignment`` (``|cos|`` between that axis and ``z / |z|``), ``z_direction``,
        ``clusters`` (per snapshot), ``multiplicity`` p and ``bound`` 2p when the run's
        activation has a multiplicity, ``growth_rate`` and ``time_scaled`` (time x rate)
        for activations with p = 1 and sigma(0) = 0.
    """
    from ..models.activations import ACTIVATIONS

    a = _params(run, "a_snapshot")
    w = _params(run, "w_snapshot")
    ts = np.asarray(run["snapshot_time"].values, dtype=float)
    k = first_copy(run, a.shape[1])
    a, w = a[:, :k], w[:, :k]
    degs, dirs = zip(*(condensation_degree(a[j], w[j], active) for j in range(len(ts))))
    degs = np.array(degs)
    zdir = z_direction(run["x"].values.reshape(run.sizes.get("sample", len(run["y"])), -1),
                       run["y"].values)
    hit = np.nonzero(degs >= threshold)[0]
    t_c, direction = math.nan, None
    if hit.size:
        j = int(hit[0])
        direction = dirs[j]
        t_c = ts[j]
        if j > 0 and ts[j - 1] > 0 and degs[j] > degs[j - 1]:
            f = (threshold - degs[j - 1]) / (degs[j] - degs[j - 1])
            t_c = float(math.exp(math.log(ts[j - 1]) + f * math.log(ts[j] / ts[j - 1])))
        if direction @ zdir < 0:
            direction = -direction
    clusters = np.array([count_clusters(w[j], active_mask(_amplitude(a[j], w[j]), 0.1), angle)
                         for j in range(len(ts))])
    out = {"time": float(t_c), "degree": degs, "snapshot_time": ts,
           "direction": direction, "z_direction": zdir,
           "alignment": float(abs(direction @ zdir)) if direction is not None else math.nan,
           "clusters": clusters}
    act = ACTIVATIONS.get(str(run.attrs.get("activation", "")))
    if act is not None and act.multiplicity is not None:
        out["multiplicity"] = act.multiplicity
        out["bound"] = 2 * act.multiplicity
    if act is not None and act.multiplicity == 1 and act.name in ("tanh", "linear") \
            and all(k in run.attrs for k in ("alpha", "beta1", "beta2")):
        out["growth_rate"] = growth_rate(run)
        out["time_scaled"] = out["time"] * out["growth_rate"]
    return out
