"""Activation functions as Numba scalar kernels, specialised by a compile-time code.

``sd(u, code)`` returns ``(sigma(u), sigma'(u))``; with a constant ``code`` the branch
chain folds away after inlining, so a loop calling it vectorises (ReLU and its relatives
are branch-free selects). The formulas mirror :mod:`flowsolve.models.activations` (the
reference the lockstep tests compare against).
"""

from __future__ import annotations

import math

from numba import njit

from ..models.activations import LEAKY_SLOPE

__all__ = ["CODES", "sd"]

#: activation name -> kernel code
CODES = {"relu": 0, "leaky_relu": 1, "linear": 2, "tanh": 3, "sigmoid": 4, "softplus": 5,
         "xtanh": 6, "x2tanh": 7, "gelu": 8}

_SLOPE = float(LEAKY_SLOPE)
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(inline="always")
def sd(u, code):
    """``(sigma(u), sigma'(u))`` for the activation ``code`` (see :data:`CODES`)."""
    if code == 0:
        return (u if u > 0 else 0.0), (1.0 if u > 0 else 0.0)
    elif code == 1:
        return (u if u > 0 else _SLOPE * u), (1.0 if u > 0 else _SLOPE)
    elif code == 2:
        return u, 1.0
    elif code == 3:
        t = math.tanh(u)
        return t, 1.0 - t * t
    elif code == 4:
        s = 0.5 * (1.0 + math.tanh(0.5 * u))
        return s, s * (1.0 - s)
    elif code == 5:
        s = 0.5 * (1.0 + math.tanh(0.5 * u))
        return math.log1p(math.exp(-abs(u))) + (u if u > 0 else 0.0), s
    elif code == 6:
        t = math.tanh(u)
        return u * t, t + u * (1.0 - t * t)
    elif code == 7:
        t = math.tanh(u)
        return u * u * t, 2.0 * u * t + u * u * (1.0 - t * t)
    else:
        r = 0.5 * (1.0 + math.erf(u * _SQRT1_2))
        return u * r, r + u * _INV_SQRT_2PI * math.exp(-0.5 * u * u)
