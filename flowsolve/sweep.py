"""Sweeps: every run of a :class:`SweepSpec` as a task on Dask distributed, one netCDF
file per run, resumable; :func:`open_sweep` combines the runs into one Dataset.

Store layout (a directory)::

    sweep.toml                                   the spec (manifest; re-runnable)
    gamma=1.0,gamma_prime=0.0,width=100,seed=0.nc one file per run, written atomically

A run that raises, or ends with a status other than success, still gets its file (with
its ``status`` and ``message`` attributes), so a failure never stops the sweep and is
not recomputed on resume unless ``redo_failed=True``. Resume skips every run whose file
passes :func:`flowsolve.io.validate`; missing, truncated or corrupt files are redone.
"""

from __future__ import annotations

import collections
import glob
import logging
import math
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field

import numpy as np

from . import io
from ._validate import positive_float, positive_int
from .errors import ConfigError
from .sweep_spec import Run, SweepSpec

__all__ = ["MANIFEST", "Run", "SweepReport", "SweepSpec", "open_sweep", "print_run",
           "run_sweep"]

MANIFEST = "sweep.toml"
#: numeric per-run attributes of the run files copied into :func:`open_sweep`'s Dataset
_RUN_ATTRS = {"nfev": "stats_nfev", "njev": "stats_njev", "steps": "stats_steps",
              "rejected": "stats_rejected", "wall_time": "stats_wall_time",
              **{k: k for k in ("alpha", "beta1", "beta2", "beta_w1", "beta_w2", "beta_a",
                                "kappa", "kappa_prime", "kappa2", "kappa_mid")}}
#: environment of embedded LocalCluster workers: one BLAS/OpenMP thread per worker (one
#: task per core), and glibc's trim/mmap thresholds raised so large temporaries are not
#: handed back to the OS after every call (PERFORMANCE.md, pitfall 2)
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}    # glibc's maximum on 64-bit


