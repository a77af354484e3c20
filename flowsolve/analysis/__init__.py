"""Regime analysis of sweeps: scaling exponents, regime labels, phase boundaries,
condensation measures. Every function reads xarray Datasets (in memory or from files).

>>> import flowsolve.analysis as fa
>>> exps = fa.scaling_exponents(sweep_ds)                  # slopes per quantity and grid point
>>> labels = fa.classify(exps, "rd_w_final")               # linear / critical / condensed
>>> stars = fa.zero_crossings(exps, "rd_w_final")          # gamma*(gamma') with errors
"""

from .adaptive import bisect_boundary, solve_evaluator, sweep_evaluator
from .boundary import crossings_1d, theory_gamma_star, zero_crossings
from .condensation import (
                           active_mask,
                           clusters_over_time,
                           condensation_degree,
                           cosine_matrix,
                           count_clusters,
                           first_copy,
                           growth_rate,
                           initial_condensation,
                           leading_order,
                           orientation_amplitude,
                           unit_rows,
                           z_direction,
)
from .exponents import fit_power_law, ok_mask, rd_quantities, scaling_exponents, seed_mean
from .regimes import (
                           CONDENSED,
                           CRITICAL,
                           FOUR_REGIME_NAMES,
                           LINEAR,
                           REGIME_NAMES,
                           UNDETERMINED,
                           classify,
                           four_regimes,
                           label_slopes,
                           regime_name,
                           theory_regime,
                           uncertainty,
)
from .summary import slope_table, summarize

__all__ = [
                           "CONDENSED",
                           "CRITICAL",
                           "FOUR_REGIME_NAMES",
                           "LINEAR",
                           "REGIME_NAMES",
                           "UNDETERMINED",
                           "active_mask",
                           "bisect_boundary",
                           "classify",
                           "clusters_over_time",
                           "condensation_degree",
                           "cosine_matrix",
                           "count_clusters",
                           "crossings_1d",
                           "first_copy",
                           "fit_power_law",
                           "four_regimes",
                           "growth_rate",
                           "initial_condensation",
                           "label_slopes",
                           "leading_order",
                           "ok_mask",
                           "orientation_amplitude",
                           "rd_quantities",
                           "regime_name",
                           "scaling_exponents",
                           "seed_mean",
                           "slope_table",
                           "solve_evaluator",
                           "summarize",
                           "sweep_evaluator",
                           "theory_gamma_star",
                           "theory_regime",
                           "uncertainty",
                           "unit_rows",
                           "z_direction",
                           "zero_crossings",
]
