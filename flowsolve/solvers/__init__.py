"""Integrators: Butcher tableaus as data, one explicit RK engine, GD, SciPy, and ``solve``."""

from .driver import METHODS, log_grid, solve
from .solution import Solution
from .status import Stats, Status
from .tableaus import TABLEAUS, Tableau, get_tableau

__all__ = ["solve", "log_grid", "METHODS", "Solution", "Stats", "Status", "Tableau",
           "TABLEAUS", "get_tableau"]
