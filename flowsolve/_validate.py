"""Small argument checks shared by the public constructors.

Each raises :class:`~flowsolve.errors.ConfigError` with a message that names the
argument, the bad value and what was expected.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ConfigError


def positive_int(name: str, value) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer() and value > 0:
            return int(value)
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(name: str, value, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ConfigError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return v


def finite_float(name: str, value) -> float:
    """Return ``value`` as a finite float, else raise ConfigError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return v


def finite_array(name: str, value, ndim: int | None = None) -> np.ndarray:
    """Return ``value`` as a float64 array with only finite entries, else raise ConfigError."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be an array of numbers, got {type(value).__name__}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(
            f"{name} must be finite, got {arr[idx]} at index {idx} "
            f"({int(bad.sum())} non-finite entries)"
        )
    return arr


def choice(name: str, value, options) -> str:
    """Return ``value`` if it is one of ``options`` (strings), else raise ConfigError."""
    if value not in options:
        raise ConfigError(f"unknown {name} {value!r}; expected one of {sorted(options)}")
    return value
