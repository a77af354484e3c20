import math

import numpy as np
import pytest

import flowsolve as fs
from flowsolve.scaling import SCHEMES


@pytest.mark.parametrize("name", [n for n in SCHEMES if n != "e_et_al"])
def test_named_scheme_coordinates_tend_to_table(name):
    # the finite-width coordinates converge (slowly, like 1/log m) to [L21] Table 1
    g_lim, gp_lim = fs.Scaling.scheme_limit(name)
    errs = []
    for m in (1e3, 1e6, 1e12, 1e24):
        s = fs.Scaling.scheme(name, width=int(m), d=3)
        errs.append(abs(s.gamma - g_lim) + abs(s.gamma_prime - gp_lim))
    assert errs[-1] < 0.05
    assert errs[-1] <= errs[0] + 1e-12


def test_scheme_table_values():
    table = {"lecun": (0.5, 0.5), "he": (0.5, 0.5), "xavier": (1.0, 0.0), "ntk": (0.5, 0.0),
             "mean_field": (1.0, 0.0)}
    for name, coords in table.items():
        assert fs.Scaling.scheme_limit(name) == coords
    # NTK and mean field are exact at every width
    s = fs.Scaling.scheme("ntk", width=1000)
    assert s.gamma == pytest.approx(0.5) and s.gamma_prime == pytest.approx(0.0)
    s = fs.Scaling.scheme("mean_field", width=1000)
    assert s.gamma == pytest.approx(1.0) and s.gamma_prime == pytest.approx(0.0)
    # E et al: gamma = gamma' = log(1/beta)/log m
    s = fs.Scaling.scheme("e_et_al", width=1000, beta=1e-3)
    assert s.gamma == pytest.approx(1.0) and s.gamma_prime == pytest.approx(1.0)
    assert fs.Scaling.scheme_limit("e_et_al", width=1000, beta=1e-3) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("gamma,gamma_prime", [(0.5, 0.0), (1.75, -0.3), (1.0, 0.4)])
def test_from_gammas_round_trip(gamma, gamma_prime):
    s = fs.Scaling.from_gammas(gamma=gamma, gamma_prime=gamma_prime, width=5000)
    assert s.gamma == pytest.approx(gamma, abs=1e-12)
    assert s.gamma_prime == pytest.approx(gamma_prime, abs=1e-12)
    assert s.kappa == pytest.approx(5000.0**-gamma)
    assert s.beta1 == 1.0


def test_raw_scales_and_learning_rate():
    s = fs.Scaling(alpha=10.0, beta1=2.0, beta2=0.5, width=100)
    assert s.kappa == pytest.approx(0.1)
    assert s.kappa_prime == pytest.approx(4.0)
    assert s.gamma == pytest.approx(-math.log(0.1) / math.log(100))
    assert s.step_from_lr(s.lr_from_step(0.3)) == pytest.approx(0.3)
    assert s.lr_from_step(1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=1.0, beta1=1.0, beta2=1.0, width=-3), "width must be a positive integer, got -3"),
    (dict(alpha=1.0, beta1=1.0, beta2=1.0, width=2.5), "width must be a positive integer"),
    (dict(alpha=0.0, beta1=1.0, beta2=1.0, width=3), "alpha"),
    (dict(alpha=1.0, beta1=np.nan, beta2=1.0, width=3), "beta1"),
])
def test_bad_scales(kwargs, match):
    with pytest.raises(fs.ConfigError, match=match):
        fs.Scaling(**kwargs)


def test_unknown_scheme():
    with pytest.raises(fs.ConfigError, match="unknown scheme 'glorot'"):
        fs.Scaling.scheme("glorot", width=10)
    with pytest.raises(fs.ConfigError, match="needs beta"):
        fs.Scaling.scheme("e_et_al", width=10)
