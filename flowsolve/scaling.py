"""Initialisation scales and phase-diagram coordinates.

Two-layer network ``f(x) = (1/alpha) sum_k a_k sigma(w_k . x~)`` with
``a_k ~ N(0, beta1^2)`` and ``w_k ~ N(0, beta2^2 I)`` (THEORY.md section 1).
For width ``m`` the coordinates are

    kappa  = beta1 beta2 / alpha,   gamma  = -log(kappa)  / log(m)
    kappa' = beta1 / beta2,         gamma' = -log(kappa') / log(m)

At finite ``m`` these are the *finite-width* coordinates; the table of named schemes
also records their ``m -> infinity`` limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._validate import finite_float, positive_float, positive_int
from .errors import ConfigError

__all__ = ["Scaling", "SCHEMES"]


def _lecun(m, d):
    return 1.0, math.sqrt(1.0 / m), math.sqrt(1.0 / d)


def _he(m, d):
    return 1.0, math.sqrt(2.0 / m), math.sqrt(2.0 / d)


def _xavier(m, d):
    return 1.0, math.sqrt(2.0 / (m + 1)), math.sqrt(2.0 / (m + d))


def _ntk(m, d):
    return math.sqrt(m), 1.0, 1.0


def _mean_field(m, d):
    return float(m), 1.0, 1.0


#: name -> (function (m, d) -> (alpha, beta1, beta2), limit gamma, limit gamma')
SCHEMES = {
    "lecun": (_lecun, 0.5, 0.5),
    "he": (_he, 0.5, 0.5),
    "xavier": (_xavier, 1.0, 0.0),
    "ntk": (_ntk, 0.5, 0.0),
    "mean_field": (_mean_field, 1.0, 0.0),
    # E et al. 2020: alpha = 1, beta1 = beta, beta2 = 1; gamma = gamma' = log(1/beta)/log(m)
    "e_et_al": (None, None, None),
}


@dataclass(frozen=True)
class Scaling:
    """Initialisation scales ``(alpha, beta1, beta2)`` of a two-layer network of width ``m``.

    Parameters
    ----------
    alpha : float
        Output normalisation, ``f = (1/alpha) sum_k a_k sigma(w_k . x~)``.
    beta1 : float
        Standard deviation of the output weights ``a_k``.
    beta2 : float
        Standard deviation of the input weights (and bias) ``w_k``.
    width : int
        Number of hidden neurons ``m``.
    name : str, optional
        The scheme this scaling came from (informational).
    """

    alpha: float
    beta1: float
    beta2: float
    width: int
    name: str = "custom"

    def __post_init__(self):
        object.__setattr__(self, "alpha", positive_float("alpha", self.alpha))
        object.__setattr__(self, "beta1", positive_float("beta1", self.beta1))
        object.__setattr__(self, "beta2", positive_float("beta2", self.beta2))
        object.__setattr__(self, "width", positive_int("width", self.width))

    # -- derived quantities ------------------------------------------------------
    @property
    def kappa(self) -> float:
        """Energetic scale ``beta1 beta2 / alpha``."""
        return self.beta1 * self.beta2 / self.alpha

    @property
    def kappa_prime(self) -> float:
        """Mobility ratio ``beta1 / beta2``."""
        return self.beta1 / self.beta2

    @property
    def gamma(self) -> float:
        """Finite-width coordinate ``-log(kappa)/log(m)`` (NaN for ``m = 1``)."""
        return _exponent(self.kappa, self.width)

    @property
    def gamma_prime(self) -> float:
        """Finite-width coordinate ``-log(kappa')/log(m)`` (NaN for ``m = 1``)."""
        return _exponent(self.kappa_prime, self.width)

    # -- constructors ------------------------------------------------------------
    @classmethod
    def from_gammas(cls, gamma, gamma_prime, width, beta1=1.0) -> "Scaling":
        """Scales with exactly the coordinates ``(gamma, gamma')`` at width ``m``.

        Uses the convention of [L21]'s experiments: ``beta1`` (default 1),
        ``beta2 = beta1 m^gamma'``, ``alpha = beta1 beta2 m^gamma``. For ReLU the flow
        depends on ``(kappa, kappa')`` only, so the convention does not matter; for
        non-homogeneous activations it does (choose ``beta1``).
        """
        gamma = finite_float("gamma", gamma)
        gamma_prime = finite_float("gamma_prime", gamma_prime)
        width = positive_int("width", width)
        beta1 = positive_float("beta1", beta1)
        beta2 = beta1 * width**gamma_prime
        alpha = beta1 * beta2 * width**gamma
        return cls(alpha=alpha, beta1=beta1, beta2=beta2, width=width,
                   name=f"gamma={gamma:g},gamma_prime={gamma_prime:g}")

    @classmethod
    def scheme(cls, name: str, width, d: int = 1, beta: float | None = None) -> "Scaling":
        """A named initialisation of [L21] Table 1.

        Parameters
        ----------
        name : {"lecun", "he", "xavier", "ntk", "mean_field", "e_et_al"}
        width : int
            Hidden width ``m``.
        d : int
            Input dimension (LeCun, He and Xavier use it for ``beta2``).
        beta : float
            Output-weight scale for ``"e_et_al"`` (``alpha = 1, beta1 = beta, beta2 = 1``).
        """
        if name not in SCHEMES:
            raise ConfigError(f"unknown scheme {name!r}; expected one of {sorted(SCHEMES)}")
        width = positive_int("width", width)
        d = positive_int("d", d)
        if name == "e_et_al":
            if beta is None:
                raise ConfigError("scheme 'e_et_al' needs beta (the output-weight scale), got None")
            return cls(alpha=1.0, beta1=positive_float("beta", beta), beta2=1.0, width=width,
                       name=name)
        fn = SCHEMES[name][0]
        alpha, b1, b2 = fn(width, d)
        return cls(alpha=alpha, beta1=b1, beta2=b2, width=width, name=name)

    @staticmethod
    def scheme_limit(name: str, width=None, beta=None) -> tuple[float, float]:
        """The ``m -> infinity`` coordinates ``(gamma, gamma')`` of a named scheme.

        For ``"e_et_al"`` both equal ``log(1/beta)/log(m)`` and need ``width`` and ``beta``.
        """
        if name not in SCHEMES:
            raise ConfigError(f"unknown scheme {name!r}; expected one of {sorted(SCHEMES)}")
        if name == "e_et_al":
            if width is None or beta is None:
                raise ConfigError("scheme 'e_et_al' needs width and beta for its coordinates")
            beta = positive_float("beta", beta)
            g = math.log(1.0 / beta) / math.log(positive_int("width", width))
            return g, g
        return SCHEMES[name][1], SCHEMES[name][2]

    # -- learning-rate conversion ------------------------------------------------
    def lr_from_step(self, dt: float) -> float:
        """Original-variable GD learning rate of an Euler step ``dt`` in normalised time.

        The normalised time is ``t^ = t / (beta1 beta2)``, so ``lr = beta1 beta2 dt``.
        """
        return self.beta1 * self.beta2 * dt

    def step_from_lr(self, lr: float) -> float:
        """Normalised-time step of an original-variable GD learning rate ``lr``."""
        return lr / (self.beta1 * self.beta2)

    def to_attrs(self) -> dict:
        """Flat attributes for a netCDF file."""
        return {
            "scaling_name": self.name, "alpha": self.alpha, "beta1": self.beta1,
            "beta2": self.beta2, "kappa": self.kappa, "kappa_prime": self.kappa_prime,
            "gamma": self.gamma, "gamma_prime": self.gamma_prime,
        }


def _exponent(value: float, width: int) -> float:
    if width == 1:
        return float("nan")
    return -math.log(value) / math.log(width)
