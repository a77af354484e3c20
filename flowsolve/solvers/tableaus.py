"""Butcher tableaus as data. One engine (:mod:`flowsolve.solvers.rk`) steps them all.

A tableau lists ``c`` (s,), the strictly lower-triangular ``a`` rows, the solution
weights ``b`` (s,) and the error weights ``e``: ``err = h sum_j e_j k_j``. When ``e`` has
``s + 1`` entries the last one multiplies ``f(t + h, y_new)``, which the engine computes
anyway (it is the next step's first stage). ``fsal`` marks tableaus whose last stage is
evaluated at ``y_new``. DOP853 combines two estimates (``e`` of order 5 and ``e3`` of
order 3) as Hairer's code does.

``dense`` (optional) is the continuous extension: ``dense[j][k]`` is the coefficient of
``theta^(k+1)`` in the weight of stage ``j``, so that
``y(t + theta h) = y + h sum_j b_j(theta) k_j`` with ``b_j(1) = b_j``. The driver then
records save times from it instead of shortening steps onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["Tableau", "TABLEAUS", "get_tableau"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method with an embedded error estimate."""

    name: str
    order: int           #: order of the propagated solution
    error_order: int     #: order of the embedded solution (sets the controller exponent)
    c: tuple
    a: tuple             #: a[i] holds a_{i,0..i-1}
    b: tuple
    e: tuple
    e3: tuple | None = None
    fsal: bool = False
    description: str = ""
    dense: tuple | None = None   #: per stage, coefficients of theta^1..theta^q

    @property
    def stages(self) -> int:
        return len(self.c)

    def dense_weights(self, theta: float) -> tuple:
        """Stage weights ``b_j(theta)`` of the continuous extension at ``theta`` in [0, 1]."""
        if self.dense is None:
            raise ValueError(f"{self.name} has no continuous extension")
        return tuple(sum(p * theta ** (k + 1) for k, p in enumerate(row)) for row in self.dense)

    def check(self, tol: float = 1e-12) -> None:
        """Consistency: row sums equal c, weights sum to 1, error weights sum to 0."""
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > tol:
                raise AssertionError(f"{self.name}: row {i} sums to {sum(row)}, c = {self.c[i]}")
        if abs(sum(self.b) - 1.0) > tol:
            raise AssertionError(f"{self.name}: b sums to {sum(self.b)}")
        if abs(sum(self.e)) > tol:
            raise AssertionError(f"{self.name}: e sums to {sum(self.e)}")
        if self.fsal and (tuple(self.a[-1]) != tuple(self.b[:-1]) or self.b[-1] != 0.0):
            raise AssertionError(f"{self.name}: FSAL needs the last a row to equal b")
        if self.dense is not None:
            bt = self.dense_weights(1.0)
            if len(bt) != self.stages or max(abs(x - y) for x, y in zip(bt, self.b)) > tol:
                raise AssertionError(f"{self.name}: the continuous extension at theta = 1 "
                                     f"is {bt}, not b")


def _expand(factored):
    """Coefficients of theta^1..theta^q of polynomials given as ``(scale, power, factors)``:
    ``scale theta^power prod(factors)``, each factor a tuple of ascending coefficients."""
    P = np.polynomial.polynomial
    rows = []
    for scale, power, factors in factored:
        poly = np.array([float(scale)])
        for f in factors:
            poly = P.polymul(poly, f)
        poly = np.concatenate([np.zeros(power), poly])
        rows.append(tuple(float(x) for x in poly[1:]))
    q = max(len(r) for r in rows)
    return tuple(r + (0.0,) * (q - len(r)) for r in rows)


def _minus(b, bhat):
    return tuple(float(x - y) for x, y in zip(b, bhat))


_BS3 = Tableau(
    "bs3", 3, 2,
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    e=_minus((2 / 9, 1 / 3, 4 / 9, 0.0), (7 / 24, 1 / 4, 1 / 3, 1 / 8)),
    fsal=True, description="Bogacki-Shampine 3(2)",
    # Hermite-type cubic continuous extension (as SciPy's RK23)
    dense=((1.0, -4 / 3, 5 / 9), (0.0, 1.0, -2 / 3), (0.0, 4 / 3, -8 / 9), (0.0, -1.0, 1.0)),
)

_DP5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5 = Tableau(
    "dopri5", 5, 4,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       _DP5_B[:6]),
    b=_DP5_B,
    e=_minus(_DP5_B, (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200,
                      187 / 2100, 1 / 40)),
    fsal=True, description="Dormand-Prince 5(4)",
    # Shampine's fourth-order continuous extension (Hairer's DOPRI5, SciPy's RK45)
    dense=((1.0, -8048581381 / 2820520608, 8663915743 / 2820520608,
            -12715105075 / 11282082432),
           (0.0, 0.0, 0.0, 0.0),
           (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933,
            87487479700 / 32700410799),
           (0.0, -1754552775 / 470086768, 14199869525 / 1410260304,
            -10690763975 / 1880347072),
           (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408,
            701980252875 / 199316789632),
           (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
           (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423)),
)

