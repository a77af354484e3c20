"""Activation functions: sigma, sigma', homogeneity and multiplicity in one table.

Each function takes an array namespace ``xp`` (numpy or cupy) and an array ``u``.
``homogeneous`` marks positively 1-homogeneous activations (sigma(c u) = c sigma(u) for
c > 0), for which the normalised flow of THEORY.md section 1 is exact. ``multiplicity``
is p of [Z22b]: sigma^(k)(0) = 0 for 1 <= k < p and sigma^(p)(0) != 0 (None for the
non-smooth ReLU family).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]

LEAKY_SLOPE = 0.01
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf(xp, u):
    if xp.__name__.startswith("cupy"):
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(u)


@dataclass(frozen=True)
class Activation:
    """One activation: value, derivative and the facts the theory needs."""

    name: str
    sigma: Callable
    dsigma: Callable
    homogeneous: bool
    multiplicity: int | None


def _sig(xp, u):
    return 0.5 * (1.0 + xp.tanh(0.5 * u))


ACTIVATIONS = {
    a.name: a
    for a in [
        Activation("relu", lambda xp, u: xp.maximum(u, 0.0),
                   lambda xp, u: (u > 0).astype(u.dtype), True, None),
        Activation("leaky_relu", lambda xp, u: xp.where(u > 0, u, LEAKY_SLOPE * u),
                   lambda xp, u: xp.where(u > 0, 1.0, LEAKY_SLOPE).astype(u.dtype), True, None),
        Activation("linear", lambda xp, u: u, lambda xp, u: xp.ones_like(u), True, 1),
        Activation("tanh", lambda xp, u: xp.tanh(u), lambda xp, u: 1.0 - xp.tanh(u) ** 2,
                   False, 1),
        Activation("sigmoid", _sig, lambda xp, u: _sig(xp, u) * (1.0 - _sig(xp, u)), False, 1),
        Activation("softplus", lambda xp, u: xp.log1p(xp.exp(-xp.abs(u))) + xp.maximum(u, 0.0),
                   _sig, False, 1),
        Activation("xtanh", lambda xp, u: u * xp.tanh(u),
                   lambda xp, u: xp.tanh(u) + u * (1.0 - xp.tanh(u) ** 2), False, 2),
        Activation("x2tanh", lambda xp, u: u * u * xp.tanh(u),
                   lambda xp, u: 2.0 * u * xp.tanh(u) + u * u * (1.0 - xp.tanh(u) ** 2),
                   False, 3),
        Activation("gelu", lambda xp, u: u * 0.5 * (1.0 + _erf(xp, u * _SQRT1_2)),
                   lambda xp, u: 0.5 * (1.0 + _erf(xp, u * _SQRT1_2))
                   + u * _INV_SQRT_2PI * xp.exp(-0.5 * u * u), False, 1),
    ]
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``, or a ConfigError listing the known ones."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None
