"""Regime analysis of sweeps: scaling exponents, regime labels, phase boundaries,
condensation measures. Every function reads xarray Datasets (in memory or from files).

>>> import flowsolve.analysis as fa
>>> exps = fa.scaling_exponents(sweep_ds)                  # slopes per quantity and grid point
>>> labels = fa.classify(exps, "rd_w_final")               # linear / critical / condensed
>>> stars = fa.zero_crossings(exps, "rd_w_final")          # gamma*(gamma') with errors
"""

from .adaptive import bisect_boundary, solve_evaluator, sweep_evaluator
from .boundary import crossings_1d, theory_gamma_star, zero_crossings
from .condensation import (active_mask, clusters_over_time, condensation_degree, cosine_matrix,
                           count_clusters, first_copy, growth_rate, initial_condensation,
                           leading_order, orientation_amplitude, unit_rows, z_direction)
from .exponents import fit_power_law, ok_mask, rd_quantities, scaling_exponents, seed_mean
from .regimes import (CONDENSED, CRITICAL, FOUR_REGIME_NAMES, LINEAR, REGIME_NAMES,
                      UNDETERMINED, classify, four_regimes, label_slopes, regime_name,
                      theory_regime, uncertainty)
from .summary import slope_table, summarize

__all__ = [
    "scaling_exponents", "fit_power_law", "rd_quantities", "ok_mask", "seed_mean",
    "classify", "label_slopes", "theory_regime", "four_regimes", "uncertainty", "regime_name",
    "LINEAR", "CRITICAL", "CONDENSED", "UNDETERMINED", "REGIME_NAMES", "FOUR_REGIME_NAMES",
    "zero_crossings", "crossings_1d", "theory_gamma_star",
    "bisect_boundary", "solve_evaluator", "sweep_evaluator",
    "orientation_amplitude", "cosine_matrix", "leading_order", "unit_rows", "active_mask",
    "count_clusters", "clusters_over_time", "z_direction", "condensation_degree",
    "initial_condensation", "growth_rate", "first_copy",
    "summarize", "slope_table",
]
