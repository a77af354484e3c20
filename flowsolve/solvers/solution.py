"""``Solution``: what a run recorded, and its xarray form."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

from .._version import __version__
from .status import Stats, Status

__all__ = ["Solution"]

_UNITS = "1"
_LONG_NAMES = {
    "loss": "training loss 1/(2n) sum_i (f(x_i) - y_i)^2",
    "rd_w": "relative change of the input weights (biases included), |w - w0| / |w0|",
    "rd_a": "relative change of the output weights, |a - a0| / |a0|",
    "rd_theta": "relative change of all parameters in original variables",
    "rd_w1": "relative change of the first-layer weights (biases included)",
    "rd_w2": "relative change of the second-layer weights (biases included)",
}


@dataclass
class Solution:
    """The result of :func:`flowsolve.solve`.

    Attributes
    ----------
    t : ndarray, shape (T,)
        Recorded normalised times: the save grid up to the end, then the final time.
    observables : dict of ndarray, each shape (T,)
        ``loss`` and the relative changes (``rd_w``, ``rd_a``, ``rd_theta`` for two
        layers) with their running maxima (``*_max``, over every accepted step).
    status : Status
    message : str
    stats : Stats
    y_final : ndarray
        The final flat normalised state (NumPy, float64).
    snapshots : list of (t, ndarray)
        Full states at the requested snapshot times.
    options : dict
        The solver options, recorded in files.
    """

    problem: object
    t: np.ndarray
    observables: dict
    status: Status
    message: str
    stats: Stats
    y_final: np.ndarray
    snapshots: list = field(default_factory=list)
    options: dict = field(default_factory=dict)

    @property
    def ts(self) -> np.ndarray:
        return self.t

    @property
    def t_final(self) -> float:
        return float(self.t[-1])

    @property
    def loss(self) -> np.ndarray:
        return self.observables["loss"]

    def __getitem__(self, name) -> np.ndarray:
        return self.observables[name]

    @property
    def final(self) -> dict:
        """Every observable at the final state, e.g. ``sol.final["rd_w"]`` (RD*)."""
        return {k: float(v[-1]) for k, v in self.observables.items()}

    @property
    def y0(self) -> np.ndarray:
        return np.asarray(self.problem.y0_host)

    def params(self, which="final") -> dict:
        """Normalised parameters (``model.unpack``) of the ``"initial"`` or ``"final"`` state."""
        y = self.y0 if which == "initial" else self.y_final
        return {k: np.array(v) for k, v in self.problem.model.unpack(y).items()}

    def to_xarray(self, params: bool = True):
        """The run as an :class:`xarray.Dataset`.

        Dimensions: ``time`` (the recorded times); with ``params``, ``neuron`` and the
        per-layer component dimensions for initial/final parameters and snapshots
        (``snapshot_time``). Global attributes record the version, model, scaling, data
        set, solver options, seed, status and statistics: enough to reproduce the run.
        """
        import xarray as xr

        prob = self.problem
        ds = xr.Dataset(coords={"time": ("time", np.asarray(self.t, dtype=np.float64), {
            "units": "1", "long_name": getattr(prob.model, "time_description", "normalised time"),
            "standard_name": "time"})})
        for k, v in self.observables.items():
            base = k[:-4] if k.endswith("_max") else k
            long = _LONG_NAMES.get(base, base)
            if k.endswith("_max"):
                long = "running maximum over accepted steps of the " + long
            ds[k] = ("time", np.asarray(v, dtype=np.float64), {"units": _UNITS, "long_name": long})
            ds[k + "_final"] = (
                (), float(v[-1]), {"units": _UNITS, "long_name": "final value: " + long})
        ds["t_final"] = ((), self.t_final, {"units": "1", "long_name": "final normalised time"})
        ds["x"] = (("sample", "input_dim"), prob.data.x, {"long_name": "training inputs"})
        ds["y"] = (("sample",), prob.data.y, {"long_name": "training targets"})
        if params:
            for name, val in self._param_vars().items():
                ds[name] = val
        ds.attrs.update(_clean_attrs(self._attrs()))
        return ds

    def _param_vars(self) -> dict:
        model = self.problem.model
        out = {}
        for which, y in (("init", self.y0), ("final", self.y_final)):
            for k, v in model.unpack(np.asarray(y)).items():
                out[f"{k}_{which}"] = (model.param_dims[k], np.array(v), {
                    "long_name": f"{which} normalised parameter {k} (divided by its beta)"})
            for k, v in model.neuron_features(y).items():
                out[f"{k}_{which}"] = (("neuron",), v, {"long_name": f"{which} neuron {k}",
                                                        "units": "rad" if k == "orientation"
                                                        else "1"})
        if self.snapshots:
            ts = np.array([t for t, _ in self.snapshots])
            ys = [model.unpack(y) for _, y in self.snapshots]
            for k in ys[0]:
                arr = np.stack([p[k] for p in ys])
                out[f"{k}_snapshot"] = (("snapshot_time",) + model.param_dims[k], arr, {
                    "long_name": f"normalised parameter {k} at the snapshot times"})
            out["snapshot_time"] = (("snapshot_time",), ts, {"units": "1"})
        return out

    def _attrs(self) -> dict:
        attrs = {"title": "flowsolve gradient-flow trajectory", "flowsolve_version": __version__,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "Conventions": "CF-1.8"}
        attrs.update(self.problem.to_attrs())
        attrs.update({f"solver_{k}" if k != "method" else "solver": v
                      for k, v in self.options.items()})
        attrs.update({"status": self.status.value, "message": self.message})
        attrs.update(self.stats.to_attrs())
        return attrs


def _clean_attrs(attrs: dict) -> dict:
    """netCDF attributes: numbers and strings only (bools -> int, None -> "none")."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        elif v is None:
            v = "none"
        elif isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif not isinstance(v, (int, float, str)):
            v = str(v)
        out[k] = v
    return out
