"""``Problem``: a model, a data set, a seed and a backend -> initial state and right-hand side."""

from __future__ import annotations

import numpy as np

from ._validate import choice
from .backends import get_backend
from .datasets import Dataset
from .errors import ConfigError

__all__ = ["Problem"]

_DTYPES = {"float64": np.float64, "float32": np.float32}


class Problem:
    """The normalised gradient flow of ``model`` on ``data`` from a seeded initialisation.

    Parameters
    ----------
    model : TwoLayer or ThreeLayer
        The network (width, scaling, activation, ASI).
    data : Dataset
        Inputs ``x`` (n, d) and targets ``y`` (n,).
    seed : int
        Seed of the initial parameters (``numpy.random.default_rng(seed)``).
    backend : {"numpy", "numba", "cupy"}
        Where ``rhs`` runs; :func:`flowsolve.solve` uses it unless told otherwise.
    dtype : {"float64", "float32"}
        Floating-point type of the state and of the kernels.

    Attributes
    ----------
    y0 : array, shape (P,)
        Flat normalised initial state on the backend (see ``model.unpack``).
    """

    def __init__(self, model, data: Dataset, seed: int = 0, backend="numpy", dtype="float64"):
        if not isinstance(data, Dataset):
            raise ConfigError(f"data must be a flowsolve Dataset, got {type(data).__name__}")
        if not hasattr(model, "make_rhs"):
            raise ConfigError(f"model must be a flowsolve model, got {type(model).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        dtype_name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        choice("dtype", dtype_name, _DTYPES)
        self.model = model
        self.data = data
        self.seed = int(seed)
        self.dtype = _DTYPES[dtype_name]
        self.backend = get_backend(backend)
        self.y0_host = model.init_state(data.d, np.random.default_rng(self.seed))
        self.y0 = self.backend.asarray(self.y0_host, self.dtype)
        self._rhs = self.backend.make_rhs(model, data, self.dtype)
        self._loss = self.backend.make_loss(model, data, self.dtype)

    # -- the flow --------------------------------------------------------------------
    def _check_state(self, y):
        if getattr(y, "shape", None) != self.y0.shape:
            raise ConfigError(
                f"state must have shape {self.y0.shape}, got {getattr(y, 'shape', type(y))}"
            )

    def rhs(self, t, y):
        """``dy/dt^`` at state ``y`` (the flow is autonomous; ``t`` is accepted for ODE APIs)."""
        y = self.backend.asarray(y, self.dtype)
        self._check_state(y)
        out = self.backend.empty(y.shape, self.dtype)
        self._rhs(y, out)
        return out

    def rhs_into(self, y, out) -> float:
        """Write ``dy/dt^`` into ``out`` and return the loss at ``y`` (solver interface)."""
        return self._rhs(y, out)

    def loss(self, y) -> float:
        """The loss ``R = 1/(2n) sum_i (f(x_i) - y_i)^2`` at state ``y``."""
        y = self.backend.asarray(y, self.dtype)
        self._check_state(y)
        return self._loss(y)

    def relative_changes(self, y) -> dict:
        """Relative changes of the layers from ``y0`` (see ``model.relative_changes``)."""
        if self.backend.xp is not np:
            y = self.backend.asarray(y, self.dtype)    # e.g. SciPy's NumPy states, to the GPU
        return self.model.relative_changes(self.backend.xp, y, self.y0,
                                           norms=getattr(self.backend, "diff_norms", None))

    @property
    def size(self) -> int:
        """Length of the flat state vector."""
        return int(self.y0.shape[0])

    def with_backend(self, backend, dtype=None) -> "Problem":
        """The same problem (same initial state) on another backend or dtype."""
        return Problem(self.model, self.data, seed=self.seed, backend=backend,
                       dtype=self.dtype if dtype is None else dtype)

    def to_attrs(self) -> dict:
        attrs = dict(self.model.to_attrs())
        attrs.update(self.data.to_attrs())
        attrs.update({"seed": self.seed, "backend": self.backend.name,
                      "dtype": np.dtype(self.dtype).name})
        return attrs

    def __repr__(self):
        return (f"Problem({self.model.name}, width={self.model.width}, data={self.data.name}, "
                f"n={self.data.n}, d={self.data.d}, seed={self.seed}, backend={self.backend.name})")