@dataclass
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    out : str
        The sweep directory.
    total, skipped, ran : int
        Runs in the spec; runs found finished and skipped; runs computed now.
    failed : list of (name, status, message)
        Runs computed now whose status is not success.
    wall_time : float
        Seconds from start to end (cluster start-up included).
    tasks : int
        Dask tasks submitted (runs are batched into tasks).
    run_seconds, run_cpu : float
        Wall seconds and CPU seconds of the task thread spent inside the runs computed
        now (solve and save), summed over the runs.
    """

    out: str
    total: int
    skipped: int = 0
    ran: int = 0
    failed: list = field(default_factory=list)
    wall_time: float = 0.0
    tasks: int = 0
    run_seconds: float = 0.0
    run_cpu: float = 0.0


# -- one run (executed on a worker) ------------------------------------------------------
def _run_attrs(spec, run, session):
    attrs = {f"sweep_{k}": float(v) for k, v in run.coords.items()}
    attrs.update(sweep_run=run.name, sweep_index=run.index, sweep_session=session,
                 sweep_width=run.width, sweep_seed=run.seed)
    return attrs


def _failure_dataset(spec, message):
    """A small run file for a run that raised: ``loss`` NaN at t = 0, status ``failed``."""
    import xarray as xr

    from ._version import __version__

    ds = xr.Dataset({"loss": ("time", [math.nan]), "t_final": ((), math.nan)},
                    coords={"time": ("time", [0.0])})
    ds.attrs.update(flowsolve_version=__version__, model=spec.model, dataset=spec.data,
                    status="failed", message=message)
    return ds


def execute_run(spec: SweepSpec, run: Run, session: str = ""):
    """Solve one run; return its Dataset (a failure record if it raised).

    Never raises for a failing run: the exception type and message become the file's
    ``message`` with ``status = "failed"``.
    """
    import flowsolve as fs

    t0 = time.perf_counter()
    try:
        sol = fs.solve(spec.problem(run), **spec.solve_kwargs())
        ds = sol.to_xarray(params=spec.save["params"])
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        ds = _failure_dataset(spec, f"{type(exc).__name__}: {exc}{where}")
        ds.attrs["stats_wall_time"] = time.perf_counter() - t0
    ds.attrs.update(_run_attrs(spec, run, session))
    return ds


def _record(run, ds, seconds, cpu=0.0):
    return {"name": run.name, "index": run.index, "status": str(ds.attrs["status"]),
            "message": str(ds.attrs.get("message", "")), "seconds": seconds, "cpu": cpu}


_MALLOC_TUNED = []


def tune_malloc(trim=1 << 30, mmap=32 << 20) -> bool:
    """Raise glibc's trim and mmap thresholds in this process (once; Linux/glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, so every large
    NumPy temporary is handed back to the OS after use and faulted in again on the next
    call (PERFORMANCE.md, pitfall 2). Called at the start of every sweep task, so workers
    of any cluster (not only the embedded one, which also gets :data:`WORKER_ENV`) keep
    their memory. Returns whether the thresholds were set.
    """
    if not _MALLOC_TUNED:
        ok = False
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3        # glibc's mallopt parameters
            ok = bool(libc.mallopt(m_trim_threshold, int(trim))) and bool(
                libc.mallopt(m_mmap_threshold, int(mmap)))
        except (OSError, AttributeError):
            pass
        _MALLOC_TUNED.append(ok)
    return _MALLOC_TUNED[0]


def _run_batch(spec, runs, out, session, write_on):
    """Task body: run ``runs`` one after the other, writing each file as it finishes."""
    tune_malloc()
    records = []
    for run in runs:
        t0, c0 = time.perf_counter(), time.thread_time()
        ds = execute_run(spec, run, session)
        if write_on == "worker":
            io.save(ds, os.path.join(out, run.filename))
        rec = _record(run, ds, time.perf_counter() - t0, time.thread_time() - c0)
        if write_on == "client":
            rec["dataset"] = ds
        records.append(rec)
    return records


# -- the client side ---------------------------------------------------------------------
def run_sweep(spec, out="runs", scheduler=None, workers=None, progress=None,
              batch_seconds: float = 1.0, write_on: str = "worker", redo_failed: bool = False,
              runs=None) -> SweepReport:
    """Run (or resume) a sweep on Dask distributed, one netCDF file per run under ``out``.

    Parameters
    ----------
    spec : SweepSpec or str
        The spec, or the path of a TOML spec.
    out : str
        Sweep directory (created). If it already holds a manifest, the spec must be the
        same: finished runs are skipped, missing or corrupt ones (re)run.
    scheduler : None, str or distributed.Client
        None: an embedded ``LocalCluster(n_workers=workers, threads_per_worker=1,
        processes=True)``, closed at the end; ``"tcp://host:port"``: an existing
        scheduler; a ``Client``: used as is (not closed).
    workers : int, optional
        Worker processes of the embedded cluster (default: the number of CPUs).
    progress : None, bool or callable
        A tqdm bar over runs (None: when stderr is a terminal), or
        ``progress(record, done, total)`` called after every finished run with
        ``record = {"name", "index", "status", "message", "seconds", "cpu"}``. An exception
        raised by the callback interrupts the sweep (finished files are kept).
    batch_seconds : float
        Target duration of one task: runs that are estimated to take less are grouped
        into one task (the estimate is learnt from finished runs, cost ~ width x n);
        longer runs get a task of their own.
    write_on : {"worker", "client"}
        Where run files are written: by the worker (a file system shared with the
        client, the default) or sent back and written by the client.
    redo_failed : bool
        Also redo runs whose file records a status other than success.
    runs : sequence of int, optional
        Only these run indices (of ``spec.runs()``); default all.

    Returns
    -------
    SweepReport
    """
    t_start = time.perf_counter()
    if isinstance(spec, (str, os.PathLike)):
        spec = SweepSpec.from_toml(spec)
    if not isinstance(spec, SweepSpec):
        raise ConfigError(f"spec must be a SweepSpec or a TOML path, got {type(spec).__name__}")
    if write_on not in ("worker", "client"):
        raise ConfigError(f"write_on must be 'worker' or 'client', got {write_on!r}")
    batch_seconds = positive_float("batch_seconds", batch_seconds)
    out = os.path.abspath(os.fspath(out))
    _prepare_dir(spec, out)
    all_runs = spec.runs()
    if runs is not None:
        try:
            idx = sorted({int(i) for i in runs})
        except (TypeError, ValueError):
            idx = [-1]
        if not idx or idx[0] < 0 or idx[-1] >= len(all_runs):
            raise ConfigError(f"runs must be a non-empty list of indices 0..{len(all_runs) - 1}, "
                              f"got {runs!r}")
        all_runs = [all_runs[i] for i in idx]
    todo = [r for r in all_runs if not _finished(os.path.join(out, r.filename), redo_failed)]
    report = SweepReport(out=out, total=len(all_runs), skipped=len(all_runs) - len(todo))
    bar = _Progress(progress, report.total, report.skipped)
    try:
        if todo:
            client, cluster = _connect(scheduler, workers)
            try:
                _feed(client, spec, todo, out, batch_seconds, write_on, report, bar)
            finally:
                if cluster is not None:
                    client.close()
                    cluster.close()
    finally:
        bar.close()
    report.wall_time = time.perf_counter() - t_start
    return report


def _prepare_dir(spec, out):
    """Create the directory, check or write the manifest, remove stale temporary files."""
    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, MANIFEST)
    if os.path.exists(manifest):
        old = SweepSpec.from_toml(manifest, dry_run=False).to_dict()
        new = spec.to_dict()
        if old != new:
            diff = sorted(k for k in new if old.get(k) != new[k])
            raise ConfigError(f"{out} holds a different sweep (keys {diff} differ from its "
                              f"{MANIFEST}); use another directory")
    else:
        io.write_atomic(manifest, spec.to_toml)
    for stale in glob.glob(os.path.join(glob.escape(out), ".tmp-*")):   # io.write_atomic's
        try:
            os.unlink(stale)
        except OSError:
            pass


def _finished(path, redo_failed) -> bool:
    if not os.path.exists(path) or not io.validate(path):
        return False
    if redo_failed:
        import netCDF4

        with netCDF4.Dataset(path) as nc:
            return nc.getncattr("status") == "success"
    return True


def _connect(scheduler, workers):
    """(client, cluster-or-None) for ``scheduler``; the cluster is ours to close."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return scheduler, None
    if scheduler is None:
        workers = positive_int("workers", workers if workers is not None else os.cpu_count())
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR,
                               env=WORKER_ENV)
        return Client(cluster), cluster
    if not isinstance(scheduler, str):
        raise ConfigError(f"scheduler must be an address like 'tcp://host:8786', got {scheduler!r}")
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
    return client, _Closer(client)


