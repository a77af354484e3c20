"""Data sets: the 1-D four points of [L21], smooth synthetic targets, digits, MNIST files.

Every loader returns a :class:`Dataset` with ``x`` of shape ``(n, d)`` and ``y`` of
shape ``(n,)`` (scalar targets, as in the papers' full-batch experiments).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from ._validate import choice, finite_array, positive_int
from .errors import ConfigError

__all__ = ["Dataset", "four_points", "smooth_1d", "smooth", "digits", "load_mnist", "get"]


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (n, d) and scalar targets ``y`` (n,), both float64 and finite.

    Parameters
    ----------
    x : array_like, shape (n, d)
    y : array_like, shape (n,)
    name : str
        Name recorded in output files.
    options : dict
        The loader's options, recorded so a file can reproduce its data.
    """

    x: np.ndarray
    y: np.ndarray
    name: str = "custom"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        x = finite_array("x", self.x)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ConfigError(f"x must have shape (n, d), got shape {x.shape}")
        y = finite_array("y", self.y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ConfigError(f"y must have shape (n,), got shape {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise ConfigError(
                f"x and y must have the same number of samples, got x {x.shape} and y {y.shape}"
            )
        if x.shape[0] == 0:
            raise ConfigError("a data set needs at least one sample, got n = 0")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    @property
    def n(self) -> int:
        """Number of samples."""
        return self.x.shape[0]

    @property
    def d(self) -> int:
        """Input dimension (without the bias coordinate)."""
        return self.x.shape[1]

    def x_tilde(self) -> np.ndarray:
        """Inputs with the bias coordinate appended, shape (n, d+1)."""
        return np.hstack([self.x, np.ones((self.n, 1))])

    def to_attrs(self) -> dict:
        attrs = {"dataset": self.name, "n_samples": self.n, "input_dim": self.d}
        for k, v in self.options.items():
            attrs[f"dataset_{k}"] = v if isinstance(v, (int, float, str)) else str(v)
        return attrs


def four_points() -> Dataset:
    """The 1-D data of [L21]: x in {-1/2, -1/6, 1/6, 1/2}, y = x^2."""
    x = np.array([-0.5, -1.0 / 6.0, 1.0 / 6.0, 0.5])[:, None]
    return Dataset(x, x[:, 0] ** 2, name="four_points")


_TARGETS = {
    "sin": lambda x: np.sin(np.pi * x).sum(axis=1),
    "square": lambda x: (x**2).sum(axis=1),
    "gauss": lambda x: np.exp(-2.0 * (x**2).sum(axis=1)),
    "abs": lambda x: np.abs(x).sum(axis=1),
}


def smooth(n: int, d: int = 1, target: str = "sin", seed: int = 0, grid: bool = False) -> Dataset:
    """A smooth synthetic target on ``[-1, 1]^d``.

    Parameters
    ----------
    n : int
        Number of samples.
    d : int
        Input dimension.
    target : {"sin", "square", "gauss", "abs"}
        ``sin``: sum_j sin(pi x_j); ``square``: |x|^2; ``gauss``: exp(-2|x|^2);
        ``abs``: sum_j |x_j|.
    seed : int
        Seed of the uniform sample (ignored when ``grid`` is true and d = 1).
    grid : bool
        For d = 1, evenly spaced points instead of random ones.
    """
    n = positive_int("n", n)
    d = positive_int("d", d)
    choice("target", target, _TARGETS)
    if grid and d == 1:
        x = np.linspace(-1.0, 1.0, n)[:, None]
    else:
        x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, d))
    return Dataset(x, _TARGETS[target](x), name="smooth",
                   options={"n": n, "d": d, "target": target, "seed": seed, "grid": int(grid)})


def smooth_1d(n: int = 16, target: str = "sin", seed: int = 0, grid: bool = True) -> Dataset:
    """A smooth 1-D target on ``[-1, 1]`` (see :func:`smooth`)."""
    return smooth(n, 1, target=target, seed=seed, grid=grid)


def _standardise(x: np.ndarray, normalise: str) -> np.ndarray:
    choice("normalise", normalise, {"unit", "standard", "none"})
    if normalise == "unit":          # each sample scaled to unit Euclidean norm
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1.0)
    if normalise == "standard":      # each feature to mean 0, variance 1 (constant ones kept 0)
        sd = x.std(axis=0)
        return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return x


