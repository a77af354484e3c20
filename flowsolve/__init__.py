"""flowsolve: gradient flows of wide two- and three-layer networks as ODEs.

>>> import flowsolve as fs
>>> prob = fs.Problem(fs.TwoLayer(1000, fs.Scaling.scheme("ntk", 1000)), fs.datasets.four_points())
>>> sol = fs.solve(prob, "dopri5", t_end=100.0, progress=False)
"""

from . import datasets, io
from ._version import __version__
from .datasets import Dataset
from .errors import BackendUnavailable, ConfigError, FlowsolveError, IntegrationError
from .models import ACTIVATIONS, ThreeLayer, TwoLayer
from .problem import Problem
from .scaling import Scaling
from .scaling3 import Scaling3
from .solvers import METHODS, Solution, Stats, Status, log_grid, solve
from .sweep import SweepSpec, open_sweep, run_sweep

__all__ = [
    "__version__", "datasets", "io", "Dataset", "Scaling", "TwoLayer", "ACTIVATIONS",
    "Scaling3", "ThreeLayer",
    "Problem", "solve", "Solution", "Stats", "Status", "METHODS", "log_grid",
    "FlowsolveError", "ConfigError", "IntegrationError", "BackendUnavailable",
    "SweepSpec", "run_sweep", "open_sweep",
]
