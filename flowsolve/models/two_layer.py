"""The two-layer network and its normalised gradient flow (THEORY.md sections 1 and 5).

State layout (flat vector, length ``M (d + 2)`` with ``M = m``, or ``2m`` with ASI)::

    y = [a^_1 .. a^_M, w^_1 (d+1 entries, bias last), ..., w^_M]

The flow in normalised variables ``a = beta1 a^``, ``w = beta2 w^``, time
``t = beta1 beta2 t^`` is, with ``e_i = c_f sum_k a^_k sigma(s w^_k . x~_i) - y_i``::

    d a^_k / dt^ = -c_a (1/n) sum_i e_i sigma(s w^_k . x~_i)
    d w^_k / dt^ = -c_w (1/n) sum_i e_i a^_k sigma'(s w^_k . x~_i) x~_i

For positively homogeneous activations (ReLU, leaky ReLU, linear) ``s = 1``,
``c_f = kappa``, ``c_a = kappa/kappa'``, ``c_w = kappa kappa'``: the flow depends on
``(kappa, kappa')`` only. For the others ``s = beta2``, ``c_f = beta1/alpha``,
``c_a = beta2/alpha``, ``c_w = beta1^2/alpha`` (the raw flow, exact for any scales).
docs/theory.md derives both.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from .._validate import positive_int
from ..errors import ConfigError
from ..scaling import Scaling
from ._norms import diff_norms
from .activations import get_activation

__all__ = ["TwoLayer"]


class TwoLayer:
    """Two-layer network ``f(x) = (1/alpha) sum_k a_k sigma(w_k . (x, 1))``.

    Parameters
    ----------
    width : int
        Hidden width ``m``.
    scaling : Scaling, optional
        Initialisation scales; default NTK (``alpha = sqrt(m)``, ``beta1 = beta2 = 1``).
    activation : str
        One of :data:`flowsolve.models.activations.ACTIVATIONS`.
    asi : bool
        Antisymmetric initialisation of [L21]: a second copy of the network with the same
        input weights and negated output weights, so ``f = 0`` at ``t = 0``. The state then
        holds ``2m`` neurons; relative changes are measured on the first copy.
    """

    name = "two_layer"
    #: relative changes tracked over time (and their running maxima)
    rd_names = ("rd_w", "rd_a", "rd_theta")
    #: netCDF dimensions of the arrays returned by :meth:`unpack`
    param_dims = {"a": ("neuron",), "w": ("neuron", "component")}
    #: what the solver's time variable is (recorded in files)
    time_description = "normalised time t^ = t / (beta1 beta2), t the gradient-flow time"

    def __init__(self, width, scaling: Scaling | None = None, activation: str = "relu",
                 asi: bool = False):
        self.width = positive_int("width", width)
        if scaling is None:
            scaling = Scaling.scheme("ntk", self.width)
        if not isinstance(scaling, Scaling):
            raise ConfigError(f"scaling must be a flowsolve.Scaling, got {type(scaling).__name__}")
        if scaling.width != self.width:
            raise ConfigError(
                f"scaling was made for width {scaling.width}, but the model has width {self.width}"
            )
        self.scaling = scaling
        self.activation = get_activation(activation)
        if not isinstance(asi, (bool, np.bool_)):
            raise ConfigError(f"asi must be True or False, got {asi!r}")
        self.asi = bool(asi)

    # -- layout ----------------------------------------------------------------------
    @property
    def n_neurons(self) -> int:
        """Neurons held in the state: ``m``, or ``2m`` with ASI."""
        return 2 * self.width if self.asi else self.width

    def state_size(self, d: int) -> int:
        return self.n_neurons * (d + 2)

    def _dim(self, y) -> int:
        M = self.n_neurons
        if y.ndim != 1 or y.shape[0] % M or y.shape[0] // M < 2:
            raise ConfigError(
                f"state of shape {y.shape} does not fit a two-layer model with {M} neurons"
            )
        return y.shape[0] // M - 1

    def unpack(self, y) -> dict:
        """Views of the normalised parameters.

        Returns
        -------
        dict
            ``"a"``: (M,) output weights; ``"w"``: (M, d+1) input weights, bias last.
        """
        M, D = self.n_neurons, self._dim(y)
        return {"a": y[:M], "w": y[M:].reshape(M, D)}

    def pack(self, a, w) -> np.ndarray:
        """Inverse of :meth:`unpack` (NumPy)."""
        return np.concatenate([np.asarray(a, float).ravel(), np.asarray(w, float).ravel()])

    def init_state(self, d: int, rng: np.random.Generator) -> np.ndarray:
        """Normalised initial state: ``a^ ~ N(0, 1)``, ``w^ ~ N(0, I)`` (float64)."""
        m = self.width
        a = rng.standard_normal(m)
        w = rng.standard_normal((m, d + 1))
        if self.asi:
            a = np.concatenate([a, -a])
            w = np.concatenate([w, w])
        return self.pack(a, w)

    # -- the flow --------------------------------------------------------------------
    def coefficients(self) -> tuple[float, float, float, float]:
        """``(c_f, c_a, c_w, s)`` of the normalised flow (see the module docstring)."""
        sc = self.scaling
        if self.activation.homogeneous:
            return sc.kappa, sc.kappa / sc.kappa_prime, sc.kappa * sc.kappa_prime, 1.0
        return sc.beta1 / sc.alpha, sc.beta2 / sc.alpha, sc.beta1**2 / sc.alpha, sc.beta2

    def mobilities(self) -> tuple[float, float]:
        """``(mu_a, mu_w)`` with ``d a^/dt^ = -mu_a dR/da^`` and ``d w^/dt^ = -mu_w dR/dw^``.

        ``R`` is the loss as a function of the normalised state. Both cases of the module
        docstring give ``mu_a = 1/kappa'`` and ``mu_w = kappa'`` (docs/theory.md).
        """
        cf, ca, cw, s = self.coefficients()
        return ca / cf, cw / (cf * s)

    def make_rhs(self, xp, data, dtype):
        """The reference right-hand side in the array namespace ``xp``.

        Returns ``rhs(y, out) -> loss``: writes ``dy/dt^`` into ``out`` (same shape as
        ``y``) and returns the loss ``R = 1/(2n) sum_i e_i^2`` at ``y`` as a float.
        """
        Xt = xp.asarray(data.x_tilde(), dtype=dtype)
        XtT = xp.ascontiguousarray(Xt.T)
        Y = xp.asarray(data.y, dtype=dtype)
        n, D, M = data.n, data.d + 1, self.n_neurons
        cf, ca, cw, s = self.coefficients()
        sigma, dsigma = self.activation.sigma, self.activation.dsigma

        def rhs(y, out):
            a = y[:M]
            w = y[M:].reshape(M, D)
            pre = w @ XtT                     # (M, n)
            if s != 1.0:
                pre *= s
            h = sigma(xp, pre)
            e = cf * (a @ h) - Y              # (n,)
            xp.multiply(h @ e, -ca / n, out=out[:M])
            g = dsigma(xp, pre)
            g *= e
            xp.multiply(((-cw / n) * a)[:, None], g @ Xt, out=out[M:].reshape(M, D))
            return float(e @ e) / (2.0 * n)

        return rhs

    def make_jacobian(self, xp, data, dtype, kernels=None):
        """Gauss-Newton structure of the flow: ``linearize(y) -> Linearization``.

        The flow is ``dy/dt^ = -C J^T e / n`` with ``e`` (n,) the residual, ``J = de/dy``
        (n, P) and ``C = linearize.mobility`` (P,). The returned object gives ``e``,
        ``jv(v)`` (n,), ``cjt(u)`` (P,), ``gram()`` = ``J C J^T`` (n, n) and ``dense()``
        without forming ``J`` (see :mod:`flowsolve.models.two_layer_structure`;
        ``kernels``: a backend's switching kernels, for the compiled controls).
        """
        from .two_layer_structure import make_linearize
        return make_linearize(self, xp, data, dtype, kernels=kernels)

    def make_switching(self, xp, data, dtype, kernels=None, host=None, plain_rhs=None):
        """ReLU switching structure (sliding pairs, equivalent controls); see
        :class:`flowsolve.models.two_layer_structure.Switching` (``kernels``: a backend's
        compiled RHS and pre-activations; ``host``: the structure on NumPy arrays that a
        device structure hands its per-neuron work; ``plain_rhs``: a device RHS of the
        plain flow)."""
        from .two_layer_structure import Switching
        return Switching(self, xp, data, dtype, kernels=kernels, host=host,
                         plain_rhs=plain_rhs)

    def make_loss(self, xp, data, dtype):
        """``loss(y) -> float``: the loss ``1/(2n) sum e^2`` alone (one forward pass)."""
        Xt = xp.asarray(data.x_tilde(), dtype=dtype)
        Y = xp.asarray(data.y, dtype=dtype)
        M, D = self.n_neurons, data.d + 1
        cf, _, _, s = self.coefficients()
        sigma = self.activation.sigma

        def loss(y):
            h = sigma(xp, (s * (y[M:].reshape(M, D) @ Xt.T)))
            e = cf * (y[:M] @ h) - Y
            return float(e @ e) / (2.0 * data.n)

        return loss

    def predict(self, y, x) -> np.ndarray:
        """Network output f at inputs ``x`` (k, d) for the normalised state ``y`` (NumPy)."""
        y = np.asarray(y, dtype=float)
        p = self.unpack(y)
        x = np.atleast_2d(np.asarray(x, dtype=float))
        xt = np.hstack([x, np.ones((x.shape[0], 1))])
        cf, _, _, s = self.coefficients()
        return cf * (self.activation.sigma(np, s * (p["w"] @ xt.T)).T @ p["a"])

    # -- observables -----------------------------------------------------------------
    def relative_changes(self, xp, y, y0, norms=None) -> dict:
        """Relative changes of the first copy (all of it without ASI).

        ``rd_w = |w - w0| / |w0|`` (input weights and biases, one global norm),
        ``rd_a`` likewise for the output weights, ``rd_theta`` for all parameters in the
        original (unnormalised) variables ``a = beta1 a^``, ``w = beta2 w^``. ``norms(u,
        u0) -> (|u - u0|^2, |u0|^2)`` defaults to :func:`._norms.diff_norms`.
        """
        norms = norms or partial(diff_norms, xp)
        m, M = self.width, self.n_neurons
        D = y.shape[0] // M - 1
        da2, a02 = norms(y[:m], y0[:m])
        dw2, w02 = norms(y[M:M + m * D], y0[M:M + m * D])
        b1, b2 = self.scaling.beta1**2, self.scaling.beta2**2
        return {
            "rd_w": math.sqrt(dw2 / w02),
            "rd_a": math.sqrt(da2 / a02),
            "rd_theta": math.sqrt((b1 * da2 + b2 * dw2) / (b1 * a02 + b2 * w02)),
        }

    def neuron_features(self, y) -> dict:
        """Per-neuron orientation and amplitude (NumPy, all M neurons).

        ``orientation``: for d = 1 the angle ``atan2(b_k, w_k)`` in radians; for d > 1 the
        angle between ``(w_k, b_k)`` and the first neuron-independent axis is not defined,
        so only ``amplitude`` is returned. ``amplitude``: ``|a_k| |w_k|`` in the original
        variables (``beta1 beta2 |a^_k| |w^_k|``), ``w_k`` including the bias.
        """
        p = self.unpack(np.asarray(y, dtype=float))
        a, w = p["a"], p["w"]
        out = {"amplitude": self.scaling.beta1 * self.scaling.beta2
               * np.abs(a) * np.linalg.norm(w, axis=1)}
        if w.shape[1] == 2:
            out["orientation"] = np.arctan2(w[:, 1], w[:, 0])
        return out

    def conserved(self, y) -> np.ndarray:
        """``kappa'^2 a^_k^2 - |w^_k|^2`` per neuron: constant along the exact flow for
        positively homogeneous activations."""
        p = self.unpack(np.asarray(y, dtype=float))
        return self.scaling.kappa_prime**2 * p["a"] ** 2 - np.sum(p["w"] ** 2, axis=1)

    def to_attrs(self) -> dict:
        attrs = {"model": self.name, "width": self.width, "activation": self.activation.name,
                 "asi": int(self.asi)}
        attrs.update(self.scaling.to_attrs())
        return attrs