class _Closer:
    """Stands for a cluster we did not start: closing it only closes our client."""

    def __init__(self, client):
        self.client = client

    def close(self):
        pass


def _slots(client) -> int:
    info = client.scheduler_info()
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


def _feed(client, spec, todo, out, batch_seconds, write_on, report, bar):
    """Submit batches of runs, at most two per worker thread in flight, and collect them.

    Seconds per unit of cost are learnt from finished runs; a batch holds the largest
    runs left whose estimated time fits ``batch_seconds`` (shrinking near the end so the
    workers finish together). Until the first result, every run is its own task.
    """
    from distributed import as_completed

    session = uuid.uuid4().hex[:12]
    costs = {r.index: spec.cost(r) for r in todo}
    pending = collections.deque(sorted(todo, key=lambda r: -costs[r.index]))  # largest first
    left_cost = [sum(costs.values())]
    rate = {"seconds": 0.0, "cost": 0.0}
    inflight = {}
    ac = as_completed()
    slots = {"n": 1, "at": -math.inf}

    def submit_more():
        if time.monotonic() - slots["at"] > 2.0:          # an RPC: refresh now and then
            slots["n"], slots["at"] = _slots(client), time.monotonic()
        limit = 2 * slots["n"]
        while pending and len(inflight) < limit:
            batch = [pending.popleft()]
            if rate["cost"] > 0:
                per_cost = rate["seconds"] / rate["cost"]
                left = per_cost * left_cost[0] / limit
                target = min(batch_seconds, max(left, 0.0))
                est = per_cost * costs[batch[0].index]
                while pending and est + per_cost * costs[pending[-1].index] <= target:
                    nxt = pending.pop()                         # fill with the smallest
                    est += per_cost * costs[nxt.index]
                    batch.append(nxt)
            left_cost[0] -= sum(costs[r.index] for r in batch)
            fut = client.submit(_run_batch, spec, batch, out, session, write_on, pure=False,
                                key=f"flowsolve-sweep-{session}-{batch[0].index}")
            inflight[fut] = batch
            report.tasks += 1
            ac.add(fut)

    try:
        submit_more()
        for fut in ac:
            batch = inflight.pop(fut)
            try:
                records = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: record, go on
                records = _record_lost(spec, batch, out, session, exc)
            for run, rec in zip(batch, records):
                if "dataset" in rec:
                    io.save(rec.pop("dataset"), os.path.join(out, run.filename))
                rate["seconds"] += rec["seconds"]
                report.run_seconds += rec["seconds"]
                report.run_cpu += rec["cpu"]
                rate["cost"] += costs[run.index]
                report.ran += 1
                if rec["status"] != "success":
                    report.failed.append((rec["name"], rec["status"], rec["message"]))
                bar.update(rec)
            submit_more()
    finally:
        for fut in inflight:
            fut.cancel()


