"""Shared pieces of the benchmark scripts: timing, machine facts, and the peer tools
(raw SciPy solve_ivp on the NumPy RHS, PyTorch autograd RHS, torchdiffeq, PyTorch GD).

torch and torchdiffeq are optional (the ``bench`` extra); :func:`torch_or_none` returns
``None`` when they are missing and the scripts skip those rows.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np


class Budget(Exception):
    """Raised from inside a right-hand side when a run exceeds its wall-time budget."""


def best_time(fn, min_time=0.05, rounds=3):
    """Best per-call time (s) of ``fn()`` over ``rounds`` batches of >= ``min_time`` s."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(min_time / one))
    best = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def side_by_side(fns: dict, min_time=0.05, rounds=5, settle=0.25):
    """Best per-call times of several callables, measured interleaved (round-robin), so a
    noisy shared machine slows them alike.

    Before each timed block the callable runs once untimed after ``settle`` seconds of
    sleep, so the thread pool of the previous callable (OpenBLAS spins up to ~0.1 s after
    a parallel region) is idle and the timed one's pool is awake, as it is in a solve that
    calls the same RHS again and again (PERFORMANCE.md pitfall 1)."""
    for fn in fns.values():
        fn()
    reps = {}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        reps[k] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    best = dict.fromkeys(fns, np.inf)
    for _ in range(rounds):
        for k, fn in fns.items():
            time.sleep(settle)
            fn()
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / reps[k])
    return best


def machine() -> str:
    """One line describing the machine and the libraries."""
    import numba
    import scipy

    try:
        layer = numba.threading_layer()
    except ValueError:                     # no parallel region has run yet
        layer = f"{numba.config.THREADING_LAYER} layer"
    parts = [platform.processor() or platform.machine(), f"{os.cpu_count()} cores",
             f"load {os.getloadavg()[0]:.1f}", f"numpy {np.__version__}",
             f"scipy {scipy.__version__}",
             (f"numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads, {layer}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")]
    try:
        from threadpoolctl import threadpool_info
        blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
                for i in threadpool_info() if i["user_api"] == "blas"]
        parts += blas
    except ImportError:
        pass
    t = torch_or_none()
    if t is not None:
        parts.append(f"torch {t.__version__} ({t.get_num_threads()} threads)")
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    parts[0] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return ", ".join(parts)


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torchdiffeq_or_none():
    try:
        import torchdiffeq
    except ImportError:
        return None
    return torchdiffeq


# -- the two-layer flow in PyTorch (what a user of the usual tools writes) ------------------
_TORCH_ACT = {"relu": "relu", "tanh": "tanh", "linear": None}


class TorchTwoLayer:
    """The normalised two-layer flow of a flowsolve Problem, as PyTorch autograd code.

    ``grad_flow(y) -> (dy/dt, loss)``: ``dy/dt = -diag(mu) grad R`` with the per-layer
    mobilities ``mu_a = c_a / c_f`` and ``mu_w = c_w / (c_f s)`` that make it equal to the
    model's right-hand side (checked against it in :meth:`check`).
    """

    def __init__(self, problem, dtype=None):
        torch = torch_or_none()
        self.torch = torch
        model, data = problem.model, problem.data
        if model.activation.name not in _TORCH_ACT:
            raise ValueError(f"no torch activation for {model.activation.name!r}")
        self.dtype = dtype or (torch.float64 if problem.dtype == np.float64 else torch.float32)
        cf, ca, cw, s = model.coefficients()
        self.cf, self.s = cf, s
        self.M, self.D, self.n = model.n_neurons, data.d + 1, data.n
        self.m = model.width                     # neurons of the first copy (RD)
        self.XtT = torch.tensor(data.x_tilde().T, dtype=self.dtype)
        self.Y = torch.tensor(data.y, dtype=self.dtype)
        mu = np.r_[np.full(self.M, ca / cf), np.full(self.M * self.D, cw / (cf * s))]
        self.mu = torch.tensor(mu, dtype=self.dtype)
        self.act = getattr(torch, _TORCH_ACT[model.activation.name]) \
            if _TORCH_ACT[model.activation.name] else (lambda u: u)
        self.y0 = torch.tensor(problem.backend.to_numpy(problem.y0), dtype=self.dtype)
        self.nfev = 0

    def loss_t(self, y):
        a, w = y[:self.M], y[self.M:].view(self.M, self.D)
        e = self.cf * (a @ self.act(self.s * (w @ self.XtT))) - self.Y
        return (e @ e) / (2.0 * self.n)

    def grad_flow(self, y):
        torch = self.torch
        self.nfev += 1
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            loss = self.loss_t(y)
            (g,) = torch.autograd.grad(loss, y)
        return -self.mu * g, float(loss.detach())

    def rd_w(self, y):
        """RD of the input weights of the first copy (as the model defines it)."""
        m = self.m
        return _rd(y[self.M:self.M + m * self.D], self.y0[self.M:self.M + m * self.D])

    def check(self, problem, rtol=1e-9):
        """Assert that the torch flow equals the problem's right-hand side at y0 + noise."""
        rng = np.random.default_rng(0)
        y = problem.y0_host + 0.1 * rng.standard_normal(problem.size)
        out = np.empty_like(y)
        problem.with_backend("numpy").rhs_into(y, out)
        g, _ = self.grad_flow(self.torch.tensor(y, dtype=self.dtype))
        err = np.abs(g.numpy() - out).max() / np.abs(out).max()
        if err > rtol:
            raise AssertionError(f"torch flow differs from the model's RHS: {err:.3g}")
        self.nfev = 0


def _rd(w, w0):
    return float(((w - w0) ** 2).sum().sqrt() / (w0**2).sum().sqrt())
