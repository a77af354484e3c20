"""Run status and statistics."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field


class Status(enum.Enum):
    """How a run ended. The value is the human message stored in files."""

    SUCCESS = "success"
    MAX_STEPS = "max steps"
    STEP_UNDERFLOW = "step size underflow"
    NON_FINITE = "non-finite state"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self is Status.SUCCESS

    def __str__(self):
        return self.value


@dataclass
class Stats:
    """Work done by a run.

    Attributes
    ----------
    nfev : int
        Right-hand side evaluations (the step-size initialisation and event location included).
    njev : int
        Jacobian-product work counted in RHS-equivalents (0 for explicit methods).
    steps, rejected : int
        Accepted and rejected steps.
    wall_time : float
        Seconds spent in :func:`flowsolve.solve` (set-up excluded).
    method : str
        The integrator that ran (useful when ``method="auto"`` chose it).
    """

    nfev: int = 0
    njev: int = 0
    steps: int = 0
    rejected: int = 0
    wall_time: float = 0.0
    method: str = ""
    extra: dict = field(default_factory=dict)

    def to_attrs(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        d.update({f"stats_{k}": v for k, v in extra.items()})
        return {("stats_" + k if not k.startswith("stats_") else k): v for k, v in d.items()}
