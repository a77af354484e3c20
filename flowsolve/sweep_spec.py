"""``SweepSpec``: a grid of runs (coordinates x widths x seeds), validated, in Python or TOML.

A spec names the model, the data set, the grid of initialisation coordinates, the widths,
the seeds, the solver options and what each run saves. Every run of the sweep is one
:func:`flowsolve.solve` call; :meth:`SweepSpec.runs` enumerates them and
:meth:`SweepSpec.problem` builds the :class:`~flowsolve.Problem` of one run.

Grid kinds (exactly one per spec)::

    two_layer:   {"gamma", "gamma_prime"}   (Scaling.from_gammas)
                 {"alpha", "beta1", "beta2"} (explicit scales, the same at every width)
    three_layer: {"gamma2", "gamma3"}       (Scaling3.from_gammas)
                 {"alpha", "beta_w1", "beta_w2", "beta_a"} (Scaling3)

Each grid entry is a list of numbers; the runs are the Cartesian product of the grid
lists, the widths and the seeds.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import math
import numbers
import os
from dataclasses import InitVar, dataclass, field

import tomllib

from ._validate import finite_float, positive_float, positive_int
from .errors import BackendUnavailable, ConfigError

__all__ = ["GRID_KINDS", "MODELS", "Run", "SweepSpec"]

#: model name -> the grid kinds it accepts (each a tuple of coordinate names, in dim order)
GRID_KINDS = {
    "two_layer": (("gamma", "gamma_prime"), ("alpha", "beta1", "beta2")),
    "three_layer": (("gamma2", "gamma3"), ("alpha", "beta_w1", "beta_w2", "beta_a")),
}
MODELS = tuple(GRID_KINDS)

#: model name -> (model class name, scaling class name) in the flowsolve namespace
_CLASSES = {"two_layer": ("TwoLayer", "Scaling"), "three_layer": ("ThreeLayer", "Scaling3")}

#: default model options per model (ASI is on for phase-diagram sweeps, as in [L21])
_MODEL_DEFAULTS = {"two_layer": {"activation": "relu", "asi": True},
                   "three_layer": {"activation": "relu", "asi": False}}

SAVE_DEFAULTS = {"params": True, "per_decade": 10, "t_min": 1e-3, "snapshots": []}
#: solve() arguments a sweep sets itself (from ``save``) or that make no sense in a task
_SOLVER_RESERVED = ("problem", "save_at", "snapshots", "progress")
_TOP_KEYS = ("model", "data", "data_options", "grid", "widths", "seeds", "solver",
             "model_options", "save")


@dataclass(frozen=True)
class Run:
    """One run of a sweep.

    Attributes
    ----------
    index : int
        Position in :meth:`SweepSpec.runs` (grid-major, then width, then seed).
    coords : dict
        Grid coordinate name -> value.
    width : int
    seed : int
    """

    index: int
    coords: dict
    width: int
    seed: int

    @property
    def name(self) -> str:
        """File stem made of the run's parameters, e.g.
        ``gamma=1.0,gamma_prime=0.0,width=100,seed=0``."""
        parts = [f"{k}={_fmt(v)}" for k, v in self.coords.items()]
        return ",".join(parts + [f"width={self.width}", f"seed={self.seed}"])

    @property
    def filename(self) -> str:
        return self.name + ".nc"


def _fmt(v: float) -> str:
    """Shortest round-trip text of a float (``1.0``, ``-0.4``, ``1e-05``)."""
    return repr(float(v))


@dataclass
class SweepSpec:
    """A sweep: grid x widths x seeds of gradient-flow runs.

    Parameters
    ----------
    model : {"two_layer", "three_layer"}
    data : str
        A data set name for :func:`flowsolve.datasets.get` (e.g. ``"four_points"``).
    grid : dict of str -> list of float
        The initialisation coordinates (see the module docstring for the accepted sets).
    widths : list of int
        Hidden widths ``m``.
    seeds : list of int
        Initialisation seeds (default ``[0]``).
    solver : dict
        Keyword arguments of :func:`flowsolve.solve` (``method``, ``rtol``, ``atol``,
        ``t_end``, ``stop_at_loss``, ``max_steps``, ``lr``, ``dt``, ``backend``, ...) plus
        ``dtype`` (of the :class:`~flowsolve.Problem`). ``t_end`` or ``stop_at_loss`` is
        required.
    model_options : dict
        Keyword arguments of the model class (two-layer: ``activation``, ``asi``; the
        two-layer default is ``{"activation": "relu", "asi": True}``).
    save : dict
        ``params`` (bool, keep initial/final per-neuron parameters in each run file),
        ``per_decade`` and ``t_min`` (the shared log-spaced time grid of
        :func:`flowsolve.log_grid`), ``snapshots`` (times of per-neuron snapshots).
    data_options : dict
        Keyword arguments of the data set loader.
    dry_run : bool
        Build the first run at a small width and take one solver step, so that every
        option the data set, model or solver rejects is reported now (default True;
        reading a stored manifest skips it).

    Raises
    ------
    ConfigError
        On construction, for unknown keys, an empty or malformed grid, bad widths or
        seeds, unknown solver or model options, or options the solver rejects (a one-step
        dry run of the first run at a small width checks them).
    """

    model: str = "two_layer"
    data: str = "four_points"
    grid: dict = field(default_factory=dict)
    widths: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])
    solver: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    save: dict = field(default_factory=dict)
    data_options: dict = field(default_factory=dict)
    dry_run: InitVar[bool] = True

    def __post_init__(self, dry_run):
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; expected one of {list(MODELS)}")
        if not isinstance(self.data, str):
            raise ConfigError(f"data must be a data set name, got {self.data!r}")
        self.grid = _check_grid(self.model, self.grid)
        self.widths = _int_list("widths", self.widths, minimum=1)
        self.seeds = _int_list("seeds", self.seeds, minimum=0)
        self.data_options = _table("data_options", self.data_options)
        self.model_options = {**_MODEL_DEFAULTS[self.model],
                              **_table("model_options", self.model_options)}
        self.save = _check_save(self.save)
        self.solver = _check_solver(self.solver)
        if dry_run:
            self._dry_run()

    # -- construction from / to files -----------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, dry_run: bool = True) -> SweepSpec:
        """A spec from a mapping with the constructor's keys (unknown keys are errors)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a sweep spec must be a table/dict, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"unknown sweep key(s) {unknown}; expected some of {list(_TOP_KEYS)}")
        return cls(**d, dry_run=dry_run)

    @classmethod
    def from_toml(cls, path, dry_run: bool = True) -> SweepSpec:
        """Read a spec from a TOML file with the constructor's keys."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                d = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"no such sweep config: {path!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        try:
            return cls.from_dict(d, dry_run=dry_run)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        """The normalised spec (defaults filled in) as plain Python data."""
        return {"model": self.model, "data": self.data, "data_options": dict(self.data_options),
                "grid": {k: list(v) for k, v in self.grid.items()},
                "widths": list(self.widths), "seeds": list(self.seeds),
                "solver": dict(self.solver), "model_options": dict(self.model_options),
                "save": dict(self.save)}

    def to_toml(self, path=None) -> str:
        """The spec as TOML text (written to ``path`` if given); ``from_toml`` reads it back."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(d[k])}" for k in ("model", "data", "widths", "seeds")]
        for table in ("grid", "solver", "model_options", "save", "data_options"):
            lines += ["", f"[{table}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in d[table].items()]
        text = "\n".join(lines) + "\n"
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    # -- the runs -------------------------------------------------------------------
    @property
    def coords(self) -> tuple:
        """Grid coordinate names in dimension order."""
        return tuple(self.grid)

    def runs(self) -> list:
        """Every :class:`Run`: the product of the grid lists, the widths and the seeds."""
        names = self.coords
        combos = itertools.product(*(self.grid[k] for k in names), self.widths, self.seeds)
        return [Run(i, dict(zip(names, c[:-2])), c[-2], c[-1]) for i, c in enumerate(combos)]

    def shape(self) -> tuple:
        """Sizes of the run dimensions ``(*coords, width, seed)``."""
        return tuple(len(self.grid[k]) for k in self.coords) + (len(self.widths), len(self.seeds))

    def time_grid(self):
        """The shared save times of every run (:func:`flowsolve.log_grid`)."""
        from .solvers import log_grid

        t_end = self.solver.get("t_end", math.inf)
        return log_grid(float(t_end), t_min=self.save["t_min"], per_decade=self.save["per_decade"])

    def dataset(self):
        """The training data (cached per process)."""
        return _load_data(self.data, json.dumps(self.data_options, sort_keys=True))

    def cost(self, run: Run) -> float:
        """Relative cost estimate of a run (state size times samples)."""
        n = self.dataset().n
        m = run.width
        return float(m * m * n if self.model == "three_layer" else m * n)

    def problem(self, run: Run, width: int | None = None):
        """The :class:`~flowsolve.Problem` of ``run`` (optionally at another width)."""
        import flowsolve as fs

        model_cls, scaling_cls = (_resolve(n, self.model) for n in _CLASSES[self.model])
        m = run.width if width is None else width
        c = run.coords
        if "alpha" in c:
            scaling = scaling_cls(**c, width=m)
        else:
            scaling = scaling_cls.from_gammas(**c, width=m)
        model = model_cls(m, scaling=scaling, **self.model_options)
        backend = self.solver.get("backend", "numpy")
        dtype = self.solver.get("dtype", "float64")
        return fs.Problem(model, self.dataset(), seed=run.seed, backend=backend, dtype=dtype)

    def solve_kwargs(self) -> dict:
        """Keyword arguments of :func:`flowsolve.solve` for every run."""
        kw = {k: v for k, v in self.solver.items() if k not in ("backend", "dtype")}
        kw["save_at"] = self.time_grid()
        if self.save["snapshots"]:
            kw["snapshots"] = self.save["snapshots"]
        kw["progress"] = False
        return kw

    def _dry_run(self):
        """Build the first run at a small width and take one step: the real code checks
        the data, model and solver options."""
        import flowsolve as fs

        run = self.runs()[0]
        try:
            prob = self.problem(run, width=min(run.width, 4))
        except BackendUnavailable:
            return          # the workers may have the device the client lacks
        except TypeError as exc:
            raise ConfigError(f"bad model_options {self.model_options!r}: {exc}") from None
        kw = self.solve_kwargs()
        kw["max_steps"] = 1
        try:
            fs.solve(prob, **kw)
        except ConfigError as exc:
            raise ConfigError(f"solver: {exc}") from None


@functools.lru_cache(maxsize=8)
def _load_data(name, options_json):
    from . import datasets

    return datasets.get(name, **json.loads(options_json))


def _resolve(name, model):
    import flowsolve as fs

    obj = getattr(fs, name, None)
    if obj is None:
        raise ConfigError(f"model {model!r} needs flowsolve.{name}, which this build lacks")
    return obj


def _table(name, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table/dict, got {value!r}")
    bad = [k for k, v in value.items() if v is None]
    if bad:
        raise ConfigError(f"{name}: None is not a value (omit the key instead), got {bad}")
    return dict(value)


def _int_list(name, value, minimum) -> list:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name} must be a non-empty list of integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            kind = "positive" if minimum > 0 else "non-negative"
            raise ConfigError(f"{name} must hold {kind} integers, got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} must not repeat values, got {out}")
    return out


def _check_grid(model, grid) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"grid must be a non-empty table of coordinate lists, got {grid!r}")
    kinds = GRID_KINDS[model]
    keys = set(grid)
    for kind in kinds:
        if keys == set(kind):
            break
    else:
        expected = " or ".join(str(list(k)) for k in kinds)
        raise ConfigError(f"grid keys {sorted(keys)} do not fit model {model!r}: "
                          f"expected {expected}")
    out = {}
    for k in kind:
        vals = grid[k]
        if isinstance(vals, numbers.Real) and not isinstance(vals, bool):
            vals = [vals]
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ConfigError(f"grid {k!r} must be a non-empty list of numbers, got {vals!r}")
        fl = []
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ConfigError(f"grid {k!r} must hold finite numbers, got {v!r}")
            if k.startswith(("alpha", "beta")):
                positive_float(f"grid {k!r}", v)
            fl.append(float(v))
        if len(set(fl)) != len(fl):
            raise ConfigError(f"grid {k!r} must not repeat values, got {fl}")
        out[k] = fl
    return out


