"""Initialisation scales and phase-plane coordinates of three-layer networks.

Three-layer network ``f(x) = (1/alpha) a . sigma(W2 (sigma(W1 x~), 1))`` with
``W1 ~ N(0, beta_w1^2)``, ``W2 ~ N(0, beta_w2^2)`` (biases included) and
``a ~ N(0, beta_a^2)`` (THEORY.md section 4; docs/theory-three-layer.md derives all of
this). For width ``m`` the coordinates are

    kappa  = beta_w1 beta_w2 beta_a / alpha,  gamma3 = -log(kappa)  / log(m)   (energetic)
    kappa2 = beta_a / beta_w1,                gamma2 = -log(kappa2) / log(m)   (mobility ratio)

and a third coordinate, ``gamma_mid = -log(beta_a / beta_w2) / log(m)``, is 0 for every
named scheme (their middle and output scales always scale alike), so the common
initialisations live on the ``(gamma2, gamma3)`` plane. At finite ``m`` these are the
*finite-width* coordinates; :data:`SCHEMES3` also records the ``m -> infinity`` limits.

The normalised time is ``t^ = t / T`` with ``T = (beta_w1 beta_w2 beta_a)^(2/3)`` (the
geometric mean of the squared scales; the two-layer ``t^ = t / (beta1 beta2)`` is the same
rule), so the three mobilities ``T / beta_l^2`` multiply to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._validate import finite_float, positive_float, positive_int
from .errors import ConfigError

__all__ = ["SCHEMES3", "Scaling3"]


def _ntk(m, d):
    # f = m^-1/2 a . sigma(m^-1/2 W2 h1~): by homogeneity alpha = m with O(1) weights
    return float(m), 1.0, 1.0, 1.0


def _mean_field(m, d):
    # O(1) hidden pre-activations (m^-1/2 in the middle layer) and a 1/m output layer
    return float(m) ** 1.5, 1.0, 1.0, 1.0


def _lecun(m, d):
    return 1.0, math.sqrt(1.0 / d), math.sqrt(1.0 / m), math.sqrt(1.0 / m)


def _he(m, d):
    return 1.0, math.sqrt(2.0 / d), math.sqrt(2.0 / m), math.sqrt(2.0 / m)


def _xavier(m, d):
    return 1.0, math.sqrt(2.0 / (d + m)), math.sqrt(2.0 / (m + m)), math.sqrt(2.0 / (m + 1))


#: name -> (function (m, d) -> (alpha, beta_w1, beta_w2, beta_a), limit gamma2, limit gamma3)
SCHEMES3 = {
    "ntk": (_ntk, 0.0, 1.0),
    "mean_field": (_mean_field, 0.0, 1.5),
    "lecun": (_lecun, 0.5, 1.0),
    "he": (_he, 0.5, 1.0),
    "xavier": (_xavier, 0.0, 1.5),
}

_REQUIRED = ("alpha", "beta_w1", "beta_w2", "beta_a", "width")


@dataclass(frozen=True)
class Scaling3:
    """Initialisation scales ``(alpha, beta_w1, beta_w2, beta_a)`` of a three-layer network.

    Parameters
    ----------
    alpha : float
        Output normalisation, ``f = (1/alpha) a . sigma(W2 (sigma(W1 x~), 1))``.
    beta_w1 : float
        Standard deviation of the first-layer weights and biases ``W1`` (m, d+1).
    beta_w2 : float
        Standard deviation of the second-layer weights and biases ``W2`` (m2, m+1).
    beta_a : float
        Standard deviation of the output weights ``a`` (m2,).
    width : int
        First hidden width ``m``: the ``m`` of the exponents.
    name : str, optional
        The scheme this scaling came from (informational).

    All five numbers are required; a missing one raises :class:`~flowsolve.ConfigError`.
    """

    alpha: float = None
    beta_w1: float = None
    beta_w2: float = None
    beta_a: float = None
    width: int = None
    name: str = "custom"

    def __post_init__(self):
        for key in _REQUIRED:
            if getattr(self, key) is None:
                raise ConfigError(f"Scaling3 needs {key}, got None (give alpha, beta_w1, "
                                  f"beta_w2, beta_a and width)")
        for key in _REQUIRED[:-1]:
            object.__setattr__(self, key, positive_float(key, getattr(self, key)))
        object.__setattr__(self, "width", positive_int("width", self.width))

    # -- derived quantities ------------------------------------------------------
    @property
    def betas(self) -> tuple[float, float, float]:
        """``(beta_w1, beta_w2, beta_a)``."""
        return self.beta_w1, self.beta_w2, self.beta_a

    @property
    def kappa(self) -> float:
        """Energetic scale ``beta_w1 beta_w2 beta_a / alpha`` (the ReLU output factor)."""
        return self.beta_w1 * self.beta_w2 * self.beta_a / self.alpha

    @property
    def kappa2(self) -> float:
        """Mobility ratio ``beta_a / beta_w1``: ``(mu_w1 / mu_a)^(1/2)``."""
        return self.beta_a / self.beta_w1

    @property
    def kappa_mid(self) -> float:
        """Mobility ratio ``beta_a / beta_w2``: ``(mu_w2 / mu_a)^(1/2)``."""
        return self.beta_a / self.beta_w2

    @property
    def gamma3(self) -> float:
        """Finite-width coordinate ``-log(kappa)/log(m)`` (NaN for ``m = 1``)."""
        return _exponent(self.kappa, self.width)

    @property
    def gamma2(self) -> float:
        """Finite-width coordinate ``-log(beta_a/beta_w1)/log(m)`` (NaN for ``m = 1``)."""
        return _exponent(self.kappa2, self.width)

    @property
    def gamma_mid(self) -> float:
        """Finite-width coordinate ``-log(beta_a/beta_w2)/log(m)``; 0 for the named schemes."""
        return _exponent(self.kappa_mid, self.width)

    @property
    def time_scale(self) -> float:
        """``T = dt/dt^ = (beta_w1 beta_w2 beta_a)^(2/3)``."""
        return (self.beta_w1 * self.beta_w2 * self.beta_a) ** (2.0 / 3.0)

    @property
    def mobilities(self) -> tuple[float, float, float]:
        """``(mu_w1, mu_w2, mu_a) = T / beta_l^2``: ``dW^_l/dt^ = -mu_l dR/dW^_l``."""
        T = self.time_scale
        return tuple(T / b**2 for b in self.betas)

    @property
    def bias2_input(self) -> float:
        """``1 / beta_w1``: the constant that multiplies the normalised layer-2 bias in the
        homogeneous (ReLU) flow, ``u^2 = W^2 (h^1, 1/beta_w1)``."""
        return 1.0 / self.beta_w1

    # -- constructors ------------------------------------------------------------
    @classmethod
    def from_gammas(cls, gamma2, gamma3, width, beta_w1=1.0) -> Scaling3:
        """Scales with exactly the coordinates ``(gamma2, gamma3)`` (and ``gamma_mid = 0``).

        Convention (the shape of LeCun/He/NTK): ``beta_w1`` (default 1),
        ``beta_w2 = beta_a = beta_w1 m^-gamma2``, ``alpha = beta_w1 beta_w2 beta_a m^gamma3``.
        With ``gamma2 = 0`` all betas are 1 and ``alpha = m^gamma3``. For ReLU the flow
        depends on ``kappa``, the mobility ratios and ``1/beta_w1`` (the layer-2 bias input),
        so ``beta_w1`` is a real choice (docs/theory-three-layer.md).
        """
        gamma2 = finite_float("gamma2", gamma2)
        gamma3 = finite_float("gamma3", gamma3)
        width = positive_int("width", width)
        b1 = positive_float("beta_w1", beta_w1)
        b2 = b1 * float(width) ** (-gamma2)
        alpha = b1 * b2 * b2 * float(width) ** gamma3
        return cls(alpha=alpha, beta_w1=b1, beta_w2=b2, beta_a=b2, width=width,
                   name=f"gamma2={gamma2:g},gamma3={gamma3:g}")

    @classmethod
    def scheme(cls, name: str, width, d: int = 1) -> Scaling3:
        """A named initialisation mapped to three layers.

        Parameters
        ----------
        name : {"ntk", "mean_field", "lecun", "he", "xavier"}
            ``ntk``: ``alpha = m``, all betas 1; ``mean_field``: ``alpha = m^1.5``, all betas
            1; ``lecun`` / ``he``: ``alpha = 1``, ``beta_l^2 = c / fan_in`` (c = 1, 2);
            ``xavier``: ``alpha = 1``, ``beta_l^2 = 2 / (fan_in + fan_out)``.
        width : int
            Hidden width ``m`` (both hidden layers).
        d : int
            Input dimension (fan-in of the first layer).
        """
        if not isinstance(name, str) or name not in SCHEMES3:
            raise ConfigError(f"unknown three-layer scheme {name!r}; expected one of "
                              f"{sorted(SCHEMES3)}")
        width = positive_int("width", width)
        d = positive_int("d", d)
        alpha, b1, b2, b3 = SCHEMES3[name][0](width, d)
        return cls(alpha=alpha, beta_w1=b1, beta_w2=b2, beta_a=b3, width=width, name=name)

    @staticmethod
    def scheme_limit(name: str) -> tuple[float, float]:
        """The ``m -> infinity`` coordinates ``(gamma2, gamma3)`` of a named scheme."""
        if not isinstance(name, str) or name not in SCHEMES3:
            raise ConfigError(f"unknown three-layer scheme {name!r}; expected one of "
                              f"{sorted(SCHEMES3)}")
        return SCHEMES3[name][1], SCHEMES3[name][2]

    # -- learning-rate conversion ------------------------------------------------
    def lr_from_step(self, dt: float) -> float:
        """Original-variable GD learning rate of an Euler step ``dt`` in normalised time.

        An Euler step of the normalised flow is GD in the original variables with
        ``lr = T dt`` (the same rate for every layer).
        """
        return self.time_scale * dt

    def step_from_lr(self, lr: float) -> float:
        """Normalised-time step of an original-variable GD learning rate ``lr``."""
        return lr / self.time_scale

    def to_attrs(self) -> dict:
        """Flat attributes for a netCDF file."""
        return {
            "scaling_name": self.name, "alpha": self.alpha, "beta_w1": self.beta_w1,
            "beta_w2": self.beta_w2, "beta_a": self.beta_a, "kappa": self.kappa,
            "kappa2": self.kappa2, "kappa_mid": self.kappa_mid, "gamma2": self.gamma2,
            "gamma3": self.gamma3, "gamma_mid": self.gamma_mid,
            "time_scale": self.time_scale,
        }


def _exponent(value: float, width: int) -> float:
    if width == 1:
        return float("nan")
    return -math.log(value) / math.log(width)
