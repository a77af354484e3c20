"""The cupy backend on one GPU: RHS bandwidth against a device-copy roofline, and whole solves.

Prints (markdown tables):

1. the device, and the roofline: device-to-device copy bandwidth of a large float64
   array (``b[...] = a``, 16 bytes per element, CUDA events, median of repeats);
2. one two-layer RHS (four points, n = 4, d = 1, ASI ReLU, gamma = 0.5, float64) at
   m = 1e4 .. 1e7: the fused kernels against the generic path (the model's own code on
   CuPy arrays, ``path="xp"``). Bytes per RHS are the fused kernels' traffic, ``3 P 8``
   (the state read twice, the derivative written once; P = 2m (d + 2)). "fused kernels"
   is device time of the two kernels alone (CUDA events around 10 back-to-back RHS, no
   synchronisation), and GB/s is the bytes over it; "RHS wall" is wall time per
   ``rhs_into`` call including the loss read-back (one synchronisation, which the solver
   pays on every RHS). For the generic path GB/s is an *effective* figure (same byte
   count; it moves more). Medians of repeats;
3. whole dopri5 solves of the same problem at the settings of the CPU comparison in
   docs/benchmarks.md ("Same method, same tolerance": rtol 1e-5, atol 1e-8, t_end = 135,
   where the loss reaches 5e-7, default log-spaced save times) at m = 1e4 .. 1e7 on both
   paths: wall time, steps, RHS evaluations, time per step.

Run from the repository root (needs CuPy and a CUDA device)::

    PYTHONPATH=. python3 benchmarks/gpu.py            # --quick: fewer sizes and repeats
"""

from __future__ import annotations

import argparse
import statistics
import time

import flowsolve as fs
from flowsolve.backends.cupy_backend import CupyBackend, _TwoLayerFused


def event_time(cp, fn, repeats):
    """Median GPU time (s) of ``fn()`` between CUDA events, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def wall_time(cp, fn, repeats):
    """Median wall time (s) of ``fn()`` followed by a device synchronisation."""
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(cp, n=1 << 27, repeats=20):
    """Device-to-device copy bandwidth (GB/s) of ``n`` float64 (read + write counted)."""
    a = cp.random.random(n)
    b = cp.empty_like(a)
    t = event_time(cp, lambda: b.__setitem__(Ellipsis, a), repeats)
    return 16.0 * n / t / 1e9


def problem(m, backend):
    model = fs.TwoLayer(m, fs.Scaling.from_gammas(gamma=0.5, gamma_prime=0.0, width=m),
                        activation="relu", asi=True)
    return fs.Problem(model, fs.datasets.four_points(), seed=0, backend=backend)


def rhs_times(cp, m, fused_be, xp_be, repeats, batch=10):
    """``(device time of the fused kernels, fused RHS wall, generic RHS wall)`` in s."""
    prob = problem(m, fused_be)
    y = prob.y0 + 0.1 * cp.random.standard_normal(prob.size)    # off the ASI zero
    out = cp.empty_like(y)
    kern = _TwoLayerFused(fused_be, prob.model, prob.data, prob.dtype)

    def kernels():
        for _ in range(batch):
            kern.launch(y, out)

    t_dev = event_time(cp, kernels, repeats) / batch
    t_fused = wall_time(cp, lambda: prob.rhs_into(y, out), repeats)
    generic = problem(m, xp_be)
    t_xp = wall_time(cp, lambda: generic.rhs_into(y, out), repeats)
    return t_dev, t_fused, t_xp


def rhs_table(cp, sizes, repeats, roof):
    fused_be, xp_be = CupyBackend(), CupyBackend(path="xp")
    print("\n| m | P | bytes/RHS | fused kernels (us) | GB/s | % of copy | fused RHS wall (us) "
          "| generic xp RHS wall (us) | xp eff. GB/s | speed-up (wall) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in sizes:
        t_dev, t_fused, t_xp = rhs_times(cp, m, fused_be, xp_be, repeats)
        cp.get_default_memory_pool().free_all_blocks()
        P = 2 * m * 3
        nbytes = 3 * P * 8
        gbs = nbytes / t_dev / 1e9
        print(f"| {m:.0e} | {P:.2e} | {nbytes / 1e6:.3g} MB | {t_dev * 1e6:.4g} | {gbs:.0f} "
              f"| {100 * gbs / roof:.0f}% | {t_fused * 1e6:.4g} | {t_xp * 1e6:.4g} "
              f"| {nbytes / t_xp / 1e9:.0f} | {t_xp / t_fused:.1f}x |")


def solve_table(sizes):
    print("\n| m | path | wall (s) | steps | nfev | ms/step | final loss |")
    print("|---|---|---|---|---|---|---|")
    for m in sizes:
        for name, be in (("fused", CupyBackend()), ("xp", CupyBackend(path="xp"))):
            prob = problem(m, be)
            fs.solve(prob, "dopri5", rtol=1e-5, t_end=0.01, progress=False)   # compile/warm
            t0 = time.perf_counter()
            sol = fs.solve(prob, "dopri5", rtol=1e-5, atol=1e-8, t_end=135.0, progress=False)
            wall = time.perf_counter() - t0
            st = sol.stats
            print(f"| {m:.0e} | {name} | {wall:.3g} | {st.steps} | {st.nfev} "
                  f"| {1e3 * wall / max(st.steps, 1):.3g} | {sol.final['loss']:.3e} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = ap.parse_args(argv)
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    free, total = cp.cuda.Device().mem_info
    print(f"device: {name}, {total / 2**30:.0f} GiB, {props['multiProcessorCount']} SMs; "
          f"CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}")
    repeats = 10 if args.quick else 50
    roof = copy_bandwidth(cp, repeats=repeats)
    warm = problem(10**5, CupyBackend())            # compile, and wake the GPU's clocks
    out = cp.empty_like(warm.y0)
    for _ in range(500):
        warm.rhs_into(warm.y0, out)
    print(f"\nroofline: device-to-device copy of 2**27 float64 = {roof:.0f} GB/s "
          "(16 bytes per element)")
    rhs_sizes = [10**4, 10**5, 10**6] + ([] if args.quick else [10**7])
    # m = 1e7: P = 6e7, the state 480 MB, the generic path's (M, n) temporaries ~ 0.6 GB each
    rhs_table(cp, rhs_sizes, repeats, roof)
    solve_table([10**4, 10**5] if args.quick else [10**4, 10**5, 10**6, 10**7])


if __name__ == "__main__":
    main()