def _check_save(save) -> dict:
    save = _table("save", save)
    unknown = sorted(set(save) - set(SAVE_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown save option(s) {unknown}; expected some of "
                          f"{list(SAVE_DEFAULTS)}")
    out = {**SAVE_DEFAULTS, **save}
    if not isinstance(out["params"], bool):
        raise ConfigError(f"save.params must be true or false, got {out['params']!r}")
    out["per_decade"] = positive_int("save.per_decade", out["per_decade"])
    out["t_min"] = positive_float("save.t_min", out["t_min"])
    snaps = out["snapshots"]
    if not isinstance(snaps, (list, tuple)):
        raise ConfigError(f"save.snapshots must be a list of times, got {snaps!r}")
    out["snapshots"] = [finite_float("save.snapshots", s) for s in snaps]
    if any(s < 0 for s in out["snapshots"]):
        raise ConfigError(f"save.snapshots must be times >= 0, got {snaps!r}")
    return out


def _check_solver(solver) -> dict:
    from .solvers import solve

    solver = _table("solver", solver)
    allowed = [p for p in inspect.signature(solve).parameters if p not in _SOLVER_RESERVED]
    allowed.append("dtype")
    unknown = sorted(set(solver) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown solver option(s) {unknown}; expected some of {allowed}")
    return solver


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to TOML")
