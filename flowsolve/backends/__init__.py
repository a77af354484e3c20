"""Array backends behind one small protocol.

A backend supplies

- ``xp``: its array namespace (numpy or cupy);
- ``asarray(a, dtype)`` / ``to_numpy(a)``;
- ``make_rhs(model, data, dtype)`` -> ``rhs(y, out) -> loss`` and
  ``make_loss(model, data, dtype)`` -> ``loss(y)``;
- the Runge-Kutta stage arithmetic: ``combine(out, y, h, K, coeffs)`` computes
  ``out = y + h sum_j coeffs[j] K[j]`` and ``error_norm(...)`` the scaled RMS error.

The NumPy backend is the readable reference; ``numba`` (fused CPU kernels) and ``cupy``
(GPU) are imported lazily, so a missing optional package only matters when asked for.
"""

from __future__ import annotations

from ..errors import BackendUnavailable, ConfigError
from .numpy_backend import NumpyBackend

__all__ = ["get_backend", "available_backends", "NumpyBackend", "BACKENDS"]

BACKENDS = ("numpy", "numba", "cupy")


def get_backend(backend="numpy", **options):
    """The backend object called ``backend`` (or ``backend`` itself if it is one).

    Raises
    ------
    ConfigError
        For an unknown name.
    BackendUnavailable
        When the backend's package or device is missing.
    """
    if not isinstance(backend, str):
        if hasattr(backend, "make_rhs") and hasattr(backend, "combine"):
            return backend
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "numpy":
        return NumpyBackend(**options)
    if backend == "numba":
        try:
            from .numba_backend import NumbaBackend
        except ImportError as exc:  # pragma: no cover - numba is a core dependency
            raise BackendUnavailable(f"the numba backend needs numba: {exc}") from exc
        return NumbaBackend(**options)
    if backend == "cupy":
        from .cupy_backend import CupyBackend
        return CupyBackend(**options)
    raise ConfigError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")


def available_backends() -> list[str]:
    """Names of the backends that can be created on this machine."""
    names = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except (BackendUnavailable, ImportError):
            continue
        names.append(name)
    return names
