"""The three-layer network and its normalised gradient flow (THEORY.md section 4).

``f(x) = (1/alpha) a . sigma(W2 (sigma(W1 x~), 1))``, ``x~ = (x, 1)``: every hidden neuron
has a bias (the last column of its input weights). Normalised variables
``W1 = beta_w1 W^1``, ``W2 = beta_w2 W^2``, ``a = beta_a a^``; normalised time
``t = T t^`` with ``T = (beta_w1 beta_w2 beta_a)^(2/3)``. The flow is

    dW^_l / dt^ = -mu_l dR/dW^_l,      mu_l = T / beta_l^2   (mu_w1 mu_w2 mu_a = 1)

with the loss written in normalised variables as

    h^1 = sigma(s1 W^1 x~)             (m1, per sample)
    u^2 = s2 W^2 (h^1, c)              (m2)
    f   = c_f a^ . sigma(u^2)

For positively homogeneous activations (ReLU, leaky ReLU, linear) ``s1 = s2 = 1``,
``c = 1/beta_w1`` and ``c_f = kappa = beta_w1 beta_w2 beta_a / alpha``: the layer-2 bias
breaks the homogeneity, and carrying its input as ``1/beta_w1`` keeps the rescaling
exact. For the other activations ``s1 = beta_w1``, ``c = 1``, ``s2 = beta_w2``,
``c_f = beta_a / alpha`` (the raw flow, exact for any scales). docs/theory-three-layer.md
derives both.

State layout (flat vector; ``M1 = m1``, ``M2 = m2``, or twice that with ASI)::

    y = [W^1 (M1 x (d+1), row-major, bias last), W^2 (M2 x (m1+1), row-major, bias last),
         a^ (M2)]

With ASI the network is two independent copies: rows ``c m2 .. (c+1) m2 - 1`` of ``W^2``
(copy ``c``) read the hidden-1 neurons ``c m1 .. (c+1) m1 - 1`` only (a block-diagonal
middle layer stored as its two blocks), and the second copy starts with the same
``W^1, W^2`` and ``-a^``, so ``f = 0`` at ``t = 0``.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from .._validate import positive_int
from ..errors import ConfigError
from ..scaling3 import Scaling3
from ._norms import diff_norms
from .activations import get_activation

__all__ = ["ThreeLayer"]

LAYERS = ("w1", "w2", "a")


class ThreeLayer:
    """Three-layer network ``f(x) = (1/alpha) a . sigma(W2 (sigma(W1 x~), 1))``.

    Parameters
    ----------
    width : int
        First hidden width ``m`` (and the second, unless ``width2`` is given).
    scaling : Scaling3, optional
        Initialisation scales; default ``Scaling3.scheme("ntk", width)``.
    activation : str
        One of :data:`flowsolve.models.activations.ACTIVATIONS`.
    asi : bool
        Antisymmetric initialisation: a second, independent copy of the whole network
        with the same hidden weights and negated output weights (``f = 0`` at ``t = 0``).
        Relative changes are measured on the first copy.
    width2 : int, optional
        Second hidden width ``m2`` (default ``width``).
    frozen : iterable of {"w1", "w2", "a"}
        Layers held fixed (zero velocity), e.g. ``("w2",)`` for a frozen middle layer.
    """

    name = "three_layer"
    #: what the solver's time variable is (recorded in files)
    time_description = ("normalised time t^ = t / T, T = (beta_w1 beta_w2 beta_a)^(2/3), "
                        "t the gradient-flow time")
    #: relative changes tracked over time (and their running maxima)
    rd_names = ("rd_w1", "rd_w2", "rd_a", "rd_theta")
    #: netCDF dimensions of the arrays returned by :meth:`unpack`
    param_dims = {"w1": ("neuron", "component1"),  # noqa: RUF012 (read-only, as TwoLayer's)
                  "w2": ("neuron2", "component2"), "a": ("neuron2",)}

    def __init__(self, width, scaling: Scaling3 | None = None, activation: str = "relu",
                 asi: bool = False, width2=None, frozen=()):
        self.width = positive_int("width", width)
        self.width2 = self.width if width2 is None else positive_int("width2", width2)
        if scaling is None:
            scaling = Scaling3.scheme("ntk", self.width)
        if not isinstance(scaling, Scaling3):
            raise ConfigError(
                f"scaling must be a flowsolve.Scaling3, got {type(scaling).__name__}")
        if scaling.width != self.width:
            raise ConfigError(f"scaling was made for width {scaling.width}, but the model "
                              f"has width {self.width}")
        self.scaling = scaling
        self.activation = get_activation(activation)
        if not isinstance(asi, (bool, np.bool_)):
            raise ConfigError(f"asi must be True or False, got {asi!r}")
        self.asi = bool(asi)
        if isinstance(frozen, str):
            frozen = (frozen,)
        frozen = tuple(frozen)
        for f in frozen:
            if f not in LAYERS:
                raise ConfigError(f"unknown layer {f!r} in frozen; expected some of {LAYERS}")
        self.frozen = frozen

    # -- layout ----------------------------------------------------------------------
    @property
    def copies(self) -> int:
        """1, or 2 with ASI."""
        return 2 if self.asi else 1

    @property
    def n_neurons(self) -> int:
        """First-layer neurons held in the state: ``m``, or ``2m`` with ASI."""
        return self.copies * self.width

    @property
    def n_neurons2(self) -> int:
        """Second-layer neurons held in the state: ``m2``, or ``2 m2`` with ASI."""
        return self.copies * self.width2

    def sizes(self, d: int) -> tuple[int, int, int]:
        """Lengths of the ``w1``, ``w2`` and ``a`` blocks of the flat state."""
        return (self.n_neurons * (d + 1), self.n_neurons2 * (self.width + 1),
                self.n_neurons2)

    def state_size(self, d: int) -> int:
        return sum(self.sizes(d))

    def _dim(self, y) -> int:
        M1, M2, m = self.n_neurons, self.n_neurons2, self.width
        rest = y.shape[0] - M2 * (m + 2) if y.ndim == 1 else -1
        if rest <= 0 or rest % M1 or rest // M1 < 2:
            raise ConfigError(f"state of shape {y.shape} does not fit a three-layer model "
                              f"with widths ({m}, {self.width2}) and asi={self.asi}")
        return rest // M1 - 1

    def unpack(self, y) -> dict:
        """Views of the normalised parameters.

        Returns
        -------
        dict
            ``"w1"``: (M1, d+1) first-layer weights, bias last; ``"w2"``: (M2, m1+1)
            second-layer weights, bias last (with ASI, rows of copy ``c`` read hidden-1
            neurons ``c m1 .. (c+1) m1 - 1``); ``"a"``: (M2,) output weights.
        """
        d = self._dim(y)
        n1, n2, _ = self.sizes(d)
        return {"w1": y[:n1].reshape(self.n_neurons, d + 1),
                "w2": y[n1:n1 + n2].reshape(self.n_neurons2, self.width + 1),
                "a": y[n1 + n2:]}

    def pack(self, w1, w2, a) -> np.ndarray:
        """Inverse of :meth:`unpack` (NumPy, float64)."""
        return np.concatenate([np.asarray(v, float).ravel() for v in (w1, w2, a)])

    def init_state(self, d: int, rng: np.random.Generator) -> np.ndarray:
        """Normalised initial state: every entry ``N(0, 1)``; ASI copies (float64).

        Draw order: ``W^1``, ``W^2``, ``a^`` (first copy).
        """
        d = positive_int("d", d)
        m2 = self.width2
        n1, n2, n3 = self.sizes(d)
        y = np.empty(n1 + n2 + n3)
        c = self.copies
        y[:n1 // c] = rng.standard_normal(n1 // c)
        y[n1:n1 + n2 // c] = rng.standard_normal(n2 // c)
        y[n1 + n2:n1 + n2 + m2] = rng.standard_normal(m2)
        if self.asi:
            y[n1 // 2:n1] = y[:n1 // 2]
            y[n1 + n2 // 2:n1 + n2] = y[n1:n1 + n2 // 2]
            y[n1 + n2 + m2:] = -y[n1 + n2:n1 + n2 + m2]
        return y

    # -- the flow --------------------------------------------------------------------
    def coefficients(self) -> dict:
        """Scalars of the normalised flow (see the module docstring).

        Returns
        -------
        dict
            ``s1``, ``s2`` (pre-activation scales), ``c`` (input of the layer-2 bias),
            ``cf`` (output factor), ``mu_w1``, ``mu_w2``, ``mu_a`` (mobilities; 0 for a
            frozen layer).
        """
        sc = self.scaling
        if self.activation.homogeneous:
            out = {"s1": 1.0, "s2": 1.0, "c": 1.0 / sc.beta_w1, "cf": sc.kappa}
        else:
            out = {"s1": sc.beta_w1, "s2": sc.beta_w2, "c": 1.0, "cf": sc.beta_a / sc.alpha}
        for name, mu in zip(LAYERS, sc.mobilities):
            out["mu_" + name] = 0.0 if name in self.frozen else mu
        return out

    def mobilities(self) -> tuple[float, float, float]:
        """``(mu_w1, mu_w2, mu_a)``: ``dW^_l/dt^ = -mu_l dR/dW^_l`` (0 for frozen layers)."""
        k = self.coefficients()
        return k["mu_w1"], k["mu_w2"], k["mu_a"]

    def time_scale(self) -> float:
        """``T = dt / dt^`` (original time per unit of normalised time)."""
        return self.scaling.time_scale

    def _forward_setup(self, xp, data, dtype):
        Xt = xp.asarray(data.x_tilde(), dtype=dtype)             # (n, D)
        return Xt, xp.ascontiguousarray(Xt.T), xp.asarray(data.y, dtype=dtype)

    def make_rhs(self, xp, data, dtype):
        """The reference right-hand side in the array namespace ``xp``.

        Returns ``rhs(y, out) -> loss``: writes ``dy/dt^`` into ``out`` (same shape as
        ``y``) and returns ``R = 1/(2n) sum_i e_i^2`` at ``y``. Per copy the m x m work is
        three BLAS products: ``W^2 @ H`` (forward), ``Delta2^T @ W^2`` (back to layer 1)
        and ``Delta2 @ H^T`` written straight into ``out`` (the W^2 velocity); every
        temporary is O((m1 + m2) n).
        """
        Xt, XtT, Y = self._forward_setup(xp, data, dtype)
        n, D = data.n, data.d + 1
        m1, m2, C = self.width, self.width2, self.copies
        M1, M2 = self.n_neurons, self.n_neurons2
        n1, n2, _ = self.sizes(data.d)
        k = self.coefficients()
        s1, s2, cb, cf = k["s1"], k["s2"], k["c"], k["cf"]
        g1 = -k["mu_w1"] * s1 * s2 / n
        g2 = -k["mu_w2"] * s2 / n
        g3 = -k["mu_a"] * cf / n
        sigma, dsigma = self.activation.sigma, self.activation.dsigma
        H = xp.empty((C, m1 + 1, n), dtype=dtype)                  # (h^1, c) per copy
        H[:, m1, :] = cb
        U2 = xp.empty((M2, n), dtype=dtype)

        def rhs(y, out):
            w1 = y[:n1].reshape(M1, D)
            w2 = y[n1:n1 + n2].reshape(M2, m1 + 1)
            a = y[n1 + n2:]
            pre1 = w1 @ XtT                                      # (M1, n)
            if s1 != 1.0:
                pre1 *= s1
            H[:, :m1, :] = sigma(xp, pre1).reshape(C, m1, n)
            for c in range(C):
                xp.matmul(w2[c * m2:(c + 1) * m2], H[c], out=U2[c * m2:(c + 1) * m2])
            if s2 != 1.0:
                xp.multiply(U2, s2, out=U2)
            h2 = sigma(xp, U2)                                   # (M2, n)
            e = cf * (a @ h2) - Y                                # (n,)
            o1 = out[:n1].reshape(M1, D)
            o2 = out[n1:n1 + n2].reshape(M2, m1 + 1)
            o3 = out[n1 + n2:]
            if g3 != 0.0:
                xp.multiply(h2 @ e, g3, out=o3)
            else:
                o3[...] = 0
            delta2 = dsigma(xp, U2)
            delta2 *= e
            delta2 *= (cf * a)[:, None]                          # dR/du^2 * n / s2-free
            if g1 != 0.0:
                back = xp.empty((M1, n), dtype=dtype)
                for c in range(C):
                    # (n, m1+1): Delta2^T W^2, the bias column dropped
                    g = delta2[c * m2:(c + 1) * m2].T @ w2[c * m2:(c + 1) * m2]
                    back[c * m1:(c + 1) * m1] = g[:, :m1].T
                back *= dsigma(xp, pre1)
                back *= g1
                xp.matmul(back, Xt, out=o1)
            else:
                o1[...] = 0
            if g2 != 0.0:
                delta2 *= g2
                for c in range(C):
                    xp.matmul(delta2[c * m2:(c + 1) * m2], H[c].T,
                              out=o2[c * m2:(c + 1) * m2])
            else:
                o2[...] = 0
            return float(e @ e) / (2.0 * n)

        return rhs

    def make_loss(self, xp, data, dtype):
        """``loss(y) -> float``: ``1/(2n) sum e^2`` alone (one forward pass)."""
        _, XtT, Y = self._forward_setup(xp, data, dtype)
        forward = self._make_forward(xp, data.d, data.n, dtype)

        def loss(y):
            e = forward(y, XtT) - Y
            return float(e @ e) / (2.0 * data.n)

        return loss

    def _make_forward(self, xp, d, n, dtype):
        """``forward(y, XtT) -> f`` (n,) for inputs with the bias coordinate, (D, n)."""
        m1, m2, C = self.width, self.width2, self.copies
        M1, M2 = self.n_neurons, self.n_neurons2
        n1, n2, _ = self.sizes(d)
        k = self.coefficients()
        s1, s2, cb, cf = k["s1"], k["s2"], k["c"], k["cf"]
        sigma = self.activation.sigma

        def forward(y, XtT):
            n = XtT.shape[1]
            w1 = y[:n1].reshape(M1, d + 1)
            w2 = y[n1:n1 + n2].reshape(M2, m1 + 1)
            a = y[n1 + n2:]
            h1 = sigma(xp, s1 * (w1 @ XtT))
            u2 = xp.empty((M2, n), dtype=h1.dtype)
            for c in range(C):
                blk = w2[c * m2:(c + 1) * m2]
                u2[c * m2:(c + 1) * m2] = blk[:, :m1] @ h1[c * m1:(c + 1) * m1] \
                    + cb * blk[:, m1:m1 + 1]
            return cf * (a @ sigma(xp, s2 * u2))

        return forward

    def predict(self, y, x) -> np.ndarray:
        """Network output f at inputs ``x`` (k, d) for the normalised state ``y`` (NumPy)."""
        y = np.asarray(y, dtype=float)
        d = self._dim(y)
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if x.shape[1] != d:
            raise ConfigError(f"x must have shape (k, {d}), got {x.shape}")
        xt = np.hstack([x, np.ones((x.shape[0], 1))])
        return self._make_forward(np, d, xt.shape[0], np.float64)(y, np.ascontiguousarray(xt.T))

    # -- observables -----------------------------------------------------------------
    def relative_changes(self, xp, y, y0, norms=None) -> dict:
        """Relative changes of the first copy (all of it without ASI).

        ``rd_w1 = |W1 - W1(0)| / |W1(0)|`` (weights and biases, one global norm), ``rd_w2``
        likewise for the middle layer (biases included), ``rd_a`` for the output weights,
        ``rd_theta`` for all parameters in the original variables. ``norms(u, u0) ->
        (|u - u0|^2, |u0|^2)`` defaults to :func:`._norms.diff_norms` (blocks, float64).
        """
        norms = norms or partial(diff_norms, xp)
        M1, M2 = self.n_neurons, self.n_neurons2
        d = y.shape[0]
        rest = d - M2 * (self.width + 2)
        D = rest // M1
        n1 = M1 * D
        n2 = M2 * (self.width + 1)
        f1 = self.width * D                   # first copy's lengths
        f2 = self.width2 * (self.width + 1)
        f3 = self.width2
        parts = {"w1": (0, f1), "w2": (n1, f2), "a": (n1 + n2, f3)}
        diff, base = {}, {}
        for name, (lo, length) in parts.items():
            diff[name], base[name] = norms(y[lo:lo + length], y0[lo:lo + length])
        sq = {name: b**2 for name, b in zip(LAYERS, self.scaling.betas)}
        num = sum(sq[k] * diff[k] for k in LAYERS)
        den = sum(sq[k] * base[k] for k in LAYERS)
        return {"rd_w1": math.sqrt(diff["w1"] / base["w1"]),
                "rd_w2": math.sqrt(diff["w2"] / base["w2"]),
                "rd_a": math.sqrt(diff["a"] / base["a"]),
                "rd_theta": math.sqrt(num / den)}

    def neuron_features(self, y) -> dict:
        """First-layer orientation and amplitude per neuron (NumPy, all M1 neurons).

        ``orientation``: for d = 1 the angle ``atan2(b_k, w_k)`` of the first-layer input
        weight (radians). ``amplitude``: ``|W1[k, :]| |W2[:, k]|`` in the original
        variables (incoming weights with bias, times the outgoing weights of the copy).
        """
        p = self.unpack(np.asarray(y, dtype=float))
        w1, w2 = p["w1"], p["w2"]
        m1, m2 = self.width, self.width2
        sc = self.scaling
        out_norm = np.concatenate([
            np.linalg.norm(w2[c * m2:(c + 1) * m2, :m1], axis=0) for c in range(self.copies)])
        out = {"amplitude": sc.beta_w1 * sc.beta_w2 * np.linalg.norm(w1, axis=1) * out_norm}
        if w1.shape[1] == 2:
            out["orientation"] = np.arctan2(w1[:, 1], w1[:, 0])
        return out

    def conserved(self, y) -> dict:
        """Balanced quantities per hidden neuron, in the original variables.

        ``layer1`` (M1,): ``|W2[:, k]|^2 - |W1[k, :]|^2`` (outgoing minus incoming, bias
        included in the incoming); ``layer2`` (M2,): ``a_k^2 - |W2[k, :]|^2``. Constant
        along the exact gradient flow for positively homogeneous activations (ReLU).
        """
        p = self.unpack(np.asarray(y, dtype=float))
        b1, b2, b3 = self.scaling.betas
        m1, m2 = self.width, self.width2
        w1, w2, a = p["w1"], p["w2"], p["a"]
        outgoing = np.concatenate([
            np.sum(w2[c * m2:(c + 1) * m2, :m1] ** 2, axis=0) for c in range(self.copies)])
        return {"layer1": b2**2 * outgoing - b1**2 * np.sum(w1**2, axis=1),
                "layer2": b3**2 * a**2 - b2**2 * np.sum(w2**2, axis=1)}

    def to_attrs(self) -> dict:
        attrs = {"model": self.name, "width": self.width, "width2": self.width2,
                 "activation": self.activation.name, "asi": int(self.asi),
                 "frozen": ",".join(self.frozen) if self.frozen else "none"}
        attrs.update(self.scaling.to_attrs())
        return attrs