# Tsitouras (2011) 5(4), coefficients as published (Tsitouras, Comput. Math. Appl. 62).
_TS5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
          -3.290069515436081, 2.324710524099774, 0.0)
_TSIT5 = Tableau(
    "tsit5", 5, 4,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=((), (0.161,),
       (-0.008480655492356989, 0.335480655492357),
       (2.897153057105493, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
        -0.028269050394068383),
       _TS5_B[:6]),
    b=_TS5_B,
    e=(-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261996,
       -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 1 / 66),
    fsal=True, description="Tsitouras 5(4)",
    # the paper's fourth-order continuous extension, b_j(theta) in factored form
    dense=_expand((
        (-1.0530884977290216, 1, ((-1.3299890189751412, 1.0),
                                  (0.7139816917074209, -1.4364028541716351, 1.0))),
        (0.1017, 2, ((1.2949852507374631, -2.1966568338249754, 1.0),)),
        (2.490627285651252793, 2, ((1.57803468208092486, -2.38535645472061657, 1.0),)),
        (-16.54810288924490272, 2, ((-1.21712927295533244, 1.0), (-0.61620406037800089, 1.0))),
        (47.37952196281928122, 2, ((-1.203071208372362603, 1.0), (-0.658047292653547382, 1.0))),
        (-34.87065786149660974, 2, ((-1.2, 1.0), (-0.666666666666666667, 1.0))),
        (2.5, 2, ((-1.0, 1.0), (-0.6, 1.0))))),
)

_DOP853_C = (0.0, 0.05260015195876773, 0.0789002279381516, 0.1183503419072274, 0.2816496580927726, 0.3333333333333333, 0.25, 0.3076923076923077, 0.6512820512820513, 0.6, 0.8571428571428571, 1.0)
_DOP853_A = (
    (),
    (0.05260015195876773,),
    (0.0197250569845379, 0.0591751709536137,),
    (0.02958758547680685, 0.0, 0.08876275643042054,),
    (0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792,),
    (0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242,),
    (0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125,),
    (0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328, -0.015319437748624402, 0.008273789163814023,),
    (0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726, 27.59209969944671, 20.154067550477894, -43.48988418106996,),
    (0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843, 21.230051448181193, 15.279233632882423, -33.28821096898486, -0.020331201708508627,),
    (-0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295, -8.149787010746927, -18.52006565999696, 22.739487099350505, 2.4936055526796523, -3.0467644718982196,),
    (2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188, 27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303, 0.6433927460157636,),
)
_DOP853_B = (0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003, -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034, 0.04471061572777259)
_DOP853_E5 = (0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502, 1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571, -0.022355307863886294, 0.0)
_DOP853_E3 = (-0.18980075407240762, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003, -5.801203960010585, -0.4226823213237919, -0.1521609496625161, 0.20136540080403034, 0.02265179219836082, 0.0)

_DOP853 = Tableau(
    "dop853", 8, 5,
    c=_DOP853_C, a=_DOP853_A, b=_DOP853_B, e=_DOP853_E5, e3=_DOP853_E3,
    fsal=False, description="Dormand-Prince 8(5,3) (Hairer's DOP853)",
)

_EULER = Tableau("euler", 1, 0, c=(0.0,), a=((),), b=(1.0,), e=(0.0,),
                 description="explicit Euler (fixed step only)")
_RK4 = Tableau("rk4", 4, 0, c=(0.0, 0.5, 0.5, 1.0),
               a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
               b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), e=(0.0, 0.0, 0.0, 0.0),
               description="classical Runge-Kutta 4 (fixed step only)")

TABLEAUS = {t.name: t for t in (_BS3, _DOPRI5, _TSIT5, _DOP853, _EULER, _RK4)}
#: tableaus with an embedded error estimate (usable adaptively)
ADAPTIVE = ("bs3", "dopri5", "tsit5", "dop853")


def get_tableau(name: str) -> Tableau:
    try:
        return TABLEAUS[name]
    except KeyError:
        raise ConfigError(f"unknown Runge-Kutta method {name!r}; expected one of "
                          f"{sorted(TABLEAUS)}") from None


def stage_matrix(t: Tableau) -> np.ndarray:
    """The full (s, s) matrix A (zeros above the diagonal)."""
    A = np.zeros((t.stages, t.stages))
    for i, row in enumerate(t.a):
        A[i, :len(row)] = row
    return A