def _record_lost(spec, batch, out, session, exc):
    """Failure records for a batch whose task itself failed (its worker died repeatedly)."""
    records = []
    for run in batch:
        path = os.path.join(out, run.filename)
        if io.validate(path):        # finished before the task was lost
            import netCDF4

            with netCDF4.Dataset(path) as nc:
                records.append({"name": run.name, "index": run.index, "seconds": 0.0,
                                "status": nc.getncattr("status"),
                                "message": nc.getncattr("message")})
            continue
        ds = _failure_dataset(spec, f"task lost: {type(exc).__name__}: {exc}")
        ds.attrs.update(_run_attrs(spec, run, session))
        io.save(ds, path)
        records.append(_record(run, ds, 0.0))
    return records


def print_run(record, done, total):
    """A ``progress`` callback for :func:`run_sweep` printing one line per finished run
    (``[done/total] name: status (seconds s)``), for logs where a tqdm bar does not fit."""
    print(f"[{done}/{total}] {record['name']}: {record['status']} "
          f"({record['seconds']:.1f} s)", flush=True)


class _Progress:
    def __init__(self, progress, total, done):
        self.callback, self.bar = None, None
        self.done, self.total = done, total
        if callable(progress):
            self.callback = progress
            return
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="run", desc="sweep")

    def update(self, rec):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            self.callback(rec, self.done, self.total)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- reading a sweep ---------------------------------------------------------------------
