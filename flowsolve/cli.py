"""The ``flowsolve`` command line.

Each subcommand is one function decorated with :func:`subcommand`: it receives its
argparse sub-parser, adds its arguments and returns the handler ``handler(args) -> int``
(the exit status). Import heavy modules inside the handler so ``flowsolve --help`` stays
fast. Errors a user can fix (:class:`~flowsolve.ConfigError`) print one line and exit 2.

Adding a subcommand::

    @subcommand("plot", "draw figures from a sweep directory")
    def _plot(p):
        p.add_argument("dir")

        def run(args):
            ...
            return 0
        return run
"""

from __future__ import annotations

import argparse
import sys

from ._version import __version__
from .errors import ConfigError

__all__ = ["build_parser", "main", "subcommand"]

#: (name, help, configure) in registration order
_SUBCOMMANDS = []


def subcommand(name: str, help: str):
    """Register ``configure(parser) -> handler`` as the subcommand ``name``."""
    def deco(configure):
        _SUBCOMMANDS.append((name, help, configure))
        return configure
    return deco


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowsolve", description="Gradient flows of wide two- and three-layer networks.")
    parser.add_argument("--version", action="version", version=f"flowsolve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure in _SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=configure(p))
    return parser


def main(argv=None) -> int:
    """Entry point of the ``flowsolve`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        msg = " ".join(str(exc).split())
        print(f"flowsolve {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flowsolve {args.command}: interrupted", file=sys.stderr)
        return 130


# -- sweep ---------------------------------------------------------------------------------
@subcommand("sweep", "run (or resume) a sweep from a TOML spec; one netCDF file per run")
def _sweep(p):
    p.add_argument("config", help="sweep spec (TOML; see docs/sweeps.md)")
    p.add_argument("--out", default="runs", help="sweep directory (default: runs)")
    p.add_argument("--scheduler", help="address of a Dask scheduler, e.g. tcp://host:8786 "
                   "(default: a local cluster)")
    p.add_argument("--workers", type=int, help="worker processes of the local cluster "
                   "(default: number of CPUs)")
    p.add_argument("--batch-seconds", type=float, default=1.0,
                   help="group runs shorter than this into one task (default: 1)")
    p.add_argument("--write-on", choices=("worker", "client"), default="worker",
                   help="who writes run files (client: no shared file system)")
    p.add_argument("--redo-failed", action="store_true", help="redo runs that did not succeed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args):
        from .sweep import run_sweep

        rep = run_sweep(args.config, out=args.out, scheduler=args.scheduler,
                        workers=args.workers, progress=not args.quiet,
                        batch_seconds=args.batch_seconds, write_on=args.write_on,
                        redo_failed=args.redo_failed)
        print(f"sweep {rep.out}: {rep.total} runs, {rep.skipped} already done, {rep.ran} run "
              f"now, {len(rep.failed)} not successful ({rep.wall_time:.1f} s)")
        for name, status, message in rep.failed[:10]:
            print(f"  {name}: {status}: {message}")
        return 0
    return run


# -- solve ---------------------------------------------------------------------------------
_SOLVER_FLAGS = (("method", str), ("rtol", float), ("atol", float), ("t_end", float),
                 ("stop_at_loss", float), ("max_steps", int), ("lr", float), ("dt", float),
                 ("backend", str), ("dtype", str))
_GRID_FLAGS = ("gamma", "gamma_prime", "gamma2", "gamma3")


@subcommand("solve", "integrate one run (options or a TOML with the sweep keys) to netCDF")
def _solve(p):
    p.add_argument("--config", help="TOML with the sweep keys and single values")
    p.add_argument("--model", choices=("two_layer", "three_layer"))
    p.add_argument("--data", help="data set name (default four_points)")
    for g in _GRID_FLAGS:
        p.add_argument("--" + g.replace("_", "-"), dest=g, type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int)
    for name, typ in _SOLVER_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ)
    p.add_argument("--activation")
    p.add_argument("--asi", action=argparse.BooleanOptionalAction, default=None,
                   help="antisymmetric initialisation (two-layer default: on)")
    p.add_argument("--no-params", action="store_true", help="omit per-neuron parameters")
    p.add_argument("--out", default="run.nc", help="output netCDF file (default run.nc)")

    def run(args):
        from . import io
        from .sweep import SweepSpec, execute_run

        spec = SweepSpec.from_dict(_solve_config(args))
        runs = spec.runs()
        if len(runs) != 1:
            raise ConfigError(f"solve runs one run, but the config describes {len(runs)} "
                              f"(use `flowsolve sweep`)")
        ds = execute_run(spec, runs[0])
        io.save(ds, args.out)
        a = ds.attrs
        print(f"{runs[0].name}: {a['status']} ({a.get('message', '')})")
        finals = "  ".join(f"{k[:-6]}={float(ds[k]):.6g}" for k in ds.data_vars
                           if k.endswith("_final") and ds[k].ndim == 0 and k != "t_final"
                           and not k.endswith("_max_final"))
        print(f"  t_final={float(ds['t_final']):.6g}  {finals}")
        why = a.get("stats_method_reason")          # what `auto` chose, and why
        print(f"  method={a.get('stats_method')}" + (f" ({why})" if why else "") +
              f"  nfev={a.get('stats_nfev')}  njev={a.get('stats_njev')}  "
              f"steps={a.get('stats_steps')}  "
              f"wall_time={float(a.get('stats_wall_time', 0.0)):.3g} s  -> {args.out}")
        return 0 if a["status"] == "success" else 1
    return run


def _solve_config(args) -> dict:
    """The sweep-spec dict of a single run: the TOML (if any), overridden by options."""
    d = {}
    if args.config:
        import tomllib

        try:
            with open(args.config, "rb") as fh:
                d = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"no such config: {args.config!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{args.config}: invalid TOML: {exc}") from None
    for key in ("model", "data"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    grid = dict(d.get("grid", {}))
    given = {g: getattr(args, g) for g in _GRID_FLAGS if getattr(args, g) is not None}
    grid.update(given)
    if "gamma" in given:
        grid.setdefault("gamma_prime", 0.0)
    if "gamma3" in given:
        grid.setdefault("gamma2", 0.0)
    if not grid:
        raise ConfigError("give the coordinates (--gamma [--gamma-prime], or --gamma3 "
                          "[--gamma2]) or a --config with a [grid] table")
    d["grid"] = grid
    if ("gamma2" in grid or "gamma3" in grid) and "model" not in d:
        d["model"] = "three_layer"
    if args.width is not None:
        d["widths"] = [args.width]
    if not d.get("widths"):
        raise ConfigError("give --width (or widths in the --config)")
    if args.seed is not None:
        d["seeds"] = [args.seed]
    solver = dict(d.get("solver", {}))
    solver.update({k: getattr(args, k) for k, _ in _SOLVER_FLAGS if getattr(args, k) is not None})
    if "t_end" not in solver and "stop_at_loss" not in solver:
        solver["stop_at_loss"] = 5e-7
    d["solver"] = solver
    opts = dict(d.get("model_options", {}))
    if args.activation is not None:
        opts["activation"] = args.activation
    if args.asi is not None:
        opts["asi"] = args.asi
    d["model_options"] = opts
    if args.no_params:
        d["save"] = {**d.get("save", {}), "params": False}
    return d


# -- analyze / plot ------------------------------------------------------------------------
def _open_any(path):
    """A sweep directory (open_sweep) or a netCDF file (a combined sweep or one run)."""
    import os

    from . import io
    from .sweep import MANIFEST, open_sweep

    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, MANIFEST)):
            raise ConfigError(f"{path!r} is not a sweep directory (no {MANIFEST})")
        return open_sweep(path)
    return io.load(path)


@subcommand("analyze", "scaling exponents, regime labels and zero crossings of a sweep")
def _analyze(p):
    p.add_argument("sweep", help="sweep directory, or a netCDF file with a width dimension")
    p.add_argument("--quantity", default=None,
                   help="quantity for the tables (default rd_w_final, or rd_w1_final, "
                        "rd_w2_final for three layers)")
    p.add_argument("--tol", type=float, default=0.05,
                   help="slopes within +-tol of 0 (beyond the interval) count as critical")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over seeds")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--out", help="exponents netCDF (default: <sweep>/exponents.nc for a "
                                 "directory, none for a file)")

    def run(args):
        import os

        from . import analysis, io

        ds = _open_any(args.sweep)
        exps = analysis.scaling_exponents(ds, level=args.level, n_boot=args.n_boot)
        fitted = [str(q) for q in exps["quantity"].values]
        quants = [args.quantity] if args.quantity else \
            [q for q in ("rd_w_final", "rd_w1_final", "rd_w2_final") if q in fitted]
        for q in quants:
            print(analysis.summarize(exps, q, tol=args.tol))
            print()
        out = args.out or (os.path.join(args.sweep, "exponents.nc")
                           if os.path.isdir(args.sweep) else None)
        if out:
            io.save(exps, out)
            print(f"exponents of {len(fitted)} quantities -> {out}")
        return 0
    return run


@subcommand("plot", "figures (PNG) from a sweep directory, a sweep file or a run file")
def _plot(p):
    p.add_argument("path", help="sweep directory, combined sweep netCDF, or one run's netCDF")
    p.add_argument("--out-dir", help="where figures go (default: <sweep>/figures, or next "
                                     "to the run file)")
    p.add_argument("--quantity", default="rd_w_final", help="quantity of the phase diagram")
    p.add_argument("--tol", type=float, default=0.05, help="label tolerance (see analyze)")

    def run(args):
        import os

        from . import analysis, plotting

        ds = _open_any(args.path)
        base = args.path.rstrip("/")
        out = args.out_dir or (os.path.join(base, "figures") if os.path.isdir(base)
                               else os.path.splitext(base)[0] + "_figures")
        made = []
        if "width" in ds.dims:
            exps = analysis.scaling_exponents(ds, n_boot=200)
            dims = set(exps["slope"].dims)
            if {"gamma", "gamma_prime"} <= dims:
                made.append(plotting.phase_diagram(
                    exps, args.quantity, labels=analysis.classify(exps, args.quantity,
                                                                  tol=args.tol),
                    path=os.path.join(out, "phase_diagram.png")))
                gp = ds["gamma_prime"].values
                sel = {"gamma_prime": float(gp[abs(gp).argmin()])}
                made.append(plotting.rd_vs_width(ds, exps, args.quantity, select=sel,
                                                 path=os.path.join(out, "rd_vs_width.png")))
            elif {"gamma2", "gamma3"} <= dims:
                made.append(plotting.layer_phase_diagrams(
                    exps, tol=args.tol, path=os.path.join(out, "layer_phase_diagrams.png")))
            if "loss" in ds and "time" in ds["loss"].dims:
                sel = {d: ds[d].values[0] for d in ds["loss"].dims
                       if d not in ("time", "width", "seed")}
                made.append(plotting.loss_curves(ds, hue="width", select=sel,
                                                 path=os.path.join(out, "loss_curves.png")))
        else:
            if "orientation_init" in ds:
                made.append(plotting.orientation_scatter(
                    ds, path=os.path.join(out, "orientation_scatter.png")))
            if "w_final" in ds:
                made.append(plotting.cosine_map(ds, path=os.path.join(out, "cosine_map.png")))
            if "loss" in ds:
                made.append(plotting.loss_curves(ds, path=os.path.join(out, "loss.png")))
        if not made:
            raise ConfigError(f"nothing to plot in {args.path!r}")
        print(f"{len(made)} figure(s) -> {out}")
        return 0
    return run



# -- demo -----------------------------------------------------------------------------------
@subcommand("demo", "the [L21] width sweep at gamma' = 0 and a coarse phase diagram (make demo)")
def _demo(p):
    p.add_argument("--out", default="out", help="output directory (default out/)")
    p.add_argument("--quick", action="store_true", help="small widths: a one-minute smoke run")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    p.add_argument("--skip-phase-diagram", action="store_true", help="run part 1 only")

    def run(args):
        from .demo import run as run_demo

        return run_demo(args)
    return run


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