def digits(n: int | None = 256, classes=None, normalise: str = "unit", seed: int = 0,
           label: str = "digit") -> Dataset:
    """scikit-learn's bundled handwritten digits (8x8 images, 64 features), shipped offline.

    Parameters
    ----------
    n : int or None
        Number of samples (a seeded random subset); None takes all 1797.
    classes : sequence of int, optional
        Keep only these digits.
    normalise : {"unit", "standard", "none"}
        ``unit`` scales every image to unit norm (default), ``standard`` standardises
        each pixel, ``none`` keeps raw pixel values 0..16.
    label : {"digit", "parity"}
        Scalar target: the digit value 0..9 (as [L21]'s MNIST runs), or +-1 for even/odd.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float64)
    t = bunch.target.astype(np.int64)
    if classes is not None:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c <= 9]
        if bad or not classes:
            raise ConfigError(f"classes must be digits 0..9, got {classes!r}")
        keep = np.isin(t, classes)
        x, t = x[keep], t[keep]
    if n is not None:
        n = positive_int("n", n)
        if n > len(t):
            raise ConfigError(f"n must be at most {len(t)} for these classes, got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(len(t), size=n, replace=False))
        x, t = x[idx], t[idx]
    choice("label", label, {"digit", "parity"})
    y = t.astype(np.float64) if label == "digit" else np.where(t % 2 == 0, 1.0, -1.0)
    return Dataset(_standardise(x, normalise), y, name="digits",
                   options={"n": len(t), "classes": "all" if classes is None else str(classes),
                            "normalise": normalise, "seed": seed, "label": label})


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4:
        raise ConfigError(f"{path!r} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise ConfigError(f"{path!r} is not an IDX file (bad magic number)")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ConfigError(f"{path!r}: IDX header says shape {shape}, file holds {data.size} values")
    return data.reshape(shape)


def load_mnist(path: str, labels_path: str | None = None, n: int | None = 45,
               normalise: str = "unit") -> Dataset:
    """MNIST-format data from a user-given path (nothing is downloaded).

    Parameters
    ----------
    path : str
        An ``.npz`` file with arrays ``x`` (or ``x_train``) and ``y`` (or ``y_train``), or
        an IDX image file (``*-images-idx3-ubyte[.gz]``).
    labels_path : str, optional
        The IDX label file; by default derived from ``path`` by replacing
        ``images-idx3`` with ``labels-idx1``.
    n : int or None
        Keep the first ``n`` samples ([L21] used the first 45); None keeps all.
    normalise : {"unit", "standard", "none"}
        As in :func:`digits`; pixels are first divided by 255.
    """
    if not os.path.exists(path):
        raise ConfigError(f"MNIST file not found: {path!r}")
    if path.endswith(".npz"):
        with np.load(path) as z:
            xk = "x" if "x" in z else "x_train"
            yk = "y" if "y" in z else "y_train"
            if xk not in z or yk not in z:
                raise ConfigError(f"{path!r} must hold arrays 'x' and 'y', found {sorted(z.files)}")
            x, y = z[xk], z[yk]
    else:
        x = _read_idx(path)
        if labels_path is None:
            labels_path = path.replace("images-idx3", "labels-idx1").replace("images.idx3",
                                                                              "labels.idx1")
        if labels_path == path or not os.path.exists(labels_path):
            raise ConfigError(f"MNIST label file not found: {labels_path!r}; pass labels_path")
        y = _read_idx(labels_path)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if n is not None:
        n = positive_int("n", n)
        x, y = x[:n], y[:n]
    if x.max() > 1.0:
        x = x / 255.0
    return Dataset(_standardise(x, normalise), y, name="mnist",
                   options={"path": os.path.abspath(path), "n": len(y), "normalise": normalise})


_LOADERS = {"four_points": four_points, "smooth": smooth, "smooth_1d": smooth_1d,
            "digits": digits, "mnist": load_mnist}


def get(name: str, **options) -> Dataset:
    """A data set by name (used by sweep specs and the command line)."""
    choice("data set", name, _LOADERS)
    try:
        return _LOADERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for data set {name!r}: {exc}") from None
