"""The NumPy backend: the readable reference for every kernel."""

from __future__ import annotations

import math

import numpy as np


class NumpyBackend:
    """Reference backend: the models' own array code and plain NumPy stage arithmetic."""

    name = "numpy"
    xp = np

    def asarray(self, a, dtype=np.float64):
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    # -- model kernels ---------------------------------------------------------------
    def make_rhs(self, model, data, dtype):
        return model.make_rhs(np, data, dtype)

    def make_loss(self, model, data, dtype):
        return model.make_loss(np, data, dtype)

    # -- Runge-Kutta stage arithmetic ------------------------------------------------
    def combine(self, out, y, h, K, coeffs):
        """``out = y + h sum_j coeffs[j] K[j]`` (K: (>= len(coeffs), N))."""
        c = np.asarray(coeffs, dtype=K.dtype)
        np.multiply(c @ K[:len(c)], h, out=out)
        out += y
        return out

    def error_norm(self, y, y_new, h, K, e, rtol, atol, e3=None, ref=None, keep=None):
        """Scaled RMS norm of the embedded error ``h sum_j e_j K[j]``.

        The scale is ``atol + rtol max(|y - ref|, |y_new - ref|)`` (``ref`` = 0 unless the
        error is controlled relative to a displacement). With ``e3`` (DOP853) the two
        estimates are combined as in Hairer's code. ``keep`` (bool (N,)): the RMS over
        those components only (0 if there are none).
        """
        if ref is None:
            scale = np.maximum(np.abs(y), np.abs(y_new))
        else:
            scale = np.maximum(np.abs(y - ref), np.abs(y_new - ref))
        scale *= rtol
        scale += atol
        e = np.asarray(e, dtype=K.dtype)
        err = (e @ K[:len(e)]) / scale
        if keep is not None:
            err = err[keep]
        N = err.shape[0]
        if N == 0:
            return 0.0
        if e3 is None:
            return abs(h) * math.sqrt(float(err @ err) / N)
        err3 = (np.asarray(e3, dtype=K.dtype) @ K[:len(e3)]) / scale
        if keep is not None:
            err3 = err3[keep]
        n5, n3 = float(err @ err), float(err3 @ err3)
        if n5 == 0.0 and n3 == 0.0:
            return 0.0
        return abs(h) * n5 / math.sqrt((n5 + 0.01 * n3) * N)

    def all_finite(self, a) -> bool:
        return bool(np.isfinite(a).all())
