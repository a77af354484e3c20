"""Step counts of flowsolve's dopri5 under three step-size controllers, against SciPy.

Each case integrates the four-point flow of [L21] (ReLU, ASI, gamma' = 0) to the time T at
which the loss reaches ``--loss-tol`` (found first by a tight DOP853 run), with
``RKStepper`` stepping straight to T (save times no longer change the steps: the driver
takes them from the continuous extension) and with ``scipy.integrate.RK45`` on the NumPy
RHS, at the same rtol and atol = rtol * 1e-3. Printed: RHS evaluations.

- default (``pi_beta = 0.4/k`` = 0.08): Gustafsson's ``err^(-0.7/k) err_prev^(0.4/k)``
  (settles at err = 0.17),
- ``pi_beta = 0.04``: Hairer's DOPRI5 (settles at err = 0.44),
- ``pi_beta = 0``: the I controller, SciPy's (settles at err = 0.59)::

    .venv/bin/python benchmarks/controller.py
    .venv/bin/python benchmarks/controller.py --cases 1e4:0.5:1e-5
"""

from __future__ import annotations

import argparse

import flowsolve as fs
from flowsolve.solvers.rk import RKStepper
from flowsolve.solvers.tableaus import get_tableau

BETAS = {"Gustafsson 0.7/0.4 (beta 0.08, the default)": None, "Hairer (beta 0.04)": 0.04,
         "I controller (beta 0)": 0.0}


def problem(m, gamma, backend):
    s = fs.Scaling.from_gammas(gamma=gamma, gamma_prime=0.0, width=m)
    return fs.Problem(fs.TwoLayer(m, s, activation="relu", asi=True),
                      fs.datasets.four_points(), seed=0, backend=backend)


def count(prob, T, rtol, beta):
    st = RKStepper(get_tableau("dopri5"), prob.rhs_into, prob.backend, prob.y0, rtol=rtol,
                   atol=rtol * 1e-3, status_enum=fs.Status, pi_beta=beta)
    while st.t < T * (1 - 1e-12):
        st.step(T)
    return st.nfev


def scipy_count(prob, T, rtol):
    from scipy.integrate import RK45
    s = RK45(lambda t, y: prob.rhs(t, y), 0.0, prob.y0, T, rtol=rtol, atol=rtol * 1e-3)
    while s.status == "running":
        s.step()
    return s.nfev


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["1e5:0.5:1e-5", "1e4:0.5:1e-5",
                                                   "1e3:1:1e-4", "1e3:1.75:1e-5",
                                                   "1e3:1.75:1e-3"],
                    help="m:gamma:rtol")
    ap.add_argument("--loss-tol", type=float, default=5e-7)
    args = ap.parse_args()
    print("| case | T | " + " | ".join(BETAS) + " | SciPy RK45 |")
    print("|---" * (len(BETAS) + 3) + "|")
    for case in args.cases:
        m, gamma, rtol = (float(x) for x in case.split(":"))
        m = int(m)
        prob = problem(m, gamma, "numba")
        T = fs.solve(prob, "dop853", rtol=1e-8, atol=1e-11, t_end=1e12,
                     stop_at_loss=args.loss_tol, progress=False).t_final
        counts = [count(prob, T, rtol, b) for b in BETAS.values()]
        ref = scipy_count(problem(m, gamma, "numpy"), T, rtol)
        print(f"| m = {m:g}, gamma = {gamma:g}, rtol {rtol:.0e} | {T:.4g} | "
              + " | ".join(f"{c:,}" for c in counts) + f" | {ref:,} |", flush=True)


if __name__ == "__main__":
    main()