def open_sweep(path):
    """Combine a sweep directory into one :class:`xarray.Dataset`.

    Returns
    -------
    xarray.Dataset
        Dimensions ``(*coords, width, seed, time)`` (coords: ``gamma, gamma_prime`` or
        ``gamma2, gamma3`` or the explicit scales). ``time`` is the sweep's shared
        log-spaced grid; every time series of the run files (``loss``, ``rd_w``,
        ``rd_w_max``, ...) is given on it, NaN after the run's ``t_final`` (fixed-step
        runs, recorded at step times, are interpolated linearly in time). Per run
        (no ``time``): every ``*_final`` scalar, ``t_final``, ``status`` and ``message``
        (strings; ``"missing"`` / ``"corrupt"`` for absent or unreadable files),
        ``nfev``, ``njev``, ``steps``, ``rejected``, ``wall_time`` and the scales
        ``alpha``, ``beta1``, ... Attribute ``sweep_spec`` holds the spec as TOML.
    """
    import xarray as xr

    from ._version import __version__

    path = os.fspath(path)
    manifest = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest):
        raise ConfigError(f"{path!r} is not a sweep directory (no {MANIFEST})")
    spec = SweepSpec.from_toml(manifest, dry_run=False)
    grid = spec.time_grid()
    shape = spec.shape()
    series, scalars = {}, {}
    status = np.full(shape, "missing", dtype=object)
    message = np.full(shape, "", dtype=object)
    for run in spec.runs():
        idx = np.unravel_index(run.index, shape)
        file = os.path.join(path, run.filename)
        if not os.path.exists(file):
            continue
        try:
            attrs, t, ts_vars, sc_vars = _read_summary(file)
        except Exception as exc:  # noqa: BLE001 - a corrupt file is reported, not fatal
            status[idx], message[idx] = "corrupt", f"{type(exc).__name__}: {exc}"
            continue
        status[idx] = str(attrs.get("status", "corrupt"))
        message[idx] = str(attrs.get("message", ""))
        t_final = float(sc_vars.get("t_final", t[-1]))
        inside = grid <= t_final * (1 + 1e-12)
        for name, values in ts_vars.items():
            arr = series.setdefault(name, np.full(shape + grid.shape, np.nan))
            arr[idx][inside] = np.interp(grid[inside], t, values)
        for name, val in sc_vars.items():
            scalars.setdefault(name, np.full(shape, np.nan))[idx] = val
        for name, attr in _RUN_ATTRS.items():
            val = attrs.get(attr)
            if isinstance(val, (int, float, np.number)):
                scalars.setdefault(name, np.full(shape, np.nan))[idx] = float(val)
    dims = spec.coords + ("width", "seed")
    coords = {k: (k, np.asarray(v)) for k, v in spec.grid.items()}
    coords["width"] = ("width", np.asarray(spec.widths), {"long_name": "hidden width m"})
    coords["seed"] = ("seed", np.asarray(spec.seeds))
    coords["time"] = ("time", grid, {"units": "1", "standard_name": "time",
                                     "long_name": "normalised time t^ = t / (beta1 beta2)"})
    out = xr.Dataset(coords=coords)
    for name, arr in series.items():
        out[name] = (dims + ("time",), arr)
    for name, arr in scalars.items():
        if name not in spec.grid:              # an explicit-scale grid is a coordinate
            out[name] = (dims, arr)
    out["status"] = (dims, status.astype(str))
    out["message"] = (dims, message.astype(str))
    out.attrs.update(title="flowsolve sweep", flowsolve_version=__version__, model=spec.model,
                     dataset=spec.data, sweep_spec=spec.to_toml())
    return out


def _read_summary(path):
    """(attrs, time, {name: series}, {name: scalar}) of a run file: its time series and
    numeric scalars only (per-neuron arrays are left on disk)."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        attrs = {k: nc.getncattr(k) for k in nc.ncattrs()}
        t = np.asarray(nc["time"][:], dtype=np.float64)
        series, scalars = {}, {}
        for name, var in nc.variables.items():
            if name == "time" or not np.issubdtype(var.dtype, np.number):
                continue
            if var.dimensions == ("time",):
                series[name] = np.ma.filled(np.ma.asarray(var[:], dtype=np.float64), np.nan)
            elif var.dimensions == ():
                scalars[name] = float(np.ma.filled(np.ma.asarray(var[...], dtype=np.float64),
                                                   np.nan))
    return attrs, t, series, scalars
