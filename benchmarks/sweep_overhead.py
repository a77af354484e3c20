"""Overhead of running a sweep on Dask distributed vs the same runs in a plain loop.

Two sets of runs on the four points of [L21] (two-layer ReLU, ASI, dopri5):

- ``small``: many tiny runs (default 500 at m = 100, rtol 1e-4, to loss 1e-4); batching
  groups them into tasks of about ``--batch-seconds``;
- ``large``: runs of >= 50 ms each (default 80 at m = 500, rtol 1e-5: 50-350 ms of CPU).
  With batch_seconds = 1 several share a task while the estimate says they fit.

For each set: the plain loop (``execute_run`` + save, one process, no Dask), then
``run_sweep`` on a LocalCluster with 1 and with 2 worker processes (started before the
timing, with one warm-up run per worker; its start-up time is reported separately).
Speed-up = loop / sweep and parallel efficiency = speed-up / workers (wall time); CPU
efficiency = CPU of the loop / CPU of the sweep (workers + scheduler + client: what the
parallel efficiency would be on free cores if the work spread evenly), CPU overhead per
run = (CPU of the sweep - CPU of the loop) / runs. "CPU in runs" sums the CPU time of the
task threads inside the runs on the workers (solve + save; equal to the loop's CPU when the
workers do the same work equally fast); the rest of the sweep's CPU is Dask's: client,
scheduler, and the workers' event loops (heartbeats), which grow with the wall time.
"idle CPU/s" is the CPU the idle cluster uses per second (measured for 5 s before the
sweep); dispatch CPU per task = (CPU of the sweep - CPU in runs - idle CPU/s x wall) / tasks.
CPU times are less distorted than wall times by other processes on a shared machine, but
the cluster's idle background (heartbeats) grows with the wall time. "load" is the
1-minute load average when the row started.

    .venv/bin/python benchmarks/sweep_overhead.py            # both sets
    .venv/bin/python benchmarks/sweep_overhead.py --quick    # 100 small + 16 large runs

The machine may be shared: compare numbers from one invocation only, and rerun if the
load average (printed) was high.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time

import numpy as np

import flowsolve as fs
from flowsolve.io import save
from flowsolve.sweep import WORKER_ENV, execute_run


def make_spec(n_runs, width, rtol):
    """About ``n_runs`` runs: 5 gamma' x G gamma x S seeds at one width."""
    n_g = max(1, round(np.sqrt(n_runs / 5)))
    n_s = max(1, int(np.ceil(n_runs / (5 * n_g))))
    return fs.SweepSpec(
        grid={"gamma": [round(float(g), 4) for g in np.linspace(0.5, 1.0, n_g)],
              "gamma_prime": [-0.2, -0.1, 0.0, 0.1, 0.2]},
        widths=[width], seeds=list(range(n_s)),
        solver={"method": "dopri5", "rtol": rtol, "atol": rtol * 1e-3, "stop_at_loss": 1e-4,
                "t_end": 1e6},
        save={"params": False})


def plain_loop(spec, out):
    t0, c0 = time.perf_counter(), time.process_time()
    for run in spec.runs():
        save(execute_run(spec, run), os.path.join(out, run.filename))
    return time.perf_counter() - t0, time.process_time() - c0


def _warm(spec, tmp):
    """Imports and first-call costs on a worker: one run of the spec, saved."""
    run = spec.runs()[0]
    save(execute_run(spec, run), os.path.join(tmp, f"warm-{os.getpid()}.nc"))


def _cpu(client):
    """CPU seconds used so far by the workers, the scheduler and this process (the
    scheduler of a LocalCluster lives in this process: counted once)."""
    cpu = sum(client.run(time.process_time).values()) + time.process_time()
    if client.run_on_scheduler(os.getpid) != os.getpid():
        cpu += client.run_on_scheduler(time.process_time)
    return cpu


def sweep_on(spec, out, workers, batch_seconds, idle_seconds=5.0):
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR, env=WORKER_ENV)
    client = Client(cluster)
    client.run(_warm, spec, os.path.dirname(out))         # imports, first save
    startup = time.perf_counter() - t0
    try:
        c0, t0 = _cpu(client), time.perf_counter()
        time.sleep(idle_seconds)                           # the idle cluster's own CPU
        idle = (_cpu(client) - c0) / (time.perf_counter() - t0)
        c0 = _cpu(client)
        rep = fs.run_sweep(spec, out=out, scheduler=client, progress=False,
                           batch_seconds=batch_seconds)
        cpu = _cpu(client) - c0
        assert rep.ran == rep.total and not rep.failed, rep.failed[:3]
    finally:
        client.close()
        cluster.close()
    return rep, cpu, startup, idle


HEADER = ("| set | engine | tasks | wall s | wall/run ms | speed-up | efficiency | CPU s "
          "| CPU in runs s | CPU efficiency | CPU overhead ms/run | idle CPU/s "
          "| dispatch CPU ms/task | load |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def bench(label, spec, workers_list, batch_seconds):
    """Print one row per engine as it finishes."""
    runs = len(spec.runs())
    label = f"{label} ({runs} runs)"
    with tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp:
        _warm(spec, tmp)
        load = os.getloadavg()[0]
        t_loop, cpu_loop = plain_loop(spec, os.path.join(tmp, "loop"))
        print(f"| {label} | plain loop | {runs} | {t_loop:.2f} | {t_loop / runs * 1e3:.1f} | 1 "
              f"| 1 | {cpu_loop:.2f} | {cpu_loop:.2f} | 1 | 0 | | | {load:.1f} |", flush=True)
        for w in workers_list:
            out = os.path.join(tmp, f"w{w}")
            load = os.getloadavg()[0]
            rep, cpu, startup, idle = sweep_on(spec, out, w, batch_seconds)
            t = rep.wall_time
            dispatch = (cpu - rep.run_cpu - idle * t) / rep.tasks
            print(f"| {label} | {w} worker{'s' if w > 1 else ''} (start {startup:.1f} s) | "
                  f"{rep.tasks} | {t:.2f} | {t / runs * 1e3:.1f} | {t_loop / t:.2f} | "
                  f"{t_loop / (w * t):.2f} | {cpu:.2f} | {rep.run_cpu:.2f} | "
                  f"{cpu_loop / cpu:.2f} | {(cpu - cpu_loop) / runs * 1e3:.1f} | {idle:.3f} | "
                  f"{dispatch * 1e3:.1f} | {load:.1f} |",
                  flush=True)
            shutil.rmtree(out, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-runs", type=int, default=500)
    ap.add_argument("--small-width", type=int, default=100)
    ap.add_argument("--large-runs", type=int, default=80)
    ap.add_argument("--large-width", type=int, default=500)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="100 small and 20 large runs")
    args = ap.parse_args()
    if args.quick:
        args.small_runs, args.large_runs = 100, 20
    print(f"# flowsolve {fs.__version__}, {os.cpu_count()} CPUs")
    print(HEADER)
    if args.small_runs:
        bench(f"small m={args.small_width}", make_spec(args.small_runs, args.small_width, 1e-4),
              args.workers, args.batch_seconds)
    if args.large_runs:
        bench(f"large m={args.large_width}", make_spec(args.large_runs, args.large_width, 1e-5),
              args.workers, args.batch_seconds)


if __name__ == "__main__":
    main()
